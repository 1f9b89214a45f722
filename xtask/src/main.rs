//! egressd developer tasks (`cargo xtask ...`): building and checking the
//! committed eBPF object, running the benchmark harness.

mod bench;
mod ebpf;

use clap::{Parser, Subcommand};

/// egressd developer tasks.
#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// One task per subcommand.
#[derive(Subcommand)]
enum Task {
    /// Rebuild ebpf/bpf/egressd.bpf.o from its C source with clang-19.
    EbpfBuild,
    /// Rebuild the eBPF object into a temporary file and fail unless it matches the
    /// committed one byte for byte.
    EbpfCheck,
    /// Run the peer benchmark (W1-W7; J1, the job corpus, on request) and print one
    /// Markdown table per workload.
    Bench(Box<bench::Args>),
}

fn main() -> anyhow::Result<()> {
    // Progress and phase timings on stderr, with the time since start.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().task {
        Task::EbpfBuild => ebpf::build(),
        Task::EbpfCheck => ebpf::check(),
        Task::Bench(args) => bench::run(*args),
    }
}
