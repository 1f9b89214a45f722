//! Validation through the public API: warnings that do not reject the
//! policy, every error in one pass, and the shape detection of bare rules.

use egressd_policy::{Policy, Severity};

fn errors(yaml: &str) -> Vec<String> {
    Policy::parse("p.yaml", yaml)
        .expect_err("should be rejected")
        .0
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

fn warnings(yaml: &str) -> Vec<String> {
    Policy::parse("p.yaml", yaml)
        .unwrap_or_else(|d| panic!("{d}"))
        .warnings
        .into_iter()
        .map(|d| d.to_string())
        .collect()
}

#[test]
fn duplicates_are_warnings_not_errors() {
    let w = warnings(
        "version: 1\nallow:\n  - github.com\n  - GitHub.com.\n  - host: github.com\n    ports: [443]\n",
    );
    assert_eq!(
        w,
        ["p.yaml:4:5: warning: \"github.com\" duplicates allow[0] (line 3); remove one"]
    );
    let w = warnings("version: 1\nallow: [\"10.0.0.0/8\", \"::ffff:10.0.0.0/104\"]\n");
    assert_eq!(w.len(), 1, "{w:?}");
    let w = warnings("version: 1\nallow: [example.com]\ndeny: [example.com]\n");
    assert_eq!(
        w,
        [
            "p.yaml:2:9: warning: allow[0] \"example.com\" is also in deny[0] (line 3); deny wins, so this allow has no effect"
        ]
    );
    let w = warnings("version: 1\nallow:\n  - host: a.example.com\n    ports: [443, 443]\n");
    assert_eq!(
        w,
        ["p.yaml:4:18: warning: port 443 is listed twice; remove one"]
    );
}

#[test]
fn all_errors_in_one_pass_in_file_order() {
    let e = errors("version: 1\nallow:\n  - \"*.com\"\n  - 10.0.0.1/8\nmode: x\nfoo: 1\n");
    assert_eq!(e.len(), 4, "{e:?}");
    let lines: Vec<&str> = e.iter().map(|s| s.split(':').nth(1).unwrap()).collect();
    assert_eq!(lines, ["3", "4", "5", "6"]);
}

#[test]
fn bare_rules_by_shape() {
    let p = Policy::parse(
        "p.yaml",
        "version: 1\nallow: [github.com, 192.0.2.1, \"198.51.100.0/24\", \"2001:db8::/32\", \"::ffff:203.0.113.9\"]\n",
    )
    .unwrap()
    .policy;
    assert_eq!(p.rule_count(), 5);
    let text = |i| {
        p.rule(egressd_policy::RuleId::Base {
            list: egressd_policy::RuleList::Allow,
            index: i,
        })
        .unwrap()
        .text
        .clone()
    };
    assert_eq!(text(0), "github.com");
    assert_eq!(text(1), "192.0.2.1");
    assert_eq!(text(2), "198.51.100.0/24");
    assert_eq!(text(3), "2001:db8::/32");
    assert_eq!(text(4), "203.0.113.9", "IPv4-mapped is IPv4");
}

#[test]
fn cidr_edges_are_accepted() {
    for ok in [
        "0.0.0.0/0",
        "::/0",
        "192.0.2.1/32",
        "2001:db8::1/128",
        "255.255.255.255/32",
    ] {
        Policy::parse("p.yaml", &format!("version: 1\nallow: [\"{ok}\"]\n"))
            .unwrap_or_else(|d| panic!("{ok}: {d}"));
    }
    for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/-1", "10.0.0.0/x"] {
        let e = errors(&format!("version: 1\nallow: [\"{bad}\"]\n"));
        assert!(
            e[0].contains("prefix length must be a number"),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn null_lists_are_empty_and_quoted_null_is_a_name() {
    let p = Policy::parse("p.yaml", "version: 1\nallow:\ndeny: ~\n")
        .unwrap()
        .policy;
    assert_eq!(p.rule_count(), 0);
    let e = errors("version: 1\nallow: [\"\"]\n");
    assert!(e[0].contains("empty host name"), "{e:?}");
}

#[test]
fn yaml_features_a_policy_does_not_use_are_refused() {
    let e = errors("version: 1\nallow: &a [github.com]\ndeny: *a\n");
    assert!(e[0].contains("aliases"), "{e:?}");
    let e = errors("version: 1\n---\nversion: 1\n");
    assert!(e[0].contains("one YAML document"), "{e:?}");
    let deep = format!(
        "version: 1\nallow: {}{}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let e = errors(&deep);
    assert!(e[0].contains("nested more than"), "{e:?}");
}

mod robustness {
    //! Whatever the bytes, parsing returns (never panics), and every
    //! diagnostic points at a real line of the input.
    use egressd_policy::Policy;
    use proptest::prelude::*;

    const SEEDS: &[&str] = &[
        include_str!("../../../examples/github-actions-org.yaml"),
        include_str!("../../../examples/overrides-by-team.yaml"),
        include_str!("../../../examples/internal-networks.yaml"),
        include_str!("../../tests/fixtures/broken/many-errors.yaml"),
    ];

    fn check(text: &str) -> Result<(), TestCaseError> {
        // YAML breaks lines at "\n", "\r\n" and a lone "\r".
        let breaks = text.replace("\r\n", "\n").matches(['\n', '\r']).count();
        let lines = u32::try_from(breaks).unwrap() + 1;
        match Policy::parse("f.yaml", text) {
            Ok(l) => {
                for w in &l.warnings {
                    prop_assert!(w.line >= 1 && w.line <= lines && w.col >= 1, "{}", w);
                }
            }
            Err(d) => {
                prop_assert!(!d.0.is_empty());
                for e in &d.0 {
                    prop_assert!(
                        e.line >= 1 && e.line <= lines && e.col >= 1,
                        "{} in {:?}",
                        e,
                        text
                    );
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn yaml_shaped_noise(s in "[a-z0-9:*./\\-\\[\\]{},#&!|>'\" \n\t]{0,200}") {
            check(&format!("version: 1\n{s}"))?;
            check(&s)?;
        }

        #[test]
        fn mutated_real_policies(seed in 0..SEEDS.len(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<char>()), 1..6)) {
            let mut chars: Vec<char> = SEEDS[seed].chars().collect();
            for (at, c) in edits {
                let i = at.index(chars.len());
                chars[i] = c;
            }
            let text: String = chars.into_iter().collect();
            check(&text)?;
        }
    }
}
