//! Policy suggestions: from the records of an audit-mode run, a policy YAML
//! (version 1) that would have allowed what was seen, for a person to review.
//!
//! - Names are preferred over IPs: a connection whose record has a `host`
//!   becomes a `host:` rule; only connections with no name become `ip:` rules.
//! - Ports are grouped per rule; a name seen only in DNS queries gets a rule
//!   without ports (a policy cannot say "DNS only") and a comment saying so.
//! - Three or more sibling names with the same ports (`a.cdn.example.com`,
//!   `b.cdn.example.com`, ...) become one wildcard (`*.cdn.example.com`) whose
//!   comment lists them, unless the parent looks like a public suffix
//!   (`co.uk`) or has fewer than two labels.
//! - Names decided only by a built-in `include` set keep that `include`.
//! - Private addresses (which no name rule opens) become explicit `ip:` rules.
//! - What no rule can or should allow (cloud metadata, link-local and the other
//!   built-in classes, UDP/ICMP/raw sockets, explicit deny rules, malformed
//!   traffic), and what enforce mode really refused (only audit mode says what
//!   a policy would have needed), is listed in comments at the end, never as a
//!   rule.
//! - Every rule has a comment: how often it was used and by which processes.
//!   Text from the network is reduced to printable ASCII before it reaches a
//!   comment, and names are emitted only when they are valid host names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use egressd_policy::{Reason, Verdict};

use crate::record::{Kind, Record};
use crate::summary::process_name;

/// Sibling names needed before they are folded into one wildcard.
const WILDCARD_MIN: usize = 3;
/// Processes named per comment before "...".
const MAX_PROCESSES: usize = 5;

#[derive(Debug, Default)]
struct Usage {
    connections: u64,
    dns_queries: u64,
    processes: BTreeSet<String>,
    more_processes: bool,
}

impl Usage {
    fn add(&mut self, rec: &Record) {
        // A counted record stands for `count` decisions.
        if rec.kind == Kind::Dns {
            self.dns_queries += rec.decisions();
        } else {
            self.connections += rec.decisions();
        }
        if let Some(p) = process_name(rec) {
            let p = comment_text(p);
            if !self.processes.contains(&p) {
                if self.processes.len() < MAX_PROCESSES {
                    self.processes.insert(p);
                } else {
                    self.more_processes = true;
                }
            }
        }
    }

    fn merge(&mut self, other: &Usage) {
        self.connections += other.connections;
        self.dns_queries += other.dns_queries;
        for p in &other.processes {
            if self.processes.len() < MAX_PROCESSES {
                self.processes.insert(p.clone());
            } else if !self.processes.contains(p) {
                self.more_processes = true;
            }
        }
        self.more_processes |= other.more_processes;
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.connections > 0 {
            parts.push(plural(self.connections, "connection", "connections"));
        }
        if self.dns_queries > 0 {
            parts.push(plural(self.dns_queries, "DNS query", "DNS queries"));
        }
        let mut s = parts.join(", ");
        if !self.processes.is_empty() {
            s.push_str(" by ");
            s.push_str(
                &self
                    .processes
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            if self.more_processes {
                s.push_str(", ...");
            }
        }
        s
    }
}

#[derive(Debug, Default)]
struct HostUse {
    ports: BTreeSet<u16>,
    usage: Usage,
    /// Some record for this name was decided by something other than an
    /// `include` set.
    beyond_include: bool,
}

#[derive(Debug, Default)]
struct IpUse {
    ports: BTreeSet<u16>,
    usage: Usage,
    private: bool,
    names: BTreeSet<String>,
}

/// What was seen but is not suggested, keyed by a description and reason.
type Notes = BTreeMap<(String, &'static str), Usage>;

/// Build the suggested policy YAML from `records`.
pub fn suggest<I: IntoIterator<Item = Record>>(records: I) -> String {
    let mut hosts: BTreeMap<String, HostUse> = BTreeMap::new();
    let mut ips: BTreeMap<IpAddr, IpUse> = BTreeMap::new();
    let mut includes: BTreeSet<String> = BTreeSet::new();
    let mut notes: Notes = BTreeMap::new();
    let mut seen = 0u64;
    let mut first: Option<jiff::Timestamp> = None;
    let mut last: Option<jiff::Timestamp> = None;

    for rec in records {
        if rec.kind == Kind::Event || rec.is_closing() || rec.reason == Reason::Loopback {
            continue;
        }
        seen += rec.decisions();
        first = Some(first.map_or(rec.ts, |f| f.min(rec.ts)));
        last = Some(last.map_or(rec.ts, |l| l.max(rec.ts)));
        // What enforce mode decided or would have decided.
        let enforced = rec.enforce_would.unwrap_or(rec.decision);
        let port = rec.port();
        let dst_text = || match rec.dst {
            Some(d) => d.to_string(),
            None => "unknown destination".to_owned(),
        };
        let target = || match &rec.host {
            Some(h) => format!("{} ({})", comment_text(h), dst_text()),
            None => dst_text(),
        };
        if let Some(why) = not_allowable(&rec, enforced) {
            notes.entry((target(), why)).or_default().add(&rec);
            continue;
        }
        if rec.reason == Reason::BuiltinPrivate {
            let Some(dst) = rec.dst else {
                notes
                    .entry((target(), "no destination"))
                    .or_default()
                    .add(&rec);
                continue;
            };
            let e = ips.entry(canonical_ip(dst.ip())).or_default();
            e.private = true;
            e.ports.insert(dst.port());
            e.usage.add(&rec);
            if let Some(h) = rec.host.as_deref().and_then(valid_host) {
                e.names.insert(h);
            }
            continue;
        }
        match rec.host.as_deref() {
            Some(h) if h.trim_end_matches('.').parse::<IpAddr>().is_err() => {
                let Some(name) = valid_host(h) else {
                    notes
                        .entry((target(), "not a valid host name"))
                        .or_default()
                        .add(&rec);
                    continue;
                };
                let e = hosts.entry(name).or_default();
                if rec.kind != Kind::Dns
                    && let Some(p) = port
                {
                    e.ports.insert(p);
                }
                e.usage.add(&rec);
                match rec
                    .rule
                    .strip_prefix("include:")
                    .and_then(|r| r.split('[').next())
                {
                    Some(set) if valid_set_name(set) => {
                        includes.insert(set.to_owned());
                    }
                    _ => e.beyond_include = true,
                }
            }
            _ => {
                let Some(dst) = rec.dst else {
                    notes
                        .entry((target(), "no name and no destination"))
                        .or_default()
                        .add(&rec);
                    continue;
                };
                let e = ips.entry(canonical_ip(dst.ip())).or_default();
                e.ports.insert(dst.port());
                e.usage.add(&rec);
            }
        }
    }

    render(seen, first, last, &includes, hosts, &ips, &notes)
}

/// Why this record must not become a rule, if so.
fn not_allowable(rec: &Record, enforced: Verdict) -> Option<&'static str> {
    match rec.kind {
        Kind::Udp | Kind::Icmp | Kind::Raw => {
            return Some("blocked in the kernel; no rule allows it");
        }
        Kind::Tcp | Kind::Dns | Kind::Event => {}
    }
    let why = match rec.reason {
        Reason::BuiltinMetadata => {
            "cloud metadata endpoint; allow it only with an explicit ip: rule if you mean to"
        }
        Reason::BuiltinLinkLocal
        | Reason::BuiltinMulticast
        | Reason::BuiltinBroadcast
        | Reason::BuiltinUnspecified
        | Reason::BuiltinEmbeddedV4 => "built-in denied address class; not suggested",
        Reason::RuleDeny if enforced == Verdict::Deny => "denied by an explicit deny rule",
        Reason::SniIpMismatch => "the name does not resolve to this address (sni_ip_mismatch)",
        Reason::MalformedRequest
        | Reason::LimitExceeded
        | Reason::OriginalDstUnknown
        | Reason::PolicyUnavailable
        | Reason::AuditBudgetExhausted
        | Reason::UpstreamFailed
        | Reason::UdpBlocked
        | Reason::IcmpBlocked
        | Reason::RawBlocked => rec.reason.as_str(),
        _ if rec.decision == Verdict::Deny => {
            "refused in enforce mode; run in audit mode to have it suggested"
        }
        _ => return None,
    };
    Some(why)
}

/// An IPv4-mapped IPv6 address is its IPv4 address (policy.md).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The name lower-cased without a trailing dot, if it is a valid ASCII host
/// name (letters, digits, `-`, `_`; labels of 1..=63; at most 253 in all).
pub(crate) fn valid_host(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    ok.then_some(name)
}

fn valid_set_name(set: &str) -> bool {
    !set.is_empty()
        && set
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Network text reduced to printable ASCII for a YAML comment.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect()
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A parent domain that is probably a public suffix (`co.uk`, `com.au`), under
/// which a wildcard would cover unrelated sites.
pub(crate) fn looks_like_public_suffix(parent: &str) -> bool {
    let labels: Vec<&str> = parent.split('.').collect();
    match labels.as_slice() {
        [_] => true,
        [second, tld] => tld.len() == 2 && second.len() <= 3,
        _ => false,
    }
}

enum HostRule {
    One(String, HostUse),
    Wildcard {
        parent: String,
        ports: BTreeSet<u16>,
        names: Vec<String>,
        usage: Usage,
    },
}

/// Fold sibling names with equal ports into wildcards.
fn group_hosts(hosts: BTreeMap<String, HostUse>) -> Vec<HostRule> {
    let mut by_parent: BTreeMap<(String, BTreeSet<u16>), Vec<String>> = BTreeMap::new();
    for (name, u) in &hosts {
        if let Some((_, parent)) = name.split_once('.')
            && !looks_like_public_suffix(parent)
            && !u.ports.is_empty()
        {
            by_parent
                .entry((parent.to_owned(), u.ports.clone()))
                .or_default()
                .push(name.clone());
        }
    }
    let mut hosts = hosts;
    let mut rules = Vec::new();
    for ((parent, ports), names) in by_parent {
        if names.len() < WILDCARD_MIN {
            continue;
        }
        let mut usage = Usage::default();
        for n in &names {
            if let Some(u) = hosts.remove(n) {
                usage.merge(&u.usage);
            }
        }
        rules.push(HostRule::Wildcard {
            parent,
            ports,
            names,
            usage,
        });
    }
    rules.extend(hosts.into_iter().map(|(n, u)| HostRule::One(n, u)));
    // Names of one domain together: sort by labels from the right.
    let key = |r: &HostRule| -> Vec<String> {
        let name = match r {
            HostRule::One(n, _) => n.clone(),
            HostRule::Wildcard { parent, .. } => format!("*.{parent}"),
        };
        name.rsplit('.').map(str::to_owned).collect()
    };
    rules.sort_by_key(key);
    rules
}

fn ports_yaml(ports: &BTreeSet<u16>) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!("[{}]", list.join(", "))
}

fn quoted(s: &str) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn render(
    seen: u64,
    first: Option<jiff::Timestamp>,
    last: Option<jiff::Timestamp>,
    includes: &BTreeSet<String>,
    hosts: BTreeMap<String, HostUse>,
    ips: &BTreeMap<IpAddr, IpUse>,
    notes: &Notes,
) -> String {
    let mut y = String::new();
    let _ = write!(
        y,
        "# Suggested by `egressd audit suggest` from {}",
        plural(seen, "decision", "decisions")
    );
    if let (Some(f), Some(l)) = (first, last) {
        let fmt = "%Y-%m-%dT%H:%M:%SZ";
        let _ = write!(y, " between {} and {}", f.strftime(fmt), l.strftime(fmt));
    }
    y.push_str(".\n# It allows what was seen; review every rule before enforcing it.\n");
    y.push_str("version: 1\nmode: enforce\n");
    // Names covered only by an include set are left to it.
    let (covered, hosts): (BTreeMap<_, _>, BTreeMap<_, _>) =
        hosts.into_iter().partition(|(_, u)| !u.beyond_include);
    if !includes.is_empty() {
        let list: Vec<&str> = includes.iter().map(String::as_str).collect();
        let _ = writeln!(
            y,
            "# {} covered by these sets.\ninclude: [{}]",
            plural(covered.len() as u64, "name was", "names were"),
            list.join(", ")
        );
    }
    let rules = group_hosts(hosts);
    if rules.is_empty() && ips.is_empty() {
        y.push_str("allow: []\n");
    } else {
        y.push_str("allow:\n");
    }
    for rule in rules {
        match rule {
            HostRule::One(name, u) => {
                let _ = writeln!(y, "  # {}", u.usage.describe());
                if u.ports.is_empty() {
                    y.push_str("  # Seen in DNS queries only: add `ports:` if you know them.\n");
                    let _ = writeln!(y, "  - host: {}", quoted(&name));
                } else {
                    let _ = writeln!(
                        y,
                        "  - host: {}\n    ports: {}",
                        quoted(&name),
                        ports_yaml(&u.ports)
                    );
                }
            }
            HostRule::Wildcard {
                parent,
                ports,
                names,
                usage,
            } => {
                let _ = writeln!(
                    y,
                    "  # {}; names seen: {}",
                    usage.describe(),
                    names.join(", ")
                );
                let _ = writeln!(
                    y,
                    "  - host: {}\n    ports: {}",
                    quoted(&format!("*.{parent}")),
                    ports_yaml(&ports)
                );
            }
        }
    }
    for (ip, u) in ips {
        let mut comment = u.usage.describe();
        if u.private {
            comment.push_str("; private address");
            if !u.names.is_empty() {
                comment.push_str(" reached as ");
                comment.push_str(&u.names.iter().cloned().collect::<Vec<_>>().join(", "));
            }
        } else {
            comment.push_str("; no host name was seen");
        }
        let _ = writeln!(
            y,
            "  # {comment}\n  - ip: {}\n    ports: {}",
            quoted(&ip.to_string()),
            ports_yaml(&u.ports)
        );
    }
    if !notes.is_empty() {
        y.push_str("# Seen but not suggested:\n");
        for ((target, why), u) in notes {
            let _ = writeln!(y, "#   {target}: {why}; {}", u.describe());
        }
    }
    y
}

#[cfg(test)]
mod tests;
