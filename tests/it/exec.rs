//! `egressd exec` against the real kernel (root): the command runs in a fresh
//! child cgroup with the hooks attached there only, its exit code comes back,
//! an allowed connection reaches a server in the test namespace, a denied one
//! is refused, audited with the process and summarised, and nothing of egressd
//! remains afterwards (no cgroup, no attached program, no process), also when
//! egressd itself is interrupted.

#![expect(
    clippy::unwrap_used,
    reason = "a failed setup step or lookup is a failed test"
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::runner::kit::{self, ALLOWED, DENIED, Topology};

const POLICY: &str = "version: 1\nallow:\n  - cidr: 198.51.100.202/32\n    ports: [8080]\n";

pub(crate) fn exec_cmd(t: &Topology, dir: &std::path::Path, script: &str) -> Command {
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut cmd = Command::new(crate::support::egressd_bin());
    cmd.arg("exec")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-dir")
        .arg(dir.join("audit"))
        .arg("--ready-file")
        .arg(dir.join("ready.json"))
        .args(["--dns-upstream", "127.0.0.1:9", "--runner", "exec-it"])
        .arg("--")
        .args(["sh", "-c", script])
        .env("T", dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    kit::clear_proxy_env(&mut cmd);
    let _ = t;
    cmd
}

#[test]
fn exec_returns_the_exit_code_audits_and_leaves_nothing() {
    if !kit::privileged() {
        return;
    }
    let t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "grep ^0:: /proc/self/cgroup > \"$T/cgroup\"; \
         curl -sS --max-time 10 http://{ALLOWED}:8080/ -o \"$T/body\"; echo $? > \"$T/allowed\"; \
         curl -sS --max-time 10 http://{DENIED}:8080/ -o /dev/null; echo $? > \"$T/denied\"; \
         python3 -c 'import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ntry:\n  s.sendto(b\"x\",(\"{DENIED}\",443)); print(\"sent\")\nexcept OSError as e: print(errno.errorcode[e.errno])' > \"$T/udp\"; \
         kdig +timeout=3 +retry=0 @{DENIED} denied.test > \"$T/dig\"; \
         sleep 300 & echo $! > \"$T/bg\"; exit 7"
    );
    let out = exec_cmd(&t, dir.path(), &script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code passed through; stderr:\n{stderr}"
    );
    let read = |f: &str| {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(
        read("allowed"),
        "0",
        "the allowed server was reached; stderr:\n{stderr}"
    );
    assert_eq!(read("body"), kit::SERVER_BODY);
    assert_ne!(read("denied"), "0", "the denied connection failed");
    assert_eq!(
        read("udp"),
        "EPERM",
        "UDP other than DNS is refused in the kernel"
    );

    // The command ran in a fresh child cgroup, not egressd's own.
    let cg = read("cgroup");
    let cg = cg.strip_prefix("0::").unwrap_or(&cg).to_owned();
    let cg_name = cg.rsplit('/').next().unwrap().to_owned();
    assert!(cg_name.starts_with("egressd-exec-"), "{cg}");

    // Audited, with the process, and summarised on stderr.
    let records = kit::records(&dir.path().join("audit"));
    let denied = records
        .iter()
        .find(|r| r.dst.map(|d| d.to_string()) == Some(format!("{DENIED}:8080")))
        .unwrap_or_else(|| panic!("no record for the denied connection: {records:?}"));
    assert_eq!(denied.decision, egressd_policy::Verdict::Deny);
    assert_eq!(denied.reason, egressd_policy::Reason::NoRule);
    let p = denied.process.as_ref().expect("process attribution");
    assert_eq!(p.comm.as_deref(), Some("curl"));
    assert!(
        p.exe.as_deref().is_some_and(|e| e.ends_with("curl")),
        "{p:?}"
    );
    assert_eq!(p.cgroup.as_deref(), Some(cg.as_str()));
    let allowed = records
        .iter()
        .find(|r| {
            r.dst.map(|d| d.to_string()) == Some(format!("{ALLOWED}:8080")) && !r.is_closing()
        })
        .expect("a record for the allowed connection");
    assert_eq!(allowed.decision, egressd_policy::Verdict::Allow);
    assert_eq!(allowed.rule, "allow[0]");
    let udp = records
        .iter()
        .find(|r| r.kind == egressd_audit::Kind::Udp)
        .expect("the UDP deny is audited");
    assert_eq!(udp.reason, egressd_policy::Reason::UdpBlocked);
    assert_eq!(
        udp.process.as_ref().and_then(|p| p.comm.as_deref()),
        Some("python3")
    );
    assert!(
        read("dig").contains("REFUSED"),
        "the DNS query for a denied name is refused: {}",
        read("dig")
    );
    let dns = records
        .iter()
        .find(|r| r.kind == egressd_audit::Kind::Dns && r.host.as_deref() == Some("denied.test"))
        .expect("the DNS query is audited");
    assert_eq!(dns.reason, egressd_policy::Reason::DnsRefused);
    assert_eq!(
        dns.process.as_ref().and_then(|p| p.comm.as_deref()),
        Some("kdig"),
        "DNS records name the process too: {dns:?}"
    );
    let summary = egressd_audit::summary::summarize(records.iter().cloned()).to_markdown();
    assert!(
        stderr.contains(&summary),
        "the summary of the run's records is printed:\n{summary}\nstderr:\n{stderr}"
    );
    assert!(
        summary
            .split("#### ")
            .any(|section| section.starts_with("Denied: ")
                && section.contains(&format!(
                    "| {DENIED} | 8080 | 1 | curl | no rule allows this address |"
                ))),
        "{summary}"
    );

    // Nothing remains: no cgroup, no program attached anywhere under its name,
    // the background process the command left is dead.
    assert!(!kit::cgroup_exists(&cg), "{cg} was removed");
    let tree = kit::bpftool_cgroup_tree();
    assert!(
        !tree.contains(&cg_name),
        "bpftool cgroup tree still shows {cg_name}:\n{tree}"
    );
    let bg = read("bg");
    // Dead: gone, or a zombie waiting for whoever inherited it to reap it.
    let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
    let state = state
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("gone")
        .to_owned();
    assert!(
        state == "gone" || state == "Z",
        "the leftover process {bg} was killed (state {state})"
    );
    assert!(
        !dir.path().join("ready.json").exists(),
        "the ready file is removed"
    );
}

/// Sends one frame through an AF_PACKET socket (usage in the file).
const PACKET_SENDER: &str = include_str!("../../ebpf/tests/fixtures/packet_sender.py");

/// A UDP receiver in the test namespace on `ALLOWED:7777`: prints each
/// payload until told to stop (by a datagram from outside egressd), so that
/// every frame sent before [`Receiver::finish`] had its chance to arrive.
struct Receiver {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Receiver {
    fn start(t: &Topology) -> Receiver {
        let mut child = Command::new("ip")
            .args(["netns", "exec", t.netns(), "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 s.bind(('{ALLOWED}',7777)); s.settimeout(120); print('ready',flush=True)\n\
                 while True:\n  \
                   p=s.recv(100).decode()\n  \
                   if p=='stop': break\n  \
                   print(p,flush=True)\n\
                 print('done',flush=True)\n"
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Receiver { child, out }
    }

    /// Every payload that arrived before now.
    fn finish(mut self) -> Vec<String> {
        let sock = std::net::UdpSocket::bind((kit::HOST, 0)).unwrap();
        sock.send_to(b"stop", (ALLOWED, 7777)).unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        let _ = self.child.wait();
        rest.lines().map(str::to_owned).collect()
    }
}

/// The arguments of PACKET_SENDER for one frame to the receiver.
fn frame(t: &Topology, payload: &str) -> [String; 5] {
    [t.host_link(), kit::HOST, ALLOWED, "7777", payload].map(str::to_owned)
}

/// Under `exec`: sends one frame with `payload` through a packet socket.
fn packet_script(t: &Topology, payload: &str) -> String {
    format!(
        "python3 -c \"$SENDER\" {} > \"$T/packet\"",
        frame(t, payload).join(" ")
    )
}

/// The packet_blocked record of the frame sent by `packet_script` in `dir`,
/// attributed to its process and to a cgroup of `exec`.
fn packet_record(dir: &std::path::Path, stderr: &str) -> egressd_audit::Record {
    let packet = std::fs::read_to_string(dir.join("packet")).unwrap();
    let pid: u32 = packet
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("ready "))
        .unwrap()
        .parse()
        .unwrap();
    let records = kit::records(&dir.join("audit"));
    let rec = records
        .iter()
        .find(|r| r.reason == egressd_policy::Reason::PacketBlocked)
        .unwrap_or_else(|| panic!("no packet_blocked record: {records:?}\nstderr:\n{stderr}"))
        .clone();
    assert_eq!(rec.kind, egressd_audit::Kind::Raw);
    assert_eq!(rec.decision, egressd_policy::Verdict::Deny);
    assert!(
        rec.detail.as_deref().is_some_and(|d| d.contains("0x0800")),
        "{rec:?}"
    );
    let p = rec.process.as_ref().expect("process attribution");
    assert_eq!(p.pid, Some(pid), "{p:?}");
    assert_eq!(p.comm.as_deref(), Some("python3"));
    assert!(
        p.cgroup.as_deref().is_some_and(|c| c
            .rsplit('/')
            .next()
            .unwrap()
            .starts_with("egressd-exec-")),
        "{p:?}"
    );
    rec
}

#[test]
fn exec_drops_packet_socket_frames_and_audits_them() {
    if !kit::privileged() {
        return;
    }
    let t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&t);

    // Without egressd the same frame arrives: the test can tell a drop.
    let direct = Command::new("python3")
        .arg("-c")
        .arg(PACKET_SENDER)
        .args(frame(&t, "direct"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&direct.stdout).contains("\nsent\n"),
        "{direct:?}"
    );
    // Under egressd exec: dropped by the packet-socket guard, audited.
    let run = exec_cmd(&t, dir.path(), &packet_script(&t, "filtered"))
        .env("SENDER", PACKET_SENDER)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "stderr:\n{stderr}");
    assert_eq!(
        receiver.finish(),
        ["direct", "done"],
        "only the unfiltered frame arrived"
    );
    packet_record(dir.path(), &stderr);
}

#[test]
fn two_execs_on_one_host_each_guard_their_own_cgroup() {
    if !kit::privileged() {
        return;
    }
    let t = Topology::up();
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&t);
    // The first instance attaches its guard to every interface and waits;
    // the second attaches after it, so the first one's program sees the
    // second one's frames first and must leave them to it.
    let waiting = exec_cmd(
        &t,
        first.path(),
        "while [ ! -e \"$T/go\" ]; do sleep 0.02; done; python3 -c \"$SENDER\" $FRAME > \"$T/packet\"",
    )
    .env("SENDER", PACKET_SENDER)
    .env("FRAME", frame(&t, "first").join(" "))
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let ready = first.path().join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the first exec never got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = exec_cmd(
        &t,
        second.path(),
        &format!(
            "{}; touch \"$GO\"; while [ ! -s \"$GO_DONE\" ]; do sleep 0.02; done",
            packet_script(&t, "second")
        ),
    )
    .env("SENDER", PACKET_SENDER)
    .env("GO", first.path().join("go"))
    .env("GO_DONE", first.path().join("packet"))
    .output()
    .unwrap();
    let second_err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "stderr:\n{second_err}");
    let waited = waiting.wait_with_output().unwrap();
    let first_err = String::from_utf8_lossy(&waited.stderr);
    assert_eq!(waited.status.code(), Some(0), "stderr:\n{first_err}");
    assert_eq!(receiver.finish(), ["done"], "neither frame got out");
    let a = packet_record(first.path(), &first_err);
    let b = packet_record(second.path(), &second_err);
    let cgroup = |r: &egressd_audit::Record| r.process.as_ref().and_then(|p| p.cgroup.clone());
    assert_ne!(
        cgroup(&a),
        cgroup(&b),
        "each journal holds its own cgroup's deny"
    );
    for (dir, other) in [(&first, &b), (&second, &a)] {
        let records = kit::records(&dir.path().join("audit"));
        assert!(
            records.iter().all(|r| cgroup(r) != cgroup(other)),
            "one instance recorded the other's process: {records:?}"
        );
    }
}

#[test]
fn interrupted_exec_still_cleans_up() {
    if !kit::privileged() {
        return;
    }
    let t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let mut child = exec_cmd(
        &t,
        dir.path(),
        "grep ^0:: /proc/self/cgroup > \"$T/cgroup\"; exec sleep 300",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let cg_file = dir.path().join("cgroup");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cg_file.exists() || std::fs::read_to_string(&cg_file).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cg = std::fs::read_to_string(&cg_file)
        .unwrap()
        .trim()
        .trim_start_matches("0::")
        .to_owned();
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap(), libc::SIGINT);
    }
    let status = kit::wait_bounded(&mut child, Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGINT),
        "the command's fate is the exit code"
    );
    assert!(!kit::cgroup_exists(&cg), "{cg} was removed after Ctrl-C");
    let name = cg.rsplit('/').next().unwrap();
    assert!(!kit::bpftool_cgroup_tree().contains(name));
}

#[test]
fn exec_refuses_no_ebpf_as_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let out = Command::new(crate::support::egressd_bin())
        .args(["exec", "--no-ebpf", "--policy"])
        .arg(&policy)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-ebpf"));
}

#[test]
fn exec_mounts_bpffs_for_its_pins_where_none_is_mounted() {
    if !kit::privileged() {
        return;
    }
    let t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    // A private mount namespace without bpffs at /sys/fs/bpf (as on hosts
    // that leave it an empty read-only directory); the bpffs egressd mounts
    // there lives and dies with that namespace.
    let inner = exec_cmd(
        &t,
        dir.path(),
        "grep ' /sys/fs/bpf ' /proc/self/mountinfo > \"$T/mounts\"; ls /sys/fs/bpf > \"$T/pins\"",
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "while grep -q ' /sys/fs/bpf ' /proc/self/mountinfo; do umount /sys/fs/bpf || exit 97; done; \
             exec \"$@\"",
        )
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    let mounts = std::fs::read_to_string(dir.path().join("mounts")).unwrap();
    assert!(mounts.contains(" - bpf "), "bpffs mounted: {mounts}");
    let pins = std::fs::read_to_string(dir.path().join("pins")).unwrap();
    assert!(
        pins.lines().any(|l| l.starts_with("egressd-exec-")),
        "the pins were there while the command ran: {pins}"
    );
    assert!(
        stderr.contains("mounted a bpf filesystem for the pins"),
        "{stderr}"
    );
}
