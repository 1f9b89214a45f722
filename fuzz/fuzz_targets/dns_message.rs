//! DNS message handling on arbitrary bytes, both as a client's query (parse,
//! own answers) and as an upstream's answer (CNAME chain, `ech` removal,
//! re-encoding, UDP truncation): never panics. And the fast path
//! (`wire.rs`) reads nothing hickory reads differently: a query it takes
//! is the query the hickory path reads; an answer it takes (the input's
//! first byte says where the query ends and the answer begins) is what
//! hickory reads. And whatever a query carries, the query sent upstream for
//! it is its question and egressd's own OPT record, nothing else.
#![no_main]

#[path = "../../proxy/src/dns/message.rs"]
#[allow(dead_code, missing_docs)]
mod message;
#[path = "../../proxy/src/dns/wire.rs"]
#[allow(dead_code, missing_docs)]
mod wire;

use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if wire::read_query(data).is_some() {
        assert_eq!(message::parse_query(data), message::parse_query_parsed(data));
    }
    if let Some((&n, rest)) = data.split_first() {
        let (q, reply) = rest.split_at(usize::from(n).min(rest.len()));
        if let Ok(query) = message::parse_query(q)
            && let Some(fast) = wire::read_answer(reply, query.question())
        {
            let m = Message::from_vec(reply).expect("hickory parses what the fast path took");
            assert!(message::answers_question(&query, &m));
            assert!(!m.truncated());
            assert_eq!(u16::from(m.response_code()), u16::from(fast.rcode));
            assert_eq!(message::facts(m.answers()), fast.facts);
        }
    }
    match message::parse_query(data) {
        Ok(q) => {
            let refused = message::own_answer(&q, ResponseCode::Refused);
            assert!(Message::from_vec(&refused).is_ok());
            own_upstream_only(&q);
        }
        Err(rejected) => {
            if let Some(reply) = rejected.reply {
                assert_eq!(reply.len(), message::HEADER_LEN);
                assert_eq!(&reply[..2], &data[..2]);
            }
        }
    }
    if let Ok(mut reply) = Message::from_vec(data) {
        let qname = reply
            .queries()
            .first()
            .map(|q| message::ascii_name(q.name()))
            .unwrap_or_default();
        let _ = message::learn(&qname, &message::facts(reply.answers()));
        if message::strip_ech(&mut reply) {
            if let Ok(wire) = reply.to_vec() {
                let mut again = Message::from_vec(&wire).expect("re-encoded answer parses");
                assert!(!message::strip_ech(&mut again), "ech survived");
            }
        }
        let _ = message::fit_udp(data.to_vec(), &reply, 512);
    }
});

/// `q`'s upstream query: RD and CD at most in the header, one question (the
/// one read), egressd's own OPT (payload 1232, version 0, DO or not, no
/// options) when the client had EDNS, and not one byte more.
fn own_upstream_only(q: &message::Query) {
    let up = q.upstream();
    let question = q.question();
    let h = message::HEADER_LEN;
    assert_eq!(up[2] & !0x01, 0);
    assert_eq!(up[3] & !0x10, 0);
    assert_eq!(up[4..h], [0, 1, 0, 0, 0, 0, 0, u8::from(q.edns)]);
    assert_eq!(&up[h..h + question.len()], question);
    let opt = &up[h + question.len()..];
    if q.edns {
        assert_eq!(opt[..7], [0, 0, 41, 4, 0xd0, 0, 0]);
        assert!(opt[7] == 0 || opt[7] == 0x80);
        assert_eq!(opt[8..], [0, 0, 0]);
    } else {
        assert!(opt.is_empty());
    }
    let m = Message::from_vec(up).expect("the upstream query parses");
    assert_eq!(message::ascii_name(m.queries()[0].name()), q.name);
}
