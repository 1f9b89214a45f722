use super::*;
use crate::fixture::{allowed, by, denied, dns, would_deny};
use crate::record::Record;

#[test]
fn rows_count_per_endpoint_with_denied_first() {
    let s = summarize([
        by(allowed(Some("github.com"), "198.51.100.1:443"), "git"),
        by(allowed(Some("GitHub.com."), "198.51.100.2:443"), "curl"),
        by(denied(Some("evil.example"), "198.51.100.9:443"), "curl"),
        by(allowed(None, "198.51.100.3:22"), "ssh"),
        dns(Verdict::Deny, "evil.example"),
    ]);
    assert_eq!((s.allowed, s.denied, s.would_deny), (3, 2, 0));
    let rows = s.rows();
    let keys: Vec<(String, String)> = rows
        .iter()
        .map(|(e, p, _)| (e.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        keys,
        [
            ("evil.example".into(), "443".into()),
            ("evil.example".into(), "dns".into()),
            ("github.com".into(), "443".into()),
            ("198.51.100.3".into(), "22".into()),
        ]
    );
    let github = rows[2].2;
    assert_eq!(github.allowed, 2);
    assert_eq!(
        github.processes.names().collect::<Vec<_>>(),
        ["curl", "git"]
    );
    assert_eq!(github.rules.names().collect::<Vec<_>>(), ["allow[0]"]);
}

#[test]
fn closing_records_and_events_are_not_decisions() {
    let mut closing = allowed(Some("github.com"), "198.51.100.1:443");
    closing.bytes_up = Some(10);
    closing.bytes_down = Some(20);
    closing.duration_ms = Some(5);
    let mut event = denied(None, "198.51.100.1:443");
    event.kind = crate::record::Kind::Event;
    event.reason = Reason::JournalSegmentRemoved;
    let s = summarize([
        allowed(Some("github.com"), "198.51.100.1:443"),
        closing,
        event,
    ]);
    assert_eq!(
        (s.allowed, s.denied, s.events, s.segments_removed),
        (1, 0, 1, 1)
    );
    assert!(s.to_markdown().contains("segment(s) were removed"));
}

#[test]
fn markdown_has_a_denied_and_an_allowed_section_with_totals() {
    let s = summarize([
        by(allowed(Some("github.com"), "198.51.100.1:443"), "git"),
        by(denied(Some("evil|x.example"), "198.51.100.9:443"), "cu`rl"),
    ]);
    let md = s.to_markdown();
    let expected = "\
### egressd: 1 allowed, 1 denied, 2 endpoints

#### Denied: 1 decision

| Host or IP | Port | Denied | Processes | Why | How to allow |
|---|---|--:|---|---|---|
| evil\\|x.example | 443 | 1 | cu\\`rl | no rule allows this host | no valid host name or address to write a rule for: see the records in the export |

#### Allowed: 1 decision

| Host or IP | Port | Allowed | Processes | Rule |
|---|---|--:|---|---|
| github.com | 443 | 1 | git | allow\\[0\\] |

";
    assert_eq!(md, expected);
}

#[test]
fn audit_mode_has_a_would_deny_section_explained_like_denies() {
    let s = summarize([
        would_deny(denied(Some("evil.example"), "198.51.100.9:443")),
        allowed(Some("github.com"), "198.51.100.1:443"),
    ]);
    let md = s.to_markdown();
    assert!(
        md.starts_with(
            "### egressd: 2 allowed, 0 denied, 2 endpoints (audit mode: 1 would have been denied)\n"
        ),
        "{md}"
    );
    assert!(!md.contains("#### Denied"), "{md}");
    let would = section_of(&md, "#### Would be denied in enforce mode");
    assert!(
        would.contains("| Host or IP | Port | Would deny | Processes | Why | How to allow |"),
        "{md}"
    );
    assert!(
        would.contains(
            "| evil.example | 443 | 1 |  | no rule allows this host | add `host: \"evil.example\"` with `ports: [443]` to `allow:` (YAML below) |"
        ),
        "{md}"
    );
    assert!(
        md.contains("```yaml\nallow:\n  - host: \"evil.example\"\n    ports: [443]\n```"),
        "{md}"
    );
    // The allowed section has only what enforce mode would allow too.
    let allowed = section_of(&md, "#### Allowed: 1 decision");
    assert!(
        allowed.contains("| github.com | 443 | 1 |  | allow\\[0\\] |"),
        "{md}"
    );
    assert!(!allowed.contains("evil.example"), "{md}");
}

/// The text from `heading` to the next `####` heading (or the end).
fn section_of<'a>(md: &'a str, heading: &str) -> &'a str {
    let start = md
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{md}"));
    let rest = &md[start + heading.len()..];
    &md[start..start + heading.len() + rest.find("\n#### ").unwrap_or(rest.len())]
}

/// A CONNECT to `name:443` denied before any address was dialled.
fn connect_denied(name: &str) -> Record {
    let mut r = denied(Some(name), "198.51.100.9:443");
    r.host_source = crate::record::HostSource::Connect;
    r.set_destination(None, 443);
    r
}

#[test]
fn three_hundred_denied_names_never_hide_the_allowed_endpoint() {
    let mut records: Vec<Record> = (0..300)
        .map(|i| by(connect_denied(&format!("n{i}.many.test")), "curl"))
        .collect();
    records.push(by(allowed(Some("a.test"), "198.51.100.1:443"), "curl"));
    let md = summarize(records).to_markdown();
    assert!(
        md.starts_with("### egressd: 1 allowed, 300 denied, 301 endpoints\n"),
        "{md}"
    );
    let denied = section_of(&md, "#### Denied: 300 decisions");
    assert!(
        denied.contains("| \\*.many.test (300 names) | 443 | 300 | curl | no rule allows this host | add `host: \"*.many.test\"` with `ports: [443]` to `allow:` (YAML below); it allows every name under many.test |"),
        "{md}"
    );
    // One row for the 300 names: none of them is listed, and no port is 0.
    assert!(!md.contains("n0.many.test"), "{md}");
    assert!(!md.contains(" | 0 | "), "{md}");
    assert!(
        md.contains("```yaml\nallow:\n  - host: \"*.many.test\"\n    ports: [443]\n```"),
        "{md}"
    );
    assert!(
        md.contains("the full list is in the export: `egressd audit export --host '*.many.test'`"),
        "{md}"
    );
    let allowed = section_of(&md, "#### Allowed: 1 decision");
    assert!(
        allowed.contains("| a.test | 443 | 1 | curl | allow\\[0\\] |"),
        "{md}"
    );
    assert!(!md.contains("not shown"), "{md}");
}

#[test]
fn denies_come_first_ordered_by_count() {
    let mut records = Vec::new();
    for (name, n) in [("few.test", 1), ("most.test", 5), ("some.test", 3)] {
        records.extend((0..n).map(|_| denied(Some(name), "198.51.100.9:443")));
    }
    records.extend((0..9).map(|_| allowed(Some("busy.test"), "198.51.100.1:443")));
    records.push(allowed(Some("quiet.test"), "198.51.100.2:443"));
    let md = summarize(records).to_markdown();
    let at = |needle: &str| {
        md.find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{md}"))
    };
    assert!(at("#### Denied") < at("#### Allowed"), "{md}");
    assert!(at("| most.test |") < at("| some.test |"), "{md}");
    assert!(at("| some.test |") < at("| few.test |"), "{md}");
    assert!(at("| few.test |") < at("#### Allowed"), "{md}");
    assert!(at("#### Allowed") < at("| busy.test |"), "{md}");
    assert!(at("| busy.test |") < at("| quiet.test |"), "{md}");
}

#[test]
fn many_names_of_one_domain_are_grouped_few_are_listed() {
    let mut records = Vec::new();
    // Five names of one domain stay rows of their own; six share one.
    records.extend((0..5).map(|i| denied(Some(&format!("h{i}.five.test")), "198.51.100.9:443")));
    records.extend((0..6).map(|i| denied(Some(&format!("h{i}.six.test")), "198.51.100.9:443")));
    // Not under what looks like a public suffix: unrelated sites.
    records.extend((0..6).map(|i| denied(Some(&format!("site{i}.co.uk")), "198.51.100.9:443")));
    // Same domain, other port or other cause: other rows.
    records.extend((0..6).map(|i| denied(Some(&format!("h{i}.six.test")), "198.51.100.9:22")));
    records.extend((0..6).map(|i| {
        let mut r = denied(Some(&format!("d{i}.six.test")), "198.51.100.9:443");
        r.reason = Reason::RuleDeny;
        r.rule = "deny[0]".into();
        r
    }));
    let md = summarize(records).to_markdown();
    for i in 0..5 {
        assert!(
            md.contains(&format!("| h{i}.five.test | 443 | 1 |")),
            "{md}"
        );
    }
    assert!(!md.contains("five.test ("), "{md}");
    assert!(md.contains("| \\*.six.test (6 names) | 443 | 6 |"), "{md}");
    assert!(md.contains("| \\*.six.test (6 names) | 22 | 6 |"), "{md}");
    assert!(
        md.contains("| \\*.six.test (6 names) | 443 | 6 |  | a deny rule blocks it | cannot: blocked by rule `deny[0]`"),
        "{md}"
    );
    for i in 0..6 {
        assert!(md.contains(&format!("| site{i}.co.uk | 443 | 1 |")), "{md}");
    }
    assert!(
        md.contains("`egressd audit export --host '*.six.test'`"),
        "{md}"
    );
}

#[test]
fn a_huge_number_of_distinct_domains_stays_within_the_bound() {
    let mut records: Vec<Record> = (0..40_000)
        .map(|i| denied(Some(&format!("d{i}.test")), "198.51.100.9:443"))
        .collect();
    records.extend((0..20_000).map(|i| allowed(Some(&format!("ok{i}.test")), "198.51.100.1:443")));
    let s = summarize(records);
    let md = s.to_markdown();
    assert!(md.len() <= MAX_BYTES, "{} bytes", md.len());
    assert!(
        md.len() > MAX_BYTES / 2,
        "the room is used: {} bytes",
        md.len()
    );
    // Both sections are there, each cut with what was left out and how to
    // list it; the totals still count everything.
    assert!(
        md.starts_with("### egressd: 20000 allowed, 40000 denied, 60000 endpoints\n"),
        "{}",
        &md[..200]
    );
    let denied = section_of(&md, "#### Denied: 40000 decisions");
    let allowed = section_of(&md, "#### Allowed: 20000 decisions");
    let shown = |sec: &str| {
        sec.lines()
            .filter(|l| l.starts_with("| d") || l.starts_with("| ok"))
            .count()
    };
    let (shown_denied, shown_allowed) = (shown(denied), shown(allowed));
    assert!(
        shown_denied > 50 && shown_allowed > 50,
        "{shown_denied} {shown_allowed}"
    );
    assert!(
        denied.contains(&format!(
            "{} more rows ({} decisions) not shown; list every denied record with `egressd audit export --decision deny`.",
            40_000 - shown_denied,
            40_000 - shown_denied
        )),
        "{denied}"
    );
    assert!(
        allowed.contains(&format!(
            "{} more rows ({} decisions) not shown; list every allowed record with `egressd audit export --decision allow`.",
            20_000 - shown_allowed,
            20_000 - shown_allowed
        )),
        "{allowed}"
    );
    let left = 60_000 - shown_denied - shown_allowed;
    assert!(
        md.contains(&format!(
            "> This summary is kept under 64 KiB (GitHub takes at most 1 MiB per step summary): {left} rows ({left} decisions) left out"
        )),
        "{}",
        &md[md.len() - 600..]
    );
    // Every denied row shown has its rule in the YAML block.
    assert_eq!(md.matches("\n  - host: \"d").count(), shown_denied);
}

#[test]
fn each_deny_says_why_in_words_and_what_to_do() {
    let with = |mut r: Record, reason: Reason, rule: &str| {
        r.reason = reason;
        r.rule = rule.into();
        r
    };
    let udp = {
        let mut r = with(
            denied(None, "198.51.100.7:443"),
            Reason::UdpBlocked,
            "engine",
        );
        r.kind = crate::record::Kind::Udp;
        r
    };
    let s = summarize([
        denied(Some("x.test"), "198.51.100.9:443"),
        with(
            denied(Some("gist.test"), "198.51.100.9:443"),
            Reason::RuleDeny,
            "deny[0]",
        ),
        with(
            denied(Some("intra.test"), "10.0.0.5:443"),
            Reason::BuiltinPrivate,
            "builtin:private",
        ),
        with(
            denied(None, "169.254.169.254:80"),
            Reason::BuiltinMetadata,
            "builtin:metadata",
        ),
        with(
            denied(Some("a.test"), "198.51.100.8:443"),
            Reason::SniIpMismatch,
            "engine",
        ),
        with(denied(None, "198.51.100.6:22"), Reason::NoSni, "default"),
        udp,
    ]);
    let md = s.to_markdown();
    let row = |host: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| {host} |")))
            .unwrap_or_else(|| panic!("no row for {host}:\n{md}"))
            .to_owned()
    };
    assert!(
        row("x.test").ends_with("| no rule allows this host | add `host: \"x.test\"` with `ports: [443]` to `allow:` (YAML below) |"),
        "{md}"
    );
    assert!(
        row("gist.test").ends_with("| a deny rule blocks it | cannot: blocked by rule `deny[0]` (a deny rule wins over every allow) |"),
        "{md}"
    );
    assert!(
        row("intra.test").contains(
            "| resolved to a private address | a host rule never opens a private address"
        ),
        "{md}"
    );
    assert!(
        row("169.254.169.254").ends_with(
            "| cloud metadata endpoint | cannot: blocked by the built-in rule `builtin:metadata` |"
        ),
        "{md}"
    );
    assert!(
        row("a.test").contains("| SNI does not match the IP dialled | not a missing rule")
            && row("a.test").contains("`egressd explain POLICY a.test:443`"),
        "{md}"
    );
    assert!(
        row("198.51.100.6").ends_with("| no host name in the connection, and no rule allows this address | add `ip: \"198.51.100.6\"` with `ports: [22]` to `allow:` (YAML below) |"),
        "{md}"
    );
    assert!(
        row("198.51.100.7")
            .contains("| udp/443 | 1 |  | UDP other than DNS is blocked (QUIC included) | cannot:"),
        "{md}"
    );
    // Only what a rule may allow is in the YAML, never what is blocked.
    let yaml = &md[md.find("```yaml").expect("a YAML block")..];
    let yaml = &yaml[..yaml[3..].find("```").unwrap() + 6];
    assert_eq!(
        yaml,
        "```yaml\nallow:\n  - ip: \"198.51.100.6\"\n    ports: [22]\n  - host: \"x.test\"\n    ports: [443]\n```",
        "{md}"
    );
    assert!(
        md.contains("`egressd explain POLICY 198.51.100.6:22`"),
        "{md}"
    );
}

#[test]
fn what_is_blocked_is_never_offered_as_a_rule() {
    for reason in Reason::ALL {
        let cause = Cause {
            reason,
            rule: "deny[0]".into(),
        };
        for (endpoint, service) in [
            ("x.test", Service::Tcp(443)),
            ("198.51.100.1", Service::Tcp(443)),
            ("x.test", Service::Dns),
        ] {
            let x = cause::explain(&cause, endpoint, service);
            assert!(!x.why.is_empty());
            let offers_rule = matches!(x.remedy, cause::Remedy::Allow(_));
            let allowable = matches!(
                reason,
                Reason::NoRule | Reason::DnsRefused | Reason::NoSni | Reason::BuiltinPrivate
            );
            assert!(
                !offers_rule || allowable,
                "{reason:?} on {endpoint} must not be offered as a rule"
            );
            if !allowable {
                assert!(!x.why.contains("no rule allows"), "{reason:?}: {}", x.why);
            }
        }
    }
}

#[test]
fn a_denied_name_without_an_address_shows_the_port_asked_for() {
    let md = summarize([connect_denied("n0.many.test")]).to_markdown();
    assert!(md.contains("| n0.many.test | 443 | 1 |"), "{md}");
}

#[test]
fn nothing_recorded_says_so() {
    let md = summarize(Vec::new()).to_markdown();
    assert!(md.contains("No network decisions were recorded."));
}

#[test]
fn a_counted_record_counts_as_its_count_and_says_so() {
    let mut counted = dns(Verdict::Deny, "evil.example");
    counted.count = Some(500);
    counted.samples = Some(vec!["a.evil.example".into()]);
    let s = summarize([dns(Verdict::Deny, "evil.example"), counted]);
    assert_eq!((s.denied, s.coalesced), (501, 500));
    assert_eq!(s.rows()[0].2.denied, 501);
    let md = s.to_markdown();
    assert!(
        md.contains("500 repeated decision(s) were recorded as counts"),
        "{md}"
    );
    assert!(!md.contains("Egress stopped"), "{md}");
}

#[test]
fn a_budget_deny_says_egress_stopped() {
    let mut stopped = dns(Verdict::Deny, "evil.example");
    stopped.reason = Reason::AuditBudgetExhausted;
    let s = summarize([stopped]);
    assert!(s.budget_exhausted);
    assert!(s.to_markdown().contains("Egress stopped"));
}
