//! The DNS server of the real `egressd run --no-ebpf --dns-listen`, asked by
//! a real client (knot's `kdig`) and by raw TCP, with [`FakeDns`] as its
//! upstream: allowed names answered, denied ones REFUSED, upstream silence
//! answered SERVFAIL, truncated upstream answers fetched over TCP, CNAME
//! targets of allowed names allowed, `ech` removed, nothing of a query but
//! its question reaching the upstream; every query checked against its one
//! audit record.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use egressd_audit::{HostSource, Kind, Record};
use egressd_policy::{Reason, Verdict};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RData, Record as Rr, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fake_dns::{Behaviour, FakeDns, RecordSpec};
use crate::support::{Proxy, ProxyBuilder};

const POLICY: &str = "version: 1\nallow:\n  - a.test\n  - www.a.test\n  - slow.test\n  - big.test\n  - ech.test\ndeny:\n  - host: denied.test\n";

/// An ECHConfigList as the `ech` SvcParam carries it (its bytes are opaque here).
const ECH: &[u8] = b"\x00\x0a\xfe\x0d\x00\x06public";

struct World {
    dns: FakeDns,
    proxy: Proxy,
}

impl World {
    async fn new() -> World {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let dns = FakeDns::start(&[
            ("a.test", RecordSpec::addr(ip("198.51.100.7"))),
            ("a.test", RecordSpec::addr(ip("2001:db8::7"))),
            ("www.a.test", RecordSpec::cname("edge.cdn.test").ttl(300)),
            (
                "edge.cdn.test",
                RecordSpec::addr(ip("198.51.100.8")).ttl(30),
            ),
            ("slow.test", RecordSpec::addr(ip("198.51.100.9"))),
            ("big.test", RecordSpec::addr(ip("198.51.100.10"))),
            ("ech.test", RecordSpec::https(Some(ECH))),
            ("denied.test", RecordSpec::addr(ip("198.51.100.11"))),
            ("unlisted.test", RecordSpec::addr(ip("198.51.100.12"))),
        ])
        .await;
        dns.behave("slow.test", Behaviour::Drop);
        dns.behave("big.test", Behaviour::TruncateUdp);
        let proxy = ProxyBuilder::new(POLICY)
            .args(["--dns-listen", "127.0.0.1:0"])
            .dns_upstream(dns.addr())
            .start();
        World { dns, proxy }
    }

    fn listen(&self) -> SocketAddr {
        self.proxy.ready().dns.expect("started with --dns-listen")
    }

    async fn kdig(&self, args: &[&str]) -> String {
        kdig(self.listen(), args).await
    }

    /// The one DNS record for `name` (waits for it; fails on a second one
    /// once the journal is flushed by [`World::stop`]).
    fn record_for(&self, name: &str) -> Record {
        self.proxy
            .wait_record(&format!("dns {name}"), |r| is_dns_for(r, name))
    }

    /// Stop egressd (flushing the journal) and return its records.
    fn stop(mut self) -> Vec<Record> {
        assert!(
            self.proxy.terminate().success(),
            "{}",
            self.proxy.log_text()
        );
        self.proxy.records()
    }
}

fn is_dns_for(r: &Record, name: &str) -> bool {
    r.kind == Kind::Dns && r.host.as_deref() == Some(name)
}

/// `kdig` against `server`, one try, generous timeout.
async fn kdig(server: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("kdig")
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args(["+timeout=10", "+retry=0"])
        .args(args)
        .output()
        .await
        .expect("kdig runs (knot-dnsutils is installed by .ci/run)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(kdig_out: &str) -> &str {
    kdig_out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no status in kdig output:\n{kdig_out}"))
}

fn assert_one_record_each(records: &[Record], names: &[&str]) {
    for name in names {
        let n = records.iter().filter(|r| is_dns_for(r, name)).count();
        assert_eq!(n, 1, "records for {name}: {records:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_names_are_answered_and_audited() {
    let w = World::new().await;
    let out = w.kdig(&["a.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("198.51.100.7"), "{out}");
    let out = w.kdig(&["+tcp", "a.test", "AAAA"]).await;
    assert!(out.contains("2001:db8::7"), "{out}");

    let rec = w.record_for("a.test");
    assert_eq!(rec.decision, Verdict::Allow);
    assert_eq!(rec.reason, Reason::RuleAllow);
    assert_eq!(rec.rule, "allow[0]");
    assert_eq!(rec.host_source, HostSource::DnsQuery);
    assert_eq!(rec.dst, Some(w.dns.addr()));
    assert_eq!(rec.port, None, "with a dst, the port is dst's");
    assert!(rec.src.is_some_and(|s| s.ip().is_loopback()));
    assert_eq!(rec.runner, "e2e-runner");
    let records = w.stop();
    let n = records.iter().filter(|r| is_dns_for(r, "a.test")).count();
    assert_eq!(n, 2, "one record per query (A and AAAA)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_names_are_refused_and_never_forwarded() {
    let w = World::new().await;
    let out = w.kdig(&["denied.test", "A"]).await;
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert!(!out.contains("198.51.100.11"), "{out}");
    let out = w.kdig(&["+tcp", "Unlisted.TEST.", "A"]).await;
    assert_eq!(status(&out), "REFUSED", "{out}");

    let denied = w.record_for("denied.test");
    assert_eq!(denied.decision, Verdict::Deny);
    assert_eq!(denied.reason, Reason::RuleDeny);
    assert_eq!(denied.rule, "deny[0]");
    let unlisted = w.record_for("unlisted.test");
    assert_eq!(unlisted.decision, Verdict::Deny);
    assert_eq!(unlisted.reason, Reason::DnsRefused);
    assert_eq!(unlisted.rule, "default");
    assert_eq!(unlisted.dst, None);
    // No upstream answered: the record still says it was a question to port 53.
    assert_eq!((denied.port, unlisted.port), (Some(53), Some(53)));
    assert!(
        w.dns.queries().is_empty(),
        "denied names reached the upstream: {:?}",
        w.dns.queries()
    );
    assert_one_record_each(&w.stop(), &["denied.test", "unlisted.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_the_client_servfail() {
    let w = World::new().await;
    let out = w.kdig(&["slow.test", "A"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
    let rec = w.record_for("slow.test");
    assert_eq!(rec.reason, Reason::UpstreamFailed);
    assert_eq!(rec.rule, "allow[2]");
    assert!(
        rec.detail
            .as_deref()
            .is_some_and(|d| d.contains("did not answer")),
        "{rec:?}"
    );
    assert!(!w.dns.queries().is_empty());
    assert_one_record_each(&w.stop(), &["slow.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_upstream_answers_are_fetched_over_tcp() {
    let w = World::new().await;
    // +ignore: kdig itself must not retry over TCP; the proxy has to.
    let out = w.kdig(&["+ignore", "big.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("198.51.100.10"), "{out}");
    assert!(!out.contains(" tc"), "the client saw TC: {out}");
    let asked: Vec<bool> = w
        .dns
        .queries()
        .iter()
        .filter(|q| q.name == "big.test")
        .map(|q| q.tcp)
        .collect();
    assert_eq!(asked, [false, true], "UDP first, then TCP");
    let rec = w.record_for("big.test");
    assert_eq!(rec.decision, Verdict::Allow);
    assert_one_record_each(&w.stop(), &["big.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cname_targets_of_allowed_names_are_allowed() {
    let w = World::new().await;
    // Not allowed on its own...
    let out = w.kdig(&["edge.cdn.test", "A"]).await;
    assert_eq!(status(&out), "REFUSED", "{out}");
    // ...but once an allowed name's answer led there, it is.
    let out = w.kdig(&["www.a.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(
        out.contains("edge.cdn.test") && out.contains("198.51.100.8"),
        "{out}"
    );
    let out = w.kdig(&["edge.cdn.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("198.51.100.8"), "{out}");

    let records = w.stop();
    let edge: Vec<&Record> = records
        .iter()
        .filter(|r| is_dns_for(r, "edge.cdn.test"))
        .collect();
    assert_eq!(edge.len(), 2, "{records:#?}");
    assert_eq!(edge[0].decision, Verdict::Deny);
    assert_eq!(edge[1].decision, Verdict::Allow);
    assert_eq!(
        edge[1].rule, "allow[1]",
        "the rule of the name that led there"
    );
    assert!(
        edge[1]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("www.a.test")),
        "{:?}",
        edge[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ech_is_removed_from_https_answers() {
    let w = World::new().await;
    // The upstream itself does send `ech` (so the check below means something).
    let direct = kdig(w.dns.addr(), &["ech.test", "HTTPS"]).await;
    assert!(direct.contains("ech="), "{direct}");
    let out = w.kdig(&["ech.test", "HTTPS"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(out.contains("alpn=h2"), "{out}");
    assert!(!out.contains("ech="), "ech passed through: {out}");
    assert_one_record_each(&w.stop(), &["ech.test"]);
}

pub(crate) fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// The next length-prefixed DNS message on `s` (waits at most 10 s).
async fn read_framed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await.unwrap();
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_serves_several_queries_on_one_connection() {
    let w = World::new().await;
    let mut s = tokio::net::TcpStream::connect(w.listen()).await.unwrap();
    for (id, name) in [(1u16, "a.test."), (2, "denied.test."), (3, "a.test.")] {
        let q = query(id, name, RecordType::A);
        s.write_u16(q.len() as u16).await.unwrap();
        s.write_all(&q).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(Message::from_vec(&read_framed(&mut s).await).unwrap());
    }
    let got: Vec<(u16, ResponseCode)> = answers
        .iter()
        .map(|m| (m.id(), m.response_code()))
        .collect();
    assert_eq!(
        got,
        [
            (1, ResponseCode::NoError),
            (2, ResponseCode::Refused),
            (3, ResponseCode::NoError)
        ]
    );
    assert!(
        matches!(answers[0].answers()[0].data(), RData::A(a) if a.0.octets() == [198, 51, 100, 7])
    );
    drop(s);
    let records = w.stop();
    assert_eq!(
        records.iter().filter(|r| is_dns_for(r, "a.test")).count(),
        2
    );
    assert_one_record_each(&records, &["denied.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_and_are_audited() {
    let w = World::new().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A header announcing one question, then garbage.
    let junk = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff\xff";
    sock.send_to(junk, w.listen()).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n >= 12);
    assert_eq!(&buf[..2], b"\xab\xcd");
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    let src = sock.local_addr().unwrap();
    let rec = w.proxy.wait_record("malformed dns", |r| {
        r.kind == Kind::Dns && r.src == Some(src)
    });
    assert_eq!(rec.reason, Reason::MalformedRequest);
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.host, None);
    // The server still answers afterwards.
    let out = w.kdig(&["a.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_dns_over_tcp_are_closed_and_audited() {
    let w = World::new().await;
    let mut tcp = tokio::net::TcpStream::connect(w.listen()).await.unwrap();
    let src = tcp.local_addr().unwrap();
    // An HTTP request to the DNS port: its first two bytes read as a length
    // of 18,245, and the connection ends long before.
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: smuggle.test\r\n\r\n")
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "no answer: {rest:?}");
    let rec = w.proxy.wait_record("not dns over tcp", |r| {
        r.kind == Kind::Dns && r.src == Some(src)
    });
    assert_eq!(rec.reason, Reason::MalformedRequest);
    assert_eq!(rec.decision, Verdict::Deny);
    assert_eq!(rec.port(), Some(53));
    assert!(
        rec.detail
            .as_deref()
            .is_some_and(|d| d.contains("announced as 18245 bytes")),
        "{rec:?}"
    );
}

/// A job floods the journal with denied names (random, under one zone) at
/// the smallest journal budget: the deny it made before the flood is still
/// there afterwards, and the flood is in the journal as counted records whose
/// counts add up to the queries egressd answered. Bounded: 120 000 queries
/// or 20 s, whichever comes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_denied_names_cannot_push_an_earlier_deny_out_of_the_journal() {
    const FLOOD: u32 = 120_000;
    const WINDOW: u32 = 64;
    let dns =
        FakeDns::start(&[("a.test", RecordSpec::addr("198.51.100.7".parse().unwrap()))]).await;
    let mut proxy = ProxyBuilder::new("version: 1\nallow:\n  - a.test\n")
        .args(["--dns-listen", "127.0.0.1:0", "--audit-max-size", "16MiB"])
        .dns_upstream(dns.addr())
        .start();
    let listen = proxy.ready().dns.expect("started with --dns-listen");
    let out = kdig(listen, &["exfil-first.flood.test", "A"]).await;
    assert_eq!(status(&out), "REFUSED", "{out}");

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(listen).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut sent, mut answered) = (0u32, 0u32);
    let mut buf = vec![0u8; 1500];
    while sent < FLOOD && tokio::time::Instant::now() < deadline {
        let batch = WINDOW.min(FLOOD - sent);
        for i in 0..batch {
            let n = sent + i;
            let name = format!("x{n:x}-{:08x}.flood.test", n.wrapping_mul(2_654_435_761));
            sock.send(&query(n as u16, &name, RecordType::A))
                .await
                .unwrap();
        }
        sent += batch;
        let mut got = 0;
        while got < batch {
            match tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
                Ok(Ok(len)) => {
                    let m = Message::from_vec(&buf[..len]).unwrap();
                    assert_eq!(m.response_code(), ResponseCode::Refused);
                    got += 1;
                }
                Ok(Err(e)) => panic!("recv: {e}"),
                Err(_) => break,
            }
        }
        answered += got;
    }
    assert!(answered > 0, "no query of the flood was answered");
    // Shutdown writes the last interval's counted records.
    assert!(proxy.terminate().success(), "{}", proxy.log_text());
    let records = proxy.records();

    let first: Vec<_> = records
        .iter()
        .filter(|r| is_dns_for(r, "exfil-first.flood.test"))
        .collect();
    assert_eq!(
        first.len(),
        1,
        "the deny before the flood is gone or doubled"
    );
    assert_eq!((first[0].decision, first[0].count), (Verdict::Deny, None));
    let removed: Vec<_> = records
        .iter()
        .filter(|r| r.reason == Reason::JournalSegmentRemoved)
        .collect();
    assert!(
        removed.is_empty(),
        "the journal removed records: {removed:?}"
    );

    let flood: Vec<_> = records
        .iter()
        .filter(|r| {
            r.kind == Kind::Dns
                && r.host
                    .as_deref()
                    .is_some_and(|h| h.ends_with("flood.test") && h != "exfil-first.flood.test")
        })
        .collect();
    let decisions: u64 = flood.iter().map(|r| r.decisions()).sum();
    eprintln!(
        "flood: sent {sent}, answered {answered}, {} records stand for {decisions} decisions",
        flood.len()
    );
    let counted: Vec<_> = flood.iter().filter(|r| r.count.is_some()).collect();
    assert!(!counted.is_empty(), "no counted record");
    for c in &counted {
        assert_eq!(c.host.as_deref(), Some("flood.test"), "{c:?}");
        assert_eq!((c.decision, c.reason), (Verdict::Deny, Reason::DnsRefused));
        assert!(c.samples.as_ref().is_some_and(|s| !s.is_empty()), "{c:?}");
    }
    // Every answered query is in exactly one record (verbatim or counted);
    // a query lost before egressd read it is in none.
    assert!(
        u64::from(answered) <= decisions && decisions <= u64::from(sent),
        "sent {sent}, answered {answered}, in the journal {decisions}"
    );
    if sent == answered {
        assert_eq!(decisions, u64::from(sent));
    }
    assert!(
        flood.len() < (sent as usize) / 10,
        "{} records for {sent} queries: not counted",
        flood.len()
    );
}

/// What a job hides in an allowed query, one secret per place: a TXT
/// record named under a denied zone, EDNS padding, an EDNS cookie, bytes
/// after the last record.
const TXT_SECRET: &str = "txt-secret-d41d8cd98f00";
const PADDING_SECRET: &[u8] = b"padding-secret-9e107d9d372b";
/// A client cookie (8 bytes) and a server cookie (16): the option's shape.
const COOKIE_SECRET: &[u8] = b"cookie-secret-e4d909c290d0";
const TRAILING_SECRET: &[u8] = b"trailing-secret-a87ff679a2f3";

/// An allowed question (`a.test`, letters in mixed case, as 0x20
/// randomisation sends them) carrying the EDNS secrets and odd header bits
/// (AA; Z and AD), which egressd's fast path reads; with `everything`, the
/// TXT record and the trailing bytes too, which only its hickory path reads.
fn smuggling_query(id: u16, everything: bool) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii("A.tEsT.").unwrap(),
            RecordType::A,
        ));
    if everything {
        m.add_additional(Rr::from_rdata(
            Name::from_ascii("exfil.denied.test.").unwrap(),
            0,
            RData::TXT(TXT::new(vec![TXT_SECRET.to_owned()])),
        ));
    }
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    edns.options_mut()
        .insert(EdnsOption::Unknown(12, PADDING_SECRET.to_vec()));
    edns.options_mut()
        .insert(EdnsOption::Unknown(10, COOKIE_SECRET[..24].to_vec()));
    m.set_edns(edns);
    let mut raw = m.to_vec().unwrap();
    raw[2] |= 0x04;
    raw[3] |= 0x60;
    if everything {
        raw.extend_from_slice(TRAILING_SECRET);
    }
    raw
}

/// `answer` answers `asked` (a [`smuggling_query`]): its id, its question
/// byte for byte (the name's case kept), NOERROR with the zone's address.
fn answers_smuggling_query(asked: &[u8], answer: &[u8]) {
    let m = Message::from_vec(answer).unwrap();
    assert_eq!(&answer[..2], &asked[..2], "the client's id");
    assert_eq!(m.response_code(), ResponseCode::NoError);
    // Header, then the question: name (8 bytes), type and class.
    assert_eq!(&answer[12..24], &asked[12..24], "the client's question");
    assert_eq!(m.queries()[0].name().to_ascii(), "A.tEsT.");
    assert!(
        matches!(m.answers()[0].data(), RData::A(a) if a.0.octets() == [198, 51, 100, 7]),
        "{m:?}"
    );
    assert!(m.extensions().is_some(), "EDNS answered with EDNS");
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Over UDP and TCP, through both of egressd's ways of reading a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_question_of_an_allowed_query_reaches_the_upstream() {
    let w = World::new().await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(w.listen()).await.unwrap();
    let mut id = 0x5a17;
    for over_tcp in [false, true] {
        for everything in [true, false] {
            id += 1;
            let asked = smuggling_query(id, everything);
            let answer = if over_tcp {
                tcp.write_u16(asked.len() as u16).await.unwrap();
                tcp.write_all(&asked).await.unwrap();
                read_framed(&mut tcp).await
            } else {
                udp.send_to(&asked, w.listen()).await.unwrap();
                let mut buf = vec![0u8; 4096];
                let (n, _) = tokio::time::timeout(Duration::from_secs(10), udp.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                buf.truncate(n);
                buf
            };
            answers_smuggling_query(&asked, &answer);
        }
    }
    drop(tcp);

    let seen = w.dns.queries();
    assert_eq!(
        seen.iter()
            .map(|q| (q.name.as_str(), q.tcp))
            .collect::<Vec<_>>(),
        [
            ("a.test", false),
            ("a.test", false),
            ("a.test", true),
            ("a.test", true)
        ],
        "{seen:#?}"
    );
    // The question as the client wrote it (its case kept): name, type, class.
    let question = &smuggling_query(0, false)[12..24];
    for q in &seen {
        for secret in [
            TXT_SECRET.as_bytes(),
            PADDING_SECRET,
            &COOKIE_SECRET[..24],
            &COOKIE_SECRET[..8],
            TRAILING_SECRET,
            b"\x05exfil",
        ] {
            assert!(
                !holds(&q.raw, secret),
                "{:?} reached the upstream: {:?}",
                String::from_utf8_lossy(secret),
                q.raw
            );
        }
        // RD only; one question and egressd's OPT; the question; egressd's
        // OPT: payload 1232, no DO, no options. Nothing more.
        let mut own = vec![0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        own.extend_from_slice(question);
        own.extend_from_slice(&[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q.raw[2..], &own[..], "{q:?}");
    }
    let records = w.stop();
    let allowed = records
        .iter()
        .filter(|r| is_dns_for(r, "a.test") && r.decision == Verdict::Allow)
        .count();
    assert_eq!(allowed, 4, "{records:#?}");
}
