//! `egressd explain`.

use std::process::ExitCode;

/// Options of `egressd explain`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd explain` is not built yet")
}
