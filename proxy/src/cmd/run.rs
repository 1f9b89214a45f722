//! `egressd run`: the enforcer in the foreground until SIGTERM/SIGINT.
//!
//! Order (style.md "validate before binding"): parse and check every option
//! and the policy, exit 2 with one sentence on bad input; then open the
//! journal, bind every listener, attach the kernel hooks (when not
//! `--no-ebpf`), write the ready file, serve. Shutdown: stop accepting, let
//! tunnels finish for the grace period, cut the rest, flush and close the
//! journal, remove the ready file, exit 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::task::TaskTracker;

use crate::cmd::UsageError;
use crate::dns::{self, DnsMemory, Resolver};
use crate::engine::{Engine, EngineParts};
use crate::limits::Limits;
use crate::origin::{DstSource, KernelOriginalDst};
use crate::{connect, metrics, reload, transparent};

/// Options of `egressd run`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example (explicit proxy, no root needed):\n  \
    egressd run --policy policy.yaml --no-ebpf --explicit 127.0.0.1:3128 \\\n    \
    --audit-dir ./audit --ready-file ./ready\n  \
    HTTPS_PROXY=http://127.0.0.1:3128 curl https://github.com/")]
pub struct Args {
    /// The policy YAML.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// cgroup v2 directory whose processes (and descendants) are filtered
    /// [default: the cgroup v2 root].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Attach nothing in the kernel: serve only the listeners asked for
    /// (`--explicit`, `--listen`, `--dns-listen`); needs no root.
    #[arg(long)]
    pub no_ebpf: bool,
    /// Also serve an HTTP CONNECT proxy on ADDR (e.g. 127.0.0.1:3128).
    #[arg(long, value_name = "ADDR")]
    pub explicit: Option<SocketAddr>,
    /// The transparent listener redirected connections arrive on
    /// [default: 127.0.0.1:15001; with --no-ebpf only when given, for an
    /// nftables `redirect` setup].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The DNS server, UDP and TCP [default: 127.0.0.1:15053; with --no-ebpf
    /// only when given].
    #[arg(long, value_name = "ADDR")]
    pub dns_listen: Option<SocketAddr>,
    /// Upstream resolver IP:PORT, repeatable [default: from
    /// /run/systemd/resolve/resolv.conf, else /etc/resolv.conf].
    #[arg(long = "dns-upstream", value_name = "IP:PORT")]
    pub dns_upstream: Vec<SocketAddr>,
    /// Where the audit journal lives.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/egressd/audit")]
    pub audit_dir: PathBuf,
    /// Created (with the bound addresses, as JSON) once every listener is
    /// bound and every kernel hook attached; removed on exit.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Runner name written into every record [default: the hostname].
    #[arg(long, value_name = "NAME")]
    pub runner: Option<String>,
    /// Serve Prometheus text metrics on ADDR.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Also filter loopback destinations (policy.md step 1 skipped); for
    /// testing a policy against local servers.
    #[arg(long)]
    pub filter_loopback: bool,
    /// Client connections handled at once; more are denied (limit_exceeded).
    #[arg(long, value_name = "N", default_value_t = 8192)]
    pub max_tunnels: usize,
    /// Longest a client may take to send its ClientHello, HTTP head or
    /// CONNECT request (e.g. 500ms, 10s).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub peek_timeout: Duration,
    /// A tunnel with no traffic either way for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM, how long open tunnels may finish before they are cut.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// `500ms`, `10s`, `5m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write e.g. 500ms, 10s or 5m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if !(secs > 0.0 && secs < 1e9) {
        return Err(format!("{s:?}: a duration must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// What `run` will serve, fully validated.
struct Plan {
    policy: reload::LoadedFile,
    transparent: Option<SocketAddr>,
    explicit: Option<SocketAddr>,
    dns: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    upstreams: Vec<SocketAddr>,
    runner: String,
    limits: Limits,
}

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15001);
const DEFAULT_DNS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15053);

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let usage = |msg: String| anyhow::Error::new(UsageError(msg));
    let policy = reload::load(&args.policy).map_err(|e| usage(e.to_string()))?;
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    if !args.no_ebpf {
        // The eBPF enforcer plugs in here (see `attach_kernel`).
        anyhow::bail!(
            "the eBPF enforcer is not wired into `egressd run` yet; run with --no-ebpf and --explicit ADDR"
        );
    }
    let (transparent, dns) = if args.no_ebpf {
        (args.listen, args.dns_listen)
    } else {
        (
            Some(args.listen.unwrap_or(DEFAULT_LISTEN)),
            Some(args.dns_listen.unwrap_or(DEFAULT_DNS_LISTEN)),
        )
    };
    if transparent.is_none() && args.explicit.is_none() && dns.is_none() {
        return Err(usage(
            "with --no-ebpf there is nothing to serve: give --explicit ADDR (and/or --listen, --dns-listen)"
                .into(),
        ));
    }
    if args.max_tunnels == 0 || args.max_tunnels > tokio::sync::Semaphore::MAX_PERMITS {
        return Err(usage("--max-tunnels must be at least 1".into()));
    }
    let upstreams = if args.dns_upstream.is_empty() {
        dns::system_upstreams()
    } else {
        args.dns_upstream.clone()
    };
    if upstreams.is_empty() {
        return Err(usage(
            "no DNS upstream found in /run/systemd/resolve/resolv.conf or /etc/resolv.conf: pass --dns-upstream IP:PORT"
                .into(),
        ));
    }
    let runner = match &args.runner {
        Some(r) if r.trim().is_empty() => return Err(usage("--runner must not be empty".into())),
        Some(r) => r.clone(),
        None => hostname(),
    };
    let limits = Limits {
        max_tunnels: args.max_tunnels,
        peek_timeout: args.peek_timeout,
        idle_timeout: args.idle_timeout,
        shutdown_grace: args.shutdown_grace,
        ..Limits::default()
    };
    Ok(Plan {
        policy,
        transparent,
        explicit: args.explicit,
        dns,
        metrics: args.metrics,
        upstreams,
        runner,
        limits,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    crate::cmd::runtime()?.block_on(serve(args, plan))
}

/// The sockets `run` bound (ports resolved when 0 was asked for).
struct Bound {
    transparent: Option<TcpListener>,
    explicit: Option<TcpListener>,
    dns_udp: Option<UdpSocket>,
    dns_tcp: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

async fn bind_tcp(addr: Option<SocketAddr>, what: &str) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(a) => TcpListener::bind(a).await.map(Some).with_context(|| {
            format!("cannot listen on {a} for the {what}; choose another address")
        }),
    }
}

async fn bind(plan: &Plan) -> anyhow::Result<Bound> {
    let transparent = bind_tcp(plan.transparent, "transparent listener").await?;
    let explicit = bind_tcp(plan.explicit, "CONNECT proxy").await?;
    let metrics = bind_tcp(plan.metrics, "metrics endpoint").await?;
    let (dns_udp, dns_tcp) = match plan.dns {
        None => (None, None),
        Some(a) => {
            let udp = UdpSocket::bind(a).await.with_context(|| {
                format!("cannot listen on {a} (UDP) for the DNS server; choose another address")
            })?;
            // Port 0: serve TCP on the port UDP got.
            let tcp_addr = udp.local_addr()?;
            let tcp = TcpListener::bind(tcp_addr).await.with_context(|| {
                format!(
                    "cannot listen on {tcp_addr} (TCP) for the DNS server; choose another address"
                )
            })?;
            (Some(udp), Some(tcp))
        }
    };
    Ok(Bound {
        transparent,
        explicit,
        dns_udp,
        dns_tcp,
        metrics,
    })
}

/// Where the kernel hooks come from: today only `--no-ebpf` exists, where
/// nothing is attached and the transparent listener (if asked for) reads the
/// kernel's `SO_ORIGINAL_DST` (an nftables `redirect` setup). The eBPF
/// enforcer plugs in here: attach with the engine's listener ports and return
/// its original-destination lookup.
fn attach_kernel(
    args: &Args,
    _engine: &Arc<Engine>,
    _bound: &Bound,
) -> anyhow::Result<Arc<dyn DstSource>> {
    if args.no_ebpf {
        return Ok(Arc::new(KernelOriginalDst));
    }
    anyhow::bail!("the eBPF enforcer is not wired into `egressd run` yet; run with --no-ebpf")
}

async fn serve(args: Args, plan: Plan) -> anyhow::Result<ExitCode> {
    let journal = egressd_audit::Journal::open(egressd_audit::JournalConfig::new(&args.audit_dir))
        .context("cannot open the audit journal")?;
    let bound = bind(&plan).await?;
    let dns_memory = Arc::new(DnsMemory::new());
    let resolver = Resolver::new(plan.upstreams.clone()).with_memory(Arc::clone(&dns_memory));
    let engine = Engine::new(EngineParts {
        policy: plan.policy.policy,
        journal: journal.clone(),
        dns_memory,
        resolver,
        runner: plan.runner,
        limits: plan.limits,
        upstream_mark: None,
        filter_loopback: args.filter_loopback,
    });
    let source = attach_kernel(&args, &engine, &bound)?;
    let ready = ReadyInfo::of(&bound)?;

    let tasks = TaskTracker::new();
    let mut servers = tokio::task::JoinSet::new();
    if let Some(l) = bound.transparent {
        servers.spawn(transparent::serve(
            Arc::clone(&engine),
            l,
            source,
            tasks.clone(),
        ));
    }
    if let Some(l) = bound.explicit {
        servers.spawn(connect::serve(Arc::clone(&engine), l, tasks.clone()));
    }
    if let Some(l) = bound.metrics {
        servers.spawn(metrics::serve(Arc::clone(&engine), l));
    }
    if let (Some(udp), Some(tcp)) = (bound.dns_udp, bound.dns_tcp) {
        servers.spawn(dns::serve_udp(Arc::clone(&engine), udp, tasks.clone()));
        servers.spawn(dns::serve_tcp(Arc::clone(&engine), tcp, tasks.clone()));
    }
    servers.spawn(reload::watch(
        Arc::clone(&engine),
        args.policy.clone(),
        plan.policy.fingerprint,
        Duration::from_secs(1),
    ));

    let ready_file = match &args.ready_file {
        Some(p) => Some(ReadyFile::create(p, &ready)?),
        None => None,
    };
    tracing::info!(
        explicit = ?ready.explicit,
        transparent = ?ready.listen,
        dns = ?ready.dns,
        metrics = ?ready.metrics,
        "egressd is ready"
    );

    wait_for_termination().await?;
    tracing::info!("shutting down: no new connections");
    engine.stop_accepting().cancel();
    tasks.close();
    if tokio::time::timeout(engine.limits().shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::info!(
            open = tasks.len(),
            "grace period over: cutting open tunnels"
        );
        engine.cut_tunnels().cancel();
        // Cut tunnels write their closing records; peeks end by their timeouts.
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
    servers.abort_all();
    let closed = journal.close().await;
    drop(ready_file);
    closed.context("cannot flush the audit journal on shutdown")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// What the ready file says: the addresses actually bound (useful when port 0
/// was asked for).
#[derive(Debug, serde::Serialize)]
struct ReadyInfo {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    explicit: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<SocketAddr>,
}

impl ReadyInfo {
    fn of(b: &Bound) -> anyhow::Result<ReadyInfo> {
        fn addr(l: Option<&TcpListener>) -> anyhow::Result<Option<SocketAddr>> {
            l.map(|l| l.local_addr())
                .transpose()
                .context("a bound listener has no address")
        }
        Ok(ReadyInfo {
            pid: std::process::id(),
            explicit: addr(b.explicit.as_ref())?,
            listen: addr(b.transparent.as_ref())?,
            dns: b
                .dns_udp
                .as_ref()
                .map(|u| u.local_addr())
                .transpose()
                .context("the DNS socket has no address")?,
            metrics: addr(b.metrics.as_ref())?,
        })
    }
}

/// The ready file: written atomically (temp file + rename), removed on drop.
struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    fn create(path: &Path, info: &ReadyInfo) -> anyhow::Result<ReadyFile> {
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(info)? + "\n";
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
        Ok(ReadyFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
