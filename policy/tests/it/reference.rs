//! The compiled matcher (hash maps, prefix tries, precompiled overrides)
//! agrees with a naive reference that reads policy.md's evaluation order
//! literally: walk the rules in order, first match wins. Random policies are
//! rendered to YAML and loaded through `Policy::parse`, so the parser's
//! normalisation is under test too.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use egressd_policy::{
    AddrClass, Decision, JobContext, Mode, Policy, Reason, Resolutions, RuleId, RuleList, Verdict,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Target {
    Exact(String),
    Below(String),
    Net(IpNet),
}

#[derive(Debug, Clone)]
struct Rule {
    target: Target,
    ports: Option<Vec<u16>>,
    /// How to write it: bare string when possible, or keyed.
    bare: bool,
}

#[derive(Debug, Clone)]
struct RefPolicy {
    audit: bool,
    private_allow: bool,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// One override for label `x`: (audit?, allow, deny).
    over: Option<(Option<bool>, Vec<Rule>, Vec<Rule>)>,
}

const LABELS: &[&str] = &["a", "b", "c", "example", "com", "net"];
const PORTS: &[u16] = &[22, 80, 443, 8080];

fn label() -> impl Strategy<Value = String> {
    prop::sample::select(LABELS).prop_map(str::to_owned)
}

fn name(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(label(), min..=4).prop_map(|l| l.join("."))
}

fn v4() -> impl Strategy<Value = Ipv4Addr> {
    let bases = prop::sample::select(vec![
        0x0a00_0000u32, // 10/8
        0x6440_0000,    // CGNAT
        0x643f_ffff,    // just below CGNAT
        0xa9fe_a9fe,    // metadata
        0xa9fe_0000,    // link-local
        0x7f00_0001,    // loopback
        0xc633_6400,    // 198.51.100.0
        0xcb00_7100,    // 203.0.113.0
        0xe000_00fb,    // multicast
        0xffff_ffff,    // broadcast
        0x0000_0000,    // this network
    ]);
    (bases, 0u32..4, any::<u32>(), any::<bool>()).prop_map(|(b, bits, r, flip)| {
        Ipv4Addr::from(if flip {
            b ^ (r & ((1 << (bits * 4)) - 1))
        } else {
            b
        })
    })
}

fn v6() -> impl Strategy<Value = Ipv6Addr> {
    let bases = prop::sample::select(vec![
        0x2001_0db8_0000_0000_0000_0000_0000_0001u128,
        0x2001_0db8_0001_0000_0000_0000_0000_0000,
        0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
        0xfd12_0000_0000_0000_0000_0000_0000_0001,
        0xfe80_0000_0000_0000_0000_0000_0000_0001,
        0x0064_ff9b_0000_0000_0000_0000_0a00_0005,
        0x2002_0a00_0005_0000_0000_0000_0000_0001,
        0x2001_0000_4136_e378_0000_0000_0000_0001,
        0x2606_4700_0000_0000_0000_0000_0000_1111,
        0x0000_0000_0000_0000_0000_0000_0000_0001,
        0xff02_0000_0000_0000_0000_0000_0000_0001,
    ]);
    (bases, 0u32..8, any::<u128>(), any::<bool>()).prop_map(|(b, bits, r, flip)| {
        Ipv6Addr::from(if flip {
            b ^ (r & ((1u128 << (bits * 16)) - 1))
        } else {
            b
        })
    })
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        4 => v4().prop_map(IpAddr::V4),
        3 => v6().prop_map(IpAddr::V6),
        1 => v4().prop_map(|a| IpAddr::V6(a.to_ipv6_mapped())),
    ]
}

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (v4(), 0u8..=32).prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(a, l).unwrap().trunc())),
        (
            v6(),
            prop::sample::select(vec![0u8, 7, 8, 10, 16, 32, 48, 64, 96, 127, 128])
        )
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(a, l).unwrap().trunc())),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    let target = prop_oneof![
        3 => name(1).prop_map(Target::Exact),
        2 => name(2).prop_map(Target::Below),
        3 => net().prop_map(Target::Net),
    ];
    let ports = prop::option::weighted(
        0.4,
        prop::collection::btree_set(prop::sample::select(PORTS), 1..3),
    )
    .prop_map(|p| p.map(|s| s.into_iter().collect()));
    (target, ports, any::<bool>()).prop_map(|(target, ports, bare)| Rule {
        target,
        ports,
        bare,
    })
}

fn rules(max: usize) -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec(rule(), 0..max)
}

fn policy() -> impl Strategy<Value = RefPolicy> {
    (
        any::<bool>(),
        any::<bool>(),
        rules(10),
        rules(5),
        prop::option::of((prop::option::of(any::<bool>()), rules(5), rules(3))),
    )
        .prop_map(|(audit, private_allow, allow, deny, over)| RefPolicy {
            audit,
            private_allow,
            allow,
            deny,
            over,
        })
}

fn render_rule(r: &Rule) -> String {
    let text = match &r.target {
        Target::Exact(n) => n.to_uppercase(),
        Target::Below(s) => format!("*.{s}."),
        Target::Net(n) if n.prefix_len() == n.max_prefix_len() => n.addr().to_string(),
        Target::Net(n) => n.to_string(),
    };
    let key = match &r.target {
        Target::Exact(_) | Target::Below(_) => "host",
        Target::Net(n) if n.prefix_len() == n.max_prefix_len() => "ip",
        Target::Net(_) => "cidr",
    };
    match &r.ports {
        None if r.bare => format!("\"{text}\""),
        None => format!("{{ {key}: \"{text}\" }}"),
        Some(p) => format!(
            "{{ {key}: \"{text}\", ports: [{}] }}",
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn render_list(rules: &[Rule]) -> String {
    format!(
        "[{}]",
        rules.iter().map(render_rule).collect::<Vec<_>>().join(", ")
    )
}

fn render(p: &RefPolicy) -> String {
    let mut y = format!(
        "version: 1\nmode: {}\nprivate_ranges: {}\nallow: {}\ndeny: {}\n",
        if p.audit { "audit" } else { "enforce" },
        if p.private_allow { "allow" } else { "deny" },
        render_list(&p.allow),
        render_list(&p.deny),
    );
    if let Some((mode, allow, deny)) = &p.over {
        y.push_str("overrides:\n  - when: { labels: [x] }\n");
        if let Some(audit) = mode {
            y.push_str(&format!(
                "    mode: {}\n",
                if *audit { "audit" } else { "enforce" }
            ));
        }
        y.push_str(&format!(
            "    allow: {}\n    deny: {}\n",
            render_list(allow),
            render_list(deny)
        ));
    }
    y
}

// ---- the reference: policy.md read literally ----

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn ref_class(ip: IpAddr) -> Option<(AddrClass, u8)> {
    let table: &[(&str, AddrClass)] = &[
        ("127.0.0.0/8", AddrClass::Loopback),
        ("::1/128", AddrClass::Loopback),
        ("169.254.169.254/32", AddrClass::Metadata),
        ("fd00:ec2::254/128", AddrClass::Metadata),
        ("255.255.255.255/32", AddrClass::Broadcast),
        ("0.0.0.0/8", AddrClass::Unspecified),
        ("::/128", AddrClass::Unspecified),
        ("169.254.0.0/16", AddrClass::LinkLocal),
        ("fe80::/10", AddrClass::LinkLocal),
        ("224.0.0.0/4", AddrClass::Multicast),
        ("ff00::/8", AddrClass::Multicast),
        ("64:ff9b::/96", AddrClass::EmbeddedV4),
        ("64:ff9b:1::/48", AddrClass::EmbeddedV4),
        ("2002::/16", AddrClass::EmbeddedV4),
        ("2001::/32", AddrClass::EmbeddedV4),
        ("::/96", AddrClass::EmbeddedV4),
        ("10.0.0.0/8", AddrClass::Private),
        ("172.16.0.0/12", AddrClass::Private),
        ("192.168.0.0/16", AddrClass::Private),
        ("100.64.0.0/10", AddrClass::Private),
        ("fc00::/7", AddrClass::Private),
    ];
    table.iter().find_map(|(n, c)| {
        let n: IpNet = n.parse().unwrap();
        n.contains(&ip).then_some((*c, n.prefix_len()))
    })
}

fn ref_name(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 || !n.is_ascii() || n.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(n.to_ascii_lowercase())
}

fn host_matches(t: &Target, name: &str) -> bool {
    match t {
        Target::Exact(n) => n == name,
        Target::Below(s) => {
            name.len() > s.len() + 1
                && name.ends_with(s.as_str())
                && name[..name.len() - s.len()].ends_with('.')
        }
        Target::Net(_) => false,
    }
}

fn ports_ok(r: &Rule, port: Option<u16>) -> bool {
    match (&r.ports, port) {
        (None, _) | (_, None) => true,
        (Some(p), Some(port)) => p.contains(&port),
    }
}

/// The rules of the set in order with their ids.
fn listed(p: &RefPolicy, with_override: bool, list: RuleList) -> Vec<(RuleId, Rule)> {
    let base = match list {
        RuleList::Allow => &p.allow,
        RuleList::Deny => &p.deny,
    };
    let mut out: Vec<(RuleId, Rule)> = (0u32..)
        .zip(base)
        .map(|(index, r)| (RuleId::Base { list, index }, r.clone()))
        .collect();
    if with_override && let Some((_, a, d)) = &p.over {
        let extra = match list {
            RuleList::Allow => a,
            RuleList::Deny => d,
        };
        out.extend((0u32..).zip(extra).map(|(index, r)| {
            (
                RuleId::Override {
                    overr: 0,
                    list,
                    index,
                },
                r.clone(),
            )
        }));
    }
    out
}

fn mode_of(p: &RefPolicy, with_override: bool) -> bool {
    match &p.over {
        Some((Some(audit), _, _)) if with_override => *audit,
        _ => p.audit,
    }
}

fn finish(audit: bool, verdict: Verdict, reason: Reason, rule: RuleId) -> Decision {
    let d = Decision::enforce(verdict, reason, rule);
    if audit { d.into_audit_mode() } else { d }
}

fn ref_dns(p: &RefPolicy, ov: bool, name: &str) -> Decision {
    let audit = mode_of(p, ov);
    let Some(n) = ref_name(name) else {
        return finish(audit, Verdict::Deny, Reason::DnsRefused, RuleId::Default);
    };
    for (id, r) in listed(p, ov, RuleList::Deny) {
        if r.ports.is_none() && host_matches(&r.target, &n) {
            return finish(audit, Verdict::Deny, Reason::RuleDeny, id);
        }
    }
    for (id, r) in listed(p, ov, RuleList::Allow) {
        if host_matches(&r.target, &n) {
            return finish(audit, Verdict::Allow, Reason::RuleAllow, id);
        }
    }
    finish(audit, Verdict::Deny, Reason::DnsRefused, RuleId::Default)
}

fn ref_connect(
    p: &RefPolicy,
    ov: bool,
    dst: SocketAddr,
    name: Option<&str>,
    binds: &Binds,
) -> Decision {
    let audit = mode_of(p, ov);
    let ip = canonical(dst.ip());
    let port = Some(dst.port());
    let class = ref_class(ip);
    if let Some((AddrClass::Loopback, _)) = class {
        return Decision::enforce(
            Verdict::Allow,
            Reason::Loopback,
            RuleId::Builtin(AddrClass::Loopback),
        )
        .pipe(|d| if audit { d.into_audit_mode() } else { d });
    }
    let n = name.and_then(ref_name);
    let net_match = |r: &Rule, min: u8| matches!(&r.target, Target::Net(net) if net.contains(&ip) && net.prefix_len() >= min);
    for (id, r) in listed(p, ov, RuleList::Deny) {
        let hit = net_match(&r, 0) || n.as_deref().is_some_and(|n| host_matches(&r.target, n));
        if hit && ports_ok(&r, port) {
            return finish(audit, Verdict::Deny, Reason::RuleDeny, id);
        }
    }
    if let Some((c, len)) = class
        && !(c == AddrClass::Private && p.private_allow)
    {
        for (id, r) in listed(p, ov, RuleList::Allow) {
            if net_match(&r, len) && ports_ok(&r, port) {
                return finish(audit, Verdict::Allow, Reason::RuleAllow, id);
            }
        }
        return finish(audit, Verdict::Deny, c.reason(), RuleId::Builtin(c));
    }
    for (id, r) in listed(p, ov, RuleList::Allow) {
        if net_match(&r, 0) && ports_ok(&r, port) {
            return finish(audit, Verdict::Allow, Reason::RuleAllow, id);
        }
    }
    if let Some(n) = &n {
        for (id, r) in listed(p, ov, RuleList::Allow) {
            if host_matches(&r.target, n) && ports_ok(&r, port) {
                return if binds.0.contains(&(n.clone(), ip)) {
                    finish(audit, Verdict::Allow, Reason::RuleAllow, id)
                } else {
                    finish(audit, Verdict::Deny, Reason::SniIpMismatch, id)
                };
            }
        }
    }
    let reason = if name.is_some() {
        Reason::NoRule
    } else {
        Reason::NoSni
    };
    finish(audit, Verdict::Deny, reason, RuleId::Default)
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

#[derive(Debug, Default)]
struct Binds(HashSet<(String, IpAddr)>);

impl Resolutions for Binds {
    fn binds(&self, name: &str, ip: IpAddr) -> bool {
        self.0.contains(&(name.to_owned(), ip))
    }
}

#[derive(Debug, Clone)]
struct Query {
    name: Option<String>,
    ip: IpAddr,
    port: u16,
    bound: bool,
}

fn spelled(n: String, upper: bool, dot: bool) -> String {
    let n = if upper { n.to_uppercase() } else { n };
    if dot { format!("{n}.") } else { n }
}

fn query() -> impl Strategy<Value = Query> {
    let name = prop_oneof![
        6 => (name(1), any::<bool>(), any::<bool>()).prop_map(|(n, u, d)| Some(spelled(n, u, d))),
        1 => ip().prop_map(|ip| Some(ip.to_string())),
        2 => Just(None),
    ];
    let port = prop_oneof![4 => prop::sample::select(PORTS), 1 => 1u16..=65535];
    (name, ip(), port, any::<bool>()).prop_map(|(name, ip, port, bound)| Query {
        name,
        ip,
        port,
        bound,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compiled_matcher_agrees_with_reference(p in policy(), queries in prop::collection::vec(query(), 1..24)) {
        let yaml = render(&p);
        let loaded = Policy::parse("gen.yaml", &yaml).map_err(|d| TestCaseError::fail(format!("{d}\n{yaml}")))?;
        let policy = loaded.policy;
        let labels = vec!["x".to_owned()];
        let none: Vec<String> = Vec::new();
        for ov in [false, true] {
            let job = JobContext { repository: None, labels: if ov { &labels } else { &none } };
            let rules = policy.ruleset(&job);
            let ov = ov && p.over.is_some();
            prop_assert_eq!(rules.mode(), if mode_of(&p, ov) { Mode::Audit } else { Mode::Enforce });
            let mut binds = Binds::default();
            for q in &queries {
                if q.bound && let Some(n) = q.name.as_deref().and_then(ref_name) {
                    binds.0.insert((n, canonical(q.ip)));
                }
            }
            for q in &queries {
                let dst = SocketAddr::new(q.ip, q.port);
                let got = rules.decide_connect(dst, q.name.as_deref(), &binds);
                let want = ref_connect(&p, ov, dst, q.name.as_deref(), &binds);
                prop_assert_eq!(got, want, "connect {:?}\n{}", q, yaml);
                if let Some(n) = &q.name {
                    let got = rules.decide_dns(n);
                    let want = ref_dns(&p, ov, n);
                    prop_assert_eq!(got, want, "dns {:?}\n{}", n, yaml);
                }
            }
        }
    }

    #[test]
    fn normalising_twice_changes_nothing(n in name(1), upper in any::<bool>(), dot in any::<bool>()) {
        let y = format!("version: 1\nallow: [\"{}\"]\n", spelled(n.clone(), upper, dot));
        let p = Policy::parse("n.yaml", &y).unwrap().policy;
        let once = ref_name(&spelled(n.clone(), upper, dot)).unwrap();
        let twice = ref_name(&once).unwrap();
        prop_assert_eq!(&once, &twice);
        prop_assert!(p.base().decide_dns(&once).is_allow());
        let loud = format!("{}.", once.to_uppercase());
        prop_assert!(p.base().decide_dns(&loud).is_allow());
    }

    #[test]
    fn a_wildcard_never_matches_its_apex(s in name(2), sub in name(1)) {
        let y = format!("version: 1\nallow: [\"*.{s}\"]\n");
        let p = Policy::parse("w.yaml", &y).unwrap().policy;
        prop_assert!(!p.base().decide_dns(&s).is_allow());
        let below = format!("{sub}.{s}");
        prop_assert!(p.base().decide_dns(&below).is_allow());
    }
}
