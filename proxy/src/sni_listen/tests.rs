//! The SNI listener in process: the real engine, journal and peek, with a
//! resolver whose upstream refuses at once (the allowed-and-relayed path, which
//! needs names resolved, is covered end to end in `tests/it/sni_listen.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use egressd_audit::{HostSource, Journal, JournalConfig, Kind, Record};
use egressd_policy::{Policy, Reason, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use super::unroutable;
use crate::dns::{DnsMemory, Resolver};
use crate::engine::{Engine, EngineParts};
use crate::limits::Limits;

const CURL_NO_SNI: &[u8] = include_bytes!("../peek/fixtures/curl_ip_no_sni.bin");
const HTTP_A: &[u8] = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";

fn u16_vec(body: &[u8]) -> Vec<u8> {
    let mut v = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// One TLS record carrying a ClientHello with `extensions` (type, data).
fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(0);
    body.extend_from_slice(&u16_vec(&0x1301u16.to_be_bytes()));
    body.extend_from_slice(&[1, 0]);
    let mut exts = Vec::new();
    for (t, d) in extensions {
        exts.extend_from_slice(&t.to_be_bytes());
        exts.extend_from_slice(&u16_vec(d));
    }
    body.extend_from_slice(&u16_vec(&exts));
    let mut msg = vec![1];
    msg.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&u16_vec(&msg));
    rec
}

fn hello_for(name: &str) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&u16_vec(name.as_bytes()));
    client_hello(&[(0, u16_vec(&entry))])
}

fn ech_only_hello() -> Vec<u8> {
    client_hello(&[(
        crate::peek::clienthello::EXT_ECH,
        vec![0, 0, 1, 0, 1, 42, 0, 2, 0xaa, 0xbb, 0, 3, 1, 2, 3],
    )])
}

#[test]
fn a_hello_without_a_server_name_is_no_sni() {
    let limits = Limits::default();
    let (reason, detail) = unroutable(CURL_NO_SNI, &limits);
    assert_eq!(reason, Reason::NoSni);
    assert!(detail.contains("no server name"), "{detail}");
    let (reason, detail) = unroutable(&ech_only_hello(), &limits);
    assert_eq!(reason, Reason::NoSni);
    assert!(detail.contains("ECH"), "{detail}");
}

#[test]
fn what_is_not_tls_is_malformed_and_says_so() {
    let limits = Limits::default();
    let (reason, detail) = unroutable(HTTP_A, &limits);
    assert_eq!(reason, Reason::MalformedRequest);
    assert!(detail.contains("HTTP request"), "{detail}");
    let (reason, detail) = unroutable(b"SSH-2.0-test\r\n", &limits);
    assert_eq!(reason, Reason::MalformedRequest);
    assert!(detail.contains("not a TLS ClientHello"), "{detail}");
    let (reason, detail) = unroutable(b"", &limits);
    assert_eq!(reason, Reason::MalformedRequest);
    assert!(detail.contains("sent nothing"), "{detail}");
}

struct Setup {
    journal: Journal,
    dir: tempfile::TempDir,
    listen: SocketAddr,
}

async fn setup(policy: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let memory = Arc::new(DnsMemory::new());
    // An upstream that refuses at once: every lookup is an error.
    let resolver = Resolver::with_timeout(
        vec!["127.0.0.1:9".parse().unwrap()],
        Duration::from_millis(300),
    )
    .with_memory(Arc::clone(&memory));
    let engine = Engine::new(EngineParts {
        policy: Policy::parse("p.yaml", policy).unwrap().policy,
        journal: journal.clone(),
        dns_memory: memory,
        resolver,
        runner: "unit".into(),
        limits: Limits {
            first_byte_wait: Duration::from_millis(200),
            peek_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        upstream_mark: None,
        filter_loopback: true,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    tokio::spawn(super::serve(engine, listener, 443, TaskTracker::new()));
    Setup {
        journal,
        dir,
        listen,
    }
}

impl Setup {
    /// Connect, send `first` (if any), read everything back.
    async fn exchange(&self, first: &[u8]) -> Vec<u8> {
        let mut c = TcpStream::connect(self.listen).await.unwrap();
        if !first.is_empty() {
            c.write_all(first).await.unwrap();
        }
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
            .await
            .expect("no hang");
        got
    }

    async fn decision(&self) -> Record {
        for _ in 0..100 {
            self.journal.flush().await.unwrap();
            let recs: Vec<Record> = egressd_audit::reader::read_dir(self.dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .collect();
            if let Some(r) = recs
                .into_iter()
                .find(|r| r.kind == Kind::Tcp && !r.is_closing())
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no decision record");
    }
}

const POLICY: &str = "version: 1\nallow: [a.test]\ndeny: [b.a.test]\n";

#[tokio::test]
async fn a_denied_server_name_is_reset_and_audited_with_its_rule() {
    let s = setup(POLICY).await;
    assert_eq!(s.exchange(&hello_for("b.a.test")).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::RuleDeny);
    assert_eq!(r.rule, "deny[0]");
    assert_eq!(r.host.as_deref(), Some("b.a.test"));
    assert_eq!(r.host_source, HostSource::Sni);
    assert!(r.src.is_some_and(|a| a.ip().is_loopback()));
}

#[tokio::test]
async fn a_name_no_rule_allows_is_denied_without_being_resolved() {
    let s = setup(POLICY).await;
    assert_eq!(s.exchange(&hello_for("elsewhere.test")).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::NoRule);
    assert_eq!(r.rule, "default");
    assert_eq!(r.host_source, HostSource::Sni);
    assert_eq!(r.dst, None, "never resolved, so no destination");
}

#[tokio::test]
async fn an_allowed_name_that_cannot_be_resolved_is_upstream_failed() {
    let s = setup(POLICY).await;
    assert_eq!(s.exchange(&hello_for("a.test")).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::UpstreamFailed);
    assert_eq!(r.host.as_deref(), Some("a.test"));
    assert!(
        r.detail.as_deref().unwrap_or("").contains("cannot resolve"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_hello_without_a_server_name_is_denied_no_sni() {
    let s = setup(POLICY).await;
    assert_eq!(s.exchange(CURL_NO_SNI).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::NoSni);
    assert_eq!(r.rule, "engine");
    assert_eq!(r.host, None);
    assert_eq!(r.host_source, HostSource::None);
    assert_eq!(r.dst, None);
}

#[tokio::test]
async fn an_http_request_is_denied_even_for_an_allowed_host() {
    let s = setup(POLICY).await;
    assert_eq!(s.exchange(HTTP_A).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::MalformedRequest);
    assert_eq!(r.host, None);
}

#[tokio::test]
async fn a_silent_client_is_denied_after_the_first_byte_wait() {
    let s = setup(POLICY).await;
    assert_eq!(s.exchange(b"").await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::MalformedRequest);
    assert!(
        r.detail.as_deref().unwrap_or("").contains("sent nothing"),
        "{r:?}"
    );
}
