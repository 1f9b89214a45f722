//! An emulated container (another network namespace routed through a host-side
//! gateway): redirected to the gateway address instead of loopback; its loopback
//! DNS (Docker's 127.0.0.11) is left alone. On a container bridge (every port a
//! veth) its address is local like loopback, but port 53 there is still DNS.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{self, World};

const TCP_CLIENT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((sys.argv[1], 443))
print(s.getpeername()[0], flush=True)
print(s.recv(100).decode(), flush=True)
"#;

/// The netns cookie of a socket of this (host) process.
fn host_netns_cookie(sock: &impl std::os::fd::AsRawFd) -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, out pointer and length for an 8-byte option.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(
        rc,
        0,
        "SO_NETNS_COOKIE: {}",
        std::io::Error::last_os_error()
    );
    cookie
}

fn tcp_from_container(host: &str, expect: &str, v6: bool) {
    let world = World::with_container();
    let (ns, gw) = world.container.as_ref().unwrap();
    let mut cmd = ns.command(support::python());
    cmd.args(["-c", TCP_CLIENT, host]);
    let mut client = world.spawn_command(cmd);
    let listener = if v6 { &gw.tcp6 } else { &gw.tcp4 };
    let (mut conn, peer) = support::accept(listener);
    let orig = world
        .enforcer()
        .original_dst(peer, conn.local_addr().unwrap())
        .expect("recorded");
    assert_eq!(orig.dst, expect.parse::<SocketAddr>().unwrap());
    assert_eq!(orig.pid, client.pid());
    assert_eq!(orig.cgroup_id, world.cgroup.id().unwrap());
    assert_ne!(
        orig.netns_cookie,
        host_netns_cookie(&conn),
        "the container's namespace, not the host's"
    );
    conn.write_all(b"via-gateway").unwrap();
    assert_eq!(client.line(), host);
    assert_eq!(client.line(), "via-gateway");
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    client.finish();
}

#[test]
fn container_tcp_v4_goes_to_the_gateway_proxy() {
    if !support::privileged() {
        return;
    }
    tcp_from_container("198.51.100.10", "198.51.100.10:443", false);
}

#[test]
fn container_tcp_v6_goes_to_the_gateway_proxy() {
    if !support::privileged() {
        return;
    }
    tcp_from_container("2001:db8::10", "[2001:db8::10]:443", true);
}

#[test]
fn container_dns_goes_to_the_gateway_and_its_loopback_dns_is_left_alone() {
    if !support::privileged() {
        return;
    }
    let world = World::with_container();
    let (ns, gw) = world.container.as_ref().unwrap();
    let script = r#"
import socket
# Docker's embedded DNS stand-in, inside the container.
embedded = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
embedded.bind(("127.0.0.11", 53))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(10)
c.sendto(b"local", ("127.0.0.11", 53))
data, addr = embedded.recvfrom(100)
embedded.sendto(b"embedded-answer", addr)
print(c.recvfrom(100)[0].decode(), flush=True)
c.sendto(b"query", ("198.51.100.53", 53))
data, addr = c.recvfrom(100)
print(addr[0], addr[1], data.decode(), flush=True)
"#;
    let mut cmd = ns.command(support::python());
    cmd.args(["-c", script]);
    let mut client = world.spawn_command(cmd);
    assert_eq!(client.line(), "embedded-answer");
    let mut buf = [0u8; 100];
    let (n, from) = gw
        .udp4
        .recv_from(&mut buf)
        .expect("the query reached the gateway's DNS port");
    assert_eq!(&buf[..n], b"query", "127.0.0.11 was not redirected");
    let origin = world
        .enforcer()
        .dns_origin(from)
        .expect("DNS origin recorded");
    assert_eq!(
        origin.dst,
        "198.51.100.53:53".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(origin.pid, client.pid());
    gw.udp4.send_to(b"answer", from).unwrap();
    assert_eq!(client.line(), "198.51.100.53 53 answer");
    client.finish();
}

#[test]
fn a_container_without_a_configured_gateway_is_denied_not_let_out() {
    if !support::privileged() {
        return;
    }
    let mut world = World::with_container_but_no_gateway();
    let mut events = world.deny_events();
    let script = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(("198.51.100.10", 443))
    print("connected", flush=True)
except OSError as e:
    print(e.errno, flush=True)
"#;
    let (ns, _) = world.container.as_ref().unwrap();
    let mut cmd = ns.command(support::python());
    cmd.args(["-c", script]);
    let client = world.spawn_command(cmd);
    let pid = client.pid();
    assert_eq!(client.finish().trim(), libc::EPERM.to_string());
    let denies = support::collect_denies(&world, &mut events, 1);
    assert_eq!(denies.len(), 1, "{denies:?}");
    assert_eq!(denies[0].kind, egressd_ebpf::DenyKind::NoGateway);
    assert_eq!(denies[0].dst, Some("198.51.100.10:443".parse().unwrap()));
    assert_eq!(denies[0].pid, pid);
}

/// Inside the bridged container: a TCP server on port 8080 of both its addresses
/// that says "direct" to each client.
const BRIDGED_SERVER: &str = r#"
import socket, threading
def serve(s):
    while True:
        c, _ = s.accept()
        c.sendall(b"direct")
        c.close()
for addr in ("198.51.100.130", "2001:db8:1::2"):
    s = socket.create_server((addr, 8080), family=socket.AF_INET6 if ":" in addr else socket.AF_INET)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// From the host, in the cgroup: a TCP connection to `argv[1]` port 8080 and what
/// it reads (the server's word, or the proxy's), then one DNS datagram and one DNS
/// over TCP connection to the same address, port 53.
const BRIDGED_CLIENT: &str = r#"
import socket, sys
host = sys.argv[1]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((host, 8080))
print(s.recv(100).decode(), flush=True)
if len(sys.argv) > 2:
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.settimeout(10)
    u.sendto(b"query", (host, 53))
    data, addr = u.recvfrom(100)
    print(addr[0], addr[1], data.decode(), flush=True)
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.settimeout(10)
    t.connect((host, 53))
    print(t.recv(100).decode(), flush=True)
"#;

/// A connection from the cgroup to the bridged container's `host`: reaches the
/// container itself (true) or the proxy (false, answered "via-proxy").
fn reaches_container_directly(world: &World, host: &str) -> bool {
    let mut client = world.spawn(support::python(), &["-c", BRIDGED_CLIENT, host]);
    let listener = if host.contains(':') {
        &world.proxy.tcp6
    } else {
        &world.proxy.tcp4
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                conn.write_all(b"via-proxy").unwrap();
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("proxy listener: {e}"),
        }
        // Reached directly, the client exits without the proxy.
        if client.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the client to {host} hangs");
        std::thread::sleep(Duration::from_millis(10));
    }
    match client.finish().trim() {
        "direct" => true,
        "via-proxy" => false,
        other => panic!("the client to {host} said {other:?}"),
    }
}

/// A container bridge (every port a veth), as Docker's: its networks are local like
/// loopback, found when the enforcer attaches and kept in step as its ports change,
/// but a resolver on it is still redirected to egressd's DNS (UDP and TCP).
#[test]
fn a_container_bridge_is_local_except_for_dns() {
    if !support::privileged() {
        return;
    }
    let world = World::with_bridged_container();
    let (ns, _) = world.container.as_ref().unwrap();
    let bridge = ns.bridge.clone().unwrap();
    let local: Vec<String> = world
        .enforcer()
        .local_networks()
        .iter()
        .map(ToString::to_string)
        .collect();
    for net in ["198.51.100.128/25", "2001:db8:1::/64"] {
        assert!(local.iter().any(|l| l == net), "{net} local: {local:?}");
    }
    let mut cmd = ns.command(support::python());
    cmd.args(["-c", BRIDGED_SERVER]);
    let mut server = support::spawn_outside(cmd);
    assert_eq!(server.line(), "ready");

    for host in ["198.51.100.130", "2001:db8:1::2"] {
        assert!(reaches_container_directly(&world, host), "{host}");
    }

    // Port 53 of a bridge address goes to the proxy's DNS, not to the container.
    let mut client = world.spawn(
        support::python(),
        &["-c", BRIDGED_CLIENT, "198.51.100.130", "dns"],
    );
    assert_eq!(client.line(), "direct");
    let mut buf = [0u8; 100];
    let (n, from) = world
        .proxy
        .udp4
        .recv_from(&mut buf)
        .expect("the query to the bridge address reached egressd's DNS");
    assert_eq!(&buf[..n], b"query");
    let origin = world.enforcer().dns_origin(from).expect("DNS origin");
    assert_eq!(
        origin.dst,
        "198.51.100.130:53".parse::<SocketAddr>().unwrap()
    );
    world.proxy.udp4.send_to(b"answer", from).unwrap();
    assert_eq!(client.line(), "198.51.100.130 53 answer");
    let (mut dns_tcp, _) = support::accept(&world.proxy.dns_tcp4);
    let orig = world
        .enforcer()
        .original_dst(dns_tcp.peer_addr().unwrap(), dns_tcp.local_addr().unwrap())
        .expect("DNS over TCP recorded");
    assert_eq!(orig.dst, "198.51.100.130:53".parse::<SocketAddr>().unwrap());
    dns_tcp.write_all(b"tcp-answer").unwrap();
    drop(dns_tcp);
    assert_eq!(client.line(), "tcp-answer");
    client.finish();

    // A more specific route inside the bridge's network that leads elsewhere (here
    // into the world namespace) is not local.
    let elsewhere = "198.51.100.140/32";
    support::run(
        "ip",
        &["route", "add", elsewhere, "dev", &world.netns.host_if],
    );
    let sync = world.enforcer().sync_local_networks().unwrap();
    assert!(sync.failed.is_empty(), "{sync:?}");
    assert!(!reaches_container_directly(&world, "198.51.100.140"));
    assert!(reaches_container_directly(&world, "198.51.100.130"));
    support::run("ip", &["route", "del", elsewhere]);

    // A port of another kind (here a tap, as a VM's or a VPN's) may lead off the
    // host: the bridge is no longer local, and is again once the port is gone.
    let tap = bridge.replacen("egw", "egy", 1);
    let _tap = Link(tap.clone());
    support::run("ip", &["tuntap", "add", "dev", &tap, "mode", "tap"]);
    support::run("ip", &["link", "set", &tap, "master", &bridge]);
    let ours: Vec<ipnet::IpNet> = ["198.51.100.128/25", "2001:db8:1::/64"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let sync = world.enforcer().sync_local_networks().unwrap();
    assert!(ours.iter().all(|n| sync.removed.contains(n)), "{sync:?}");
    let local = world.enforcer().local_networks();
    assert!(!ours.iter().any(|n| local.contains(n)), "{local:?}");
    for host in ["198.51.100.130", "2001:db8:1::2"] {
        assert!(!reaches_container_directly(&world, host), "{host}");
    }
    support::run("ip", &["link", "del", &tap]);
    let sync = world.enforcer().sync_local_networks().unwrap();
    assert!(ours.iter().all(|n| sync.added.contains(n)), "{sync:?}");
    assert!(reaches_container_directly(&world, "198.51.100.130"));
}

/// A link removed on drop.
struct Link(String);

impl Drop for Link {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .output();
    }
}
