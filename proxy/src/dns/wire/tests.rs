//! The fast path held to hickory: it takes the everyday shapes that
//! hickory-proto writes (names compressed, case mixed, EDNS with options),
//! and whatever bytes it takes (generated, mutated, made by hand) it reads
//! exactly as the hickory path does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;

use super::*;
use crate::dns::memory::DnsMemory;
use crate::dns::message::{
    Query, answers_question, ascii_name, facts, own_answer, parse_query, parse_query_parsed,
};
use crate::dns::server::{relay_answer, relay_parsed};
use crate::dns::tests::{
    CNAME_Q, CNAME_R, HTTPS_ECH_Q, HTTPS_ECH_R, LOOP_Q, LOOP_R, SVCB_Q, SVCB_R, exchanged,
};

/// The proxy's own answer as it was built before the fast path, through a
/// hickory message: the oracle for [`own_answer`].
fn hickory_own_answer(query: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let q = Message::from_vec(query).unwrap();
    let mut m = Message::error_msg(q.id(), q.op_code(), rcode);
    m.set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(q.checking_disabled())
        .add_queries(q.queries().iter().cloned());
    if q.extensions().is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
    }
    m.to_vec().unwrap()
}

/// Labels mostly plain (some with bytes hickory escapes, so both paths are
/// exercised), mixed case.
fn name() -> impl Strategy<Value = Name> {
    proptest::collection::vec(
        proptest::collection::vec(
            prop_oneof![
                12 => proptest::sample::select(b"abcxyzABCXYZ0189_".to_vec()),
                1 => proptest::sample::select(b"-*.\\ ".to_vec()),
            ],
            1..10,
        ),
        0..5,
    )
    .prop_filter_map("a valid name", |labels| {
        let mut n = Name::from_labels(labels).ok()?;
        n.set_fqdn(true);
        Some(n)
    })
}

fn plain(n: &Name) -> bool {
    n.iter().all(plain_label)
}

fn edns() -> impl Strategy<Value = Option<Edns>> {
    proptest::option::of((any::<u16>(), any::<bool>(), any::<u8>(), any::<bool>())).prop_map(|o| {
        o.map(|(payload, cookie, version, dnssec_ok)| {
            let mut e = Edns::new();
            e.set_max_payload(payload)
                .set_version(version)
                .set_dnssec_ok(dnssec_ok);
            if cookie {
                e.options_mut()
                    .insert(EdnsOption::Unknown(10, vec![7, 1, 2, 3, 4, 5, 6, 7]));
            }
            e
        })
    })
}

/// What a client's query says, before hickory writes it.
#[derive(Debug, Clone)]
struct Asked {
    id: u16,
    qname: Name,
    qtype: RecordType,
    rd: bool,
    cd: bool,
    edns: Option<Edns>,
}

impl Asked {
    fn message(&self) -> Message {
        let mut m = Message::new();
        m.set_id(self.id)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(self.rd)
            .set_checking_disabled(self.cd)
            .add_query(Question::query(self.qname.clone(), self.qtype));
        if let Some(e) = &self.edns {
            m.set_edns(e.clone());
        }
        m
    }
}

fn asked() -> impl Strategy<Value = Asked> {
    (
        any::<u16>(),
        name(),
        proptest::sample::select(vec![
            RecordType::A,
            RecordType::AAAA,
            RecordType::HTTPS,
            RecordType::MX,
            RecordType::TXT,
        ]),
        any::<bool>(),
        any::<bool>(),
        edns(),
    )
        .prop_map(|(id, qname, qtype, rd, cd, edns)| Asked {
            id,
            qname,
            qtype,
            rd,
            cd,
            edns,
        })
}

/// A client's query as hickory writes it.
fn query() -> impl Strategy<Value = (Vec<u8>, Name)> {
    asked().prop_map(|a| (a.message().to_vec().unwrap(), a.qname))
}

/// Bytes a job wants out; no name [`name`] makes holds them.
const SECRET: &[u8] = b"SECRET=exfiltrated-token-7f3a";

/// Whether `haystack` holds `needle` anywhere.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A query of every shape [`asked`] makes, with what a job could hide bytes
/// in beside its question: records (a TXT record named under a denied zone
/// holding [`SECRET`] in any section, an additional A record), EDNS options (padding and a
/// cookie holding it, one of a random code with random bytes), header bits
/// other than RD and CD, bytes after the last record. With the upstream
/// query egressd must build for it, as hickory writes it: id 0, RD and CD
/// as the client set them, the question, egressd's own OPT (payload 1232,
/// version 0, the client's DO bit, no options) when the client had one.
fn smuggling_query() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let option = prop_oneof![
        Just((12u16, SECRET.to_vec())),
        Just((10u16, [&SECRET[..8], &SECRET[8..24]].concat())),
        (
            any::<u16>().prop_filter("read as opaque", |c| !(5..=8).contains(c)),
            proptest::collection::vec(any::<u8>(), 0..40),
        ),
    ];
    (
        asked(),
        proptest::option::of(0..3u8),
        any::<bool>(),
        proptest::collection::vec(option, 0..3),
        any::<u8>(),
        any::<u8>(),
        prop_oneof![
            Just(Vec::new()),
            Just(SECRET.to_vec()),
            proptest::collection::vec(any::<u8>(), 1..8),
        ],
    )
        .prop_map(|(a, txt, addr, options, b2, b3, trailing)| {
            let mut m = a.message();
            if let Some(section) = txt {
                let owner = Name::from_ascii("exfil.denied.test.").unwrap();
                let secret = String::from_utf8(SECRET.to_vec()).unwrap();
                let data = RData::TXT(TXT::new(vec![secret]));
                let record = Record::from_rdata(owner, 0, data);
                // Answer and authority records in a query are read (and
                // dropped) as they always were: only more than one
                // question is refused.
                match section {
                    0 => m.add_answer(record),
                    1 => m.add_name_server(record),
                    _ => m.add_additional(record),
                };
            }
            if addr {
                let owner = Name::from_ascii("a.denied.test.").unwrap();
                let data = RData::A(A(Ipv4Addr::new(83, 69, 67, 82)));
                m.add_additional(Record::from_rdata(owner, 0, data));
            }
            if let Some(e) = m.extensions_mut() {
                for (code, data) in options {
                    e.options_mut().insert(EdnsOption::Unknown(code, data));
                }
            }
            let mut raw = m.to_vec().unwrap();
            // AA and TC; RA, Z, AD, CD and an rcode (QR and the opcode stay
            // those of a query).
            raw[2] |= b2 & 0x06;
            raw[3] = b3;
            raw.extend_from_slice(&trailing);
            let mut own = Asked {
                id: 0,
                cd: b3 & 0x10 != 0,
                ..a
            };
            own.edns = own.edns.as_ref().map(|client| {
                let mut e = Edns::new();
                e.set_max_payload(1232)
                    .set_dnssec_ok(client.flags().dnssec_ok);
                e
            });
            (raw, own.message().to_vec().unwrap())
        })
}

/// `q`'s upstream query is its question and egressd's own OPT record, and
/// nothing else: any other header bit, section or byte would be the
/// client's.
fn is_own_upstream(q: &Query) {
    let up = q.upstream();
    let question = q.question();
    assert_eq!(up[2] & !0x01, 0, "only RD in header byte 2");
    assert_eq!(up[3] & !0x10, 0, "only CD in header byte 3");
    assert_eq!(up[4..HEADER_LEN], [0, 1, 0, 0, 0, 0, 0, u8::from(q.edns)]);
    assert_eq!(&up[HEADER_LEN..HEADER_LEN + question.len()], question);
    let opt = &up[HEADER_LEN + question.len()..];
    if q.edns {
        assert!(
            opt == [0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]
                || opt == [0, 0, 41, 4, 0xd0, 0, 0, 0x80, 0, 0, 0],
            "own OPT: {opt:?}"
        );
    } else {
        assert!(opt.is_empty(), "nothing after the question: {opt:?}");
    }
    let m = Message::from_vec(up).expect("the upstream query parses");
    assert_eq!(m.queries().len(), 1);
    assert_eq!(ascii_name(m.queries()[0].name()), q.name);
    assert_eq!(m.queries()[0].query_type(), q.qtype);
}

#[derive(Debug, Clone)]
enum Rd {
    Cname(usize),
    V4(u32),
    V6(u128),
}

/// An upstream's answer to `qname` as hickory writes it (names compressed):
/// A, AAAA and CNAME records among a few names (so chains form), case
/// mixed at random.
fn answer_to(q: Vec<u8>, qname: Name) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let record = (
        0..4usize,
        any::<bool>(),
        0..3600u32,
        prop_oneof![
            (0..4usize).prop_map(Rd::Cname),
            any::<u32>().prop_map(Rd::V4),
            any::<u128>().prop_map(Rd::V6),
        ],
    );
    (
        proptest::collection::vec(name().prop_filter("plain", plain), 3),
        proptest::collection::vec(record.clone(), 0..6),
        proptest::collection::vec(record.clone(), 0..2),
        proptest::collection::vec(record, 0..2),
        proptest::sample::select(vec![
            ResponseCode::NoError,
            ResponseCode::NXDomain,
            ResponseCode::ServFail,
        ]),
        edns(),
        any::<bool>(),
    )
        .prop_map(move |(more, an, ns, ar, rcode, edns, mixed)| {
            let asked = Message::from_vec(&q).unwrap();
            let mut pool = vec![qname.clone()];
            pool.extend(more);
            let to_records = |list: &[(usize, bool, u32, Rd)]| -> Vec<Record> {
                list.iter()
                    .map(|(owner, shuffle, ttl, rd)| {
                        let mut owner = pool[*owner].clone();
                        if *shuffle {
                            owner.randomize_label_case();
                        }
                        let data = match rd {
                            Rd::Cname(t) => RData::CNAME(CNAME(pool[*t].clone())),
                            Rd::V4(a) => RData::A(A(Ipv4Addr::from(*a))),
                            Rd::V6(a) => RData::AAAA(AAAA(Ipv6Addr::from(*a))),
                        };
                        Record::from_rdata(owner, *ttl, data)
                    })
                    .collect()
            };
            let mut m = Message::new();
            let mut question = asked.queries()[0].clone();
            if mixed {
                let mut n = question.name().clone();
                n.randomize_label_case();
                question.set_name(n);
            }
            m.set_id(asked.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_recursion_desired(asked.recursion_desired())
                .set_recursion_available(true)
                .set_response_code(rcode)
                .add_query(question)
                .add_answers(to_records(&an))
                .add_name_servers(to_records(&ns))
                .add_additionals(to_records(&ar));
            if let Some(e) = edns {
                m.set_edns(e);
            }
            (q.clone(), m.to_vec().unwrap())
        })
}

fn query_and_answer() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    query()
        .prop_filter("plain name", |(_, n)| plain(n))
        .prop_flat_map(|(q, n)| answer_to(q, n))
}

/// `msg` with one to three bytes changed (mostly nudged by a little, so
/// lengths, counts and pointers stay near sense), and maybe a byte cut from
/// or added to its end.
fn mutate(msg: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = msg.len();
    let edit = prop_oneof![
        2 => (-2i16..=2).prop_map(|d| (d, None)),
        1 => any::<u8>().prop_map(|b| (0, Some(b))),
    ];
    (
        proptest::collection::vec((0..len.max(1), edit), 1..4),
        0..4u8,
        any::<u8>(),
    )
        .prop_map(move |(edits, end, extra)| {
            let mut m = msg.clone();
            for (i, (delta, set)) in edits {
                if let Some(x) = m.get_mut(i) {
                    *x = set.unwrap_or_else(|| x.wrapping_add_signed(delta as i8));
                }
            }
            match end {
                1 => {
                    m.pop();
                }
                2 => m.push(extra),
                _ => {}
            }
            m
        })
}

/// What the fast path read from `reply` must be what hickory reads there.
fn agrees_with_hickory(reply: &[u8], q: &Query, fast: &AnswerWire) {
    let m = Message::from_vec(reply).expect("hickory parses what the fast path took");
    assert!(
        answers_question(q, &m),
        "hickory: not an answer to the question"
    );
    assert!(!m.truncated());
    assert_eq!(u16::from(m.response_code()), u16::from(fast.rcode));
    assert_eq!(facts(m.answers()), fast.facts);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Queries hickory writes: plain names take the fast path, and both
    /// paths read the same query; own answers are byte for byte what the
    /// hickory-built ones were.
    #[test]
    fn queries_read_as_hickory_reads_them((q, qname) in query()) {
        let parsed = parse_query_parsed(&q).unwrap();
        prop_assert_eq!(read_query(&q).is_some(), plain(&qname));
        let fast = parse_query(&q).unwrap();
        prop_assert_eq!(&fast, &parsed);
        for rcode in [ResponseCode::Refused, ResponseCode::NXDomain, ResponseCode::ServFail] {
            prop_assert_eq!(own_answer(&fast, rcode), hickory_own_answer(&q, rcode));
        }
        is_own_upstream(&fast);
    }

    /// Whatever a query carries beside its question (additional records,
    /// EDNS options, odd header bits, trailing bytes), the query egressd
    /// sends upstream is the question (in the client's letter case) and
    /// egressd's own OPT, byte for byte as hickory writes them, on both
    /// paths; the client's id, case and EDNS still shape its own answers.
    #[test]
    fn upstream_queries_are_the_question_and_own_opt_only((raw, expected) in smuggling_query()) {
        let q = parse_query(&raw).unwrap();
        prop_assert_eq!(q.upstream(), &expected[..]);
        prop_assert!(!holds(q.upstream(), SECRET));
        is_own_upstream(&q);
        prop_assert_eq!(&parse_query_parsed(&raw).unwrap(), &q);
        prop_assert_eq!(u16::from_be_bytes([raw[0], raw[1]]), q.id);
        let refused = own_answer(&q, ResponseCode::Refused);
        prop_assert_eq!(&refused[..2], &raw[..2]);
        prop_assert_eq!(&refused[HEADER_LEN..HEADER_LEN + q.question().len()], q.question());
        prop_assert_eq!(refused[11] == 1, q.edns);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Whatever bytes the fast path takes as a query, hickory reads the
    /// same query from.
    #[test]
    fn mutated_queries_taken_only_as_hickory_reads_them(
        q in query().prop_filter("plain name", |(_, n)| plain(n)).prop_flat_map(|(q, _)| mutate(q))
    ) {
        if read_query(&q).is_some() {
            prop_assert_eq!(parse_query(&q), parse_query_parsed(&q));
        }
    }

    /// Whatever bytes are taken as a query, by either path, what goes
    /// upstream is only its question and egressd's own OPT.
    #[test]
    fn mutated_queries_send_only_their_question_upstream(
        q in smuggling_query().prop_flat_map(|(q, _)| mutate(q))
    ) {
        if let Ok(query) = parse_query(&q) {
            is_own_upstream(&query);
            prop_assert!(!holds(query.upstream(), SECRET));
            if read_query(&q).is_some() {
                prop_assert_eq!(Ok(query), parse_query_parsed(&q));
            }
        }
    }

    /// Answers hickory writes (compressed names, mixed case) take the fast
    /// path, read as hickory reads them, and are relayed unchanged but for
    /// the id, as the hickory path relays them.
    #[test]
    fn answers_read_as_hickory_reads_them((q, reply) in query_and_answer()) {
        let query = parse_query(&q).unwrap();
        let fast = read_answer(&reply, query.question());
        prop_assert!(fast.is_some(), "everyday answer not taken");
        if let Some(fast) = &fast {
            agrees_with_hickory(&reply, &query, fast);
        }
        let memory = DnsMemory::default();
        let now = Instant::now();
        let a = relay_answer(exchanged(&reply), &query, &memory, now, true).unwrap();
        let b = relay_parsed(exchanged(&reply), &query, &memory, now, true).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a[2..], &reply[2..]);
    }

    /// Whatever bytes the fast path takes as an answer, hickory reads the
    /// same answer from.
    #[test]
    fn mutated_answers_taken_only_as_hickory_reads_them(
        (q, reply) in query_and_answer().prop_flat_map(|(q, r)| (Just(q), mutate(r)))
    ) {
        let query = parse_query(&q).unwrap();
        if let Some(fast) = read_answer(&reply, query.question()) {
            agrees_with_hickory(&reply, &query, &fast);
        }
    }
}

/// A query for `name` (given as wire labels) with `extra` bytes after it.
fn raw_query(name: &[u8], ar: u8, extra: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, ar];
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m.extend_from_slice(extra);
    m
}

#[test]
fn unusual_queries_go_the_hickory_way() {
    let www = b"\x03www\x07example\x00";
    assert!(read_query(&raw_query(www, 0, b"")).is_some());
    // Trailing bytes, a label hickory escapes, a class other than IN, a
    // compression pointer in the question.
    assert!(read_query(&raw_query(www, 0, b"\x00")).is_none());
    assert!(read_query(&raw_query(b"\x03w w\x00", 0, b"")).is_none());
    let mut chaos = raw_query(www, 0, b"");
    let last = chaos.len() - 1;
    chaos[last] = 3;
    assert!(read_query(&chaos).is_none());
    assert!(read_query(&raw_query(b"\xc0\x0c", 0, b"")).is_none());
    // EDNS with a client subnet option (hickory reads it into a structure).
    let opt = |code: u8| -> Vec<u8> {
        vec![
            0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 8, 0, code, 0, 4, 0, 1, 0, 0,
        ]
    };
    assert!(read_query(&raw_query(www, 1, &opt(10))).is_some());
    assert!(read_query(&raw_query(www, 1, &opt(8))).is_none());
    // A name longer than the fast path takes is still read, the hickory way.
    let label = |n: u8| [&[n][..], &vec![b'a'; usize::from(n)]].concat();
    let long: Vec<u8> = [label(63), label(63), label(63), label(60), vec![0]].concat();
    let long = raw_query(&long, 0, b"");
    assert!(read_query(&long).is_none());
    let q = parse_query(&long).unwrap();
    assert_eq!(q.name.len(), 63 * 3 + 60 + 3);
}

#[test]
fn pointers_only_go_back_to_earlier_names() {
    let q = raw_query(b"\x01a\x00", 0, b"");
    let query = parse_query(&q).unwrap();
    let reply = |owner: &[u8]| {
        let mut r = q.clone();
        r[2] = 0x81;
        r[7] = 1;
        r.extend_from_slice(owner);
        r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        r
    };
    let fine = reply(b"\xc0\x0c");
    let a = read_answer(&fine, query.question()).unwrap();
    agrees_with_hickory(&fine, &query, &a);
    assert_eq!(
        a.facts,
        vec![Fact::Address {
            owner: "a".into(),
            ip: IpAddr::from([192, 0, 2, 1]),
            ttl: 60
        }]
    );
    // To itself, forward, into the header, a loop through two names.
    let at = u8::try_from(q.len()).unwrap();
    for owner in [
        vec![0xc0, at],
        vec![0xc0, at + 4],
        vec![0xc0, 0x02],
        vec![0x01, b'b', 0xc0, at],
    ] {
        assert!(read_answer(&reply(&owner), query.question()).is_none());
    }
}

#[test]
fn the_echoed_question_matches_but_for_the_case_of_its_name() {
    // HTTPS (type 65, 0x41: a capital A if read as a letter).
    let mut q = raw_query(b"\x01a\x00", 0, b"");
    q[16] = 0x41;
    let query = parse_query(&q).unwrap();
    let reply = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut r = q.clone();
        r[2] = 0x81;
        edit(&mut r);
        r
    };
    let same = reply(&|_| {});
    assert!(read_answer(&same, query.question()).is_some());
    let upper = reply(&|r| r[13] = b'A');
    assert!(read_answer(&upper, query.question()).is_some());
    // Type 0x61 differs from 0x41 only where a letter's case does.
    let other_type = reply(&|r| r[16] = 0x61);
    assert!(read_answer(&other_type, query.question()).is_none());
    let other_class = reply(&|r| r[18] = 3);
    assert!(read_answer(&other_class, query.question()).is_none());
    let other_name = reply(&|r| r[13] = b'b');
    assert!(read_answer(&other_name, query.question()).is_none());
}

/// Answers written by another library (dnspython, `../fixtures/`): the
/// everyday ones take the fast path and read as hickory reads them; those
/// with HTTPS/SVCB records go the hickory way.
#[test]
fn dnspython_answers() {
    for (q, r, everyday) in [
        (CNAME_Q, CNAME_R, true),
        (LOOP_Q, LOOP_R, true),
        (HTTPS_ECH_Q, HTTPS_ECH_R, false),
        (SVCB_Q, SVCB_R, false),
    ] {
        let query = parse_query(q).unwrap();
        match read_answer(r, query.question()) {
            Some(fast) => {
                assert!(everyday, "an HTTPS/SVCB answer was taken");
                agrees_with_hickory(r, &query, &fast);
                assert!(!fast.facts.is_empty());
            }
            None => assert!(!everyday, "everyday answer not taken"),
        }
    }
}
