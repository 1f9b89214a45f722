//! The test world of the job corpus: a network namespace holding real servers
//! (nginx in front of everything, `git http-backend` through fcgiwrap,
//! pypiserver, verdaccio, a Debian repository as files), and a [`FakeDns`] on
//! the host's loopback giving every name an A and an AAAA record (so glibc
//! sorts the addresses by RFC 6724, as on a real runner), and, for jobs run
//! without egressd, the same zone on the host side of the link, port 53.
//! Its servers run from the start to the end of the test (or benchmark) and
//! are killed, with the namespace, on drop. Set-up failures panic with what
//! went wrong.
//!
//! Addresses: 198.51.100.64/27 and 2001:db8:7::/64, used by this module only.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::blocks::{BlockLock, lock_block};
use crate::cmd::{clear_proxy_env, must, sh};
use crate::fake_dns::{FakeDns, RecordSpec};
use crate::netns::Veth;
use crate::pki::TestPki;

/// Host side of the link.
pub const HOST4: &str = "198.51.100.65";
/// Host side of the link, IPv6.
pub const HOST6: &str = "2001:db8:7::1";
/// The resolver of the job's resolv.conf: held by nobody, so only egressd can
/// answer queries sent there.
pub const RESOLVER4: &str = "198.51.100.94";

/// A server of the world: its name, both its addresses, and its port (443:
/// HTTPS, 80: plain HTTP).
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// Its DNS name.
    pub name: &'static str,
    /// Its IPv4 address.
    pub v4: &'static str,
    /// Its IPv6 address.
    pub v6: &'static str,
    /// Its port.
    pub port: u16,
}

impl Site {
    /// Its URL scheme.
    pub fn scheme(self) -> &'static str {
        if self.port == 443 { "https" } else { "http" }
    }
}

/// Smart HTTP git (HTTPS).
pub const GIT: Site = Site {
    name: "git.jobs.test",
    v4: "198.51.100.66",
    v6: "2001:db8:7::66",
    port: 443,
};
/// The PEP 503 index (HTTPS).
pub const PYPI: Site = Site {
    name: "pypi.jobs.test",
    v4: "198.51.100.67",
    v6: "2001:db8:7::67",
    port: 443,
};
/// The npm registry (HTTPS).
pub const NPM: Site = Site {
    name: "npm.jobs.test",
    v4: "198.51.100.68",
    v6: "2001:db8:7::68",
    port: 443,
};
/// The Debian repository (plain HTTP: the Host header names it).
pub const DEB: Site = Site {
    name: "deb.jobs.test",
    v4: "198.51.100.69",
    v6: "2001:db8:7::69",
    port: 80,
};
/// A web server (HTTPS, HTTP/1.1 and HTTP/2).
pub const WEB: Site = Site {
    name: "web.jobs.test",
    v4: "198.51.100.70",
    v6: "2001:db8:7::70",
    port: 443,
};
/// Served like [`WEB`], named by no policy.
pub const OTHER: Site = Site {
    name: "other.jobs.test",
    v4: "198.51.100.71",
    v6: "2001:db8:7::71",
    port: 443,
};
/// Every server of the world.
pub const SITES: [Site; 6] = [GIT, PYPI, NPM, DEB, WEB, OTHER];

/// What the web server answers.
pub const WEB_BODY: &str = "hello from the job corpus";
/// The package every registry serves (Python and npm name).
pub const PACKAGE: &str = "corpus-hello";
/// What the package says when imported.
pub const GREETING: &str = "hello from the corpus";
/// The Debian package.
pub const DEB_PACKAGE: &str = "egressd-corpus-hello";

/// The servers a test needs besides nginx (which always runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// fcgiwrap for `git http-backend`, and a bare repository.
    Git,
    /// pypiserver with a wheel built here.
    Pypi,
    /// verdaccio with a package published to it.
    Npm,
    /// A Debian repository (files nginx serves).
    Deb,
}

static LOCK: Mutex<()> = Mutex::new(());

/// An A and an AAAA record for every site.
fn zone() -> Vec<(&'static str, RecordSpec)> {
    SITES
        .iter()
        .flat_map(|s| {
            [
                (
                    s.name,
                    RecordSpec::addr(s.v4.parse().expect("an IPv4 site")),
                ),
                (
                    s.name,
                    RecordSpec::addr(s.v6.parse().expect("an IPv6 site")),
                ),
            ]
        })
        .collect()
}

/// Where scripts/install-deps.sh put the servers that are not Debian packages.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("EGRESSD_TEST_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/egressd-test"), PathBuf::from)
}

/// pypiserver's venv (its pip is also the job's pip).
pub fn pypi_venv() -> PathBuf {
    cache_dir().join("pypiserver")
}

fn need(path: &Path) {
    if !path.exists() {
        panic!(
            "{} is missing: run scripts/install-deps.sh as root",
            path.display()
        );
    }
}

/// `path` as a string (the world's paths are in a temp dir: UTF-8).
fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

/// Writes a file of the world's set-up.
fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    let path = path.as_ref();
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Creates a directory of the world's set-up (and its parents).
fn mkdir(path: &Path) {
    std::fs::create_dir_all(path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
}

/// Runs a set-up command to completion; panics, with its output, when it
/// cannot start or fails.
fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// A server process in the world (its own process group), killed with its
/// children on drop.
struct Server {
    what: &'static str,
    child: Child,
}

impl Server {
    fn spawn(
        what: &'static str,
        ns: &str,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(log)
            .process_group(0);
        clear_proxy_env(&mut cmd);
        Server {
            what,
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
        }
    }

    fn check_running(&mut self, log: &Path) {
        if let Some(status) = self.child.try_wait().expect("wait for a server") {
            panic!(
                "{} exited ({status}):\n{}",
                self.what,
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = i32::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on the process group of a child we spawned and have
        // not reaped (its pid is its group id).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// The namespace, its servers and the upstream DNS; all gone on drop.
pub struct World {
    /// The namespace; dropped after the servers in it.
    net: Veth,
    dir: tempfile::TempDir,
    pki: TestPki,
    dns: FakeDns,
    host_dns: Option<FakeDns>,
    servers: Vec<Server>,
    rt: tokio::runtime::Runtime,
    _lock: MutexGuard<'static, ()>,
    _block: BlockLock,
}

impl World {
    /// Build the namespace and start nginx plus `backends`.
    pub fn up(backends: &[Backend]) -> World {
        let lock = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let block = lock_block("jobs-198.51.100.64");
        let inside: Vec<String> = SITES
            .iter()
            .flat_map(|s| [format!("{}/27", s.v4), format!("{}/64", s.v6)])
            .collect();
        let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
        let routed: Vec<&str> = SITES
            .iter()
            .flat_map(|s| [s.v4, s.v6])
            .chain([RESOLVER4])
            .collect();
        let net = Veth::up(
            "egjb",
            "egjq",
            &[&format!("{HOST4}/27"), &format!("{HOST6}/64")],
            &inside,
            &routed,
        );

        let rt = crate::fake_dns::runtime();
        let dns = rt.block_on(FakeDns::start(&zone()));
        let mut world = World {
            net,
            dir: tempfile::tempdir().expect("a temp dir"),
            pki: TestPki::new(),
            dns,
            host_dns: None,
            servers: Vec::new(),
            rt,
            _lock: lock,
            _block: block,
        };
        for b in backends {
            match b {
                Backend::Git => world.start_git(),
                Backend::Pypi => world.start_pypi(),
                Backend::Npm => world.start_npm(),
                Backend::Deb => world.build_deb_repo(),
            }
        }
        world.start_nginx();
        world
    }

    /// Answers the world's names on [`HOST4`] port 53 as well (once), for
    /// jobs run without egressd: their resolv.conf names it. Returns the
    /// address.
    pub fn serve_dns_on_host(&mut self) -> SocketAddr {
        let at = SocketAddr::new(HOST4.parse().expect("an IPv4 host address"), 53);
        if self.host_dns.is_none() {
            self.host_dns = Some(self.rt.block_on(FakeDns::start_on(&zone(), Some(at))));
        }
        at
    }

    /// Panics, with its log, when the server started last has exited.
    fn check_last_running(&mut self, log: &Path) {
        if let Some(s) = self.servers.last_mut() {
            s.check_running(log);
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn spawn(&mut self, what: &'static str, args: &[&str], env: &[(&str, &str)]) -> PathBuf {
        let log = self.path(&format!("{what}.log"));
        let server = Server::spawn(what, self.net.netns(), &log, args, env);
        self.servers.push(server);
        log
    }

    /// Wait until `probe` (run in the namespace) succeeds.
    fn wait_in_ns(&mut self, what: &str, log: &Path, probe: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut args = vec!["ip", "netns", "exec", self.net.netns()];
            args.extend_from_slice(probe);
            if sh(&args).status.success() {
                return;
            }
            self.check_last_running(log);
            assert!(
                Instant::now() < deadline,
                "{what} did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The CA every server certificate chains to (PEM file).
    pub fn ca(&self) -> &Path {
        &self.pki.ca_pem_path
    }

    /// The upstream DNS egressd is given.
    pub fn dns_upstream(&self) -> SocketAddr {
        self.dns.addr()
    }

    /// Queries the upstream DNS received.
    pub fn upstream_queries(&self) -> Vec<String> {
        self.dns.queries().into_iter().map(|q| q.name).collect()
    }

    fn start_git(&mut self) {
        let repos = self.path("git");
        mkdir(&repos);
        let src = self.path("git-src");
        let git = |args: &[&str], dir: &Path| {
            run_ok(
                Command::new("git")
                    .args([
                        "-c",
                        "user.name=corpus",
                        "-c",
                        "user.email=corpus@jobs.test",
                    ])
                    .args(["-c", "init.defaultBranch=main"])
                    .args(args)
                    .current_dir(dir)
                    .env("HOME", dir),
            )
        };
        git(&["init", "-q", "--bare", "demo.git"], &repos);
        mkdir(&src);
        git(&["init", "-q"], &src);
        write(src.join("README"), format!("{GREETING}\n"));
        git(&["add", "README"], &src);
        git(&["commit", "-qm", "the corpus repository"], &src);
        git(
            &[
                "push",
                "-q",
                s(&repos.join("demo.git")),
                "HEAD:refs/heads/main",
            ],
            &src,
        );
        let sock = self.path("fcgiwrap.sock");
        let log = self.spawn(
            "fcgiwrap",
            &[
                "fcgiwrap",
                "-c",
                "2",
                "-s",
                &format!("unix:{}", sock.display()),
            ],
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            self.check_last_running(&log);
            assert!(Instant::now() < deadline, "fcgiwrap did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_pypi(&mut self) {
        let venv = pypi_venv();
        need(&venv.join("bin/pypi-server"));
        // A real wheel, built offline by setuptools.
        let src = self.path("py-src");
        mkdir(&src.join("corpus_hello"));
        write(
            src.join("corpus_hello/__init__.py"),
            format!("GREETING = {GREETING:?}\n"),
        );
        write(
            src.join("setup.py"),
            format!(
                "from setuptools import setup\nsetup(name={PACKAGE:?}, version='1.0', packages=['corpus_hello'])\n"
            ),
        );
        let packages = self.path("py-packages");
        run_ok(
            Command::new(venv.join("bin/pip"))
                .args([
                    "wheel",
                    "-q",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-index",
                ])
                .arg("-w")
                .arg(&packages)
                .arg(&src)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", self.dir.path())
                .env("PIP_CONFIG_FILE", "/dev/null"),
        );
        let server = venv.join("bin/pypi-server");
        let log = self.spawn(
            "pypiserver",
            &[
                s(&server),
                "run",
                "-i",
                "127.0.0.1",
                "-p",
                "8081",
                "--disable-fallback",
                s(&packages),
            ],
            &[],
        );
        self.wait_in_ns(
            "pypiserver",
            &log,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "http://127.0.0.1:8081/simple/",
            ],
        );
    }

    fn start_npm(&mut self) {
        let verdaccio = cache_dir().join("verdaccio/node_modules/.bin/verdaccio");
        need(&verdaccio);
        let d = self.path("verdaccio");
        mkdir(&d.join("storage"));
        write(
            d.join("config.yaml"),
            format!(
                "storage: {storage}\n\
                 auth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: 1\n\
                 uplinks: {{}}\n\
                 packages:\n  '**':\n    access: $all\n    publish: $authenticated\n\
                 log: {{ type: stdout, format: pretty, level: warn }}\n",
                storage = d.join("storage").display(),
                htpasswd = d.join("htpasswd").display(),
            ),
        );
        let config = d.join("config.yaml");
        let log = self.spawn(
            "verdaccio",
            &[
                s(&verdaccio),
                "--config",
                s(&config),
                "--listen",
                "http://127.0.0.1:4873",
            ],
            &[("HOME", s(&d))],
        );
        self.wait_in_ns(
            "verdaccio",
            &log,
            &[
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "http://127.0.0.1:4873/-/ping",
            ],
        );
        // A user, then `npm publish` of the package (in the namespace: the
        // setup is not a job, nothing filters it).
        let ns = self.net.netns().to_owned();
        let in_ns = |args: &[&str], dir: &Path| {
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &ns])
                    .args(args)
                    .current_dir(dir)
                    .env("HOME", &d)
                    .env("npm_config_update_notifier", "false"),
            )
            .stdout
        };
        let reply = in_ns(
            &[
                "curl",
                "-sf",
                "-X",
                "PUT",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"name":"corpus","password":"corpus-password"}"#,
                "http://127.0.0.1:4873/-/user/org.couchdb.user:corpus",
            ],
            &d,
        );
        let reply: serde_json::Value =
            serde_json::from_slice(&reply).expect("verdaccio answers JSON");
        let token = reply["token"].as_str().expect("verdaccio gives a token");
        let rc = d.join("publish.npmrc");
        write(&rc, format!("//127.0.0.1:4873/:_authToken={token}\n"));
        let pkg = d.join("package");
        mkdir(&pkg);
        write(
            pkg.join("package.json"),
            format!(
                r#"{{"name":"{PACKAGE}","version":"1.0.0","main":"index.js","license":"MIT"}}"#
            ),
        );
        write(
            pkg.join("index.js"),
            format!("module.exports = {GREETING:?};\n"),
        );
        in_ns(
            &[
                "npm",
                "publish",
                "--registry",
                "http://127.0.0.1:4873/",
                "--userconfig",
                s(&rc),
                "--cache",
                s(&d.join("npm-cache")),
            ],
            &pkg,
        );
    }

    fn build_deb_repo(&mut self) {
        let src = self.path("deb-src");
        mkdir(&src.join("DEBIAN"));
        mkdir(&src.join(format!("usr/share/{DEB_PACKAGE}")));
        write(
            src.join("DEBIAN/control"),
            format!(
                "Package: {DEB_PACKAGE}\nVersion: 1.0\nArchitecture: all\n\
                 Maintainer: egressd tests <tests@jobs.test>\n\
                 Description: a tiny package of the egressd job corpus\n"
            ),
        );
        write(
            src.join(format!("usr/share/{DEB_PACKAGE}/greeting")),
            format!("{GREETING}\n"),
        );
        let repo = self.path("deb");
        mkdir(&repo);
        let deb = repo.join(format!("{DEB_PACKAGE}_1.0_all.deb"));
        must(&[
            "dpkg-deb",
            "-Zgzip",
            "--root-owner-group",
            "--build",
            s(&src),
            s(&deb),
        ]);
        let index = |args: &[&str], file: &str| {
            let out = run_ok(Command::new(args[0]).args(&args[1..]).current_dir(&repo));
            write(repo.join(file), out.stdout);
        };
        index(&["dpkg-scanpackages", "--multiversion", "."], "Packages");
        index(&["apt-ftparchive", "release", "."], "Release");
    }

    fn start_nginx(&mut self) {
        let names: Vec<&str> = SITES.iter().map(|s| s.name).collect();
        let (cert, key) = self.pki.server_pem(&names);
        write(self.path("server.pem"), cert);
        write(self.path("server.key"), key);
        mkdir(&self.path("www"));
        write(self.path("www/index.html"), WEB_BODY);
        mkdir(&self.path("nginx-tmp"));
        let d = self.dir.path().display().to_string();
        let backend = run_ok(Command::new("git").arg("--exec-path"));
        let backend = format!(
            "{}/git-http-backend",
            String::from_utf8_lossy(&backend.stdout).trim()
        );
        let tls = "listen 443 ssl http2; listen [::]:443 ssl http2;";
        let mut conf = String::new();
        write!(
            conf,
            "user root;\ndaemon off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
             access_log {d}/nginx-access.log;\n\
             client_body_temp_path {d}/nginx-tmp/body;\n\
             proxy_temp_path {d}/nginx-tmp/proxy;\n\
             fastcgi_temp_path {d}/nginx-tmp/fastcgi;\n\
             uwsgi_temp_path {d}/nginx-tmp/uwsgi;\n\
             scgi_temp_path {d}/nginx-tmp/scgi;\n\
             types {{ text/html html; application/octet-stream deb; }}\n\
             ssl_certificate {d}/server.pem;\n\
             ssl_certificate_key {d}/server.key;\n\
             server {{ {tls} server_name {git};\n  location / {{\n    \
               fastcgi_pass unix:{d}/fcgiwrap.sock;\n    include /etc/nginx/fastcgi_params;\n    \
               fastcgi_param SCRIPT_FILENAME {backend};\n    \
               fastcgi_param GIT_PROJECT_ROOT {d}/git;\n    \
               fastcgi_param GIT_HTTP_EXPORT_ALL 1;\n    \
               fastcgi_param PATH_INFO $uri;\n  }}\n}}\n\
             server {{ {tls} server_name {pypi};\n  location / {{ proxy_pass http://127.0.0.1:8081; \
               proxy_set_header Host $host; proxy_set_header X-Forwarded-Proto https; }}\n}}\n\
             server {{ {tls} server_name {npm};\n  location / {{ proxy_pass http://127.0.0.1:4873; \
               proxy_set_header Host $host; proxy_set_header X-Forwarded-Proto https; }}\n}}\n\
             server {{ {tls} server_name {web} {other};\n  root {d}/www;\n}}\n\
             server {{ listen 80; listen [::]:80; server_name {deb};\n  root {d}/deb;\n}}\n\
             }}\n",
            git = GIT.name,
            pypi = PYPI.name,
            npm = NPM.name,
            web = WEB.name,
            other = OTHER.name,
            deb = DEB.name,
        )
        .expect("formatting into a String");
        let conf_path = self.path("nginx.conf");
        write(&conf_path, conf);
        let log = self.spawn("nginx", &["nginx", "-c", s(&conf_path), "-p", &d], &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [443, 80] {
            let addr = SocketAddr::new(WEB.v4.parse().expect("an IPv4 site"), port);
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                self.check_last_running(&log);
                assert!(Instant::now() < deadline, "nginx did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.servers.clear(); // before their namespace goes
    }
}
