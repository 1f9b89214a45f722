//! DNS: UDP to any resolver is redirected to the DNS port, the proxy learns the
//! resolver asked and the process, and the reply appears to come from that resolver.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, UdpSocket};

use crate::support::{self, World};

const CLIENT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"query", (sys.argv[1], 53))
data, addr = s.recvfrom(512)
print(addr[0], addr[1], data.decode(), flush=True)
"#;

fn answered(world: &World, server: &UdpSocket, resolver: &str, expect: &str) {
    let client = world.spawn(support::python(), &["-c", CLIENT, resolver]);
    let mut buf = [0u8; 512];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("the query reached the DNS port");
    assert_eq!(&buf[..n], b"query");
    let origin = world
        .enforcer()
        .dns_origin(from)
        .expect("DNS origin recorded");
    assert_eq!(origin.dst, expect.parse::<SocketAddr>().unwrap());
    assert_eq!(origin.pid, client.pid());
    assert_eq!(origin.comm, client.comm());
    assert_eq!(origin.cgroup_id, world.cgroup.id().unwrap());
    server.send_to(b"answer", from).unwrap();
    assert_eq!(client.finish().trim(), format!("{resolver} 53 answer"));
}

#[test]
fn udp_dns_v4_is_redirected_and_answered_from_the_resolver_asked() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    answered(
        &world,
        &world.proxy.udp4,
        "198.51.100.53",
        "198.51.100.53:53",
    );
}

#[test]
fn udp_dns_v6_is_redirected_and_answered_from_the_resolver_asked() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    answered(
        &world,
        &world.proxy.udp6,
        "2001:db8::53",
        "[2001:db8::53]:53",
    );
}

#[test]
fn a_loopback_resolver_on_the_host_is_redirected_too() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    answered(&world, &world.proxy.udp4, "127.0.0.53", "127.0.0.53:53");
}

#[test]
fn kdig_sees_the_answer_from_the_resolver_it_asked() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    let client = world.spawn(
        "kdig",
        &[
            "@198.51.100.53",
            "+timeout=5",
            "+retry=0",
            "egressd.test",
            "A",
        ],
    );
    let mut buf = [0u8; 512];
    let (n, from) = world
        .proxy
        .udp4
        .recv_from(&mut buf)
        .expect("kdig's query reached the DNS port");
    assert!(n > 12, "a DNS message");
    let origin = world.enforcer().dns_origin(from).unwrap();
    assert_eq!(
        origin.dst,
        "198.51.100.53:53".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(origin.comm, "kdig");
    // Answer with the query itself, flagged as a response (QR, RA; NOERROR).
    let mut reply = buf[..n].to_vec();
    reply[2] |= 0x80;
    reply[3] = 0x80;
    world.proxy.udp4.send_to(&reply, from).unwrap();
    let out = client.finish();
    assert!(out.contains("198.51.100.53@53(UDP)"), "kdig output: {out}");
    assert!(out.contains("NOERROR"), "kdig output: {out}");
}

#[test]
fn connected_udp_dns_is_redirected_and_the_peer_is_the_resolver() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    // What glibc's resolver does: connect(), send(), recv().
    let script = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.connect(("198.51.100.53", 53))
s.send(b"query")
print(s.getpeername()[0], s.getpeername()[1], s.recv(100).decode(), flush=True)
"#;
    let client = world.python(script);
    let mut buf = [0u8; 100];
    let (n, from) = world.proxy.udp4.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"query");
    let origin = world.enforcer().dns_origin(from).unwrap();
    assert_eq!(
        origin.dst,
        "198.51.100.53:53".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(origin.pid, client.pid());
    world.proxy.udp4.send_to(b"answer", from).unwrap();
    assert_eq!(client.finish().trim(), "198.51.100.53 53 answer");
}

#[test]
fn dns_over_tcp_goes_to_the_dns_port() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    let client = world.spawn(
        "kdig",
        &[
            "+tcp",
            "@198.51.100.53",
            "+timeout=5",
            "+retry=0",
            "egressd.test",
            "A",
        ],
    );
    let (mut conn, peer) = support::accept(&world.proxy.dns_tcp4);
    let origin = world
        .enforcer()
        .original_dst(peer, conn.local_addr().unwrap())
        .unwrap();
    assert_eq!(
        origin.dst,
        "198.51.100.53:53".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(origin.comm, "kdig");
    assert_eq!(
        world.enforcer().dns_origin(peer),
        Some(origin),
        "dns_origin finds TCP flows too"
    );
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut query).unwrap();
    query[2] |= 0x80;
    query[3] = 0x80;
    conn.write_all(&len).unwrap();
    conn.write_all(&query).unwrap();
    let out = client.finish();
    assert!(out.contains("198.51.100.53@53(TCP)"), "kdig output: {out}");
    assert!(out.contains("NOERROR"), "kdig output: {out}");
}
