//! Guards for the privileged topology: a uniquely named child cgroup, a network
//! namespace + veth holding 198.51.100.x / 2001:db8::x (routes checked before
//! anything is sent), the enforcer attached to the cgroup, and clients started
//! inside the cgroup.

#![expect(
    clippy::unwrap_used,
    reason = "test support: a failed setup step is a failed test"
)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egressd_ebpf::{ChildCgroup, Enforcer, EnforcerConfig, cgroup2_mount};

/// The emulated container bridge's host-side addresses.
pub const CONTAINER_GW4: &str = "198.51.100.129";
pub const CONTAINER_GW6: &str = "2001:db8:1::1";

/// Where the pinning tests pin (the usual bpffs mount).
const BPFFS: &str = "/sys/fs/bpf";

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
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
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
        if let Some(rest) = name
            .strip_prefix("egh")
            .or_else(|| name.strip_prefix("egb"))
            .or_else(|| name.strip_prefix("egw"))
            .or_else(|| name.strip_prefix("egy"))
            && let Some((pid, _)) = rest.split_once('x')
            && !pid_alive(pid)
        {
            run_quiet("ip", &["link", "del", name]);
        }
    }
    let netns = run("ip", &["netns", "list"]);
    for name in netns.lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(rest) = name.strip_prefix("egressd-ebpf-")
            && let Some((pid, _)) = rest.trim_start_matches('c').split_once('x')
            && !pid_alive(pid)
        {
            run_quiet("ip", &["netns", "del", name]);
        }
    }
    if let Ok(entries) = std::fs::read_dir(BPFFS) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("egressd-ebpf-test-")
                && let Some((pid, _)) = rest.split_once('x')
                && !pid_alive(pid)
            {
                let _ = egressd_ebpf::cleanup(&entry.path());
            }
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

/// Runs `ip` with whitespace-separated arguments.
fn ip(args: &str) -> String {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// A network namespace joined to the host by a veth pair.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    /// The interface inside the namespace.
    pub peer_if: String,
    /// The bridge `host_if` is a port of, if any (it holds the host addresses).
    pub bridge: Option<String>,
}

impl NetNs {
    /// Creates `name` with veth `host_if` (host side, `host_addrs`) and `peer`
    /// (inside, `ns_addrs`); ping sockets are allowed for every group inside.
    fn create(
        name: String,
        host_if: String,
        peer: &str,
        host_addrs: &[&str],
        ns_addrs: &[&str],
    ) -> NetNs {
        assert!(
            host_if.len() <= 15 && peer.len() <= 15,
            "interface name too long: {peer}"
        );
        ip(&format!("netns add {name}"));
        let ns = NetNs {
            name,
            host_if,
            peer_if: peer.to_owned(),
            bridge: None,
        };
        let (n, h) = (&ns.name, &ns.host_if);
        ip(&format!("link add {h} type veth peer name {peer}"));
        ip(&format!("link set {peer} netns {n}"));
        for a in host_addrs {
            ip(&format!("addr add {a} dev {h} nodad"));
        }
        ip(&format!("link set {h} up"));
        ip(&format!("netns exec {n} ip link set lo up"));
        for a in ns_addrs {
            ip(&format!("netns exec {n} ip addr add {a} dev {peer} nodad"));
        }
        ip(&format!("netns exec {n} ip link set {peer} up"));
        run(
            "ip",
            &[
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                "net.ipv4.ping_group_range=0 2147483647",
            ],
        );
        ns
    }

    /// The "outside world": 198.51.100.10, .53 and 2001:db8::10, ::53 behind
    /// 198.51.100.1 / 2001:db8::1 on the host. Fails unless the host routes them there.
    fn world(id: &str) -> NetNs {
        let ns = NetNs::create(
            format!("egressd-ebpf-{id}"),
            format!("egh{id}"),
            &format!("egn{id}"),
            &["198.51.100.1/25", "2001:db8::1/64"],
            &[
                "198.51.100.10/25",
                "198.51.100.53/25",
                "2001:db8::10/64",
                "2001:db8::53/64",
            ],
        );
        // Never let a test packet take the default route.
        for dst in [
            "198.51.100.10",
            "198.51.100.53",
            "2001:db8::10",
            "2001:db8::53",
        ] {
            let route = ip(&format!("route get {dst}"));
            assert!(
                route.contains(&format!("dev {} ", ns.host_if)),
                "route to {dst} does not go through {} (another 198.51.100.0/25 or 2001:db8::/64 on this host?): {route}",
                ns.host_if
            );
        }
        ns
    }

    /// An emulated container: its own namespace at 198.51.100.130 / 2001:db8:1::2 whose
    /// default routes go to the host-side "bridge gateway" (`CONTAINER_GW4/6`). With
    /// `bridged`, as Docker makes it: the host side of its veth is a port of the
    /// bridge `egw<id>`, which holds the gateway addresses.
    fn container(id: &str, bridged: bool) -> NetNs {
        let peer = format!("egk{id}");
        let gateways = [format!("{CONTAINER_GW4}/25"), format!("{CONTAINER_GW6}/64")];
        let host_addrs: Vec<&str> = if bridged {
            Vec::new()
        } else {
            gateways.iter().map(String::as_str).collect()
        };
        let mut ns = NetNs::create(
            format!("egressd-ebpf-c{id}"),
            format!("egb{id}"),
            &peer,
            &host_addrs,
            &["198.51.100.130/25", "2001:db8:1::2/64"],
        );
        if bridged {
            let bridge = format!("egw{id}");
            ip(&format!("link add {bridge} type bridge"));
            ns.bridge = Some(bridge.clone());
            ip(&format!("link set {} master {bridge}", ns.host_if));
            for a in &gateways {
                ip(&format!("addr add {a} dev {bridge} nodad"));
            }
            ip(&format!("link set {bridge} up"));
            for dst in ["198.51.100.130", "2001:db8:1::2"] {
                let route = ip(&format!("route get {dst}"));
                assert!(
                    route.contains(&format!("dev {bridge} ")),
                    "route to the container's {dst}: {route}"
                );
            }
        }
        let n = &ns.name;
        ip(&format!(
            "netns exec {n} ip route add default via {CONTAINER_GW4}"
        ));
        ip(&format!(
            "netns exec {n} ip -6 route add default via {CONTAINER_GW6}"
        ));
        for dst in ["198.51.100.10", "2001:db8::10"] {
            let route = ip(&format!("netns exec {n} ip route get {dst}"));
            assert!(
                route.contains(&format!("dev {peer} ")),
                "container route to {dst}: {route}"
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
        if let Some(bridge) = &self.bridge {
            run_quiet("ip", &["link", "del", bridge]);
        }
    }
}

/// The listeners standing in for the proxy: TCP and UDP on 127.0.0.1 and ::1, all
/// on one port each for TCP and DNS.
pub struct ProxySockets {
    pub tcp4: TcpListener,
    pub tcp6: TcpListener,
    pub udp4: UdpSocket,
    pub udp6: UdpSocket,
    /// DNS over TCP, on the DNS port of 127.0.0.1.
    pub dns_tcp4: TcpListener,
}

impl ProxySockets {
    fn bind() -> ProxySockets {
        for _ in 0..50 {
            let tcp4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = tcp4.local_addr().unwrap().port();
            let Ok(tcp6) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) else {
                continue;
            };
            let udp4 = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let dns = udp4.local_addr().unwrap().port();
            let Ok(udp6) = UdpSocket::bind((Ipv6Addr::LOCALHOST, dns)) else {
                continue;
            };
            let Ok(dns_tcp4) = TcpListener::bind((Ipv4Addr::LOCALHOST, dns)) else {
                continue;
            };
            let sockets = ProxySockets {
                tcp4,
                tcp6,
                udp4,
                udp6,
                dns_tcp4,
            };
            sockets.configure();
            return sockets;
        }
        panic!("no port free on both 127.0.0.1 and ::1");
    }

    /// The same ports on other addresses (the container gateway).
    fn bind_at(v4: Ipv4Addr, v6: Ipv6Addr, port: u16, dns: u16) -> ProxySockets {
        let sockets = ProxySockets {
            tcp4: TcpListener::bind((v4, port)).unwrap(),
            tcp6: TcpListener::bind((v6, port)).unwrap(),
            udp4: UdpSocket::bind((v4, dns)).unwrap(),
            udp6: UdpSocket::bind((v6, dns)).unwrap(),
            dns_tcp4: TcpListener::bind((v4, dns)).unwrap(),
        };
        sockets.configure();
        sockets
    }

    fn configure(&self) {
        for l in [&self.tcp4, &self.tcp6, &self.dns_tcp4] {
            l.set_nonblocking(true).unwrap();
        }
        for u in [&self.udp4, &self.udp6] {
            u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
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
    pub pin_dir: Option<PathBuf>,
    pub proxy: ProxySockets,
    /// The emulated container and the proxy sockets on its gateway addresses.
    pub container: Option<(NetNs, ProxySockets)>,
    pub cgroup: ChildCgroup,
    pub netns: NetNs,
    pub runtime: tokio::runtime::Runtime,
    /// A client started in the cgroup before the programs were attached.
    pub early: Option<Client>,
    _lock: MutexGuard<'static, ()>,
    _block: std::fs::File,
}

impl World {
    pub fn new() -> World {
        World::build(false, false, false)
    }

    /// A world with an emulated container on a container bridge (every port a veth),
    /// as Docker's: the bridge's gateway addresses are the enforcer's gateways.
    pub fn with_bridged_container() -> World {
        World::build_with(false, Some(true), true, None)
    }

    /// A world whose cgroup already runs `python3 -c script args` (in [`World::early`])
    /// when the programs are attached; `script` prints one line when it is set up.
    pub fn with_early_client(script: &str, args: &[&str]) -> World {
        World::build_with(false, None, false, Some((script, args)))
    }

    /// A world whose links are pinned under `/sys/fs/bpf/egressd-ebpf-test-<id>`.
    pub fn pinned() -> World {
        World::build(true, false, false)
    }

    /// A world with an emulated container namespace and gateway.
    pub fn with_container() -> World {
        World::build(false, true, true)
    }

    /// A container namespace, but the enforcer is given no gateway address.
    pub fn with_container_but_no_gateway() -> World {
        World::build(false, true, false)
    }

    fn build(pin: bool, with_container: bool, gateways: bool) -> World {
        World::build_with(pin, with_container.then_some(false), gateways, None)
    }

    /// `container`: None = no container, Some(bridged).
    fn build_with(
        pin: bool,
        container: Option<bool>,
        gateways: bool,
        early: Option<(&str, &[&str])>,
    ) -> World {
        let lock = TOPOLOGY.lock().unwrap_or_else(|p| p.into_inner());
        // Across processes too: another test run on this machine would put the
        // same addresses on a second link.
        let block = {
            let path = std::env::temp_dir().join("egressd-ebpf-it-198.51.100.0.lock");
            let f = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap();
            f.lock().unwrap();
            f
        };
        remove_leftovers();
        let id = format!(
            "{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let netns = NetNs::world(&id);
        let cgroup = ChildCgroup::create(
            &cgroup2_mount().unwrap(),
            &format!("egressd-ebpf-test-{id}"),
        )
        .unwrap();
        let proxy = ProxySockets::bind();
        let container = container.map(|bridged| {
            let ns = NetNs::container(&id, bridged);
            let gw4: Ipv4Addr = CONTAINER_GW4.parse().unwrap();
            let gw6: Ipv6Addr = CONTAINER_GW6.parse().unwrap();
            let sockets = ProxySockets::bind_at(gw4, gw6, proxy.proxy_port(), proxy.dns_port());
            (ns, sockets)
        });
        let pin_dir = pin.then(|| PathBuf::from(format!("{BPFFS}/egressd-ebpf-test-{id}")));
        let early = early.map(|(script, args)| {
            let mut cmd = Command::new(python());
            cmd.arg("-c").arg(script).args(args);
            let mut client = spawn_in(&cgroup, cmd);
            client.line(); // set up before anything is attached
            client
        });
        let enforcer = Enforcer::attach(EnforcerConfig {
            pin_dir: pin_dir.clone(),
            cgroup: cgroup.path().to_path_buf(),
            proxy_port: proxy.proxy_port(),
            dns_port: proxy.dns_port(),
            bypass_mark: BYPASS_MARK,
            container_gateways: if gateways {
                vec![
                    CONTAINER_GW4.parse().unwrap(),
                    CONTAINER_GW6.parse().unwrap(),
                ]
            } else {
                Vec::new()
            },
            ..EnforcerConfig::default()
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        World {
            enforcer: Some(enforcer),
            pin_dir,
            proxy,
            container,
            cgroup,
            netns,
            runtime,
            early,
            _lock: lock,
            _block: block,
        }
    }

    /// A TCP server in the world namespace on 198.51.100.10:443 that sends
    /// "upstream" to its first client; returns once it listens.
    pub fn upstream_server(&self) -> Client {
        let script = r#"
import socket
s = socket.create_server(("198.51.100.10", 443))
print("ready", flush=True)
c, _ = s.accept()
c.sendall(b"upstream")
c.close()
"#;
        let mut cmd = self.netns.command(python());
        cmd.args(["-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut server = Client::new(cmd.spawn().unwrap());
        assert_eq!(server.line(), "ready");
        server
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
    pub fn spawn_command(&self, cmd: Command) -> Client {
        spawn_in(&self.cgroup, cmd)
    }
}

/// Starts a command inside `cgroup` (stdout and stderr piped).
fn spawn_in(cgroup: &ChildCgroup, mut cmd: Command) -> Client {
    let entry = cgroup.entry();
    // SAFETY: the closure only calls open/write/close (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || entry.enter());
    }
    spawn_outside(cmd)
}

/// Starts a command outside the filtered cgroup (stdout and stderr piped).
pub fn spawn_outside(mut cmd: Command) -> Client {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Client::new(child)
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(e) = self.enforcer.take() {
            e.detach().unwrap();
        }
        if let Some(dir) = &self.pin_dir {
            let _ = egressd_ebpf::cleanup(dir);
        }
    }
}

pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
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
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .unwrap()
            .trim()
            .to_string()
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
