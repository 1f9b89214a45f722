//! Decisions are values: what was decided (`Verdict`), why (`Reason`), and by
//! which rule (`RuleId`). These closed enums carry the stable strings that the
//! audit schema, logs, metrics and `egressd explain` all use; changing one of
//! those strings is a schema change (a new audit `v`).

use std::fmt;

/// What happens (or, in audit mode, would happen) to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The traffic is let through.
    Allow,
    /// The traffic is refused.
    Deny,
}

impl Verdict {
    /// The stable string (`allow` / `deny`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a decision was made. One stable snake_case code per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// An `allow` rule matched.
    RuleAllow,
    /// A `deny` rule matched.
    RuleDeny,
    /// Nothing allowed it: the default deny.
    NoRule,
    /// Loopback destinations are never filtered.
    Loopback,
    /// Cloud metadata endpoint (169.254.169.254, fd00:ec2::254).
    BuiltinMetadata,
    /// Link-local addresses.
    BuiltinLinkLocal,
    /// Multicast addresses.
    BuiltinMulticast,
    /// The IPv4 limited broadcast address.
    BuiltinBroadcast,
    /// The unspecified address (0.0.0.0, ::).
    BuiltinUnspecified,
    /// IPv6 prefixes that embed IPv4 (NAT64, 6to4, Teredo).
    BuiltinEmbeddedV4,
    /// RFC1918, CGNAT 100.64.0.0/10 or ULA fc00::/7 with `private_ranges: deny`.
    BuiltinPrivate,
    /// The TLS SNI / HTTP Host is allowed but the destination IP is not an
    /// address that name resolves to.
    SniIpMismatch,
    /// No name in the stream and the IP is not allowed by an IP/CIDR rule or a
    /// recent DNS answer for an allowed name.
    NoSni,
    /// A DNS query for a name no rule allows.
    DnsRefused,
    /// UDP other than DNS (QUIC included) is blocked in the kernel.
    UdpBlocked,
    /// An ICMP (ping) socket was refused in the kernel.
    IcmpBlocked,
    /// A raw or packet socket was refused in the kernel.
    RawBlocked,
    /// No valid policy is loaded: fail closed.
    PolicyUnavailable,
    /// The client sent something that is not a valid ClientHello / HTTP head /
    /// CONNECT request / DNS message, or sent it too slowly.
    MalformedRequest,
    /// A protective limit was hit (too many tunnels, oversize header).
    LimitExceeded,
    /// The original destination of a redirected connection is unknown.
    OriginalDstUnknown,
    /// The upstream could not be reached (allowed, but the connect failed).
    UpstreamFailed,
    /// An `event` record: the audit journal removed its oldest segment to stay
    /// within its size bound, so the records in it are gone from this runner.
    JournalSegmentRemoved,
    /// An `event` record: a changed policy file was invalid and was not
    /// loaded; the previous policy stays active.
    PolicyReloadRejected,
    /// A packet from a socket created after egressd attached, not carrying
    /// the proxy's mark, was dropped by the kernel's egress backstop.
    EgressBackstop,
    /// A container network namespace had no gateway address configured to
    /// redirect to, so its connection was refused in the kernel.
    NoGateway,
    /// An `event` record: someone detached a kernel hook, killed a listener or
    /// changed the policy file under a running egressd.
    TamperDetected,
    /// A frame sent through a packet socket (`AF_PACKET`/`AF_XDP`) created
    /// under egressd was dropped by the kernel's packet-socket guard.
    PacketBlocked,
    /// A socket option that would let a packet socket skip the guard
    /// (`PACKET_QDISC_BYPASS`, AF_XDP set-up) was refused in the kernel.
    SockoptBlocked,
    /// An `event` record: the kernel's deny ring buffer was full and this many
    /// deny reports were lost (the denies themselves still happened).
    KernelReportsLost,
    /// An `event` record: a network interface appeared that the packet-socket
    /// guard could not be attached to.
    InterfaceUnguarded,
    /// The active job's records would have filled the audit journal past its
    /// size budget (`--audit-max-size`): the job's further traffic is denied
    /// rather than its earlier records removed. Also the `event` record that
    /// says when that began.
    AuditBudgetExhausted,
}

impl Reason {
    /// Every reason, in declaration order (`Reason::ALL[r as usize] == r`).
    pub const ALL: [Reason; 32] = [
        Reason::RuleAllow,
        Reason::RuleDeny,
        Reason::NoRule,
        Reason::Loopback,
        Reason::BuiltinMetadata,
        Reason::BuiltinLinkLocal,
        Reason::BuiltinMulticast,
        Reason::BuiltinBroadcast,
        Reason::BuiltinUnspecified,
        Reason::BuiltinEmbeddedV4,
        Reason::BuiltinPrivate,
        Reason::SniIpMismatch,
        Reason::NoSni,
        Reason::DnsRefused,
        Reason::UdpBlocked,
        Reason::IcmpBlocked,
        Reason::RawBlocked,
        Reason::PolicyUnavailable,
        Reason::MalformedRequest,
        Reason::LimitExceeded,
        Reason::OriginalDstUnknown,
        Reason::UpstreamFailed,
        Reason::JournalSegmentRemoved,
        Reason::PolicyReloadRejected,
        Reason::EgressBackstop,
        Reason::NoGateway,
        Reason::TamperDetected,
        Reason::PacketBlocked,
        Reason::SockoptBlocked,
        Reason::KernelReportsLost,
        Reason::InterfaceUnguarded,
        Reason::AuditBudgetExhausted,
    ];

    /// The stable string written in audit records.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::RuleAllow => "rule_allow",
            Reason::RuleDeny => "rule_deny",
            Reason::NoRule => "no_rule",
            Reason::Loopback => "loopback",
            Reason::BuiltinMetadata => "builtin_metadata",
            Reason::BuiltinLinkLocal => "builtin_link_local",
            Reason::BuiltinMulticast => "builtin_multicast",
            Reason::BuiltinBroadcast => "builtin_broadcast",
            Reason::BuiltinUnspecified => "builtin_unspecified",
            Reason::BuiltinEmbeddedV4 => "builtin_embedded_v4",
            Reason::BuiltinPrivate => "builtin_private",
            Reason::SniIpMismatch => "sni_ip_mismatch",
            Reason::NoSni => "no_sni",
            Reason::DnsRefused => "dns_refused",
            Reason::UdpBlocked => "udp_blocked",
            Reason::IcmpBlocked => "icmp_blocked",
            Reason::RawBlocked => "raw_blocked",
            Reason::PolicyUnavailable => "policy_unavailable",
            Reason::MalformedRequest => "malformed_request",
            Reason::LimitExceeded => "limit_exceeded",
            Reason::OriginalDstUnknown => "original_dst_unknown",
            Reason::UpstreamFailed => "upstream_failed",
            Reason::JournalSegmentRemoved => "journal_segment_removed",
            Reason::PolicyReloadRejected => "policy_reload_rejected",
            Reason::EgressBackstop => "egress_backstop",
            Reason::NoGateway => "no_gateway",
            Reason::TamperDetected => "tamper_detected",
            Reason::PacketBlocked => "packet_blocked",
            Reason::SockoptBlocked => "sockopt_blocked",
            Reason::KernelReportsLost => "kernel_reports_lost",
            Reason::InterfaceUnguarded => "interface_unguarded",
            Reason::AuditBudgetExhausted => "audit_budget_exhausted",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Built-in address classes of policy.md step 3 (plus loopback, step 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// Cloud metadata endpoints.
    Metadata,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 0.0.0.0/8 (this network), ::.
    Unspecified,
    /// NAT64 64:ff9b::/96 and 64:ff9b:1::/48, 6to4 2002::/16, Teredo 2001::/32.
    EmbeddedV4,
    /// RFC1918, CGNAT 100.64.0.0/10, ULA fc00::/7.
    Private,
}

impl AddrClass {
    /// The stable name used in rule ids (`builtin:metadata`).
    pub const fn as_str(self) -> &'static str {
        match self {
            AddrClass::Loopback => "loopback",
            AddrClass::Metadata => "metadata",
            AddrClass::LinkLocal => "link_local",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Unspecified => "unspecified",
            AddrClass::EmbeddedV4 => "embedded_v4",
            AddrClass::Private => "private",
        }
    }

    /// The reason code a deny by this class carries.
    pub const fn reason(self) -> Reason {
        match self {
            AddrClass::Loopback => Reason::Loopback,
            AddrClass::Metadata => Reason::BuiltinMetadata,
            AddrClass::LinkLocal => Reason::BuiltinLinkLocal,
            AddrClass::Multicast => Reason::BuiltinMulticast,
            AddrClass::Broadcast => Reason::BuiltinBroadcast,
            AddrClass::Unspecified => Reason::BuiltinUnspecified,
            AddrClass::EmbeddedV4 => Reason::BuiltinEmbeddedV4,
            AddrClass::Private => Reason::BuiltinPrivate,
        }
    }
}

/// Which list of the policy file a rule sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleList {
    /// `allow`.
    Allow,
    /// `deny`.
    Deny,
}

/// The stable identity of the rule behind a decision (policy.md "Identity of
/// the decision"). `Copy` and allocation-free so the hot path can carry it;
/// `Display` renders the public string (`allow[3]`, `overrides[1].allow[0]`,
/// `include:github-actions[5]`, `builtin:metadata`, `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleId {
    /// A rule of the base policy.
    Base {
        /// Which list.
        list: RuleList,
        /// Zero-based position in it.
        index: u32,
    },
    /// A rule added by an override.
    Override {
        /// Zero-based position of the override.
        overr: u32,
        /// Which list of the override.
        list: RuleList,
        /// Zero-based position in it.
        index: u32,
    },
    /// An entry of a built-in `include` set.
    Include {
        /// The set's name (`github-actions`).
        set: &'static str,
        /// Zero-based position in the set.
        index: u32,
    },
    /// A built-in address class.
    Builtin(AddrClass),
    /// Nothing matched.
    Default,
    /// Decided outside the policy (kernel deny, limits, malformed input).
    Engine,
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(l: RuleList) -> &'static str {
            match l {
                RuleList::Allow => "allow",
                RuleList::Deny => "deny",
            }
        }
        match *self {
            RuleId::Base { list: l, index } => write!(f, "{}[{index}]", list(l)),
            RuleId::Override {
                overr,
                list: l,
                index,
            } => {
                write!(f, "overrides[{overr}].{}[{index}]", list(l))
            }
            RuleId::Include { set, index } => write!(f, "include:{set}[{index}]"),
            RuleId::Builtin(c) => write!(f, "builtin:{}", c.as_str()),
            RuleId::Default => f.write_str("default"),
            RuleId::Engine => f.write_str("engine"),
        }
    }
}

/// One decision: what happens, why, by which rule, and in audit mode what
/// enforce mode would have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the traffic (always `Allow` in audit mode).
    pub verdict: Verdict,
    /// In audit mode: what enforce mode would have done. `None` in enforce mode.
    pub enforce_would: Option<Verdict>,
    /// Why.
    pub reason: Reason,
    /// Which rule.
    pub rule: RuleId,
}

impl Decision {
    /// An enforce-mode decision.
    pub const fn enforce(verdict: Verdict, reason: Reason, rule: RuleId) -> Self {
        Decision {
            verdict,
            enforce_would: None,
            reason,
            rule,
        }
    }

    /// A decision made outside the policy engine (limits, malformed input,
    /// kernel denies, no policy): always enforced, even in audit mode, because
    /// there is nothing to let through.
    pub const fn engine_deny(reason: Reason) -> Self {
        Decision::enforce(Verdict::Deny, reason, RuleId::Engine)
    }

    /// Turn an enforce-mode decision into its audit-mode form: the traffic is
    /// let through and the record says what enforce would have done.
    pub const fn into_audit_mode(self) -> Self {
        Decision {
            verdict: Verdict::Allow,
            enforce_would: Some(self.verdict),
            reason: self.reason,
            rule: self.rule,
        }
    }

    /// True when the traffic is let through.
    pub const fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_render_as_policy_md_says() {
        assert_eq!(
            RuleId::Base {
                list: RuleList::Allow,
                index: 3
            }
            .to_string(),
            "allow[3]"
        );
        assert_eq!(
            RuleId::Base {
                list: RuleList::Deny,
                index: 0
            }
            .to_string(),
            "deny[0]"
        );
        assert_eq!(
            RuleId::Override {
                overr: 1,
                list: RuleList::Allow,
                index: 0
            }
            .to_string(),
            "overrides[1].allow[0]"
        );
        assert_eq!(
            RuleId::Include {
                set: "github-actions",
                index: 5
            }
            .to_string(),
            "include:github-actions[5]"
        );
        assert_eq!(
            RuleId::Builtin(AddrClass::Metadata).to_string(),
            "builtin:metadata"
        );
        assert_eq!(RuleId::Default.to_string(), "default");
    }

    #[test]
    fn reason_all_is_complete_and_in_declaration_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
        let strings: std::collections::HashSet<_> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            strings.len(),
            Reason::ALL.len(),
            "every reason has its own string"
        );
    }

    #[test]
    fn audit_mode_lets_through_and_remembers() {
        let d = Decision::enforce(Verdict::Deny, Reason::NoRule, RuleId::Default).into_audit_mode();
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(d.enforce_would, Some(Verdict::Deny));
    }
}
