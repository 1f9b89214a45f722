//! An emulated container against the real kernel (root): a second network
//! namespace joined to the host by a veth pair whose host side is the
//! container's gateway (as docker0 is), with its default routes (IPv4 and
//! IPv6) through it. `egressd run --cgroup --container-gateway` (once per
//! family) filters a job started in that namespace inside the filtered
//! cgroup: the kernel redirects its connections and DNS to the proxy on the
//! gateway address of the family, and denies the rest in the kernel.
//! The "internet" is a third namespace with a TLS server and a TCP echo;
//! names resolve through a [`FakeDns`] given as the upstream, and the job sees
//! a private resolv.conf naming an address held by nobody.
//! The same set of cases runs once per family, each checking its audit
//! record; without an IPv6 gateway, IPv6 from the container is denied in the
//! kernel. Addresses stay in 198.51.100.192/29 (the rest of
//! 198.51.100.192/28 is the runner modules') and 2001:db8:6::/64.

#![expect(
    clippy::unwrap_used,
    reason = "a failed setup step or lookup is a failed test"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egressd_audit::{Kind, Record};
use egressd_policy::{Reason, Verdict};

use crate::fake_dns::{FakeDns, RecordSpec};
use crate::runner::kit::{self, sh};
use crate::support::{NsServers, TestPki};

/// One address family's half of the lab: the addresses and names its cases
/// use. Links are point to point or tiny subnets, as a bridge port would be
/// to the gateway.
struct Family {
    /// `IPv4` or `IPv6`, for messages.
    label: &'static str,
    /// Host side of the container link: the container's gateway.
    gateway: &'static str,
    /// The container's own address.
    container: &'static str,
    /// Host side of the link to the "internet" namespace.
    uplink: &'static str,
    /// The server, [`Family::allowed`]'s address.
    server: &'static str,
    /// An address of the internet no rule allows: [`Family::denied`]
    /// resolves to it upstream (but is refused before it is asked).
    denied_ip: &'static str,
    /// An address of the internet a CIDR rule allows.
    cidr: &'static str,
    /// The container's resolver: held by nobody, so only egressd can answer.
    resolver: &'static str,
    /// A name the policy allows.
    allowed: &'static str,
    /// A name no rule allows.
    denied: &'static str,
    /// The rule allowing [`Family::allowed`].
    allowed_rule: &'static str,
    /// The rule allowing [`Family::cidr`].
    cidr_rule: &'static str,
    /// curl's flag for the family.
    curl_flag: &'static str,
    /// The address record type.
    qtype: &'static str,
    /// The family whose addresses the job also reaches from a socket of
    /// this one, as IPv4-mapped IPv6 addresses (which are IPv4).
    mapped: Option<&'static Family>,
}

const V4: Family = Family {
    label: "IPv4",
    gateway: "198.51.100.193",
    container: "198.51.100.194",
    uplink: "198.51.100.197",
    server: "198.51.100.198",
    denied_ip: "198.51.100.195",
    cidr: "198.51.100.196",
    resolver: "198.51.100.192",
    allowed: "allowed.test",
    denied: "denied.test",
    allowed_rule: "allow[0]",
    cidr_rule: "allow[2]",
    curl_flag: "-4",
    qtype: "A",
    mapped: None,
};

/// The container link is 2001:db8:6::/126, the internet link
/// 2001:db8:6::10/124; the resolver lies outside both.
const V6: Family = Family {
    label: "IPv6",
    gateway: "2001:db8:6::1",
    container: "2001:db8:6::2",
    uplink: "2001:db8:6::11",
    server: "2001:db8:6::12",
    denied_ip: "2001:db8:6::13",
    cidr: "2001:db8:6::14",
    resolver: "2001:db8:6::53",
    allowed: "allowed6.test",
    denied: "denied6.test",
    allowed_rule: "allow[1]",
    cidr_rule: "allow[3]",
    curl_flag: "-6",
    qtype: "AAAA",
    mapped: Some(&V4),
};

/// This module's address blocks: nothing else uses them.
const BLOCK4: &str = "198.51.100.192/29";
const BLOCK6: &str = "2001:db8:6::/64";

const POLICY: &str = "version: 1\n\
allow:\n  \
  - allowed.test\n  \
  - allowed6.test\n  \
  - cidr: 198.51.100.196/32\n  \
  - cidr: 2001:db8:6::14/128\n";

/// The probes the job runs with python3: a TCP echo exchange, a UDP send, a
/// ping socket, a raw socket, in the family of the address given. Each
/// prints the outcome (one word) and its pid.
const PROBE_PY: &str = r#"import errno, os, socket, sys
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
mode, addr = sys.argv[1], sys.argv[2]
v6 = ":" in addr
fam = socket.AF_INET6 if v6 else socket.AF_INET
icmp = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
echo_request = b"\x80\x00\x00\x00\x00\x01\x00\x01" if v6 else b"\x08\x00\xf7\xfe\x00\x01\x00\x00"
def probe():
    try:
        if mode == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.settimeout(15)
            s.connect((addr, int(sys.argv[3])))
            s.sendall(b"ping\n")
            got = s.recv(100)
            return "echo" if got == b"ping\n" else ("eof" if not got else "other")
        s = socket.socket(fam, *{
            "udp": (socket.SOCK_DGRAM,),
            "ping": (socket.SOCK_DGRAM, icmp),
            "raw": (socket.SOCK_RAW, icmp),
        }[mode])
        if mode == "udp":
            s.sendto(b"x", (addr, int(sys.argv[3])))
        else:
            s.sendto(echo_request, (addr, 0))
        return "sent"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return name(e)
print(probe(), os.getpid())
"#;

/// One lab at a time: its names and addresses are fixed.
static LOCK: Mutex<()> = Mutex::new(());

pub(crate) fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip [-n ns] ARGS...`, which must succeed.
pub(crate) fn ip(ns: Option<&str>, args: &[&str]) {
    let mut all = vec!["ip"];
    if let Some(ns) = ns {
        all.extend(["-n", ns]);
    }
    all.extend(args);
    must(&all);
}

/// `ip [-n ns] addr add SPEC dev DEV`, SPEC an address with its prefix
/// length or `A peer B`; IPv6 without duplicate address detection, so that
/// it is usable at once.
pub(crate) fn addr_add(ns: Option<&str>, dev: &str, spec: &str) {
    let mut args: Vec<&str> = vec!["addr", "add"];
    args.extend(spec.split(' '));
    args.extend(["dev", dev]);
    if spec.contains(':') {
        args.push("nodad");
    }
    ip(ns, &args);
}

/// `sysctl -w key=value`, in `ns` when given (IPv6 and ping sysctls are per
/// namespace).
pub(crate) fn sysctl(ns: Option<&str>, key: &str, value: &str) {
    let kv = format!("{key}={value}");
    match ns {
        Some(ns) => must(&["ip", "netns", "exec", ns, "sysctl", "-qw", &kv]),
        None => must(&["sysctl", "-qw", &kv]),
    }
}

/// `ip:port`, bracketed for IPv6.
fn sock(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}

/// A URL host: an IPv6 literal is bracketed.
fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}

/// Remove the leftovers of killed runs (namespaces and links named with
/// `prefixes`, and with the links every address and route in `blocks`), then
/// check that no address or route of `blocks` remains: a live run elsewhere
/// would be a collision.
pub(crate) fn claim_blocks(prefixes: &[&str], blocks: &[&str]) {
    kit::sweep_leftovers(prefixes);
    for block in blocks {
        let held = ip_show(None, &["addr", "show", "to", block])
            + &ip_show(None, &["route", "show", "root", block]);
        assert!(
            held.is_empty(),
            "{block} is still in use on the host (another run?):\n{held}"
        );
    }
}

/// A network namespace, deleted on drop.
pub(crate) struct NetNs(pub(crate) String);

impl NetNs {
    pub(crate) fn add(name: String) -> NetNs {
        let _ = sh(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        let ns = NetNs(name);
        ip(Some(&ns.0), &["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A veth pair with its host end `name` and the peer moved into `ns`;
/// deleted (both ends) on drop. IPv6 duplicate address detection is off on
/// both ends, so every address is usable at once (and the proxy can bind its
/// gateway address as soon as it starts).
pub(crate) struct Veth(pub(crate) String);

impl Veth {
    pub(crate) fn add(name: String, peer: &str, ns: &NetNs) -> Veth {
        let _ = sh(&["ip", "link", "del", &name]);
        must(&[
            "ip", "link", "add", &name, "type", "veth", "peer", "name", peer,
        ]);
        let link = Veth(name);
        ip(None, &["link", "set", peer, "netns", &ns.0]);
        sysctl(None, &format!("net.ipv6.conf.{}.accept_dad", link.0), "0");
        sysctl(
            Some(&ns.0),
            &format!("net.ipv6.conf.{peer}.accept_dad"),
            "0",
        );
        ip(None, &["link", "set", &link.0, "up"]);
        ip(Some(&ns.0), &["link", "set", peer, "up"]);
        link
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.0]);
    }
}

/// Assert that `ip [-n ns] route get dst` names `want` (checked before
/// anything is sent, so no test packet can take another route).
pub(crate) fn assert_route(ns: Option<&str>, dst: &str, want: &str) {
    let mut args = vec!["ip"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["route", "get", dst]);
    let route = String::from_utf8_lossy(&sh(&args).stdout).into_owned();
    assert!(
        route.contains(want),
        "{dst} is not routed {want} (in {ns:?}): {route}"
    );
}

/// What `ip [-n ns] ARGS...` prints (the family taken from the addresses
/// in ARGS).
pub(crate) fn ip_show(ns: Option<&str>, args: &[&str]) -> String {
    let mut all = vec!["ip"];
    if let Some(ns) = ns {
        all.extend(["-n", ns]);
    }
    all.extend(args);
    String::from_utf8_lossy(&sh(&all).stdout).trim().to_owned()
}

/// The container, the internet namespace with its servers, and the fake
/// DNS; all torn down on drop (fields drop in order: servers first).
struct Lab {
    tls_port: u16,
    echo_port: u16,
    pki: TestPki,
    dns: FakeDns,
    _servers: NsServers,
    /// Runs the fake DNS.
    _host_rt: tokio::runtime::Runtime,
    container: NetNs,
    _container_link: Veth,
    _uplink: Veth,
    _internet: NetNs,
    _lock: MutexGuard<'static, ()>,
    _block: crate::support::BlockLock,
}

impl Lab {
    fn up() -> Lab {
        let lock = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let block = crate::support::lock_block("container-198.51.100.192");
        claim_blocks(&["egct", "egcn"], &[BLOCK4, BLOCK6]);
        let pid = std::process::id();
        let internet = NetNs::add(format!("egcn-{pid}"));
        let container = NetNs::add(format!("egct-{pid}"));
        let server_if = format!("egcq{pid}");
        let uplink = Veth::add(format!("egcn{pid}"), &server_if, &internet);
        let container_if = format!("egcp{pid}");
        let container_link = Veth::add(format!("egct{pid}"), &container_if, &container);
        let (c, i) = (Some(container.0.as_str()), Some(internet.0.as_str()));
        let (host_c, host_i) = (container_link.0.as_str(), uplink.0.as_str());

        // The container link: IPv4 point to point, IPv6 a /126; the
        // container's default routes go through the gateway.
        addr_add(
            None,
            host_c,
            &format!("{} peer {}", V4.gateway, V4.container),
        );
        addr_add(
            c,
            &container_if,
            &format!("{} peer {}", V4.container, V4.gateway),
        );
        addr_add(None, host_c, &format!("{}/126", V6.gateway));
        addr_add(c, &container_if, &format!("{}/126", V6.container));
        for gateway in [V4.gateway, V6.gateway] {
            ip(c, &["route", "add", "default", "via", gateway]);
        }

        // The internet holds the server, the denied and the CIDR-allowed
        // addresses; the resolver address is routed to it but held by nobody.
        addr_add(None, host_i, &format!("{} peer {}", V4.uplink, V4.server));
        addr_add(i, &server_if, &format!("{} peer {}", V4.server, V4.uplink));
        addr_add(None, host_i, &format!("{}/124", V6.uplink));
        for a in [V4.denied_ip, V4.cidr] {
            addr_add(i, &server_if, &format!("{a}/32"));
        }
        for a in [V6.server, V6.denied_ip, V6.cidr] {
            addr_add(i, &server_if, &format!("{a}/124"));
        }
        for a in [V4.denied_ip, V4.cidr, V4.resolver] {
            ip(None, &["route", "add", a, "via", V4.server, "dev", host_i]);
        }
        ip(
            None,
            &["route", "add", V6.resolver, "via", V6.server, "dev", host_i],
        );

        // Every test address is routed through these links, checked before
        // anything is sent; no IPv6 address waits for DAD.
        for f in [&V4, &V6] {
            for a in [f.server, f.denied_ip, f.cidr, f.resolver] {
                assert_route(None, a, &format!("dev {host_i}"));
                assert_route(c, a, &format!("via {} dev {container_if}", f.gateway));
            }
            assert_route(None, f.container, &format!("dev {host_c}"));
        }
        for (ns, dev) in [
            (None, host_c),
            (None, host_i),
            (c, container_if.as_str()),
            (i, server_if.as_str()),
        ] {
            let tentative = ip_show(ns, &["-6", "addr", "show", "dev", dev, "tentative"]);
            assert!(
                tentative.is_empty(),
                "addresses of {dev} wait for DAD: {tentative}"
            );
        }
        // With the default `ping_group_range` (`1 0`) the kernel refuses ping
        // sockets (EACCES) before any cgroup hook sees them, which would prove
        // nothing about egressd. The range is the namespace's own.
        sysctl(c, "net.ipv4.ping_group_range", "0 0");

        let pki = TestPki::new();
        let config = pki.server_config(&[V4.allowed, V4.denied, V6.allowed, V6.denied]);
        let servers = NsServers::start(&internet.0, config);
        let (tls_port, echo_port) = (servers.tls_port, servers.echo_port);

        let host_rt = crate::fake_dns::runtime();
        let a = |s: &str| RecordSpec::addr(s.parse::<IpAddr>().unwrap());
        let dns = host_rt.block_on(FakeDns::start(&[
            (V4.allowed, a(V4.server)),
            (V4.denied, a(V4.denied_ip)),
            (V6.allowed, a(V6.server)),
            (V6.denied, a(V6.denied_ip)),
        ]));
        Lab {
            tls_port,
            echo_port,
            pki,
            dns,
            _servers: servers,
            _host_rt: host_rt,
            container,
            _container_link: container_link,
            _uplink: uplink,
            _internet: internet,
            _lock: lock,
            _block: block,
        }
    }
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

/// Every record of one run, and how to find the one a case made.
pub(crate) struct Journal(pub(crate) Vec<Record>);

impl Journal {
    pub(crate) fn dump(&self) -> String {
        self.0
            .iter()
            .map(|r| serde_json::to_string(r).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The single decision record (not a closing one) of `kind` about `dst`
    /// naming `host`.
    pub(crate) fn decision(&self, kind: Kind, dst: &str, host: Option<&str>) -> &Record {
        let dst: SocketAddr = dst.parse().unwrap();
        let found: Vec<&Record> = self
            .0
            .iter()
            .filter(|r| {
                r.kind == kind && r.dst == Some(dst) && r.host.as_deref() == host && !r.is_closing()
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one {kind:?} decision for {dst} ({host:?}); all records:\n{}",
            self.dump()
        );
        found[0]
    }

    /// The records of `kind` made for `comm`, optionally naming `host`.
    fn by(&self, kind: Kind, comm: &str, host: Option<&str>) -> Vec<&Record> {
        self.0
            .iter()
            .filter(|r| {
                r.kind == kind
                    && self::comm(r) == Some(comm)
                    && (host.is_none() || r.host.as_deref() == host)
            })
            .collect()
    }
}

pub(crate) fn comm(r: &Record) -> Option<&str> {
    r.process.as_ref().and_then(|p| p.comm.as_deref())
}

/// Check a record's decision, reason, rule and process.
fn check(r: &Record, decision: Verdict, reason: Reason, rule: &str, comm: &str) {
    assert_eq!(r.decision, decision, "{r:?}");
    assert_eq!(r.reason, reason, "{r:?}");
    assert_eq!(r.rule, rule, "{r:?}");
    assert_eq!(self::comm(r), Some(comm), "{r:?}");
}

/// Check that a proxied record came from the container, in the family.
fn from_container(r: &Record, f: &Family) {
    let want: IpAddr = f.container.parse().unwrap();
    assert_eq!(r.src.map(|s| s.ip()), Some(want), "{r:?}");
}

/// One curl run of the job: exit code to `$T/<out>`, body and error beside.
fn curl(f: &Family, url_host: &str, out: &str, extra: &str) -> String {
    format!(
        "curl -sS --max-time 20 {} --cacert \"$CA\" {extra} https://{url_host}:$TLS/ \
           -o \"$T/{out}.body\" 2>\"$T/{out}.err\"; echo $? > \"$T/{out}\"\n",
        f.curl_flag
    )
}

/// The job: every case of the set, in the family `f`.
fn job_script(f: &Family) -> String {
    let denied = url_host(f.denied_ip);
    let py = "/usr/bin/python3 \"$T/probe.py\"";
    let mut s = curl(f, f.allowed, "allowed", "");
    s += &curl(f, f.denied, "denied", "");
    s += &curl(
        f,
        f.denied,
        "forced",
        &format!("--resolve {}:$TLS:{denied}", f.denied),
    );
    s += &curl(
        f,
        f.allowed,
        "mismatch",
        &format!("--resolve {}:$TLS:{denied}", f.allowed),
    );
    s += &curl(f, &denied, "literal", "-k");
    for (name, out) in [(f.denied, "dig.denied"), (f.allowed, "dig.allowed")] {
        s += &format!(
            "kdig +timeout=5 +retry=0 @{} {name} {} > \"$T/{out}\" 2>&1\n",
            f.resolver, f.qtype
        );
    }
    s += &format!(
        "{py} tcp {} $ECHO > \"$T/cidr\" 2>&1\n\
         {py} tcp {} $ECHO > \"$T/norule\" 2>&1\n\
         {py} udp {} 443 > \"$T/udp\" 2>&1\n\
         {py} ping {} > \"$T/ping\" 2>&1\n\
         {py} raw {} > \"$T/raw\" 2>&1\n",
        f.cidr, f.denied_ip, f.server, f.server, f.server
    );
    if let Some(m) = f.mapped {
        s += &format!(
            "{py} tcp ::ffff:{} $ECHO > \"$T/mapped.cidr\" 2>&1\n\
             {py} tcp ::ffff:{} $ECHO > \"$T/mapped.norule\" 2>&1\n",
            m.cidr, m.denied_ip
        );
    }
    s
}

/// A finished job: what it wrote to `$T` and the journal of its
/// `egressd run`.
struct Run {
    dir: tempfile::TempDir,
    journal: Journal,
    family: &'static str,
}

impl Run {
    /// What the job wrote to `$T/<name>`, trimmed.
    fn read(&self, name: &str) -> String {
        let path = |n: &str| self.dir.path().join(n);
        std::fs::read_to_string(path(name))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: $T/{name}: {e}; job stderr:\n{}\negressd:\n{}",
                    self.family,
                    std::fs::read_to_string(path("job.err")).unwrap_or_default(),
                    std::fs::read_to_string(path("egressd.log")).unwrap_or_default()
                )
            })
            .trim()
            .to_owned()
    }

    /// A curl exit code the job wrote.
    fn code(&self, name: &str) -> i32 {
        self.read(name).parse().unwrap()
    }

    /// A probe's outcome and pid.
    fn probe(&self, name: &str) -> (String, u32) {
        let text = self.read(name);
        let (outcome, pid) = text
            .split_once(' ')
            .unwrap_or_else(|| panic!("{}: probe {name} said {text:?}", self.family));
        (outcome.to_owned(), pid.parse().unwrap())
    }
}

/// Run `script` in the container, resolving through the resolver of `f`,
/// under `egressd run` with `gateways` until SIGTERM, and check that it
/// exits cleanly and leaves nothing attached.
fn run_in_container(lab: &Lab, f: &'static Family, gateways: &[&str], script: &str) -> Run {
    let jobs = kit::JobCgroup::create();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(
        d.join("resolv.conf"),
        format!("nameserver {}\n", f.resolver),
    )
    .unwrap();
    std::fs::write(d.join("probe.py"), PROBE_PY).unwrap();
    std::fs::write(
        d.join("job.sh"),
        // Each case writes its outcome to $T; the job's own status says only
        // whether it ran.
        format!("readlink /proc/self/ns/net > \"$T/netns\"\n{script}true\n"),
    )
    .unwrap();
    let log = std::fs::File::create(d.join("egressd.log")).unwrap();
    let mut cmd = Command::new(crate::support::egressd_bin());
    cmd.arg("run");
    for gateway in gateways {
        cmd.args(["--container-gateway", gateway]);
    }
    cmd.arg("--policy").arg(d.join("policy.yaml")).stderr(log);
    kit::enforcer(
        &mut cmd,
        jobs.path(),
        d,
        &lab.dns.addr().to_string(),
        "container-it",
    );
    let mut egressd = EgressdRun(cmd.spawn().unwrap());
    let egressd_log = || std::fs::read_to_string(d.join("egressd.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.join("ready.json").exists() {
        assert!(
            egressd.0.try_wait().unwrap().is_none(),
            "egressd exited:\n{}",
            egressd_log()
        );
        assert!(Instant::now() < deadline, "not ready:\n{}", egressd_log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // The job: in the container's namespace, inside the filtered cgroup,
    // with the private resolv.conf.
    let mut client = Command::new("ip");
    client
        .args(["netns", "exec", &lab.container.0])
        .args(["unshare", "--mount", "sh", "-c"])
        .arg("mount --bind \"$T/resolv.conf\" /etc/resolv.conf && exec sh \"$T/job.sh\"")
        .env("T", d)
        .env("CA", &lab.pki.ca_pem_path)
        .env("TLS", lab.tls_port.to_string())
        .env("ECHO", lab.echo_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("job.err")).unwrap());
    kit::clear_proxy_env(&mut client);
    jobs.spawn_inside(&mut client);
    let mut client = client.spawn().unwrap();
    let status = kit::wait_bounded(&mut client, Duration::from_secs(150));
    let job_err = std::fs::read_to_string(d.join("job.err")).unwrap_or_default();
    assert!(status.success(), "the job failed: {job_err}");

    // SIGTERM: a clean exit with every record on disk, nothing attached.
    let pid = libc::pid_t::try_from(egressd.0.id()).unwrap();
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = kit::wait_bounded(&mut egressd.0, Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", egressd_log());
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

    let run = Run {
        journal: Journal(kit::records(&d.join("audit"))),
        dir,
        family: f.label,
    };
    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        run.read("netns"),
        host_netns.to_string_lossy(),
        "the job ran in the container's namespace"
    );
    run
}

/// TLS by name: an allowed name works; a denied name is refused at lookup
/// and, with its address forced, reset at once; an allowed name sent to an
/// address it never resolved to, and an address literal without a name,
/// are denied.
fn tls_cases(run: &Run, f: &Family, tls: u16) {
    let (recs, fam) = (&run.journal, f.label);
    assert_eq!(run.code("allowed"), 0, "{fam}: {}", run.read("allowed.err"));
    assert_eq!(run.read("allowed.body"), "hello tls");
    let r = recs.decision(Kind::Tcp, &sock(f.server, tls), Some(f.allowed));
    check(r, Verdict::Allow, Reason::RuleAllow, f.allowed_rule, "curl");
    from_container(r, f);
    let lookups = recs.by(Kind::Dns, "curl", Some(f.allowed));
    assert!(!lookups.is_empty(), "{fam}:\n{}", recs.dump());
    for r in lookups {
        check(r, Verdict::Allow, Reason::RuleAllow, f.allowed_rule, "curl");
        from_container(r, f);
    }

    assert_eq!(
        run.code("denied"),
        6,
        "{fam}: curl cannot resolve a denied name: {}",
        run.read("denied.err")
    );
    let refused = recs.by(Kind::Dns, "curl", Some(f.denied));
    assert!(!refused.is_empty(), "{fam}:\n{}", recs.dump());
    for r in refused {
        check(r, Verdict::Deny, Reason::DnsRefused, "default", "curl");
        from_container(r, f);
    }
    let denied_tls = sock(f.denied_ip, tls);
    for (out, host, reason, rule) in [
        ("forced", Some(f.denied), Reason::NoRule, "default"),
        (
            "mismatch",
            Some(f.allowed),
            Reason::SniIpMismatch,
            f.allowed_rule,
        ),
        ("literal", None, Reason::NoSni, "default"),
    ] {
        let c = run.code(out);
        assert!(
            c != 0 && c != 28,
            "{fam} {out}: curl fails without hanging (exit {c}: {})",
            run.read(&format!("{out}.err"))
        );
        let r = recs.decision(Kind::Tcp, &denied_tls, host);
        check(r, Verdict::Deny, reason, rule, "curl");
        from_container(r, f);
    }
}

/// DNS to the resolver the job asked: refused or answered, the reply
/// appearing to come from that resolver; a refused name never goes
/// upstream.
fn dns_cases(run: &Run, f: &Family, upstream: &FakeDns) {
    let (recs, fam) = (&run.journal, f.label);
    let dig = run.read("dig.denied");
    assert!(dig.contains("status: REFUSED"), "{fam}: {dig}");
    let dig = run.read("dig.allowed");
    assert!(dig.contains("status: NOERROR"), "{fam}: {dig}");
    assert!(
        dig.contains(f.server),
        "{fam}: the answer holds the address: {dig}"
    );
    let from = format!("From {}@53(UDP)", f.resolver);
    assert!(
        dig.contains(&from),
        "{fam}: the reply comes from the resolver asked: {dig}"
    );
    for (name, verdict, reason, rule) in [
        (f.denied, Verdict::Deny, Reason::DnsRefused, "default"),
        (f.allowed, Verdict::Allow, Reason::RuleAllow, f.allowed_rule),
    ] {
        let found = recs.by(Kind::Dns, "kdig", Some(name));
        assert_eq!(
            found.len(),
            1,
            "{fam}: one kdig record for {name}:\n{}",
            recs.dump()
        );
        check(found[0], verdict, reason, rule, "kdig");
        from_container(found[0], f);
    }
    let asked = upstream.queries();
    assert!(
        !asked.iter().any(|q| q.name == f.denied),
        "{fam}: a refused name never reaches the upstream: {asked:?}"
    );
}

/// Sockets without a name: plain TCP passes by a CIDR rule and is refused
/// elsewhere (over IPv6 also to IPv4-mapped addresses); UDP other than DNS
/// (QUIC), ping and raw sockets get EPERM in the kernel. Each record names
/// the probe's own pid.
fn socket_cases(run: &Run, f: &Family, echo: u16) {
    tcp_by_address(run, f, f, "", echo);
    if let Some(m) = f.mapped {
        // From this family's socket, decided and recorded as the other's.
        tcp_by_address(run, f, m, "mapped.", echo);
    }
    let (recs, fam) = (&run.journal, f.label);
    let (outcome, pid) = run.probe("udp");
    assert_eq!(outcome, "EPERM", "{fam}");
    let r = recs.decision(Kind::Udp, &sock(f.server, 443), None);
    check(r, Verdict::Deny, Reason::UdpBlocked, "engine", "python3");
    assert_pid(r, pid);

    for (probe, kind, reason) in [
        ("ping", Kind::Icmp, Reason::IcmpBlocked),
        ("raw", Kind::Raw, Reason::RawBlocked),
    ] {
        let (outcome, pid) = run.probe(probe);
        assert_eq!(outcome, "EPERM", "{fam} {probe}");
        let found = recs.by(kind, "python3", None);
        assert_eq!(
            found.len(),
            1,
            "{fam}: one {kind:?} record:\n{}",
            recs.dump()
        );
        check(found[0], Verdict::Deny, reason, "engine", "python3");
        assert_pid(found[0], pid);
    }
}

/// Plain TCP from a socket of `f` to addresses of `to` (the same family, or
/// IPv4 reached through IPv4-mapped addresses): by a CIDR rule it works;
/// elsewhere no name, no way out. The probes' outputs are `$T/<prefix>cidr`
/// and `$T/<prefix>norule`.
fn tcp_by_address(run: &Run, f: &Family, to: &Family, prefix: &str, echo: u16) {
    let (recs, fam) = (&run.journal, f.label);
    let (outcome, pid) = run.probe(&format!("{prefix}cidr"));
    assert_eq!(outcome, "echo", "{fam} {prefix}cidr");
    let r = recs.decision(Kind::Tcp, &sock(to.cidr, echo), None);
    check(
        r,
        Verdict::Allow,
        Reason::RuleAllow,
        to.cidr_rule,
        "python3",
    );
    from_container(r, to);
    assert_pid(r, pid);
    let (outcome, pid) = run.probe(&format!("{prefix}norule"));
    assert!(
        ["eof", "ECONNRESET", "ECONNREFUSED"].contains(&outcome.as_str()),
        "{fam} {prefix}norule: refused, not answered nor hanging: {outcome}"
    );
    let r = recs.decision(Kind::Tcp, &sock(to.denied_ip, echo), None);
    check(r, Verdict::Deny, Reason::NoSni, "default", "python3");
    from_container(r, to);
    assert_pid(r, pid);
}

fn assert_pid(r: &Record, pid: u32) {
    assert_eq!(r.process.as_ref().and_then(|p| p.pid), Some(pid), "{r:?}");
}

/// Every case of the set, in the family `f`, from the container.
fn container_is_filtered(f: &'static Family) {
    let lab = Lab::up();
    // A gateway of both families, as on a dual-stack bridge.
    let run = run_in_container(&lab, f, &[V4.gateway, V6.gateway], &job_script(f));
    tls_cases(&run, f, lab.tls_port);
    dns_cases(&run, f, &lab.dns);
    socket_cases(&run, f, lab.echo_port);
}

#[test]
fn a_container_behind_its_gateway_is_filtered() {
    if !kit::privileged() {
        return;
    }
    container_is_filtered(&V4);
}

#[test]
fn a_container_behind_its_ipv6_gateway_is_filtered() {
    if !kit::privileged() {
        return;
    }
    container_is_filtered(&V6);
}

/// Fail closed: with no IPv6 gateway configured (an IPv4-only bridge),
/// IPv6 from the container is denied in the kernel and audited (TCP to a
/// CIDR-allowed address, DNS over UDP and TCP), never sent as is, while
/// IPv4 still goes through the IPv4 gateway.
#[test]
fn ipv6_from_a_container_without_an_ipv6_gateway_is_denied() {
    if !kit::privileged() {
        return;
    }
    let lab = Lab::up();
    let py = "/usr/bin/python3 \"$T/probe.py\"";
    let dig = |tcp: &str, out: &str| {
        format!(
            "kdig {tcp} +timeout=5 +retry=0 @{} {} AAAA > \"$T/{out}\" 2>&1\n",
            V6.resolver, V6.allowed
        )
    };
    let script = format!(
        "{py} tcp {} $ECHO > \"$T/v6\" 2>&1\n\
         {py} tcp {} $ECHO > \"$T/v4\" 2>&1\n{}{}",
        V6.cidr,
        V4.cidr,
        dig("+notcp", "dig.udp"),
        dig("+tcp", "dig.tcp"),
    );
    let run = run_in_container(&lab, &V6, &[V4.gateway], &script);
    let (recs, echo) = (&run.journal, lab.echo_port);

    let (outcome, pid) = run.probe("v6");
    assert_eq!(outcome, "EPERM", "refused at connect");
    let r = recs.decision(Kind::Tcp, &sock(V6.cidr, echo), None);
    check(r, Verdict::Deny, Reason::NoGateway, "engine", "python3");
    assert_pid(r, pid);
    let (outcome, pid) = run.probe("v4");
    assert_eq!(outcome, "echo", "IPv4 still goes through its gateway");
    let r = recs.decision(Kind::Tcp, &sock(V4.cidr, echo), None);
    check(
        r,
        Verdict::Allow,
        Reason::RuleAllow,
        V4.cidr_rule,
        "python3",
    );
    from_container(r, &V4);
    assert_pid(r, pid);

    let dns = sock(V6.resolver, 53);
    for (out, kind) in [("dig.udp", Kind::Udp), ("dig.tcp", Kind::Tcp)] {
        let text = run.read(out);
        assert!(
            text.contains("failed to query server") && !text.contains("status:"),
            "{out}: no answer at all: {text}"
        );
        let r = recs.decision(kind, &dns, None);
        check(r, Verdict::Deny, Reason::NoGateway, "engine", "kdig");
    }
    let asked = lab.dns.queries();
    assert!(
        !asked.iter().any(|q| q.name == V6.allowed),
        "nothing reached the upstream: {asked:?}"
    );
}

/// The lab stays inside this module's blocks, 198.51.100.192/29 and
/// 2001:db8:6::/64.
#[test]
fn the_lab_addresses_stay_in_this_module_s_blocks() {
    let all = |f: &Family| {
        [
            f.gateway,
            f.container,
            f.uplink,
            f.server,
            f.denied_ip,
            f.cidr,
            f.resolver,
        ]
    };
    for a in all(&V4) {
        let a: Ipv4Addr = a.parse().unwrap();
        assert_eq!(
            u32::from(a) & !7,
            0xc633_64c0,
            "{a} is outside 198.51.100.192/29"
        );
    }
    for a in all(&V6) {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(
            a.segments()[..4],
            [0x2001, 0xdb8, 6, 0],
            "{a} is outside {BLOCK6}"
        );
    }
    // The policy's CIDR rules name exactly the CIDR addresses.
    assert!(POLICY.contains(&format!("cidr: {}/32", V4.cidr)));
    assert!(POLICY.contains(&format!("cidr: {}/128", V6.cidr)));
}
