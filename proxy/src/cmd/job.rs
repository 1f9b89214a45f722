//! `egressd job ...`.

use std::process::ExitCode;

/// Subcommands of `egressd job`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {}

/// Entry point.
pub fn run(c: Command) -> anyhow::Result<ExitCode> {
    match c {}
}
