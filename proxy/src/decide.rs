//! The one decision path for TCP, whatever way the connection arrived
//! (policy.md "Names and addresses together"):
//! - with a name (SNI, HTTP Host, CONNECT host), the name must be allowed and
//!   the destination IP bound to it: answered by the DNS server recently, or
//!   returned by the proxy's own resolver when asked now; otherwise
//!   `sni_ip_mismatch`;
//! - without a name, each name the DNS server recently answered with this IP
//!   is tried (the first that allows wins, recorded as `dns_cache`), then the
//!   IP/CIDR rules alone decide (`no_sni` when nothing allows).

use std::net::{IpAddr, SocketAddr};

use egressd_audit::HostSource;
use egressd_policy::{ConnectOptions, Decision, Reason, Resolutions, Verdict};

use crate::engine::Engine;

/// A decision with the name it was made for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The decision.
    pub decision: Decision,
    /// The name the decision is about, if any.
    pub host: Option<String>,
    /// Where `host` came from.
    pub host_source: HostSource,
}

/// What enforce mode does (or would do) with `d`.
pub fn enforce_outcome(d: &Decision) -> Verdict {
    d.enforce_would.unwrap_or(d.verdict)
}

/// Bindings known to the proxy: the DNS server's memory plus, optionally,
/// addresses its own resolver just returned for one name.
struct Bindings<'a> {
    engine: &'a Engine,
    resolved: Option<(&'a str, &'a [IpAddr])>,
}

impl Resolutions for Bindings<'_> {
    fn binds(&self, name: &str, ip: IpAddr) -> bool {
        if let Some((resolved_name, ips)) = self.resolved
            && same_name(resolved_name, name)
            && ips.contains(&ip)
        {
            return true;
        }
        self.engine.dns_memory().binds(name, ip)
    }
}

/// Host names compare case-insensitively, one trailing dot ignored.
pub fn same_name(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

impl Engine {
    /// Decide a connection to `dst` (canonical: v4-mapped is IPv4) for `name`
    /// with the bindings given. Pure policy evaluation; no I/O.
    fn evaluate(&self, dst: SocketAddr, name: Option<&str>, bindings: &Bindings<'_>) -> Decision {
        if let Some(reason) = self.denies_everything() {
            return Decision::engine_deny(reason);
        }
        let policy = self.policy();
        let job = self.job();
        let ruleset = policy.ruleset(&job.context());
        ruleset.decide_connect_opts(
            dst,
            name,
            bindings,
            ConnectOptions {
                filter_loopback: self.filter_loopback(),
            },
        )
    }

    /// The decision for a TCP connection to `dst`, with the name the stream
    /// (or the CONNECT line) carried, if any. May ask the proxy's resolver
    /// when the name is allowed but the IP is not known to be bound to it.
    pub async fn decide_tcp(&self, dst: SocketAddr, name: Option<(&str, HostSource)>) -> Decided {
        let dst = canonical(dst);
        let memory_only = Bindings {
            engine: self,
            resolved: None,
        };
        match name {
            Some((name, source)) => {
                let mut decision = self.evaluate(dst, Some(name), &memory_only);
                if decision.reason == Reason::SniIpMismatch {
                    // Not answered through our DNS server (a cached or
                    // hard-coded address): ask our own resolver now.
                    if let Ok(ips) = self.resolver().lookup(name).await {
                        let with_lookup = Bindings {
                            engine: self,
                            resolved: Some((name, &ips)),
                        };
                        decision = self.evaluate(dst, Some(name), &with_lookup);
                    }
                }
                Decided {
                    decision,
                    host: Some(name.to_owned()),
                    host_source: source,
                }
            }
            None => {
                for cached in self.dns_memory().names_for(dst.ip()) {
                    let d = self.evaluate(dst, Some(&cached), &memory_only);
                    if enforce_outcome(&d) == Verdict::Allow {
                        return Decided {
                            decision: d,
                            host: Some(cached),
                            host_source: HostSource::DnsCache,
                        };
                    }
                }
                Decided {
                    decision: self.evaluate(dst, None, &memory_only),
                    host: None,
                    host_source: HostSource::None,
                }
            }
        }
    }

    /// The decision for a connection to `dst` for `name`, which the proxy's
    /// own resolver just resolved to `ips` (the CONNECT proxy's case).
    pub async fn decide_tcp_resolved(
        &self,
        dst: SocketAddr,
        name: &str,
        source: HostSource,
        ips: &[IpAddr],
    ) -> Decided {
        let bindings = Bindings {
            engine: self,
            resolved: Some((name, ips)),
        };
        Decided {
            decision: self.evaluate(canonical(dst), Some(name), &bindings),
            host: Some(name.to_owned()),
            host_source: source,
        }
    }

    /// May `name` be resolved at all? (The DNS server's question: the CONNECT
    /// proxy asks it too, so a name a job could not resolve transparently is
    /// not resolved for it through the proxy either.)
    pub fn decide_name(&self, name: &str) -> Decision {
        if let Some(reason) = self.denies_everything() {
            return Decision::engine_deny(reason);
        }
        let policy = self.policy();
        let job = self.job();
        policy.ruleset(&job.context()).decide_dns(name)
    }
}

/// An IPv4-mapped IPv6 destination is the IPv4 address (policy.md).
pub fn canonical(dst: SocketAddr) -> SocketAddr {
    match dst.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), dst.port()),
            None => dst,
        },
        IpAddr::V4(_) => dst,
    }
}
