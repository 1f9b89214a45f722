//! `egressd run`.

use std::process::ExitCode;

/// Options of `egressd run`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Entry point.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`egressd run` is not built yet")
}
