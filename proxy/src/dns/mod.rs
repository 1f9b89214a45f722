//! DNS: the server jobs' queries reach (`server`; its UDP forwarding loops
//! in `udp`), the proxy's client side towards the upstream resolvers
//! (`upstream`, `resolver`), the memory of what the answers said (`memory`)
//! and the wire-level handling of messages (`message`, hickory-proto for
//! the format; `wire`, the fast path for the everyday shapes).

pub mod memory;
pub mod message;
mod mmsg;
pub mod resolver;
pub mod server;
mod udp;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

pub use memory::{At, DnsMemory};
pub use resolver::Resolver;
pub use server::{DenyAnswer, DnsOptions, serve_tcp, serve_tcp_with, serve_udp, serve_udp_with};
pub use upstream::{Upstreams, system_upstreams};

/// Why an upstream exchange gave no usable answer. The upstream is named:
/// these are upstream failures, not the client's.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Nothing to ask.
    #[error("no DNS upstream is configured; pass --dns-upstream IP:PORT")]
    NoUpstream,
    /// The upstream did not answer in time.
    #[error("DNS upstream {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    /// A socket error talking to the upstream.
    #[error("DNS upstream {addr}: {source}")]
    Io {
        /// The upstream.
        addr: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer does not parse or does not answer the question asked.
    #[error("DNS upstream {0} sent an answer that does not parse or does not match the question")]
    BadReply(SocketAddr),
    /// The upstream answered with an error code (SERVFAIL, REFUSED, ...).
    #[error("DNS upstream {0} answered {1}")]
    Rcode(SocketAddr, hickory_proto::op::ResponseCode),
    /// The name cannot be asked (not a valid DNS name).
    #[error("{0:?} is not a valid DNS name")]
    InvalidName(String),
}

#[cfg(test)]
mod tests;
