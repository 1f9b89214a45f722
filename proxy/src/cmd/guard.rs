//! `egressd guard` (hidden): the guardian process that `exec` and the ready
//! file start, which undoes what must not outlast an egressd killed without
//! warning. Not for people to run; see `guardian`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::guardian::{self, Duties};

/// Options of `egressd guard`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Kill the processes of this cgroup and remove it.
    #[arg(long, value_name = "DIR")]
    pub kill_cgroup: Option<PathBuf>,
    /// Remove the pins in this directory (after the kill).
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Remove this file (repeatable).
    #[arg(long, value_name = "FILE")]
    pub remove: Vec<PathBuf>,
}

/// Entry point: waits on stdin for egressd's release or its end.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let duties = Duties {
        kill_cgroup: args.kill_cgroup,
        pin_dir: args.pin_dir,
        remove: args.remove,
    };
    let undone = guardian::stand_guard(&duties, std::io::stdin().lock());
    if !undone.is_empty() {
        eprintln!(
            "egressd guard: egressd ended without cleaning up (killed?); failing closed: {}",
            undone.join("; ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
