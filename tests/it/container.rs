//! An emulated container against the real kernel (root): a second network
//! namespace joined to the host by a veth pair whose host side is the
//! container's gateway (as docker0 is), with its default route through it.
//! `egressd run --cgroup --container-gateway` filters a client started in
//! that namespace inside the filtered cgroup: the kernel redirects its
//! connections and DNS to the proxy on the gateway address.
//! The "internet" is a third namespace with a TLS server; names resolve
//! through a [`FakeDns`] given as the upstream, and the client sees a private
//! resolv.conf naming an address held by nobody. Addresses stay in
//! 198.51.100.192/29 (the rest of 198.51.100.192/28 is the runner modules').

#![expect(
    clippy::unwrap_used,
    reason = "a failed setup step or lookup is a failed test"
)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use egressd_audit::{Kind, Record};
use egressd_policy::{Reason, Verdict};

use crate::fake_dns::{FakeDns, RecordSpec};
use crate::runner::kit::{self, sh};
use crate::support::{TestPki, TlsServer};

/// Host side of the container link: the container's gateway.
const GATEWAY4: &str = "198.51.100.193";
/// The container's own address.
const CONTAINER4: &str = "198.51.100.194";
/// Host side of the link to the "internet" namespace.
const UPLINK4: &str = "198.51.100.197";
/// The server, `allowed.test`.
const SERVER4: &str = "198.51.100.198";
/// An address of the internet no rule allows and no name resolves to.
const DENIED4: &str = "198.51.100.195";
/// The container's resolver: held by nobody, so only egressd can answer.
const RESOLVER4: &str = "198.51.100.192";

const POLICY: &str = "version: 1\nallow:\n  - allowed.test\n";

/// A UDP send; prints the outcome (`sent` or the errno name).
const UDP_PY: &str = r#"import errno, socket, sys
try:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

fn must(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn add(name: String) -> NetNs {
        let _ = sh(&["ip", "netns", "del", &name]);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        NetNs(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A veth pair with its host end `name` and the peer moved into `ns`;
/// deleted (both ends) on drop.
struct Veth(String);

impl Veth {
    fn add(name: String, peer: &str, ns: &NetNs) -> Veth {
        let _ = sh(&["ip", "link", "del", &name]);
        must(&[
            "ip", "link", "add", &name, "type", "veth", "peer", "name", peer,
        ]);
        let link = Veth(name);
        must(&["ip", "link", "set", peer, "netns", &ns.0]);
        must(&["ip", "link", "set", &link.0, "up"]);
        must(&["ip", "-n", &ns.0, "link", "set", peer, "up"]);
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
fn assert_route(ns: Option<&str>, dst: &str, want: &str) {
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

/// The container, the internet namespace with its TLS server, and the fake
/// DNS; all torn down on drop (fields drop in order: servers first).
struct Lab {
    tls_port: u16,
    pki: TestPki,
    dns: FakeDns,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    servers: Option<std::thread::JoinHandle<()>>,
    /// Runs the fake DNS.
    _host_rt: tokio::runtime::Runtime,
    container: NetNs,
    _container_link: Veth,
    _uplink: Veth,
    _internet: NetNs,
}

impl Lab {
    fn up() -> Lab {
        kit::sweep_leftovers(&["egct", "egcn"]);
        let pid = std::process::id();
        let internet = NetNs::add(format!("egcn-{pid}"));
        let container = NetNs::add(format!("egct-{pid}"));
        let server_if = format!("egcq{pid}");
        let uplink = Veth::add(format!("egcn{pid}"), &server_if, &internet);
        let container_if = format!("egcp{pid}");
        let container_link = Veth::add(format!("egct{pid}"), &container_if, &container);
        let (c, i) = (container.0.as_str(), internet.0.as_str());
        // The container link is point to point, as a bridge port would be
        // to the gateway.
        must(&[
            "ip",
            "addr",
            "add",
            GATEWAY4,
            "peer",
            CONTAINER4,
            "dev",
            &container_link.0,
        ]);
        must(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            CONTAINER4,
            "peer",
            GATEWAY4,
            "dev",
            &container_if,
        ]);
        must(&["ip", "-n", c, "route", "add", "default", "via", GATEWAY4]);
        // The internet holds the server and the denied address; the
        // resolver address is routed to it but held by nobody.
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{UPLINK4}/30"),
            "dev",
            &uplink.0,
        ]);
        must(&[
            "ip",
            "-n",
            i,
            "addr",
            "add",
            &format!("{SERVER4}/30"),
            "dev",
            &server_if,
        ]);
        must(&[
            "ip",
            "-n",
            i,
            "addr",
            "add",
            &format!("{DENIED4}/32"),
            "dev",
            &server_if,
        ]);
        for a in [DENIED4, RESOLVER4] {
            must(&[
                "ip",
                "route",
                "add",
                &format!("{a}/32"),
                "via",
                SERVER4,
                "dev",
                &uplink.0,
            ]);
        }
        // Every test address is routed through these links, checked before
        // anything is sent.
        for a in [SERVER4, DENIED4, RESOLVER4] {
            assert_route(None, a, &format!("dev {}", uplink.0));
            assert_route(Some(c), a, &format!("via {GATEWAY4} dev {container_if}"));
        }
        assert_route(None, CONTAINER4, &format!("dev {}", container_link.0));

        let pki = TestPki::new();
        let config = pki.server_config(&["allowed.test"]);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns_file = std::fs::File::open(format!("/run/netns/{}", internet.0)).unwrap();
        // Sockets belong to the namespace of the thread that creates them.
        let servers = std::thread::spawn(move || {
            // SAFETY: setns(2) on an open namespace file; it affects this
            // thread only.
            let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let tls =
                    TlsServer::start(IpAddr::V6(Ipv6Addr::UNSPECIFIED), config, "hello tls").await;
                port_tx.send(tls.port()).unwrap();
                let _ = stop_rx.await;
                drop(tls);
            });
        });
        let tls_port = port_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the internet server started");

        let host_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dns = host_rt.block_on(FakeDns::start(&[(
            "allowed.test",
            RecordSpec::addr(SERVER4.parse().unwrap()),
        )]));
        Lab {
            tls_port,
            pki,
            dns,
            stop: Some(stop_tx),
            servers: Some(servers),
            _host_rt: host_rt,
            container,
            _container_link: container_link,
            _uplink: uplink,
            _internet: internet,
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.servers.take() {
            let _ = t.join();
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

/// The single decision record (not a closing one) of `kind` about `dst`
/// naming `host`.
fn decision(recs: &[Record], kind: Kind, dst: &str, host: Option<&str>) -> Record {
    let dst: SocketAddr = dst.parse().unwrap();
    let found: Vec<&Record> = recs
        .iter()
        .filter(|r| {
            r.kind == kind && r.dst == Some(dst) && r.host.as_deref() == host && !r.is_closing()
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {kind:?} decision for {dst} ({host:?}); all records:\n{recs:#?}"
    );
    found[0].clone()
}

fn comm(r: &Record) -> Option<&str> {
    r.process.as_ref().and_then(|p| p.comm.as_deref())
}

#[test]
fn a_container_behind_its_gateway_is_filtered() {
    if !kit::privileged() {
        return;
    }
    let lab = Lab::up();
    let jobs = kit::JobCgroup::create();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("policy.yaml"), POLICY).unwrap();
    std::fs::write(d.join("resolv.conf"), format!("nameserver {RESOLVER4}\n")).unwrap();
    std::fs::write(d.join("udp.py"), UDP_PY).unwrap();
    let log = std::fs::File::create(d.join("egressd.log")).unwrap();
    let mut cmd = Command::new(crate::support::egressd_bin());
    cmd.arg("run")
        .arg("--policy")
        .arg(d.join("policy.yaml"))
        .arg("--cgroup")
        .arg(jobs.path())
        .args(["--container-gateway", GATEWAY4])
        .arg("--audit-dir")
        .arg(d.join("audit"))
        .arg("--ready-file")
        .arg(d.join("ready.json"))
        .args(["--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
        .arg("--dns-upstream")
        .arg(lab.dns.addr().to_string())
        .args(["--runner", "container-it"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    kit::clear_proxy_env(&mut cmd);
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
    let port = lab.tls_port;
    let job = format!(
        "readlink /proc/self/ns/net > \"$T/netns\"\n\
         curl -sS --max-time 20 --cacert \"$CA\" -w '%{{http_code}}' -o \"$T/allowed.body\" \
           https://allowed.test:{port}/ > \"$T/allowed\" 2> \"$T/allowed.err\"\n\
         curl -sS --max-time 20 -k https://{DENIED4}:{port}/ > /dev/null 2> \"$T/denied.err\"; \
           echo $? > \"$T/denied\"\n\
         python3 \"$T/udp.py\" {SERVER4} 443 > \"$T/udp\" 2>&1\n"
    );
    std::fs::write(d.join("job.sh"), job).unwrap();
    let mut client = Command::new("ip");
    client
        .args(["netns", "exec", &lab.container.0])
        .args(["unshare", "--mount", "sh", "-c"])
        .arg("mount --bind \"$T/resolv.conf\" /etc/resolv.conf && exec sh \"$T/job.sh\"")
        .env("T", d)
        .env("CA", &lab.pki.ca_pem_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("job.err")).unwrap());
    kit::clear_proxy_env(&mut client);
    jobs.spawn_inside(&mut client);
    let mut client = client.spawn().unwrap();
    let status = kit::wait_bounded(&mut client, Duration::from_secs(90));
    let read = |name: &str| {
        std::fs::read_to_string(d.join(name))
            .unwrap_or_else(|e| {
                panic!(
                    "$T/{name}: {e}; job stderr:\n{}",
                    std::fs::read_to_string(d.join("job.err")).unwrap_or_default()
                )
            })
            .trim()
            .to_owned()
    };
    assert!(status.success(), "the job failed: {}", read("job.err"));
    let host_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_ne!(
        read("netns"),
        host_netns.to_string_lossy(),
        "the job ran in the container's namespace"
    );

    // SIGTERM: a clean exit with every record on disk, nothing attached.
    let pid = libc::pid_t::try_from(egressd.0.id()).unwrap();
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = kit::wait_bounded(&mut egressd.0, Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", egressd_log());
    let recs = kit::records(&d.join("audit"));

    // An allowed name: answered through the gateway proxy.
    assert_eq!(
        read("allowed"),
        "200",
        "{}\n{}",
        read("allowed.err"),
        egressd_log()
    );
    assert_eq!(read("allowed.body"), "hello tls");
    let r = decision(
        &recs,
        Kind::Tcp,
        &format!("{SERVER4}:{port}"),
        Some("allowed.test"),
    );
    assert_eq!(r.decision, Verdict::Allow, "{r:?}");
    assert_eq!(r.reason, Reason::RuleAllow, "{r:?}");
    assert_eq!(r.rule, "allow[0]", "{r:?}");
    assert_eq!(comm(&r), Some("curl"), "{r:?}");

    // An IP no rule allows: refused at once, not ended by curl's time limit.
    let code: i32 = read("denied").parse().unwrap();
    assert!(
        code != 0 && code != 28,
        "curl to a denied IP fails without hanging (exit {code}: {})",
        read("denied.err")
    );
    let denied = decision(&recs, Kind::Tcp, &format!("{DENIED4}:{port}"), None);
    assert_eq!(denied.decision, Verdict::Deny, "{:?}", denied);
    assert_eq!(denied.reason, Reason::NoSni, "{denied:?}");
    assert_eq!(denied.rule, "default", "{:?}", denied);
    assert_eq!(comm(&denied), Some("curl"), "{:?}", denied);

    // UDP other than DNS: refused in the kernel.
    assert_eq!(read("udp"), "EPERM");
    let r = decision(&recs, Kind::Udp, &format!("{SERVER4}:443"), None);
    assert_eq!(r.decision, Verdict::Deny, "{r:?}");
    assert_eq!(r.reason, Reason::UdpBlocked, "{r:?}");
    assert_eq!(comm(&r), Some("python3"), "{r:?}");

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
}

/// The lab stays inside this module's block, 198.51.100.192/29.
#[test]
fn the_lab_addresses_stay_in_this_module_s_block() {
    for a in [GATEWAY4, CONTAINER4, DENIED4, UPLINK4, SERVER4, RESOLVER4] {
        let a: std::net::Ipv4Addr = a.parse().unwrap();
        assert_eq!(
            u32::from(a) & !7,
            0xc633_64c0,
            "{a} is outside 198.51.100.192/29"
        );
    }
}
