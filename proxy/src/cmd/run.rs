//! `egressd run`: the enforcer in the foreground until SIGTERM/SIGINT.
//!
//! Order (style.md "validate before binding"): load and check the policy and
//! every option, exit 2 with one sentence on bad input; then
//! [`daemon::start`] opens the journal, binds every listener and attaches the
//! kernel hooks (unless `--no-ebpf`); only then is the ready file written.
//! Shutdown ([`daemon::RunningDaemon::shutdown`]): stop accepting, let tunnels
//! finish for the grace period, cut the rest, flush and close the journal,
//! detach, remove the ready file, exit 0. The policy file is watched for
//! changes (and re-read on SIGHUP) for as long as it runs.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cmd::UsageError;
use crate::daemon::{self, Defaults, Options};
use crate::reload;

/// Options of `egressd run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example (explicit proxy, no root needed):\n  \
    egressd run --policy policy.yaml --no-ebpf --explicit 127.0.0.1:3128 \\\n    \
    --audit-dir ./audit --ready-file ./ready\n  \
    HTTPS_PROXY=http://127.0.0.1:3128 curl https://github.com/")]
pub struct Args {
    /// The policy YAML (re-read on SIGHUP and when it changes; an invalid
    /// new version is rejected and the running one stays).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Everything else the enforcer takes.
    #[command(flatten)]
    pub options: Options,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let loaded = reload::load(&args.policy).map_err(|e| UsageError(e.to_string()))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let plan = daemon::plan(
        &args.options,
        loaded.policy,
        Some((args.policy.clone(), loaded.fingerprint)),
        Defaults::default(),
    )?;
    crate::cmd::runtime()?.block_on(async {
        let mut running = daemon::start(plan).await?;
        if let Some(path) = &args.options.ready_file {
            running.write_ready_file(path)?;
        }
        let ready = running.ready_info();
        tracing::info!(
            explicit = ?ready.explicit,
            transparent = ?ready.listen,
            dns = ?ready.dns,
            metrics = ?ready.metrics,
            kernel = running.kernel_attached(),
            "egressd is ready"
        );
        daemon::wait_for_termination().await?;
        tracing::info!("shutting down: no new connections");
        running.shutdown().await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
