//! The SNI listener in process: the real engine, journal and peek, with a
//! resolver whose upstream refuses at once (the allowed-and-relayed path, which
//! needs names resolved, is covered end to end in `tests/it/sni_listen.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use egressd_audit::{HostSource, Record};
use egressd_policy::{Reason, Verdict};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::unroutable;
use crate::limits::Limits;
use crate::test_support::{TestEngine, exchange, hello_msg, quick_limits, records, sni_ext};

const CURL_NO_SNI: &[u8] = include_bytes!("../peek/fixtures/curl_ip_no_sni.bin");
const HTTP_A: &[u8] = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";

fn hello_for(name: &str) -> Vec<u8> {
    records(
        &hello_msg(&[0x1301], &[(0, sni_ext(&[(0, name.as_bytes())]))]),
        16384,
    )
}

fn ech_only_hello() -> Vec<u8> {
    records(
        &hello_msg(
            &[0x1301],
            &[(
                crate::peek::clienthello::EXT_ECH,
                vec![0, 0, 1, 0, 1, 42, 0, 2, 0xaa, 0xbb, 0, 3, 1, 2, 3],
            )],
        ),
        16384,
    )
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
    test: TestEngine,
    listen: SocketAddr,
}

async fn setup(policy: &str) -> Setup {
    let test = TestEngine::new(policy, quick_limits());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    tokio::spawn(super::serve(
        Arc::clone(&test.engine),
        listener,
        443,
        TaskTracker::new(),
    ));
    Setup { test, listen }
}

impl Setup {
    async fn exchange(&self, first: &[u8]) -> Vec<u8> {
        exchange(self.listen, first).await
    }

    async fn decision(&self) -> Record {
        self.test.decision().await
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
