//! The transparent path in process: a listener whose original destinations
//! come from a test [`DstSource`], the real engine, journal and relay.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egressd_audit::{HostSource, Record};
use egressd_policy::{Reason, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::origin::{DstSource, Origin};
use crate::test_support::{TestEngine, exchange, quick_limits};

/// Every accepted connection "was going to" `dst` (or nowhere known).
struct FixedDst(Option<SocketAddr>);

impl DstSource for FixedDst {
    fn lookup(&self, _: &TcpStream, _: SocketAddr, _: SocketAddr) -> Option<Origin> {
        self.0.map(|dst| Origin { dst, process: None })
    }
    fn name(&self) -> &'static str {
        "fixed"
    }
}

/// An upstream on `ip` that answers every connection with a fixed line
/// after reading whatever arrives first (or nothing, after a short wait).
async fn upstream(ip: Ipv4Addr) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
                let _ = s.write_all(b"upstream says hi").await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

struct Setup {
    test: TestEngine,
    listen: SocketAddr,
}

async fn setup(policy: &str, dst: Option<SocketAddr>) -> Setup {
    let test = TestEngine::new(policy, quick_limits());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    tokio::spawn(super::serve(
        Arc::clone(&test.engine),
        listener,
        Arc::new(FixedDst(dst)),
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

const HTTP_A: &[u8] = b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n";

#[tokio::test]
async fn an_allowed_http_host_bound_by_a_dns_answer_is_relayed() {
    let ip = Ipv4Addr::new(127, 0, 0, 21);
    let up = upstream(ip).await;
    let s = setup("version: 1\nallow: [a.test]\n", Some(up)).await;
    s.test.engine.dns_memory().remember(
        "a.test",
        &[IpAddr::V4(ip)],
        Duration::from_secs(60),
        std::time::Instant::now(),
    );
    assert_eq!(s.exchange(HTTP_A).await, b"upstream says hi");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Allow);
    assert_eq!(r.rule, "allow[0]");
    assert_eq!(r.host.as_deref(), Some("a.test"));
    assert_eq!(r.host_source, HostSource::HttpHost);
    assert_eq!(r.dst, Some(up));
}

#[tokio::test]
async fn an_allowed_name_sent_to_an_address_it_does_not_resolve_to_is_denied() {
    let up = upstream(Ipv4Addr::new(127, 0, 0, 22)).await;
    let s = setup("version: 1\nallow: [a.test]\n", Some(up)).await;
    assert_eq!(s.exchange(HTTP_A).await, b"", "reset, nothing relayed");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::SniIpMismatch);
    assert_eq!(r.rule, "allow[0]");
}

#[tokio::test]
async fn a_nameless_connection_to_an_address_answered_for_an_allowed_name_is_allowed() {
    let ip = Ipv4Addr::new(127, 0, 0, 23);
    let up = upstream(ip).await;
    let s = setup("version: 1\nallow: [a.test]\n", Some(up)).await;
    s.test.engine.dns_memory().remember(
        "a.test",
        &[IpAddr::V4(ip)],
        Duration::from_secs(60),
        std::time::Instant::now(),
    );
    // A server-speaks-first client: sends nothing.
    assert_eq!(s.exchange(b"").await, b"upstream says hi");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Allow);
    assert_eq!(r.host.as_deref(), Some("a.test"));
    assert_eq!(r.host_source, HostSource::DnsCache);
}

#[tokio::test]
async fn a_nameless_connection_to_an_unknown_address_is_denied_no_sni() {
    let up = upstream(Ipv4Addr::new(127, 0, 0, 24)).await;
    let s = setup("version: 1\nallow: [a.test]\n", Some(up)).await;
    assert_eq!(s.exchange(b"SSH-2.0-test\r\n").await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::NoSni);
}

#[tokio::test]
async fn an_unknown_original_destination_is_denied() {
    let s = setup("version: 1\nallow: [a.test]\n", None).await;
    assert_eq!(s.exchange(HTTP_A).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::OriginalDstUnknown);
    assert_eq!(r.rule, "engine");
}

#[tokio::test]
async fn failing_closed_denies_everything() {
    let ip = Ipv4Addr::new(127, 0, 0, 25);
    let up = upstream(ip).await;
    let s = setup("version: 1\nallow: [127.0.0.25]\n", Some(up)).await;
    s.test.engine.set_fail_closed(true);
    assert_eq!(s.exchange(HTTP_A).await, b"");
    let r = s.decision().await;
    assert_eq!(r.decision, Verdict::Deny);
    assert_eq!(r.reason, Reason::PolicyUnavailable);
}
