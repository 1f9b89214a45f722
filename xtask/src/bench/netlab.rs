//! W7's destination for the eBPF row: a network namespace of this run behind
//! a veth pair, with echo servers inside. The kernel hooks leave loopback
//! destinations alone, so a redirected connect must go somewhere else; this
//! namespace is that somewhere, and nothing leaves the machine.
//!
//! Addresses: 198.51.100.224/30 (host side .225, namespace .226), a block no
//! test suite uses (they take .0/25, .128/26, .192/29 and .200/29), so a
//! bench and the tests can run at the same time.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Host side of the link.
const HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 225);
/// The namespace's address (the echo server's).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 226);
/// Names: namespace `egq-<pid>`, links `egqh<pid>` (host) and `egqp<pid>`.
const PREFIX: &str = "egq";

/// Held while a lab exists: two benches on one machine (several developers)
/// would add the same /30 on two links.
const LOCK: &str = "/run/lock/egressd-bench-netlab.lock";

/// The namespace, its link and the echo server in it; all removed on drop.
pub struct NetLab {
    ns: String,
    link: String,
    /// Two echo servers in the namespace (each skips a leading TLS record,
    /// like the loopback one), on two ports: one per row. A row's closed
    /// connections stay in TIME_WAIT on the host for a minute, and a full
    /// row leaves 12,500 of them towards its port; a later row sharing that
    /// port would have to find its source ports among them (on this
    /// machine's 28,232 ephemeral ports that took milliseconds per connect).
    pub echoes: [SocketAddr; 2],
    servers: Vec<tokio::task::JoinHandle<()>>,
    /// The lock file, flock()ed; released when closed (after the fields above).
    _lock: std::fs::File,
}

impl NetLab {
    /// Builds the namespace and starts the echo server on `rt`; fails (and
    /// removes what it built) if the route to [`SERVER`] does not go through
    /// the new link.
    pub fn up(rt: &tokio::runtime::Handle) -> anyhow::Result<Self> {
        let lock = lock(Duration::from_secs(120))?;
        sweep_leftovers();
        let pid = std::process::id();
        let ns = format!("{PREFIX}-{pid}");
        let link = format!("{PREFIX}h{pid}");
        let peer = format!("{PREFIX}p{pid}");
        let _ = ip(&["netns", "del", &ns]);
        let _ = ip(&["link", "del", &link]);
        ip(&["netns", "add", &ns])?;
        // From here on a failure removes the namespace and link (Drop).
        let mut lab = Self {
            ns,
            link,
            echoes: [SocketAddr::from((SERVER, 0)); 2],
            servers: Vec::new(),
            _lock: lock,
        };
        let (ns, link) = (lab.ns.clone(), lab.link.clone());
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["addr", "add", &format!("{HOST}/30"), "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{SERVER}/30"),
            "dev",
            &peer,
        ])?;
        ip(&["-n", &ns, "link", "set", &peer, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let route = ip(&["route", "get", &SERVER.to_string()])?;
        if !route.contains(&format!("dev {link} ")) {
            bail!("{SERVER} is not routed through {link} (another route covers it?): {route}");
        }
        for i in 0..lab.echoes.len() {
            let listener = bind_in(&ns)?;
            lab.echoes[i] = listener.local_addr()?;
            lab.servers.push(rt.spawn(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => super::backend::echo_server(l).await,
                    Err(e) => tracing::error!(error = %e, "namespace echo server"),
                }
            }));
        }
        Ok(lab)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Takes the machine-wide lab lock, waiting up to `patience` for another bench.
fn lock(patience: Duration) -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("open {LOCK}"))?;
    let start = Instant::now();
    loop {
        // SAFETY: flock(2) on a descriptor we own; no memory is touched.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if start.elapsed() > patience {
            bail!("another bench holds {LOCK} (its W7 namespace) for over {patience:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A listener on [`SERVER`]:0 inside `ns` (created by a thread that entered
/// the namespace; a socket stays in the namespace it was created in).
fn bind_in(ns: &str) -> anyhow::Result<std::net::TcpListener> {
    let file = std::fs::File::open(Path::new("/run/netns").join(ns))
        .with_context(|| format!("open the namespace {ns}"))?;
    std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
        // SAFETY: setns(2) on an open namespace file; it changes this
        // short-lived thread's network namespace only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let l = std::net::TcpListener::bind((SERVER, 0))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// Runs `ip ARGS`, returns its stdout; an error carries its stderr.
fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes namespaces and links of killed bench runs (their pid is dead).
fn sweep_leftovers() {
    let dead = |pid: &str| pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists();
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name
                .strip_prefix(PREFIX)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(dead)
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(links) = ip(&["-o", "link", "show"]) {
        for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
            let name = name.split('@').next().unwrap_or(name);
            if name
                .strip_prefix(PREFIX)
                .and_then(|r| r.strip_prefix(['h', 'p']))
                .is_some_and(dead)
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}
