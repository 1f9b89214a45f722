use super::*;
use crate::fixture::{allowed, by, denied, dns, would_deny};

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
fn markdown_is_a_gfm_table_with_totals() {
    let s = summarize([
        by(allowed(Some("github.com"), "198.51.100.1:443"), "git"),
        by(denied(Some("evil|x.example"), "198.51.100.9:443"), "cu`rl"),
    ]);
    let md = s.to_markdown();
    let expected = "\
### egressd: 1 allowed, 1 denied, 2 endpoints

| Host or IP | Port | Allowed | Denied | Processes | Rule |
|---|---|--:|--:|---|---|
| evil\\|x.example | 443 | 0 | 1 | cu\\`rl | default |
| github.com | 443 | 1 | 0 | git | allow\\[0\\] |
";
    assert_eq!(md, expected);
}

#[test]
fn audit_mode_adds_a_would_deny_column() {
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
    assert!(
        md.contains("| Host or IP | Port | Allowed | Denied | Would deny | Processes | Rule |")
    );
    assert!(
        md.contains("| evil.example | 443 | 1 | 0 | 1 |  | default |"),
        "{md}"
    );
}

#[test]
fn nothing_recorded_says_so() {
    let md = summarize(Vec::new()).to_markdown();
    assert!(md.contains("No network decisions were recorded."));
}
