//! What a deny row of the summary tells a job author: why the traffic was
//! denied, in words rather than a reason code, and what to do about it: the
//! rule to add when a rule would allow it, or what blocks it when nothing
//! should (a deny rule, a built-in address class, the kernel's blocks), so
//! the summary never suggests opening what the policy closes on purpose.

use std::net::IpAddr;

use egressd_policy::Reason;

use super::{Cause, Service};
use crate::suggest::{looks_like_public_suffix, valid_host};

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Target {
    /// A host name or a `*.` wildcard, valid as a policy host rule.
    Host(String),
    /// An address.
    Ip(IpAddr),
}

/// A rule to add to the policy's `allow:` list; `port` is `None` for a name
/// seen in DNS queries only (a policy cannot say "DNS only").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Suggested {
    pub(super) target: Target,
    pub(super) port: Option<u16>,
}

/// What to do about a deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Remedy {
    /// Add this rule.
    Allow(Suggested),
    /// Nothing in a policy can or should allow it: the text says what blocks it.
    Blocked(String),
    /// Not a missing rule: the text says what to look at instead.
    Other(String),
}

/// Why, in words, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Explained {
    pub(super) why: &'static str,
    pub(super) remedy: Remedy,
}

/// The rule target for an endpoint of the summary (a name, an address, or
/// `*.parent` for a group), when a valid rule can name it.
fn target_of(endpoint: &str) -> Option<Target> {
    if let Ok(ip) = endpoint.parse::<IpAddr>() {
        return Some(Target::Ip(ip));
    }
    match endpoint.strip_prefix("*.") {
        Some(parent) => {
            let parent = valid_host(parent)?;
            (!looks_like_public_suffix(&parent)).then(|| Target::Host(format!("*.{parent}")))
        }
        None => valid_host(endpoint).map(Target::Host),
    }
}

/// Explain a deny of `cause` for `endpoint` on `service`.
pub(super) fn explain(cause: &Cause, endpoint: &str, service: Service) -> Explained {
    let target = target_of(endpoint);
    let named = endpoint != "?" && endpoint.parse::<IpAddr>().is_err();
    let allow = |target: Option<Target>| match target {
        Some(target) => Remedy::Allow(Suggested {
            target,
            port: service.port(),
        }),
        None => Remedy::Other(
            "no valid host name or address to write a rule for: see the records in the export"
                .into(),
        ),
    };
    let rule = code_span(&cause.rule);
    let (why, remedy) = match cause.reason {
        Reason::NoRule if named => ("no rule allows this host", allow(target)),
        Reason::NoRule => ("no rule allows this address", allow(target)),
        Reason::DnsRefused => (
            "no rule allows this name (its DNS query was refused)",
            allow(target),
        ),
        Reason::NoSni => (
            "no host name in the connection, and no rule allows this address",
            allow(target.filter(|t| matches!(t, Target::Ip(_)))),
        ),
        Reason::RuleDeny => (
            "a deny rule blocks it",
            Remedy::Blocked(format!(
                "cannot: blocked by rule {rule} (a deny rule wins over every allow)"
            )),
        ),
        Reason::BuiltinPrivate if named => (
            "resolved to a private address",
            Remedy::Other(
                "a host rule never opens a private address: if that address is meant, add an \
                 `ip:` rule for it (the export's `dst`) or set `private_ranges: allow`"
                    .into(),
            ),
        ),
        Reason::BuiltinPrivate => ("private address (RFC 1918, CGNAT or ULA)", allow(target)),
        Reason::BuiltinMetadata => ("cloud metadata endpoint", builtin(&rule)),
        Reason::BuiltinLinkLocal => ("link-local address", builtin(&rule)),
        Reason::BuiltinMulticast => ("multicast address", builtin(&rule)),
        Reason::BuiltinBroadcast => ("broadcast address", builtin(&rule)),
        Reason::BuiltinUnspecified => ("unspecified address (0.0.0.0 or ::)", builtin(&rule)),
        Reason::BuiltinEmbeddedV4 => (
            "IPv6 address that embeds IPv4 (NAT64, 6to4, Teredo)",
            builtin(&rule),
        ),
        Reason::SniIpMismatch => (
            "SNI does not match the IP dialled",
            Remedy::Other(format!(
                "not a missing rule: the client went to an address the name does not resolve \
                 to (a pinned or stale IP?); `egressd explain POLICY {}` shows the rule for the name",
                explain_target(endpoint, service)
            )),
        ),
        Reason::UdpBlocked => (
            "UDP other than DNS is blocked (QUIC included)",
            Remedy::Blocked(
                "cannot: no rule allows UDP other than DNS; use TCP (HTTP/3 clients fall back to HTTP/2)"
                    .into(),
            ),
        ),
        Reason::IcmpBlocked => ("ICMP (ping) sockets are blocked", kernel()),
        Reason::RawBlocked => ("raw sockets are blocked", kernel()),
        Reason::PacketBlocked => ("packet sockets are blocked", kernel()),
        Reason::SockoptBlocked => (
            "a socket option that would bypass egressd was refused",
            kernel(),
        ),
        Reason::EgressBackstop => ("a packet that bypassed the proxy was dropped", kernel()),
        Reason::NoGateway => (
            "a container network had no gateway to redirect through",
            kernel(),
        ),
        Reason::PolicyUnavailable => (
            "no valid policy was loaded, so everything is denied",
            Remedy::Other("fix the policy: `egressd check POLICY` says what is wrong".into()),
        ),
        Reason::AuditBudgetExhausted => (
            "the job's audit records filled the journal's size budget, so its further traffic was denied",
            Remedy::Other(
                "find what flooded the journal (the counted records' `count` and `samples`), or raise --audit-max-size".into(),
            ),
        ),
        Reason::MalformedRequest => (
            "not a valid TLS, HTTP, CONNECT or DNS request (or sent too slowly)",
            Remedy::Other(
                "nothing to allow: the export's `detail` says what the client sent".into(),
            ),
        ),
        Reason::LimitExceeded => (
            "a protective limit of egressd was hit",
            Remedy::Other("nothing to allow: the export's `detail` says which limit".into()),
        ),
        Reason::OriginalDstUnknown => (
            "egressd could not tell where the connection was going",
            Remedy::Other("nothing to allow: egressd's log says why".into()),
        ),
        Reason::UpstreamFailed => (
            "allowed, but the server could not be reached",
            Remedy::Other(format!(
                "nothing to allow: rule {rule} allowed it; check that the server is up and its name resolves"
            )),
        ),
        Reason::RuleAllow
        | Reason::Loopback
        | Reason::JournalSegmentRemoved
        | Reason::PolicyReloadRejected
        | Reason::TamperDetected
        | Reason::KernelReportsLost
        | Reason::InterfaceUnguarded => (
            "denied by egressd itself",
            Remedy::Other(format!(
                "see the records in the export (reason `{}`)",
                cause.reason.as_str()
            )),
        ),
    };
    Explained { why, remedy }
}

fn builtin(rule: &str) -> Remedy {
    Remedy::Blocked(format!("cannot: blocked by the built-in rule {rule}"))
}

fn kernel() -> Remedy {
    Remedy::Blocked("cannot: blocked in the kernel, whatever the policy says".into())
}

/// `host:port` (or the host alone) for an `egressd explain` line.
fn explain_target(endpoint: &str, service: Service) -> String {
    let host = match target_of(endpoint) {
        Some(Target::Host(h)) if !h.starts_with("*.") => h,
        Some(Target::Ip(IpAddr::V6(ip))) => format!("[{ip}]"),
        Some(Target::Ip(ip)) => ip.to_string(),
        _ => "HOST".to_owned(),
    };
    match service.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// `s` as inline code when it holds nothing a code span cannot carry (the
/// rule ids egressd writes), else as escaped text.
pub(super) fn code_span(s: &str) -> String {
    if s.is_empty() || s.contains('`') || s.chars().any(char::is_control) {
        super::render::markdown_text(s)
    } else {
        format!("`{}`", s.replace('|', "\\|"))
    }
}
