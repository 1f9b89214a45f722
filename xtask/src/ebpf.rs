//! `ebpf-build` and `ebpf-check`: the kernel object is committed so that building
//! egressd needs no clang; these tasks rebuild it reproducibly and prove the
//! committed bytes come from the committed source.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// The compiler the object is built with. Another clang emits different bytes.
const CLANG: &str = "clang-19";
/// Source and object, relative to the `ebpf` crate.
const SOURCE: &str = "bpf/egressd.bpf.c";
const OBJECT: &str = "bpf/egressd.bpf.o";

fn ebpf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("ebpf")
}

/// Compiles the C source into `out`. Runs inside `ebpf/` with relative paths and maps
/// that directory to `.`, so the debug info (and so the object) does not depend on
/// where the checkout lives.
fn compile(out: &Path) -> anyhow::Result<()> {
    let dir = ebpf_dir()
        .canonicalize()
        .context("cannot find the ebpf crate")?;
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    let status = Command::new(CLANG)
        .current_dir(&dir)
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .arg(format!("-ffile-prefix-map={}=.", dir.display()))
        .args(["-c", SOURCE, "-o"])
        .arg(out)
        .status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{CLANG} is not installed: install it (Debian/Ubuntu: `apt-get install clang-19 libbpf-dev linux-libc-dev`); \
             the committed {OBJECT} is used without it"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot run {CLANG}")),
        Ok(s) if !s.success() => bail!("{CLANG} failed ({s}) compiling {SOURCE}"),
        Ok(_) => Ok(()),
    }
}

/// `cargo xtask ebpf-build`.
pub fn build() -> anyhow::Result<()> {
    let out = ebpf_dir().join(OBJECT);
    compile(&out)?;
    let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!("built ebpf/{OBJECT} ({len} bytes)");
    Ok(())
}

/// `cargo xtask ebpf-check`.
pub fn check() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let fresh = tmp.path().join("egressd.bpf.o");
    compile(&fresh)?;
    let committed_path = ebpf_dir().join(OBJECT);
    let committed = std::fs::read(&committed_path)
        .with_context(|| format!("cannot read {}", committed_path.display()))?;
    let rebuilt = std::fs::read(&fresh).context("cannot read the rebuilt object")?;
    if committed != rebuilt {
        let first = committed
            .iter()
            .zip(&rebuilt)
            .position(|(a, b)| a != b)
            .unwrap_or(committed.len().min(rebuilt.len()));
        bail!(
            "ebpf/{OBJECT} is stale: it differs from a fresh build of {SOURCE} (committed {} bytes, rebuilt {} bytes, first difference at byte {first}). \
             Run `cargo xtask ebpf-build` and commit the object (a different clang or libbpf/kernel header version also changes the bytes)",
            committed.len(),
            rebuilt.len()
        );
    }
    println!(
        "ebpf/{OBJECT} matches a fresh build ({} bytes)",
        committed.len()
    );
    Ok(())
}
