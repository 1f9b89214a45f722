use super::*;
use crate::record::{JobTags, Kind};
use egressd_policy::{Decision, Reason, RuleId};

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn rec(at: &str, verdict: Verdict, host: Option<&str>, dst: &str, repo: Option<&str>) -> Record {
    let d = Decision::enforce(verdict, Reason::NoRule, RuleId::Default);
    let mut r = Record::new("r1", Kind::Tcp, &d);
    r.ts = ts(at);
    r.host = host.map(str::to_owned);
    r.dst = Some(dst.parse().unwrap());
    r.job = repo.map(|repo| {
        JobTags {
            repository: Some(repo.to_owned()),
            ..JobTags::default()
        }
        .into()
    });
    r
}

#[test]
fn globs_match_like_shell_patterns_over_names() {
    let cases = [
        ("*.example.com", "api.example.com", true),
        ("*.example.com", "a.b.example.com", true),
        ("*.example.com", "example.com", false),
        ("*example.com", "example.com", true),
        ("EXAMPLE.com", "example.COM.", true),
        ("api.?.com", "api.x.com", true),
        ("api.?.com", "api.xy.com", false),
        ("*", "anything", true),
        ("198.51.100.*", "198.51.100.7", true),
        ("a*b*c", "aXXbYYc", true),
        ("a*b*c", "aXXbYY", false),
        ("github.com", "github.com.evil", false),
    ];
    for (pat, text, want) in cases {
        let g: HostGlob = pat.parse().unwrap();
        assert_eq!(g.matches(text), want, "{pat} vs {text}");
    }
    assert_eq!("".parse::<HostGlob>(), Err(FilterError::EmptyGlob));
}

#[test]
fn times_are_rfc3339_or_relative_to_now() {
    let now = ts("2026-11-26T12:00:00Z");
    assert_eq!(parse_time("2h", now), Ok(ts("2026-11-26T10:00:00Z")));
    assert_eq!(parse_time("30m", now), Ok(ts("2026-11-26T11:30:00Z")));
    assert_eq!(parse_time("7d", now), Ok(ts("2026-11-19T12:00:00Z")));
    assert_eq!(parse_time("1w", now), Ok(ts("2026-11-19T12:00:00Z")));
    assert_eq!(parse_time("90s", now), Ok(ts("2026-11-26T11:58:30Z")));
    assert_eq!(
        parse_time("2026-11-20T01:02:03.5+01:00", now),
        Ok(ts("2026-11-20T00:02:03.5Z"))
    );
    for bad in [
        "",
        "2",
        "h",
        "2y",
        "-2h",
        "yesterday",
        "99999999999999999999d",
    ] {
        assert!(
            matches!(parse_time(bad, now), Err(FilterError::Time(_))),
            "{bad}"
        );
    }
}

#[test]
fn every_condition_must_hold() {
    let r = rec(
        "2026-11-26T10:00:00Z",
        Verdict::Deny,
        Some("api.example.com"),
        "198.51.100.7:443",
        Some("acme/web"),
    );
    assert!(Filter::default().matches(&r));
    let only = |f: Filter| f.matches(&r);
    assert!(only(Filter {
        since: Some(ts("2026-11-26T10:00:00Z")),
        ..Filter::default()
    }));
    assert!(!only(Filter {
        since: Some(ts("2026-11-26T10:00:01Z")),
        ..Filter::default()
    }));
    assert!(only(Filter {
        until: Some(ts("2026-11-26T10:00:01Z")),
        ..Filter::default()
    }));
    assert!(!only(Filter {
        until: Some(ts("2026-11-26T10:00:00Z")),
        ..Filter::default()
    }));
    assert!(only(Filter {
        decision: Some(Verdict::Deny),
        ..Filter::default()
    }));
    assert!(!only(Filter {
        decision: Some(Verdict::Allow),
        ..Filter::default()
    }));
    assert!(only(Filter {
        host: Some("*.example.com".parse().unwrap()),
        ..Filter::default()
    }));
    assert!(only(Filter {
        host: Some("198.51.100.*".parse().unwrap()),
        ..Filter::default()
    }));
    assert!(!only(Filter {
        host: Some("*.example.org".parse().unwrap()),
        ..Filter::default()
    }));
    assert!(only(Filter {
        repository: Some("acme/web".into()),
        ..Filter::default()
    }));
    assert!(!only(Filter {
        repository: Some("acme/api".into()),
        ..Filter::default()
    }));

    let no_job = rec(
        "2026-11-26T10:00:00Z",
        Verdict::Allow,
        None,
        "198.51.100.7:22",
        None,
    );
    assert!(
        !Filter {
            repository: Some("acme/web".into()),
            ..Filter::default()
        }
        .matches(&no_job)
    );
}
