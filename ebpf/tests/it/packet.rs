//! Packet sockets: frames a process in the filtered cgroup writes through an
//! `AF_PACKET` socket are dropped by the tc guard (on the host's egress, and on
//! the host's ingress for a container's), with a deny event naming the socket;
//! the same frame from outside the cgroup, or from a packet socket that existed
//! before egressd attached, goes through (so the test sees a real drop, not a
//! frame that never could have arrived). The socket options that would skip tc
//! get EPERM.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use egressd_ebpf::DenyKind;

use crate::support::{self, Client, World};

/// Sends one frame through an AF_PACKET socket (usage in the file).
const SENDER: &str = include_str!("../fixtures/packet_sender.py");

/// UDP receiver in the world namespace: prints every payload until 1.5 s pass
/// without one, then "done".
const RECEIVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1.5)
print("ready", flush=True)
while True:
    try:
        print(s.recv(100).decode(), flush=True)
    except socket.timeout:
        break
print("done", flush=True)
"#;

const PORT: &str = "7777";

/// The sender's arguments for a frame from the host (198.51.100.1) to the world's
/// 198.51.100.10 out of the host-side veth (`-`: named in the wait file).
fn host_frame(host_if: &str, payload: &str) -> Vec<String> {
    [host_if, "198.51.100.1", "198.51.100.10", PORT, payload]
        .map(str::to_owned)
        .into()
}

fn python_cmd(script: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(support::python());
    cmd.arg("-c").arg(script).args(args);
    cmd
}

/// Everything the receiver printed, once it is done.
fn received(receiver: Client) -> Vec<String> {
    let out = receiver.finish();
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{out}");
    lines
}

#[test]
fn packet_socket_frames_from_the_cgroup_are_dropped_on_egress_and_reported() {
    if !support::privileged() {
        return;
    }
    let wait_file = std::env::temp_dir().join(format!(
        "egressd-ebpf-packet-{}-{}",
        std::process::id(),
        line!()
    ));
    let _ = std::fs::remove_file(&wait_file);
    // The "old" socket: opened by a process in the cgroup before egressd attached.
    let mut early_args = host_frame("-", "old");
    early_args.push(wait_file.display().to_string());
    let refs: Vec<&str> = early_args.iter().map(String::as_str).collect();
    let mut world = World::with_early_client(SENDER, &refs);
    let mut events = world.deny_events();

    let mut rcmd = world.netns.command(support::python());
    rcmd.args(["-c", RECEIVER, "198.51.100.10", PORT]);
    let mut receiver = support::spawn_outside(rcmd);
    assert_eq!(receiver.line(), "ready");

    // Outside the cgroup: goes through (the frame itself is fine).
    let mut outside = support::spawn_outside(python_cmd(
        SENDER,
        &host_frame(&world.netns.host_if, "outside"),
    ));
    assert!(outside.line().starts_with("ready "));
    assert_eq!(outside.line(), "sent");
    // Created before egressd attached: left alone.
    let tmp = wait_file.with_extension("tmp");
    std::fs::write(&tmp, &world.netns.host_if).unwrap();
    std::fs::rename(&tmp, &wait_file).unwrap();
    let mut early = world.early.take().unwrap();
    assert_eq!(early.line(), "sent");
    // Created under egressd, in the cgroup: dropped.
    let mut new = world.spawn_command(python_cmd(SENDER, &host_frame(&world.netns.host_if, "new")));
    assert!(new.line().starts_with("ready "));
    let sent = new.line();
    assert!(sent == "sent" || sent == "ENOBUFS", "{sent}");

    let denies = support::collect_denies(&world, &mut events, 1);
    assert_eq!(denies.len(), 1, "{denies:?}");
    let d = &denies[0];
    assert_eq!(d.kind, DenyKind::Packet);
    assert_eq!(d.protocol, 0x0800, "the frame's EtherType");
    assert_eq!(d.cgroup_id, world.cgroup.id().unwrap());
    assert_eq!(d.dst, None);
    let cookie = d.socket_cookie.expect("the socket cookie is reported");
    assert_eq!(egressd_ebpf::packet_socket_owner(cookie), Some(new.pid()));

    let got = received(receiver);
    assert!(got.contains(&"outside".to_owned()), "{got:?}");
    assert!(got.contains(&"old".to_owned()), "{got:?}");
    assert!(!got.contains(&"new".to_owned()), "{got:?}");
    let _ = std::fs::remove_file(&wait_file);
}

#[test]
fn container_packet_socket_frames_are_dropped_at_the_host() {
    if !support::privileged() {
        return;
    }
    let mut world = World::with_container();
    let mut events = world.deny_events();
    let receiver = UdpSocket::bind((support::CONTAINER_GW4, 7778)).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let (ns, _) = world.container.as_ref().unwrap();
    let frame = |payload: &str| -> Vec<String> {
        [
            ns.peer_if.as_str(),
            "198.51.100.130",
            support::CONTAINER_GW4,
            "7778",
            payload,
        ]
        .map(str::to_owned)
        .into()
    };
    let in_ns = |args: &[String]| {
        let mut cmd = ns.command(support::python());
        cmd.arg("-c").arg(SENDER).args(args);
        cmd
    };
    // The container's process outside the filtered cgroup: arrives.
    let mut outside = support::spawn_outside(in_ns(&frame("outside")));
    assert!(outside.line().starts_with("ready "));
    assert_eq!(outside.line(), "sent");
    // In the filtered cgroup: leaves the container, dropped on the host's ingress.
    let mut inside = world.spawn_command(in_ns(&frame("inside")));
    assert!(inside.line().starts_with("ready "));
    assert_eq!(inside.line(), "sent");

    let mut got = Vec::new();
    let mut buf = [0u8; 100];
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(got, ["outside"]);
    let denies = support::collect_denies(&world, &mut events, 1);
    assert_eq!(denies.len(), 1, "{denies:?}");
    assert_eq!(denies[0].kind, DenyKind::Packet);
    assert_eq!(denies[0].cgroup_id, world.cgroup.id().unwrap());
    assert!(denies[0].socket_cookie.is_some());
}

#[test]
fn socket_options_that_skip_tc_get_eperm() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let mut events = world.deny_events();
    let script = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
print("rcvbuf ok", flush=True)
try:
    s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS
    print("bypass allowed", flush=True)
except OSError as e:
    print("bypass", e.errno, flush=True)
try:
    x = socket.socket(44, socket.SOCK_RAW)  # AF_XDP
except OSError as e:
    print("xdp socket", e.errno, flush=True)
else:
    try:
        x.setsockopt(283, 4, bytes(32))  # SOL_XDP, XDP_UMEM_REG
        print("xdp allowed", flush=True)
    except OSError as e:
        print("xdp", e.errno, flush=True)
"#;
    let client = world.python(script);
    let pid = client.pid();
    let out = client.finish();
    let eperm = libc::EPERM;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "rcvbuf ok");
    assert_eq!(lines[1], format!("bypass {eperm}"));
    let xdp_denied = lines[2] == format!("xdp {eperm}");
    assert!(xdp_denied || lines[2].starts_with("xdp socket "), "{out}");
    let want = if xdp_denied { 2 } else { 1 };
    let denies = support::collect_denies(&world, &mut events, want);
    assert_eq!(denies.len(), want, "{denies:?}");
    assert!(
        denies
            .iter()
            .all(|d| d.kind == DenyKind::Sockopt && d.pid == pid)
    );
    assert_eq!(denies[0].protocol, 263);
    if xdp_denied {
        assert_eq!(denies[1].protocol, 283);
    }
}

#[test]
fn interfaces_that_appear_later_are_guarded_and_forgotten_when_gone() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    let name = format!("egd{}", std::process::id() % 100_000);
    let peer = format!("{name}p");
    let mut changes = {
        let _guard = world.runtime.enter();
        egressd_ebpf::Enforcer::watch_interfaces().unwrap()
    };
    assert!(!world.enforcer().guarded_interfaces().contains(&name));
    assert!(
        world
            .enforcer()
            .guarded_interfaces()
            .contains(&world.netns.host_if)
    );
    support::run(
        "ip",
        &["link", "add", &name, "type", "veth", "peer", "name", &peer],
    );
    let woke = world
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), changes.changed()).await });
    assert!(matches!(woke, Ok(Ok(()))), "no link notification: {woke:?}");
    let sync = world.enforcer().sync_interfaces().unwrap();
    let cleanup = DeleteLink(name.clone());
    let mut attached = sync.attached.clone();
    attached.sort();
    assert_eq!(attached, [name.clone(), peer.clone()], "{sync:?}");
    assert!(sync.failed.is_empty(), "{sync:?}");
    assert!(world.enforcer().guarded_interfaces().contains(&name));
    drop(cleanup); // deletes both ends
    world.enforcer().sync_interfaces().unwrap();
    let now = world.enforcer().guarded_interfaces();
    assert!(!now.contains(&name) && !now.contains(&peer), "{now:?}");
}

struct DeleteLink(String);

impl Drop for DeleteLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}
