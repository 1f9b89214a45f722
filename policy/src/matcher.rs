//! The compiled matcher: one table per list (`allow`, `deny`) holding a
//! hashed label walk for names (`names`) and a path-compressed binary prefix
//! trie per address family (`prefix`). A lookup returns the matching rule
//! that comes first in policy order; no lookup scans the rules.

pub(crate) mod names;
pub(crate) mod prefix;

use std::net::IpAddr;

use crate::decision::RuleId;

/// Which ports a rule covers, sorted and deduplicated; `None` is every port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Ports(pub(crate) Option<Box<[u16]>>);

impl Ports {
    pub(crate) fn covers(&self, q: PortQuery) -> bool {
        match (q, &self.0) {
            (PortQuery::AnyRule, _) | (_, None) => true,
            (PortQuery::Port(p), Some(list)) => list.binary_search(&p).is_ok(),
            (PortQuery::EveryPort, Some(_)) => false,
        }
    }
}

/// Which rules a lookup may return, by their ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortQuery {
    /// Rules that cover this port.
    Port(u16),
    /// Any rule, whatever its ports (an allowed DNS query).
    AnyRule,
    /// Only rules without a port list (a DNS query a deny rule refuses).
    EveryPort,
}

/// One rule as the matcher stores it.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    /// Position in policy order; the smallest matching one wins.
    pub(crate) order: u32,
    pub(crate) ports: Ports,
    pub(crate) id: RuleId,
}

/// The first hit of a list (kept sorted by `order`) that covers the query.
pub(crate) fn first(hits: &[Hit], q: PortQuery) -> Option<&Hit> {
    hits.iter().find(|h| h.ports.covers(q))
}

/// The earlier of two optional hits.
pub(crate) fn earlier<'a>(a: Option<&'a Hit>, b: Option<&'a Hit>) -> Option<&'a Hit> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.order < x.order { y } else { x }),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The rules of one list (`allow` or `deny`), compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) names: names::NameTable,
    pub(crate) v4: prefix::PrefixTrie<u32>,
    pub(crate) v6: prefix::PrefixTrie<u128>,
}

impl Table {
    pub(crate) fn new() -> Self {
        Table {
            names: names::NameTable::default(),
            v4: prefix::PrefixTrie::new(),
            v6: prefix::PrefixTrie::new(),
        }
    }

    /// The first IP/CIDR rule covering `ip` (already canonical) and the port,
    /// among rules whose prefix is at least `min_len` long.
    pub(crate) fn ip(&self, ip: IpAddr, q: PortQuery, min_len: u8) -> Option<&Hit> {
        match ip {
            IpAddr::V4(v4) => self.v4.lookup(u32::from(v4), q, min_len),
            IpAddr::V6(v6) => self.v6.lookup(u128::from(v6), q, min_len),
        }
    }
}
