//! TCP: redirected to the proxy port, original destination and process recovered by
//! 4-tuple, getpeername shows the original peer; the proxy's marked socket is left alone.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;

use crate::support::{self, BYPASS_MARK, World};

const CLIENT: &str = r#"
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((sys.argv[1], int(sys.argv[2])))
peer = s.getpeername()
print(peer[0], peer[1], flush=True)
s.sendall(b"hello")
print(s.recv(100).decode(), flush=True)
"#;

/// Connects from inside the cgroup to `host:443` and checks what the proxy side sees.
fn redirected(world: &World, host: &str, expect_dst: &str, v6_listener: bool) {
    let mut client = world.spawn(support::python(), &["-c", CLIENT, host, "443"]);
    let listener = if v6_listener {
        &world.proxy.tcp6
    } else {
        &world.proxy.tcp4
    };
    let (mut conn, peer) = support::accept(listener);
    let local = conn.local_addr().unwrap();

    let orig = world
        .enforcer()
        .original_dst(peer, local)
        .expect("original destination recorded");
    assert_eq!(orig.dst, expect_dst.parse::<SocketAddr>().unwrap());
    assert_eq!(orig.pid, client.pid());
    assert_eq!(orig.comm, client.comm());
    assert_eq!(orig.cgroup_id, world.cgroup.id().unwrap());
    assert_ne!(orig.netns_cookie, 0);

    let mut hello = [0u8; 5];
    conn.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello");
    conn.write_all(b"proxied").unwrap();

    let dst: SocketAddr = expect_dst.parse().unwrap();
    assert_eq!(
        client.line(),
        format!("{} {}", host, dst.port()),
        "getpeername shows the original peer"
    );
    assert_eq!(client.line(), "proxied");
    client.finish();

    // Once both sides have closed, the flow's entry is gone (no stale 4-tuples).
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while world.enforcer().original_dst(peer, local).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "flow entry not removed after close"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn tcp_v4_goes_to_the_proxy_with_its_original_destination() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    redirected(&world, "198.51.100.10", "198.51.100.10:443", false);
}

#[test]
fn tcp_v6_goes_to_the_proxy_with_its_original_destination() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    redirected(&world, "2001:db8::10", "[2001:db8::10]:443", true);
}

#[test]
fn tcp_v4_mapped_is_handled_as_ipv4() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    // A dual-stack socket: lands on the IPv4 listener, reported as plain IPv4.
    redirected(&world, "::ffff:198.51.100.10", "198.51.100.10:443", false);
}

#[test]
fn the_proxys_marked_socket_is_not_redirected() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    let upstream = world.upstream_server();

    let client = format!(
        r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, 36, {BYPASS_MARK})
s.settimeout(10)
s.connect(("198.51.100.10", 443))
print(s.recv(100).decode(), flush=True)
"#
    );
    let out = world.python(&client).finish();
    assert_eq!(
        out.trim(),
        "upstream",
        "the marked connection reached the real server"
    );
    assert!(
        world.proxy.tcp4.accept().is_err(),
        "nothing may reach the proxy listener for a marked socket"
    );
    drop(upstream.finish());
}
