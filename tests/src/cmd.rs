//! Running the system tools a test world is made with (`ip`, `dpkg-deb`,
//! ...) and keeping this machine's proxy settings out of every command.

use std::process::{Command, Output};

/// Environment variables that would send curl (or anything) elsewhere.
pub const PROXY_ENV: [&str; 8] = [
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

/// Run a command to completion and return its output (panics when it
/// cannot be started: a missing tool is a setup problem).
pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]))
}

/// Run a command that must succeed.
pub fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Remove every proxy variable (curl would obey them).
pub fn clear_proxy_env(cmd: &mut Command) {
    for v in PROXY_ENV {
        cmd.env_remove(v);
    }
}
