//! What an egressd killed without warning (SIGKILL) leaves behind: nothing
//! that claims it is ready, and, for `exec`, not its command: the command's
//! traffic stays blocked until the guardian has killed every process of it,
//! then the hooks, the pins and the cgroup go.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::runner::kit::{self, OVERRIDE_ONLY, Topology};
use crate::support::ProxyBuilder;

/// Waits (bounded) until `gone` holds.
fn wait_until(what: &str, limit: Duration, gone: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !gone() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_run_leaves_no_ready_file() {
    let mut proxy = ProxyBuilder::new("version: 1\nallow: []\n").start();
    let ready = proxy.dir().join("ready.json");
    assert!(ready.exists());
    proxy.signal(libc::SIGKILL);
    let _ = proxy.terminate();
    wait_until(
        "the ready file outlived egressd",
        Duration::from_secs(10),
        || !ready.exists(),
    );
}

#[test]
fn a_killed_exec_takes_its_command_with_it_and_nothing_leaks() {
    if !kit::privileged() {
        return;
    }
    let t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    // The command keeps trying a server the policy denies; a request that
    // gets an answer went out unfiltered.
    let script = format!(
        "grep ^0:: /proc/self/cgroup > \"$T/cgroup\"; \
         while :; do \
           if curl -s --max-time 2 -o /dev/null http://{OVERRIDE_ONLY}:8080/; then echo leak >> \"$T/leak\"; fi; \
           sleep 0.02; \
         done"
    );
    let mut child = crate::exec::exec_cmd(&t, dir.path(), &script)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cg_file = dir.path().join("cgroup");
    let ready = dir.path().join("ready.json");
    wait_until("the command never started", Duration::from_secs(30), || {
        ready.exists() && std::fs::read_to_string(&cg_file).is_ok_and(|c| !c.is_empty())
    });
    let cg = std::fs::read_to_string(&cg_file)
        .unwrap()
        .trim()
        .trim_start_matches("0::")
        .to_owned();
    let name = cg.rsplit('/').next().unwrap().to_owned();
    // A few denied attempts first: the probe itself works.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGKILL);
    }
    let status = kit::wait_bounded(&mut child, Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    wait_until(
        "the command's cgroup outlived egressd",
        Duration::from_secs(15),
        || !kit::cgroup_exists(&cg),
    );
    let pins = Path::new("/sys/fs/bpf").join(&name);
    wait_until(
        "the pins outlived the kill",
        Duration::from_secs(15),
        || !pins.exists(),
    );
    assert!(!ready.exists(), "the ready file outlived egressd");
    assert!(!kit::bpftool_cgroup_tree().contains(&name));
    // Anything still running a request when the cgroup died is dead now.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !dir.path().join("leak").exists(),
        "a request went out unfiltered after egressd was killed"
    );
    let records = kit::records(&dir.path().join("audit"));
    assert!(
        records
            .iter()
            .any(|r| r.decision == egressd_policy::Verdict::Deny),
        "the probe was denied while egressd ran: {records:?}"
    );
}
