//! One compiled rule set (the base policy, or the base plus one override) and
//! the decisions of policy.md's evaluation order. Immutable once built; every
//! method is a read-only lookup with no allocation.

use std::net::SocketAddr;

use crate::Mode;
use crate::addr::{canonical, classify};
use crate::decision::{AddrClass, Decision, Reason, RuleId, Verdict};
use crate::hostname::{NameBuf, normalise};
use crate::matcher::{Hit, PortQuery, Table, earlier};
use crate::resolutions::Resolutions;

/// Options of [`Ruleset::decide_connect_opts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Filter loopback destinations too (policy.md step 1 skipped).
    pub filter_loopback: bool,
}

/// A compiled rule set: what `decide_*` consult.
#[derive(Debug, Clone)]
pub struct Ruleset {
    pub(crate) mode: Mode,
    pub(crate) private_ranges_allow: bool,
    pub(crate) allow: Table,
    pub(crate) deny: Table,
    pub(crate) rule_count: usize,
}

fn allow(hit: &Hit) -> Decision {
    Decision::enforce(Verdict::Allow, Reason::RuleAllow, hit.id)
}

fn deny(reason: Reason, rule: RuleId) -> Decision {
    Decision::enforce(Verdict::Deny, reason, rule)
}

impl Ruleset {
    pub(crate) fn empty(mode: Mode, private_ranges_allow: bool) -> Self {
        Ruleset {
            mode,
            private_ranges_allow,
            allow: Table::new(),
            deny: Table::new(),
            rule_count: 0,
        }
    }

    /// Enforce or audit.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// True when `private_ranges: allow` (RFC1918, CGNAT and ULA are not
    /// denied as a class).
    pub fn allows_private_ranges(&self) -> bool {
        self.private_ranges_allow
    }

    /// How many rules (allow, deny and included entries) this set holds.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    fn in_mode(&self, d: Decision) -> Decision {
        match self.mode {
            Mode::Enforce => d,
            Mode::Audit => d.into_audit_mode(),
        }
    }

    /// The decision for a DNS query for `name` (audit mode applied). A deny
    /// host rule without ports refuses it; an allow host rule (whatever its
    /// ports) lets it through; anything else is refused.
    pub fn decide_dns(&self, name: &str) -> Decision {
        self.in_mode(self.dns_enforced(name))
    }

    fn dns_enforced(&self, name: &str) -> Decision {
        let mut buf = NameBuf::new();
        let Some(n) = normalise(name, &mut buf) else {
            return deny(Reason::DnsRefused, RuleId::Default);
        };
        if let Some(hit) = self.deny.names.lookup(n, PortQuery::EveryPort) {
            return deny(Reason::RuleDeny, hit.id);
        }
        if let Some(hit) = self.allow.names.lookup(n, PortQuery::AnyRule) {
            return allow(hit);
        }
        deny(Reason::DnsRefused, RuleId::Default)
    }

    /// The decision for a TCP connection to `dst` whose stream named `name`
    /// (TLS SNI or HTTP Host; `None` when the stream carries no name), audit
    /// mode applied. `dns` says whether `name` really resolves to the
    /// destination. With `name: None` only IP/CIDR rules are consulted; the
    /// proxy handles "this IP was answered for an allowed name" by asking
    /// again with each name its DNS memory holds for the IP.
    pub fn decide_connect(
        &self,
        dst: SocketAddr,
        name: Option<&str>,
        dns: &dyn Resolutions,
    ) -> Decision {
        self.decide_connect_opts(dst, name, dns, ConnectOptions::default())
    }

    /// [`Ruleset::decide_connect`] with options. `filter_loopback` skips step 1:
    /// loopback destinations are then ordinary addresses (no built-in class),
    /// decided by the rules like any other, which is how a policy is tried
    /// against local test servers.
    ///
    /// ```
    /// use egressd_policy::{ConnectOptions, NoResolutions, Policy, Verdict};
    /// let p = Policy::parse("p.yaml", "version: 1\nallow: [127.0.0.2]\n").unwrap().policy;
    /// let opts = ConnectOptions { filter_loopback: true };
    /// let d = |a: &str| p.base().decide_connect_opts(a.parse().unwrap(), None, &NoResolutions, opts);
    /// assert_eq!(d("127.0.0.2:443").verdict, Verdict::Allow);
    /// assert_eq!(d("127.0.0.3:443").verdict, Verdict::Deny);
    /// ```
    pub fn decide_connect_opts(
        &self,
        dst: SocketAddr,
        name: Option<&str>,
        dns: &dyn Resolutions,
        opts: ConnectOptions,
    ) -> Decision {
        self.in_mode(self.connect_enforced(dst, name, dns, opts))
    }

    fn connect_enforced(
        &self,
        dst: SocketAddr,
        name: Option<&str>,
        dns: &dyn Resolutions,
        opts: ConnectOptions,
    ) -> Decision {
        let ip = canonical(dst.ip());
        let port = PortQuery::Port(dst.port());
        let class =
            classify(ip).filter(|c| !(opts.filter_loopback && c.class == AddrClass::Loopback));
        // 1. Loopback is never filtered.
        if let Some(c) = class
            && c.class == AddrClass::Loopback
        {
            return Decision::enforce(
                Verdict::Allow,
                Reason::Loopback,
                RuleId::Builtin(AddrClass::Loopback),
            );
        }
        let mut buf = NameBuf::new();
        let name_n = name.and_then(|n| normalise(n, &mut buf));
        // 2. Deny rules win over everything below.
        let denied = earlier(
            name_n.and_then(|n| self.deny.names.lookup(n, port)),
            self.deny.ip(ip, port, 0),
        );
        if let Some(hit) = denied {
            return deny(Reason::RuleDeny, hit.id);
        }
        // 3. Built-in classes, unless an IP/CIDR allow inside the class's
        //    block covers the address. A host rule never opens them.
        if let Some(c) = class
            && !(c.class == AddrClass::Private && self.private_ranges_allow)
        {
            return match self.allow.ip(ip, port, c.prefix_len) {
                Some(hit) => allow(hit),
                None => deny(c.class.reason(), RuleId::Builtin(c.class)),
            };
        }
        // 4. Allow rules: addresses first, then the name if it is bound to
        //    the destination.
        if let Some(hit) = self.allow.ip(ip, port, 0) {
            return allow(hit);
        }
        if let Some(n) = name_n
            && let Some(hit) = self.allow.names.lookup(n, port)
        {
            return if dns.binds(n, ip) {
                allow(hit)
            } else {
                deny(Reason::SniIpMismatch, hit.id)
            };
        }
        // 5. Default deny.
        if name.is_some() {
            deny(Reason::NoRule, RuleId::Default)
        } else {
            deny(Reason::NoSni, RuleId::Default)
        }
    }

    /// Offline evaluation of a host name on a port when no address is known
    /// (`egressd explain`), audit mode applied: deny and allow host rules for
    /// that port, else what the DNS query would get. At run time the
    /// connection is also checked against the address the name resolves to
    /// (built-in classes, IP/CIDR deny rules, the name-to-IP binding).
    pub fn decide_name(&self, name: &str, port: u16) -> Decision {
        self.in_mode(self.name_enforced(name, port))
    }

    fn name_enforced(&self, name: &str, port: u16) -> Decision {
        let q = PortQuery::Port(port);
        let mut buf = NameBuf::new();
        let Some(n) = normalise(name, &mut buf) else {
            return deny(Reason::NoRule, RuleId::Default);
        };
        if let Some(hit) = self.deny.names.lookup(n, q) {
            return deny(Reason::RuleDeny, hit.id);
        }
        if let Some(hit) = self.allow.names.lookup(n, q) {
            return allow(hit);
        }
        let dns = self.dns_enforced(name);
        if dns.is_allow() {
            deny(Reason::NoRule, RuleId::Default)
        } else {
            dns
        }
    }
}

#[cfg(test)]
mod tests;
