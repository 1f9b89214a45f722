//! `egressd check`: validate a policy file and print every problem as
//! `file:line:col: message` on stderr; exit 2 if any is an error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use egressd_policy::{Loaded, Policy};

use super::UsageError;

/// Options of `egressd check`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  egressd check examples/github-actions-org.yaml\n\n\
Prints every problem as file:line:col: message on stderr and `ok: N rules` on stdout.\n\
Exit status: 0 valid (warnings allowed), 2 invalid or unreadable."
)]
pub struct Args {
    /// The policy YAML file.
    pub policy: PathBuf,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = load(&args.policy)?;
    for w in &loaded.warnings {
        eprintln!("{w}");
    }
    let n = loaded.policy.rule_count();
    let warnings = match loaded.warnings.len() {
        0 => String::new(),
        1 => " (1 warning)".to_owned(),
        w => format!(" ({w} warnings)"),
    };
    println!(
        "ok: {n} {}{warnings}",
        if n == 1 { "rule" } else { "rules" }
    );
    Ok(ExitCode::SUCCESS)
}

/// Read and parse a policy file. On failure every diagnostic goes to stderr
/// and the error (exit 2) says how many there were.
pub(crate) fn load(path: &Path) -> anyhow::Result<Loaded> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        UsageError(format!(
            "cannot read the policy file {name}: {e}; check the path and permissions"
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        UsageError(format!(
            "the policy file {name} is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Policy::parse(&name, &text).map_err(|diagnostics| {
        for d in &diagnostics.0 {
            eprintln!("{d}");
        }
        let errors = diagnostics
            .0
            .iter()
            .filter(|d| d.severity == egressd_policy::Severity::Error)
            .count();
        UsageError(format!(
            "{name} is not a valid policy ({errors} {}); fix the lines above",
            if errors == 1 { "error" } else { "errors" }
        ))
        .into()
    })
}
