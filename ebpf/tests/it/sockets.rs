//! In-kernel denies: UDP other than DNS, ping sockets and raw sockets get EPERM,
//! each reported with the process that tried.

use std::net::SocketAddr;

use egressd_ebpf::DenyKind;

use crate::support::{self, World};

#[test]
fn udp_other_than_dns_gets_eperm_at_the_send_and_one_deny_event_per_socket() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let mut events = world.deny_events();
    // Per destination: a socket that only connects (as glibc's getaddrinfo does
    // to sort addresses: no datagram), a connected socket that sends twice, an
    // unconnected one that sends twice.
    let script = r#"
import socket, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return str(e.errno)
for host, port in [("198.51.100.10", 9999), ("2001:db8::10", 443), ("::ffff:198.51.100.10", 443)]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(fam, socket.SOCK_DGRAM)
    probe.connect((host, port))
    local = probe.getsockname()[0]
    connected = socket.socket(fam, socket.SOCK_DGRAM)
    sends = [attempt(lambda: connected.connect((host, port)))]
    sends += [attempt(lambda: connected.send(b"x")) for _ in range(2)]
    loose = socket.socket(fam, socket.SOCK_DGRAM)
    sends += [attempt(lambda: loose.sendto(b"x", (host, port))) for _ in range(2)]
    print(host, port, "from", local, " ".join(sends), flush=True)
"#;
    let client = world.python(script);
    let pid = client.pid();
    let out = client.finish();
    let eperm = libc::EPERM;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("198.51.100.10 9999 from 198.51.100.1 ok {eperm} {eperm} {eperm} {eperm}"),
            format!("2001:db8::10 443 from 2001:db8::1 ok {eperm} {eperm} {eperm} {eperm}"),
            format!(
                "::ffff:198.51.100.10 443 from ::ffff:198.51.100.1 ok {eperm} {eperm} {eperm} {eperm}"
            ),
        ],
        "connect() is the kernel's (the real source address), every send gets EPERM"
    );
    // Two sending sockets per destination, one report each; the probes that
    // only connected report nothing.
    let denies = support::collect_denies(&world, &mut events, 7);
    let mut dsts: Vec<SocketAddr> = denies.iter().filter_map(|d| d.dst).collect();
    dsts.sort();
    let mut want = [
        "198.51.100.10:9999",
        "198.51.100.10:9999",
        "[2001:db8::10]:443",
        "[2001:db8::10]:443",
        "198.51.100.10:443",
        "198.51.100.10:443",
    ]
    .map(|a| a.parse::<SocketAddr>().unwrap());
    want.sort();
    assert_eq!(dsts, want, "{denies:?}");
    for d in &denies {
        assert_eq!(d.kind, DenyKind::Udp);
        assert_eq!(d.pid, pid);
        assert_eq!(d.comm, "python3");
        assert_eq!(d.cgroup_id, world.cgroup.id().unwrap());
        assert_eq!(d.protocol, 17);
    }
}

#[test]
fn udp_connect_without_a_route_fails_as_the_kernel_says() {
    if !support::privileged() {
        return;
    }
    // A network namespace of its own with nothing but loopback: no route to
    // anything. connect() must get what the kernel says without egressd
    // (ENETUNREACH, EADDRNOTAVAIL), so that glibc sorts such an address last
    // instead of trying it first.
    let mut world = World::new();
    let mut events = world.deny_events();
    let script = r#"
import socket
for fam, host in [(socket.AF_INET, "198.51.100.10"), (socket.AF_INET6, "2001:db8::10")]:
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((host, 443))
        print("connected", s.getsockname()[0])
    except OSError as e:
        print(e.errno)
"#;
    let unshared = || {
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--net", support::python(), "-c", script]);
        cmd
    };
    let kernel = support::spawn_outside(unshared()).finish();
    assert_eq!(
        kernel.lines().next(),
        Some(libc::ENETUNREACH.to_string().as_str()),
        "without egressd: {kernel}"
    );
    let filtered = world.spawn_command(unshared()).finish();
    assert_eq!(filtered, kernel, "the same answers under egressd");
    let denies = support::collect_denies(&world, &mut events, 1);
    assert!(denies.is_empty(), "a connect() is no deny: {denies:?}");
}

#[test]
fn ping_and_raw_sockets_get_eperm_and_deny_events() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let mut events = world.deny_events();
    // Inside the test namespace, where ping sockets are enabled for every group: the
    // EPERM can only come from the cgroup hook.
    let script = r#"
import socket
for name, fam, typ, proto in [("ping4", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
                              ("ping6", socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6),
                              ("raw4", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                              ("raw6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
                              ("rawudp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)]:
    try:
        socket.socket(fam, typ, proto)
        print(name, "created", flush=True)
    except OSError as e:
        print(name, e.errno, flush=True)
"#;
    let mut cmd = world.netns.command(support::python());
    cmd.args(["-c", script]);
    let client = world.spawn_command(cmd);
    let out = client.finish();
    let eperm = libc::EPERM;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["ping4", "ping6", "raw4", "raw6", "rawudp"].map(|n| format!("{n} {eperm}"))
    );
    let denies = support::collect_denies(&world, &mut events, 5);
    let kinds: Vec<(DenyKind, u32)> = denies.iter().map(|d| (d.kind, d.protocol)).collect();
    assert_eq!(
        kinds,
        [
            (DenyKind::Icmp, 1),
            (DenyKind::Icmp, 58),
            (DenyKind::Raw, 1),
            (DenyKind::Raw, 58),
            (DenyKind::Raw, 17)
        ]
    );
    for d in &denies {
        assert_eq!(d.comm, "python3");
        assert_eq!(d.cgroup_id, world.cgroup.id().unwrap());
        assert_eq!(d.dst, None);
    }
}

#[test]
fn the_backstop_drops_a_socket_that_slipped_past_the_hooks() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let mut events = world.deny_events();
    let _upstream = world.upstream_server();
    // Exempt at connect time (the proxy's mark), then the mark is cleared: the
    // connection now carries unproxied traffic, which the egress backstop drops.
    let script = format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, 36, {mark})
s.settimeout(10)
s.connect(("198.51.100.10", 443))
s.setsockopt(socket.SOL_SOCKET, 36, 0)
s.sendall(b"smuggled")
print("sent", flush=True)
time.sleep(10)
"#,
        mark = support::BYPASS_MARK
    );
    let mut client = world.python(&script);
    assert_eq!(client.line(), "sent");
    let denies = support::collect_denies(&world, &mut events, 1);
    assert_eq!(denies.len(), 1, "one backstop event: {denies:?}");
    let d = &denies[0];
    assert_eq!(d.kind, DenyKind::Backstop);
    assert_eq!(d.dst, Some("198.51.100.10:443".parse().unwrap()));
    assert_eq!(d.protocol, 6);
    assert_eq!(d.pid, client.pid());
    assert_eq!(d.comm, "python3");
    assert_eq!(d.cgroup_id, world.cgroup.id().unwrap());
}

#[test]
fn deny_reports_the_ring_buffer_had_no_room_for_are_counted() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let mut events = world.deny_events();
    // Nobody reads while 5,000 sockets are denied a datagram (a socket is
    // reported once): the 256 KiB ring buffer holds about 3,600 reports, the
    // rest must be counted as lost, none silently gone.
    let script = r#"
import socket
n = 0
for i in range(5000):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b"x", ("198.51.100.10", 9999))
    except PermissionError:
        n += 1
    s.close()
print(n, flush=True)
"#;
    let out = world.python(script).finish();
    assert_eq!(out.trim(), "5000");
    let lost = world.enforcer().deny_reports_lost();
    assert!(lost > 0, "the ring buffer cannot hold 5,000 reports");
    let mut delivered = 0u64;
    while events.try_recv().is_some() {
        delivered += 1;
    }
    assert_eq!(delivered + lost, 5000, "delivered {delivered}, lost {lost}");
}
