//! `egressd boot`: the runner host's service (systemd `Type=notify`).
//!
//! 1. Obtain the policy: `--policy FILE`, or `--policy-url` (the policy
//!    service) with a last-known-good copy in `--policy-cache`.
//! 2. Start enforcement (`daemon::start`): journal, listeners, kernel hooks.
//! 3. Self-test (`selftest`): an allowed name is decided allow, the denied
//!    target is decided deny, and a probe process in the filtered cgroup is
//!    intercepted and refused.
//! 4. Serve the control socket for the job hooks, write the ready file, tell
//!    systemd `READY=1`, stay in the foreground until SIGTERM/SIGINT.
//!
//! Fail closed (documented in docs/runner.md):
//! - no valid policy (unreadable or invalid file, service unreachable and no
//!   valid cached copy, invalid policy served): the hooks are attached all the
//!   same with a policy that allows nothing, the engine marks every decision
//!   `policy_unavailable`, an `event` record says why, the error is logged and
//!   put in systemd's STATUS=, `job status` answers `degraded`, every job
//!   summary starts with the warning; with `--policy-url` the service is
//!   asked again every `--policy-retry` until a valid policy arrives;
//! - the hooks cannot be attached, or the self-test fails: egressd exits 1
//!   without ever reporting ready, so a runner service ordered after it with
//!   `Requires=egressd.service` does not start (and with `--pin`, links
//!   pinned by an earlier boot keep blocking).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use egressd_audit::Kind;
use egressd_policy::{Decision, Policy, Reason};

use crate::cmd::UsageError;
use crate::control::{self, Health, JobService};
use crate::daemon::{self, Defaults, Options, parse_duration};
use crate::engine::Engine;
use crate::notify::Notifier;
use crate::policy_source::{PolicySource, ServiceSource};
use crate::{selftest, sudo, tamper};

/// Options of `egressd boot`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    egressd boot --policy /etc/egressd/policy.yaml --labels self-hosted,linux\n  \
    egressd boot --policy-url https://policy.internal:8443/v1/orgs/acme/policy \\\n    \
    --token-file /etc/egressd/token --control-group egressd\n\n\
    See docs/runner.md for the systemd unit and the runner job hooks.")]
pub struct Args {
    /// The policy YAML (or use --policy-url).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "policy_url",
        conflicts_with = "policy_url"
    )]
    pub policy: Option<PathBuf>,
    /// The org policy from the policy service:
    /// https://HOST[:PORT]/v1/orgs/ORG/policy.
    #[arg(long, value_name = "URL")]
    pub policy_url: Option<String>,
    /// Bearer token for the policy service.
    #[arg(long, value_name = "FILE", default_value = "/etc/egressd/token")]
    pub token_file: PathBuf,
    /// Last-known-good copy of the service's policy (used when the service
    /// cannot be reached at boot).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/egressd/policy.lkg.yaml"
    )]
    pub policy_cache: PathBuf,
    /// Ship every audit record to the policy service of --policy-url
    /// (at-least-once; the journal is the outbox). `job end` waits for the
    /// job's records to get there.
    #[arg(long, requires = "policy_url")]
    pub ship: bool,
    /// How often the policy service is asked for a newer policy.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub policy_refresh: Duration,
    /// While no valid policy is active, how often the service is asked again.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub policy_retry: Duration,
    /// This runner's labels, comma-separated (they select policy overrides).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// The control socket the job hooks talk to.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Group (name or gid) allowed to use the control socket besides root.
    #[arg(long, value_name = "NAME")]
    pub control_group: Option<String>,
    /// A name the policy allows, checked by the self-test [default: the first
    /// name among the policy's allow rules].
    #[arg(long, value_name = "NAME")]
    pub self_test_allow: Option<String>,
    /// A target the policy denies; the self-test probe connects to it. Use an
    /// address routed nowhere.
    #[arg(long, value_name = "IP:PORT", default_value_t = selftest::DEFAULT_DENIED_TARGET)]
    pub self_test_target: SocketAddr,
    /// Hardening (off by default): comment out USER's rules in /etc/sudoers
    /// and /etc/sudoers.d (backups in /var/lib/egressd/sudoers-backup).
    #[arg(long, value_name = "USER")]
    pub remove_sudo: Option<String>,
    /// Hardening (off by default): every --tamper-interval, check that the
    /// kernel programs are attached, the listeners alive and the policy file
    /// unchanged; record what changed as an `event` audit record.
    #[arg(long)]
    pub watch_tamper: bool,
    /// How often --watch-tamper checks.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub tamper_interval: Duration,
    /// Enforcer options (as for `egressd run`).
    #[command(flatten)]
    pub options: Box<Options>,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = match (&args.policy, &args.policy_url) {
        (Some(p), None) => PolicySource::File(p.clone()),
        (None, Some(url)) => PolicySource::Service(
            ServiceSource::from_url(url, args.token_file.clone(), args.policy_cache.clone())
                .map_err(|e| UsageError(e.to_string()))?,
        ),
        _ => {
            return Err(UsageError(
                "give exactly one of --policy FILE and --policy-url URL".into(),
            )
            .into());
        }
    };
    if let Some(user) = &args.remove_sudo {
        let removed = sudo::remove_sudo(
            std::path::Path::new("/etc"),
            user,
            std::path::Path::new("/var/lib/egressd/sudoers-backup"),
        )
        .with_context(|| format!("--remove-sudo {user}: cannot rewrite the sudoers files"))?;
        for r in &removed {
            tracing::warn!(file = %r.file.display(), backup = %r.backup.display(), lines = r.lines, "sudo rules of {user} removed");
        }
    }
    crate::cmd::runtime()?.block_on(boot(args, source))
}

async fn boot(args: Args, source: PolicySource) -> anyhow::Result<ExitCode> {
    let notifier = Notifier::from_env();
    notifier.status("obtaining the policy");
    let (policy, health) = match source.obtain().await {
        Ok(o) => {
            for w in &o.warnings {
                tracing::warn!("{w}");
            }
            let health = match &o.origin {
                crate::policy_source::Origin::Cache(_) => {
                    // Enforcing a valid policy, but say loudly it may be stale.
                    tracing::error!("{}", o.origin);
                    Health::Enforcing(o.origin.to_string())
                }
                other => Health::Enforcing(other.to_string()),
            };
            (o.policy, health)
        }
        Err(e) => {
            let why = format!("policy unavailable: {e}");
            tracing::error!(
                "FAIL CLOSED: {why}; every connection and query is denied until a valid policy is loaded"
            );
            (deny_all()?, Health::Degraded(why))
        }
    };
    let plan = daemon::plan(&args.options, policy, None, Defaults::default())?;
    let probe_parent = plan.kernel.as_ref().map(|k| k.cgroup.clone());
    notifier.status("attaching the kernel hooks");
    let mut running = match daemon::start(plan).await {
        Ok(r) => r,
        Err(e) => {
            notifier.status(&format!("FAILED: {e:#}"));
            return Err(e.context("enforcement could not start; egressd stays down and the runner service must not start (see docs/runner.md)"));
        }
    };
    let engine = Arc::clone(running.engine());
    if let Health::Degraded(why) = &health {
        engine.set_fail_closed(true);
        audit_event(&engine, Reason::PolicyUnavailable, why).await;
    }

    notifier.status("self-test");
    let allow = match &health {
        Health::Degraded(_) => None,
        Health::Enforcing(_) => Some(args.self_test_allow.as_deref()),
    };
    let tested = match allow {
        Some(allow) => {
            selftest::run(
                &engine,
                allow,
                args.self_test_target,
                probe_parent.as_deref(),
            )
            .await
        }
        None => {
            selftest::run_fail_closed(&engine, args.self_test_target, probe_parent.as_deref()).await
        }
    };
    match tested {
        Ok(report) => {
            tracing::info!(allowed = ?report.allowed_name, probed = report.probed, "self-test passed")
        }
        Err(e) => {
            tracing::error!("{e}");
            notifier.status(&format!("FAILED: {e}"));
            let _ = running.shutdown().await;
            return Err(anyhow::Error::new(e).context("egressd does not report ready"));
        }
    }

    let listener = control::server::bind(&args.control_socket, args.control_group.as_deref())
        .context("cannot serve the control socket")?;
    let shipper = match (&source, args.ship) {
        (PolicySource::Service(svc), true) => Some(start_shipper(svc, engine.journal().dir())?),
        _ => None,
    };
    let jobs = JobService::new(
        Arc::clone(&engine),
        args.labels.clone(),
        health.clone(),
        shipper,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut background = tokio::task::JoinSet::new();
    background.spawn(control::server::serve(
        listener,
        Arc::clone(&jobs),
        stop.clone(),
    ));
    if let PolicySource::Service(svc) = &source {
        background.spawn(refresh_policy(
            svc.clone(),
            Arc::clone(&engine),
            Arc::clone(&jobs),
            notifier.clone(),
            args.policy_refresh,
            args.policy_retry,
            stop.clone(),
        ));
    }
    if args.watch_tamper {
        let mut listeners: Vec<SocketAddr> = Vec::new();
        let ready = running.ready_info();
        listeners.extend(ready.listen);
        listeners.extend(ready.explicit);
        listeners.extend(ready.sni.iter().copied());
        let watched = tamper::Watched {
            cgroup: ready.cgroup.clone(),
            listeners,
            policy_file: args.policy.clone(),
        };
        background.spawn(watch_tamper(
            watched,
            Arc::clone(&engine),
            Arc::clone(&jobs),
            notifier.clone(),
            args.tamper_interval,
            stop.clone(),
        ));
    }

    let (state, detail) = match &health {
        Health::Enforcing(d) => ("enforcing", d.clone()),
        Health::Degraded(d) => ("degraded", d.clone()),
    };
    running.set_state(state, &detail);
    if let Some(path) = &args.options.ready_file {
        running.write_ready_file(path)?;
    }
    match &health {
        Health::Enforcing(d) => notifier.ready(&format!("enforcing ({d})")),
        Health::Degraded(d) => notifier.ready(&format!("DEGRADED, all egress denied: {d}")),
    }
    tracing::info!(state, detail, control = %args.control_socket.display(), "egressd boot is ready");

    daemon::wait_for_termination().await?;
    tracing::info!("shutting down");
    notifier.stopping();
    stop.cancel();
    while background.join_next().await.is_some() {}
    if let Some(s) = jobs.flush_shipper().await {
        tracing::info!(shipping = s, "audit records shipped before shutdown");
    }
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Ship the journal in `dir` to the policy service `svc`.
fn start_shipper(
    svc: &ServiceSource,
    dir: &std::path::Path,
) -> anyhow::Result<egressd_audit::ship::ShipperHandle> {
    let client = egressd_service::Client::with_token_file(
        &svc.base,
        &svc.token_file,
        Duration::from_secs(30),
    )
    .context("--ship: cannot build the policy service client")?;
    egressd_audit::ship::Shipper::start(
        dir.to_owned(),
        client,
        egressd_audit::ship::ShipConfig::default(),
    )
    .context("--ship: cannot start shipping the audit journal")
}

/// The policy enforced when none is available: nothing allowed.
fn deny_all() -> anyhow::Result<Policy> {
    Policy::parse("<fail-closed>", "version: 1\n")
        .map(|l| l.policy)
        .map_err(|d| anyhow::anyhow!("the built-in deny-all policy is invalid: {d}"))
}

async fn audit_event(engine: &Engine, reason: Reason, detail: &str) {
    let mut rec = engine.record(Kind::Event, &Decision::engine_deny(reason));
    rec.detail = Some(detail.to_owned());
    engine.audit(rec).await;
    if let Err(e) = engine.journal().flush().await {
        tracing::error!(error = %e, "cannot flush the audit journal");
    }
}

/// Ask the service for a newer policy every `refresh` (every `retry` while
/// degraded). A valid one replaces the active one (and ends the fail-closed
/// state); a failure keeps what is active.
async fn refresh_policy(
    svc: ServiceSource,
    engine: Arc<Engine>,
    jobs: Arc<JobService>,
    notifier: Notifier,
    refresh: Duration,
    retry: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let source = PolicySource::Service(svc);
    loop {
        let degraded = matches!(&*jobs.health(), Health::Degraded(_));
        let wait = if degraded { retry } else { refresh };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        match source.obtain().await {
            Ok(o) if o.origin == crate::policy_source::Origin::Service || degraded => {
                engine.replace_policy(o.policy);
                engine.set_fail_closed(false);
                if degraded {
                    tracing::warn!(
                        "a valid policy is active again ({}); enforcement restored",
                        o.origin
                    );
                    notifier.status(&format!("enforcing ({})", o.origin));
                }
                jobs.set_health(Health::Enforcing(o.origin.to_string()));
            }
            Ok(o) => tracing::warn!("policy refresh: {}; the active policy stays", o.origin),
            Err(e) => tracing::warn!("policy refresh failed, the active policy stays: {e}"),
        }
    }
}

async fn watch_tamper(
    watched: tamper::Watched,
    engine: Arc<Engine>,
    jobs: Arc<JobService>,
    notifier: Notifier,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut baseline = watched.snapshot();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let now = watched.snapshot();
        let changes = tamper::differences(&baseline, &now);
        for change in &changes {
            tracing::error!("TAMPERING: {change}");
            audit_event(
                &engine,
                Reason::TamperDetected,
                &format!("tampering: {change}"),
            )
            .await;
        }
        if !changes.is_empty() {
            let why = format!("tampering detected: {}", changes.join("; "));
            notifier.status(&format!("DEGRADED: {why}"));
            jobs.set_health(Health::Degraded(why));
        }
        baseline = now;
    }
}
