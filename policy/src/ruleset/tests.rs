//! policy.md "Order of evaluation", row by row, plus DNS and audit mode.

use std::net::{IpAddr, SocketAddr};

use crate::decision::{AddrClass, Reason, RuleId, RuleList, Verdict};
use crate::{AssumeBound, Decision, NoResolutions, Policy, Resolutions, Ruleset};

fn rules(yaml: &str) -> Ruleset {
    Policy::parse("t.yaml", yaml).unwrap().policy.base().clone()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn allow_id(i: u32) -> RuleId {
    RuleId::Base {
        list: RuleList::Allow,
        index: i,
    }
}

fn deny_id(i: u32) -> RuleId {
    RuleId::Base {
        list: RuleList::Deny,
        index: i,
    }
}

fn is(d: Decision, verdict: Verdict, reason: Reason, rule: RuleId) {
    assert_eq!(
        (d.verdict, d.reason, d.rule),
        (verdict, reason, rule),
        "{d:?}"
    );
    assert_eq!(d.enforce_would, None);
}

/// Binds exactly one name to one address.
struct Binds(&'static str, &'static str);
impl Resolutions for Binds {
    fn binds(&self, name: &str, ip: IpAddr) -> bool {
        name == self.0 && ip == self.1.parse::<IpAddr>().unwrap()
    }
}

const POLICY: &str = "
version: 1
allow:
  - github.com
  - \"*.githubusercontent.com\"
  - host: registry.example.com
    ports: [443]
  - ip: 203.0.113.7
  - cidr: 198.51.100.0/24
    ports: [22, 443]
  - cidr: 2001:db8::/32
  - gist.github.com
deny:
  - host: gist.github.com
  - cidr: 203.0.113.0/28
  - host: evil.githubusercontent.com
    ports: [8080]
";

#[test]
fn row1_loopback_is_never_filtered() {
    let r = rules("version: 1\ndeny: [\"127.0.0.0/8\", \"::1\"]\n");
    for dst in [
        "127.0.0.1:80",
        "127.9.9.9:1",
        "[::1]:443",
        "[::ffff:127.0.0.1]:22",
    ] {
        is(
            r.decide_connect(sa(dst), None, &NoResolutions),
            Verdict::Allow,
            Reason::Loopback,
            RuleId::Builtin(AddrClass::Loopback),
        );
    }
}

#[test]
fn row2_deny_wins_over_allow() {
    let r = rules(POLICY);
    // Host deny beats the allow of the same name, even with the binding.
    is(
        r.decide_connect(
            sa("198.51.100.9:443"),
            Some("gist.github.com"),
            &AssumeBound,
        ),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(0),
    );
    // CIDR deny beats the ip allow inside it.
    is(
        r.decide_connect(sa("203.0.113.7:443"), None, &NoResolutions),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(1),
    );
    // Port-aware host deny: only 8080.
    is(
        r.decide_connect(
            sa("198.51.100.9:8080"),
            Some("evil.githubusercontent.com"),
            &AssumeBound,
        ),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(2),
    );
    is(
        r.decide_connect(
            sa("192.0.2.1:443"),
            Some("evil.githubusercontent.com"),
            &AssumeBound,
        ),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(1),
    );
    // Deny beats built-in classes too (deny is step 2).
    let r = rules("version: 1\ndeny: [169.254.169.254]\nallow: [169.254.169.254]\n");
    is(
        r.decide_connect(sa("169.254.169.254:80"), None, &NoResolutions),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(0),
    );
}

#[test]
fn row3_builtin_classes_denied_unless_an_ip_rule_inside_them() {
    let r = rules("version: 1\nallow: [metadata.example.com, \"0.0.0.0/0\", \"::/0\"]\n");
    let cases = [
        ("169.254.169.254:80", AddrClass::Metadata),
        ("[fd00:ec2::254]:80", AddrClass::Metadata),
        ("169.254.1.1:80", AddrClass::LinkLocal),
        ("[fe80::1]:80", AddrClass::LinkLocal),
        ("224.0.0.251:5353", AddrClass::Multicast),
        ("[ff02::1]:80", AddrClass::Multicast),
        ("255.255.255.255:67", AddrClass::Broadcast),
        ("0.0.0.0:80", AddrClass::Unspecified),
        ("[::]:80", AddrClass::Unspecified),
        ("[64:ff9b::a9fe:a9fe]:80", AddrClass::EmbeddedV4),
        ("[2002:a9fe:a9fe::1]:80", AddrClass::EmbeddedV4),
        ("[2001:0:4136:e378::1]:80", AddrClass::EmbeddedV4),
        ("10.0.0.5:443", AddrClass::Private),
        ("172.16.0.1:443", AddrClass::Private),
        ("192.168.1.1:443", AddrClass::Private),
        ("100.64.0.0:443", AddrClass::Private),
        ("100.127.255.255:443", AddrClass::Private),
        ("[fd12::1]:443", AddrClass::Private),
        ("[::ffff:10.0.0.5]:443", AddrClass::Private),
    ];
    for (dst, class) in cases {
        // Neither the catch-all CIDRs (broader than the class) nor a host
        // rule with a true binding opens a built-in class: this is what stops
        // DNS rebinding and "0.0.0.0/0 also meant metadata".
        for name in [None, Some("metadata.example.com")] {
            is(
                r.decide_connect(sa(dst), name, &AssumeBound),
                Verdict::Deny,
                class.reason(),
                RuleId::Builtin(class),
            );
        }
    }
    // CGNAT neighbours are ordinary addresses.
    for dst in ["100.63.255.255:443", "100.128.0.0:443"] {
        is(
            r.decide_connect(sa(dst), None, &NoResolutions),
            Verdict::Allow,
            Reason::RuleAllow,
            allow_id(1),
        );
    }
}

#[test]
fn row3_explicit_ip_rules_open_a_class() {
    let r = rules(
        "version: 1\nallow:\n  - ip: 169.254.169.254\n  - cidr: 10.0.0.0/8\n    ports: [443]\n  - cidr: fd00::/8\n",
    );
    is(
        r.decide_connect(sa("169.254.169.254:80"), None, &NoResolutions),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_connect(sa("10.1.2.3:443"), None, &NoResolutions),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(1),
    );
    is(
        r.decide_connect(sa("10.1.2.3:22"), None, &NoResolutions),
        Verdict::Deny,
        Reason::BuiltinPrivate,
        RuleId::Builtin(AddrClass::Private),
    );
    is(
        r.decide_connect(sa("[fd12::1]:5432"), None, &NoResolutions),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(2),
    );
    // A rule for the private block does not open metadata inside fd00::/8.
    is(
        r.decide_connect(sa("[fd00:ec2::254]:80"), None, &NoResolutions),
        Verdict::Deny,
        Reason::BuiltinMetadata,
        RuleId::Builtin(AddrClass::Metadata),
    );
}

#[test]
fn row3_private_ranges_allow() {
    let r =
        rules("version: 1\nprivate_ranges: allow\nallow: [internal.example.com, \"10.0.0.0/8\"]\n");
    // Private is no longer a class: normal rules decide.
    is(
        r.decide_connect(sa("10.1.2.3:443"), None, &NoResolutions),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(1),
    );
    is(
        r.decide_connect(
            sa("192.168.0.9:443"),
            Some("internal.example.com"),
            &AssumeBound,
        ),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_connect(sa("192.168.0.9:443"), None, &NoResolutions),
        Verdict::Deny,
        Reason::NoSni,
        RuleId::Default,
    );
    // Link-local and metadata stay denied.
    is(
        r.decide_connect(
            sa("169.254.169.254:80"),
            Some("internal.example.com"),
            &AssumeBound,
        ),
        Verdict::Deny,
        Reason::BuiltinMetadata,
        RuleId::Builtin(AddrClass::Metadata),
    );
    is(
        r.decide_connect(sa("169.254.3.3:80"), None, &NoResolutions),
        Verdict::Deny,
        Reason::BuiltinLinkLocal,
        RuleId::Builtin(AddrClass::LinkLocal),
    );
}

#[test]
fn row4_allow_rules() {
    let r = rules(POLICY);
    // IP and CIDR rules allow whatever name was used, on their ports.
    is(
        r.decide_connect(sa("198.51.100.1:22"), None, &NoResolutions),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(4),
    );
    is(
        r.decide_connect(
            sa("198.51.100.1:443"),
            Some("anything.test"),
            &NoResolutions,
        ),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(4),
    );
    is(
        r.decide_connect(sa("198.51.100.1:80"), None, &NoResolutions),
        Verdict::Deny,
        Reason::NoSni,
        RuleId::Default,
    );
    is(
        r.decide_connect(sa("[2001:db8:ffff::1]:5432"), None, &NoResolutions),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(5),
    );
    // Host rules allow only when the name is bound to the destination.
    let bound = Binds("github.com", "192.0.2.10");
    is(
        r.decide_connect(sa("192.0.2.10:443"), Some("GitHub.com."), &bound),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_connect(sa("192.0.2.99:443"), Some("github.com"), &bound),
        Verdict::Deny,
        Reason::SniIpMismatch,
        allow_id(0),
    );
    // Host rule ports.
    is(
        r.decide_connect(
            sa("192.0.2.1:443"),
            Some("registry.example.com"),
            &AssumeBound,
        ),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(2),
    );
    is(
        r.decide_connect(
            sa("192.0.2.1:80"),
            Some("registry.example.com"),
            &AssumeBound,
        ),
        Verdict::Deny,
        Reason::NoRule,
        RuleId::Default,
    );
    // An IP literal never satisfies a host rule.
    let r = rules("version: 1\nallow: [example.com]\n");
    is(
        r.decide_connect(sa("192.0.2.1:443"), Some("192.0.2.1"), &AssumeBound),
        Verdict::Deny,
        Reason::NoRule,
        RuleId::Default,
    );
}

#[test]
fn row5_default_deny() {
    let r = rules(POLICY);
    is(
        r.decide_connect(sa("192.0.2.1:443"), Some("example.org"), &AssumeBound),
        Verdict::Deny,
        Reason::NoRule,
        RuleId::Default,
    );
    is(
        r.decide_connect(sa("192.0.2.1:443"), None, &AssumeBound),
        Verdict::Deny,
        Reason::NoSni,
        RuleId::Default,
    );
    // With no name, host rules are not consulted at all.
    let r = rules("version: 1\nallow: [example.com]\n");
    is(
        r.decide_connect(sa("192.0.2.1:443"), None, &AssumeBound),
        Verdict::Deny,
        Reason::NoSni,
        RuleId::Default,
    );
    let empty = rules("version: 1\n");
    is(
        empty.decide_connect(sa("192.0.2.1:443"), Some("a.b"), &AssumeBound),
        Verdict::Deny,
        Reason::NoRule,
        RuleId::Default,
    );
}

#[test]
fn dns_decisions() {
    let r = rules(POLICY);
    is(
        r.decide_dns("github.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_dns("GITHUB.COM."),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_dns("a.b.c.githubusercontent.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(1),
    );
    is(
        r.decide_dns("githubusercontent.com"),
        Verdict::Deny,
        Reason::DnsRefused,
        RuleId::Default,
    );
    // A host rule with ports still lets its name resolve.
    is(
        r.decide_dns("registry.example.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(2),
    );
    // A deny with ports does not refuse the query; a deny without does.
    is(
        r.decide_dns("evil.githubusercontent.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(1),
    );
    is(
        r.decide_dns("gist.github.com"),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(0),
    );
    // Loopback-ish names are not special.
    is(
        r.decide_dns("localhost"),
        Verdict::Deny,
        Reason::DnsRefused,
        RuleId::Default,
    );
    is(
        r.decide_dns(""),
        Verdict::Deny,
        Reason::DnsRefused,
        RuleId::Default,
    );
    is(
        r.decide_dns("bücher.example"),
        Verdict::Deny,
        Reason::DnsRefused,
        RuleId::Default,
    );
}

#[test]
fn audit_mode_applies_to_every_decision() {
    let r = rules("version: 1\nmode: audit\nallow: [github.com]\ndeny: [gist.github.com]\n");
    let d = r.decide_dns("example.org");
    assert_eq!(
        (d.verdict, d.enforce_would, d.reason),
        (Verdict::Allow, Some(Verdict::Deny), Reason::DnsRefused)
    );
    let d = r.decide_dns("github.com");
    assert_eq!(
        (d.verdict, d.enforce_would, d.reason),
        (Verdict::Allow, Some(Verdict::Allow), Reason::RuleAllow)
    );
    let d = r.decide_connect(sa("169.254.169.254:80"), None, &NoResolutions);
    assert_eq!(
        (d.verdict, d.enforce_would, d.reason),
        (Verdict::Allow, Some(Verdict::Deny), Reason::BuiltinMetadata)
    );
    let d = r.decide_connect(sa("192.0.2.1:443"), Some("gist.github.com"), &AssumeBound);
    assert_eq!(
        (d.verdict, d.enforce_would, d.reason, d.rule),
        (
            Verdict::Allow,
            Some(Verdict::Deny),
            Reason::RuleDeny,
            deny_id(0)
        )
    );
    let d = r.decide_connect(sa("192.0.2.1:443"), Some("github.com"), &NoResolutions);
    assert_eq!(
        (d.verdict, d.enforce_would, d.reason),
        (Verdict::Allow, Some(Verdict::Deny), Reason::SniIpMismatch)
    );
    let d = r.decide_name("example.org", 443);
    assert_eq!(
        (d.verdict, d.enforce_would),
        (Verdict::Allow, Some(Verdict::Deny))
    );
}

#[test]
fn offline_name_decisions() {
    let r = rules(POLICY);
    is(
        r.decide_name("github.com", 443),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_name("registry.example.com", 443),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(2),
    );
    // Allowed on another port only: DNS works, the connection does not.
    is(
        r.decide_name("registry.example.com", 22),
        Verdict::Deny,
        Reason::NoRule,
        RuleId::Default,
    );
    is(
        r.decide_name("gist.github.com", 443),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(0),
    );
    is(
        r.decide_name("evil.githubusercontent.com", 8080),
        Verdict::Deny,
        Reason::RuleDeny,
        deny_id(2),
    );
    is(
        r.decide_name("example.org", 443),
        Verdict::Deny,
        Reason::DnsRefused,
        RuleId::Default,
    );
}

#[test]
fn earliest_rule_wins_within_a_list() {
    let r = rules("version: 1\nallow: [\"*.example.com\", a.example.com, \"*.a.example.com\"]\n");
    is(
        r.decide_dns("x.a.example.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    let r = rules("version: 1\nallow: [\"*.a.example.com\", a.example.com, \"*.example.com\"]\n");
    is(
        r.decide_dns("x.a.example.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(0),
    );
    is(
        r.decide_dns("a.example.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(1),
    );
    is(
        r.decide_dns("b.example.com"),
        Verdict::Allow,
        Reason::RuleAllow,
        allow_id(2),
    );
}

#[test]
fn wildcard_and_normalisation_corners() {
    let r = rules(
        "version: 1\nallow: [\"*.Example.com.\", \"xn--bcher-kva.example\", exact.example.org]\n",
    );
    let allowed = |n: &str| r.decide_dns(n).is_allow();
    assert!(!allowed("example.com"), "the apex never matches a wildcard");
    assert!(!allowed("example.com."), "nor with a trailing dot");
    assert!(allowed("a.example.com"), "one level");
    assert!(allowed("a.b.c.example.com"), "three levels");
    assert!(allowed("A.B.C.EXAMPLE.COM."), "case and trailing dot");
    assert!(!allowed("a.example.com.."), "two trailing dots");
    assert!(
        !allowed("badexample.com"),
        "a suffix match must end at a label boundary"
    );
    assert!(!allowed("a.example.co"));
    assert!(!allowed("a.example.com.evil.net"));
    assert!(
        allowed("xn--bcher-kva.example"),
        "IDN rules are written and matched in punycode"
    );
    assert!(allowed("XN--BCHER-KVA.EXAMPLE."));
    assert!(!allowed("bücher.example"), "a non-ASCII name never matches");
    assert!(allowed("exact.example.org"));
    assert!(
        !allowed("a.exact.example.org"),
        "an exact rule does not cover subdomains"
    );
    assert!(!allowed("xact.example.org"));
}

#[test]
fn cidr_edges_in_decisions() {
    let r = rules(
        "version: 1\nallow:\n  - \"198.51.100.0/24\"\n  - \"203.0.113.9/32\"\n  - \"2001:db8:1::5/128\"\n  - cidr: 0.0.0.0/0\n    ports: [7]\n  - cidr: ::/0\n    ports: [7]\n",
    );
    let d = |dst: &str| r.decide_connect(sa(dst), None, &NoResolutions);
    assert_eq!(d("198.51.100.0:1").rule, allow_id(0), "first address");
    assert_eq!(d("198.51.100.255:1").rule, allow_id(0), "last address");
    assert_eq!(d("198.51.99.255:1").reason, Reason::NoSni);
    assert_eq!(d("198.51.101.0:1").reason, Reason::NoSni);
    assert_eq!(d("203.0.113.9:1").rule, allow_id(1));
    assert_eq!(d("203.0.113.8:1").reason, Reason::NoSni);
    assert_eq!(
        d("[::ffff:203.0.113.9]:1").rule,
        allow_id(1),
        "IPv4-mapped IPv6 is the IPv4 address"
    );
    assert_eq!(d("[2001:db8:1::5]:1").rule, allow_id(2));
    assert_eq!(d("[2001:db8:1::4]:1").reason, Reason::NoSni);
    assert_eq!(d("[2001:db8:1::6]:1").reason, Reason::NoSni);
    assert_eq!(
        d("1.2.3.4:7").rule,
        allow_id(3),
        "/0 covers every IPv4 address"
    );
    assert_eq!(d("255.255.255.254:7").rule, allow_id(3));
    assert_eq!(
        d("[2606:4700::1]:7").rule,
        allow_id(4),
        "::/0 covers every IPv6 address"
    );
    assert_eq!(
        d("[::ffff:1.2.3.4]:7").rule,
        allow_id(3),
        "a mapped address is matched by IPv4 rules, not ::/0"
    );
    assert_eq!(d("1.2.3.4:8").reason, Reason::NoSni);
}

#[test]
fn mapped_addresses_in_rules_are_ipv4() {
    let r = rules(
        "version: 1\nallow: [\"::ffff:198.51.100.0/120\"]\ndeny: [\"::ffff:198.51.100.7\"]\n",
    );
    let d = |dst: &str| r.decide_connect(sa(dst), None, &NoResolutions);
    assert_eq!(d("198.51.100.1:443").rule, allow_id(0));
    assert_eq!(d("[::ffff:198.51.100.1]:443").rule, allow_id(0));
    assert_eq!(d("198.51.100.7:443").rule, deny_id(0));
}
