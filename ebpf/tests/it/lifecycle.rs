//! Attach and detach: everything or nothing is attached, nothing remains afterwards.

use crate::support::{self, World};

fn attached_programs(cgroup: &std::path::Path) -> Vec<String> {
    let out = support::run("bpftool", &["cgroup", "show", &cgroup.to_string_lossy()]);
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn detach_leaves_nothing_attached_and_the_cgroup_goes() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let path = world.cgroup.path().to_path_buf();
    let attached = attached_programs(&path);
    let ours = world.enforcer().attached_programs();
    assert!(ours.starts_with(&egressd_ebpf::PROGRAMS), "{ours:?}");
    assert_eq!(
        attached.len(),
        ours.len(),
        "all hooks attached: {attached:#?}"
    );
    world.enforcer.take().unwrap().detach().unwrap();
    assert_eq!(attached_programs(&path), Vec::<String>::new());
    drop(world);
    assert!(!path.exists(), "child cgroup removed");
}

#[test]
fn probe_finds_every_feature() {
    if !support::privileged() {
        return;
    }
    egressd_ebpf::Enforcer::probe().unwrap();
}

#[test]
fn pinned_links_outlive_the_enforcer_and_cleanup_removes_them() {
    if !support::privileged() {
        return;
    }
    let mut world = World::pinned();
    let path = world.cgroup.path().to_path_buf();
    let pin_dir = world.pin_dir.clone().unwrap();
    let count = world.enforcer().attached_programs().len();
    let guarded = world.enforcer().guarded_interfaces().len();
    assert!(guarded >= 1, "at least the world's veth");
    // Dropping the enforcer is what a crash does to its fds: pinned links stay.
    drop(world.enforcer.take());
    assert_eq!(attached_programs(&path).len(), count, "links survive");
    let guard_pins = std::fs::read_dir(&pin_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("packet_guard_if")
        })
        .count();
    assert_eq!(guard_pins, 2 * guarded, "ingress and egress per interface");

    // Fail closed: with the proxy gone, a connection from the cgroup is refused,
    // it does not reach the outside.
    let proxy_port = world.proxy.proxy_port();
    drop(std::mem::replace(
        &mut world.proxy.tcp4,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    ));
    let script = r#"
import socket
try:
    socket.create_connection(("198.51.100.10", 443), timeout=5)
    print("connected", flush=True)
except ConnectionRefusedError:
    print("refused", flush=True)
"#;
    assert_eq!(
        world.python(script).finish().trim(),
        "refused",
        "proxy port {proxy_port} closed"
    );

    let removed = egressd_ebpf::cleanup(&pin_dir).unwrap();
    assert_eq!(
        removed.len(),
        count + 2 * guarded + 1,
        "every pin and the directory: {removed:?}"
    );
    assert_eq!(attached_programs(&path), Vec::<String>::new());
    assert!(!pin_dir.exists());
    assert_eq!(
        egressd_ebpf::cleanup(&pin_dir).unwrap(),
        Vec::<std::path::PathBuf>::new(),
        "idempotent"
    );
}

#[test]
fn a_new_pinned_run_replaces_the_pins_of_a_crashed_one() {
    if !support::privileged() {
        return;
    }
    let mut world = World::pinned();
    let path = world.cgroup.path().to_path_buf();
    let pin_dir = world.pin_dir.clone().unwrap();
    let count = world.enforcer().attached_programs().len();
    drop(world.enforcer.take()); // the "crashed" run
    let again = egressd_ebpf::Enforcer::attach(egressd_ebpf::EnforcerConfig {
        cgroup: path.clone(),
        proxy_port: world.proxy.proxy_port(),
        dns_port: world.proxy.dns_port(),
        pin_dir: Some(pin_dir.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        attached_programs(&path).len(),
        count,
        "old links replaced, not doubled"
    );
    again.detach().unwrap();
    assert_eq!(attached_programs(&path), Vec::<String>::new());
    assert!(!pin_dir.exists());
}

#[test]
fn a_cgroup_id_names_its_path() {
    if !support::privileged() {
        return;
    }
    let world = World::new();
    let id = world.cgroup.id().unwrap();
    let root = egressd_ebpf::cgroup2_mount().unwrap();
    let rel = world.cgroup.path().strip_prefix(&root).unwrap();
    assert_eq!(
        egressd_ebpf::cgroup_path_of_id(id),
        Some(format!("/{}", rel.display()))
    );
    assert_eq!(egressd_ebpf::cgroup_path_of_id(u64::MAX), None);
}
