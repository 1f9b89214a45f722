//! The SNI listener end to end (no root): the real `egressd run --no-ebpf
//! --sni-listen`, TLS clients that connect to it as if DNS or /etc/hosts had
//! steered the name there (a rustls client, and curl with `--connect-to`),
//! TLS servers on loopback addresses with certificates from a test CA, names
//! from a fake DNS server, and `--filter-loopback` so the policy decides
//! about those servers. Every case checks the audit record it produced.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use egressd_audit::{HostSource, Kind, Record};
use egressd_policy::{Reason, Verdict};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fake_dns::FakeDns;
use crate::support::{Proxy, ProxyBuilder, TestPki, TlsServer};

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const DENIED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// What `private.test` resolves to: an allowed name that may not open it.
const PRIVATE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

/// allow[0] a.test, allow[1] private.test; deny[0] denied.test.
const POLICY: &str =
    "version: 1\nallow:\n  - a.test\n  - private.test\ndeny:\n  - host: denied.test\n";

/// The addresses the SNI listeners were bound to, from the ready file.
#[derive(Debug, serde::Deserialize)]
struct SniReady {
    sni: Vec<SocketAddr>,
}

/// A TLS server for the allowed name, its CA, a DNS zone naming it and the
/// denied names, and egressd with an SNI listener dialling the server's port.
struct World {
    pki: TestPki,
    a: TlsServer,
    _dns: FakeDns,
    proxy: Proxy,
    sni: SocketAddr,
}

impl World {
    async fn new() -> World {
        let pki = TestPki::new();
        let a = TlsServer::start(A_IP.into(), pki.server_config(&["a.test"]), "hello from a").await;
        let dns = FakeDns::start(&[
            ("a.test", IpAddr::V4(A_IP)),
            ("denied.test", IpAddr::V4(DENIED_IP)),
            ("private.test", IpAddr::V4(PRIVATE_IP)),
        ])
        .await;
        let proxy = ProxyBuilder::new(POLICY)
            .dns_upstream(dns.addr())
            .args([
                "--sni-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--sni-upstream-port".to_owned(),
                a.port().to_string(),
            ])
            .start();
        let text = std::fs::read_to_string(&proxy.ready_path).unwrap();
        let ready: SniReady = serde_json::from_str(&text).unwrap();
        assert_eq!(ready.sni.len(), 1, "{text}");
        let sni = ready.sni[0];
        World {
            pki,
            a,
            _dns: dns,
            proxy,
            sni,
        }
    }

    /// A TLS handshake for `name` through the SNI listener, then one HTTP
    /// request; the response, or the error that ended it.
    async fn fetch(&self, name: ServerName<'static>) -> Result<String, String> {
        let tcp = TcpStream::connect(self.sni)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(self.pki.client_config());
        let mut tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .expect("the handshake ends one way or the other, no hang")
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut response))
            .await
            .expect("the server answers and closes")
            .map_err(|e| e.to_string())?;
        Ok(response)
    }
}

fn name(n: &str) -> ServerName<'static> {
    ServerName::try_from(n.to_owned()).unwrap()
}

fn is_tcp_decision(r: &Record) -> bool {
    r.kind == Kind::Tcp && !r.is_closing()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_is_routed_on_its_sni_and_audited() {
    let w = World::new().await;
    // The handshake completing proves the peeked ClientHello reached the
    // server byte for byte: its transcript hash covers every byte of it.
    let response = w.fetch(name("a.test")).await.unwrap_or_else(|e| {
        panic!(
            "the allowed name was not reached: {e}\n{}",
            w.proxy.log_text()
        )
    });
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(response.ends_with("hello from a"), "{response}");

    let dst = SocketAddr::new(A_IP.into(), w.a.port());
    let rec = w.proxy.wait_record("allowing a.test", |r| {
        is_tcp_decision(r) && r.dst == Some(dst)
    });
    assert_eq!(rec.decision, Verdict::Allow);
    assert_eq!(rec.enforce_would, None);
    assert_eq!(rec.reason, Reason::RuleAllow);
    assert_eq!(rec.rule, "allow[0]");
    assert_eq!(rec.host.as_deref(), Some("a.test"));
    assert_eq!(rec.host_source, HostSource::Sni);
    assert_eq!(rec.runner, "e2e-runner");
    assert!(rec.src.is_some_and(|s| s.ip().is_loopback()), "{rec:?}");

    let closing = w.proxy.wait_record("closing the a.test tunnel", |r| {
        r.kind == Kind::Tcp && r.is_closing() && r.dst == Some(dst)
    });
    assert_ne!(closing.id, rec.id);
    assert_eq!(closing.rule, "allow[0]");
    assert_eq!(closing.host_source, HostSource::Sni);
    assert!(closing.bytes_up.unwrap_or(0) > 0, "{closing:?}");
    assert!(closing.bytes_down.unwrap_or(0) > 0, "{closing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_steered_by_name_to_the_listener_reaches_the_server() {
    let w = World::new().await;
    // What a hosts entry pointing a.test at egressd does, without editing
    // /etc/hosts: curl connects to the listener, and sends SNI a.test.
    let port = w.a.port();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--noproxy", "*"])
        .arg("--connect-to")
        .arg(format!("a.test:{port}:{}:{}", w.sni.ip(), w.sni.port()))
        .arg("--cacert")
        .arg(&w.pki.ca_pem_path)
        .arg(format!("https://a.test:{port}/"))
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("curl runs (install curl)");
    assert!(
        out.status.success(),
        "curl failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        w.proxy.log_text()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from a");
    let rec = w.proxy.wait_record("allowing curl's a.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("a.test")
    });
    assert_eq!(rec.decision, Verdict::Allow);
    assert_eq!(rec.host_source, HostSource::Sni);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_name_is_closed_and_audited_with_its_rule() {
    let w = World::new().await;
    let err = w
        .fetch(name("denied.test"))
        .await
        .expect_err("a denied name must not complete a handshake");
    assert!(err.starts_with("handshake"), "{err}");
    let rec = w.proxy.wait_record("denying denied.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("denied.test")
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::RuleDeny);
    assert_eq!(rec.rule, "deny[0]");
    assert_eq!(rec.host_source, HostSource::Sni);

    // A name no rule mentions: the default deny.
    assert!(w.fetch(name("unlisted.test")).await.is_err());
    let rec = w.proxy.wait_record("denying unlisted.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("unlisted.test")
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::NoRule);
    assert_eq!(rec.rule, "default");
    // Denied before any address was dialled: the listener's upstream port.
    assert_eq!(rec.dst, None, "{rec:?}");
    assert_eq!(rec.port, Some(w.a.port()), "{rec:?}");

    // Nothing was relayed for either: no closing record.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !w.proxy.records().iter().any(Record::is_closing),
        "a denied connection has no closing record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_resolving_to_a_private_address_is_denied() {
    let w = World::new().await;
    assert!(w.fetch(name("private.test")).await.is_err());
    let rec = w.proxy.wait_record("denying private.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("private.test")
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::BuiltinPrivate);
    assert_eq!(rec.rule, "builtin:private");
    assert_eq!(
        rec.dst,
        Some(SocketAddr::new(PRIVATE_IP.into(), w.a.port())),
        "decided on the resolved address and the upstream port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_without_sni_is_denied_no_sni() {
    let w = World::new().await;
    // rustls sends no server_name for an IP address.
    let ip = ServerName::IpAddress(IpAddr::V4(A_IP).into());
    assert!(w.fetch(ip).await.is_err());
    let rec = w.proxy.wait_record("denying the nameless hello", |r| {
        is_tcp_decision(r) && r.reason == Reason::NoSni
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.rule, "engine");
    assert_eq!(rec.host, None);
    assert_eq!(rec.host_source, HostSource::None);
    assert_eq!(rec.dst, None);
    assert_eq!(rec.port, Some(w.a.port()), "the listener's upstream port");
    assert!(rec.src.is_some_and(|s| s.ip().is_loopback()), "{rec:?}");
    assert!(
        rec.detail.as_deref().unwrap_or("").contains("server name"),
        "{rec:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_not_routed() {
    let w = World::new().await;
    let mut s = TcpStream::connect(w.sni).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("closed at once");
    assert!(got.is_empty(), "nothing comes back: {read:?} {got:?}");
    let rec = w.proxy.wait_record("refusing plain HTTP", |r| {
        is_tcp_decision(r) && r.reason == Reason::MalformedRequest
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.host, None);
    assert!(
        rec.detail
            .as_deref()
            .unwrap_or("")
            .contains("not a TLS ClientHello"),
        "{rec:?}"
    );
}
