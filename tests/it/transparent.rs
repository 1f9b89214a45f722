//! Transparent mode against the real kernel (root): `egressd exec`, and
//! `egressd run --cgroup` until SIGTERM, filter real clients (curl, kdig,
//! python sockets) that know nothing of a proxy.
//! The servers live in a network namespace of this module (198.51.100.128/26,
//! 2001:db8:5::/64), names resolve through a [`FakeDns`] given as the
//! upstream, and the job sees a private resolv.conf naming an address in that
//! namespace, so no query can ever take the machine's own resolver. Every
//! case checks its audit record, and every run checks that nothing of
//! egressd stays attached.

#![expect(
    clippy::unwrap_used,
    reason = "a failed setup step or lookup is a failed test"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use egressd_audit::{Kind, Record};
use egressd_policy::{Reason, Verdict};

use crate::fake_dns::{FakeDns, RecordSpec};
use crate::runner::kit;
use crate::support::{NsServers, TestPki};

/// Host side of the link.
const HOST4: &str = "198.51.100.129";
/// `allowed.test`.
const ALLOWED4: &str = "198.51.100.130";
/// `denied.test`.
const DENIED4: &str = "198.51.100.131";
/// Allowed by a CIDR rule, serving the echo.
const CIDR4: &str = "198.51.100.132";
/// No rule names it; it serves the echo too.
const NO_RULE4: &str = "198.51.100.133";
/// The resolver of the job's resolv.conf: held by nobody, so only egressd can
/// answer queries sent there.
const RESOLVER4: &str = "198.51.100.134";
const HOST6: &str = "2001:db8:5::1";
/// `allowed6.test` (AAAA only).
const ALLOWED6: &str = "2001:db8:5::130";
/// No rule names it; it serves the echo.
const NO_RULE6: &str = "2001:db8:5::133";

const POLICY: &str = "version: 1\n\
allow:\n  \
  - allowed.test\n  \
  - allowed6.test\n  \
  - cidr: 198.51.100.132/32\n";

/// The probes the job runs with python3: a TCP echo exchange, a UDP send,
/// a ping socket, a raw socket. Each prints one word: the outcome.
const PROBE_PY: &str = r#"import errno, socket, sys
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
mode = sys.argv[1]
try:
    if mode == "tcp":
        fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(15)
        s.connect((sys.argv[2], int(sys.argv[3])))
        s.sendall(b"ping\n")
        got = s.recv(100)
        print("echo" if got == b"ping\n" else ("eof" if not got else "other"))
    elif mode == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", (sys.argv[2], int(sys.argv[3])))
        print("sent")
    elif mode == "ping":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        s.sendto(b"\x08\x00\x00\x00\x00\x01\x00\x01", (sys.argv[2], 0))
        print("sent")
    elif mode == "raw":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.sendto(b"\x08\x00\xf7\xfe\x00\x01\x00\x00", (sys.argv[2], 0))
        print("sent")
except socket.timeout:
    print("timeout")
except OSError as e:
    print(name(e))
"#;

static LOCK: Mutex<()> = Mutex::new(());

/// The namespace with the servers (a TLS server for every test name and a
/// TCP echo, both on every address), plus the fake DNS on the host's
/// loopback; all torn down on drop.
struct Lab {
    tls_port: u16,
    echo_port: u16,
    pki: TestPki,
    dns: FakeDns,
    servers: Option<NsServers>,
    /// Runs the fake DNS; dropped after it.
    _host_rt: tokio::runtime::Runtime,
    ping: Option<PingRange>,
    /// The namespace; dropped after the servers in it.
    _net: kit::Veth,
    _lock: MutexGuard<'static, ()>,
    _block: crate::support::BlockLock,
}

impl Lab {
    fn up() -> Lab {
        let lock = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let block = crate::support::lock_block("transparent-198.51.100.128");
        let net = kit::Veth::up(
            "egtr",
            "egtp",
            &[&format!("{HOST4}/26"), &format!("{HOST6}/64")],
            &[
                &format!("{ALLOWED4}/26"),
                &format!("{DENIED4}/26"),
                &format!("{CIDR4}/26"),
                &format!("{NO_RULE4}/26"),
                &format!("{ALLOWED6}/64"),
                &format!("{NO_RULE6}/64"),
            ],
            // Every test address, the resolver's too.
            &[
                ALLOWED4, DENIED4, CIDR4, NO_RULE4, RESOLVER4, ALLOWED6, NO_RULE6,
            ],
        );

        let pki = TestPki::new();
        let config = pki.server_config(&["allowed.test", "allowed6.test", "denied.test"]);
        let servers = NsServers::start(net.netns(), config);
        let (tls_port, echo_port) = (servers.tls_port, servers.echo_port);

        let host_rt = crate::fake_dns::runtime();
        let a = |s: &str| RecordSpec::addr(s.parse::<IpAddr>().unwrap());
        let dns = host_rt.block_on(FakeDns::start(&[
            ("allowed.test", a(ALLOWED4)),
            ("allowed6.test", a(ALLOWED6)),
            ("denied.test", a(DENIED4)),
        ]));
        Lab {
            tls_port,
            echo_port,
            pki,
            dns,
            servers: Some(servers),
            _host_rt: host_rt,
            ping: None,
            _net: net,
            _lock: lock,
            _block: block,
        }
    }

    /// Let root open ping sockets for the lab's lifetime: with the default
    /// `ping_group_range` (`1 0`) the kernel refuses them (EACCES) before any
    /// cgroup hook sees them, which would prove nothing about egressd.
    fn allow_ping_sockets(&mut self) {
        self.ping = Some(PingRange::allow_root());
    }

    /// Run `script` (sh) through `egressd exec` with the job's private
    /// resolv.conf, and check that nothing of egressd stays attached.
    fn job(&self, script: &str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
        std::fs::write(d.join("resolv.conf"), format!("nameserver {RESOLVER4}\n")).unwrap();
        std::fs::write(d.join("probe.py"), PROBE_PY).unwrap();
        std::fs::write(
            d.join("job.sh"),
            format!("grep ^0:: /proc/self/cgroup > \"$T/cgroup\"\n{script}\n"),
        )
        .unwrap();
        let mut cmd = Command::new(crate::support::egressd_bin());
        cmd.arg("exec")
            .arg("--policy")
            .arg(d.join("policy.yaml"))
            .arg("--audit-dir")
            .arg(d.join("audit"))
            .arg("--dns-upstream")
            .arg(self.dns.addr().to_string())
            .args(["--runner", "transparent-it", "--"])
            .args(["unshare", "--mount", "sh", "-c"])
            .arg("mount --bind \"$T/resolv.conf\" /etc/resolv.conf && exec sh \"$T/job.sh\"")
            .env("T", d)
            .env("CA", &self.pki.ca_pem_path)
            .env("TLS", self.tls_port.to_string())
            .env("ECHO", self.echo_port.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        kit::clear_proxy_env(&mut cmd);
        let out = cmd.output().unwrap();
        let job = Job { dir, out };
        job.assert_nothing_left();
        job
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers = None; // before their namespace goes
        self.ping = None;
    }
}

/// `net.ipv4.ping_group_range` widened to include gid 0, restored on drop.
struct PingRange {
    old: String,
}

const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

impl PingRange {
    fn allow_root() -> PingRange {
        let old = std::fs::read_to_string(PING_RANGE).unwrap();
        let mut it = old.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        let (lo, hi) = (it.next().unwrap(), it.next().unwrap());
        if lo > 0 || hi < lo {
            std::fs::write(PING_RANGE, "0 0").unwrap();
        }
        PingRange { old }
    }
}

impl Drop for PingRange {
    fn drop(&mut self) {
        let _ = std::fs::write(
            PING_RANGE,
            self.old.trim().replace(char::is_whitespace, " "),
        );
    }
}

/// One finished `egressd exec` run.
struct Job {
    dir: tempfile::TempDir,
    out: Output,
}

impl Job {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// What the job wrote to `$T/<name>`, trimmed.
    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_else(|e| panic!("$T/{name}: {e}; egressd stderr:\n{}", self.stderr()))
            .trim()
            .to_owned()
    }

    fn records(&self) -> Vec<Record> {
        kit::records(&self.dir.path().join("audit"))
    }

    /// The decision records (not closing ones) about `dst` of `kind`.
    fn decisions(&self, kind: Kind, dst: &str) -> Vec<Record> {
        let dst: SocketAddr = dst.parse().unwrap();
        self.records()
            .into_iter()
            .filter(|r| r.kind == kind && r.dst == Some(dst) && !r.is_closing())
            .collect()
    }

    /// The single decision record about `dst`.
    fn decision(&self, kind: Kind, dst: &str) -> Record {
        let found = self.decisions(kind, dst);
        assert_eq!(
            found.len(),
            1,
            "exactly one {kind:?} decision for {dst}; all records:\n{}",
            self.dump()
        );
        found.into_iter().next().unwrap()
    }

    /// The single decision record about `dst` naming `host`.
    fn decision_for(&self, kind: Kind, dst: &str, host: &str) -> Record {
        let found: Vec<Record> = self
            .decisions(kind, dst)
            .into_iter()
            .filter(|r| r.host.as_deref() == Some(host))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {kind:?} decision for {dst} ({host}); all records:\n{}",
            self.dump()
        );
        found.into_iter().next().unwrap()
    }

    fn dump(&self) -> String {
        self.records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// No cgroup, no attached program left by the run.
    fn assert_nothing_left(&self) {
        let cg = self.read("cgroup");
        let cg = cg.strip_prefix("0::").unwrap_or(&cg).to_owned();
        let name = cg.rsplit('/').next().unwrap().to_owned();
        assert!(name.starts_with("egressd-exec-"), "the job ran in {cg}");
        assert!(!kit::cgroup_exists(&cg), "{cg} was removed");
        let tree = kit::bpftool_cgroup_tree();
        assert!(
            !tree.contains(&name),
            "bpftool cgroup tree still shows {name}:\n{tree}"
        );
    }
}

/// Check a record's decision, reason, rule, host and process.
fn check(
    r: &Record,
    decision: Verdict,
    reason: Reason,
    rule: &str,
    host: Option<&str>,
    comm: &str,
) {
    assert_eq!(r.decision, decision, "{r:?}");
    assert_eq!(r.reason, reason, "{r:?}");
    assert_eq!(r.rule, rule, "{r:?}");
    assert_eq!(r.host.as_deref(), host, "{r:?}");
    assert_eq!(
        r.process.as_ref().and_then(|p| p.comm.as_deref()),
        Some(comm),
        "{r:?}"
    );
}

fn curl(url: &str, out: &str, extra: &str) -> String {
    format!(
        "curl -sS --max-time 20 --cacert \"$CA\" {extra} {url} -o \"$T/{out}.body\" 2>\"$T/{out}.err\"; echo $? > \"$T/{out}\"\n"
    )
}

fn exit_code(job: &Job, name: &str) -> i32 {
    job.read(name).parse().unwrap()
}

#[test]
fn tls_by_name_is_allowed_denied_and_checked_against_dns() {
    if !kit::privileged() {
        return;
    }
    let lab = Lab::up();
    let mut script = curl("https://allowed.test:$TLS/", "allowed", "");
    script += &curl("https://denied.test:$TLS/", "denied", "");
    script += &curl(
        "https://denied.test:$TLS/",
        "forced",
        &format!("--resolve denied.test:$TLS:{DENIED4}"),
    );
    script += &curl(
        "https://allowed.test:$TLS/",
        "mismatch",
        &format!("--resolve allowed.test:$TLS:{DENIED4}"),
    );
    let job = lab.job(&script);
    assert!(job.out.status.success(), "{}", job.stderr());
    let port = lab.tls_port;

    // (1) and (9): allowed, and the proxy's own upstream connection is not
    // looped back into it (that would be a second decision record).
    assert_eq!(
        exit_code(&job, "allowed"),
        0,
        "{}\n{}",
        job.read("allowed.err"),
        job.stderr()
    );
    assert_eq!(job.read("allowed.body"), "hello tls");
    let r = job.decision(Kind::Tcp, &format!("{ALLOWED4}:{port}"));
    check(
        &r,
        Verdict::Allow,
        Reason::RuleAllow,
        "allow[0]",
        Some("allowed.test"),
        "curl",
    );
    assert_eq!(
        job.records()
            .iter()
            .filter(|r| r.kind == Kind::Tcp && !r.is_closing() && r.decision == Verdict::Allow)
            .count(),
        1,
        "one allowed connection, one decision:\n{}",
        job.dump()
    );

    // (2): a denied name: its lookup is refused, and with the address forced
    // the connection is reset at once, not ended by curl's own time limit.
    assert_eq!(
        exit_code(&job, "denied"),
        6,
        "curl cannot resolve a denied name: {}",
        job.read("denied.err")
    );
    let dns: Vec<Record> = job
        .records()
        .into_iter()
        .filter(|r| r.kind == Kind::Dns && r.host.as_deref() == Some("denied.test"))
        .collect();
    assert!(!dns.is_empty(), "{}", job.dump());
    for r in &dns {
        check(
            r,
            Verdict::Deny,
            Reason::DnsRefused,
            "default",
            Some("denied.test"),
            "curl",
        );
    }
    let code = exit_code(&job, "forced");
    assert!(
        code != 0 && code != 28,
        "curl to a denied name fails without hanging (exit {code}: {})",
        job.read("forced.err")
    );
    let denied = format!("{DENIED4}:{port}");
    let r = job.decision_for(Kind::Tcp, &denied, "denied.test");
    check(
        &r,
        Verdict::Deny,
        Reason::NoRule,
        "default",
        Some("denied.test"),
        "curl",
    );

    // (3): an allowed SNI sent to an address the name never resolved to.
    let code = exit_code(&job, "mismatch");
    assert!(
        code != 0 && code != 28,
        "exit {code}: {}",
        job.read("mismatch.err")
    );
    let r = job.decision_for(Kind::Tcp, &denied, "allowed.test");
    check(
        &r,
        Verdict::Deny,
        Reason::SniIpMismatch,
        "allow[0]",
        Some("allowed.test"),
        "curl",
    );
}

#[test]
fn dns_is_refused_or_answered_as_the_resolver_asked() {
    if !kit::privileged() {
        return;
    }
    let lab = Lab::up();
    let script = format!(
        "kdig +timeout=5 +retry=0 @{RESOLVER4} denied.test A > \"$T/denied\" 2>&1\n\
         kdig +timeout=5 +retry=0 @{RESOLVER4} allowed.test A > \"$T/allowed\" 2>&1\n"
    );
    let job = lab.job(&script);
    assert!(job.out.status.success(), "{}", job.stderr());
    let denied = job.read("denied");
    assert!(denied.contains("status: REFUSED"), "{denied}");
    let allowed = job.read("allowed");
    assert!(allowed.contains("status: NOERROR"), "{allowed}");
    assert!(
        allowed.contains(ALLOWED4),
        "the answer holds the address: {allowed}"
    );
    assert!(
        allowed.contains(&format!("From {RESOLVER4}@53(UDP)")),
        "the reply comes from the resolver asked: {allowed}"
    );
    let recs = job.records();
    let dns = |host: &str| {
        let found: Vec<&Record> = recs
            .iter()
            .filter(|r| r.kind == Kind::Dns && r.host.as_deref() == Some(host))
            .collect();
        assert_eq!(found.len(), 1, "one DNS record for {host}:\n{}", job.dump());
        found[0].clone()
    };
    let r = dns("denied.test");
    check(
        &r,
        Verdict::Deny,
        Reason::DnsRefused,
        "default",
        Some("denied.test"),
        "kdig",
    );
    let r = dns("allowed.test");
    check(
        &r,
        Verdict::Allow,
        Reason::RuleAllow,
        "allow[0]",
        Some("allowed.test"),
        "kdig",
    );
    let asked: Vec<_> = lab.dns.queries();
    assert!(
        !asked
            .iter()
            .any(|q| format!("{q:?}").contains("denied.test")),
        "a refused name never reaches the upstream: {asked:?}"
    );
}

#[test]
fn sockets_without_a_name_are_filtered_in_the_kernel_or_by_address() {
    if !kit::privileged() {
        return;
    }
    let mut lab = Lab::up();
    lab.allow_ping_sockets();
    let py = "/usr/bin/python3 \"$T/probe.py\"";
    let script = format!(
        "{py} tcp {CIDR4} $ECHO > \"$T/cidr\" 2>&1\n\
         {py} tcp {NO_RULE4} $ECHO > \"$T/norule\" 2>&1\n\
         {py} udp {ALLOWED4} 443 > \"$T/udp\" 2>&1\n\
         {py} ping {ALLOWED4} > \"$T/ping\" 2>&1\n\
         {py} raw {ALLOWED4} > \"$T/raw\" 2>&1\n"
    );
    let job = lab.job(&script);
    assert!(job.out.status.success(), "{}", job.stderr());
    let echo = lab.echo_port;

    // (5) raw TCP: by CIDR rule it works; elsewhere no name, no way out.
    assert_eq!(job.read("cidr"), "echo", "{}", job.stderr());
    let r = job.decision(Kind::Tcp, &format!("{CIDR4}:{echo}"));
    check(
        &r,
        Verdict::Allow,
        Reason::RuleAllow,
        "allow[2]",
        None,
        "python3",
    );
    let norule = job.read("norule");
    assert!(
        ["eof", "ECONNRESET", "ECONNREFUSED"].contains(&norule.as_str()),
        "refused, not answered nor hanging: {norule}"
    );
    let r = job.decision(Kind::Tcp, &format!("{NO_RULE4}:{echo}"));
    check(&r, Verdict::Deny, Reason::NoSni, "default", None, "python3");

    // (6) UDP other than DNS.
    assert_eq!(job.read("udp"), "EPERM");
    let r = job.decision(Kind::Udp, &format!("{ALLOWED4}:443"));
    check(
        &r,
        Verdict::Deny,
        Reason::UdpBlocked,
        "engine",
        None,
        "python3",
    );

    // (7) ping and raw sockets.
    assert_eq!(job.read("ping"), "EPERM");
    assert_eq!(job.read("raw"), "EPERM");
    let recs = job.records();
    for (kind, reason) in [
        (Kind::Icmp, Reason::IcmpBlocked),
        (Kind::Raw, Reason::RawBlocked),
    ] {
        let r = recs
            .iter()
            .find(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} record:\n{}", job.dump()));
        check(r, Verdict::Deny, reason, "engine", None, "python3");
    }
}

#[test]
fn ipv6_is_filtered_like_ipv4() {
    if !kit::privileged() {
        return;
    }
    let lab = Lab::up();
    let mut script = curl("https://allowed6.test:$TLS/", "allowed", "-6");
    script +=
        &format!("/usr/bin/python3 \"$T/probe.py\" tcp {NO_RULE6} $ECHO > \"$T/norule\" 2>&1\n");
    let job = lab.job(&script);
    assert!(job.out.status.success(), "{}", job.stderr());
    assert_eq!(
        exit_code(&job, "allowed"),
        0,
        "{}\n{}",
        job.read("allowed.err"),
        job.stderr()
    );
    assert_eq!(job.read("allowed.body"), "hello tls");
    let r = job.decision(Kind::Tcp, &format!("[{ALLOWED6}]:{}", lab.tls_port));
    check(
        &r,
        Verdict::Allow,
        Reason::RuleAllow,
        "allow[1]",
        Some("allowed6.test"),
        "curl",
    );
    let norule = job.read("norule");
    assert!(
        ["eof", "ECONNRESET", "ECONNREFUSED"].contains(&norule.as_str()),
        "refused, not answered nor hanging: {norule}"
    );
    let r = job.decision(Kind::Tcp, &format!("[{NO_RULE6}]:{}", lab.echo_port));
    check(&r, Verdict::Deny, Reason::NoSni, "default", None, "python3");
}

/// The lab stays inside this module's address block (others use the rest).
#[test]
fn the_lab_addresses_stay_in_this_module_s_block() {
    let block: Ipv4Addr = "198.51.100.128".parse().unwrap();
    for a in [HOST4, ALLOWED4, DENIED4, CIDR4, NO_RULE4, RESOLVER4] {
        let a: Ipv4Addr = a.parse().unwrap();
        assert_eq!(
            u32::from(a) & !63,
            u32::from(block),
            "{a} is outside 198.51.100.128/26"
        );
    }
    for a in [HOST6, ALLOWED6, NO_RULE6] {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(a.segments()[..4], [0x2001, 0xdb8, 5, 0], "{a}");
    }
}

#[test]
fn run_filters_a_cgroup_until_sigterm_and_leaves_nothing() {
    if !kit::privileged() {
        return;
    }
    let lab = Lab::up();
    let jobs = kit::JobCgroup::create();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(d.join("resolv.conf"), format!("nameserver {RESOLVER4}\n")).unwrap();
    let log = std::fs::File::create(d.join("egressd.log")).unwrap();
    let mut cmd = Command::new(crate::support::egressd_bin());
    cmd.arg("run")
        .arg("--policy")
        .arg(d.join("policy.yaml"))
        .arg("--cgroup")
        .arg(jobs.path())
        .arg("--audit-dir")
        .arg(d.join("audit"))
        .arg("--ready-file")
        .arg(d.join("ready.json"))
        .args(["--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .arg("--dns-upstream")
        .arg(lab.dns.addr().to_string())
        .args(["--runner", "transparent-it"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    kit::clear_proxy_env(&mut cmd);
    let mut egressd = EgressdRun(cmd.spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !d.join("ready.json").exists() {
        let log = std::fs::read_to_string(d.join("egressd.log")).unwrap_or_default();
        assert!(
            egressd.0.try_wait().unwrap().is_none(),
            "egressd exited:\n{log}"
        );
        assert!(std::time::Instant::now() < deadline, "not ready:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A client started inside the filtered cgroup, with the private
    // resolv.conf.
    let mut curl = Command::new("unshare");
    curl.args(["--mount", "sh", "-c"])
        .arg(
            "mount --bind \"$T/resolv.conf\" /etc/resolv.conf && \
             exec curl -sS --max-time 20 --cacert \"$CA\" https://allowed.test:$TLS/",
        )
        .env("T", d)
        .env("CA", &lab.pki.ca_pem_path)
        .env("TLS", lab.tls_port.to_string())
        .stdin(Stdio::null());
    kit::clear_proxy_env(&mut curl);
    jobs.spawn_inside(&mut curl);
    let out = curl.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello tls");

    // SIGTERM: a clean exit, the record on disk, nothing attached.
    let pid = libc::pid_t::try_from(egressd.0.id()).unwrap();
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = kit::wait_bounded(&mut egressd.0, std::time::Duration::from_secs(30));
    let log = std::fs::read_to_string(d.join("egressd.log")).unwrap_or_default();
    assert!(status.success(), "{status}:\n{log}");
    let dst: SocketAddr = format!("{ALLOWED4}:{}", lab.tls_port).parse().unwrap();
    let recs = kit::records(&d.join("audit"));
    let found: Vec<&Record> = recs
        .iter()
        .filter(|r| r.kind == Kind::Tcp && r.dst == Some(dst) && !r.is_closing())
        .collect();
    assert_eq!(found.len(), 1, "{recs:?}");
    check(
        found[0],
        Verdict::Allow,
        Reason::RuleAllow,
        "allow[0]",
        Some("allowed.test"),
        "curl",
    );
    let name = jobs
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let tree = kit::bpftool_cgroup_tree();
    assert!(
        !tree.contains(&name),
        "programs still attached to {name} after SIGTERM:\n{tree}"
    );
    assert!(!d.join("ready.json").exists(), "the ready file is removed");
}

/// A running `egressd run`, killed if the test fails before its SIGTERM.
struct EgressdRun(std::process::Child);

impl Drop for EgressdRun {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
