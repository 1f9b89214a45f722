//! `egressd cleanup`.

use std::process::ExitCode;

/// Options of `egressd cleanup`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd cleanup` is not built yet")
}
