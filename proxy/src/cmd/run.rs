//! `egressd run`: the enforcer in the foreground until SIGTERM/SIGINT.
//!
//! Order (style.md "validate before binding"): load and check the policy and
//! every option, exit 2 with one sentence on bad input; then
//! [`daemon::start`] opens the journal, binds every listener and attaches the
//! kernel hooks (unless `--no-ebpf`); only then is the ready file written.
//! Shutdown ([`daemon::RunningDaemon::shutdown`]): stop accepting, let tunnels
//! finish for the grace period, cut the rest, flush and close the journal,
//! detach, remove the ready file, exit 0. The policy file is watched for
//! changes (and re-read on SIGHUP) for as long as it runs. With
//! `--audit-server`, the journal is shipped to the policy service while it
//! runs, and shutdown waits (bounded by `--ship-timeout`) for the last records
//! to be acknowledged; what is not is sent by the next start (the journal is
//! the outbox).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

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
    /// Ship every audit record to this policy service (`egressd serve`),
    /// at least once, with the record id as idempotency key.
    #[arg(long, value_name = "URL", requires = "token_file")]
    pub audit_server: Option<String>,
    /// Bearer token for --audit-server.
    #[arg(long, value_name = "FILE", requires = "audit_server")]
    pub token_file: Option<PathBuf>,
    /// On shutdown, how long to wait for the service to acknowledge the
    /// last records.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = daemon::parse_duration)]
    pub ship_timeout: Duration,
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
    let client = match (&args.audit_server, &args.token_file) {
        (Some(url), Some(token)) => Some(
            egressd_service::Client::with_token_file(url, token, Duration::from_secs(30))
                .map_err(|e| UsageError(format!("--audit-server {url}: {e}")))?,
        ),
        _ => None,
    };
    crate::cmd::runtime()?.block_on(async {
        let mut running = daemon::start(plan).await?;
        let shipper = match client {
            Some(client) => Some(
                egressd_audit::ship::Shipper::start(
                    running.engine().journal().dir().to_owned(),
                    client,
                    egressd_audit::ship::ShipConfig::default(),
                )
                .context("cannot start shipping the audit journal")?,
            ),
            None => None,
        };
        if let Some(path) = &args.options.ready_file {
            running.write_ready_file(path)?;
        }
        if running.kernel_attached() && !args.options.pin {
            tracing::warn!(
                "the kernel hooks are not pinned: if egressd is killed (SIGKILL, the OOM \
                 killer), they detach with it and the cgroup's traffic leaves UNFILTERED; \
                 pass --pin (as `egressd boot` on a runner should) to keep it blocked instead"
            );
        }
        let ready = running.ready_info();
        tracing::info!(
            explicit = ?ready.explicit,
            sni = ?ready.sni,
            transparent = ?ready.listen,
            dns = ?ready.dns,
            metrics = ?ready.metrics,
            kernel = running.kernel_attached(),
            "egressd is ready"
        );
        daemon::wait_for_termination().await?;
        tracing::info!("shutting down: no new connections");
        running.shutdown().await?;
        if let Some(shipper) = shipper {
            let deadline = tokio::time::Instant::now() + args.ship_timeout;
            match shipper.flush(deadline).await {
                Ok(stats) => tracing::info!(?stats, "audit records shipped"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "not every audit record reached the service before shutdown; the next start sends the rest"
                ),
            }
            shipper.stop().await;
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}
