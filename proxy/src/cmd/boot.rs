//! `egressd boot`.

use std::process::ExitCode;

/// Options of `egressd boot`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd boot` is not built yet")
}
