//! An emulated container (another network namespace routed through a host-side
//! gateway): redirected to the gateway address instead of loopback; its loopback
//! DNS (Docker's 127.0.0.11) is left alone.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

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
