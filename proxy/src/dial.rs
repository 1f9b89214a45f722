//! Dialling a host name for a client that named it (the CONNECT request
//! line, or the SNI listener's ClientHello): the DNS question first (a name
//! the DNS server would refuse is not resolved through the proxy either),
//! then the proxy's own resolver, a decision per address (so the policy's IP
//! checks apply to what the name resolves to: an allowed name that resolves
//! to a private or metadata address is still denied), and a connection to
//! the first allowed address that answers.
//!
//! Nothing is audited here: the caller writes the record, with the client's
//! address and whatever else it knows.

use std::net::SocketAddr;

use egressd_audit::HostSource;
use egressd_policy::{Decision, Reason, Verdict};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::decide::Decided;
use crate::engine::Engine;
use crate::tunnel;

/// The outcome of deciding and connecting a named destination.
#[derive(Debug)]
pub enum Dialled {
    /// Denied, or allowed but the upstream unreachable
    /// (`upstream_failed`): the client gets the decision.
    Refused {
        /// The decision, with the name it was made for.
        decided: Decided,
        /// The address decided on, when the name resolved.
        dst: Option<SocketAddr>,
        /// For the record's `detail` (why the upstream failed).
        detail: Option<String>,
    },
    /// Allowed and connected.
    Connected {
        /// The allowing decision.
        decided: Decided,
        /// The address connected to.
        dst: SocketAddr,
        /// The upstream connection, from a marked socket.
        upstream: TcpStream,
    },
}

/// A destination given by address (`CONNECT ip:port`): decided by IP rules and
/// recent DNS answers, then connected.
pub async fn dial_ip(engine: &Engine, dst: SocketAddr) -> Dialled {
    let t = Instant::now();
    let decided = engine.decide_tcp(dst, None).await;
    engine.metrics().decision_latency.observe(t.elapsed());
    if !decided.decision.is_allow() {
        return Dialled::Refused {
            decided,
            dst: Some(dst),
            detail: None,
        };
    }
    match tunnel::connect_upstream(engine, dst).await {
        Ok(upstream) => Dialled::Connected {
            decided,
            dst,
            upstream,
        },
        Err(e) => Dialled::Refused {
            decided: upstream_failed(decided),
            dst: Some(dst),
            detail: Some(format!("cannot connect to {dst}: {e}")),
        },
    }
}

/// Decide `name:port` for a client that named it (`source`: where the name
/// came from, written into the record) and connect to the first allowed
/// address that answers.
pub async fn dial_name(engine: &Engine, name: &str, port: u16, source: HostSource) -> Dialled {
    let t = Instant::now();
    let named = |decision: Decision| Decided {
        decision,
        host: Some(name.to_owned()),
        host_source: source,
    };
    let dns = engine.decide_name(name);
    if !dns.is_allow() {
        // A TCP record says why no rule allowed the name, not "dns".
        let decision = Decision {
            reason: if dns.reason == Reason::DnsRefused {
                Reason::NoRule
            } else {
                dns.reason
            },
            ..dns
        };
        engine.metrics().decision_latency.observe(t.elapsed());
        return Dialled::Refused {
            decided: named(decision),
            dst: None,
            detail: None,
        };
    }
    let ips = match engine.resolver().lookup(name).await {
        Ok(ips) if !ips.is_empty() => ips,
        Ok(_) => {
            return Dialled::Refused {
                decided: named(Decision::engine_deny(Reason::UpstreamFailed)),
                dst: None,
                detail: Some(format!("{name} has no address")),
            };
        }
        Err(e) => {
            return Dialled::Refused {
                decided: named(Decision::engine_deny(Reason::UpstreamFailed)),
                dst: None,
                detail: Some(format!("cannot resolve {name}: {e}")),
            };
        }
    };
    let mut first_refusal: Option<(Decided, SocketAddr)> = None;
    let mut last_error: Option<(Decided, SocketAddr, String)> = None;
    for ip in ips {
        let dst = SocketAddr::new(ip, port);
        let t = Instant::now();
        let decided = engine.decide_tcp_resolved(dst, name, source, &[ip]).await;
        engine.metrics().decision_latency.observe(t.elapsed());
        if !decided.decision.is_allow() {
            if first_refusal.is_none() {
                first_refusal = Some((decided, dst));
            }
            continue;
        }
        match tunnel::connect_upstream(engine, dst).await {
            Ok(upstream) => {
                return Dialled::Connected {
                    decided,
                    dst,
                    upstream,
                };
            }
            Err(e) => last_error = Some((decided, dst, e.to_string())),
        }
    }
    if let Some((decided, dst, e)) = last_error {
        return Dialled::Refused {
            decided: upstream_failed(decided),
            dst: Some(dst),
            detail: Some(format!("cannot connect to {dst}: {e}")),
        };
    }
    match first_refusal {
        Some((decided, dst)) => Dialled::Refused {
            decided,
            dst: Some(dst),
            detail: None,
        },
        None => Dialled::Refused {
            decided: named(Decision::engine_deny(Reason::UpstreamFailed)),
            dst: None,
            detail: Some(format!("{name} has no address")),
        },
    }
}

/// An allowed decision whose upstream could not be reached: the traffic did
/// not pass, and the rule that allowed it stays on the record.
pub fn upstream_failed(d: Decided) -> Decided {
    Decided {
        decision: Decision {
            verdict: Verdict::Deny,
            enforce_would: None,
            reason: Reason::UpstreamFailed,
            rule: d.decision.rule,
        },
        ..d
    }
}
