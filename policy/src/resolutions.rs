//! The question the engine asks the proxy about names and addresses: does
//! this name really resolve to this IP? The proxy answers from its own
//! resolver and the DNS answers it relayed; the engine never resolves.

use std::net::IpAddr;

/// Answers whether a name is bound to an address right now.
pub trait Resolutions {
    /// Does `name` currently resolve (TTL + grace) to `ip`, per the proxy's
    /// own resolver or a recent DNS answer it relayed? `name` is
    /// normalised (ASCII lower case, no trailing dot); `ip` is canonical (IPv4-mapped IPv6 already IPv4).
    fn binds(&self, name: &str, ip: IpAddr) -> bool;
}

/// Knows no binding: `binds` is always false. For offline evaluation.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoResolutions;

impl Resolutions for NoResolutions {
    fn binds(&self, _name: &str, _ip: IpAddr) -> bool {
        false
    }
}

/// Assumes every binding holds. For `egressd explain --sni` (which says so in
/// its output) and tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssumeBound;

impl Resolutions for AssumeBound {
    fn binds(&self, _name: &str, _ip: IpAddr) -> bool {
        true
    }
}
