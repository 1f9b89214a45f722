use super::*;
use crate::NoResolutions;
use crate::decision::{Reason, RuleId, RuleList, Verdict};

#[test]
fn globs() {
    assert!(glob_matches("acme/legacy-*", "acme/legacy-app"));
    assert!(glob_matches("acme/legacy-*", "ACME/Legacy-"));
    assert!(!glob_matches("acme/legacy-*", "acme/new-app"));
    assert!(glob_matches("*", "any/thing"));
    assert!(glob_matches("acme/*", "acme/x/y"));
    assert!(glob_matches("a?c/*-svc", "abc/pay-svc"));
    assert!(!glob_matches("a?c/*-svc", "ac/pay-svc"));
    assert!(glob_matches("*a*b*", "xxaxxbxx"));
    assert!(!glob_matches("*a*b", "xxaxxbxxc"));
    assert!(glob_matches("acme/exact", "acme/exact"));
    assert!(!glob_matches("acme/exact", "acme/exactly"));
}

const POLICY: &str = "
version: 1
allow: [github.com]
deny: [gist.github.com]
overrides:
  - when: { repository: \"acme/legacy-*\" }
    mode: audit
  - when: { labels: [gpu, linux] }
    allow: [\"*.nvidia.com\"]
    deny: [\"developer.download.nvidia.com\"]
  - when: { repository: \"acme/ml\", labels: [gpu] }
    allow: [pypi.example.org]
";

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn overrides_first_match_on_top_of_base() {
    let p = Policy::parse("t.yaml", POLICY).unwrap().policy;
    let none = labels(&[]);
    let gpu = labels(&["self-hosted", "GPU", "linux"]);
    let job = |repo: Option<&'static str>, l: &'static [String]| JobContext {
        repository: repo,
        labels: l,
    };
    let none: &'static [String] = Box::leak(none.into_boxed_slice());
    let gpu: &'static [String] = Box::leak(gpu.into_boxed_slice());

    assert_eq!(p.matching_override(&job(None, none)), None);
    assert_eq!(p.ruleset(&job(None, none)).mode(), Mode::Enforce);
    // Repository glob: mode replaced, base rules kept.
    let legacy = p.ruleset(&job(Some("acme/legacy-web"), none));
    assert_eq!(
        p.matching_override(&job(Some("acme/legacy-web"), none)),
        Some(0)
    );
    assert_eq!(legacy.mode(), Mode::Audit);
    assert_eq!(
        legacy.decide_dns("github.com").enforce_would,
        Some(Verdict::Allow)
    );
    // Labels: every listed label must be present (case-insensitive).
    let g = p.ruleset(&job(Some("acme/app"), gpu));
    assert_eq!(p.matching_override(&job(Some("acme/app"), gpu)), Some(1));
    assert_eq!(g.mode(), Mode::Enforce);
    let d = g.decide_dns("api.ngc.nvidia.com");
    assert_eq!(
        (d.verdict, d.rule),
        (
            Verdict::Allow,
            RuleId::Override {
                overr: 1,
                list: RuleList::Allow,
                index: 0
            }
        )
    );
    let d = g.decide_dns("developer.download.nvidia.com");
    assert_eq!(
        (d.verdict, d.reason, d.rule),
        (
            Verdict::Deny,
            Reason::RuleDeny,
            RuleId::Override {
                overr: 1,
                list: RuleList::Deny,
                index: 0
            }
        )
    );
    let d = g.decide_dns("github.com");
    assert_eq!(
        d.rule,
        RuleId::Base {
            list: RuleList::Allow,
            index: 0
        }
    );
    let d = g.decide_dns("gist.github.com");
    assert_eq!(
        d.rule,
        RuleId::Base {
            list: RuleList::Deny,
            index: 0
        }
    );
    // Only one label of two: no match.
    let only_gpu: &'static [String] = Box::leak(labels(&["gpu"]).into_boxed_slice());
    assert_eq!(p.matching_override(&job(Some("acme/app"), only_gpu)), None);
    // Both conditions must hold; the first match wins (acme/ml with gpu only -> [2]).
    assert_eq!(
        p.matching_override(&job(Some("acme/ml"), only_gpu)),
        Some(2)
    );
    assert_eq!(p.matching_override(&job(Some("acme/ml"), gpu)), Some(1));
    assert_eq!(p.matching_override(&job(None, only_gpu)), None);
    // The base itself is untouched by overrides.
    let d = p.base().decide_connect(
        "198.51.100.1:443".parse().unwrap(),
        Some("api.ngc.nvidia.com"),
        &NoResolutions,
    );
    assert_eq!(d.reason, Reason::NoRule);
    assert_eq!(p.override_count(), 3);
    assert_eq!(p.rule_count(), 2 + 2 + 1);
}

#[test]
fn include_github_actions() {
    let p = Policy::parse(
        "t.yaml",
        "version: 1\ninclude: [github-actions]\nallow: [example.com]\n",
    )
    .unwrap()
    .policy;
    let r = p.base();
    assert_eq!(
        r.decide_dns("example.com").rule,
        RuleId::Base {
            list: RuleList::Allow,
            index: 0
        }
    );
    assert_eq!(
        r.decide_dns("github.com").rule,
        RuleId::Include {
            set: "github-actions",
            index: 0
        }
    );
    assert_eq!(
        r.decide_dns("API.github.com.").rule,
        RuleId::Include {
            set: "github-actions",
            index: 1
        }
    );
    assert_eq!(
        r.decide_dns("pipelines.actions.githubusercontent.com").rule,
        RuleId::Include {
            set: "github-actions",
            index: 2
        }
    );
    assert_eq!(r.decide_dns("gist.github.com").verdict, Verdict::Deny);
    assert_eq!(
        p.rule(RuleId::Include {
            set: "github-actions",
            index: 0
        })
        .map(|i| i.text.as_str()),
        Some("github.com")
    );
    assert_eq!(
        p.rule(RuleId::Base {
            list: RuleList::Allow,
            index: 0
        })
        .and_then(|i| i.line),
        Some(3)
    );
}
