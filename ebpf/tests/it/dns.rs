//! DNS: UDP to any resolver is redirected to the DNS port, the proxy learns the
//! resolver asked and the process, and the reply appears to come from that resolver.

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
