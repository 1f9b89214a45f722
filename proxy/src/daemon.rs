//! The enforcer as an in-process service, shared by `egressd run`, `exec` and
//! `boot`: the options they all take ([`Options`]), and [`start`], which opens
//! the journal, binds every listener, builds the [`Engine`], attaches the
//! kernel hooks (when asked) and serves, returning a [`RunningDaemon`] whose
//! [`RunningDaemon::shutdown`] stops accepting, lets tunnels finish for the
//! grace period, flushes the journal and detaches the hooks (unless pinned).
//!
//! Order matters for failing closed: listeners are bound before the hooks
//! redirect anything to them, and the ready file is written by the caller
//! only once [`start`] returned, i.e. after every hook is attached.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use egressd_ebpf::{Enforcer, EnforcerConfig};
use egressd_policy::Policy;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::task::TaskTracker;

use crate::cmd::UsageError;
use crate::dns::{self, DnsMemory, Resolver};
use crate::engine::{Engine, EngineParts};
use crate::guardian::{Duties, Guardian};
use crate::kernel::{self, EbpfOrigins};
use crate::limits::Limits;
use crate::origin::{DstSource, KernelOriginalDst};
use crate::{connect, metrics, reload, sni_listen, transparent};

/// The transparent listener's default address with the kernel hooks.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15001);
/// The DNS server's default address with the kernel hooks.
pub const DEFAULT_DNS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15053);
/// Where the journal lives unless `--audit-dir` says otherwise.
pub const DEFAULT_AUDIT_DIR: &str = "/var/lib/egressd/audit";

/// Options of the enforcer, shared by `run`, `exec` and `boot`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// cgroup v2 directory whose processes (and descendants) are filtered
    /// [run, boot: the cgroup v2 root; exec: a fresh child of this directory,
    /// default the cgroup egressd runs in].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Attach nothing in the kernel: serve only the listeners asked for
    /// (`--explicit`, `--sni-listen`, `--listen`, `--dns-listen`); needs no
    /// root.
    #[arg(long)]
    pub no_ebpf: bool,
    /// Pin the kernel links under --pin-dir so that a killed egressd leaves
    /// traffic blocked (fail closed); they stay attached after exit too.
    /// `egressd cleanup` removes them.
    #[arg(long, conflicts_with = "no_ebpf")]
    pub pin: bool,
    /// bpffs directory for --pin.
    #[arg(long, value_name = "DIR", default_value = egressd_ebpf::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Host-side gateway address of a container bridge (e.g. docker0's
    /// 172.17.0.1), repeatable: connections from other network namespaces are
    /// redirected to the proxy there. Without one, such connections are denied.
    #[arg(long = "container-gateway", value_name = "IP")]
    pub container_gateways: Vec<IpAddr>,
    /// Also serve an HTTP CONNECT proxy on ADDR (e.g. 127.0.0.1:3128).
    #[arg(long, value_name = "ADDR")]
    pub explicit: Option<SocketAddr>,
    /// Also route TLS on its SNI on ADDR:PORT, repeatable (e.g.
    /// 127.0.0.1:443): for clients that DNS or /etc/hosts steer to egressd,
    /// with neither eBPF nor CONNECT. Each ClientHello's server name is
    /// decided like a CONNECT host, resolved, and dialled on
    /// --sni-upstream-port; no SNI or not TLS is denied.
    #[arg(long = "sni-listen", value_name = "ADDR:PORT")]
    pub sni_listen: Vec<SocketAddr>,
    /// The port the SNI listener connects to upstream.
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = sni_listen::DEFAULT_UPSTREAM_PORT,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub sni_upstream_port: u16,
    /// The transparent listener redirected connections arrive on (also bound
    /// on ::1 with the same port) [default: 127.0.0.1:15001 (exec: a free
    /// port); with --no-ebpf only when given, for an nftables `redirect`].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// The DNS server, UDP and TCP [default: 127.0.0.1:15053 (exec: a free
    /// port); with --no-ebpf only when given].
    #[arg(long, value_name = "ADDR")]
    pub dns_listen: Option<SocketAddr>,
    /// Upstream resolver IP:PORT, repeatable [default: from
    /// /run/systemd/resolve/resolv.conf, else /etc/resolv.conf].
    #[arg(long = "dns-upstream", value_name = "IP:PORT")]
    pub dns_upstream: Vec<SocketAddr>,
    /// Where the audit journal lives [default: /var/lib/egressd/audit; exec:
    /// a temporary directory removed afterwards].
    #[arg(long, value_name = "DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Largest the audit journal may grow (e.g. 512MiB, 4GiB); past it the
    /// oldest segments are removed, each removal logged and recorded as an
    /// event. Segments not yet shipped are kept up to twice this.
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = parse_size)]
    pub audit_max_size: u64,
    /// Created (with the bound addresses, as JSON) once every listener is
    /// bound and every kernel hook attached (boot: after the self-test);
    /// removed on exit.
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
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

/// `4096`, `512KiB`, `64MiB`, `1GiB`, `2TiB` (binary units; `K`, `M`, `G`,
/// `T` mean the same), at least one journal segment.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write e.g. 512MiB or 4GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    let segment = egressd_audit::JournalConfig::new("").segment_bytes;
    if bytes < segment {
        return Err(format!(
            "{s:?} is smaller than one journal segment ({} MiB); give at least {}MiB",
            segment >> 20,
            segment >> 20
        ));
    }
    Ok(bytes)
}

/// Where the kernel hooks go.
#[derive(Debug, Clone)]
pub struct KernelPlan {
    /// The cgroup to attach to.
    pub cgroup: PathBuf,
    /// Pin the links here (fail closed across a crash).
    pub pin_dir: Option<PathBuf>,
    /// Whether pinned links stay after a normal shutdown (`run`/`boot --pin`:
    /// blocked until the next start) or go with it (`exec`, whose pins only
    /// bridge a crash until its guardian has killed the command).
    pub keep_pins: bool,
    /// Container bridge gateway addresses.
    pub container_gateways: Vec<IpAddr>,
}

/// What to serve, fully validated ([`plan`] builds it from [`Options`]).
#[derive(Debug)]
pub struct Plan {
    /// The policy to enforce.
    pub policy: Policy,
    /// The policy file to watch for changes (and its loaded version).
    pub watch: Option<(PathBuf, reload::Fingerprint)>,
    /// The kernel hooks, or `None` (`--no-ebpf`).
    pub kernel: Option<KernelPlan>,
    /// The transparent listener.
    pub transparent: Option<SocketAddr>,
    /// The CONNECT proxy.
    pub explicit: Option<SocketAddr>,
    /// The SNI listeners.
    pub sni: Vec<SocketAddr>,
    /// The port the SNI listeners dial upstream.
    pub sni_upstream_port: u16,
    /// The DNS server.
    pub dns: Option<SocketAddr>,
    /// The metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// DNS upstreams.
    pub upstreams: Vec<SocketAddr>,
    /// Runner name.
    pub runner: String,
    /// Limits.
    pub limits: Limits,
    /// Also filter loopback destinations.
    pub filter_loopback: bool,
    /// The journal directory.
    pub audit_dir: PathBuf,
    /// The journal's size budget in bytes.
    pub audit_max_bytes: u64,
}

/// Per-command defaults [`plan`] applies.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The cgroup to attach to when `--cgroup` is absent (`None`: the cgroup
    /// v2 root).
    pub cgroup: Option<PathBuf>,
    /// Transparent listener with the hooks.
    pub listen: SocketAddr,
    /// DNS server with the hooks.
    pub dns_listen: SocketAddr,
    /// Journal directory.
    pub audit_dir: PathBuf,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            cgroup: None,
            listen: DEFAULT_LISTEN,
            dns_listen: DEFAULT_DNS_LISTEN,
            audit_dir: PathBuf::from(DEFAULT_AUDIT_DIR),
        }
    }
}

/// Validate `opts` with `policy` into a [`Plan`]. Bad input is a
/// [`UsageError`] (exit 2) naming what to change.
pub fn plan(
    opts: &Options,
    policy: Policy,
    watch: Option<(PathBuf, reload::Fingerprint)>,
    defaults: Defaults,
) -> anyhow::Result<Plan> {
    let usage = |msg: String| anyhow::Error::new(UsageError(msg));
    let kernel = if opts.no_ebpf {
        None
    } else {
        let cgroup = match opts.cgroup.clone().or(defaults.cgroup) {
            Some(c) => c,
            None => egressd_ebpf::cgroup2_mount().context("cannot find the cgroup v2 mount")?,
        };
        Some(KernelPlan {
            cgroup,
            pin_dir: opts.pin.then(|| opts.pin_dir.clone()),
            keep_pins: opts.pin,
            container_gateways: opts.container_gateways.clone(),
        })
    };
    let (transparent, dns) = if kernel.is_none() {
        (opts.listen, opts.dns_listen)
    } else {
        (
            Some(opts.listen.unwrap_or(defaults.listen)),
            Some(opts.dns_listen.unwrap_or(defaults.dns_listen)),
        )
    };
    if transparent.is_none()
        && opts.explicit.is_none()
        && opts.sni_listen.is_empty()
        && dns.is_none()
    {
        return Err(usage(
            "with --no-ebpf there is nothing to serve: give --explicit ADDR and/or --sni-listen ADDR:PORT (and/or --listen, --dns-listen)".into(),
        ));
    }
    if opts.max_tunnels == 0 {
        return Err(usage("--max-tunnels must be at least 1".into()));
    }
    let upstreams = if opts.dns_upstream.is_empty() {
        dns::system_upstreams()
    } else {
        opts.dns_upstream.clone()
    };
    if upstreams.is_empty() {
        return Err(usage(
            "no DNS upstream found in /run/systemd/resolve/resolv.conf or /etc/resolv.conf: pass --dns-upstream IP:PORT".into(),
        ));
    }
    let runner = match &opts.runner {
        Some(r) if r.trim().is_empty() => return Err(usage("--runner must not be empty".into())),
        Some(r) => r.clone(),
        None => hostname(),
    };
    let limits = Limits {
        max_tunnels: opts.max_tunnels,
        peek_timeout: opts.peek_timeout,
        idle_timeout: opts.idle_timeout,
        shutdown_grace: opts.shutdown_grace,
        ..Limits::default()
    };
    Ok(Plan {
        policy,
        watch,
        kernel,
        transparent,
        explicit: opts.explicit,
        sni: opts.sni_listen.clone(),
        sni_upstream_port: opts.sni_upstream_port,
        dns,
        metrics: opts.metrics,
        upstreams,
        runner,
        limits,
        filter_loopback: opts.filter_loopback,
        audit_dir: opts.audit_dir.clone().unwrap_or(defaults.audit_dir),
        audit_max_bytes: opts.audit_max_size,
    })
}

/// The host name, for `runner` when `--runner` is not given.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The sockets bound (ports resolved when 0 was asked for).
struct Bound {
    transparent: Vec<TcpListener>,
    explicit: Option<TcpListener>,
    sni: Vec<TcpListener>,
    dns_udp: Vec<UdpSocket>,
    dns_tcp: Vec<TcpListener>,
    metrics: Option<TcpListener>,
}

fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    crate::tunnel::listen(addr)
        .with_context(|| format!("cannot listen on {addr} for the {what}; choose another address"))
}

/// The extra addresses a redirected listener also needs: ::1 (IPv6 is
/// redirected there) and the container gateways, all on the primary's port.
fn companions(primary: SocketAddr, kernel: Option<&KernelPlan>) -> Vec<SocketAddr> {
    let Some(k) = kernel else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if primary.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        out.push(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            primary.port(),
        ));
    }
    for gw in &k.container_gateways {
        let a = SocketAddr::new(*gw, primary.port());
        if a != primary && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Bind ::1 where IPv6 exists; a machine without IPv6 has nothing to redirect there.
fn optional_v6(addr: SocketAddr, e: &std::io::Error) -> bool {
    addr.ip() == IpAddr::V6(Ipv6Addr::LOCALHOST)
        && matches!(
            e.raw_os_error(),
            Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT)
        )
}

async fn bind_tcp_group(
    primary: SocketAddr,
    kernel: Option<&KernelPlan>,
    what: &str,
) -> anyhow::Result<Vec<TcpListener>> {
    // An ephemeral primary port may be taken on a companion address: retry.
    for attempt in 0..8 {
        let first = bind_tcp(primary, what)?;
        let port = first.local_addr()?.port();
        let mut all = vec![first];
        let mut collided = false;
        for a in companions(SocketAddr::new(primary.ip(), port), kernel) {
            match crate::tunnel::listen(a) {
                Ok(l) => all.push(l),
                Err(e) if optional_v6(a, &e) => {
                    tracing::warn!(%a, "no IPv6 loopback: IPv6 connections cannot be redirected")
                }
                Err(e)
                    if primary.port() == 0
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < 7 =>
                {
                    collided = true;
                    break;
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot listen on {a} for the {what}"));
                }
            }
        }
        if !collided {
            return Ok(all);
        }
    }
    anyhow::bail!("cannot find a free port for the {what}")
}

async fn bind_dns(
    primary: SocketAddr,
    kernel: Option<&KernelPlan>,
) -> anyhow::Result<(Vec<UdpSocket>, Vec<TcpListener>)> {
    for attempt in 0..8 {
        let udp = UdpSocket::bind(primary).await.with_context(|| {
            format!("cannot listen on {primary} (UDP) for the DNS server; choose another address")
        })?;
        let addr = udp.local_addr()?;
        let mut udps = vec![udp];
        let mut tcps = Vec::new();
        let mut collided = false;
        for a in std::iter::once(addr).chain(companions(addr, kernel)) {
            if a != addr {
                match UdpSocket::bind(a).await {
                    Ok(s) => udps.push(s),
                    Err(e) if optional_v6(a, &e) => continue,
                    Err(e)
                        if primary.port() == 0
                            && e.kind() == std::io::ErrorKind::AddrInUse
                            && attempt < 7 =>
                    {
                        collided = true;
                        break;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("cannot listen on {a} (UDP) for the DNS server")
                        });
                    }
                }
            }
            match TcpListener::bind(a).await {
                Ok(l) => tcps.push(l),
                Err(e) if optional_v6(a, &e) => {}
                Err(e)
                    if primary.port() == 0
                        && e.kind() == std::io::ErrorKind::AddrInUse
                        && attempt < 7 =>
                {
                    collided = true;
                    break;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot listen on {a} (TCP) for the DNS server"));
                }
            }
        }
        if !collided {
            return Ok((udps, tcps));
        }
    }
    anyhow::bail!("cannot find a free port for the DNS server")
}

async fn bind(plan: &Plan) -> anyhow::Result<Bound> {
    let k = plan.kernel.as_ref();
    let transparent = match plan.transparent {
        Some(a) => bind_tcp_group(a, k, "transparent listener").await?,
        None => Vec::new(),
    };
    let explicit = match plan.explicit {
        Some(a) => Some(bind_tcp(a, "CONNECT proxy")?),
        None => None,
    };
    let mut sni = Vec::with_capacity(plan.sni.len());
    for &a in &plan.sni {
        sni.push(bind_tcp(a, "SNI listener")?);
    }
    let metrics = match plan.metrics {
        Some(a) => Some(bind_tcp(a, "metrics endpoint")?),
        None => None,
    };
    let (dns_udp, dns_tcp) = match plan.dns {
        Some(a) => bind_dns(a, k).await?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(Bound {
        transparent,
        explicit,
        sni,
        dns_udp,
        dns_tcp,
        metrics,
    })
}

/// What the ready file says: the addresses actually bound (useful when port 0
/// was asked for) and, for boot, the enforcement state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReadyInfo {
    /// egressd's pid.
    pub pid: u32,
    /// The CONNECT proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit: Option<SocketAddr>,
    /// The SNI listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni: Vec<SocketAddr>,
    /// The transparent listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The DNS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<SocketAddr>,
    /// The metrics endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// The cgroup the kernel hooks are attached to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// boot: `enforcing` or `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// boot: where the policy came from, or why enforcement is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The ready file: written atomically (temp file + rename), removed on drop,
/// and by a guardian process if egressd is killed before it can remove it
/// itself: nothing claims readiness once egressd is gone.
#[derive(Debug)]
pub struct ReadyFile {
    path: PathBuf,
    guardian: Option<Guardian>,
}

impl ReadyFile {
    /// Write `info` to `path`.
    pub fn create(path: &Path, info: &ReadyInfo) -> anyhow::Result<ReadyFile> {
        // The guardian first: from the moment the file exists, it is removed
        // whatever happens to egressd.
        let guardian = Guardian::spawn(&Duties {
            remove: vec![path.to_owned()],
            ..Duties::default()
        })?;
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(info)? + "\n";
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the ready file {}", path.display()))?;
        Ok(ReadyFile {
            path: path.to_owned(),
            guardian: Some(guardian),
        })
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(g) = self.guardian.take()
            && let Err(e) = g.release()
        {
            tracing::warn!(error = %e, "the ready file's guardian");
        }
    }
}

/// A serving enforcer. Dropping it without [`RunningDaemon::shutdown`] still
/// detaches unpinned hooks (the enforcer's own drop) but skips the grace
/// period and the journal flush.
pub struct RunningDaemon {
    engine: Arc<Engine>,
    ready: ReadyInfo,
    enforcer: Option<Arc<Enforcer>>,
    keep_pins: bool,
    origins: Option<Arc<EbpfOrigins>>,
    tasks: TaskTracker,
    servers: tokio::task::JoinSet<()>,
    ready_file: Option<ReadyFile>,
}

impl std::fmt::Debug for RunningDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningDaemon")
            .field("ready", &self.ready)
            .field("kernel", &self.enforcer.is_some())
            .finish_non_exhaustive()
    }
}

/// Open the journal, bind, build the engine, attach the kernel hooks, serve.
/// Must run inside the tokio runtime that will drive it.
pub async fn start(plan: Plan) -> anyhow::Result<RunningDaemon> {
    let journal = egressd_audit::Journal::open(egressd_audit::JournalConfig {
        max_total_bytes: plan.audit_max_bytes,
        ..egressd_audit::JournalConfig::new(&plan.audit_dir)
    })
    .context("cannot open the audit journal")?;
    let bound = bind(&plan).await?;
    let mark = plan.kernel.as_ref().map(|_| bypass_mark());
    let dns_memory = Arc::new(DnsMemory::new());
    let resolver = Resolver::new(plan.upstreams.clone()).with_socket_mark(mark);
    let engine = Engine::new(EngineParts {
        policy: plan.policy,
        journal: journal.clone(),
        dns_memory,
        resolver,
        runner: plan.runner,
        limits: plan.limits,
        upstream_mark: mark,
        filter_loopback: plan.filter_loopback,
    });
    let mut ready = ReadyInfo {
        pid: std::process::id(),
        explicit: bound
            .explicit
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?,
        sni: bound
            .sni
            .iter()
            .map(TcpListener::local_addr)
            .collect::<Result<_, _>>()?,
        listen: bound
            .transparent
            .first()
            .map(TcpListener::local_addr)
            .transpose()?,
        dns: bound
            .dns_udp
            .first()
            .map(UdpSocket::local_addr)
            .transpose()?,
        metrics: bound
            .metrics
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?,
        cgroup: None,
        state: None,
        detail: None,
    };
    let tasks = TaskTracker::new();
    let mut servers = tokio::task::JoinSet::new();

    // Kernel last: everything it redirects to is already listening.
    let (source, enforcer, origins): (Arc<dyn DstSource>, _, _) = match (&plan.kernel, mark) {
        (Some(k), Some(mark)) => {
            let (Some(listen), Some(dns)) = (ready.listen, ready.dns) else {
                anyhow::bail!("the kernel hooks need the transparent listener and the DNS server");
            };
            let own = crate::cgroup_child::own_cgroup()
                .ok()
                .and_then(|p| egressd_ebpf::cgroup::cgroup_id_of(&p).ok());
            let mut enforcer = Enforcer::attach(EnforcerConfig {
                cgroup: k.cgroup.clone(),
                proxy_port: listen.port(),
                dns_port: dns.port(),
                bypass_mark: mark,
                proxy_cgroup_id: own,
                container_gateways: k.container_gateways.clone(),
                passthrough: Vec::new(),
                pin_dir: k.pin_dir.clone(),
            })
            .with_context(|| format!("cannot attach the kernel hooks to {}", k.cgroup.display()))?;
            let events = enforcer
                .deny_events()
                .context("cannot read the kernel's deny events")?;
            let enforcer = Arc::new(enforcer);
            let origins = EbpfOrigins::new(Arc::clone(&enforcer));
            engine.set_process_lookup(Arc::clone(&origins) as Arc<dyn kernel::ProcessLookup>);
            servers.spawn(kernel::audit_denies(
                Arc::clone(&engine),
                events,
                Arc::clone(&origins),
            ));
            servers.spawn(kernel::upkeep(Arc::clone(&engine), Arc::clone(&enforcer)));
            ready.cgroup = Some(k.cgroup.clone());
            (
                Arc::clone(&origins) as Arc<dyn DstSource>,
                Some(enforcer),
                Some(origins),
            )
        }
        _ => (Arc::new(KernelOriginalDst), None, None),
    };

    for l in bound.transparent {
        servers.spawn(transparent::serve(
            Arc::clone(&engine),
            l,
            Arc::clone(&source),
            tasks.clone(),
        ));
    }
    if let Some(l) = bound.explicit {
        servers.spawn(connect::serve(Arc::clone(&engine), l, tasks.clone()));
    }
    for l in bound.sni {
        servers.spawn(sni_listen::serve(
            Arc::clone(&engine),
            l,
            plan.sni_upstream_port,
            tasks.clone(),
        ));
    }
    if let Some(l) = bound.metrics {
        servers.spawn(metrics::serve(Arc::clone(&engine), l));
    }
    for udp in bound.dns_udp {
        servers.spawn(dns::serve_udp(Arc::clone(&engine), udp, tasks.clone()));
    }
    for tcp in bound.dns_tcp {
        servers.spawn(dns::serve_tcp(Arc::clone(&engine), tcp, tasks.clone()));
    }
    servers.spawn(Arc::clone(&engine).flush_coalesced_every_interval());
    if let Some((path, fingerprint)) = plan.watch {
        servers.spawn(reload::watch(
            Arc::clone(&engine),
            path,
            fingerprint,
            Duration::from_secs(1),
        ));
    }
    Ok(RunningDaemon {
        engine,
        ready,
        enforcer,
        keep_pins: plan.kernel.as_ref().is_some_and(|k| k.keep_pins),
        origins,
        tasks,
        servers,
        ready_file: None,
    })
}

/// A random non-zero `SO_MARK` for this start: the proxy's upstream sockets
/// carry it so the kernel hooks let them pass. A job without CAP_NET_ADMIN
/// cannot set a mark, and a new start picks a new one.
fn bypass_mark() -> u32 {
    loop {
        let m: u32 = rand::random();
        if m != 0 {
            return m;
        }
    }
}

impl RunningDaemon {
    /// The shared engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The bound addresses (and state, once set).
    pub fn ready_info(&self) -> &ReadyInfo {
        &self.ready
    }

    /// Whether the kernel hooks are attached.
    pub fn kernel_attached(&self) -> bool {
        self.enforcer.is_some()
    }

    /// The enforcer's lookups, when the hooks are attached.
    pub fn origins(&self) -> Option<&Arc<EbpfOrigins>> {
        self.origins.as_ref()
    }

    /// Record the enforcement state written into the ready file.
    pub fn set_state(&mut self, state: &str, detail: &str) {
        self.ready.state = Some(state.to_owned());
        self.ready.detail = Some(detail.to_owned());
    }

    /// Write the ready file (removed at shutdown).
    pub fn write_ready_file(&mut self, path: &Path) -> anyhow::Result<()> {
        self.ready_file = Some(ReadyFile::create(path, &self.ready)?);
        Ok(())
    }

    /// Stop accepting, let open tunnels finish for the grace period, cut the
    /// rest, flush and close the journal, detach the hooks (unless pinned),
    /// remove the ready file.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let engine = &self.engine;
        engine.stop_accepting().cancel();
        self.tasks.close();
        if tokio::time::timeout(engine.limits().shutdown_grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::info!(
                open = self.tasks.len(),
                "grace period over: cutting open tunnels"
            );
            engine.cut_tunnels().raise();
            // Cut tunnels write their closing records; peeks end by their timeouts.
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        }
        // The deny-event task drains what the kernel already reported.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !self.servers.is_empty() {
                tokio::select! {
                    _ = self.servers.join_next() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => break,
                }
            }
        })
        .await;
        self.servers.abort_all();
        while self.servers.join_next().await.is_some() {}
        engine.clear_process_lookup();
        drop(self.origins.take());
        let detached = match self.enforcer.take().map(Arc::try_unwrap) {
            Some(Ok(enforcer)) if !enforcer.is_pinned() || !self.keep_pins => {
                enforcer.detach().context("cannot detach the kernel hooks")
            }
            Some(Ok(pinned)) => {
                tracing::info!(
                    "kernel hooks stay pinned (fail closed); `egressd cleanup` removes them"
                );
                drop(pinned);
                Ok(())
            }
            Some(Err(shared)) => {
                // A task still holds it: dropping the last handle detaches
                // unpinned links all the same.
                tracing::warn!(
                    "kernel hooks still referenced at shutdown; they detach when released"
                );
                drop(shared);
                Ok(())
            }
            None => Ok(()),
        };
        engine.flush_coalesced().await;
        let closed = engine.journal().close().await;
        drop(self.ready_file.take());
        closed.context("cannot flush the audit journal on shutdown")?;
        detached
    }
}

/// Wait for SIGTERM or SIGINT.
pub async fn wait_for_termination() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
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

    #[test]
    fn sizes_parse_with_binary_units_and_hold_one_segment() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64mib"), Ok(64 << 20));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(&(32u64 << 20).to_string()), Ok(32 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        let small = parse_size("1MiB").unwrap_err();
        assert!(small.contains("at least 16MiB"), "{small}");
        assert!(parse_size("1GB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        assert!(
            parse_size("99999999999TiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn redirected_listeners_also_bind_v6_loopback_and_gateways() {
        let k = KernelPlan {
            cgroup: PathBuf::from("/x"),
            pin_dir: None,
            keep_pins: false,
            container_gateways: vec!["172.17.0.1".parse().unwrap()],
        };
        let got = companions("127.0.0.1:15001".parse().unwrap(), Some(&k));
        assert_eq!(
            got,
            vec![
                "[::1]:15001".parse::<SocketAddr>().unwrap(),
                "172.17.0.1:15001".parse().unwrap()
            ]
        );
        assert!(companions("127.0.0.1:15001".parse().unwrap(), None).is_empty());
    }
}
