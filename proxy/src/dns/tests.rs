//! DNS unit tests on real wire bytes: the fixtures in `fixtures/` were
//! written by dnspython (`fixtures/generate.py`), not by hickory-proto.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use egressd_policy::Resolutions;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::HTTPS;
use hickory_proto::rr::rdata::svcb::{SvcParamKey, SvcParamValue};
use hickory_proto::rr::{RData, RecordType};

use super::DnsError;
use super::memory::DnsMemory;
use super::message::{self, parse_query};
use super::server::relay_answer;
use super::upstream::{Exchanged, Upstreams, parse_resolv_conf};

pub(super) const HTTPS_ECH_Q: &[u8] = include_bytes!("fixtures/https_ech.query.bin");
pub(super) const HTTPS_ECH_R: &[u8] = include_bytes!("fixtures/https_ech.reply.bin");
pub(super) const SVCB_Q: &[u8] = include_bytes!("fixtures/svcb_no_ech.query.bin");
pub(super) const SVCB_R: &[u8] = include_bytes!("fixtures/svcb_no_ech.reply.bin");
pub(super) const CNAME_Q: &[u8] = include_bytes!("fixtures/cname_chain.query.bin");
pub(super) const CNAME_R: &[u8] = include_bytes!("fixtures/cname_chain.reply.bin");
pub(super) const LOOP_Q: &[u8] = include_bytes!("fixtures/cname_loop.query.bin");
pub(super) const LOOP_R: &[u8] = include_bytes!("fixtures/cname_loop.reply.bin");
pub(super) const AAAA_R: &[u8] = include_bytes!("fixtures/aaaa.reply.bin");

const UPSTREAM: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An upstream exchange that brought `reply` over UDP.
pub(super) fn exchanged(reply: &[u8]) -> Exchanged {
    Exchanged {
        reply: reply.to_vec(),
        from: UPSTREAM,
        tcp: false,
    }
}

/// Every SvcParam key of every HTTPS/SVCB answer record.
fn svc_keys(msg: &Message) -> Vec<Vec<SvcParamKey>> {
    msg.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::HTTPS(HTTPS(s)) | RData::SVCB(s) => {
                Some(s.svc_params().iter().map(|(k, _)| *k).collect())
            }
            _ => None,
        })
        .collect()
}

// ---- queries ----

#[test]
fn queries_are_read_with_a_normalised_name() {
    let q = parse_query(CNAME_Q).unwrap();
    assert_eq!(q.name, "www.allowed.example");
    assert_eq!(q.qtype, RecordType::A);
    assert_eq!(q.udp_payload, 1232);
    let q = parse_query(HTTPS_ECH_Q).unwrap();
    assert_eq!(
        (q.name.as_str(), q.qtype),
        ("ech.example", RecordType::HTTPS)
    );
}

#[test]
fn bad_queries_get_formerr_notimp_or_silence() {
    // Shorter than a header, or a response: silence.
    assert_eq!(parse_query(&CNAME_Q[..11]).unwrap_err().reply, None);
    let mut response = CNAME_Q.to_vec();
    response[2] |= 0x80;
    assert_eq!(parse_query(&response).unwrap_err().reply, None);
    // Question cut short: FORMERR with the client's id.
    let r = parse_query(&CNAME_Q[..20]).unwrap_err().reply.unwrap();
    assert_eq!(&r[..2], &CNAME_Q[..2]);
    assert_eq!(r[2] & 0x80, 0x80);
    assert_eq!(r[3] & 0x0f, 1, "FORMERR");
    // NOTIFY (opcode 4): NOTIMP.
    let mut notify = CNAME_Q.to_vec();
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    let r = parse_query(&notify).unwrap_err().reply.unwrap();
    assert_eq!(r[3] & 0x0f, 4, "NOTIMP");
    assert_eq!((r[2] >> 3) & 0x0f, 4, "opcode echoed");
    // Two questions: FORMERR.
    let mut two = CNAME_Q[..12].to_vec();
    two[5] = 2;
    two[11] = 0; // no OPT record
    for _ in 0..2 {
        two.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
    }
    let r = parse_query(&two).unwrap_err().reply.unwrap();
    assert_eq!(r[3] & 0x0f, 1, "FORMERR");
}

#[test]
fn own_answers_echo_the_question() {
    let q = parse_query(CNAME_Q).unwrap();
    for rcode in [
        ResponseCode::Refused,
        ResponseCode::NXDomain,
        ResponseCode::ServFail,
    ] {
        let wire = message::own_answer(&q, rcode);
        assert_eq!(&wire[..2], &CNAME_Q[..2], "id");
        assert_eq!(wire[2] & 0x80, 0x80, "QR");
        assert_eq!(wire[2] & 0x01, CNAME_Q[2] & 0x01, "RD copied");
        assert_eq!(u16::from(wire[3] & 0x0f), u16::from(rcode));
        assert_eq!(&wire[4..8], &[0, 1, 0, 0], "one question, no answer");
        let m = Message::from_vec(&wire).unwrap();
        assert_eq!(
            message::ascii_name(m.queries()[0].name()),
            "www.allowed.example"
        );
        assert!(m.extensions().is_some(), "EDNS answered with EDNS");
    }
}

// ---- what answers teach ----

#[test]
fn cname_chains_are_followed_and_strays_ignored() {
    let m = Message::from_vec(CNAME_R).unwrap();
    let l = message::learn("www.allowed.example", &message::facts(m.answers()));
    assert_eq!(
        l.aliases,
        // Each alias lives as long as the CNAME record that points to it.
        vec![
            ("edge.cdn.example".to_owned(), 3600),
            ("e1.cdn.example".to_owned(), 120)
        ]
    );
    let mut addresses = l.addresses.clone();
    addresses.sort();
    assert_eq!(addresses, vec![ip("198.51.100.7"), ip("198.51.100.8")]);
    assert_eq!(l.ttl, 30);
}

#[test]
fn cname_loops_end() {
    let m = Message::from_vec(LOOP_R).unwrap();
    let l = message::learn("a.loop.example", &message::facts(m.answers()));
    assert_eq!(l.aliases, vec![("b.loop.example".to_owned(), 60)]);
    assert_eq!(l.addresses, vec![ip("198.51.100.9")]);
}

#[test]
fn https_address_hints_are_learned() {
    let m = Message::from_vec(HTTPS_ECH_R).unwrap();
    let l = message::learn("ech.example", &message::facts(m.answers()));
    assert_eq!(l.addresses, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
}

#[test]
fn ech_is_removed_from_https_records() {
    let mut m = Message::from_vec(HTTPS_ECH_R).unwrap();
    assert!(
        svc_keys(&m)
            .iter()
            .all(|k| k.contains(&SvcParamKey::EchConfigList))
    );
    assert!(message::strip_ech(&mut m));
    let wire = m.to_vec().unwrap();
    assert!(wire.len() < HTTPS_ECH_R.len());
    let again = Message::from_vec(&wire).unwrap();
    let mut keys = svc_keys(&again);
    keys.sort_by_key(Vec::len);
    assert_eq!(
        keys,
        vec![
            vec![SvcParamKey::Mandatory, SvcParamKey::Alpn],
            vec![
                SvcParamKey::Alpn,
                SvcParamKey::Ipv4Hint,
                SvcParamKey::Ipv6Hint
            ],
        ]
    );
    // `mandatory=alpn,ech` became `mandatory=alpn`.
    let second = again
        .answers()
        .iter()
        .find_map(|r| match r.data() {
            RData::HTTPS(HTTPS(s)) if s.svc_priority() == 2 => Some(s),
            _ => None,
        })
        .unwrap();
    let SvcParamValue::Mandatory(m) = &second.svc_params()[0].1 else {
        panic!("not mandatory")
    };
    assert_eq!(m.0, vec![SvcParamKey::Alpn]);
}

#[test]
fn svcb_without_ech_is_left_alone() {
    let mut m = Message::from_vec(SVCB_R).unwrap();
    assert!(!message::strip_ech(&mut m));
    let q = parse_query(SVCB_Q).unwrap();
    let memory = DnsMemory::new();
    let out = relay_answer(exchanged(SVCB_R), &q, &memory, Instant::now(), false).unwrap();
    assert_eq!(out, SVCB_R, "passed on byte for byte");
}

// ---- relaying an upstream answer ----

#[test]
fn relayed_answers_are_remembered_under_the_whole_chain() {
    let q = parse_query(CNAME_Q).unwrap();
    let memory = DnsMemory::new();
    let now = Instant::now();
    let mut reply = CNAME_R.to_vec();
    message::set_id(&mut reply, 0xbeef); // the id the proxy used upstream
    let out = relay_answer(exchanged(&reply), &q, &memory, now, false).unwrap();
    assert_eq!(&out[..2], &CNAME_Q[..2], "client's id restored");
    assert_eq!(&out[2..], &CNAME_R[2..], "otherwise unchanged");
    for name in [
        "www.allowed.example",
        "WWW.allowed.example.",
        "edge.cdn.example",
        "e1.cdn.example",
    ] {
        assert!(memory.binds_at(name, ip("198.51.100.7"), now), "{name}");
        assert!(memory.binds_at(name, ip("198.51.100.8"), now), "{name}");
    }
    assert!(!memory.binds_at("unrelated.example", ip("203.0.113.66"), now));
    assert!(!memory.binds_at("www.allowed.example", ip("203.0.113.66"), now));
    assert_eq!(
        memory.alias_origin("e1.cdn.example", now).as_deref(),
        Some("www.allowed.example")
    );
    assert_eq!(memory.alias_origin("www.allowed.example", now), None);
    let names = memory.names_at(ip("198.51.100.7"), now);
    assert!(names.iter().any(|n| &**n == "www.allowed.example"));
}

#[test]
fn relayed_https_answers_lose_ech() {
    let q = parse_query(HTTPS_ECH_Q).unwrap();
    let memory = DnsMemory::new();
    let out = relay_answer(exchanged(HTTPS_ECH_R), &q, &memory, Instant::now(), true).unwrap();
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.id(), 0x1234);
    assert_eq!(m.answers().len(), 2);
    assert!(
        svc_keys(&m)
            .iter()
            .all(|k| !k.contains(&SvcParamKey::EchConfigList))
    );
}

#[test]
fn an_answer_to_another_question_is_refused() {
    let q = parse_query(CNAME_Q).unwrap();
    let memory = DnsMemory::new();
    let err = relay_answer(exchanged(AAAA_R), &q, &memory, Instant::now(), false).unwrap_err();
    assert!(matches!(err, DnsError::BadReply(_)));
    assert!(memory.is_empty());
    let err = relay_answer(
        exchanged(b"\x12\x34\x81\x80garbage"),
        &q,
        &memory,
        Instant::now(),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, DnsError::BadReply(_)));
}

#[test]
fn oversize_udp_answers_are_truncated_for_the_client() {
    let mut q = parse_query(HTTPS_ECH_Q).unwrap();
    q.udp_payload = 100;
    let memory = DnsMemory::new();
    let out = relay_answer(exchanged(HTTPS_ECH_R), &q, &memory, Instant::now(), false).unwrap();
    let m = Message::from_vec(&out).unwrap();
    assert!(m.truncated());
    assert!(m.answers().is_empty());
    assert_eq!(m.queries().len(), 1);
    assert_eq!(m.id(), 0x1234);
    // Over TCP the whole answer goes.
    let out = relay_answer(exchanged(HTTPS_ECH_R), &q, &memory, Instant::now(), true).unwrap();
    assert!(!Message::from_vec(&out).unwrap().truncated());
}

// ---- memory ----

#[test]
fn bindings_live_for_floored_ttl_plus_grace_then_go() {
    let memory = DnsMemory::with_timing(Duration::from_secs(60), Duration::from_secs(300));
    let t0 = Instant::now();
    memory.remember(
        "a.example",
        &[ip("198.51.100.1")],
        Duration::from_secs(10),
        t0,
    );
    let at = |s: u64| t0 + Duration::from_secs(s);
    assert!(memory.binds_at("a.example", ip("198.51.100.1"), at(359)));
    assert!(!memory.binds_at("a.example", ip("198.51.100.1"), at(361)));
    assert_eq!(memory.names_at(ip("198.51.100.1"), at(359)).len(), 1);
    assert!(memory.names_at(ip("198.51.100.1"), at(361)).is_empty());
    // A long TTL is kept longer, but never beyond the cap.
    memory.remember(
        "b.example",
        &[ip("198.51.100.2")],
        Duration::from_secs(u64::from(u32::MAX)),
        t0,
    );
    assert!(memory.binds_at("b.example", ip("198.51.100.2"), at(3600)));
    assert!(!memory.binds_at("b.example", ip("198.51.100.2"), at(25 * 3600)));
    // Purge really removes what is stale.
    memory.purge(at(361));
    assert_eq!(memory.len(), (1, 1, 0));
    memory.purge(at(25 * 3600));
    assert!(memory.is_empty());
}

#[test]
fn a_new_answer_keeps_the_old_addresses_until_they_expire() {
    let memory = DnsMemory::with_timing(Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    memory.remember(
        "rr.example",
        &[ip("198.51.100.1")],
        Duration::from_secs(100),
        t0,
    );
    memory.remember(
        "rr.example",
        &[ip("198.51.100.2")],
        Duration::from_secs(10),
        t0,
    );
    let t = t0 + Duration::from_secs(50);
    assert!(memory.binds_at("rr.example", ip("198.51.100.1"), t));
    assert!(!memory.binds_at("rr.example", ip("198.51.100.2"), t));
    memory.purge(t);
    assert_eq!(memory.len(), (1, 1, 0));
}

#[test]
fn names_per_address_newest_first_and_mapped_v4_is_v4() {
    let memory = DnsMemory::with_timing(Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    let shared = ip("::ffff:198.51.100.5");
    memory.remember("old.example", &[shared], Duration::from_secs(10), t0);
    memory.remember(
        "New.Example.",
        &[ip("198.51.100.5")],
        Duration::from_secs(20),
        t0,
    );
    let names = memory.names_at(ip("198.51.100.5"), t0);
    let names: Vec<&str> = names.iter().map(|n| &**n).collect();
    assert_eq!(names, ["new.example", "old.example"]);
    assert!(memory.at(t0).binds("old.example", ip("198.51.100.5")));
    assert!(memory.at(t0).binds("new.example", shared));
    assert!(
        !memory
            .at(t0 + Duration::from_secs(11))
            .binds("old.example", shared)
    );
}

#[test]
fn a_popular_address_keeps_its_latest_expiring_names_once_each() {
    let memory = DnsMemory::with_timing(Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    let shared = ip("198.51.100.9");
    // 200 names, each answered twice (the second answer living longer),
    // and TTLs that do not grow with the order of arrival.
    for i in 0..200u64 {
        let name = format!("n{i}.cdn.example");
        let ttl = 1000 + (i * 7919) % 200;
        memory.remember(&name, &[shared], Duration::from_secs(ttl), t0);
        memory.remember(&name, &[shared], Duration::from_secs(ttl + 1), t0);
    }
    let names = memory.names_at(shared, t0);
    let mut want: Vec<(u64, String)> = (0..200u64)
        .map(|i| (1000 + (i * 7919) % 200 + 1, format!("n{i}.cdn.example")))
        .collect();
    want.sort_by_key(|w| std::cmp::Reverse(w.0));
    assert_eq!(names.len(), 32);
    let mut seen = std::collections::HashSet::new();
    for n in &names {
        assert!(seen.insert(n.to_string()), "{n} listed twice");
        let ttl = want
            .iter()
            .find(|(_, w)| w == &**n)
            .map(|(t, _)| *t)
            .unwrap();
        // Every name kept expires no earlier than the 32nd latest.
        assert!(ttl >= want[31].0, "{n} (ttl {ttl}) kept over a later one");
    }
    // The latest-expiring first.
    let ttls: Vec<u64> = names
        .iter()
        .map(|n| {
            want.iter()
                .find(|(_, w)| w == &**n)
                .map(|(t, _)| *t)
                .unwrap()
        })
        .collect();
    assert!(ttls.windows(2).all(|w| w[0] >= w[1]), "{ttls:?}");
    // Later, only what is still fresh; after a purge the same.
    let later = t0 + Duration::from_secs(1195);
    let fresh = memory.names_at(shared, later);
    assert!(!fresh.is_empty() && fresh.len() < 32);
    memory.purge(later);
    assert_eq!(memory.names_at(shared, later), fresh);
    memory.purge(t0 + Duration::from_secs(1201));
    assert!(memory.names_at(shared, t0).is_empty());
    assert_eq!(memory.len().1, 0);
}

#[test]
fn one_name_cannot_make_the_memory_grow_without_bound() {
    let memory = DnsMemory::with_timing(Duration::ZERO, Duration::ZERO);
    let t0 = Instant::now();
    for i in 0..1000u32 {
        let a = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i));
        memory.remember(
            "pool.example",
            &[a],
            Duration::from_secs(u64::from(i) + 1),
            t0,
        );
    }
    let (_, ips, _) = memory.len();
    assert_eq!(ips, 1000, "address side keeps each");
    // The name side keeps only the latest-expiring addresses.
    let last = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + 999));
    let first = IpAddr::V4(Ipv4Addr::from(0xc633_6400));
    assert!(memory.binds_at("pool.example", last, t0));
    assert!(!memory.binds_at("pool.example", first, t0));
}

// ---- upstreams ----

#[test]
fn resolv_conf_never_yields_a_loopback_stub() {
    let text = "# generated\nnameserver 127.0.0.53\nnameserver 192.0.2.53\noptions edns0\n\
                nameserver ::1\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n\
                nameserver fe80::1%eth0\nsearch example\nnameserver ::ffff:127.0.0.1\n";
    let (found, skipped) = parse_resolv_conf(text);
    assert_eq!(
        found,
        vec![
            "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
            "[2001:db8::53]:53".parse().unwrap()
        ]
    );
    assert_eq!(skipped, vec![ip("127.0.0.53"), ip("::1"), ip("127.0.0.1")]);
}

/// A one-shot upstream on loopback: UDP answers with `udp(reply)`, TCP with
/// the full answer.
/// What the fake upstream sends back over UDP for one query.
type UdpReplies = fn(&[u8]) -> Vec<Vec<u8>>;

async fn fake_upstream(udp_reply: Option<UdpReplies>) -> SocketAddr {
    logged_upstream(udp_reply).await.0
}

/// Every message an upstream received, as it arrived.
type Received = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// [`fake_upstream`], also keeping every query it receives (UDP and TCP).
async fn logged_upstream(udp_reply: Option<UdpReplies>) -> (SocketAddr, Received) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let received = Received::default();
    let log = move |log: &Received, q: &[u8]| {
        log.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(q.to_vec());
    };
    // UDP and TCP on one port: the UDP port's TCP twin may be taken by
    // another program's socket, so try a few ports.
    let mut attempts = 0;
    let (udp, addr, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match tokio::net::TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(e) if attempts < 50 => {
                attempts += 1;
                let _ = e;
            }
            Err(e) => panic!("no free UDP+TCP port pair: {e}"),
        }
    };
    let udp_log = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            log(&udp_log, &buf[..n]);
            if let Some(f) = udp_reply {
                for d in f(&buf[..n]) {
                    udp.send_to(&d, peer).await.unwrap();
                }
            }
        }
    });
    let tcp_log = received.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tcp.accept().await.unwrap();
            let n = usize::from(s.read_u16().await.unwrap());
            let mut q = vec![0u8; n];
            s.read_exact(&mut q).await.unwrap();
            log(&tcp_log, &q);
            let mut r = CNAME_R.to_vec();
            r[..2].copy_from_slice(&q[..2]);
            s.write_u16(r.len() as u16).await.unwrap();
            s.write_all(&r).await.unwrap();
        }
    });
    (addr, received)
}

fn with_id(query: &[u8], reply: &[u8]) -> Vec<u8> {
    let mut r = reply.to_vec();
    r[..2].copy_from_slice(&query[..2]);
    r
}

#[tokio::test]
async fn truncated_udp_answers_are_retried_over_tcp() {
    let addr = fake_upstream(Some(|q| {
        let mut tc = with_id(q, &CNAME_R[..12]);
        tc[2] |= 0x02;
        tc[6..12].fill(0);
        vec![tc]
    }))
    .await;
    let up = Upstreams::new(vec![addr], Duration::from_secs(5));
    let x = up.exchange(CNAME_Q, false).await.unwrap();
    assert!(x.tcp);
    assert_eq!(x.reply, CNAME_R);
}

#[tokio::test]
async fn stray_datagrams_are_ignored_and_silence_times_out() {
    let addr = fake_upstream(Some(|q| {
        let mut wrong = with_id(q, CNAME_R);
        wrong[0] ^= 0xff;
        vec![wrong, q.to_vec(), with_id(q, CNAME_R)]
    }))
    .await;
    let up = Upstreams::new(vec![addr], Duration::from_secs(5));
    let x = up.exchange(CNAME_Q, false).await.unwrap();
    assert!(!x.tcp);
    assert_eq!(x.reply, CNAME_R);

    let silent = fake_upstream(None).await;
    let up = Upstreams::new(vec![silent], Duration::from_millis(200));
    let err = up.exchange(CNAME_Q, false).await.unwrap_err();
    assert!(
        matches!(err, DnsError::Timeout(a, _) if a == silent),
        "{err}"
    );
    // The next upstream is tried after one fails.
    let up = Upstreams::new(vec![silent, addr], Duration::from_millis(500));
    assert_eq!(up.exchange(CNAME_Q, false).await.unwrap().from, addr);
}

/// A UDP DNS server on loopback over `upstreams` (a minute's timeout
/// each), allowing the fixtures' names: the engine, the server's address and
/// the tracker its shutdown waits on.
async fn udp_server(
    upstreams: Vec<SocketAddr>,
) -> (
    crate::test_support::TestEngine,
    SocketAddr,
    tokio_util::task::TaskTracker,
) {
    let t = crate::test_support::TestEngine::with_upstreams(
        "version: 1\nallow: [\"*.allowed.example\", \"*.cdn.example\"]\n",
        crate::limits::Limits::default(),
        upstreams,
        Duration::from_secs(60),
    );
    let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let at = server.local_addr().unwrap();
    let tasks = tokio_util::task::TaskTracker::new();
    tokio::spawn(super::serve_udp(
        std::sync::Arc::clone(&t.engine),
        server,
        tasks.clone(),
    ));
    (t, at, tasks)
}

/// An upstream where nothing listens answers with ICMP "port unreachable":
/// the UDP server moves the query to the next upstream at once instead of
/// waiting out a minute-long timeout. The connected socket reports a
/// refusal at a later send or read: queries sent in the same batch as a
/// refused one, or after it, move on at once too.
#[tokio::test]
async fn a_refusing_upstream_is_passed_over_at_once() {
    let good = fake_upstream(Some(|q| vec![with_id(q, CNAME_R)])).await;
    // A port nothing listens on: bound, then closed.
    let closed = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (t, at, _tasks) = udp_server(vec![closed, good]).await;
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(CNAME_Q, at).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
        .await
        .expect("no answer: the refusing upstream was waited out")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(m.id(), Message::from_vec(CNAME_Q).unwrap().id());
    assert!(!m.answers().is_empty());
    // More single queries, then bursts sent in one or more batches.
    for (round, count) in [1u16, 1, 2 * super::mmsg::MAX as u16, 5]
        .into_iter()
        .enumerate()
    {
        burst(&client, at, 1000 + round as u16 * 1000, count).await;
    }
    t.engine.stop_accepting().cancel();
}

/// An allowed query carrying bytes beside its question (a TXT record named
/// under a denied zone, EDNS padding, trailing bytes), over UDP (the
/// batched forwarding loop) and over TCP: the upstream gets what the bare
/// question gets, and the client its answer.
#[tokio::test]
async fn upstreams_get_the_question_and_nothing_else() {
    use hickory_proto::rr::rdata::TXT;
    use hickory_proto::rr::rdata::opt::EdnsOption;
    use hickory_proto::rr::{Name, Record};

    const SECRET: &str = "the-secret-5eb63bbbe01e";
    let (up, received) = logged_upstream(Some(|q| vec![with_id(q, CNAME_R)])).await;
    let (t, at, _tasks) = udp_server(vec![up]).await;
    let mut m = Message::from_vec(CNAME_Q).unwrap();
    m.add_additional(Record::from_rdata(
        Name::from_ascii("exfil.denied.test.").unwrap(),
        0,
        RData::TXT(TXT::new(vec![SECRET.to_owned()])),
    ));
    m.extensions_mut()
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Unknown(12, SECRET.as_bytes().to_vec()));
    let mut smuggling = m.to_vec().unwrap();
    smuggling.extend_from_slice(SECRET.as_bytes());

    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(&smuggling, at).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let over_tcp = super::server::answer(
        &t.engine,
        &super::DnsOptions::default(),
        &smuggling,
        client.local_addr().unwrap(),
        true,
    )
    .await
    .unwrap();
    for answer in [&buf[..n], &over_tcp[..]] {
        let a = Message::from_vec(answer).unwrap();
        assert_eq!(a.response_code(), ResponseCode::NoError);
        assert_eq!(&answer[..2], &CNAME_Q[..2], "the client's id");
    }

    let bare = parse_query(CNAME_Q).unwrap();
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "{received:?}");
    for q in &received {
        assert_eq!(&q[2..], &bare.upstream()[2..], "{q:?}");
        assert!(!q.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
    }
    t.engine.stop_accepting().cancel();
}

#[tokio::test]
async fn a_name_with_addresses_of_one_family_only_is_cached() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;

    // An upstream that answers A with TTL 300 and AAAA with nothing, counting queries.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(hickory_proto::op::MessageType::Response)
                .set_recursion_desired(true)
                .set_recursion_available(true);
            r.add_queries(q.queries().to_vec());
            let question = &q.queries()[0];
            if question.query_type() == RecordType::A {
                r.add_answer(Record::from_rdata(
                    question.name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(198, 51, 100, 7))),
                ));
            }
            udp.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    let resolver = super::resolver::Resolver::new(vec![addr]);
    for _ in 0..3 {
        assert_eq!(
            resolver.lookup("v4only.test").await.unwrap(),
            [ip("198.51.100.7")]
        );
    }
    assert_eq!(asked.load(Ordering::SeqCst), 2, "A and AAAA, once");
}

#[test]
fn the_memory_holds_at_most_its_cap_of_names_until_a_purge_makes_room() {
    let memory = DnsMemory::new().with_max_names(3);
    let t0 = Instant::now();
    let ttl = Duration::from_secs(1);
    for i in 0..5u8 {
        memory.remember(
            &format!("n{i}.example"),
            &[IpAddr::V4(Ipv4Addr::new(198, 51, 100, i))],
            ttl,
            t0,
        );
    }
    assert_eq!(memory.len().0, 3, "names beyond the cap are not remembered");
    assert!(memory.binds_at("n0.example", ip("198.51.100.0"), t0));
    assert!(!memory.binds_at("n4.example", ip("198.51.100.4"), t0));
    // Addresses are capped too: while full, not even a held name gains one.
    memory.remember("n0.example", &[ip("198.51.100.99")], ttl, t0);
    assert!(!memory.binds_at("n0.example", ip("198.51.100.99"), t0));
    assert_eq!(memory.len(), (3, 3, 0));
    // Once the old bindings are stale and purged, new names fit again.
    let later = t0 + Duration::from_secs(3600);
    memory.purge(later);
    memory.remember("n4.example", &[ip("198.51.100.4")], ttl, later);
    assert!(memory.binds_at("n4.example", ip("198.51.100.4"), later));
}

/// More queries than one batch (one `recvmmsg`, one `sendmmsg`), from
/// several clients, on a runtime big enough for two forwarding loops (the
/// kernel spreads the clients over the loops' sockets): every query is
/// answered once, with its own id, to the client that asked. One client's
/// burst at a time: all of them at once would overflow the sockets'
/// default receive buffers, which is loss, not what this tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bursts_larger_than_a_batch_are_answered_whole_by_every_loop() {
    let upstream = fake_upstream(Some(|q| vec![with_id(q, CNAME_R)])).await;
    let (t, at, tasks) = udp_server(vec![upstream]).await;
    const CLIENTS: u16 = 8;
    const EACH: u16 = 3 * super::mmsg::MAX as u16;
    for c in 0..CLIENTS {
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        burst(&client, at, c * 1000, EACH).await;
    }
    t.engine.stop_accepting().cancel();
    tasks.close();
    tasks.wait().await;
    t.journal.flush().await.unwrap();
    let dns = egressd_audit::reader::read_dir(t.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|r| r.kind == egressd_audit::Kind::Dns)
        .count();
    assert_eq!(dns, usize::from(CLIENTS * EACH), "one record per query");
}

/// Sends `count` copies of the CNAME fixture query from `client` to `at`,
/// with ids from `first` on, and checks that each is answered once, NOERROR
/// with answers, within 10 s.
async fn burst(client: &tokio::net::UdpSocket, at: SocketAddr, first: u16, count: u16) {
    use std::collections::HashSet;

    let ids = first..first + count;
    for id in ids.clone() {
        let mut q = CNAME_Q.to_vec();
        q[..2].copy_from_slice(&id.to_be_bytes());
        client.send_to(&q, at).await.unwrap();
    }
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 4096];
    while seen.len() < usize::from(count) {
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("ids {ids:?}: {} of {count} answered", seen.len()))
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.response_code(), ResponseCode::NoError, "id {}", m.id());
        assert!(!m.answers().is_empty(), "id {}", m.id());
        assert!(ids.contains(&m.id()), "id {} not asked ({ids:?})", m.id());
        assert!(seen.insert(m.id()), "id {} answered twice", m.id());
    }
}
