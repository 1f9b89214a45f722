//! Attach and detach: everything or nothing is attached, nothing remains afterwards.

use crate::support::{self, World};

fn attached_programs(cgroup: &std::path::Path) -> Vec<String> {
    let out = support::run("bpftool", &["cgroup", "show", &cgroup.to_string_lossy()]);
    out.lines().skip(1).filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

#[test]
fn detach_leaves_nothing_attached_and_the_cgroup_goes() {
    if !support::privileged() {
        return;
    }
    let mut world = World::new();
    let path = world.cgroup.path().to_path_buf();
    let attached = attached_programs(&path);
    assert_eq!(attached.len(), egressd_ebpf::PROGRAMS.len(), "all hooks attached: {attached:#?}");
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
