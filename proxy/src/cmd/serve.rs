//! `egressd serve`.

use std::process::ExitCode;

/// Options of `egressd serve`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd serve` is not built yet")
}
