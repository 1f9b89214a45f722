//! The command line (`../shared/design/cli.md`): one module per subcommand,
//! each owning its `Args` and its entry point. Exit codes: 0 success, 1 runtime
//! failure, 2 bad usage or invalid policy.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::logging::{self, LogFormat};

pub mod audit;
pub mod boot;
pub mod check;
pub mod cleanup;
pub mod exec;
pub mod explain;
pub mod guard;
pub mod job;
pub mod run;
pub mod serve;

/// egressd: the egress filter for CI runners.
#[derive(Parser, Debug)]
#[command(name = "egressd", version, about, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a policy file; print every problem as file:line:col.
    Check(check::Args),
    /// Show the decision, reason and rule for a host, IP or host:port, offline.
    Explain(explain::Args),
    /// The enforcer, in the foreground, until SIGTERM/SIGINT.
    Run(run::Args),
    /// Run one command under the filter in a fresh cgroup.
    Exec(exec::Args),
    /// Runner boot: obtain the policy, start enforcement, self-test, serve.
    Boot(boot::Args),
    /// Runner job hooks.
    #[command(subcommand)]
    Job(job::Command),
    /// Audit records: export, summary, policy suggestions.
    #[command(subcommand)]
    Audit(audit::Command),
    /// The policy service: serve org policies, ingest and export audit records.
    Serve(serve::Args),
    /// Detach and unpin everything egressd left in the kernel.
    Cleanup(cleanup::Args),
    /// The guardian process egressd starts itself (not for people to run).
    #[command(hide = true)]
    Guard(guard::Args),
}

/// An error that is the caller's to fix (bad usage, invalid policy): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parse the command line, run the subcommand, map the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let outcome = match cli.command {
        Command::Check(a) => check::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Run(a) => run::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Boot(a) => boot::run(a),
        Command::Job(c) => job::run(c),
        Command::Audit(c) => audit::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Cleanup(a) => cleanup::run(a),
        Command::Guard(a) => guard::run(a),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("egressd: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// A multi-threaded tokio runtime for the subcommands that serve.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
