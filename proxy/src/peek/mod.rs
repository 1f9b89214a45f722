//! What a client sent first on a TCP connection, read without terminating
//! anything: the TLS ClientHello's server name (`clienthello`) or the HTTP/1
//! request head's host (`http`). Pure functions over a byte buffer, no I/O: the
//! caller reads, calls [`classify`], and reads more on [`PeekError::Incomplete`].
//!
//! Invariants the tests pin: never panics and never reads past the buffer on
//! any input; every strict prefix of a valid ClientHello or request head is
//! `Incomplete`; a buffer of [`PeekLimits::buffer_cap`] bytes or more is never
//! `Incomplete`.

pub mod clienthello;
pub mod http;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// A TLS ClientHello.
    Tls {
        /// The `host_name` of the server_name extension, lowercased; `None`
        /// when the client sent no server_name extension.
        sni: Option<String>,
        /// The encrypted_client_hello extension (0xfe0d) is present: `sni` is
        /// then the outer (public) name, which is the one the network sees.
        ech: bool,
    },
    /// An HTTP/1 request head.
    Http {
        /// The host the request is for: the `Host` header, or the authority of
        /// an absolute-form (or CONNECT authority-form) target; port and IPv6
        /// brackets stripped, lowercased. `None` when the request names none.
        host: Option<String>,
        /// The request method, as sent (case-sensitive per RFC 9110).
        method: String,
    },
    /// Neither: no name can be read from the stream (ssh, databases, ...).
    Other,
}

/// Why the first bytes could not be classified (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// The buffer is a valid prefix: read more bytes and call again.
    #[error("incomplete: more bytes are needed")]
    Incomplete,
    /// The ClientHello or request head is larger than the configured cap.
    #[error("the ClientHello or request head exceeds the size limit")]
    TooLarge,
    /// The bytes cannot be a valid ClientHello or request head.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// Size caps for what [`classify`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeekLimits {
    /// The largest ClientHello handshake message accepted (header included).
    pub max_client_hello: usize,
    /// The largest HTTP request head accepted (up to and including CRLFCRLF).
    pub max_http_head: usize,
}

impl Default for PeekLimits {
    fn default() -> Self {
        PeekLimits {
            max_client_hello: 16 * 1024,
            max_http_head: 16 * 1024,
        }
    }
}

impl PeekLimits {
    /// The most bytes [`classify`] can ask for: with this many bytes buffered
    /// it never answers `Incomplete`. A ClientHello may be fragmented into
    /// many small TLS records, so its wire size is allowed twice its cap.
    pub fn buffer_cap(&self) -> usize {
        self.max_client_hello
            .saturating_mul(2)
            .max(self.max_http_head)
    }
}

/// Classify what the client sent first. Pure, no I/O: call again with more
/// bytes (the whole buffer, from the first byte) on `Incomplete`.
pub fn classify(buf: &[u8], limits: &PeekLimits) -> Result<Peeked, PeekError> {
    match buf.first() {
        None => Err(PeekError::Incomplete),
        Some(&clienthello::CONTENT_TYPE_HANDSHAKE) => {
            let hello = clienthello::parse(buf, limits.max_client_hello)?;
            Ok(Peeked::Tls {
                sni: hello.sni,
                ech: hello.ech,
            })
        }
        Some(_) => match http::looks_like_request(buf) {
            // HTTP/2 with prior knowledge: the name is in HPACK, not readable here.
            http::Shape::Request if buf.starts_with(http::H2_PREFACE_LINE) => Ok(Peeked::Other),
            http::Shape::Request => {
                let head = http::parse(buf, limits.max_http_head)?;
                Ok(Peeked::Http {
                    host: head.host,
                    method: head.method,
                })
            }
            http::Shape::Undecided => Err(PeekError::Incomplete),
            http::Shape::NotHttp => Ok(Peeked::Other),
        },
    }
}

#[cfg(test)]
mod tests;
