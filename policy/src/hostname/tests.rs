use super::*;

fn ok(raw: &str) -> HostPattern {
    parse_pattern(raw).unwrap_or_else(|e| panic!("{raw:?} rejected: {e}"))
}

fn err(raw: &str) -> String {
    match parse_pattern(raw) {
        Ok(p) => panic!("{raw:?} accepted as {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn exact_names_are_normalised() {
    assert_eq!(ok("GitHub.COM"), HostPattern::Exact("github.com".into()));
    assert_eq!(ok("github.com."), HostPattern::Exact("github.com".into()));
    assert_eq!(ok("nexus"), HostPattern::Exact("nexus".into()));
    assert_eq!(
        ok("_acme-challenge.example.com"),
        HostPattern::Exact("_acme-challenge.example.com".into())
    );
}

#[test]
fn the_one_wildcard_form() {
    assert_eq!(
        ok("*.Example.com."),
        HostPattern::Below("example.com".into())
    );
    assert_eq!(
        ok("*.a.b.example.com"),
        HostPattern::Below("a.b.example.com".into())
    );
}

#[test]
fn bad_wildcards_say_what_to_write() {
    assert_eq!(
        err("*example.com"),
        "\"*example.com\": a wildcard must be a whole leading label; write \"*.example.com\""
    );
    assert_eq!(
        err("api*.example.com"),
        "\"api*.example.com\": a wildcard must be a whole leading label; write \"*.example.com\""
    );
    assert!(
        err("*.com").contains("at least two labels"),
        "{}",
        err("*.com")
    );
    assert!(err("*").contains("bare wildcard"));
    assert!(err("*.").contains("bare wildcard"), "{}", err("*."));
    assert_eq!(
        err("api.*.example.com"),
        "\"api.*.example.com\": a wildcard may only be the leftmost label (it already matches any depth); write \"*.example.com\""
    );
    assert!(err("example.*").contains("leftmost label"));
    assert!(err("*.*.example.com").contains("write \"*.example.com\""));
}

#[test]
fn non_ascii_suggests_punycode() {
    assert_eq!(
        err("bücher.example"),
        "\"bücher.example\": host names must be ASCII; write the punycode form \"xn--bcher-kva.example\""
    );
    assert!(err("*.bücher.example").contains("\"*.xn--bcher-kva.example\""));
}

#[test]
fn urls_ports_and_junk() {
    assert!(err("https://github.com/x").contains("write \"github.com\""));
    assert!(err("github.com:443").contains("`host: github.com` with `ports: [443]`"));
    assert!(err("git hub.com").contains("spaces"));
    assert!(err("a..b").contains("empty label"));
    assert!(err("-a.example.com").contains("starts or ends with '-'"));
    assert!(err("a!.example.com").contains("'!' is not allowed"));
    assert!(err("10.0.0.300").contains("not a valid one"));
    assert!(err(&format!("{}.com", "a".repeat(64))).contains("longer than 63"));
    assert!(err("").contains("empty host name"));
}

#[test]
fn run_time_names_normalise_without_allocating() {
    let n = |s: &str| normalise(s, &mut NameBuf::new()).map(str::to_owned);
    assert_eq!(n("WWW.GitHub.com.").as_deref(), Some("www.github.com"));
    assert_eq!(n("github.com").as_deref(), Some("github.com"));
    assert_eq!(n(""), None);
    assert_eq!(n("."), None);
    assert_eq!(n("bücher.example"), None);
    assert_eq!(n("198.51.100.7"), None, "an IP literal is never a name");
    assert_eq!(n("2001:db8::1"), None);
    assert_eq!(n(&"a".repeat(254)), None);
    assert!(n(&"a".repeat(253)).is_some());
}

proptest::proptest! {
    /// The word-at-a-time scan says what a byte loop says, for any bytes
    /// (biased towards the interesting ones) and any length around a word.
    #[test]
    fn word_scan_equals_a_byte_loop(bytes in proptest::collection::vec(
        proptest::prop_oneof![
            proptest::sample::select(b"@AMZ[`amz{:;9.\x7f\x80\xff\x00".to_vec()),
            proptest::prelude::any::<u8>(),
        ],
        0..40,
    )) {
        let s = scan(&bytes);
        proptest::prop_assert_eq!(s.ascii, bytes.is_ascii());
        if s.ascii {
            proptest::prop_assert_eq!(s.upper, bytes.iter().any(u8::is_ascii_uppercase));
            proptest::prop_assert_eq!(s.colon, bytes.contains(&b':'));
        }
    }
}
