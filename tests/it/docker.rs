//! A real Docker engine under egressd (root): Debian's dockerd (`docker.io`)
//! started by the test with its own data root, exec root, socket and default
//! bridge, in a private mount namespace (its `/etc/docker`, `/etc/resolv.conf`
//! and `/run/containerd` are the test's own), its containers in a child of the
//! filtered cgroup (`--cgroup-parent`). Images are imported from a tarball of
//! the host's own curl, python3 and dash with their shared libraries; a local
//! registry (Debian's `docker-registry`, TLS with the test CA) serves pulls.
//!
//! Each scenario follows the rollout path of a runner: `egressd boot` in audit
//! mode with nothing allowed, one job, `egressd audit suggest`, `boot` again
//! enforcing the suggestion, the same job with zero deny records and
//! `job end --fail-on-deny` exiting 0, then a poisoned job (an unlisted name,
//! a raw IP, a UDP datagram) denied, audited with its container and failing.
//! A job may also reach a service container by its name on the same network
//! (GitHub Actions `services:`, docker compose): that traffic stays on the
//! host's container bridge and is never decided, recorded or suggested.
//!
//! The "internet" is a network namespace (198.51.100.232/29, 2001:db8:8::/64)
//! with the TLS servers, the registry and, at the resolver every container and
//! dockerd are told to use, a canary that never answers and notes every query
//! reaching it (a query there went around egressd). Names resolve only through
//! the [`FakeDns`] egressd is given as its upstream, each name with A and AAAA
//! records. Docker's bridges use 198.51.100.208/28 only. dockerd rewrites
//! iptables and sysctls: the world saves them first and puts them back, stops
//! dockerd, and removes its bridges, cgroups and files even when a test fails;
//! every test checks that nothing was left.

#![expect(
    clippy::unwrap_used,
    reason = "a failed setup step or lookup is a failed test"
)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egressd_audit::{JobTags, Kind, Record};
use egressd_policy::{Reason, Verdict};

use crate::container::{
    Journal, NetNs, Veth, addr_add, assert_route, claim_blocks, comm, ip, ip_show, must,
};
use crate::fake_dns::{FakeDns, RecordSpec};
use crate::runner::kit::{self, JobCgroup, sh};
use crate::support::{NsServers, TestPki};

/// The Debian package's binaries, named in full: another `docker` may come
/// first on PATH (a static client of another version in /usr/local/bin).
const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const REGISTRY: &str = "/usr/bin/docker-registry";
const PYTHON: &str = "/usr/bin/python3";

/// Docker's bridges: the default bridge (made by the test, given with `-b`)
/// and the pool of user-defined networks, one /29 each.
const DOCKER_BLOCK: &str = "198.51.100.208/28";
const BRIDGE_GW: &str = "198.51.100.209";
const BRIDGE_PREFIX: u8 = 29;
const POOL: &str = "198.51.100.216/29";
/// The internet namespace and the host side of its link.
const NET_BLOCK: &str = "198.51.100.232/29";
const UPLINK: &str = "198.51.100.233";
/// The TLS servers for the allowed names.
const SERVER: &str = "198.51.100.234";
/// What the unlisted name resolves to; the poisoned job's raw IP.
const UNLISTED_IP: &str = "198.51.100.235";
const REGISTRY_IP: &str = "198.51.100.236";
/// The resolver containers and dockerd are told to use: the canary.
const RESOLVER: &str = "198.51.100.237";
const BLOCK6: &str = "2001:db8:8::/64";
const UPLINK6: &str = "2001:db8:8::1";
const SERVER6: &str = "2001:db8:8::234";
const UNLISTED6: &str = "2001:db8:8::235";
const REGISTRY6: &str = "2001:db8:8::236";

/// curl's name, python's name, a name no policy lists, the registry's names
/// (the second one never allowed).
const CURL_NAME: &str = "allowed.test";
const PY_NAME: &str = "pkgs.test";
const UNLISTED: &str = "unlisted.test";
const REGISTRY_NAME: &str = "registry.test";
const MIRROR_NAME: &str = "mirror.test";

/// The service container's name on the user-defined network (Docker's
/// embedded DNS answers it) and its HTTP port.
const SERVICE_NAME: &str = "service-db";
const SERVICE_PORT: u16 = 8000;

const JOB_IMAGE: &str = "egressd-it/job:1";
const HELLO_IMAGE: &str = "egressd-it/hello:1";

const AUDIT_POLICY: &str = "version: 1\nmode: audit\nallow: []\n";

/// The job's python step: an HTTPS GET with urllib (getaddrinfo, the test CA).
const FETCH_PY: &str = r#"import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="/t/ca.pem")
try:
    with urllib.request.urlopen(sys.argv[1], context=ctx, timeout=20) as r:
        print("ok", r.read().decode())
except Exception as e:
    print("error", type(e).__name__, e)
"#;

/// The poisoned job's datagram (QUIC-like, to port 443).
const UDP_PY: &str = r#"import errno, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    print("sent")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"#;

/// The canary at the resolver address: never answers, notes each query
/// (UDP datagram or TCP connection) with its source.
const CANARY_PY: &str = r#"import socket, sys, threading
addr, log, ready = sys.argv[1], sys.argv[2], sys.argv[3]
def note(what):
    with open(log, "a") as f:
        f.write(what + "\n")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((addr, 53))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((addr, 53))
t.listen(16)
def tcp():
    while True:
        c, peer = t.accept()
        note("tcp from %s" % peer[0])
        c.close()
threading.Thread(target=tcp, daemon=True).start()
open(ready, "w").close()
while True:
    _, peer = u.recvfrom(4096)
    note("udp from %s" % peer[0])
"#;

/// One world at a time: its names, addresses and bridges are fixed.
static LOCK: Mutex<()> = Mutex::new(());

/// A process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What dockerd changes on the host beyond its own files, saved before it
/// starts and put back after it stopped: the iptables and ip6tables tables
/// (tables it created are deleted) and the forwarding sysctls.
struct HostNetState {
    tables: Vec<(&'static str, String)>,
    sysctls: Vec<(PathBuf, String)>,
}

/// The forwarding switches dockerd turns on.
const SYSCTLS: [&str; 3] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
    "/proc/sys/net/ipv6/conf/default/forwarding",
];

/// `iptables-save` / `ip6tables-save` output without its comments and
/// counters: what the rules are.
fn rules(family: &str) -> String {
    let out = sh(&[&format!("{family}-save")]);
    assert!(out.status.success(), "{family}-save: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.split_once(" [") {
            Some((chain, _)) if l.starts_with(':') => chain.to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn table_names(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.strip_prefix('*'))
        .map(str::to_owned)
        .collect()
}

impl HostNetState {
    fn save() -> HostNetState {
        HostNetState {
            tables: ["iptables", "ip6tables"]
                .into_iter()
                .map(|f| (f, rules(f)))
                .collect(),
            sysctls: SYSCTLS
                .iter()
                .map(|p| {
                    let p = PathBuf::from(p);
                    let v = std::fs::read_to_string(&p).unwrap();
                    (p, v)
                })
                .collect(),
        }
    }

    /// Put everything back; what still differs, as a message.
    fn restore(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (family, before) in &self.tables {
            let nft_family = if *family == "iptables" { "ip" } else { "ip6" };
            for t in table_names(&rules(family)).difference(&table_names(before)) {
                let deleted = sh(&["nft", "delete", "table", nft_family, t]);
                if !deleted.status.success() {
                    // A legacy backend: an empty table that accepts is what
                    // "no table" does.
                    for args in [&["-F"][..], &["-X"], &["-Z"]] {
                        let mut all = vec![*family, "-t", t.as_str()];
                        all.extend(args);
                        let _ = sh(&all);
                    }
                }
            }
            if !before.is_empty() {
                let mut restore = Command::new(format!("{family}-restore"))
                    .stdin(Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write as _;
                let _ = restore
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{before}\n").as_bytes());
                let _ = restore.wait();
            }
            let now = rules(family);
            if now != *before {
                left.push(format!(
                    "{family} differs from before:\n{now}\nbefore:\n{before}"
                ));
            }
        }
        for (path, value) in &self.sysctls {
            let _ = std::fs::write(path, value);
            let now = std::fs::read_to_string(path).unwrap_or_default();
            if now != *value {
                left.push(format!("{} is {now}, was {value}", path.display()));
            }
        }
        left
    }
}

/// Every cgroup hierarchy mounted (v1 controllers and v2).
fn cgroup_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split_whitespace().next()?;
            let mount = left.split_whitespace().nth(4)?;
            matches!(fs, "cgroup" | "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// Remove the directories below `dir` (deepest first) and `dir` itself,
/// killing what still runs in a v2 tree first.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let mut dirs = vec![dir.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(e.path());
                }
            }
        }
        i += 1;
    }
    for d in dirs.iter().rev() {
        for _ in 0..100 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What a cgroup is called relative to its hierarchy (as `--cgroup-parent`
/// and /proc/PID/cgroup name it).
fn cgroup_rel(cg: &JobCgroup) -> String {
    let rel = cg.path().strip_prefix(kit::cgroup2_mount()).unwrap();
    format!("/{}", rel.display())
}

/// Where dockerd runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Daemon {
    /// In a cgroup of its own, outside the filtered one: only its
    /// containers are filtered.
    Outside,
    /// Inside the filtered cgroup, as on a runner that filters the whole
    /// machine: its own connections (pulls) and its embedded DNS are
    /// filtered too.
    Filtered,
}

/// A running dockerd of the test, stopped on drop with everything it made.
struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    bridge: String,
    /// The bridge of the user-defined network, when one was made.
    user_bridge: String,
    /// `/run/containerd` did not exist before: removed afterwards.
    made_run_containerd: bool,
}

impl Dockerd {
    fn sock(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// The last lines of dockerd's log (its start is long and says little).
    fn log(&self) -> String {
        let all = std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Start dockerd in `cgroup`, its containers under `parent`, with the
    /// test CA trusted for the registry's names.
    fn start(pki: &TestPki, cgroup: &JobCgroup, parent: &JobCgroup) -> Dockerd {
        let pid = std::process::id();
        let dir = tempfile::Builder::new().prefix("egdk").tempdir().unwrap();
        let d = dir.path();
        for sub in ["data", "exec", "etc-docker", "cli"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        for name in [REGISTRY_NAME, MIRROR_NAME, REGISTRY_IP] {
            let certs = d.join("etc-docker/certs.d").join(name);
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::write(certs.join("ca.crt"), pki.ca_pem()).unwrap();
        }
        std::fs::write(d.join("resolv.conf"), format!("nameserver {RESOLVER}\n")).unwrap();
        assert!(
            Path::new("/etc/docker").is_dir(),
            "/etc/docker is missing: install docker.io (scripts/install-deps.sh)"
        );
        let bridge = format!("egdb{pid}");
        let _ = sh(&["ip", "link", "del", &bridge]);
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        let made_run_containerd = !Path::new("/run/containerd").exists();
        let mut docker = Dockerd {
            child: None,
            dir,
            bridge,
            user_bridge: format!("egdu{pid}"),
            made_run_containerd,
        };
        addr_add(
            None,
            &docker.bridge,
            &format!("{BRIDGE_GW}/{BRIDGE_PREFIX}"),
        );
        ip(None, &["link", "set", &docker.bridge, "up"]);
        if made_run_containerd {
            std::fs::create_dir(docker.run_containerd()).unwrap();
        }
        let d = docker.dir.path();
        // containerd's shims put their sockets in /run/containerd: a tmpfs
        // of this mount namespace keeps them apart from any other engine.
        let script = format!(
            "mount --bind {d}/etc-docker /etc/docker && \
             mount --bind {d}/resolv.conf /etc/resolv.conf && \
             mount -t tmpfs tmpfs /run/containerd && \
             exec {DOCKERD} --data-root {d}/data --exec-root {d}/exec \
               --pidfile {d}/dockerd.pid -H unix://{d}/docker.sock \
               -b {bridge} --default-address-pool base={POOL},size=29 \
               --dns {RESOLVER} --ip6tables=false --cgroup-parent {parent} \
               --storage-driver overlay2",
            d = d.display(),
            bridge = docker.bridge,
            parent = cgroup_rel(parent),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dockerd.log")).unwrap());
        kit::clear_proxy_env(&mut cmd);
        cgroup.spawn_inside(&mut cmd);
        kit::die_with_test(&mut cmd);
        docker.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if docker.cli(&["version"]).status.success() {
                break;
            }
            let exited = docker.child.as_mut().unwrap().try_wait().unwrap();
            assert!(exited.is_none(), "dockerd exited:\n{}", docker.log());
            assert!(
                Instant::now() < deadline,
                "dockerd not ready:\n{}",
                docker.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        docker
    }

    fn run_containerd(&self) -> &'static Path {
        Path::new("/run/containerd")
    }

    /// `docker ARGS` against this daemon.
    fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(DOCKER);
        cmd.arg("-H")
            .arg(format!("unix://{}", self.sock().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .stdin(Stdio::null());
        kit::clear_proxy_env(&mut cmd);
        cmd.output().unwrap()
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    fn must(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}\ndockerd:\n{}",
            text(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Import the job image (dash, curl and python3 of the host, with their
    /// libraries) and the registry's tiny image.
    fn import_images(&self) {
        let d = self.dir.path();
        let tar = d.join("job.tar");
        job_image_tar(&tar, &d.join("stage"));
        self.must(&["import", tar.to_str().unwrap(), JOB_IMAGE]);
        let hello = d.join("hello");
        std::fs::create_dir(&hello).unwrap();
        std::fs::write(hello.join("hello.txt"), "hello from the registry\n").unwrap();
        let tar = d.join("hello.tar");
        must(&[
            "tar",
            "-cf",
            tar.to_str().unwrap(),
            "-C",
            hello.to_str().unwrap(),
            ".",
        ]);
        self.must(&["import", tar.to_str().unwrap(), HELLO_IMAGE]);
    }

    /// A user-defined network from the address pool, as docker compose and
    /// a runner's job and service containers get.
    fn network_create(&self, name: &str) {
        self.must(&[
            "network",
            "create",
            "-o",
            &format!("com.docker.network.bridge.name={}", self.user_bridge),
            name,
        ]);
    }

    /// Start the service container `SERVICE_NAME` on `network` (replacing
    /// one of an earlier job): python's HTTP server on `dir` (`$T/<dir>`).
    /// Its address, once it listens.
    fn start_service(&self, network: &str, t: &Path, dir: &str) -> IpAddr {
        let _ = self.cli(&["rm", "-f", SERVICE_NAME]);
        let port = SERVICE_PORT.to_string();
        self.must(&[
            "run",
            "-d",
            "--name",
            SERVICE_NAME,
            "--network",
            network,
            "-v",
            &format!("{}:/t", t.display()),
            JOB_IMAGE,
            PYTHON,
            "-m",
            "http.server",
            &port,
            "--directory",
            &format!("/t/{dir}"),
        ]);
        let ip: IpAddr = self
            .must(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                SERVICE_NAME,
            ])
            .parse()
            .unwrap();
        // Ready once it accepts on its own loopback: a connection from the
        // host would already be the traffic under test.
        let probe = format!(
            "import socket; socket.create_connection(('127.0.0.1', {SERVICE_PORT}), timeout=1)"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .cli(&["exec", SERVICE_NAME, PYTHON, "-c", &probe])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "the service container does not listen:\n{}\ndockerd:\n{}",
                text(&self.cli(&["logs", SERVICE_NAME])),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ip
    }

    /// Run `script` (sh) in a fresh container of the job image on
    /// `network`, `t` mounted at /t; the container's id and its exit code.
    fn run(&self, network: &str, t: &Path, step: &str, script: &str) -> (String, i32) {
        let file = format!("{step}.sh");
        std::fs::write(t.join(&file), script).unwrap();
        let cidfile = t.join(format!("{step}.cid"));
        let _ = std::fs::remove_file(&cidfile);
        let out = self.cli(&[
            "run",
            "--rm",
            "--cidfile",
            cidfile.to_str().unwrap(),
            "--network",
            network,
            "-v",
            &format!("{}:/t", t.display()),
            JOB_IMAGE,
            "/bin/sh",
            &format!("/t/{file}"),
        ]);
        let cid = std::fs::read_to_string(&cidfile)
            .unwrap_or_else(|e| panic!("no container id ({e}): {}", text(&out)));
        (cid.trim().to_owned(), out.status.code().unwrap_or(-1))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let ids = String::from_utf8_lossy(&self.cli(&["ps", "-aq"]).stdout).into_owned();
            for id in ids.split_whitespace() {
                let _ = self.cli(&["rm", "-f", id]);
            }
            let nets = self.cli(&["network", "ls", "-q", "--filter", "type=custom"]);
            for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
                let _ = self.cli(&["network", "rm", id]);
            }
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on our child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for link in [&self.bridge, &self.user_bridge] {
            let _ = sh(&["ip", "link", "del", link]);
        }
        if self.made_run_containerd {
            let _ = std::fs::remove_dir(self.run_containerd());
        }
    }
}

/// The shared libraries `ldd` names for `files`.
fn libraries(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut libs = BTreeSet::new();
    for f in files {
        let out = Command::new("ldd").arg(f).output().unwrap();
        for word in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if word.starts_with('/') {
                libs.insert(PathBuf::from(word));
            }
        }
    }
    libs
}

/// The job image's root as a tarball: dash as /bin/sh, curl, python3 with
/// its standard library (no tests, no GUI), every library they load, and a
/// hosts-then-DNS nsswitch.conf.
fn job_image_tar(tar: &Path, stage: &Path) {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('stdlib'))",
        ])
        .output()
        .unwrap();
    let stdlib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(stdlib.is_dir(), "{PYTHON}'s standard library: {stdlib:?}");
    let python = std::fs::canonicalize(PYTHON).unwrap();
    let mut programs = vec![
        PathBuf::from("/usr/bin/dash"),
        PathBuf::from("/usr/bin/curl"),
        python.clone(),
    ];
    for e in std::fs::read_dir(stdlib.join("lib-dynload"))
        .unwrap()
        .flatten()
    {
        programs.push(e.path());
    }
    let mut paths: BTreeSet<PathBuf> = libraries(&programs);
    paths.extend(programs.iter().take(3).cloned());
    paths.insert(stdlib);
    let mut cmd = Command::new("tar");
    cmd.arg("-cf").arg(tar).arg("--dereference");
    for skip in [
        "test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
    ] {
        cmd.arg(format!("--exclude={skip}"));
    }
    cmd.args(["-C", "/"]);
    for p in &paths {
        cmd.arg(p.strip_prefix("/").unwrap());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "tar: {}", text(&out));

    std::fs::create_dir_all(stage.join("bin")).unwrap();
    std::fs::create_dir_all(stage.join("usr/bin")).unwrap();
    std::fs::create_dir_all(stage.join("etc")).unwrap();
    std::fs::create_dir_all(stage.join("tmp")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/dash", stage.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink(&python, stage.join("usr/bin/python3")).unwrap();
    std::fs::write(stage.join("etc/nsswitch.conf"), "hosts: files dns\n").unwrap();
    std::fs::set_permissions(
        stage.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let out = Command::new("tar")
        .arg("-rf")
        .arg(tar)
        .arg("-C")
        .arg(stage)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", text(&out));
}

/// The internet namespace with its servers, the canary and egressd's
/// upstream DNS, the filtered cgroup, dockerd; all torn down on drop, in
/// order, and [`World::finish`] checks that nothing is left.
struct World {
    // Fields drop in order: dockerd first, then its cgroups, then the host
    // state it changed, then the servers.
    docker: Option<Dockerd>,
    /// The filtered cgroup: the parent of every container.
    jobs: Option<JobCgroup>,
    /// dockerd's own cgroup when it runs outside the filtered one.
    daemon_cgroup: Option<JobCgroup>,
    host_state: HostNetState,
    tls_port: u16,
    pki: TestPki,
    dns: FakeDns,
    _registry: Option<Killed>,
    _canary: Killed,
    _servers: NsServers,
    /// Runs the fake DNS.
    _host_rt: tokio::runtime::Runtime,
    _uplink: Veth,
    _internet: NetNs,
    /// Job files, the canary's notes, the registry's storage.
    files: tempfile::TempDir,
    _block: crate::support::BlockLock,
    _lock: MutexGuard<'static, ()>,
}

impl World {
    fn up(daemon: Daemon, with_registry: bool) -> World {
        let lock = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let block = crate::support::lock_block("docker-198.51.100.208");
        claim_blocks(
            &["egdn", "egdq", "egdb", "egdu"],
            &[DOCKER_BLOCK, NET_BLOCK, BLOCK6],
        );
        let pid = std::process::id();
        let internet = NetNs::add(format!("egdn-{pid}"));
        let ns_if = format!("egdq{pid}");
        let uplink = Veth::add(format!("egdn{pid}"), &ns_if, &internet);
        let (i, host_i) = (Some(internet.0.as_str()), uplink.0.as_str());
        addr_add(None, host_i, &format!("{UPLINK} peer {SERVER}"));
        addr_add(i, &ns_if, &format!("{SERVER} peer {UPLINK}"));
        for a in [UNLISTED_IP, REGISTRY_IP, RESOLVER] {
            addr_add(i, &ns_if, &format!("{a}/32"));
            ip(None, &["route", "add", a, "via", SERVER, "dev", host_i]);
        }
        addr_add(None, host_i, &format!("{UPLINK6}/64"));
        for a in [SERVER6, UNLISTED6, REGISTRY6] {
            addr_add(i, &ns_if, &format!("{a}/64"));
        }
        for a in [
            SERVER,
            UNLISTED_IP,
            REGISTRY_IP,
            RESOLVER,
            SERVER6,
            UNLISTED6,
        ] {
            assert_route(None, a, &format!("dev {host_i}"));
        }

        let files = tempfile::Builder::new().prefix("egdk").tempdir().unwrap();
        let f = files.path();
        let pki = TestPki::new();
        std::fs::copy(&pki.ca_pem_path, f.join("ca.pem")).unwrap();
        std::fs::write(f.join("fetch.py"), FETCH_PY).unwrap();
        std::fs::write(f.join("udp.py"), UDP_PY).unwrap();
        let config = pki.server_config(&[CURL_NAME, PY_NAME, UNLISTED]);
        let servers = NsServers::start(&internet.0, config);

        std::fs::write(f.join("canary.py"), CANARY_PY).unwrap();
        let canary = Killed(
            Command::new("ip")
                .args(["netns", "exec", &internet.0, PYTHON])
                .arg(f.join("canary.py"))
                .arg(RESOLVER)
                .arg(f.join("canary.log"))
                .arg(f.join("canary.ready"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_until("the canary", Duration::from_secs(20), || {
            f.join("canary.ready").exists()
        });
        let registry = with_registry.then(|| start_registry(&internet.0, &pki, f));

        let host_rt = crate::fake_dns::runtime();
        let a = |s: &str| RecordSpec::addr(s.parse::<IpAddr>().unwrap());
        let dns = host_rt.block_on(FakeDns::start(&[
            (CURL_NAME, a(SERVER)),
            (CURL_NAME, a(SERVER6)),
            (PY_NAME, a(SERVER)),
            (PY_NAME, a(SERVER6)),
            (UNLISTED, a(UNLISTED_IP)),
            (UNLISTED, a(UNLISTED6)),
            (REGISTRY_NAME, a(REGISTRY_IP)),
            (REGISTRY_NAME, a(REGISTRY6)),
            (MIRROR_NAME, a(REGISTRY_IP)),
            (MIRROR_NAME, a(REGISTRY6)),
        ]));

        let host_state = HostNetState::save();
        let jobs = JobCgroup::create();
        let daemon_cgroup = (daemon == Daemon::Outside).then(JobCgroup::create);
        let mut world = World {
            docker: None,
            jobs: Some(jobs),
            daemon_cgroup,
            host_state,
            tls_port: servers.tls_port,
            pki,
            dns,
            _registry: registry,
            _canary: canary,
            _servers: servers,
            _host_rt: host_rt,
            _uplink: uplink,
            _internet: internet,
            files,
            _block: block,
            _lock: lock,
        };
        let jobs = world.jobs.as_ref().unwrap();
        let daemon_cg = world.daemon_cgroup.as_ref().unwrap_or(jobs);
        let docker = Dockerd::start(&world.pki, daemon_cg, jobs);
        world.docker = Some(docker);
        world.docker().import_images();
        assert_route(None, BRIDGE_GW, "dev lo");
        world
    }

    fn docker(&self) -> &Dockerd {
        self.docker.as_ref().unwrap()
    }

    fn jobs(&self) -> &JobCgroup {
        self.jobs.as_ref().unwrap()
    }

    fn t(&self) -> &Path {
        self.files.path()
    }

    /// Every query that reached the resolver address itself, around egressd.
    fn canary(&self) -> String {
        std::fs::read_to_string(self.t().join("canary.log")).unwrap_or_default()
    }

    /// Stop dockerd, remove its cgroups (v1 and v2) and put the host's
    /// network state back; what was left.
    fn teardown(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        let Some(docker) = self.docker.take() else {
            return left;
        };
        let (bridges, data, made_run) = (
            [docker.bridge.clone(), docker.user_bridge.clone()],
            docker.dir.path().to_owned(),
            docker.made_run_containerd.then(|| docker.run_containerd()),
        );
        drop(docker);
        if let Some(run) = made_run.filter(|r| r.exists()) {
            left.push(format!("{} is still there", run.display()));
        }
        let rels: Vec<String> = self
            .jobs
            .iter()
            .chain(self.daemon_cgroup.iter())
            .map(cgroup_rel)
            .collect();
        for mount in cgroup_mounts() {
            for rel in &rels {
                let dir = mount.join(rel.trim_start_matches('/'));
                remove_cgroup_tree(&dir);
                if dir.exists() {
                    left.push(format!("cgroup {} is still there", dir.display()));
                }
            }
        }
        self.jobs = None;
        self.daemon_cgroup = None;
        left.extend(self.host_state.restore());
        for b in bridges {
            if !ip_show(None, &["link", "show", "dev", &b]).is_empty() {
                left.push(format!("bridge {b} is still there"));
            }
        }
        if data.exists() {
            left.push(format!("{} is still there", data.display()));
        }
        left
    }

    /// Tear down and check that nothing of dockerd is left.
    fn finish(mut self) {
        let left = self.teardown();
        assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for what in self.teardown() {
            eprintln!("docker world: {what}");
        }
    }
}

/// The registry in the internet namespace on port 443 of every address
/// there (its names have A and AAAA records), TLS with a certificate for its
/// names and its address; returned once it listens.
fn start_registry(ns: &str, pki: &TestPki, dir: &Path) -> Killed {
    let (cert, key) = pki.server_pem(&[REGISTRY_NAME, MIRROR_NAME, REGISTRY_IP]);
    std::fs::write(dir.join("registry.crt"), cert).unwrap();
    std::fs::write(dir.join("registry.key"), key).unwrap();
    let d = dir.display();
    let config = format!(
        "version: 0.1\n\
         log:\n  level: warn\n\
         storage:\n  filesystem:\n    rootdirectory: {d}/registry\n\
         http:\n  addr: \":443\"\n  tls:\n    certificate: {d}/registry.crt\n    key: {d}/registry.key\n"
    );
    std::fs::write(dir.join("registry.yml"), config).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, REGISTRY, "serve"])
        .arg(dir.join("registry.yml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap());
    kit::die_with_test(&mut cmd);
    let registry = Killed(cmd.spawn().unwrap());
    let addr = format!("{REGISTRY_IP}:443").parse().unwrap();
    wait_until("the registry", Duration::from_secs(20), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    registry
}

/// A running `egressd boot` filtering the world's cgroup, its containers
/// redirected to the default bridge's gateway; killed on drop.
struct Boot {
    child: Child,
    dir: tempfile::TempDir,
}

impl Boot {
    fn start(world: &World, policy: &str) -> Boot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("policy.yaml"), policy).unwrap();
        let mut cmd = Command::new(crate::support::egressd_bin());
        cmd.arg("boot")
            .arg("--policy")
            .arg(d.join("policy.yaml"))
            .args(["--container-gateway", BRIDGE_GW])
            .arg("--control-socket")
            .arg(d.join("control.sock"))
            .stderr(std::fs::File::create(d.join("boot.log")).unwrap());
        let dns = world.dns.addr().to_string();
        kit::enforcer(&mut cmd, world.jobs().path(), d, &dns, "docker-it");
        let mut boot = Boot {
            child: cmd.spawn().unwrap(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !boot.dir.path().join("ready.json").exists() {
            if let Some(s) = boot.child.try_wait().unwrap() {
                panic!("egressd boot exited ({s}) before ready:\n{}", boot.log());
            }
            assert!(Instant::now() < deadline, "boot not ready:\n{}", boot.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        boot
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("boot.log")).unwrap_or_default()
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// `egressd job start|end ...` for the job `name` of octo/app.
    fn job(&self, args: &[&str], name: &str) -> Output {
        let mut cmd = Command::new(crate::support::egressd_bin());
        cmd.arg("job")
            .args(args)
            .arg("--control-socket")
            .arg(self.dir.path().join("control.sock"))
            .env_remove("GITHUB_STEP_SUMMARY")
            .envs(job_env(name));
        cmd.output().unwrap()
    }

    /// The records of the job `name`.
    fn job_records(&self, name: &str) -> Journal {
        let tags = job_tags(name);
        Journal(
            kit::records(&self.audit_dir())
                .into_iter()
                .filter(|r| r.job.as_deref() == Some(&tags))
                .collect(),
        )
    }

    /// SIGTERM: a clean exit.
    fn stop(mut self) -> tempfile::TempDir {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = kit::wait_bounded(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "{status}:\n{}", self.log());
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn job_env(name: &str) -> [(&'static str, String); 5] {
    [
        ("GITHUB_REPOSITORY", "octo/app".to_owned()),
        ("GITHUB_WORKFLOW", "CI".to_owned()),
        ("GITHUB_RUN_ID", "7".to_owned()),
        ("GITHUB_RUN_ATTEMPT", "1".to_owned()),
        ("GITHUB_JOB", name.to_owned()),
    ]
}

fn job_tags(name: &str) -> JobTags {
    JobTags {
        repository: Some("octo/app".into()),
        workflow: Some("CI".into()),
        run_id: Some("7".into()),
        run_attempt: Some("1".into()),
        job: Some(name.into()),
    }
}

fn container(r: &Record) -> Option<&str> {
    r.process.as_ref().and_then(|p| p.container.as_deref())
}

/// The job's good steps: curl and python's urllib over HTTPS to the names
/// the job needs. Outputs in `$T/<step>.*`.
fn build_step(step: &str) -> String {
    format!(
        "curl -sS --max-time 20 --cacert /t/ca.pem https://{CURL_NAME}:$TLS/ \
           -o /t/{step}.curl.body 2>/t/{step}.curl.err; echo $? > /t/{step}.curl\n\
         {PYTHON} /t/fetch.py https://{PY_NAME}:$TLS/ > /t/{step}.py 2>&1\n"
    )
}

/// The poisoned step: an unlisted name, a raw IP, a UDP datagram.
fn poisoned_step(step: &str) -> String {
    format!(
        "curl -sS --max-time 20 --cacert /t/ca.pem https://{UNLISTED}:$TLS/ \
           -o /dev/null 2>/t/{step}.name.err; echo $? > /t/{step}.name\n\
         curl -sS --max-time 20 -k https://{UNLISTED_IP}:$TLS/ \
           -o /dev/null 2>/t/{step}.ip.err; echo $? > /t/{step}.ip\n\
         {PYTHON} /t/udp.py {UNLISTED_IP} 443 > /t/{step}.udp 2>&1\n"
    )
}

/// One step of a job in a container: the script with `$TLS` set.
fn run_step(world: &World, network: &str, step: &str, script: &str) -> String {
    let script = format!("TLS={}\n{script}", world.tls_port);
    let (cid, code) = world.docker().run(network, world.t(), step, &script);
    assert_eq!(code, 0, "the step {step} ran:\n{}", world.docker().log());
    cid
}

fn read(world: &World, name: &str) -> String {
    std::fs::read_to_string(world.t().join(name))
        .unwrap_or_else(|e| panic!("$T/{name}: {e}"))
        .trim()
        .to_owned()
}

/// The good steps worked.
fn assert_built(world: &World, step: &str) {
    assert_eq!(
        read(world, &format!("{step}.curl")),
        "0",
        "curl in {step}: {}",
        read(world, &format!("{step}.curl.err"))
    );
    assert_eq!(read(world, &format!("{step}.curl.body")), "hello tls");
    assert_eq!(read(world, &format!("{step}.py")), "ok hello tls", "{step}");
}

/// The single decision record of `kind` to `dst` naming `host`, which
/// must come from the container `cid`.
fn decision<'a>(
    j: &'a Journal,
    kind: Kind,
    dst: &str,
    host: Option<&str>,
    cid: &str,
) -> &'a Record {
    let r = j.decision(kind, dst, host);
    assert_eq!(container(r), Some(cid), "{r:?}");
    r
}

/// Every deny record among `records`, as one line each.
fn denies(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .map(|r| {
            format!(
                "{:?} {:?} dst={:?} host={:?} comm={:?} container={:?}",
                r.kind,
                r.reason,
                r.dst,
                r.host,
                comm(r),
                container(r).map(|c| &c[..12.min(c.len())])
            )
        })
        .collect()
}

/// The jobs of a rollout.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Audit mode, nothing allowed.
    Audit,
    /// Enforcing the suggested policy.
    Enforce,
    /// Enforcing, with a poisoned step.
    Poisoned,
}

/// What a scenario does in each job besides its container steps.
struct Scenario<'a> {
    /// The network the job's containers join.
    network: &'a str,
    /// The containers' lookups reach egressd through Docker's embedded DNS
    /// (127.0.0.11, user-defined networks): dockerd forwards them, so their
    /// records name dockerd, not the container.
    embedded_dns: bool,
    /// Steps on the host (the docker CLI), before the containers.
    host_steps: &'a dyn Fn(&World, Phase),
    /// Checks of those steps against the job's records (enforcing jobs).
    check_host_steps: &'a dyn Fn(Phase, &Journal),
    /// Each good job also reaches a fresh service container by its name
    /// on the job's network (`--network`, as a runner's `services:`).
    service: bool,
}

/// The job's step against the service container: an HTTP GET by its name.
fn service_step(step: &str) -> String {
    format!(
        "curl -sS --max-time 20 http://{SERVICE_NAME}:{SERVICE_PORT}/hello.txt \
           -o /t/{step}.svc.body 2>/t/{step}.svc.err; echo $? > /t/{step}.svc\n"
    )
}

/// A good job's steps: the build, and the service when the scenario has one
/// (started fresh, as each run of a workflow gets its own); the service's
/// address, if any.
fn good_job(world: &World, s: &Scenario<'_>, step: &str) -> (String, Option<IpAddr>) {
    let mut script = build_step(step);
    let service = s.service.then(|| {
        let dir = format!("{step}.svc.root");
        std::fs::create_dir_all(world.t().join(&dir)).unwrap();
        std::fs::write(world.t().join(&dir).join("hello.txt"), "hello service\n").unwrap();
        script.push_str(&service_step(step));
        world.docker().start_service(s.network, world.t(), &dir)
    });
    let cid = run_step(world, s.network, step, &script);
    if service.is_some() {
        assert_eq!(
            read(world, &format!("{step}.svc")),
            "0",
            "curl to the service container in {step}: {}",
            read(world, &format!("{step}.svc.err"))
        );
        assert_eq!(read(world, &format!("{step}.svc.body")), "hello service");
    }
    (cid, service)
}

/// Traffic to the service container stays on the host: no record of it.
fn assert_no_service_records(recs: &Journal, service: Option<IpAddr>) {
    let Some(ip) = service else { return };
    let about: Vec<&Record> = recs
        .0
        .iter()
        .filter(|r| r.dst.is_some_and(|d| d.ip() == ip) || r.host.as_deref() == Some(SERVICE_NAME))
        .collect();
    assert!(
        about.is_empty(),
        "records of the service container {ip}:\n{about:?}\nall records:\n{}",
        recs.dump()
    );
}

/// The rollout: audit mode with nothing allowed, `audit suggest`, enforce
/// with the suggestion (zero deny records, `--fail-on-deny` exits 0), then a
/// poisoned job (denied, audited with its container, failing the job).
fn rollout(world: &World, s: &Scenario<'_>) {
    // 1. Audit mode, nothing allowed: the job works and is recorded.
    let boot = Boot::start(world, AUDIT_POLICY);
    let started = boot.job(&["start"], "audit");
    assert!(started.status.success(), "{}", text(&started));
    (s.host_steps)(world, Phase::Audit);
    let (cid, audit_service) = good_job(world, s, "audit");
    assert_built(world, "audit");
    let ended = boot.job(&["end"], "audit");
    assert!(ended.status.success(), "{}", text(&ended));
    let recs = boot.job_records("audit");
    assert_no_service_records(&recs, audit_service);
    let r = decision(
        &recs,
        Kind::Tcp,
        &format!("{SERVER}:{}", world.tls_port),
        Some(CURL_NAME),
        &cid,
    );
    assert_eq!(r.enforce_would, Some(Verdict::Deny), "{r:?}");
    let audit = boot.stop();

    // 2. The suggestion from what the job did.
    let out = Command::new(crate::support::egressd_bin())
        .args(["audit", "suggest", "--dir"])
        .arg(audit.path().join("audit"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let policy = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in [CURL_NAME, PY_NAME] {
        assert!(policy.contains(name), "{name} suggested:\n{policy}");
    }
    assert!(!policy.contains(UNLISTED), "{policy}");
    if let Some(ip) = audit_service {
        for what in [ip.to_string().as_str(), SERVICE_NAME] {
            assert!(
                !policy.contains(what),
                "a rule for the service container ({what}) suggested:\n{policy}"
            );
        }
    }

    // 3. Enforce the suggestion: the same job, nothing denied.
    let boot = Boot::start(world, &policy);
    let started = boot.job(&["start"], "enforce");
    assert!(started.status.success(), "{}", text(&started));
    (s.host_steps)(world, Phase::Enforce);
    let (cid, service) = good_job(world, s, "enforce");
    let ended = boot.job(&["end", "--fail-on-deny"], "enforce");
    let recs = boot.job_records("enforce");
    assert_no_service_records(&recs, service);
    let denied = denies(&recs.0);
    assert!(
        denied.is_empty(),
        "false denies in the enforcing job with the suggested policy:\n{}\npolicy:\n{policy}\nall records:\n{}",
        denied.join("\n"),
        recs.dump()
    );
    assert_built(world, "enforce");
    assert!(
        ended.status.success(),
        "job end --fail-on-deny: {}",
        text(&ended)
    );
    let tls = world.tls_port;
    for (name, who) in [(CURL_NAME, "curl"), (PY_NAME, "python3")] {
        let r = decision(
            &recs,
            Kind::Tcp,
            &format!("{SERVER}:{tls}"),
            Some(name),
            &cid,
        );
        assert_eq!(
            (r.decision, r.reason, comm(r)),
            (Verdict::Allow, Reason::RuleAllow, Some(who)),
            "{r:?}"
        );
    }
    for name in [CURL_NAME, PY_NAME] {
        let lookups: Vec<&Record> = recs
            .0
            .iter()
            .filter(|r| r.kind == Kind::Dns && r.host.as_deref() == Some(name))
            .collect();
        assert!(
            !lookups.is_empty(),
            "{name} looked up through egressd:\n{}",
            recs.dump()
        );
        for r in lookups {
            assert_eq!(
                (r.decision, r.reason),
                (Verdict::Allow, Reason::RuleAllow),
                "{r:?}"
            );
            if s.embedded_dns {
                assert_eq!((comm(r), container(r)), (Some("dockerd"), None), "{r:?}");
            } else {
                assert_eq!(container(r), Some(cid.as_str()), "{r:?}");
            }
        }
    }
    (s.check_host_steps)(Phase::Enforce, &recs);

    // 4. A poisoned job: denied, audited with its container, failing.
    let started = boot.job(&["start"], "poisoned");
    assert!(started.status.success(), "{}", text(&started));
    (s.host_steps)(world, Phase::Poisoned);
    let cid = run_step(world, s.network, "poisoned", &poisoned_step("poisoned"));
    let ended = boot.job(&["end", "--fail-on-deny"], "poisoned");
    let recs = boot.job_records("poisoned");
    assert_eq!(
        ended.status.code(),
        Some(1),
        "--fail-on-deny fails the job: {}",
        text(&ended)
    );
    let code = read(world, "poisoned.name");
    assert_eq!(code, "6", "curl cannot resolve {UNLISTED}");
    let refused: Vec<&Record> = recs
        .0
        .iter()
        .filter(|r| r.kind == Kind::Dns && r.host.as_deref() == Some(UNLISTED))
        .collect();
    assert!(!refused.is_empty(), "{}", recs.dump());
    for r in refused {
        assert_eq!((r.decision, r.reason), (Verdict::Deny, Reason::DnsRefused));
    }
    let code = read(world, "poisoned.ip");
    assert!(code != "0" && code != "28", "the raw IP fails fast: {code}");
    let r = decision(
        &recs,
        Kind::Tcp,
        &format!("{UNLISTED_IP}:{tls}"),
        None,
        &cid,
    );
    assert_eq!(
        (r.decision, r.reason),
        (Verdict::Deny, Reason::NoSni),
        "{r:?}"
    );
    assert_eq!(read(world, "poisoned.udp"), "EPERM");
    let r = decision(&recs, Kind::Udp, &format!("{UNLISTED_IP}:443"), None, &cid);
    assert_eq!(
        (r.decision, r.reason, comm(r)),
        (Verdict::Deny, Reason::UdpBlocked, Some("python3")),
        "{r:?}"
    );
    (s.check_host_steps)(Phase::Poisoned, &recs);
    let asked = world.dns.queries();
    assert!(
        !asked.iter().any(|q| q.name == UNLISTED),
        "a refused name never reaches the upstream: {asked:?}"
    );
    drop(boot.stop());
    assert_eq!(world.canary(), "", "queries went around egressd");
}

fn no_host_steps(_: &World, _: Phase) {}
fn no_host_checks(_: Phase, _: &Journal) {}

/// `docker run` on the default bridge (IPv4 only, as docker0): the job's
/// containers are filtered and named in the records; dockerd itself is not
/// in the filtered cgroup.
#[test]
fn docker_run_on_the_default_bridge_rolls_out_with_zero_false_denies() {
    if !kit::privileged() {
        return;
    }
    let world = World::up(Daemon::Outside, false);
    rollout(
        &world,
        &Scenario {
            network: "bridge",
            embedded_dns: false,
            host_steps: &no_host_steps,
            check_host_steps: &no_host_checks,
            service: false,
        },
    );
    world.finish();
}

/// A user-defined network (`docker network create`), as docker compose and
/// a runner's job and service containers use, with only the default
/// bridge's gateway given to egressd: its containers reach that address,
/// and dockerd (in the filtered cgroup, as on a runner filtering the whole
/// machine) forwards their lookups from Docker's embedded DNS through
/// egressd.
#[test]
fn docker_run_on_a_user_defined_network_rolls_out_with_zero_false_denies() {
    if !kit::privileged() {
        return;
    }
    let world = World::up(Daemon::Filtered, false);
    world.docker().network_create("egressd-ci");
    rollout(
        &world,
        &Scenario {
            network: "egressd-ci",
            embedded_dns: true,
            host_steps: &no_host_steps,
            check_host_steps: &no_host_checks,
            service: false,
        },
    );
    world.finish();
}

/// A job container reaches a service container by its name on the same
/// user-defined network (a runner's `services:`, docker compose's `db:5432`):
/// the traffic stays on the host's container bridge, so it is left alone like
/// loopback: no record in audit mode, no rule suggested for the service's
/// address (the next run's container has another), zero denies enforcing;
/// the job is still denied what it does not list.
#[test]
fn a_job_container_reaches_its_service_container_with_no_rule_and_no_deny() {
    if !kit::privileged() {
        return;
    }
    let world = World::up(Daemon::Filtered, false);
    world.docker().network_create("egressd-svc");
    rollout(
        &world,
        &Scenario {
            network: "egressd-svc",
            embedded_dns: true,
            host_steps: &no_host_steps,
            check_host_steps: &no_host_checks,
            service: true,
        },
    );
    world.finish();
}

/// dockerd in the filtered cgroup: `docker pull` by name from the local
/// registry is decided and audited (dockerd named), allowed once the policy
/// allows the registry's name and denied for a name it does not list.
#[test]
fn dockerd_in_the_filtered_cgroup_pulls_only_from_allowed_registries() {
    if !kit::privileged() {
        return;
    }
    let world = World::up(Daemon::Filtered, true);
    // The registry gets its image before egressd runs, by address.
    let pushed = format!("{REGISTRY_IP}/hello:1");
    world.docker().must(&["tag", HELLO_IMAGE, &pushed]);
    world.docker().must(&["push", &pushed]);
    world.docker().must(&["rmi", &pushed]);
    let pull = |w: &World, phase: Phase| {
        if phase == Phase::Poisoned {
            let out = w.docker().cli(&["pull", &format!("{MIRROR_NAME}/hello:1")]);
            assert!(!out.status.success(), "{}", text(&out));
            return;
        }
        let image = format!("{REGISTRY_NAME}/hello:1");
        w.docker().must(&["pull", &image]);
        w.docker().must(&["rmi", &image]);
    };
    let check = |phase: Phase, recs: &Journal| {
        let from_dockerd = |kind: Kind, host: &str| -> Vec<&Record> {
            recs.0
                .iter()
                .filter(|r| r.kind == kind && r.host.as_deref() == Some(host))
                .filter(|r| !r.is_closing())
                .collect()
        };
        let (host, verdict, reason) = if phase == Phase::Poisoned {
            (MIRROR_NAME, Verdict::Deny, Reason::DnsRefused)
        } else {
            (REGISTRY_NAME, Verdict::Allow, Reason::RuleAllow)
        };
        let mut seen = from_dockerd(Kind::Dns, host);
        if phase == Phase::Enforce {
            let pulls = from_dockerd(Kind::Tcp, host);
            assert!(!pulls.is_empty(), "{}", recs.dump());
            // dockerd is in the host's namespace, where IPv6 reaches the
            // registry too.
            let registry = [REGISTRY_IP, REGISTRY6].map(|a| a.parse::<IpAddr>().unwrap());
            for r in &pulls {
                let dst = r.dst.unwrap();
                assert!(registry.contains(&dst.ip()) && dst.port() == 443, "{r:?}");
            }
            seen.extend(pulls);
        }
        assert!(!seen.is_empty(), "records of {host}:\n{}", recs.dump());
        for r in seen {
            assert_eq!(
                (r.decision, r.reason, comm(r), container(r)),
                (verdict, reason, Some("dockerd"), None),
                "{r:?}"
            );
        }
    };
    rollout(
        &world,
        &Scenario {
            network: "bridge",
            embedded_dns: false,
            host_steps: &pull,
            check_host_steps: &check,
            service: false,
        },
    );
    world.finish();
}

/// The world stays inside this module's blocks: 198.51.100.208/28 for
/// Docker, 198.51.100.232/29 and 2001:db8:8::/64 for the internet.
#[test]
fn the_docker_world_stays_in_this_module_s_blocks() {
    let in4 = |a: &str, base: u32, prefix: u32| {
        let a: Ipv4Addr = a.parse().unwrap();
        let mask = u32::MAX << (32 - prefix);
        assert_eq!(u32::from(a) & mask, base, "{a} is outside its block");
    };
    for a in [BRIDGE_GW, "198.51.100.216"] {
        in4(a, 0xc633_64d0, 28);
    }
    for a in [UPLINK, SERVER, UNLISTED_IP, REGISTRY_IP, RESOLVER] {
        in4(a, 0xc633_64e8, 29);
    }
    for a in [UPLINK6, SERVER6, UNLISTED6, REGISTRY6] {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(a.segments()[..4], [0x2001, 0xdb8, 8, 0], "{a}");
    }
    assert!(POOL.starts_with("198.51.100.216/"));
}
