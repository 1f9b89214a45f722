//! The built-in `include` sets are data pinned by this test: a change to the
//! list (and so to what every runner may reach, and to the rule ids in audit
//! records) must show up here in review.

use egressd_policy::{IncludeSet, Policy, RuleId, Verdict};

const GITHUB_ACTIONS: &[&str] = &[
    "github.com",
    "api.github.com",
    "*.actions.githubusercontent.com",
    "codeload.github.com",
    "pkg.actions.githubusercontent.com",
    "results-receiver.actions.githubusercontent.com",
    "*.blob.core.windows.net",
    "objects.githubusercontent.com",
    "objects-origin.githubusercontent.com",
    "github-releases.githubusercontent.com",
    "github-registry-files.githubusercontent.com",
    "release-assets.githubusercontent.com",
    "ghcr.io",
    "*.pkg.github.com",
    "pkg-containers.githubusercontent.com",
    "github-cloud.githubusercontent.com",
    "github-cloud.s3.amazonaws.com",
    "dependabot-actions.githubapp.com",
];

#[test]
fn github_actions_set_is_pinned() {
    let entries: Vec<&str> = IncludeSet::GithubActions.entries().collect();
    assert_eq!(entries, GITHUB_ACTIONS);
}

#[test]
fn every_entry_is_a_valid_rule_and_gets_its_id() {
    for set in IncludeSet::ALL {
        let policy = Policy::parse(
            "t.yaml",
            &format!("version: 1\ninclude: [{}]\n", set.name()),
        )
        .unwrap()
        .policy;
        for (i, entry) in (0u32..).zip(set.entries()) {
            // Each entry alone is a valid policy rule.
            Policy::parse("entry.yaml", &format!("version: 1\nallow: [\"{entry}\"]\n"))
                .unwrap_or_else(|d| panic!("{entry}: {d}"));
            let name = entry.replace('*', "x");
            let d = policy.base().decide_dns(&name);
            assert_eq!(d.verdict, Verdict::Allow, "{entry}");
            // An earlier, broader entry may cover a later one.
            match d.rule {
                RuleId::Include { set: s, index } => {
                    assert_eq!(s, set.name());
                    assert!(index <= i, "{entry}: matched by a later entry {index}");
                }
                other => panic!("{entry}: decided by {other}"),
            }
        }
        assert_eq!(policy.rule_count(), set.entries().count());
    }
}

#[test]
fn unknown_sets_are_named() {
    let err = Policy::parse("p.yaml", "version: 1\ninclude: [gitlab]\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.yaml:2:11: unknown include set \"gitlab\"; known sets: github-actions"
    );
}
