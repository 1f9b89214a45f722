use super::*;
use crate::fixture::{allowed, by, denied, dns, would_deny};
use egressd_policy::{RuleId, RuleList};

fn audit(host: Option<&str>, dst: &str) -> Record {
    would_deny(denied(host, dst))
}

#[test]
fn names_preferred_ports_grouped_comments_counted() {
    let y = suggest([
        by(audit(Some("api.example.com"), "198.51.100.1:443"), "curl"),
        by(audit(Some("API.example.com."), "198.51.100.2:443"), "git"),
        by(audit(Some("api.example.com"), "198.51.100.2:80"), "curl"),
        dns(Verdict::Allow, "api.example.com"),
        by(audit(None, "198.51.100.7:22"), "ssh"),
    ]);
    assert!(y.contains("version: 1\nmode: enforce\n"), "{y}");
    assert!(
        y.contains("  # 3 connections, 1 DNS query by curl, git\n  - host: \"api.example.com\"\n    ports: [80, 443]\n"),
        "{y}"
    );
    assert!(
        y.contains("  # 1 connection by ssh; no host name was seen\n  - ip: \"198.51.100.7\"\n    ports: [22]\n"),
        "{y}"
    );
    assert!(
        !y.contains("198.51.100.1"),
        "an IP with a name must not become a rule: {y}"
    );
}

#[test]
fn three_siblings_with_equal_ports_become_a_wildcard() {
    let y = suggest([
        audit(Some("a.cdn.example.com"), "198.51.100.1:443"),
        audit(Some("b.cdn.example.com"), "198.51.100.2:443"),
        audit(Some("c.cdn.example.com"), "198.51.100.3:443"),
        audit(Some("d.cdn.example.com"), "198.51.100.3:8443"),
        audit(Some("a.co.uk"), "198.51.100.4:443"),
        audit(Some("b.co.uk"), "198.51.100.4:443"),
        audit(Some("c.co.uk"), "198.51.100.4:443"),
    ]);
    assert!(y.contains("names seen: a.cdn.example.com, b.cdn.example.com, c.cdn.example.com\n  - host: \"*.cdn.example.com\"\n    ports: [443]\n"), "{y}");
    assert!(
        y.contains("  - host: \"d.cdn.example.com\"\n    ports: [8443]\n"),
        "{y}"
    );
    assert!(!y.contains("*.co.uk"), "{y}");
    assert!(y.contains("  - host: \"a.co.uk\""), "{y}");
}

#[test]
fn dangerous_or_impossible_things_are_only_comments() {
    let mut meta = audit(None, "169.254.169.254:80");
    meta.reason = Reason::BuiltinMetadata;
    meta.rule = "builtin:metadata".into();
    let mut private = audit(Some("db.internal.example"), "10.0.0.5:5432");
    private.reason = Reason::BuiltinPrivate;
    let mut udp = denied(None, "198.51.100.9:443");
    udp.kind = Kind::Udp;
    udp.reason = Reason::UdpBlocked;
    let evil = audit(Some("bad\nname.example"), "198.51.100.8:443");
    let y = suggest([meta, private, udp, evil]);
    assert!(
        y.contains("#   169.254.169.254:80: cloud metadata endpoint"),
        "{y}"
    );
    assert!(!y.contains("- ip: \"169.254.169.254\""), "{y}");
    assert!(y.contains("private address reached as db.internal.example\n  - ip: \"10.0.0.5\"\n    ports: [5432]\n"), "{y}");
    assert!(
        y.contains("#   198.51.100.9:443: blocked in the kernel"),
        "{y}"
    );
    assert!(
        y.contains("#   bad?name.example (198.51.100.8:443): not a valid host name"),
        "{y}"
    );
    assert!(
        y.lines()
            .all(|l| l.starts_with('#') || l.starts_with(' ') || l.contains(':')),
        "{y}"
    );
}

#[test]
fn include_sets_are_kept_and_cover_their_names() {
    let mut inc = allowed(Some("api.github.com"), "198.51.100.1:443");
    inc.rule = RuleId::Include {
        set: "github-actions",
        index: 2,
    }
    .to_string();
    let other = allowed(Some("example.com"), "198.51.100.2:443");
    let y = suggest([inc, other]);
    assert!(y.contains("include: [github-actions]\n"), "{y}");
    assert!(!y.contains("api.github.com"), "{y}");
    assert!(y.contains("- host: \"example.com\""), "{y}");
    let _ = RuleList::Allow;
}

#[test]
fn nothing_seen_is_an_empty_allow_list() {
    let y = suggest([dns(Verdict::Deny, "evil.example")]);
    assert!(
        y.contains("#   evil.example (127.0.0.53:53): refused in enforce mode"),
        "{y}"
    );
    assert!(y.contains("version: 1\nmode: enforce\nallow: []\n"), "{y}");
}
