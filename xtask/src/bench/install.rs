//! Getting what the bench runs: the peers from Debian's packages (as root,
//! with apt-get) and egressd itself (a release build).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use super::peers::Target;

const PEERS: [Target; 7] = [
    Target::Haproxy,
    Target::Nginx,
    Target::Squid,
    Target::Tinyproxy,
    Target::Dnsmasq,
    Target::Unbound,
    Target::Dnsdist,
];

fn installed(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| std::path::Path::new(d).join(program).exists())
}

/// Installs missing peers when allowed and running as root; returns the
/// programs still missing (their rows say so).
pub fn ensure_peers(allow_install: bool) -> anyhow::Result<Vec<String>> {
    let mut packages = Vec::new();
    for t in PEERS {
        if let Some((program, pkgs)) = t.program() {
            let stream_missing = program == "nginx"
                && !std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists();
            if !installed(program) || stream_missing {
                packages.extend(pkgs.iter().copied());
            }
        }
    }
    // SAFETY: geteuid has no memory effects.
    let root = unsafe { libc::geteuid() } == 0;
    if !packages.is_empty() && allow_install && root {
        tracing::info!("installing {}", packages.join(" "));
        let ok = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()?
            .success();
        if !ok {
            bail!("apt-get update failed: install the peers by hand or pass --no-install");
        }
        let ok = Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .status()?
            .success();
        if !ok {
            bail!("apt-get install {} failed", packages.join(" "));
        }
    }
    Ok(PEERS
        .iter()
        .filter_map(|t| t.program())
        .map(|(p, _)| p)
        .filter(|p| !installed(p))
        .map(str::to_owned)
        .collect())
}

/// A `cargo` command for a build from inside `cargo run` (`cargo xtask`).
///
/// `cargo run` gives the program the package's variables (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...). Build scripts such as ring's declare
/// `rerun-if-env-changed` on them, so an inner cargo that inherits them sees
/// "changed" values and rebuilds ring and everything above it (minutes on
/// this machine), and the next plain build rebuilds it back. Dropped here.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `cargo build --release -p egressd`; returns the binary's path.
pub fn build_egressd() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args([
            "build",
            "--release",
            "-p",
            "egressd",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p egressd failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "egressd"
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build did not report the egressd executable")
}
