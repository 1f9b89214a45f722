//! The `egressd` binary every test and the benchmark harness run: built on
//! first use for the test binary's profile, or the one the caller names.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Use `bin` as the `egressd` binary from now on (a harness that built its
/// own; call it before anything starts egressd). False when one was
/// already chosen, and that one stays.
pub fn use_egressd(bin: PathBuf) -> bool {
    BIN.set(bin).is_ok()
}

/// The real `egressd` binary, built once per test run.
///
/// `cargo test --workspace` builds only the test harness of a bin target
/// (`deps/egressd-HASH`), never `target/<profile>/egressd` itself, and a
/// left-over binary could be stale. So the first caller runs `cargo build
/// -p egressd --bin egressd` for the profile and target directory this test
/// binary was built in (`target/<profile>/deps/it-HASH`): a no-op when it is
/// up to date. `EGRESSD_BIN`, or [`use_egressd`] before the first call,
/// overrides all of this.
pub fn egressd_bin() -> PathBuf {
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("EGRESSD_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test binary knows its path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a profile directory name");
        let profile = if profile == "debug" { "dev" } else { profile };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "egressd",
                "--bin",
                "egressd",
                "--profile",
                profile,
            ])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("run cargo to build egressd");
        assert!(status.success(), "cannot build the egressd binary");
        let bin = profile_dir.join("egressd");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}
