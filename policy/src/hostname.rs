//! Host names: validating the patterns a policy may contain (exact names and
//! the one wildcard form `*.suffix`) and normalising names seen at run time
//! (SNI, Host header, DNS question) without allocating.

use std::net::IpAddr;

/// The longest DNS name in presentation form, without the trailing dot.
pub(crate) const MAX_NAME: usize = 253;

/// A validated, normalised (lower-case, no trailing dot) host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HostPattern {
    /// Exactly this name.
    Exact(String),
    /// Any name with one or more labels in front of this suffix; never the
    /// suffix itself.
    Below(String),
}

impl HostPattern {
    /// The pattern as a person writes it.
    pub(crate) fn display(&self) -> String {
        match self {
            HostPattern::Exact(n) => n.clone(),
            HostPattern::Below(s) => format!("*.{s}"),
        }
    }
}

/// Validate a host pattern as written in a policy. The error is a complete
/// sentence that quotes the input and says what to write instead.
pub(crate) fn parse_pattern(raw: &str) -> Result<HostPattern, String> {
    let q = format!("{raw:?}");
    if raw.is_empty() {
        return Err("an empty host name; write a name such as \"example.com\"".to_owned());
    }
    if raw.chars().any(char::is_whitespace) {
        return Err(format!("{q}: a host name cannot contain spaces"));
    }
    if let Some((_, rest)) = raw.split_once("://") {
        let host = rest.split(['/', ':', '?', '#']).next().unwrap_or(rest);
        return Err(format!(
            "{q}: a rule names a host, not a URL; write {host:?}"
        ));
    }
    if raw.contains('/') {
        let host = raw.split('/').next().unwrap_or(raw);
        return Err(format!(
            "{q}: a host rule cannot have a path; write {host:?} (for a network, write a CIDR like \"198.51.100.0/24\")"
        ));
    }
    if let Some((host, port)) = raw.rsplit_once(':') {
        if !raw[..raw.len() - port.len() - 1].contains(':') && port.parse::<u16>().is_ok() {
            return Err(format!(
                "{q}: a port does not go in the name; write `host: {host}` with `ports: [{port}]`"
            ));
        }
        return Err(format!(
            "{q}: not a host name, IP address or CIDR; check the address"
        ));
    }
    if !raw.is_ascii() {
        let (prefix, rest) = match raw.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", raw),
        };
        return Err(match idna::domain_to_ascii(rest) {
            Ok(ascii) if !ascii.is_empty() => format!(
                "{q}: host names must be ASCII; write the punycode form \"{prefix}{ascii}\""
            ),
            _ => format!(
                "{q}: host names must be ASCII, and this is not a valid internationalised name"
            ),
        });
    }
    let lower = raw.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.ends_with('.') {
        return Err(format!(
            "{q}: empty label (two dots in a row); remove the extra dot"
        ));
    }
    if name.contains('*') {
        return wildcard(&q, name);
    }
    check_labels(&q, name)?;
    Ok(HostPattern::Exact(name.to_owned()))
}

fn wildcard(q: &str, name: &str) -> Result<HostPattern, String> {
    if name == "*" {
        return Err(format!(
            "{q}: a bare wildcard would match every name; name the domain, e.g. \"*.example.com\""
        ));
    }
    if let Some(suffix) = name.strip_prefix("*.")
        && !suffix.contains('*')
    {
        if suffix.split('.').count() < 2 {
            return Err(format!(
                "{q}: a wildcard needs at least two labels after \"*.\" (a whole top-level domain is too broad); write e.g. \"*.example.{suffix}\""
            ));
        }
        check_labels(q, suffix)?;
        return Ok(HostPattern::Below(suffix.to_owned()));
    }
    let first_label_end = name.find('.').unwrap_or(name.len());
    let only_in_first_label = !name[first_label_end..].contains('*');
    let candidate = if !only_in_first_label {
        // `api.*.example.com`, `example.*`: keep what follows the last `*`.
        name.rsplit('*')
            .next()
            .unwrap_or("")
            .trim_start_matches('.')
    } else if name.starts_with('*') && name.matches('*').count() == 1 {
        // `*example.com` almost always meant `*.example.com`.
        &name[1..]
    } else {
        // `api*.example.com`: the partial label goes.
        name[first_label_end..].trim_start_matches('.')
    };
    let hint = if candidate.split('.').count() >= 2 && check_labels(q, candidate).is_ok() {
        format!("\"*.{candidate}\"")
    } else {
        "a leading \"*.\" and the domain, e.g. \"*.example.com\"".to_owned()
    };
    let what = if only_in_first_label {
        "a wildcard must be a whole leading label"
    } else {
        "a wildcard may only be the leftmost label (it already matches any depth)"
    };
    Err(format!("{q}: {what}; write {hint}"))
}

fn check_labels(q: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!(
            "{q}: longer than {MAX_NAME} characters, so no DNS name can match it"
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(format!(
                "{q}: empty label (two dots in a row); remove the extra dot"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "{q}: the label {label:?} is longer than 63 characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "{q}: {c:?} is not allowed in a host name (letters, digits, '-' and '_' only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("{q}: the label {label:?} starts or ends with '-'"));
        }
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{q}: looks like an IP address but is not a valid one; check the numbers"
        ));
    }
    Ok(())
}

/// Room for one name lower-cased on the stack (see [`normalise`]).
pub(crate) struct NameBuf([u8; MAX_NAME]);

impl NameBuf {
    pub(crate) fn new() -> Self {
        NameBuf([0; MAX_NAME])
    }
}

/// What [`scan`] found in a name.
struct Scan {
    ascii: bool,
    /// Some byte is `A`-`Z` (meaningful only when `ascii`).
    upper: bool,
    /// Some byte is `:` (meaningful only when `ascii`).
    colon: bool,
}

/// Every byte of a word.
const LANES: u64 = 0x0101_0101_0101_0101;
/// The top bit of every byte of a word.
const TOPS: u64 = 0x8080_8080_8080_8080;

/// One pass over a name, eight bytes at a time (SWAR): is it ASCII, does it
/// hold upper case, does it hold a ':' (an IPv6 literal). This runs on every
/// SNI, Host header and DNS question; a byte loop costs several instructions
/// per byte.
fn scan(bytes: &[u8]) -> Scan {
    let (mut all, mut upper, mut colon) = (0u64, 0u64, 0u64);
    let mut word = |w: u64| {
        all |= w;
        // With the top bit forced on, no lane borrows from its neighbour:
        // a lane keeps its top bit exactly when its byte is >= the constant.
        let at_least_a = (w | TOPS) - LANES * u64::from(b'A');
        let above_z = (w | TOPS) - LANES * u64::from(b'Z' + 1);
        upper |= at_least_a & !above_z;
        // A zero lane of `x` is a ':' (the classic has-zero-byte test; a
        // borrow only ever follows a real zero lane).
        let x = w ^ (LANES * u64::from(b':'));
        colon |= x.wrapping_sub(LANES) & !x;
    };
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        word(u64::from_le_bytes(w));
    }
    let rest = chunks.remainder().len();
    if rest > 0 {
        let w = match bytes.last_chunk::<8>() {
            // The last eight bytes again, overlapping: seeing a byte twice
            // changes none of the answers and avoids a variable-length copy.
            Some(last) => *last,
            // Shorter than a word: zero padding is ASCII, not upper case and
            // not ':'.
            None => {
                let mut tail = [0u8; 8];
                tail[..rest].copy_from_slice(bytes);
                tail
            }
        };
        word(u64::from_le_bytes(w));
    }
    Scan {
        ascii: all & TOPS == 0,
        upper: upper & TOPS != 0,
        colon: colon & TOPS != 0,
    }
}

/// A name seen at run time, lower-cased (into `buf` only when it has upper
/// case) with one trailing dot removed. `None` when it cannot be a DNS name a
/// rule could match (empty, too long, non-ASCII, or an IP literal: an IP
/// literal never satisfies a host name rule). No allocation, no copy of the
/// common all-lower-case name.
pub(crate) fn normalise<'a>(name: &'a str, buf: &'a mut NameBuf) -> Option<&'a str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME {
        return None;
    }
    let Scan {
        ascii,
        upper,
        colon,
    } = scan(name.as_bytes());
    if !ascii {
        return None;
    }
    // Only a name ending in a digit or holding a ':' can be an IP literal;
    // skip the parse for everything else (the hot path).
    let maybe_ip = colon || name.as_bytes().last().is_some_and(u8::is_ascii_digit);
    if maybe_ip && name.parse::<IpAddr>().is_ok() {
        return None;
    }
    if !upper {
        return Some(name);
    }
    let out = &mut buf.0[..name.len()];
    for (d, s) in out.iter_mut().zip(name.bytes()) {
        *d = s.to_ascii_lowercase();
    }
    // Lower-cased ASCII is still valid UTF-8.
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests;
