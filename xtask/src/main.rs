//! egressd developer tasks (`cargo xtask ...`): building and checking the
//! committed eBPF object, running the benchmark harness.

use clap::Parser;

/// egressd developer tasks.
#[derive(Parser)]
#[command(name = "xtask")]
enum Task {}

fn main() -> anyhow::Result<()> {
    match Task::parse() {}
}
