//! `egressd exec`.

use std::process::ExitCode;

/// Options of `egressd exec`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd exec` is not built yet")
}
