//! `egressd cleanup`: detach and unpin everything egressd left in the kernel.
//! Links that a running or killed `egressd run --pin` kept pinned under bpffs
//! stay attached (fail closed) until this removes their pins. Idempotent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Options of `egressd cleanup`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The bpffs directory `egressd run --pin` pinned its links in.
    #[arg(long, value_name = "DIR", default_value = egressd_ebpf::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let removed = egressd_ebpf::cleanup(&args.pin_dir)
        .with_context(|| format!("cannot clean up {}", args.pin_dir.display()))?;
    if removed.is_empty() {
        println!("nothing to remove under {}", args.pin_dir.display());
    }
    for path in &removed {
        println!("removed {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
