//! The TLS ClientHello parser (RFC 8446 4.1.2, RFC 6066 3): reassembles the
//! handshake message from one or more TLS records and reads the server_name
//! and whether encrypted_client_hello is offered. Nothing else of the hello is
//! interpreted, but every length on the way is checked against its container.

use std::borrow::Cow;

use super::PeekError;

/// TLS record content type `handshake` (the first byte of a ClientHello).
pub const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `encrypted_client_hello` (RFC 9849 / draft-ietf-tls-esni).
pub const EXT_ECH: u16 = 0xfe0d;
/// `NameType` `host_name` inside server_name.
const NAME_TYPE_HOST_NAME: u8 = 0;
/// The largest record fragment a peer may send (RFC 8446 5.1: 2^14).
const MAX_RECORD_FRAGMENT: usize = 1 << 14;
/// Record header: type (1), legacy version (2), length (2).
const RECORD_HEADER: usize = 5;
/// Handshake header: type (1), length (3).
const HANDSHAKE_HEADER: usize = 4;

/// What a ClientHello told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The single `host_name` of server_name, lowercased, one trailing dot
    /// removed. `None` when there is no server_name extension.
    pub sni: Option<String>,
    /// The encrypted_client_hello extension is present (`sni` is the outer name).
    pub ech: bool,
    /// How many bytes of the buffer the records carrying the hello occupy,
    /// up to the hello's last byte.
    pub wire_len: usize,
}

/// Parse the ClientHello at the start of `buf` (TLS records, from the first
/// record header). `max_hello` caps the handshake message (header included);
/// the records carrying it may take at most twice that on the wire.
pub fn parse(buf: &[u8], max_hello: usize) -> Result<ClientHello, PeekError> {
    let (msg, wire_len) = reassemble(buf, max_hello)?;
    let body = msg.get(HANDSHAKE_HEADER..).unwrap_or_default();
    let (sni, ech) = parse_body(body)?;
    Ok(ClientHello { sni, ech, wire_len })
}

/// Collect the handshake message from consecutive handshake records. Returns
/// the message (borrowed when one record holds it) and the wire bytes used.
fn reassemble(buf: &[u8], max_hello: usize) -> Result<(Cow<'_, [u8]>, usize), PeekError> {
    let wire_cap = max_hello.saturating_mul(2);
    let mut msg: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    // Total message size once its header is known.
    let mut need: Option<usize> = None;
    let mut pos = 0usize;
    loop {
        if pos.saturating_add(RECORD_HEADER) > wire_cap {
            return Err(PeekError::TooLarge);
        }
        let rest = buf.get(pos..).unwrap_or_default();
        check_record_header_prefix(rest)?;
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return Err(PeekError::Incomplete);
        };
        let rec_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if rec_len == 0 {
            return Err(PeekError::Malformed("empty TLS handshake record"));
        }
        if rec_len > MAX_RECORD_FRAGMENT {
            return Err(PeekError::Malformed("TLS record longer than 2^14 bytes"));
        }
        let mut frag = pos + RECORD_HEADER;
        let rec_end = frag + rec_len;
        while frag < rec_end {
            let want = need.unwrap_or(HANDSHAKE_HEADER) - msg.len();
            let piece_end = frag + want.min(rec_end - frag);
            if piece_end > wire_cap {
                return Err(PeekError::TooLarge);
            }
            let avail_end = piece_end.min(buf.len());
            append(&mut msg, buf.get(frag..avail_end).unwrap_or_default());
            if let Some(&t) = msg.first()
                && t != HANDSHAKE_CLIENT_HELLO
            {
                return Err(PeekError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            if avail_end < piece_end {
                return Err(PeekError::Incomplete);
            }
            frag = piece_end;
            if need.is_none()
                && let [_, a, b, c, ..] = *msg
            {
                let total = HANDSHAKE_HEADER
                    + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
                if total > max_hello {
                    return Err(PeekError::TooLarge);
                }
                need = Some(total);
            }
            if need == Some(msg.len()) {
                return Ok((msg, frag));
            }
        }
        pos = rec_end;
    }
}

/// Validate whatever part of a record header is present.
fn check_record_header_prefix(rest: &[u8]) -> Result<(), PeekError> {
    if let Some(&t) = rest.first()
        && t != CONTENT_TYPE_HANDSHAKE
    {
        return Err(PeekError::Malformed(
            "a record other than handshake interrupts the ClientHello",
        ));
    }
    if let Some(&major) = rest.get(1)
        && major != 3
    {
        return Err(PeekError::Malformed("TLS record version is not 3.x"));
    }
    Ok(())
}

fn append<'a>(msg: &mut Cow<'a, [u8]>, piece: &'a [u8]) {
    if piece.is_empty() {
        return;
    }
    if msg.is_empty() {
        *msg = Cow::Borrowed(piece);
    } else {
        msg.to_mut().extend_from_slice(piece);
    }
}

/// The ClientHello body: returns (server name, ECH offered).
fn parse_body(body: &[u8]) -> Result<(Option<String>, bool), PeekError> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16("ClientHello version overruns its container")?;
    if legacy_version >> 8 != 3 {
        return Err(PeekError::Malformed("ClientHello version is not 3.x"));
    }
    r.take(32, "ClientHello random overruns its container")?;
    let session_id = r.vec_u8("legacy_session_id overruns its container")?;
    if session_id.len() > 32 {
        return Err(PeekError::Malformed(
            "legacy_session_id longer than 32 bytes",
        ));
    }
    let suites = r.vec_u16("cipher_suites overruns its container")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(PeekError::Malformed(
            "cipher_suites length is not a positive even number",
        ));
    }
    if r.vec_u8("legacy_compression_methods overruns its container")?
        .is_empty()
    {
        return Err(PeekError::Malformed("no compression method"));
    }
    if r.is_empty() {
        // A TLS 1.2 hello may carry no extensions at all.
        return Ok((None, false));
    }
    let mut exts = Reader::new(r.vec_u16("extensions overruns its container")?);
    if !r.is_empty() {
        return Err(PeekError::Malformed(
            "bytes after the ClientHello extensions",
        ));
    }
    let mut sni: Option<Option<String>> = None;
    let mut ech = false;
    while !exts.is_empty() {
        let ext_type = exts.u16("extension type overruns its container")?;
        let data = exts.vec_u16("extension data overruns its container")?;
        match ext_type {
            EXT_SERVER_NAME => {
                if sni.is_some() {
                    return Err(PeekError::Malformed("server_name extension sent twice"));
                }
                sni = Some(parse_server_name(data)?);
            }
            EXT_ECH => {
                if ech {
                    return Err(PeekError::Malformed(
                        "encrypted_client_hello extension sent twice",
                    ));
                }
                ech = true;
            }
            // GREASE (0x?a?a) and every other extension: skipped by length.
            _ => {}
        }
    }
    Ok((sni.flatten(), ech))
}

/// The server_name extension body (RFC 6066 3): exactly one `host_name`.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, PeekError> {
    let mut outer = Reader::new(data);
    let list = outer.vec_u16("server_name_list overruns its container")?;
    if !outer.is_empty() {
        return Err(PeekError::Malformed("bytes after server_name_list"));
    }
    if list.is_empty() {
        return Err(PeekError::Malformed("empty server_name_list"));
    }
    let mut r = Reader::new(list);
    let mut host = None;
    while !r.is_empty() {
        let name_type = r.u8("server name type overruns its container")?;
        let name = r.vec_u16("server name overruns its container")?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host.is_some() {
                return Err(PeekError::Malformed(
                    "more than one host_name in server_name",
                ));
            }
            host = Some(host_name(name)?);
        }
    }
    Ok(host)
}

/// Validate a `host_name`: a DNS name in ASCII (letters, digits, `-`, `_`),
/// no empty label, never an IP literal. Lowercased, one trailing dot removed.
pub(crate) fn host_name(raw: &[u8]) -> Result<String, PeekError> {
    let raw = raw.strip_suffix(b".").unwrap_or(raw);
    if raw.is_empty() {
        return Err(PeekError::Malformed("empty server name"));
    }
    if raw.len() > 253 {
        return Err(PeekError::Malformed("server name longer than 253 bytes"));
    }
    if raw.contains(&b':') {
        return Err(PeekError::Malformed("server name is an IP literal"));
    }
    if !raw
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(PeekError::Malformed(
            "server name has a character a DNS name cannot have",
        ));
    }
    let mut last = &raw[..0];
    for label in raw.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(PeekError::Malformed("server name has an empty label"));
        }
        if label.len() > 63 {
            return Err(PeekError::Malformed(
                "server name has a label longer than 63 bytes",
            ));
        }
        last = label;
    }
    // No top-level label is all digits: such a name is an IPv4 literal in one
    // of its many spellings (1.2.3.4, 1.2.3, 0x7f.1 ends in "1").
    if last.iter().all(u8::is_ascii_digit) {
        return Err(PeekError::Malformed("server name is an IP literal"));
    }
    Ok(raw
        .iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// A bounds-checked cursor over a complete message: running out of bytes is
/// a malformed message, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PeekError> {
        if n > self.buf.len() {
            return Err(PeekError::Malformed(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, PeekError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, PeekError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec_u8(&mut self, what: &'static str) -> Result<&'a [u8], PeekError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    fn vec_u16(&mut self, what: &'static str) -> Result<&'a [u8], PeekError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}
