//! The DNS fast path: a client's query and an upstream's answer read
//! straight from their bytes when they have the everyday shape, without
//! building a hickory message (a full parse and its allocations cost more
//! than the rest of a forwarded query's user-space work).
//!
//! The everyday shape: one question of class IN whose name is made of plain
//! labels ([`plain_label`]); an answer whose records are A, AAAA and CNAME of
//! class IN, with at most one OPT (in the additional section, no extended
//! rcode); no TC, nothing after the last record. Anything else is `None`
//! and takes the hickory way in [`super::message`], so this path only
//! accepts messages hickory reads the same way, and reads them the same way
//! (names stricter than hickory: no pointer in a query, a pointer only to
//! earlier bytes of an earlier name, at most [`MAX_NAME_WIRE`] bytes).
//! Property tests hold it to hickory on generated and mutated messages, and
//! the `dns_message` fuzz target does on arbitrary bytes. Pure: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::message::{Fact, HEADER_LEN};

const CLASS_IN: u16 = 1;
const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
/// The DO bit in an OPT record's TTL (its flags are the low 16 bits).
const DO_BIT: u32 = 0x8000;
/// The longest name this path reads (wire length, root byte included);
/// hickory's limit is 255, counted its own way: longer names go its way.
pub const MAX_NAME_WIRE: usize = 250;
/// EDNS options hickory reads into structures (and may reject): DAU, DHU,
/// N3U, client subnet. A message carrying one goes the hickory way.
const STRUCTURED_OPTIONS: [u16; 4] = [5, 6, 7, 8];

/// Whether hickory writes `label` as is (no escaping) in a name's ASCII
/// form: letters, digits, `_`, `-` after the first byte, `*` as the first.
pub fn plain_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.iter().enumerate().all(|(j, &b)| {
            b.is_ascii_alphanumeric() || b == b'_' || (b == b'-' && j > 0) || (b == b'*' && j == 0)
        })
}

/// A client's query of the everyday shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryWire<'a> {
    /// The client's id.
    pub id: u16,
    /// Header bytes 2 and 3 (opcode and RD; CD).
    pub flags: [u8; 2],
    /// The question as sent: name, type, class.
    pub question: &'a [u8],
    /// The question name: ASCII, lowercase, no trailing dot (empty for the root).
    pub name: String,
    /// The question type.
    pub qtype: u16,
    /// The OPT record's payload size, when there is one.
    pub edns_payload: Option<u16>,
    /// The OPT record's DO bit (false without one).
    pub dnssec_ok: bool,
}

/// Read a query of the everyday shape: QR clear, opcode QUERY, one question
/// of class IN, no answer or authority records, at most an OPT record.
pub fn read_query(raw: &[u8]) -> Option<QueryWire<'_>> {
    let h = raw.get(..HEADER_LEN)?;
    if h[2] & 0xf8 != 0 {
        return None;
    }
    let [qd, an, ns, ar] = counts(h);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut r = Reader {
        msg: raw,
        at: HEADER_LEN,
    };
    let name = r.name(false)?;
    let qtype = r.u16()?;
    if r.u16()? != CLASS_IN {
        return None;
    }
    let question = raw.get(HEADER_LEN..r.at)?;
    let (edns_payload, dnssec_ok) = if ar == 1 {
        let (payload, ttl) = r.opt_record()?;
        (Some(payload), ttl & DO_BIT != 0)
    } else {
        (None, false)
    };
    (r.at == raw.len()).then_some(QueryWire {
        id: u16::from_be_bytes([h[0], h[1]]),
        flags: [h[2], h[3]],
        question,
        name,
        qtype,
        edns_payload,
        dnssec_ok,
    })
}

/// An upstream answer of the everyday shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerWire {
    /// The response code (the header's; an extended one goes the hickory way).
    pub rcode: u8,
    /// The answer section's A, AAAA and CNAME records, in order.
    pub facts: Vec<Fact>,
}

/// Read an answer to `question` (a [`QueryWire::question`]) of the everyday
/// shape: QR set, opcode QUERY, TC clear, the question echoed (the name
/// without regard to ASCII case, type and class exactly), A, AAAA and CNAME
/// records of class IN, at most one OPT in the additional section.
pub fn read_answer(reply: &[u8], question: &[u8]) -> Option<AnswerWire> {
    let h = reply.get(..HEADER_LEN)?;
    if h[2] & 0xfa != 0x80 {
        return None;
    }
    let [qd, an, ns, ar] = counts(h);
    if qd != 1 {
        return None;
    }
    let qend = HEADER_LEN + question.len();
    if !same_question(question, reply.get(HEADER_LEN..qend)?) {
        return None;
    }
    let mut r = Reader {
        msg: reply,
        at: qend,
    };
    let mut facts = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        facts.push(r.fact()?);
    }
    for _ in 0..ns {
        r.fact()?;
    }
    let mut opt = false;
    for _ in 0..ar {
        if r.msg.get(r.at..r.at + 3) == Some(&[0, 0, TYPE_OPT as u8][..]) && !opt {
            opt = true;
            // An extended rcode (high bits in the TTL's first byte) goes
            // the hickory way.
            if r.opt_record()?.1 >> 24 != 0 {
                return None;
            }
        } else {
            r.fact()?;
        }
    }
    (r.at == reply.len()).then_some(AnswerWire {
        rcode: h[3] & 0x0f,
        facts,
    })
}

/// Whether two questions as on the wire (uncompressed name, type, class)
/// are the same: the name without regard to ASCII case (its length bytes,
/// all below 64, compare exactly), type and class exactly.
pub fn same_question(asked: &[u8], answered: &[u8]) -> bool {
    let (Some(a), Some(b)) = (asked.len().checked_sub(4), answered.len().checked_sub(4)) else {
        return false;
    };
    let (a_name, a_rest) = asked.split_at(a);
    let (b_name, b_rest) = answered.split_at(b);
    a_name.eq_ignore_ascii_case(b_name) && a_rest == b_rest
}

/// The four section counts of a header.
fn counts(h: &[u8]) -> [u16; 4] {
    let at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    [at(4), at(6), at(8), at(10)]
}

/// A cursor over a message; every read is bounds-checked.
struct Reader<'a> {
    msg: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u16(&mut self) -> Option<u16> {
        let b = self.msg.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.msg.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A name of plain labels, lowercased, dots between labels. With
    /// `pointers`, compression pointers are followed when they point to
    /// bytes before the segment being read, which lies wholly before the
    /// segment that pointed to it (so every jump goes back: no loop).
    fn name(&mut self, pointers: bool) -> Option<String> {
        // Room for an everyday name without growing.
        let mut out = String::with_capacity(64);
        let mut pos = self.at;
        let mut segment = self.at;
        let mut limit = self.msg.len();
        let mut resume = None;
        let mut wire = 1;
        loop {
            let len = *self.msg.get(pos)?;
            match len {
                0 if pos < limit => {
                    self.at = resume.unwrap_or(pos + 1);
                    return Some(out);
                }
                1..=63 => {
                    let len = usize::from(len);
                    let end = pos + 1 + len;
                    let label = self.msg.get(pos + 1..end)?;
                    wire += 1 + len;
                    if end > limit || wire > MAX_NAME_WIRE || !plain_label(label) {
                        return None;
                    }
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                    pos = end;
                }
                0xc0..=0xff if pointers && pos + 2 <= limit => {
                    let low = *self.msg.get(pos + 1)?;
                    let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                    if target < HEADER_LEN || target >= segment {
                        return None;
                    }
                    resume.get_or_insert(pos + 2);
                    limit = segment;
                    segment = target;
                    pos = target;
                }
                _ => return None,
            }
        }
    }

    /// A record of the answer or authority section (or an additional one
    /// that is not OPT): A, AAAA or CNAME of class IN, as a fact.
    fn fact(&mut self) -> Option<Fact> {
        let owner = self.name(true)?;
        let rtype = self.u16()?;
        if self.u16()? != CLASS_IN {
            return None;
        }
        let ttl = self.u32()?;
        let rdlen = usize::from(self.u16()?);
        let start = self.at;
        let end = start + rdlen;
        let data = self.msg.get(start..end)?;
        let fact = match (rtype, data.len()) {
            (TYPE_A, 4) => Fact::Address {
                owner,
                ip: IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
                ttl,
            },
            (TYPE_AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(data);
                Fact::Address {
                    owner,
                    ip: IpAddr::V6(Ipv6Addr::from(octets)),
                    ttl,
                }
            }
            (TYPE_CNAME, 1..) => {
                let target = self.name(true)?;
                if self.at != end {
                    return None;
                }
                Fact::Alias { owner, target, ttl }
            }
            _ => return None,
        };
        self.at = end;
        Some(fact)
    }

    /// An OPT record: root owner, type OPT, options that hickory keeps
    /// opaque. Returns (class, TTL): the payload size, and the extended
    /// rcode's high bits, version and flags.
    fn opt_record(&mut self) -> Option<(u16, u32)> {
        if self.msg.get(self.at) != Some(&0) {
            return None;
        }
        self.at += 1;
        if self.u16()? != TYPE_OPT {
            return None;
        }
        let class = self.u16()?;
        let ttl = self.u32()?;
        let rdlen = usize::from(self.u16()?);
        let end = self.at + rdlen;
        self.msg.get(self.at..end)?;
        while self.at < end {
            let code = self.u16()?;
            let len = usize::from(self.u16()?);
            self.at += len;
            if self.at > end || STRUCTURED_OPTIONS.contains(&code) {
                return None;
            }
        }
        (self.at == end).then_some((class, ttl))
    }
}

#[cfg(test)]
mod tests;
