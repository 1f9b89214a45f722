//! Explicit mode end to end (no root): the real `egressd run --no-ebpf
//! --explicit`, curl (or a Rust client where curl cannot misbehave on
//! purpose) through the CONNECT proxy to TLS servers on loopback addresses
//! with certificates from a test CA, names from a fake DNS server, and
//! `--filter-loopback` so the policy decides about those servers. Every case
//! checks the audit record it produced.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use egressd_audit::{HostSource, Kind, Record};
use egressd_policy::{Reason, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_dns::FakeDns;
use crate::support::{Proxy, ProxyBuilder, TestPki, TlsServer, curl_via, raw_connect};

const A_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const DENIED_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const IP_ONLY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// allow[0] a.test, allow[1] b.test, allow[2] 127.0.0.4; deny[0] denied.test.
fn policy(mode: &str) -> String {
    format!(
        "version: 1\nmode: {mode}\nallow:\n  - a.test\n  - b.test\n  - ip: 127.0.0.4\ndeny:\n  - host: denied.test\n"
    )
}

/// TLS servers for several names, their CA, and a DNS zone naming them.
struct World {
    pki: TestPki,
    a: TlsServer,
    b: TlsServer,
    denied: TlsServer,
    ip_only: TlsServer,
    dns: FakeDns,
}

impl World {
    async fn new() -> World {
        let pki = TestPki::new();
        let a = TlsServer::start(A_IP.into(), pki.server_config(&["a.test"]), "hello from a").await;
        let b = TlsServer::start(B_IP.into(), pki.server_config(&["b.test"]), "hello from b").await;
        let denied = TlsServer::start(
            DENIED_IP.into(),
            pki.server_config(&["denied.test", "unlisted.test"]),
            "hello from the other side",
        )
        .await;
        let ip_only = TlsServer::start(
            IP_ONLY.into(),
            pki.server_config(&["127.0.0.4"]),
            "hello from an address",
        )
        .await;
        let dns = FakeDns::start(&[
            ("a.test", IpAddr::V4(A_IP)),
            ("b.test", IpAddr::V4(B_IP)),
            ("denied.test", IpAddr::V4(DENIED_IP)),
            ("unlisted.test", IpAddr::V4(DENIED_IP)),
        ])
        .await;
        World {
            pki,
            a,
            b,
            denied,
            ip_only,
            dns,
        }
    }

    fn proxy(&self, policy: &str) -> ProxyBuilder {
        ProxyBuilder::new(policy).dns_upstream(self.dns.addr())
    }

    async fn curl(&self, proxy: &Proxy, url: &str) -> crate::support::CurlOutcome {
        curl_via(proxy.explicit(), &self.pki.ca_pem_path, url, &[]).await
    }
}

fn is_tcp_decision(r: &Record) -> bool {
    r.kind == Kind::Tcp && !r.is_closing()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_is_reached_and_audited_with_its_rule() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();
    let url = format!("https://a.test:{}/", w.a.port());
    let out = w.curl(&proxy, &url).await;
    assert!(
        out.status.success(),
        "curl failed: {out:?}\n{}",
        proxy.log_text()
    );
    assert_eq!(out.body, "hello from a");
    assert_eq!(out.connect_code, "200");

    let dst = SocketAddr::new(A_IP.into(), w.a.port());
    let rec = proxy.wait_record("allowing a.test", |r| {
        is_tcp_decision(r) && r.dst == Some(dst)
    });
    assert_eq!(rec.decision, Verdict::Allow);
    assert_eq!(rec.enforce_would, None);
    assert_eq!(rec.reason, Reason::RuleAllow);
    assert_eq!(rec.rule, "allow[0]");
    assert_eq!(rec.host.as_deref(), Some("a.test"));
    assert_eq!(rec.host_source, HostSource::Sni);
    assert_eq!(rec.runner, "e2e-runner");
    assert!(rec.src.is_some_and(|s| s.ip().is_loopback()));

    let closing = proxy.wait_record("closing the a.test tunnel", |r| {
        r.kind == Kind::Tcp && r.is_closing() && r.dst == Some(dst)
    });
    assert_ne!(closing.id, rec.id);
    assert_eq!(closing.rule, "allow[0]");
    assert!(closing.bytes_up.unwrap_or(0) > 0, "{closing:?}");
    assert!(closing.bytes_down.unwrap_or(0) > 0, "{closing:?}");
}

/// `--audit-max-size` sets the journal's budget: a budget is taken and the
/// journal records under it; one smaller than a segment is a usage error
/// (exit 2) saying what to give instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_budget_is_an_option_and_a_too_small_one_is_refused() {
    let w = World::new().await;
    let proxy = w
        .proxy(&policy("enforce"))
        .args(["--audit-max-size", "64MiB"])
        .start();
    let out = w
        .curl(&proxy, &format!("https://a.test:{}/", w.a.port()))
        .await;
    assert!(out.status.success(), "{out:?}");
    proxy.wait_record("the allowed CONNECT", |r| {
        is_tcp_decision(r) && r.decision == Verdict::Allow
    });

    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, policy("enforce")).unwrap();
    let out = std::process::Command::new(crate::support::egressd_bin())
        .args(["run", "--no-ebpf", "--audit-max-size", "1MiB", "--policy"])
        .arg(&policy_file)
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--audit-max-size") && stderr.contains("at least 16MiB"),
        "{stderr}"
    );
    assert!(!dir.path().join("audit").exists(), "nothing started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_name_gets_403_naming_the_reason_and_rule() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();

    let out = w
        .curl(&proxy, &format!("https://denied.test:{}/", w.denied.port()))
        .await;
    assert!(!out.status.success());
    assert_eq!(out.connect_code, "403", "{out:?}");
    let rec = proxy.wait_record("denying denied.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("denied.test")
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::RuleDeny);
    assert_eq!(rec.rule, "deny[0]");
    assert_eq!(rec.host_source, HostSource::Connect);

    // The body names the reason and the rule; a name no rule mentions is
    // denied by default.
    let (mut s, head) = raw_connect(
        proxy.explicit(),
        &format!("unlisted.test:{}", w.denied.port()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body))
        .await
        .expect("the proxy closes after a 403")
        .expect("read the body");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    assert!(body.contains("reason=no_rule"), "{body}");
    assert!(body.contains("rule=default"), "{body}");
    let rec = proxy.wait_record("denying unlisted.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("unlisted.test")
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::NoRule);
    assert_eq!(rec.rule, "default");
}

/// A name denied before any address was dialled has no `dst`; its record
/// still carries the port the CONNECT asked for, and the summary shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_denied_before_dialling_keeps_its_port_in_the_record_and_summary() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();
    let (_s, head) = raw_connect(proxy.explicit(), "n0.many.test:443").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let rec = proxy.wait_record("denying n0.many.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("n0.many.test")
    });
    assert_eq!((rec.decision, rec.reason), (Verdict::Deny, Reason::NoRule));
    assert_eq!(rec.dst, None, "no address was dialled: {rec:?}");
    assert_eq!(rec.port, Some(443), "{rec:?}");
    assert_eq!(rec.port(), Some(443));

    let out = std::process::Command::new(crate::support::egressd_bin())
        .args(["audit", "summary", "--dir"])
        .arg(&proxy.audit)
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        md.contains("| n0.many.test | 443 | 1 |  | no rule allows this host | add `host: \"n0.many.test\"` with `ports: [443]`"),
        "{md}"
    );
    assert!(!md.contains("| n0.many.test | 0 |"), "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sni_other_than_the_connect_host_is_denied_inside_the_tunnel() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();
    let (tcp, head) = raw_connect(proxy.explicit(), &format!("a.test:{}", w.a.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // Both names are allowed, but the tunnel was asked for a.test.
    let connector = tokio_rustls::TlsConnector::from(w.pki.client_config());
    let name = rustls::pki_types::ServerName::try_from("b.test").unwrap();
    let handshake = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("the proxy cuts the tunnel at once, no hang");
    assert!(handshake.is_err(), "the handshake must fail");

    let rec = proxy.wait_record("denying the mismatched SNI", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("b.test")
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::SniIpMismatch);
    assert_eq!(rec.host_source, HostSource::Sni);
    assert_eq!(rec.dst, Some(SocketAddr::new(A_IP.into(), w.a.port())));
    assert!(
        rec.detail
            .as_deref()
            .unwrap_or("")
            .contains("CONNECT a.test"),
        "{rec:?}"
    );
    // Nothing was relayed: no closing record for that tunnel.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !proxy
            .records()
            .iter()
            .any(|r| r.is_closing() && r.dst == Some(SocketAddr::new(A_IP.into(), w.a.port()))),
        "a denied tunnel has no closing record"
    );
    let _ = &w.b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_rule_allows_its_address_and_nothing_else() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();
    let out = w
        .curl(&proxy, &format!("https://127.0.0.4:{}/", w.ip_only.port()))
        .await;
    assert!(out.status.success(), "curl failed: {out:?}");
    assert_eq!(out.body, "hello from an address");
    let dst = SocketAddr::new(IP_ONLY.into(), w.ip_only.port());
    let rec = proxy.wait_record("allowing 127.0.0.4", |r| {
        is_tcp_decision(r) && r.dst == Some(dst)
    });
    assert_eq!(rec.decision, Verdict::Allow);
    assert_eq!(rec.rule, "allow[2]");
    assert_eq!(rec.host, None);
    assert_eq!(rec.host_source, HostSource::None);

    // An address no IP rule allows, with no name: no_sni.
    let (_s, head) = raw_connect(proxy.explicit(), &format!("127.0.0.3:{}", w.denied.port())).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let denied_dst = SocketAddr::new(DENIED_IP.into(), w.denied.port());
    let rec = proxy.wait_record("denying 127.0.0.3", |r| {
        is_tcp_decision(r) && r.dst == Some(denied_dst)
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.reason, Reason::NoSni);
    assert_eq!(rec.rule, "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_mode_lets_through_and_records_what_enforce_would_do() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("audit")).start();
    let out = w
        .curl(
            &proxy,
            &format!("https://unlisted.test:{}/", w.denied.port()),
        )
        .await;
    assert!(out.status.success(), "curl failed: {out:?}");
    assert_eq!(out.body, "hello from the other side");
    let rec = proxy.wait_record("auditing unlisted.test", |r| {
        is_tcp_decision(r) && r.host.as_deref() == Some("unlisted.test")
    });
    assert_eq!(rec.decision, Verdict::Allow);
    assert_eq!(rec.enforce_would, Some(Verdict::Deny));
    assert_eq!(rec.reason, Reason::NoRule);
    assert_eq!(rec.rule, "default");
}

/// A TLS record that is a handshake, but not a ClientHello (a ServerHello).
const NOT_A_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_client_hello_is_cut_and_the_proxy_keeps_serving() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();
    let (mut tcp, head) = raw_connect(proxy.explicit(), &format!("a.test:{}", w.a.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    tcp.write_all(NOT_A_CLIENT_HELLO).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("the proxy cuts a malformed ClientHello at once");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let rec = proxy.wait_record("refusing the malformed ClientHello", |r| {
        is_tcp_decision(r) && r.reason == Reason::MalformedRequest
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.rule, "engine");
    assert_eq!(rec.host.as_deref(), Some("a.test"));
    assert_eq!(rec.dst, Some(SocketAddr::new(A_IP.into(), w.a.port())));

    // Garbage instead of a CONNECT request: 400 and a record.
    let mut s = tokio::net::TcpStream::connect(proxy.explicit())
        .await
        .unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00\x01\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");

    let out = w
        .curl(&proxy, &format!("https://a.test:{}/", w.a.port()))
        .await;
    assert!(out.status.success(), "the proxy still serves: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_by_the_timeout_and_the_proxy_stays_responsive() {
    let w = World::new().await;
    let proxy = w
        .proxy(&policy("enforce"))
        .args(["--peek-timeout", "1s"])
        .start();

    // A CONNECT request that never ends.
    let mut head_loris = tokio::net::TcpStream::connect(proxy.explicit())
        .await
        .unwrap();
    head_loris.write_all(b"CONNECT a.te").await.unwrap();
    // A tunnel whose ClientHello never ends.
    let (mut hello_loris, head) =
        raw_connect(proxy.explicit(), &format!("a.test:{}", w.a.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    hello_loris.write_all(&[0x16, 0x03, 0x01]).await.unwrap();

    // Meanwhile, the proxy serves others.
    let started = Instant::now();
    let out = w
        .curl(&proxy, &format!("https://a.test:{}/", w.a.port()))
        .await;
    assert!(out.status.success(), "{out:?}");

    for (what, s) in [("head", &mut head_loris), ("hello", &mut hello_loris)] {
        let mut rest = Vec::new();
        let cut = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut rest)).await;
        assert!(cut.is_ok(), "the {what} slowloris was not cut");
    }
    assert!(started.elapsed() < Duration::from_secs(15), "no hang");
    let head_rec = proxy.wait_record("cutting the slow CONNECT head", |r| {
        is_tcp_decision(r) && r.reason == Reason::MalformedRequest && r.dst.is_none()
    });
    assert_eq!(head_rec.decision, Verdict::Deny);
    assert!(
        head_rec
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("nothing within"),
        "{head_rec:?}"
    );
    let hello_rec = proxy.wait_record("cutting the slow ClientHello", |r| {
        is_tcp_decision(r) && r.reason == Reason::MalformedRequest && r.dst.is_some()
    });
    assert_eq!(hello_rec.decision, Verdict::Deny);
    assert_eq!(hello_rec.host.as_deref(), Some("a.test"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_tunnel_limit_connections_are_denied_and_audited() {
    let w = World::new().await;
    let proxy = w
        .proxy(&policy("enforce"))
        .args(["--max-tunnels", "1"])
        .start();
    // One tunnel held open (a client that waits for the server: allowed by
    // the CONNECT decision after the first-byte wait).
    let (_held, head) = raw_connect(proxy.explicit(), &format!("a.test:{}", w.a.port())).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let (_second, head) = raw_connect(proxy.explicit(), &format!("a.test:{}", w.a.port())).await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    let rec = proxy.wait_record("refusing over the limit", |r| {
        is_tcp_decision(r) && r.reason == Reason::LimitExceeded
    });
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.rule, "engine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_reload_is_rejected_audited_and_the_old_policy_stays() {
    let w = World::new().await;
    let proxy = w.proxy(&policy("enforce")).start();
    std::fs::write(&proxy.policy, "version: 1\nallow:\n  - \"*example.com\"\n").unwrap();
    proxy.signal(libc::SIGHUP);
    let event = proxy.wait_record("rejecting the broken policy", |r| {
        r.kind == Kind::Event && r.reason == Reason::PolicyReloadRejected
    });
    assert_eq!(event.decision, Verdict::Deny);
    assert!(
        event
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("policy.yaml"),
        "the event names the file: {event:?}"
    );
    // The old policy is still active.
    let out = w
        .curl(&proxy, &format!("https://a.test:{}/", w.a.port()))
        .await;
    assert!(out.status.success(), "{out:?}");

    // A valid change is picked up without a signal (the file is polled):
    // a.test is no longer allowed.
    std::fs::write(&proxy.policy, "version: 1\nallow:\n  - b.test\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_s, head) = raw_connect(proxy.explicit(), &format!("a.test:{}", w.a.port())).await;
        if head.starts_with("HTTP/1.1 403 ") {
            break;
        }
        assert!(Instant::now() < deadline, "the new policy was not loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_the_journal_removes_the_ready_file_and_exits_0() {
    let w = World::new().await;
    let mut proxy = w.proxy(&policy("enforce")).start();
    let out = w
        .curl(&proxy, &format!("https://a.test:{}/", w.a.port()))
        .await;
    assert!(out.status.success(), "{out:?}");
    let status = proxy.terminate();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.log_text()
    );
    assert!(
        !proxy.ready_path.exists(),
        "the ready file is removed on exit"
    );
    let dst = SocketAddr::new(A_IP.into(), w.a.port());
    let recs = proxy.records();
    assert!(
        recs.iter()
            .any(|r| is_tcp_decision(r) && r.dst == Some(dst))
    );
    assert!(recs.iter().any(|r| r.is_closing() && r.dst == Some(dst)));
}

/// A tunnel still open when the shutdown grace period (5 s) is over is cut:
/// the client sees its end, the closing record says why and counts what
/// moved, and egressd exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_open_past_the_shutdown_grace_is_cut_and_its_closing_record_says_so() {
    // Neither TLS nor HTTP: decided by the address at once.
    const PING: &[u8; 4] = b"\x00png";
    let w = World::new().await;
    let mut proxy = w.proxy(&policy("enforce")).start();
    // A server on the address allow[2] allows that echoes once, then holds
    // the connection open and silent until its client goes away.
    let server = tokio::net::TcpListener::bind(SocketAddr::new(IP_ONLY.into(), 0))
        .await
        .unwrap();
    let dst = server.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut s, _)) = server.accept().await else {
            return;
        };
        let mut ping = [0u8; 4];
        if s.read_exact(&mut ping).await.is_ok() && s.write_all(&ping).await.is_ok() {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        }
    });
    let (mut tunnel, head) = raw_connect(proxy.explicit(), &dst.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    tunnel.write_all(PING).await.unwrap();
    let mut pong = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut pong))
        .await
        .expect("the echo comes back through the tunnel")
        .unwrap();
    assert_eq!(&pong, PING);

    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.terminate();
        (status, proxy)
    });
    // The proxy cuts the tunnel: the client reads its end (or a reset).
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(25), tunnel.read_to_end(&mut rest))
        .await
        .expect("the tunnel is cut when the grace period is over");
    assert!(rest.is_empty(), "nothing more was sent: {rest:?} ({end:?})");
    let (status, proxy) = status.await.unwrap();
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.log_text()
    );
    let closing = proxy
        .records()
        .into_iter()
        .find(|r| r.is_closing() && r.dst == Some(dst))
        .unwrap_or_else(|| panic!("no closing record for {dst}:\n{}", proxy.log_text()));
    assert_eq!(
        closing.detail.as_deref(),
        Some("ended: shutdown"),
        "{closing:?}"
    );
    assert_eq!(closing.rule, "allow[2]");
    assert_eq!((closing.bytes_up, closing.bytes_down), (Some(4), Some(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions() {
    let w = World::new().await;
    let proxy = w
        .proxy(&policy("enforce"))
        .args(["--metrics", "127.0.0.1:0"])
        .start();
    let out = w
        .curl(&proxy, &format!("https://a.test:{}/", w.a.port()))
        .await;
    assert!(out.status.success(), "{out:?}");
    let (_s, head) = raw_connect(
        proxy.explicit(),
        &format!("denied.test:{}", w.denied.port()),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let metrics = proxy.ready().metrics.expect("--metrics bound");
    let mut s = tokio::net::TcpStream::connect(metrics).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.contains("egressd_decisions_total{verdict=\"allow\",reason=\"rule_allow\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("egressd_decisions_total{verdict=\"deny\",reason=\"rule_deny\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("egressd_upstream_connect_seconds_count"),
        "{text}"
    );
    assert!(text.contains("egressd_journal_queue_depth"), "{text}");
}

#[test]
fn invalid_input_exits_2_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "version: 2\n").unwrap();
    let out = std::process::Command::new(crate::support::egressd_bin())
        .args([
            "run",
            "--no-ebpf",
            "--explicit",
            "127.0.0.1:0",
            "--dns-upstream",
            "127.0.0.1:53",
        ])
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("p.yaml"), "{stderr}");
    assert!(!dir.path().join("audit").exists(), "nothing was opened");

    std::fs::write(&policy, "version: 1\n").unwrap();
    let out = std::process::Command::new(crate::support::egressd_bin())
        .args(["run", "--no-ebpf", "--explicit", "not-an-address"])
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
