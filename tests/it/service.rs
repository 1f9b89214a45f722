//! `egressd serve`, the real binary against a real PostgreSQL
//! (`EGRESSD_TEST_DATABASE_URL`, started by `scripts/postgres-test.sh`):
//! configuration refused before binding, the HTTP API with its auth rules,
//! policy hot reload, TLS, and a runner's shipper delivering its journal
//! through a service that is killed (SIGKILL) and restarted mid-run.
//!
//! Each test uses orgs of its own, so tests share the database safely.
//! Without the variable a test prints one `skipped:` line (fails in CI).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use egressd_audit::ship::{Ack, Batch, ShipConfig, Shipper, Sink, SinkError};
use egressd_audit::{Journal, JournalConfig, Kind, Record};
use egressd_policy::{Decision, Reason, RuleId, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::support::egressd_bin;

const DB_ENV: &str = "EGRESSD_TEST_DATABASE_URL";
const GOOD_POLICY: &str = "version: 1\nmode: enforce\nallow:\n  - github.com\n";
const GOOD_POLICY_2: &str = "version: 1\nmode: enforce\nallow:\n  - github.com\n  - example.org\n";
const BROKEN_POLICY: &str = "version: 1\nallow:\n  - \"*example.com\"\n";
/// Every test ends within this.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn database_url() -> Option<String> {
    match std::env::var(DB_ENV) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "{DB_ENV} is not set: CI must run scripts/postgres-test.sh start and export it"
            );
            println!("skipped: needs PostgreSQL (run scripts/postgres-test.sh)");
            None
        }
    }
}

/// A unique org name per test and run.
pub(crate) fn org(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// Configuration files for one `egressd serve`: policies/ and tokens.
pub(crate) struct Config {
    dir: tempfile::TempDir,
}

impl Config {
    /// Policies for `orgs` (all [`GOOD_POLICY`]) and a token `ORG-token` each.
    pub(crate) fn new(orgs: &[&str]) -> Config {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let mut tokens = String::from("# org token\n");
        for o in orgs {
            std::fs::write(dir.path().join(format!("policies/{o}.yaml")), GOOD_POLICY).unwrap();
            tokens.push_str(&format!("{o} {}\n", token(o)));
        }
        std::fs::write(dir.path().join("tokens"), tokens).unwrap();
        Config { dir }
    }

    pub(crate) fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }
}

pub(crate) fn token(org: &str) -> String {
    format!("{org}-token")
}

/// A free loopback port (bound then released).
pub(crate) fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A running `egressd serve`, killed on drop.
pub(crate) struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Serve {
    /// Start `bin serve` (get `bin` from [`egressd_bin`] before a test's
    /// timeout starts: the first call builds the binary).
    pub(crate) fn start(
        bin: &Path,
        cfg: &Config,
        db: &str,
        addr: SocketAddr,
        extra: &[&str],
    ) -> Serve {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let log = cfg.dir.path().join(format!("serve-{n}.log"));
        let child = Command::new(bin)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--policies")
            .arg(cfg.policies())
            .arg("--database")
            .arg(db)
            .arg("--tokens")
            .arg(cfg.tokens())
            .args(["--poll-ms", "50"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Serve { child, addr, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (bounded) until `/healthz` answers over plain HTTP.
    pub(crate) async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = request(self.addr, "GET", "/healthz", None, &[], b"").await
                && r.status == 200
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("egressd serve exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "egressd serve not ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no graceful anything.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 reply.
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request on a fresh connection (`Connection: close`), with a bound.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    exchange(stream, addr, method, path, token, headers, body).await
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let io = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(20), io)
        .await
        .map_err(|_| std::io::Error::other("request timed out"))??;
    parse_reply(&raw).ok_or_else(|| std::io::Error::other("malformed HTTP reply"))
}

fn parse_reply(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

fn record(runner: &str, repository: &str, verdict: Verdict, ts: Option<&str>) -> Record {
    let d = Decision {
        verdict,
        enforce_would: None,
        reason: if verdict == Verdict::Allow {
            Reason::RuleAllow
        } else {
            Reason::NoRule
        },
        rule: RuleId::Default,
    };
    let mut r = Record::new(runner, Kind::Tcp, &d);
    if let Some(ts) = ts {
        r.ts = ts.parse().unwrap();
    }
    r.host = Some("github.com".into());
    r.job = Some(
        egressd_audit::JobTags {
            repository: Some(repository.into()),
            ..Default::default()
        }
        .into(),
    );
    r
}

fn jsonl(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

pub(crate) fn export_ids(reply: &Reply) -> Vec<String> {
    reply
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Record>(l).unwrap().id.to_string())
        .collect()
}

#[test]
fn serve_refuses_bad_configuration_with_exit_2() {
    let cfg = Config::new(&["acme"]);
    std::fs::write(cfg.tokens(), "acme\n").unwrap();
    let out = Command::new(egressd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .arg("--policies")
        .arg(cfg.policies())
        .arg("--tokens")
        .arg(cfg.tokens())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tokens:1: expected `ORG TOKEN`"),
        "{stderr}"
    );

    let out = Command::new(egressd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .arg("--policies")
        .arg(cfg.dir.path().join("missing"))
        .arg("--tokens")
        .arg(cfg.tokens())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Valid configuration, unreachable database: a runtime failure.
    std::fs::write(cfg.tokens(), "acme acme-token\n").unwrap();
    let out = Command::new(egressd_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "postgres://nobody@127.0.0.1:1/none",
        ])
        .arg("--policies")
        .arg(cfg.policies())
        .arg("--tokens")
        .arg(cfg.tokens())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database"),
        "{out:?}"
    );
}

#[tokio::test]
async fn serve_api_auth_policies_ingest_and_export() {
    let Some(db) = database_url() else { return };
    let bin = egressd_bin();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (a, b) = (org("acme"), org("globex"));
        let cfg = Config::new(&[&a, &b]);
        let mut serve = Serve::start(&bin, &cfg, &db, free_addr(), &[]);
        serve.wait_ready().await;
        let addr = serve.addr;
        let (ta, tb) = (token(&a), token(&b));

        // Nothing without a valid token.
        for (m, p) in [
            ("GET", format!("/v1/orgs/{a}/policy")),
            ("GET", "/v1/audit".into()),
            ("POST", "/v1/audit".into()),
        ] {
            for t in [None, Some("nope")] {
                let r = request(addr, m, &p, t, &[], b"").await.unwrap();
                assert_eq!(r.status, 401, "{m} {p} {t:?}");
            }
        }
        // Another org's policy: 403.
        let r = request(
            addr,
            "GET",
            &format!("/v1/orgs/{a}/policy"),
            Some(&tb),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 403);

        // Policy with ETag and 304.
        let r = request(
            addr,
            "GET",
            &format!("/v1/orgs/{a}/policy"),
            Some(&ta),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), GOOD_POLICY);
        let etag = r.header("etag").unwrap().to_owned();
        let r = request(
            addr,
            "GET",
            &format!("/v1/orgs/{a}/policy"),
            Some(&ta),
            &[("If-None-Match", &etag)],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 304);

        // A broken file is refused and logged; the last good one is served.
        let file = cfg.policies().join(format!("{a}.yaml"));
        std::fs::write(file.with_extension("tmp"), BROKEN_POLICY).unwrap();
        std::fs::rename(file.with_extension("tmp"), &file).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !serve.log_text().contains("policy file refused") {
            assert!(
                Instant::now() < deadline,
                "refusal not logged:\n{}",
                serve.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            serve.log_text().contains(&format!("{a}.yaml:3:")),
            "{}",
            serve.log_text()
        );
        let r = request(
            addr,
            "GET",
            &format!("/v1/orgs/{a}/policy"),
            Some(&ta),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!((r.status, r.text()), (200, GOOD_POLICY.to_owned()));
        // A good one replaces it.
        std::fs::write(file.with_extension("tmp"), GOOD_POLICY_2).unwrap();
        std::fs::rename(file.with_extension("tmp"), &file).unwrap();
        loop {
            let r = request(
                addr,
                "GET",
                &format!("/v1/orgs/{a}/policy"),
                Some(&ta),
                &[("If-None-Match", &etag)],
                b"",
            )
            .await
            .unwrap();
            if r.status == 200 {
                assert_eq!(r.text(), GOOD_POLICY_2);
                break;
            }
            assert!(Instant::now() < deadline, "new policy not served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Ingest, then the same batch again.
        let records: Vec<Record> = (0..40)
            .map(|i| {
                let repo = if i % 2 == 0 { "o/one" } else { "o/two" };
                let v = if i % 5 == 0 {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                };
                record(
                    "r1",
                    repo,
                    v,
                    Some(&format!("2026-11-26T10:00:{i:02}.000000Z")),
                )
            })
            .collect();
        let body = jsonl(&records);
        let r = request(addr, "POST", "/v1/audit", Some(&ta), &[], body.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            (
                r.json()["accepted"].as_u64(),
                r.json()["duplicate"].as_u64()
            ),
            (Some(40), Some(0))
        );
        let r = request(addr, "POST", "/v1/audit", Some(&ta), &[], body.as_bytes())
            .await
            .unwrap();
        assert_eq!(
            (
                r.json()["accepted"].as_u64(),
                r.json()["duplicate"].as_u64()
            ),
            (Some(0), Some(40))
        );

        // Export by repository and decision, JSON Lines and CSV.
        let want: Vec<String> = records
            .iter()
            .filter(|r| {
                r.job.as_ref().and_then(|j| j.repository.as_deref()) == Some("o/two")
                    && r.decision == Verdict::Allow
            })
            .map(|r| r.id.to_string())
            .collect();
        let r = request(
            addr,
            "GET",
            "/v1/audit?repository=o/two&decision=allow",
            Some(&ta),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(export_ids(&r), want);
        let r = request(
            addr,
            "GET",
            "/v1/audit?repository=o/two&decision=allow&format=csv",
            Some(&ta),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert!(r.header("content-type").unwrap().starts_with("text/csv"));
        let text = r.text();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            egressd_audit::export::CSV_COLUMNS.join(",")
        );
        let ids: Vec<String> = lines
            .map(|l| l.split(',').nth(1).unwrap().to_owned())
            .collect();
        assert_eq!(ids, want);
        // The other org sees none of it.
        let r = request(addr, "GET", "/v1/audit", Some(&tb), &[], b"")
            .await
            .unwrap();
        assert_eq!((r.status, r.body.len()), (200, 0));

        // SIGTERM: a clean stop.
        let pid = libc::pid_t::try_from(serve.child.id()).unwrap();
        // SAFETY: kill(2) on the child this test spawned and has not reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = serve.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status}\n{}", serve.log_text());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn serve_over_tls() {
    let Some(db) = database_url() else { return };
    let bin = egressd_bin();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let a = org("acme");
        let cfg = Config::new(&[&a]);
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(cfg.dir.path().join("tls.crt"), cert.cert.pem()).unwrap();
        std::fs::write(
            cfg.dir.path().join("tls.key"),
            cert.signing_key.serialize_pem(),
        )
        .unwrap();
        let crt = cfg.dir.path().join("tls.crt");
        let key = cfg.dir.path().join("tls.key");
        let addr = free_addr();
        let mut serve = Serve::start(
            &bin,
            &cfg,
            &db,
            addr,
            &[
                "--tls-cert",
                crt.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        );
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let deadline = Instant::now() + Duration::from_secs(30);
        let reply = loop {
            let attempt = async {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await?;
                exchange(
                    tls,
                    addr,
                    "GET",
                    &format!("/v1/orgs/{a}/policy"),
                    Some(&token(&a)),
                    &[],
                    b"",
                )
                .await
            };
            match attempt.await {
                Ok(r) => break r,
                Err(e) => {
                    if let Ok(Some(status)) = serve.child.try_wait() {
                        panic!("egressd serve exited with {status}:\n{}", serve.log_text());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no TLS answer: {e}\n{}",
                        serve.log_text()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!((reply.status, reply.text()), (200, GOOD_POLICY.to_owned()));
        // Plain HTTP on the TLS port gets nothing useful.
        let plain = request(addr, "GET", "/healthz", None, &[], b"").await;
        assert!(plain.map(|r| r.status != 200).unwrap_or(true));
    })
    .await
    .expect("test timed out");
}

/// The shipper's sink over this file's minimal HTTP client.
struct HttpSink {
    addr: SocketAddr,
    token: String,
}

impl Sink for HttpSink {
    async fn send(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let reply = request(
            self.addr,
            "POST",
            "/v1/audit",
            Some(&self.token),
            &[],
            batch.body.as_bytes(),
        )
        .await
        .map_err(|e| SinkError::Retry(e.to_string()))?;
        match reply.status {
            200 => {
                let v = reply.json();
                Ok(Ack {
                    accepted: v["accepted"].as_u64().unwrap_or(0),
                    duplicate: v["duplicate"].as_u64().unwrap_or(0),
                    rejected: v["rejected"].as_array().map_or(0, |a| a.len() as u64),
                })
            }
            400 => Err(SinkError::Refused(reply.text())),
            s => Err(SinkError::Retry(format!("HTTP {s}: {}", reply.text()))),
        }
    }
}

async fn produce(journal: Journal, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        // `Record::new` stamps the current time.
        let r = record("runner-1", "o/app", Verdict::Allow, None);
        ids.push(r.id.to_string());
        journal.append(r).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    journal.flush().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_ships_through_a_killed_and_restarted_service() {
    let Some(db) = database_url() else { return };
    let bin = egressd_bin();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let a = org("acme");
        let cfg = Config::new(&[&a]);
        let addr = free_addr();
        let mut serve = Serve::start(&bin, &cfg, &db, addr, &[]);
        serve.wait_ready().await;

        let audit = tempfile::tempdir().unwrap();
        let journal = Journal::open(JournalConfig::new(audit.path())).unwrap();
        let config = ShipConfig {
            max_records: 25,
            poll_interval: Duration::from_millis(50),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            ..ShipConfig::default()
        };
        let sink = HttpSink {
            addr,
            token: token(&a),
        };
        let shipper = Shipper::start(audit.path().to_owned(), sink, config).unwrap();
        let producer = tokio::spawn(produce(journal.clone(), 500));

        tokio::time::sleep(Duration::from_millis(200)).await;
        serve.kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let mut serve = Serve::start(&bin, &cfg, &db, addr, &[]);
        serve.wait_ready().await;

        let mut ids = producer.await.unwrap();
        let stats = shipper
            .flush(tokio::time::Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            stats.retries > 0,
            "the service was down while shipping: {stats:?}"
        );
        shipper.stop().await;
        journal.close().await.unwrap();
        assert!(checkpoint_exists(audit.path()));

        let r = request(addr, "GET", "/v1/audit", Some(&token(&a)), &[], b"")
            .await
            .unwrap();
        let mut got = export_ids(&r);
        got.sort();
        ids.sort();
        assert_eq!(got.len(), 500, "no record lost, none duplicated");
        assert_eq!(got, ids);
    })
    .await
    .expect("test timed out");
}

fn checkpoint_exists(dir: &Path) -> bool {
    dir.join(egressd_audit::ship::CHECKPOINT_FILE).exists()
}

/// Run `egressd` with `args` off the async threads; (exit code, stdout, stderr).
async fn egressd(bin: &Path, args: Vec<String>) -> (Option<i32>, Vec<u8>, String) {
    let bin = bin.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Records of two repositories, one with every optional field and text that
/// CSV must quote, in increasing time (journal order = the service's order).
fn export_records() -> Vec<Record> {
    let mut out = Vec::new();
    for (i, repo) in ["acme/web", "acme/api", "acme/web", "acme/web", "acme/api"]
        .into_iter()
        .enumerate()
    {
        let verdict = if i % 2 == 0 {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        let ts = format!("2026-11-26T21:58:1{i}.12345{i}Z");
        out.push(record("runner-7", repo, verdict, Some(&ts)));
    }
    let full = &mut out[2];
    full.enforce_would = Some(Verdict::Deny);
    full.host = Some("wëird,\"host\"".into());
    full.dst = Some("[2001:db8::1]:443".parse().unwrap());
    full.src = Some("10.1.0.2:40312".parse().unwrap());
    full.process = Some(
        egressd_audit::Process {
            pid: Some(4242),
            comm: Some("c,u\"rl".into()),
            exe: Some("/usr/bin/curl".into()),
            cgroup: Some("/system.slice/runner.service".into()),
            container: None,
        }
        .into(),
    );
    full.bytes_up = Some(517);
    full.bytes_down = Some(4096);
    full.duration_ms = Some(250);
    full.detail = Some("two\nlines\ttab \\ and \u{1}".into());
    if let Some(job) = &mut full.job {
        let job = std::sync::Arc::make_mut(job);
        job.workflow = Some("CI".into());
        job.run_id = Some("1234567890".into());
        job.run_attempt = Some("1".into());
        job.job = Some("build".into());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_from_the_server_matches_the_local_export() {
    let Some(db) = database_url() else { return };
    let bin = egressd_bin();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let (a, b) = (org("acme"), org("globex"));
        let cfg = Config::new(&[&a, &b]);
        let mut serve = Serve::start(&bin, &cfg, &db, free_addr(), &[]);
        serve.wait_ready().await;
        let addr = serve.addr;
        let records = export_records();

        // The same records in a local journal and in the service (org a);
        // org b holds one more acme/web record that a's token must not see.
        let audit = tempfile::tempdir().unwrap();
        let journal = Journal::open(JournalConfig::new(audit.path())).unwrap();
        for r in &records {
            journal.append(r.clone()).await.unwrap();
        }
        journal.close().await.unwrap();
        let r = request(
            addr,
            "POST",
            "/v1/audit",
            Some(&token(&a)),
            &[],
            jsonl(&records).as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let other = [record("runner-9", "acme/web", Verdict::Deny, None)];
        let r = request(
            addr,
            "POST",
            "/v1/audit",
            Some(&token(&b)),
            &[],
            jsonl(&other).as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());

        let token_file = cfg.dir.path().join("token-a");
        std::fs::write(&token_file, format!("{}\n", token(&a))).unwrap();
        let url = format!("http://{addr}");
        let server_args = |more: &[&str]| {
            let mut v = strings(&["audit", "export", "--server", &url, "--token-file"]);
            v.push(token_file.display().to_string());
            v.extend(strings(more));
            v
        };
        let local_args = |more: &[&str]| {
            let mut v = strings(&["audit", "export", "--dir"]);
            v.push(audit.path().display().to_string());
            v.extend(strings(more));
            v
        };

        // JSON Lines: exactly acme/web's records of org a, in order, and
        // byte for byte what the local export writes.
        let (code, server_jsonl, err) = egressd(
            &bin,
            server_args(&["--repository", "acme/web", "--format", "jsonl"]),
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        let web: Vec<&Record> = records
            .iter()
            .filter(|r| r.job.as_ref().and_then(|j| j.repository.as_deref()) == Some("acme/web"))
            .collect();
        let want: String = web
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect();
        assert_eq!(String::from_utf8(server_jsonl.clone()).unwrap(), want);
        let (code, local_jsonl, err) =
            egressd(&bin, local_args(&["--repository", "acme/web"])).await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            server_jsonl, local_jsonl,
            "JSON Lines differ between local and server export"
        );

        // CSV to a file: the same bytes as the local CSV export.
        let csv_path = cfg.dir.path().join("web.csv");
        let (code, _, err) = egressd(
            &bin,
            server_args(&[
                "--repository",
                "acme/web",
                "--format",
                "csv",
                "--output",
                csv_path.to_str().unwrap(),
            ]),
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        let server_csv = std::fs::read(&csv_path).unwrap();
        let (code, local_csv, err) = egressd(
            &bin,
            local_args(&["--repository", "acme/web", "--format", "csv"]),
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            String::from_utf8(server_csv).unwrap(),
            String::from_utf8(local_csv).unwrap(),
            "CSV differs between local and server export"
        );

        // The other filters reach the service.
        let (code, out, err) = egressd(&bin, server_args(&["--decision", "deny"])).await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);
        let (code, out, err) = egressd(
            &bin,
            server_args(&[
                "--since",
                "2026-11-26T21:58:12Z",
                "--until",
                "2026-11-26T21:58:14Z",
                "--host",
                "W?IRD,*",
            ]),
        )
        .await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            want.lines().nth(1).unwrap().to_owned() + "\n"
        );

        // A token the service does not know: exit 1, says so.
        let bad = cfg.dir.path().join("token-bad");
        std::fs::write(&bad, "nope\n").unwrap();
        let (code, _, err) = egressd(
            &bin,
            strings(&[
                "audit",
                "export",
                "--server",
                &url,
                "--token-file",
                bad.to_str().unwrap(),
            ]),
        )
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("did not accept the token"), "{err}");

        // Nothing listening: exit 1 with what to check.
        let gone = format!("http://{}", free_addr());
        let (code, _, err) = egressd(
            &bin,
            strings(&[
                "audit",
                "export",
                "--server",
                &gone,
                "--token-file",
                token_file.to_str().unwrap(),
            ]),
        )
        .await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("check the --server URL"), "{err}");

        // --dir and --server exclude each other; --server needs a token.
        let mut both = server_args(&["--dir"]);
        both.push(audit.path().display().to_string());
        let (code, _, err) = egressd(&bin, both).await;
        assert_eq!(code, Some(2), "{err}");
        let (code, _, err) = egressd(&bin, strings(&["audit", "export", "--server", &url])).await;
        assert_eq!(code, Some(2), "{err}");
    })
    .await
    .expect("test timed out");
}

/// `egressd run --audit-server URL --token-file FILE`: every record of the
/// run reaches the service exactly once, and SIGTERM waits for the last ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ships_its_records_to_the_audit_server() {
    let Some(db) = database_url() else { return };
    let bin = egressd_bin();
    tokio::time::timeout(TEST_TIMEOUT, async {
        let a = org("run");
        let cfg = Config::new(&[&a]);
        let addr = free_addr();
        let mut serve = Serve::start(&bin, &cfg, &db, addr, &[]);
        serve.wait_ready().await;
        let secrets = tempfile::tempdir().unwrap();
        let token_file = secrets.path().join("token");
        std::fs::write(&token_file, token(&a)).unwrap();

        let mut proxy = crate::support::ProxyBuilder::new("version: 1\nallow: [ok.test]\n")
            .dns_upstream("127.0.0.1:9".parse().unwrap())
            .args([
                "--audit-server".to_owned(),
                format!("http://{addr}"),
                "--token-file".to_owned(),
                token_file.display().to_string(),
            ])
            .start();
        for port in [1, 2, 3] {
            let (_s, head) =
                crate::support::raw_connect(proxy.explicit(), &format!("127.0.0.9:{port}")).await;
            assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        }
        assert!(proxy.terminate().success(), "{}", proxy.log_text());

        let mut local: Vec<String> = proxy.records().iter().map(|r| r.id.to_string()).collect();
        assert!(
            local.len() >= 3,
            "one record per CONNECT at least: {local:?}"
        );
        let r = request(addr, "GET", "/v1/audit", Some(&token(&a)), &[], b"")
            .await
            .unwrap();
        let mut got = export_ids(&r);
        got.sort();
        local.sort();
        assert_eq!(
            got, local,
            "every record of the run reached the service, once"
        );
    })
    .await
    .expect("test timed out");
}
