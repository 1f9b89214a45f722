//! Guards for the privileged topology: a uniquely named child cgroup, a network
//! namespace + veth holding 198.51.100.x / 2001:db8::x (routes checked before
//! anything is sent), the enforcer attached to the cgroup, and clients started
//! inside the cgroup.

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egressd_ebpf::{ChildCgroup, Enforcer, EnforcerConfig, cgroup2_mount};

/// The mark the tests' "proxy" sockets carry.
pub const BYPASS_MARK: u32 = 0x4567_89ab;

static COUNTER: AtomicU32 = AtomicU32::new(0);
/// The namespaces all use 198.51.100.0/24: one topology at a time.
static TOPOLOGY: Mutex<()> = Mutex::new(());

/// True when the test can run; otherwise prints the skip line (and fails under CI=true).
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    println!("skipped: needs root and bpf()");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "privileged eBPF tests must run in CI (CI=true): run them as root"
    );
    false
}

/// Runs a command to completion, panicking with its output on failure.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn pid_alive(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

/// Removes namespaces, links and cgroups left by killed runs of these tests
/// (their names carry the pid of a process that no longer exists).
fn remove_leftovers() {
    let links = run("ip", &["-o", "link", "show"]);
    for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
        let name = name.split('@').next().unwrap_or(name);
        if let Some(rest) = name.strip_prefix("egh")
            && let Some((pid, _)) = rest.split_once('x')
            && !pid_alive(pid)
        {
            run_quiet("ip", &["link", "del", name]);
        }
    }
    let netns = run("ip", &["netns", "list"]);
    for name in netns.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(rest) = name.strip_prefix("egressd-ebpf-")
            && let Some((pid, _)) = rest.split_once('x')
            && !pid_alive(pid)
        {
            run_quiet("ip", &["netns", "del", name]);
        }
    }
    if let Ok(root) = cgroup2_mount()
        && let Ok(entries) = std::fs::read_dir(&root)
    {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("egressd-ebpf-test-")
                && let Some((pid, _)) = rest.split_once('x')
                && !pid_alive(pid)
            {
                drop(ChildCgroup::create(&root, &name));
            }
        }
    }
}

/// A network namespace joined to the host by a veth pair, holding
/// 198.51.100.10, .53 and 2001:db8::10, ::53; the host side is .1 / ::1.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
}

impl NetNs {
    fn create(id: &str) -> NetNs {
        let ns = NetNs { name: format!("egressd-ebpf-{id}"), host_if: format!("egh{id}") };
        let peer = format!("egn{id}");
        assert!(ns.host_if.len() <= 15 && peer.len() <= 15, "interface name too long: {peer}");
        run("ip", &["netns", "add", &ns.name]);
        run("ip", &["link", "add", &ns.host_if, "type", "veth", "peer", "name", &peer]);
        run("ip", &["link", "set", &peer, "netns", &ns.name]);
        run("ip", &["addr", "add", "198.51.100.1/24", "dev", &ns.host_if]);
        run("ip", &["-6", "addr", "add", "2001:db8::1/64", "dev", &ns.host_if, "nodad"]);
        run("ip", &["link", "set", &ns.host_if, "up"]);
        for cmd in [
            vec!["ip", "link", "set", "lo", "up"],
            vec!["ip", "addr", "add", "198.51.100.10/24", "dev", &peer],
            vec!["ip", "addr", "add", "198.51.100.53/24", "dev", &peer],
            vec!["ip", "-6", "addr", "add", "2001:db8::10/64", "dev", &peer, "nodad"],
            vec!["ip", "-6", "addr", "add", "2001:db8::53/64", "dev", &peer, "nodad"],
            vec!["ip", "link", "set", &peer, "up"],
            vec!["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"],
        ] {
            let mut args = vec!["netns", "exec", &ns.name];
            args.extend(cmd);
            run("ip", &args);
        }
        // Never let a test packet take the default route.
        for dst in ["198.51.100.10", "198.51.100.53", "2001:db8::10", "2001:db8::53"] {
            let route = run("ip", &["route", "get", dst]);
            assert!(
                route.contains(&format!("dev {} ", ns.host_if)),
                "route to {dst} does not go through {} (another 198.51.100.0/24 or 2001:db8::/64 on this host?): {route}",
                ns.host_if
            );
        }
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        run_quiet("ip", &["netns", "del", &self.name]);
        run_quiet("ip", &["link", "del", &self.host_if]);
    }
}

/// The listeners standing in for the proxy: TCP and UDP on 127.0.0.1 and ::1, all
/// on one port each for TCP and DNS.
pub struct ProxySockets {
    pub tcp4: TcpListener,
    pub tcp6: TcpListener,
    pub udp4: UdpSocket,
    pub udp6: UdpSocket,
}

impl ProxySockets {
    fn bind() -> ProxySockets {
        for _ in 0..50 {
            let tcp4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = tcp4.local_addr().unwrap().port();
            let Ok(tcp6) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) else { continue };
            let udp4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let dns = udp4.local_addr().unwrap().port();
            let Ok(udp6) = UdpSocket::bind((Ipv6Addr::LOCALHOST, dns)) else { continue };
            for l in [&tcp4, &tcp6] {
                l.set_nonblocking(true).unwrap();
            }
            for u in [&udp4, &udp6] {
                u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            }
            return ProxySockets { tcp4, tcp6, udp4, udp6 };
        }
        panic!("no port free on both 127.0.0.1 and ::1");
    }

    pub fn proxy_port(&self) -> u16 {
        self.tcp4.local_addr().unwrap().port()
    }

    pub fn dns_port(&self) -> u16 {
        self.udp4.local_addr().unwrap().port()
    }
}

/// Accepts one connection within ten seconds.
pub fn accept(listener: &TcpListener) -> (std::net::TcpStream, SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return (s, peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no connection reached the proxy listener: {e}"),
        }
    }
}

/// One test's world: the lock, the namespace, the child cgroup, the proxy
/// sockets and the attached enforcer. Dropped in reverse: detach, cgroup, netns.
pub struct World {
    pub enforcer: Option<Enforcer>,
    pub proxy: ProxySockets,
    pub cgroup: ChildCgroup,
    pub netns: NetNs,
    pub runtime: tokio::runtime::Runtime,
    _lock: MutexGuard<'static, ()>,
}

impl World {
    pub fn new() -> World {
        let lock = TOPOLOGY.lock().unwrap_or_else(|p| p.into_inner());
        remove_leftovers();
        let id = format!("{}x{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let netns = NetNs::create(&id);
        let cgroup = ChildCgroup::create(&cgroup2_mount().unwrap(), &format!("egressd-ebpf-test-{id}")).unwrap();
        let proxy = ProxySockets::bind();
        let enforcer = Enforcer::attach(EnforcerConfig {
            cgroup: cgroup.path().to_path_buf(),
            proxy_port: proxy.proxy_port(),
            dns_port: proxy.dns_port(),
            bypass_mark: BYPASS_MARK,
            ..EnforcerConfig::default()
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        World { enforcer: Some(enforcer), proxy, cgroup, netns, runtime, _lock: lock }
    }

    /// The deny-event receiver, registered with this world's runtime.
    pub fn deny_events(&mut self) -> egressd_ebpf::DenyEvents {
        let _guard = self.runtime.enter();
        self.enforcer.as_mut().unwrap().deny_events().unwrap()
    }

    pub fn enforcer(&self) -> &Enforcer {
        self.enforcer.as_ref().unwrap()
    }

    /// Starts `program args` inside the child cgroup (stdout piped).
    pub fn spawn(&self, program: &str, args: &[&str]) -> Client {
        let mut cmd = Command::new(program);
        cmd.args(args);
        self.spawn_command(cmd)
    }

    /// Starts a python3 script inside the child cgroup.
    pub fn python(&self, script: &str) -> Client {
        self.spawn(python(), &["-c", script])
    }

    /// Starts a command inside the child cgroup.
    pub fn spawn_command(&self, mut cmd: Command) -> Client {
        let entry = self.cgroup.entry();
        // SAFETY: the closure only calls open/write/close (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || entry.enter());
        }
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        Client::new(child)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(e) = self.enforcer.take() {
            e.detach().unwrap();
        }
    }
}

pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" }
}

/// A client process in the cgroup; killed when dropped.
pub struct Client {
    pub child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Client {
    fn new(mut child: Child) -> Client {
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Client { child, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's comm, read while it runs.
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid())).unwrap().trim().to_string()
    }

    /// Next line of its stdout (the clients time out on their own, so this ends).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    /// Waits for exit; returns all remaining stdout, panicking on failure with stderr.
    pub fn finish(mut self) -> String {
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        assert!(status.success(), "client failed ({status}): {rest}{err}");
        rest
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects deny events for up to `timeout`, until `want` of them arrived.
pub fn collect_denies(
    world: &World,
    events: &mut egressd_ebpf::DenyEvents,
    want: usize,
) -> Vec<egressd_ebpf::DenyEvent> {
    world.runtime.block_on(async {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < want {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(e)) => got.push(e),
                _ => break,
            }
        }
        got
    })
}
