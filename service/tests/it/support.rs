//! Test fixtures: a fresh PostgreSQL database per test (dropped after), an
//! in-process service that can be killed abruptly and restarted on the same
//! port, and record builders.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use egressd_audit::{JobTags, Kind, Record};
use egressd_policy::{Decision, Reason, RuleId, Verdict};
use egressd_service::{Service, ServiceConfig};

/// The environment variable naming the test cluster.
pub const DB_ENV: &str = "EGRESSD_TEST_DATABASE_URL";

/// Every test finishes within this or fails.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A database of its own for one test.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

/// A fresh database on the test cluster, or `None` (with the skip line
/// printed) when no cluster is configured outside CI. In CI a missing
/// cluster fails the test.
pub async fn database() -> Option<TestDb> {
    let admin = match std::env::var(DB_ENV) {
        Ok(u) if !u.is_empty() => u,
        _ => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{DB_ENV} is not set: CI must run scripts/postgres-test.sh start and export it"
                );
            }
            println!("skipped: needs PostgreSQL (run scripts/postgres-test.sh)");
            return None;
        }
    };
    let name = format!("egressd_t_{}", ulid::Ulid::new().to_string().to_lowercase());
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database path");
    Some(TestDb {
        url: format!("{base}/{name}"),
        admin,
        name,
    })
}

impl TestDb {
    /// A plain connection for assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    /// `SELECT count(*), count(DISTINCT id) FROM audit`.
    pub async fn counts(&self) -> (i64, i64) {
        let row = self
            .client()
            .await
            .query_one("SELECT count(*), count(DISTINCT (org, id)) FROM audit", &[])
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs outside any async context guarantee: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A policy the policy crate accepts.
pub const GOOD_POLICY: &str = "version: 1\nmode: enforce\nallow:\n  - github.com\n";
/// Another valid policy.
pub const GOOD_POLICY_2: &str =
    "version: 1\nmode: enforce\nallow:\n  - github.com\n  - \"*.githubusercontent.com\"\n";
/// A policy the policy crate refuses.
pub const BROKEN_POLICY: &str = "version: 1\nallow:\n  - \"*example.com\"\nbogus_key: 1\n";

/// Tokens used by the tests.
pub const ACME_TOKEN: &str = "acme-token-0123456789";
pub const GLOBEX_TOKEN: &str = "globex-token-0123456789";

/// A configuration directory: `policies/` with acme's policy, and a tokens
/// file for acme and globex.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("policies/acme.yaml"), GOOD_POLICY).unwrap();
        std::fs::write(dir.path().join("policies/globex.yaml"), GOOD_POLICY).unwrap();
        std::fs::write(
            dir.path().join("tokens"),
            format!("# test tokens\nacme {ACME_TOKEN}\nglobex {GLOBEX_TOKEN}\n"),
        )
        .unwrap();
        ConfigDir { dir }
    }

    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    pub fn config(&self, db: &TestDb) -> ServiceConfig {
        let mut c = ServiceConfig::new(self.policies(), db.url.clone(), self.tokens());
        c.poll_interval = Duration::from_millis(50);
        c
    }
}

/// The service on a thread with its own runtime: [`TestServer::kill`]
/// drops that runtime, cutting every connection and request mid-flight like
/// a killed process.
pub struct TestServer {
    pub addr: SocketAddr,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Start on `addr` (port 0 for any); returns once it accepts.
    pub async fn start(config: ServiceConfig, addr: SocketAddr) -> TestServer {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let service = Service::start(&config).await.expect("service starts");
                let listener = bind_retrying(addr).await;
                let _ = ready_tx.send(listener.local_addr().unwrap());
                tokio::spawn(service.run(listener, None, std::future::pending()));
                let _ = kill_rx.await;
            });
            rt.shutdown_background();
        });
        let addr = ready_rx.await.expect("service thread ready");
        TestServer {
            addr,
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop abruptly: every task of the service is dropped where it is.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(k) = self.kill.take() {
            let _ = k.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Rebinding a port just released may briefly fail.
async fn bind_retrying(addr: SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("cannot bind {addr}");
}

/// A record of `runner` in `repository` for `host` at `ts`.
pub fn record(runner: &str, repository: &str, host: &str, verdict: Verdict, ts: &str) -> Record {
    let reason = match verdict {
        Verdict::Allow => Reason::RuleAllow,
        Verdict::Deny => Reason::NoRule,
    };
    let d = Decision {
        verdict,
        enforce_would: None,
        reason,
        rule: RuleId::Default,
    };
    let mut r = Record::new(runner, Kind::Tcp, &d);
    r.ts = ts.parse().unwrap();
    r.host = Some(host.to_owned());
    r.host_source = egressd_audit::HostSource::Sni;
    r.dst = Some("198.51.100.7:443".parse().unwrap());
    r.job = Some(
        JobTags {
            repository: Some(repository.to_owned()),
            workflow: Some("ci".into()),
            run_id: Some("42".into()),
            run_attempt: Some("1".into()),
            job: Some("build".into()),
        }
        .into(),
    );
    r
}

/// Records as a JSON Lines body.
pub fn jsonl(records: &[Record]) -> String {
    let mut s = String::new();
    for r in records {
        s.push_str(&serde_json::to_string(r).unwrap());
        s.push('\n');
    }
    s
}

/// Ids of a JSON Lines export.
pub fn ids_of_jsonl(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let r: Record = serde_json::from_str(l).unwrap();
            r.id.to_string()
        })
        .collect()
}

/// Ids of a CSV export (second column), checking the header.
pub fn ids_of_csv(text: &str) -> Vec<String> {
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let header = rdr.headers().unwrap().clone();
    assert_eq!(header.get(1), Some("id"));
    rdr.records().map(|r| r.unwrap()[1].to_owned()).collect()
}

/// Write a file atomically (so the poller never reads half of it).
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
