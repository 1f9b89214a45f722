//! Every policy in `examples/` loads without errors or warnings (style.md:
//! docs that cannot rot), and each decides what its comments promise.

use std::path::{Path, PathBuf};

use egressd_policy::{AssumeBound, JobContext, Mode, NoResolutions, Policy, Reason, Verdict};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn load(name: &str) -> Policy {
    let path = examples_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let loaded = Policy::parse(name, &text).unwrap_or_else(|d| panic!("{d}"));
    assert!(loaded.warnings.is_empty(), "{name}: {:?}", loaded.warnings);
    loaded.policy
}

#[test]
fn every_example_loads_cleanly() {
    let mut n = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            load(path.file_name().unwrap().to_str().unwrap());
            n += 1;
        }
    }
    assert!(n >= 4, "expected at least four examples, found {n}");
}

fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

#[test]
fn github_actions_org() {
    let p = load("github-actions-org.yaml");
    let r = p.base();
    assert_eq!(r.mode(), Mode::Enforce);
    for name in [
        "github.com",
        "api.github.com",
        "results-receiver.actions.githubusercontent.com",
        "ghcr.io",
    ] {
        assert_eq!(r.decide_dns(name).verdict, Verdict::Allow, "{name}");
    }
    assert_eq!(r.decide_dns("gist.github.com").reason, Reason::RuleDeny);
    assert_eq!(r.decide_dns("example.org").verdict, Verdict::Deny);
    let d = r.decide_connect(sa("169.254.169.254:80"), None, &NoResolutions);
    assert_eq!(d.reason, Reason::BuiltinMetadata);
    let d = r.decide_connect(sa("192.0.2.1:443"), Some("github.com"), &AssumeBound);
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn audit_rollout() {
    let p = load("audit-rollout.yaml");
    let r = p.base();
    assert_eq!(r.mode(), Mode::Audit);
    let d = r.decide_dns("example.org");
    assert_eq!(
        (d.verdict, d.enforce_would),
        (Verdict::Allow, Some(Verdict::Deny))
    );
}

#[test]
fn overrides_by_team() {
    let p = load("overrides-by-team.yaml");
    let gpu = vec!["self-hosted".to_owned(), "gpu".to_owned()];
    let none: Vec<String> = Vec::new();
    let legacy = JobContext {
        repository: Some("acme/legacy-billing"),
        labels: &none,
    };
    assert_eq!(p.ruleset(&legacy).mode(), Mode::Audit);
    let ml = JobContext {
        repository: Some("acme/vision"),
        labels: &gpu,
    };
    assert_eq!(
        p.ruleset(&ml)
            .decide_dns("developer.download.nvidia.com")
            .verdict,
        Verdict::Allow
    );
    assert_eq!(
        p.base().decide_dns("developer.download.nvidia.com").verdict,
        Verdict::Deny
    );
}

#[test]
fn internal_networks() {
    let p = load("internal-networks.yaml");
    let r = p.base();
    let d = r.decide_connect(sa("10.20.1.5:5432"), None, &NoResolutions);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::RuleAllow));
    let d = r.decide_connect(sa("10.20.1.5:22"), None, &NoResolutions);
    assert_eq!(d.reason, Reason::BuiltinPrivate);
    let d = r.decide_connect(sa("[2001:db8:42::10]:443"), None, &NoResolutions);
    assert_eq!(d.verdict, Verdict::Allow);
    let d = r.decide_connect(sa("198.51.100.200:443"), None, &NoResolutions);
    assert_eq!(d.reason, Reason::RuleDeny);
}
