//! The test world of the job corpus: a network namespace holding real servers
//! (nginx in front of everything, `git http-backend` through fcgiwrap,
//! pypiserver, verdaccio, a Debian repository as files), and a [`FakeDns`] on
//! the host's loopback giving every name an A and an AAAA record (so glibc
//! sorts the addresses by RFC 6724, as on a real runner). Its servers run
//! from the test's start to its end and are killed, with the namespace, on
//! drop.
//!
//! Addresses: 198.51.100.64/27 and 2001:db8:7::/64, used by this module only.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::fake_dns::{FakeDns, RecordSpec};
use crate::runner::kit::{self, Veth, must, sh};
use crate::support::TestPki;

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
    pub name: &'static str,
    pub v4: &'static str,
    pub v6: &'static str,
    pub port: u16,
}

impl Site {
    /// Its URL scheme.
    pub(super) fn scheme(self) -> &'static str {
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
const SITES: [Site; 6] = [GIT, PYPI, NPM, DEB, WEB, OTHER];

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
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps.sh as root",
        path.display()
    );
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
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        kit::clear_proxy_env(&mut cmd);
        Server {
            what,
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
        }
    }

    fn assert_running(&mut self, log: &Path) {
        if let Some(status) = self.child.try_wait().unwrap() {
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
        let pgid = i32::try_from(self.child.id()).unwrap();
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
    servers: Vec<Server>,
    _rt: tokio::runtime::Runtime,
    _lock: MutexGuard<'static, ()>,
    _block: crate::support::BlockLock,
}

impl World {
    /// Build the namespace and start nginx plus `backends`.
    pub fn up(backends: &[Backend]) -> World {
        let lock = LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let block = crate::support::lock_block("jobs-198.51.100.64");
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

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let zone: Vec<(&str, RecordSpec)> = SITES
            .iter()
            .flat_map(|s| {
                [
                    (s.name, RecordSpec::addr(s.v4.parse().unwrap())),
                    (s.name, RecordSpec::addr(s.v6.parse().unwrap())),
                ]
            })
            .collect();
        let dns = rt.block_on(FakeDns::start(&zone));
        let mut world = World {
            net,
            dir: tempfile::tempdir().unwrap(),
            pki: TestPki::new(),
            dns,
            servers: Vec::new(),
            _rt: rt,
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
            if let Some(s) = self.servers.last_mut() {
                s.assert_running(log);
            }
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
    pub(super) fn upstream_queries(&self) -> Vec<String> {
        self.dns.queries().into_iter().map(|q| q.name).collect()
    }

    fn start_git(&mut self) {
        let repos = self.path("git");
        std::fs::create_dir_all(&repos).unwrap();
        let src = self.path("git-src");
        let git = |args: &[&str], dir: &Path| {
            let out = Command::new("git")
                .args([
                    "-c",
                    "user.name=corpus",
                    "-c",
                    "user.email=corpus@jobs.test",
                ])
                .args(["-c", "init.defaultBranch=main"])
                .args(args)
                .current_dir(dir)
                .env("HOME", dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        };
        git(&["init", "-q", "--bare", "demo.git"], &repos);
        std::fs::create_dir_all(&src).unwrap();
        git(&["init", "-q"], &src);
        std::fs::write(src.join("README"), format!("{GREETING}\n")).unwrap();
        git(&["add", "README"], &src);
        git(&["commit", "-qm", "the corpus repository"], &src);
        git(
            &[
                "push",
                "-q",
                repos.join("demo.git").to_str().unwrap(),
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
            self.servers.last_mut().unwrap().assert_running(&log);
            assert!(Instant::now() < deadline, "fcgiwrap did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_pypi(&mut self) {
        let venv = pypi_venv();
        need(&venv.join("bin/pypi-server"));
        // A real wheel, built offline by setuptools.
        let src = self.path("py-src");
        std::fs::create_dir_all(src.join("corpus_hello")).unwrap();
        std::fs::write(
            src.join("corpus_hello/__init__.py"),
            format!("GREETING = {GREETING:?}\n"),
        )
        .unwrap();
        std::fs::write(
            src.join("setup.py"),
            format!(
                "from setuptools import setup\nsetup(name={PACKAGE:?}, version='1.0', packages=['corpus_hello'])\n"
            ),
        )
        .unwrap();
        let packages = self.path("py-packages");
        let out = Command::new(venv.join("bin/pip"))
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
            .env("PIP_CONFIG_FILE", "/dev/null")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip wheel: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = venv.join("bin/pypi-server");
        let log = self.spawn(
            "pypiserver",
            &[
                server.to_str().unwrap(),
                "run",
                "-i",
                "127.0.0.1",
                "-p",
                "8081",
                "--disable-fallback",
                packages.to_str().unwrap(),
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
        std::fs::create_dir_all(d.join("storage")).unwrap();
        std::fs::write(
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
        )
        .unwrap();
        let config = d.join("config.yaml");
        let log = self.spawn(
            "verdaccio",
            &[
                verdaccio.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
                "--listen",
                "http://127.0.0.1:4873",
            ],
            &[("HOME", d.to_str().unwrap())],
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
            let out = Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(args)
                .current_dir(dir)
                .env("HOME", &d)
                .env("npm_config_update_notifier", "false")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
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
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        let token = reply["token"].as_str().expect("verdaccio gives a token");
        let rc = d.join("publish.npmrc");
        std::fs::write(&rc, format!("//127.0.0.1:4873/:_authToken={token}\n")).unwrap();
        let pkg = d.join("package");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(
            pkg.join("package.json"),
            format!(
                r#"{{"name":"{PACKAGE}","version":"1.0.0","main":"index.js","license":"MIT"}}"#
            ),
        )
        .unwrap();
        std::fs::write(
            pkg.join("index.js"),
            format!("module.exports = {GREETING:?};\n"),
        )
        .unwrap();
        in_ns(
            &[
                "npm",
                "publish",
                "--registry",
                "http://127.0.0.1:4873/",
                "--userconfig",
                rc.to_str().unwrap(),
                "--cache",
                d.join("npm-cache").to_str().unwrap(),
            ],
            &pkg,
        );
    }

    fn build_deb_repo(&mut self) {
        let src = self.path("deb-src");
        std::fs::create_dir_all(src.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(src.join(format!("usr/share/{DEB_PACKAGE}"))).unwrap();
        std::fs::write(
            src.join("DEBIAN/control"),
            format!(
                "Package: {DEB_PACKAGE}\nVersion: 1.0\nArchitecture: all\n\
                 Maintainer: egressd tests <tests@jobs.test>\n\
                 Description: a tiny package of the egressd job corpus\n"
            ),
        )
        .unwrap();
        std::fs::write(
            src.join(format!("usr/share/{DEB_PACKAGE}/greeting")),
            format!("{GREETING}\n"),
        )
        .unwrap();
        let repo = self.path("deb");
        std::fs::create_dir_all(&repo).unwrap();
        let deb = repo.join(format!("{DEB_PACKAGE}_1.0_all.deb"));
        must(&[
            "dpkg-deb",
            "-Zgzip",
            "--root-owner-group",
            "--build",
            src.to_str().unwrap(),
            deb.to_str().unwrap(),
        ]);
        let index = |args: &[&str], file: &str| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .current_dir(&repo)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(repo.join(file), out.stdout).unwrap();
        };
        index(&["dpkg-scanpackages", "--multiversion", "."], "Packages");
        index(&["apt-ftparchive", "release", "."], "Release");
    }

    fn start_nginx(&mut self) {
        let names: Vec<&str> = SITES.iter().map(|s| s.name).collect();
        let (cert, key) = self.pki.server_pem(&names);
        std::fs::write(self.path("server.pem"), cert).unwrap();
        std::fs::write(self.path("server.key"), key).unwrap();
        std::fs::create_dir_all(self.path("www")).unwrap();
        std::fs::write(self.path("www/index.html"), WEB_BODY).unwrap();
        std::fs::create_dir_all(self.path("nginx-tmp")).unwrap();
        let d = self.dir.path().display().to_string();
        let backend = Command::new("git").arg("--exec-path").output().unwrap();
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
        .unwrap();
        let conf_path = self.path("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = self.spawn(
            "nginx",
            &["nginx", "-c", conf_path.to_str().unwrap(), "-p", &d],
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [443, 80] {
            let addr = SocketAddr::new(WEB.v4.parse().unwrap(), port);
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                self.servers.last_mut().unwrap().assert_running(&log);
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

/// The world stays inside this module's address block (others use the rest).
#[test]
fn the_world_stays_in_its_address_block() {
    let block = u32::from("198.51.100.64".parse::<Ipv4Addr>().unwrap());
    for a in SITES.iter().map(|s| s.v4).chain([HOST4, RESOLVER4]) {
        let a: Ipv4Addr = a.parse().unwrap();
        assert_eq!(u32::from(a) & !31, block, "{a} is outside 198.51.100.64/27");
    }
    for a in SITES.iter().map(|s| s.v6).chain([HOST6]) {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(a.segments()[..4], [0x2001, 0xdb8, 7, 0], "{a}");
    }
}
