//! DNS message handling on arbitrary bytes, both as a client's query (parse,
//! own answers) and as an upstream's answer (CNAME chain, `ech` removal,
//! re-encoding, UDP truncation): never panics.
#![no_main]

#[path = "../../proxy/src/dns/message.rs"]
#[allow(dead_code, missing_docs)]
mod message;

use hickory_proto::op::{Message, ResponseCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match message::parse_query(data) {
        Ok(q) => {
            let refused = message::own_answer(&q, ResponseCode::Refused);
            assert!(Message::from_vec(&refused).is_ok());
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
        let _ = message::learn(&qname, reply.answers());
        if message::strip_ech(&mut reply) {
            if let Ok(wire) = reply.to_vec() {
                let mut again = Message::from_vec(&wire).expect("re-encoded answer parses");
                assert!(!message::strip_ech(&mut again), "ech survived");
            }
        }
        let _ = message::fit_udp(data.to_vec(), &reply, 512);
    }
});
