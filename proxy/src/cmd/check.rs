//! `egressd check`.

use std::process::ExitCode;

/// Options of `egressd check`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd check` is not built yet")
}
