//! The HTTP/1 request-head parser (RFC 9112 2-3, 5): request line and header
//! fields up to the empty line, strictly. The host comes from the `Host`
//! header or from an absolute-form / authority-form target; anything that
//! could make two readers disagree on it (duplicate `Host`, obs-fold, bare CR
//! or LF, a `Host` that differs from the target, userinfo) is malformed.

use std::net::Ipv6Addr;

use super::PeekError;

/// The longest method accepted when sniffing (`VERSION-CONTROL` is 15).
const MAX_METHOD: usize = 20;

/// The first line of the HTTP/2 connection preface (RFC 9113 3.4).
pub const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Whether the first bytes look like an HTTP/1 request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// An uppercase method token followed by a space: parse it as HTTP.
    Request,
    /// Only an uppercase prefix so far.
    Undecided,
    /// Not an HTTP request.
    NotHttp,
}

/// Sniff: an HTTP/1 request starts with an uppercase method and a space.
pub fn looks_like_request(buf: &[u8]) -> Shape {
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return if i > 0 {
                Shape::Request
            } else {
                Shape::NotHttp
            };
        }
        if i >= MAX_METHOD || !(b.is_ascii_uppercase() || b == b'-' || b == b'_') {
            return Shape::NotHttp;
        }
    }
    Shape::Undecided
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// The host the request is for (from `Host` or the target's authority):
    /// lowercased, port and IPv6 brackets removed, one trailing dot removed.
    pub host: Option<String>,
    /// The port of the authority the host came from, when one was written.
    pub port: Option<u16>,
    /// Length of the head in bytes, up to and including the empty line: the
    /// bytes after it are the body (or, after CONNECT, the tunnel).
    pub head_len: usize,
}

/// Parse the request head at the start of `buf`. `max_head` caps its size.
pub fn parse(buf: &[u8], max_head: usize) -> Result<RequestHead, PeekError> {
    let window = buf.get(..max_head).unwrap_or(buf);
    let mut pos = 0usize;
    let mut request: Option<RequestLine> = None;
    let mut host_header: Option<Option<Authority>> = None;
    loop {
        let rest = window.get(pos..).unwrap_or_default();
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return Err(if buf.len() >= max_head {
                PeekError::TooLarge
            } else {
                PeekError::Incomplete
            });
        };
        let line = rest
            .get(..lf)
            .and_then(|l| l.strip_suffix(b"\r"))
            .ok_or(PeekError::Malformed("line ends in a bare LF, not CRLF"))?;
        if line.contains(&b'\r') {
            return Err(PeekError::Malformed("bare CR inside a line"));
        }
        pos += lf + 1;
        if request.is_none() {
            request = Some(request_line(line)?);
            continue;
        }
        if line.is_empty() {
            return match request {
                Some(req) => finish(req, host_header, pos),
                None => Err(PeekError::Malformed("no request line")),
            };
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            return Err(PeekError::Malformed(
                "obs-fold (a header line starting with whitespace)",
            ));
        }
        let (name, value) = header_field(line)?;
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(PeekError::Malformed("more than one Host header"));
            }
            host_header = Some(if value.is_empty() {
                None
            } else {
                Some(authority(value)?)
            });
        }
    }
}

struct RequestLine {
    method: String,
    target: String,
    authority: Option<Authority>,
}

#[derive(Debug, PartialEq, Eq)]
struct Authority {
    host: String,
    port: Option<u16>,
}

fn finish(
    req: RequestLine,
    host_header: Option<Option<Authority>>,
    head_len: usize,
) -> Result<RequestHead, PeekError> {
    let header = host_header.flatten();
    let chosen = match (req.authority, header) {
        (Some(t), Some(h)) if t.host != h.host => {
            return Err(PeekError::Malformed(
                "the Host header differs from the request target",
            ));
        }
        (Some(t), _) => Some(t),
        (None, h) => h,
    };
    let (host, port) = match chosen {
        Some(a) => (Some(a.host), a.port),
        None => (None, None),
    };
    Ok(RequestHead {
        method: req.method,
        target: req.target,
        host,
        port,
        head_len,
    })
}

/// `method SP request-target SP HTTP-version`.
fn request_line(line: &[u8]) -> Result<RequestLine, PeekError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PeekError::Malformed(
            "request line is not `METHOD target HTTP/1.x`",
        ));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(PeekError::Malformed("request method is not a token"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(PeekError::Malformed("request is not HTTP/1.0 or HTTP/1.1"));
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(PeekError::Malformed(
            "request target is empty or has a forbidden byte",
        ));
    }
    let authority = if method == b"CONNECT" {
        let a = authority(target)?;
        if a.port.is_none() {
            return Err(PeekError::Malformed("CONNECT target has no port"));
        }
        Some(a)
    } else if target.first() == Some(&b'/') || target == b"*" {
        None
    } else if let Some(i) = find(target, b"://") {
        let (scheme, rest) = (&target[..i], &target[i + 3..]);
        if scheme.is_empty() || !scheme.iter().all(u8::is_ascii_alphanumeric) {
            return Err(PeekError::Malformed("request target has an invalid scheme"));
        }
        let end = rest
            .iter()
            .position(|b| matches!(b, b'/' | b'?' | b'#'))
            .unwrap_or(rest.len());
        Some(authority(&rest[..end])?)
    } else {
        return Err(PeekError::Malformed(
            "request target is not in origin, absolute, authority or asterisk form",
        ));
    };
    Ok(RequestLine {
        method: ascii(method),
        target: ascii(target),
        authority,
    })
}

/// `field-name ":" OWS field-value OWS`; returns (name, trimmed value).
fn header_field(line: &[u8]) -> Result<(&[u8], &[u8]), PeekError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(PeekError::Malformed("header line has no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(PeekError::Malformed(
            "header name is not a token (whitespace before the colon?)",
        ));
    }
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(PeekError::Malformed("header value has a control byte"));
    }
    Ok((name, value.trim_ascii()))
}

/// `host [":" port]`, `[v6] [":" port]`. No userinfo.
fn authority(s: &[u8]) -> Result<Authority, PeekError> {
    if s.contains(&b'@') {
        return Err(PeekError::Malformed("authority has userinfo"));
    }
    let (host, port) = if let Some(inner) = s.strip_prefix(b"[") {
        let close = inner
            .iter()
            .position(|&b| b == b']')
            .ok_or(PeekError::Malformed("IPv6 literal has no closing bracket"))?;
        let v6: Ipv6Addr = std::str::from_utf8(&inner[..close])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or(PeekError::Malformed("invalid IPv6 literal in authority"))?;
        let after = &inner[close + 1..];
        let port = match after {
            [] => None,
            [b':', p @ ..] => Some(port(p)?),
            _ => return Err(PeekError::Malformed("bytes after the IPv6 literal")),
        };
        (v6.to_string(), port)
    } else {
        let (h, p) = match s.iter().position(|&b| b == b':') {
            Some(i) => (&s[..i], Some(port(&s[i + 1..])?)),
            None => (s, None),
        };
        (reg_name(h)?, p)
    };
    Ok(Authority { host, port })
}

fn port(p: &[u8]) -> Result<u16, PeekError> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err(PeekError::Malformed("invalid port"));
    }
    std::str::from_utf8(p)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(PeekError::Malformed("invalid port"))
}

/// A DNS name or IPv4 literal: letters, digits, `-`, `_`, `.`, no empty label.
fn reg_name(h: &[u8]) -> Result<String, PeekError> {
    let h = h.strip_suffix(b".").unwrap_or(h);
    if h.is_empty() || h.len() > 253 {
        return Err(PeekError::Malformed("empty or overlong host"));
    }
    if !h
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(PeekError::Malformed(
            "host has a character a DNS name cannot have",
        ));
    }
    if h.split(|&b| b == b'.')
        .any(|l| l.is_empty() || l.len() > 63)
    {
        return Err(PeekError::Malformed("host has an empty or overlong label"));
    }
    Ok(h.iter()
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect())
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Bytes already checked to be ASCII.
fn ascii(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}
