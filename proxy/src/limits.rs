//! The limits that protect the runner from its own jobs: how many tunnels may
//! be open at once, how large and how slow a client's first bytes may be, how
//! long a silent tunnel lives, how long shutdown waits. Every read that waits
//! for a client has one of these timeouts.

use std::time::Duration;

use crate::peek::PeekLimits;

/// Protective limits; see each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections handled at once (peeking or relaying); more are
    /// denied with `limit_exceeded`.
    pub max_tunnels: usize,
    /// The longest a client may take to send its ClientHello / request head /
    /// CONNECT request once it started (slowloris protection).
    pub peek_timeout: Duration,
    /// How long to wait for a client's first byte before treating the
    /// connection as server-speaks-first (ssh, smtp): it is then decided
    /// without a name. Never longer than `peek_timeout`.
    pub first_byte_wait: Duration,
    /// A tunnel in which nothing moved either way for this long is closed.
    pub idle_timeout: Duration,
    /// The longest an upstream connect may take.
    pub connect_timeout: Duration,
    /// The largest CONNECT request head accepted.
    pub max_connect_head: usize,
    /// Caps for the ClientHello / HTTP head parser.
    pub peek: PeekLimits,
    /// On shutdown, how long open tunnels may finish before they are cut.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tunnels: 8192,
            peek_timeout: Duration::from_secs(10),
            first_byte_wait: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_connect_head: 8 * 1024,
            peek: PeekLimits::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}
