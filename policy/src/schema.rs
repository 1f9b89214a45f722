//! The file format, version 1: walks the YAML tree and turns it into typed
//! wire structures, reporting every problem (unknown keys, bad values, bad
//! rules) with its position. Nothing here is compiled or optimised; see
//! `compile` for that.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::Mode;
use crate::diagnostic::{Pos, Sink};
use crate::hostname::{self, HostPattern};
use crate::include::IncludeSet;
use crate::yaml::{Kind, Node};

/// The policy format version this module reads.
pub(crate) const VERSION: &str = "1";

const TOP_KEYS: &[&str] = &[
    "version",
    "mode",
    "include",
    "allow",
    "deny",
    "private_ranges",
    "overrides",
];
const RULE_KEYS: &[&str] = &["host", "ip", "cidr", "ports"];
const OVERRIDE_KEYS: &[&str] = &["when", "mode", "allow", "deny"];
const WHEN_KEYS: &[&str] = &["repository", "labels"];

/// A whole policy file.
#[derive(Debug, Default)]
pub(crate) struct File {
    pub(crate) mode: Option<Mode>,
    pub(crate) private_ranges_allow: bool,
    pub(crate) include: Vec<IncludeSet>,
    pub(crate) allow: Vec<RuleSpec>,
    pub(crate) deny: Vec<RuleSpec>,
    pub(crate) overrides: Vec<OverrideSpec>,
}

/// One rule as written.
#[derive(Debug, Clone)]
pub(crate) struct RuleSpec {
    pub(crate) at: Pos,
    pub(crate) target: Target,
    /// Sorted, deduplicated; `None` = every port.
    pub(crate) ports: Option<Vec<u16>>,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Target {
    Host(HostPattern),
    Net(IpNet),
}

impl Target {
    /// The rule as a person would write it (normalised).
    pub(crate) fn display(&self) -> String {
        match self {
            Target::Host(h) => h.display(),
            Target::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
            Target::Net(n) => n.to_string(),
        }
    }
}

impl RuleSpec {
    /// The rule as a person would write it, ports included.
    pub(crate) fn display(&self) -> String {
        match &self.ports {
            None => self.target.display(),
            Some(p) => {
                let list: Vec<String> = p.iter().map(u16::to_string).collect();
                format!("{} ports [{}]", self.target.display(), list.join(", "))
            }
        }
    }
}

/// One entry of `overrides`.
#[derive(Debug)]
pub(crate) struct OverrideSpec {
    pub(crate) repository: Option<String>,
    pub(crate) labels: Vec<String>,
    pub(crate) mode: Option<Mode>,
    pub(crate) allow: Vec<RuleSpec>,
    pub(crate) deny: Vec<RuleSpec>,
}

fn list_keys(keys: &[&str]) -> String {
    keys.join(", ")
}

/// The allowed key a misspelt one most likely meant: within two edits, or
/// one is the start of the other (`hostname` for `host`).
fn closest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| (edit_distance(&key, a), *a))
        .filter(|(d, a)| {
            *d <= 2 || (a.len() >= 3 && (key.starts_with(a) || a.starts_with(key.as_str())))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// Walk a mapping: report duplicate and unknown keys, hand known ones to `f`.
fn each_key<'n>(
    node: &'n Node,
    allowed: &[&str],
    what: &str,
    sink: &mut Sink,
    mut f: impl FnMut(&str, &'n Node, &'n Node, &mut Sink),
) {
    let Kind::Map(pairs) = &node.kind else {
        sink.error(
            node.at,
            format!(
                "{what} must be a mapping of keys ({}), found {}",
                list_keys(allowed),
                node.shape()
            ),
        );
        return;
    };
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    for (k, v) in pairs {
        let Some(key) = k.scalar() else {
            sink.error(
                k.at,
                format!("keys in {what} are plain words ({})", list_keys(allowed)),
            );
            continue;
        };
        if !allowed.contains(&key) {
            let hint = match closest(key, allowed) {
                Some(k) => format!("did you mean {k:?}? "),
                None => String::new(),
            };
            sink.error(
                k.at,
                format!(
                    "unknown key {key:?} in {what}; {hint}allowed keys: {}",
                    list_keys(allowed)
                ),
            );
            continue;
        }
        if let Some(first) = seen.insert(key, k.at) {
            sink.error(
                k.at,
                format!(
                    "{key:?} appears twice in {what} (first at line {}); keep one",
                    first.line
                ),
            );
            seen.insert(key, first);
            continue;
        }
        f(key, k, v, sink);
    }
}

/// Read a whole file. Problems go to `sink`; the result is only meaningful
/// when `sink` has no errors.
pub(crate) fn read(root: Option<&Node>, sink: &mut Sink) -> File {
    let mut file = File::default();
    let Some(root) = root else {
        sink.error(
            Pos { line: 1, col: 1 },
            "the policy is empty; start with `version: 1` and an `allow:` list",
        );
        return file;
    };
    if !matches!(root.kind, Kind::Map(_)) {
        sink.error(
            root.at,
            format!(
                "a policy is a mapping of keys ({}), found {}",
                list_keys(TOP_KEYS),
                root.shape()
            ),
        );
        return file;
    }
    let mut version_seen = false;
    each_key(
        root,
        TOP_KEYS,
        "the policy",
        sink,
        |key, _k, v, sink| match key {
            "version" => {
                version_seen = true;
                match v.scalar() {
                Some(VERSION) => {}
                _ => sink.error(
                    v.at,
                    format!(
                        "`version` must be 1 (the only policy format this egressd reads), found {}",
                        found(v)
                    ),
                ),
            }
            }
            "mode" => file.mode = mode(v, sink),
            "private_ranges" => match v.scalar() {
                Some("deny") => file.private_ranges_allow = false,
                Some("allow") => file.private_ranges_allow = true,
                _ => sink.error(
                    v.at,
                    format!(
                        "`private_ranges` must be \"deny\" or \"allow\", found {}",
                        found(v)
                    ),
                ),
            },
            "include" => file.include = include(v, sink),
            "allow" => file.allow = rules(v, "allow", sink),
            "deny" => file.deny = rules(v, "deny", sink),
            "overrides" => file.overrides = overrides(v, sink),
            _ => {}
        },
    );
    if !version_seen {
        sink.error(
            root.at,
            "`version: 1` is missing; add it as the first line of the policy",
        );
    }
    duplicates(&file.allow, "allow", sink);
    duplicates(&file.deny, "deny", sink);
    shadowed(&file.allow, "allow", &file.deny, "deny", sink);
    for (i, o) in file.overrides.iter().enumerate() {
        duplicates(&o.allow, &format!("overrides[{i}].allow"), sink);
        duplicates(&o.deny, &format!("overrides[{i}].deny"), sink);
        shadowed(
            &o.allow,
            &format!("overrides[{i}].allow"),
            &file.deny,
            "deny",
            sink,
        );
    }
    file
}

fn found(v: &Node) -> String {
    match v.scalar() {
        Some(s) if !v.is_null() => format!("{s:?}"),
        _ => v.shape().to_owned(),
    }
}

fn mode(v: &Node, sink: &mut Sink) -> Option<Mode> {
    match v.scalar() {
        Some("enforce") => Some(Mode::Enforce),
        Some("audit") => Some(Mode::Audit),
        _ => {
            sink.error(
                v.at,
                format!(
                    "`mode` must be \"enforce\" or \"audit\", found {}",
                    found(v)
                ),
            );
            None
        }
    }
}

/// A list node (a null value is an empty list).
fn items<'n>(v: &'n Node, what: &str, example: &str, sink: &mut Sink) -> &'n [Node] {
    match &v.kind {
        Kind::Seq(items) => items,
        _ if v.is_null() => &[],
        _ => {
            sink.error(
                v.at,
                format!(
                    "`{what}` must be a list, e.g. `{what}: [{example}]`; found {}",
                    v.shape()
                ),
            );
            &[]
        }
    }
}

fn include(v: &Node, sink: &mut Sink) -> Vec<IncludeSet> {
    let mut sets = Vec::new();
    for item in items(v, "include", "github-actions", sink) {
        let name = item.scalar().filter(|_| !item.is_null());
        match name.and_then(IncludeSet::from_name) {
            Some(set) if sets.contains(&set) => {
                sink.warn(
                    item.at,
                    format!("{:?} is included twice; remove one", set.name()),
                );
            }
            Some(set) => sets.push(set),
            None => sink.error(
                item.at,
                format!(
                    "unknown include set {}; known sets: {}",
                    found(item),
                    IncludeSet::ALL
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    sets
}

fn rules(v: &Node, list: &str, sink: &mut Sink) -> Vec<RuleSpec> {
    items(v, list, "github.com", sink)
        .iter()
        .filter_map(|item| rule(item, sink))
        .collect()
}

fn rule(item: &Node, sink: &mut Sink) -> Option<RuleSpec> {
    match &item.kind {
        Kind::Scalar { text, .. } if !item.is_null() => match bare(text) {
            Ok(target) => Some(RuleSpec {
                at: item.at,
                target,
                ports: None,
            }),
            Err(msg) => {
                sink.error(item.at, msg);
                None
            }
        },
        Kind::Map(_) => keyed(item, sink),
        _ => {
            sink.error(
                item.at,
                format!(
                    "a rule is a host name, IP or CIDR, or a mapping with one of `host:`, `ip:`, `cidr:` (and optional `ports:`); found {}",
                    item.shape()
                ),
            );
            None
        }
    }
}

fn keyed(item: &Node, sink: &mut Sink) -> Option<RuleSpec> {
    let mut target: Option<(Pos, Result<Target, String>)> = None;
    let mut ports_v: Option<Option<Vec<u16>>> = None;
    let mut ok = true;
    let mut kinds = 0;
    let errors_before = sink.error_count();
    each_key(item, RULE_KEYS, "a rule", sink, |key, _k, v, sink| {
        if key == "ports" {
            let p = ports(v, sink);
            ok &= p.is_some();
            ports_v = Some(p);
            return;
        }
        kinds += 1;
        let Some(text) = v.scalar().filter(|_| !v.is_null()) else {
            sink.error(v.at, format!("`{key}:` needs a value, found {}", v.shape()));
            ok = false;
            return;
        };
        let parsed = match key {
            "host" => host_only(text),
            "ip" => ip_only(text),
            _ => cidr(text),
        };
        if target.is_none() {
            target = Some((v.at, parsed));
        }
    });
    if kinds > 1 {
        sink.error(
            item.at,
            "a rule has exactly one of `host:`, `ip:` or `cidr:`; split it into one rule per target",
        );
        return None;
    }
    let Some((at, parsed)) = target else {
        if kinds == 0 && ok && sink.error_count() == errors_before {
            sink.error(
                item.at,
                "this rule has no target; add `host:`, `ip:` or `cidr:`",
            );
        }
        return None;
    };
    let target = match parsed {
        Ok(t) => t,
        Err(msg) => {
            sink.error(at, msg);
            return None;
        }
    };
    if !ok {
        return None;
    }
    Some(RuleSpec {
        at,
        target,
        ports: ports_v.flatten(),
    })
}

/// `ports:`: `Some(None)` is impossible here; `None` means an error was reported.
fn ports(v: &Node, sink: &mut Sink) -> Option<Vec<u16>> {
    let list = match &v.kind {
        Kind::Seq(list) => list,
        Kind::Scalar { text, .. } if !v.is_null() => {
            sink.error(v.at, format!("`ports` is a list; write `ports: [{text}]`"));
            return None;
        }
        _ => {
            sink.error(
                v.at,
                format!(
                    "`ports` is a list such as `ports: [443]`, found {}",
                    v.shape()
                ),
            );
            return None;
        }
    };
    if list.is_empty() {
        sink.error(
            v.at,
            "an empty `ports` list matches nothing; list the ports, or remove `ports` to cover every port",
        );
        return None;
    }
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for p in list {
        let text = p.scalar().unwrap_or("");
        match text.parse::<i64>() {
            Ok(n) if (1..=65535).contains(&n) => {
                let n = u16::try_from(n).unwrap_or(0);
                if out.contains(&n) {
                    sink.warn(p.at, format!("port {n} is listed twice; remove one"));
                } else {
                    out.push(n);
                }
            }
            Ok(n) => {
                sink.error(
                    p.at,
                    format!("port {n} is out of range; ports are 1 to 65535"),
                );
                ok = false;
            }
            Err(_) => {
                sink.error(
                    p.at,
                    format!("a port is a number from 1 to 65535, found {}", found(p)),
                );
                ok = false;
            }
        }
    }
    out.sort_unstable();
    ok.then_some(out)
}

/// A bare-string rule, detected by shape: IP address, CIDR, else host name.
pub(crate) fn bare(text: &str) -> Result<Target, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Target::Net(single(ip)));
    }
    if let Some((addr, _)) = text.split_once('/')
        && addr.parse::<IpAddr>().is_ok()
    {
        return cidr(text);
    }
    hostname::parse_pattern(text).map(Target::Host)
}

fn host_only(text: &str) -> Result<Target, String> {
    if text.parse::<IpAddr>().is_ok() {
        return Err(format!("{text:?} is an IP address; write `ip: {text}`"));
    }
    if let Some((addr, _)) = text.split_once('/')
        && addr.parse::<IpAddr>().is_ok()
    {
        return Err(format!("{text:?} is a network; write `cidr: {text}`"));
    }
    hostname::parse_pattern(text).map(Target::Host)
}

fn ip_only(text: &str) -> Result<Target, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Target::Net(single(ip)));
    }
    if text.contains('/') {
        return Err(format!(
            "{text:?} is a network, and `ip:` takes one address; write `cidr: {text}`"
        ));
    }
    Err(format!(
        "{text:?} is not an IP address; for a host name write `host: {text}`"
    ))
}

fn cidr(text: &str) -> Result<Target, String> {
    let Some((addr, len)) = text.split_once('/') else {
        return Err(match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {
                format!("{text:?} has no prefix length; write \"{text}/32\" or `ip: {text}`")
            }
            Ok(IpAddr::V6(_)) => {
                format!("{text:?} has no prefix length; write \"{text}/128\" or `ip: {text}`")
            }
            Err(_) => {
                format!("{text:?} is not a CIDR; write a network such as \"198.51.100.0/24\"")
            }
        });
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(format!(
            "{text:?}: {addr:?} is not an IP address; write a network such as \"198.51.100.0/24\""
        ));
    };
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let Ok(len) = len
        .parse::<u8>()
        .map_err(|_| ())
        .and_then(|l| if l <= max { Ok(l) } else { Err(()) })
    else {
        return Err(format!(
            "{text:?}: the prefix length must be a number from 0 to {max}"
        ));
    };
    let net = IpNet::new(ip, len).map_err(|_| format!("{text:?}: bad prefix length"))?;
    let trunc = net.trunc();
    if trunc != net {
        return Err(format!(
            "{text:?}: host bits are set after /{len}; write \"{trunc}\""
        ));
    }
    Ok(Target::Net(canonical_net(net)))
}

/// A single address as a full-length network, IPv4-mapped made IPv4.
fn single(ip: IpAddr) -> IpNet {
    match crate::addr::canonical(ip) {
        IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
        IpAddr::V6(v6) => IpNet::V6(Ipv6Net::from(v6)),
    }
}

/// `::ffff:a.b.c.d/(96+n)` is the IPv4 network `a.b.c.d/n`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n);
    }
    net
}

fn overrides(v: &Node, sink: &mut Sink) -> Vec<OverrideSpec> {
    let mut out = Vec::new();
    for (i, item) in items(
        v,
        "overrides",
        "{ when: { labels: [gpu] }, allow: [\"*.nvidia.com\"] }",
        sink,
    )
    .iter()
    .enumerate()
    {
        let mut o = OverrideSpec {
            repository: None,
            labels: Vec::new(),
            mode: None,
            allow: Vec::new(),
            deny: Vec::new(),
        };
        let mut has_when = false;
        let what = format!("overrides[{i}]");
        each_key(
            item,
            OVERRIDE_KEYS,
            &what,
            sink,
            |key, _k, v, sink| match key {
                "when" => {
                    has_when = true;
                    when(v, &mut o, sink);
                }
                "mode" => o.mode = mode(v, sink),
                "allow" => o.allow = rules(v, "allow", sink),
                "deny" => o.deny = rules(v, "deny", sink),
                _ => {}
            },
        );
        if !has_when && matches!(item.kind, Kind::Map(_)) {
            sink.error(
                item.at,
                "an override needs `when:` with `repository:` and/or `labels:`, e.g. `when: { labels: [gpu] }`",
            );
        }
        out.push(o);
    }
    out
}

fn when(v: &Node, o: &mut OverrideSpec, sink: &mut Sink) {
    let mut any = false;
    let errors_before = sink.error_count();
    each_key(v, WHEN_KEYS, "`when`", sink, |key, _k, v, sink| {
        any = true;
        match key {
            "repository" => match v.scalar().filter(|s| !v.is_null() && !s.is_empty()) {
                Some(glob) => o.repository = Some(glob.to_owned()),
                None => sink.error(
                    v.at,
                    format!(
                        "`repository` is a glob such as \"acme/legacy-*\", found {}",
                        v.shape()
                    ),
                ),
            },
            _ => {
                for l in items(v, "labels", "gpu", sink) {
                    match l.scalar().filter(|s| !l.is_null() && !s.is_empty()) {
                        Some(label) => o.labels.push(label.to_owned()),
                        None => sink.error(
                            l.at,
                            format!("a label is a word such as gpu, found {}", l.shape()),
                        ),
                    }
                }
            }
        }
    });
    if !any && matches!(v.kind, Kind::Map(_)) && sink.error_count() == errors_before {
        sink.error(
            v.at,
            "`when` is empty, so it would match every job; give `repository:` and/or `labels:`",
        );
    }
}

/// Warn about a rule identical to an earlier one of the same list.
fn duplicates(rules: &[RuleSpec], list: &str, sink: &mut Sink) {
    let mut seen: HashMap<(&Target, &Option<Vec<u16>>), usize> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if let Some(&first) = seen.get(&(&r.target, &r.ports)) {
            sink.warn(
                r.at,
                format!(
                    "{:?} duplicates {list}[{first}] (line {}); remove one",
                    r.display(),
                    rules[first].at.line
                ),
            );
        } else {
            seen.insert((&r.target, &r.ports), i);
        }
    }
}

/// Warn about an allow rule that a deny rule for the same target cancels.
fn shadowed(
    allow: &[RuleSpec],
    allow_name: &str,
    deny: &[RuleSpec],
    deny_name: &str,
    sink: &mut Sink,
) {
    let denied: HashMap<&Target, usize> = deny
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ports.is_none())
        .map(|(i, r)| (&r.target, i))
        .rev()
        .collect();
    for (i, r) in allow.iter().enumerate() {
        if let Some(&d) = denied.get(&r.target) {
            sink.warn(
                r.at,
                format!(
                    "{allow_name}[{i}] {:?} is also in {deny_name}[{d}] (line {}); deny wins, so this allow has no effect",
                    r.target.display(),
                    deny[d].at.line
                ),
            );
        }
    }
}
