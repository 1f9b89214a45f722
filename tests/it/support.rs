//! What every end-to-end module shares: a running `egressd run` guarded by
//! a process handle (killed on drop), its audit journal, TLS servers on
//! loopback addresses, and curl; plus, from `egressd_e2e`, the real
//! `egressd` binary, the test PKI and the address-block locks.

#![allow(dead_code, reason = "each test module uses a different part")]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd_audit::Record;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub use egressd_e2e::bin::egressd_bin;
pub use egressd_e2e::blocks::{BlockLock, lock_block};
pub use egressd_e2e::cmd::PROXY_ENV;
pub use egressd_e2e::pki::TestPki;

/// The addresses a running `egressd run` bound, read from its ready file.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ready {
    /// Its pid.
    pub pid: u32,
    /// The CONNECT proxy.
    pub explicit: Option<SocketAddr>,
    /// The transparent listener.
    pub listen: Option<SocketAddr>,
    /// The DNS server (UDP and TCP).
    pub dns: Option<SocketAddr>,
    /// The metrics endpoint.
    pub metrics: Option<SocketAddr>,
}

/// How to start `egressd run`: a policy and options, in a fresh temp dir.
#[derive(Debug, Clone)]
pub struct ProxyBuilder {
    policy: String,
    args: Vec<String>,
}

impl ProxyBuilder {
    /// `egressd run --no-ebpf --explicit 127.0.0.1:0 --filter-loopback` with
    /// this policy, a temp audit dir and a ready file.
    pub fn new(policy: &str) -> Self {
        ProxyBuilder {
            policy: policy.to_owned(),
            args: vec![
                "--no-ebpf".into(),
                "--explicit".into(),
                "127.0.0.1:0".into(),
                "--filter-loopback".into(),
                "--runner".into(),
                "e2e-runner".into(),
            ],
        }
    }

    /// Add command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Resolve names through `dns` (a [`crate::fake_dns::FakeDns`] address).
    pub fn dns_upstream(self, dns: SocketAddr) -> Self {
        self.args(["--dns-upstream".to_owned(), dns.to_string()])
    }

    /// Start it and wait (bounded) until its ready file appears.
    pub fn start(self) -> Proxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, &self.policy).expect("write the policy");
        let audit = dir.path().join("audit");
        let ready_path = dir.path().join("ready.json");
        let log = dir.path().join("egressd.log");
        let log_file = std::fs::File::create(&log).expect("create the log file");
        let mut cmd = Command::new(egressd_bin());
        cmd.arg("run")
            .arg("--policy")
            .arg(&policy)
            .arg("--audit-dir")
            .arg(&audit)
            .arg("--ready-file")
            .arg(&ready_path)
            .args(&self.args)
            .env("RUST_LOG", "egressd=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for v in PROXY_ENV {
            cmd.env_remove(v);
        }
        let child = cmd.spawn().expect("spawn egressd");
        let mut proxy = Proxy {
            child,
            dir,
            policy,
            audit,
            ready_path,
            log,
            ready: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&proxy.ready_path)
                && let Ok(ready) = serde_json::from_str::<Ready>(&text)
            {
                proxy.ready = Some(ready);
                return proxy;
            }
            if let Ok(Some(status)) = proxy.child.try_wait() {
                panic!(
                    "egressd exited ({status}) before it was ready:\n{}",
                    proxy.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "egressd not ready within 30 s:\n{}",
                proxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `egressd run`, killed when dropped.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    dir: tempfile::TempDir,
    /// The policy file it watches.
    pub policy: PathBuf,
    /// Its audit directory.
    pub audit: PathBuf,
    /// Its ready file.
    pub ready_path: PathBuf,
    log: PathBuf,
    ready: Option<Ready>,
}

impl Proxy {
    /// What its ready file said.
    pub fn ready(&self) -> &Ready {
        self.ready.as_ref().expect("started proxies are ready")
    }

    /// The CONNECT proxy address.
    pub fn explicit(&self) -> SocketAddr {
        self.ready().explicit.expect("started with --explicit")
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The temp dir holding its files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Send a signal.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) with a pid we spawned and still own (not reaped).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for egressd") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "egressd did not exit within 30 s of SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every record in its journal so far (torn last line skipped).
    pub fn records(&self) -> Vec<Record> {
        match egressd_audit::reader::read_dir(&self.audit) {
            Ok(it) => it.filter_map(Result::ok).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Wait (bounded: the journal syncs every 200 ms) for a record matching
    /// `pred`; panic with every record seen when none comes.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Record) -> bool) -> Record {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let recs = self.records();
            if let Some(r) = recs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no audit record {what} within 20 s; records:\n{}\nlog:\n{}",
                recs.iter()
                    .map(|r| serde_json::to_string(r).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TLS server (answering "hello tls" for every name `config` serves) and a
/// TCP echo, both on every address of the network namespace `ns`, served by
/// a thread inside it; stopped (and the thread joined) on drop.
pub struct NsServers {
    /// The TLS server's port.
    pub tls_port: u16,
    /// The echo server's port.
    pub echo_port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsServers {
    /// Start both in `ns` (a name under /run/netns); returns once they listen.
    pub fn start(ns: &str, config: Arc<rustls::ServerConfig>) -> NsServers {
        use std::os::fd::AsRawFd as _;

        let (ports_tx, ports_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace");
        // Sockets belong to the namespace of the thread that creates them:
        // this thread enters the namespace and serves from there.
        let thread = std::thread::spawn(move || {
            // SAFETY: setns(2) on an open namespace file; it affects this
            // thread only.
            let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                // `::` takes IPv4 too (dual stack): one server per kind
                // answers on every address of the namespace.
                let unspecified = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
                let tls = TlsServer::start(unspecified, config, "hello tls").await;
                let echo = TcpListener::bind("[::]:0").await.expect("bind the echo");
                let echo_port = echo.local_addr().expect("its address").port();
                tokio::spawn(async move {
                    while let Ok((mut s, _)) = echo.accept().await {
                        tokio::spawn(async move {
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        });
                    }
                });
                ports_tx
                    .send((tls.port(), echo_port))
                    .expect("the starter waits");
                let _ = stop_rx.await;
                drop(tls);
            });
        });
        let (tls_port, echo_port) = ports_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the namespace servers started");
        NsServers {
            tls_port,
            echo_port,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for NsServers {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TLS server on `ip:0` that answers every HTTP request with `body`.
pub struct TlsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    /// Start it on `ip` (any 127.0.0.0/8 address works on Linux loopback).
    pub async fn start(ip: IpAddr, config: Arc<rustls::ServerConfig>, body: &str) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind the TLS server");
        let addr = listener.local_addr().expect("its address");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let body = body.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsServer { addr, task }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What curl reported.
#[derive(Debug)]
pub struct CurlOutcome {
    /// Its exit status.
    pub status: ExitStatus,
    /// The response body.
    pub body: String,
    /// The proxy's answer to CONNECT (`200`, `403`, or `000` when none).
    pub connect_code: String,
    /// curl's error text.
    pub stderr: String,
}

/// `curl --proxy http://PROXY URL` trusting `ca` (bounded by `--max-time`),
/// run off the async runtime's threads.
pub async fn curl_via(proxy: SocketAddr, ca: &Path, url: &str, extra: &[&str]) -> CurlOutcome {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--noproxy", ""])
        .arg("--proxy")
        .arg(format!("http://{proxy}"))
        .arg("--cacert")
        .arg(ca)
        .args(["-w", "\n%{http_connect}"])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null());
    for v in PROXY_ENV {
        cmd.env_remove(v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("the curl task")
        .expect("curl runs (install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlOutcome {
        status: out.status,
        body: body.to_owned(),
        connect_code: code.trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Send a CONNECT request on a fresh connection to `proxy` and return the
/// stream with the proxy's response head.
pub async fn raw_connect(proxy: SocketAddr, target: &str) -> (tokio::net::TcpStream, String) {
    let mut s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("send CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}
