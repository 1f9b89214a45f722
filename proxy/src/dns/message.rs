//! DNS messages as the proxy handles them: reading a client's query (the
//! everyday shape straight from its bytes in [`super::wire`], anything else
//! through hickory-proto) and the query the proxy asks upstream in its
//! place (its question and the proxy's own OPT record, nothing else of the
//! client's), the answers the proxy makes itself (REFUSED,
//! NXDOMAIN, SERVFAIL, FORMERR, NOTIMP), what an upstream answer teaches
//! (the CNAME chain from the query name and its addresses), removing `ech`
//! from HTTPS/SVCB records, and fitting an answer into a client's UDP
//! payload size. Pure: no I/O.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::HTTPS;
use hickory_proto::rr::rdata::svcb::{Mandatory, SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::wire;

/// DNS header length.
pub const HEADER_LEN: usize = 12;
/// The UDP payload every client may receive (RFC 1035) without EDNS.
pub const MIN_UDP_PAYLOAD: usize = 512;
/// The EDNS payload size the proxy advertises in its own answers and
/// upstream queries.
const OWN_EDNS_PAYLOAD: u16 = 1232;
/// An OPT record without options: root owner, type, payload size, TTL
/// (extended rcode, version, flags), empty data.
const OPT_LEN: usize = 11;
/// RD in header byte 2; CD in header byte 3.
const RD: u8 = 0x01;
const CD: u8 = 0x10;
/// CNAME hops followed before giving up on a chain.
const MAX_CHAIN: usize = 16;

/// A client's query that the proxy can decide on: what deciding, answering
/// it itself, asking upstream and checking the upstream's answer need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The client's id.
    pub id: u16,
    /// Header bytes 2 and 3 as the client sent them (opcode and RD; CD).
    flags: [u8; 2],
    /// The query the proxy sends upstream, built by [`upstream_query`]:
    /// its header, the question as on the wire (uncompressed: name, type,
    /// class), the proxy's own OPT record when the client had one.
    upstream: Box<[u8]>,
    /// The question name: ASCII, lowercase, no trailing dot (empty for the root).
    pub name: String,
    /// The question's type.
    pub qtype: RecordType,
    /// The question's class.
    pub qclass: DNSClass,
    /// Whether the query has an OPT record (EDNS).
    pub edns: bool,
    /// The largest UDP answer the client accepts.
    pub udp_payload: usize,
}

impl Query {
    /// The question as on the wire, uncompressed: name, type, class.
    pub fn question(&self) -> &[u8] {
        let end = self
            .upstream
            .len()
            .saturating_sub(if self.edns { OPT_LEN } else { 0 });
        self.upstream.get(HEADER_LEN..end).unwrap_or_default()
    }

    /// The query to send upstream: nothing of the client's message but the
    /// decided question (its name in the client's letter case, so a
    /// client's case randomisation still round-trips), RD and CD, and
    /// whether it had EDNS and the DO bit. Additional records, EDNS
    /// options, other header bits and bytes after the last record carry
    /// bytes the job chose, to a resolver outside; none of them go. Its id
    /// is 0 until [`set_upstream_id`](Self::set_upstream_id).
    pub fn upstream(&self) -> &[u8] {
        &self.upstream
    }

    /// Give the upstream query `id` (the client's id is not ours to reuse).
    pub fn set_upstream_id(&mut self, id: u16) {
        set_id(&mut self.upstream, id);
    }
}

/// Why a query is not decided on, and what (if anything) to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// What was wrong, for the audit record.
    pub what: &'static str,
    /// The answer to send; `None`: drop silently.
    pub reply: Option<Vec<u8>>,
}

/// Read a query from the client. Anything but one standard question is
/// rejected: FORMERR (or NOTIMP for other opcodes) when a header can be
/// answered, silence when not even that (or when it is a response).
pub fn parse_query(raw: &[u8]) -> Result<Query, Rejected> {
    if let Some(w) = wire::read_query(raw) {
        let edns = w.edns_payload.map(|_| w.dnssec_ok);
        return Ok(Query {
            id: w.id,
            flags: w.flags,
            upstream: upstream_query(w.flags, w.question, edns),
            name: w.name,
            qtype: RecordType::from(w.qtype),
            qclass: DNSClass::IN,
            edns: w.edns_payload.is_some(),
            udp_payload: udp_payload(w.edns_payload),
        });
    }
    parse_query_parsed(raw)
}

/// [`parse_query`] through a hickory message: every query that is not of
/// the everyday shape [`wire::read_query`] reads (which has at least
/// [`HEADER_LEN`] bytes).
pub fn parse_query_parsed(raw: &[u8]) -> Result<Query, Rejected> {
    let Some(header) = raw.get(..HEADER_LEN) else {
        return Err(Rejected {
            what: "DNS message shorter than its header",
            reply: None,
        });
    };
    if header[2] & 0x80 != 0 {
        return Err(Rejected {
            what: "a DNS response where a query was expected",
            reply: None,
        });
    }
    let formerr = |what| Rejected {
        what,
        reply: Some(header_only_error(header, ResponseCode::FormErr)),
    };
    let message = Message::from_vec(raw).map_err(|_| formerr("DNS query cannot be parsed"))?;
    if message.op_code() != OpCode::Query {
        return Err(Rejected {
            what: "DNS opcode other than QUERY",
            reply: Some(header_only_error(header, ResponseCode::NotImp)),
        });
    }
    let [question] = message.queries() else {
        return Err(formerr("DNS query without exactly one question"));
    };
    let mut wire = Vec::with_capacity(question.name().len() + 6);
    question
        .emit(&mut BinEncoder::new(&mut wire))
        .map_err(|_| formerr("DNS query cannot be parsed"))?;
    let flags = [header[2], header[3]];
    let edns = message.extensions().as_ref().map(|e| e.flags().dnssec_ok);
    Ok(Query {
        id: message.id(),
        flags,
        upstream: upstream_query(flags, &wire, edns),
        name: ascii_name(question.name()),
        qtype: question.query_type(),
        qclass: question.query_class(),
        edns: message.extensions().is_some(),
        udp_payload: udp_payload(message.extensions().as_ref().map(|e| e.max_payload())),
    })
}

/// The query sent upstream for a client's `question` (as on the wire) with
/// header bytes 2 and 3 `flags`: id 0, opcode QUERY, RD and CD as the
/// client set them, every other bit clear; one question; with `edns`
/// (the client had an OPT record; its DO bit), the proxy's own OPT record:
/// [`OWN_EDNS_PAYLOAD`], version 0, DO as the client set it, no options.
/// Exactly one allocation, of its final size.
fn upstream_query(flags: [u8; 2], question: &[u8], edns: Option<bool>) -> Box<[u8]> {
    let opt = if edns.is_some() { OPT_LEN } else { 0 };
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + opt);
    out.extend_from_slice(&[0, 0, flags[0] & RD, flags[1] & CD, 0, 1, 0, 0, 0, 0, 0]);
    out.push(u8::from(edns.is_some()));
    out.extend_from_slice(question);
    if let Some(dnssec_ok) = edns {
        let [hi, lo] = OWN_EDNS_PAYLOAD.to_be_bytes();
        let flags = if dnssec_ok { 0x80 } else { 0 };
        out.extend_from_slice(&[0, 0, 41, hi, lo, 0, 0, flags, 0, 0, 0]);
    }
    out.into_boxed_slice()
}

/// The largest UDP answer a client accepts: its EDNS payload size, never
/// below what every client takes.
fn udp_payload(edns_payload: Option<u16>) -> usize {
    edns_payload
        .map_or(MIN_UDP_PAYLOAD, usize::from)
        .max(MIN_UDP_PAYLOAD)
}

/// A name as the policy reads it: ASCII, lowercase, no trailing dot.
/// Called several times per answer, so names made only of letters, digits,
/// `_`, inner `-` and a leading `*` (which hickory writes unescaped) are
/// built here directly; anything else goes through hickory's escaping.
pub fn ascii_name(name: &Name) -> String {
    let mut s = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if !wire::plain_label(label) {
            return escaped_ascii_name(name);
        }
        if i > 0 {
            s.push('.');
        }
        s.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    s
}

/// [`ascii_name`] through hickory's escaping (any label bytes).
fn escaped_ascii_name(name: &Name) -> String {
    let mut s = name.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// An error answer built from nothing but a header (the rest did not parse):
/// same id, opcode and RD, QR set, no sections.
fn header_only_error(header: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = header[0];
    out[1] = header[1];
    // QR=1, opcode kept, AA=0, TC=0, RD kept.
    out[2] = 0x80 | (header[2] & 0x79);
    // RA=1, rcode.
    out[3] = 0x80 | (u16::from(rcode) as u8 & 0x0f);
    out
}

/// The proxy's own answer to `query`: `rcode`, the question echoed, no
/// records (REFUSED, NXDOMAIN, SERVFAIL). Same id, opcode, RD and CD; RA
/// set; an OPT record advertising [`OWN_EDNS_PAYLOAD`] when the query had
/// one (it carries the rcode's high bits).
pub fn own_answer(query: &Query, rcode: ResponseCode) -> Vec<u8> {
    let code = u16::from(rcode);
    let question = query.question();
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + OPT_LEN);
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR=1, opcode and RD kept, AA=0, TC=0.
    out.push(0x80 | (query.flags[0] & 0x79));
    // RA=1, Z=0, AD=0, CD kept, the rcode's low bits.
    out.push(0x80 | (query.flags[1] & CD) | (code & 0x0f) as u8);
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(query.edns)]);
    out.extend_from_slice(question);
    if query.edns {
        let [hi, lo] = OWN_EDNS_PAYLOAD.to_be_bytes();
        // Root owner, type OPT, payload, TTL (rcode high bits, version 0,
        // no flags), no options.
        out.extend_from_slice(&[0, 0, 41, hi, lo, (code >> 4) as u8, 0, 0, 0, 0, 0]);
    }
    out
}

/// What an upstream answer teaches about the query name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// The CNAME chain from the query name, in order (the query name not
    /// included), each with its record's TTL.
    pub aliases: Vec<(String, u32)>,
    /// The addresses of the chain's last name (A/AAAA, and the address hints
    /// of an HTTPS/SVCB record that serves that name itself).
    pub addresses: Vec<IpAddr>,
    /// The smallest TTL among those addresses' records.
    pub ttl: u32,
}

/// What one answer record says, as far as the proxy learns from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A CNAME record: `owner` is an alias of `target`.
    Alias {
        /// The record's name (ASCII, lowercase, no trailing dot).
        owner: String,
        /// The canonical name it points to (same form).
        target: String,
        /// The record's TTL.
        ttl: u32,
    },
    /// An address of `owner`: an A or AAAA record, or an address hint of an
    /// HTTPS/SVCB record that serves its own name (target `.`).
    Address {
        /// The record's name (ASCII, lowercase, no trailing dot).
        owner: String,
        /// The address.
        ip: IpAddr,
        /// The record's TTL.
        ttl: u32,
    },
}

/// The facts of hickory records, in order (other records say nothing the
/// proxy keeps).
pub fn facts(records: &[Record]) -> Vec<Fact> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let ttl = r.ttl();
        let address = |ip: IpAddr| Fact::Address {
            owner: ascii_name(r.name()),
            ip,
            ttl,
        };
        match r.data() {
            RData::CNAME(c) => out.push(Fact::Alias {
                owner: ascii_name(r.name()),
                target: ascii_name(&c.0),
                ttl,
            }),
            RData::A(a) => out.push(address(IpAddr::V4(a.0))),
            RData::AAAA(a) => out.push(address(IpAddr::V6(a.0))),
            RData::HTTPS(HTTPS(s)) | RData::SVCB(s) if s.target_name().is_root() => {
                for (_, v) in s.svc_params() {
                    match v {
                        SvcParamValue::Ipv4Hint(h) => {
                            out.extend(h.0.iter().map(|a| address(IpAddr::V4(a.0))));
                        }
                        SvcParamValue::Ipv6Hint(h) => {
                            out.extend(h.0.iter().map(|a| address(IpAddr::V6(a.0))));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Follow the CNAME chain from `qname` through the answer section's
/// `facts` and collect the addresses its names were answered with.
pub fn learn(qname: &str, facts: &[Fact]) -> Learned {
    let mut learned = Learned::default();
    let mut chain: Vec<&str> = vec![qname];
    let mut current = qname;
    for _ in 0..MAX_CHAIN {
        let next = facts.iter().find_map(|f| match f {
            Fact::Alias { owner, target, ttl } if owner == current => Some((target, *ttl)),
            _ => None,
        });
        match next {
            Some((target, ttl)) if !chain.contains(&target.as_str()) => {
                chain.push(target);
                learned.aliases.push((target.clone(), ttl));
                current = target;
            }
            _ => break,
        }
    }
    let mut min_ttl: Option<u32> = None;
    for f in facts {
        if let Fact::Address { owner, ip, ttl } = f
            && chain.contains(&owner.as_str())
        {
            if !learned.addresses.contains(ip) {
                learned.addresses.push(*ip);
            }
            min_ttl = Some(min_ttl.map_or(*ttl, |m| m.min(*ttl)));
        }
    }
    learned.ttl = min_ttl.unwrap_or(0);
    learned
}

/// Remove the `ech` SvcParam from every HTTPS and SVCB record (and from
/// their `mandatory` lists), so the client's ClientHello keeps the real name
/// in cleartext. Returns whether anything was removed.
pub fn strip_ech(message: &mut Message) -> bool {
    let mut changed = strip_ech_in(message.answers_mut());
    changed |= strip_ech_in(message.name_servers_mut());
    changed |= strip_ech_in(message.additionals_mut());
    changed
}

fn strip_ech_in(records: &mut [Record]) -> bool {
    let mut changed = false;
    for r in records {
        let stripped = match r.data() {
            RData::HTTPS(HTTPS(s)) => without_ech(s).map(|s| RData::HTTPS(HTTPS(s))),
            RData::SVCB(s) => without_ech(s).map(RData::SVCB),
            _ => None,
        };
        if let Some(data) = stripped {
            r.set_data(data);
            changed = true;
        }
    }
    changed
}

fn without_ech(s: &SVCB) -> Option<SVCB> {
    if !s
        .svc_params()
        .iter()
        .any(|(k, _)| *k == SvcParamKey::EchConfigList)
    {
        return None;
    }
    let params = s
        .svc_params()
        .iter()
        .filter(|(k, _)| *k != SvcParamKey::EchConfigList)
        .map(|(k, v)| match v {
            SvcParamValue::Mandatory(Mandatory(keys)) => (
                *k,
                SvcParamValue::Mandatory(Mandatory(
                    keys.iter()
                        .copied()
                        .filter(|k| *k != SvcParamKey::EchConfigList)
                        .collect(),
                )),
            ),
            other => (*k, other.clone()),
        })
        .filter(|(_, v)| !matches!(v, SvcParamValue::Mandatory(Mandatory(keys)) if keys.is_empty()))
        .collect();
    Some(SVCB::new(s.svc_priority(), s.target_name().clone(), params))
}

/// Whether `reply` is an answer to `query`'s question (same name, type and
/// class; the id is checked by the transport).
pub fn answers_question(query: &Query, reply: &Message) -> bool {
    reply.message_type() == MessageType::Response
        && match reply.queries() {
            [r] => {
                r.query_type() == query.qtype
                    && r.query_class() == query.qclass
                    && ascii_name(r.name()) == query.name
            }
            _ => false,
        }
}

/// `reply` as it may go back over UDP to a client that accepts `max` bytes:
/// unchanged when it fits, else the header and question with TC set.
pub fn fit_udp(reply: Vec<u8>, message: &Message, max: usize) -> Vec<u8> {
    if reply.len() <= max {
        return reply;
    }
    let mut m = message.truncate();
    m.set_id(message.id());
    m.to_vec().unwrap_or_else(|_| {
        let mut h = reply;
        h.truncate(HEADER_LEN);
        if let Some(flags) = h.get_mut(2) {
            *flags |= 0x02;
        }
        h.iter_mut().skip(4).for_each(|b| *b = 0);
        h
    })
}

/// Put `id` into an encoded message.
pub fn set_id(raw: &mut [u8], id: u16) {
    if let Some(h) = raw.get_mut(..2) {
        h.copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The direct path gives exactly what hickory's escaping gives, for
        /// plain names and for names with bytes it must escape.
        #[test]
        fn ascii_name_matches_hickory(
            labels in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        8 => proptest::sample::select(b"abcXYZ019-_*".to_vec()),
                        1 => any::<u8>(),
                    ],
                    1..12,
                ),
                0..5,
            ),
            fqdn in any::<bool>(),
        ) {
            let Ok(mut name) = Name::from_labels(labels) else {
                return Ok(());
            };
            name.set_fqdn(fqdn);
            prop_assert_eq!(ascii_name(&name), escaped_ascii_name(&name));
        }
    }

    #[test]
    fn ascii_name_examples() {
        let n = |s: &str| Name::from_ascii(s).unwrap();
        assert_eq!(ascii_name(&n("WWW.Example.COM.")), "www.example.com");
        assert_eq!(ascii_name(&n("*.a_b.x-y")), "*.a_b.x-y");
        assert_eq!(ascii_name(&Name::root()), "");
        let odd = Name::from_labels(vec![b"-a".to_vec(), b"b*".to_vec()]).unwrap();
        assert_eq!(ascii_name(&odd), escaped_ascii_name(&odd));
        assert_ne!(ascii_name(&odd), "-a.b*");
    }
}
