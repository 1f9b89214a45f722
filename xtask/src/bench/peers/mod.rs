//! Everything a workload runs against: direct, the reference relay, each peer
//! and egressd. Each is configured in its own temp directory for the same job
//! (the same allowlist, 2 workers where the program has such a knob,
//! per-decision logging on), on loopback ports, and killed on drop.

mod dns;
mod egressd;
mod http;
mod sni;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

use super::allowlist::Allowlist;
use super::backend::Backends;
use super::loadgen::tunnel::Via;
use super::process::{self, Guard, TreeUsage};

pub use egressd::Egressd;

/// One thing to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// No proxy at all.
    Direct,
    /// The minimal reference relay (the floor).
    Relay,
    /// HAProxy, SNI passthrough (`req.ssl_sni`), splice on.
    Haproxy,
    /// nginx `stream` with `ssl_preread`.
    Nginx,
    /// Squid, CONNECT with a `dstdomain` allowlist.
    Squid,
    /// tinyproxy, CONNECT with a filter file.
    Tinyproxy,
    /// dnsmasq with per-zone servers.
    Dnsmasq,
    /// unbound with forward zones.
    Unbound,
    /// dnsdist with a suffix rule.
    Dnsdist,
    /// egressd `run --no-ebpf`.
    Egressd,
}

impl Target {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Relay => "relay (floor)",
            Target::Haproxy => "haproxy",
            Target::Nginx => "nginx",
            Target::Squid => "squid",
            Target::Tinyproxy => "tinyproxy",
            Target::Dnsmasq => "dnsmasq",
            Target::Unbound => "unbound",
            Target::Dnsdist => "dnsdist",
            Target::Egressd => "egressd",
        }
    }

    /// Every target, in table order.
    pub const ALL: [Target; 10] = [
        Target::Direct,
        Target::Relay,
        Target::Haproxy,
        Target::Nginx,
        Target::Squid,
        Target::Tinyproxy,
        Target::Dnsmasq,
        Target::Unbound,
        Target::Dnsdist,
        Target::Egressd,
    ];

    /// The target named `name` (its table name's first word).
    pub fn by_name(name: &str) -> Option<Target> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().split(' ').next() == Some(name))
    }

    /// Whether this is a peer (not a reference, not egressd).
    pub fn is_peer(self) -> bool {
        !matches!(self, Target::Direct | Target::Relay | Target::Egressd)
    }

    /// The program (and Debian package) a peer needs.
    pub fn program(self) -> Option<(&'static str, &'static [&'static str])> {
        match self {
            Target::Haproxy => Some(("haproxy", &["haproxy"])),
            Target::Nginx => Some(("nginx", &["nginx", "libnginx-mod-stream"])),
            Target::Squid => Some(("squid", &["squid"])),
            Target::Tinyproxy => Some(("tinyproxy", &["tinyproxy"])),
            Target::Dnsmasq => Some(("dnsmasq", &["dnsmasq"])),
            Target::Unbound => Some(("unbound", &["unbound"])),
            Target::Dnsdist => Some(("dnsdist", &["dnsdist"])),
            _ => None,
        }
    }
}

/// How a workload talks to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// HTTP CONNECT (W1, W3, W6 on CONNECT proxies).
    Connect,
    /// SNI routing to a fixed upstream (W2; W3/W6 on SNI routers).
    Sni {
        /// Where allowed connections go.
        upstream: SocketAddr,
    },
    /// A DNS resolver forwarding allowed names to the bench upstream.
    Dns,
}

/// Shared context for starting targets.
pub struct Env {
    /// Root of every temp dir of this run.
    pub dir: PathBuf,
    /// The running backends.
    pub backends: Backends,
    /// This executable (serves the reference relay).
    pub exe: PathBuf,
    /// The release egressd binary and what it supports, if it was built.
    pub egressd: Option<Egressd>,
}

/// A started target; dropping it kills it.
pub struct Running {
    /// How the load generator reaches it (TCP roles).
    pub via: Via,
    /// Its DNS address (DNS role).
    pub dns: Option<SocketAddr>,
    guard: Option<Guard>,
    /// egressd's audit directory.
    pub audit_dir: Option<PathBuf>,
}

impl Running {
    /// CPU and RSS of the target's process tree (zero for direct).
    pub fn usage(&self) -> TreeUsage {
        self.guard
            .as_ref()
            .and_then(|g| process::tree_usage(g.pid()).ok())
            .unwrap_or_default()
    }

    /// Stops the target gracefully (egressd flushes its journal on SIGTERM).
    pub fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut g) = self.guard.take() {
            g.terminate(Duration::from_secs(10))?;
        }
        Ok(())
    }
}

/// Starts `target` in `role` with `list`; `Ok(None)` when the target does not do `role`.
pub fn start(
    target: Target,
    role: Role,
    list: &Allowlist,
    env: &Env,
    tag: &str,
) -> anyhow::Result<Option<Running>> {
    let dir = env.dir.join(format!(
        "{}-{tag}",
        target.name().split(' ').next().unwrap_or("t")
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    // Peers drop privileges to their own users and must still write logs here.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let b = &env.backends;
    let port = process::free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let log = dir.join("stdout.log");
    let mut audit_dir = None;
    let (guard, via, dns) = match (target, role) {
        (Target::Direct, Role::Connect) => (None, Via::Direct, None),
        (Target::Direct, Role::Sni { .. }) => (None, Via::Direct, None),
        (Target::Direct, Role::Dns) => (None, Via::Direct, Some(b.dns)),
        (Target::Relay, Role::Connect | Role::Sni { .. }) => {
            let mut cmd = Command::new(&env.exe);
            cmd.args(["bench", "--serve-relay"]);
            match role {
                Role::Sni { upstream } => {
                    cmd.args(["sni", "--relay-upstream", &upstream.to_string()])
                }
                _ => cmd.arg("connect"),
            };
            cmd.args([
                "--relay-listen",
                &listen.to_string(),
                "--relay-rules",
                &list.len().to_string(),
            ]);
            let mut g = Guard::spawn("relay", cmd, &log)?;
            process::wait_tcp(listen, Duration::from_secs(10), &mut g, &log)?;
            let via = if let Role::Sni { .. } = role {
                Via::Sni(listen)
            } else {
                Via::Connect(listen)
            };
            (Some(g), via, None)
        }
        (Target::Haproxy, Role::Sni { upstream }) => {
            let g = sni::haproxy(&dir, listen, upstream, list, &log)?;
            (Some(g), Via::Sni(listen), None)
        }
        (Target::Nginx, Role::Sni { upstream }) => {
            let g = sni::nginx(&dir, listen, upstream, list, &log)?;
            (Some(g), Via::Sni(listen), None)
        }
        (Target::Squid, Role::Connect) => {
            let g = http::squid(&dir, listen, list, &log)?;
            (Some(g), Via::Connect(listen), None)
        }
        (Target::Tinyproxy, Role::Connect) => {
            let g = http::tinyproxy(&dir, listen, list, &log)?;
            (Some(g), Via::Connect(listen), None)
        }
        (Target::Dnsmasq | Target::Unbound | Target::Dnsdist, Role::Dns) => {
            let g = dns::start(target, &dir, listen, b.dns, list, &log)?;
            (Some(g), Via::Direct, Some(listen))
        }
        (Target::Egressd, role) => {
            let Some(e) = &env.egressd else {
                return Ok(None);
            };
            let Some((g, via, dns, audit)) = e.start(role, &dir, list, b.dns, &log)? else {
                return Ok(None);
            };
            audit_dir = Some(audit);
            (Some(g), via, dns)
        }
        _ => return Ok(None),
    };
    Ok(Some(Running {
        via,
        dns,
        guard,
        audit_dir,
    }))
}

/// Writes `text` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    Ok(p)
}

/// A hosts file mapping every name the workloads use to 127.0.0.1 (peers
/// that resolve through the system resolver read it instead of DNS).
fn hosts_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut names = String::from("127.0.0.1 localhost");
    for n in super::allowlist::tunnel_names() {
        names.push(' ');
        names.push_str(&n);
    }
    names.push('\n');
    write(dir, "hosts", &names)
}
