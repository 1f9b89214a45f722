//! `egressd check` and `egressd explain`, run as the real binary: exit codes,
//! stdout/stderr split, every broken-policy fixture printed exactly as its
//! `.expected` file says, every example accepted, and the JSON contract of
//! `explain --json`.
//!
//! The binary is found next to this test's own executable
//! (`target/<profile>/deps/it-…` -> `target/<profile>/egressd`); `cargo test
//! --workspace` builds it. When it is missing (e.g. `cargo test -p
//! egressd-e2e` alone), it is built once with the same cargo and target dir.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic there is a failed assertion"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn egressd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = profile_dir.join(format!("egressd{}", std::env::consts::EXE_SUFFIX));
        if !bin.exists() {
            let target_dir = profile_dir.parent().unwrap();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build
                .args(["build", "-p", "egressd", "--bin", "egressd", "--target-dir"])
                .arg(target_dir);
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let status = build.status().unwrap();
            assert!(status.success(), "building egressd failed");
        }
        bin
    })
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn egressd(cwd: &Path, args: &[&str]) -> Output {
    Command::new(egressd_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

fn write_policy(dir: &tempfile::TempDir, yaml: &str) -> PathBuf {
    let p = dir.path().join("policy.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

#[test]
fn check_accepts_every_example() {
    let examples = repo().join("examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out = egressd(&examples, &["check", path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.starts_with("ok: ") && stdout.contains(" rules"),
            "{stdout}"
        );
        assert_eq!(stdout.lines().count(), 1);
        n += 1;
    }
    assert!(n >= 4);
}

#[test]
fn check_prints_every_fixture_error_exactly_and_exits_2() {
    let dir = repo().join("policy/tests/fixtures/broken");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap();
        let out = egressd(&dir, &["check", name]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(
            out.stdout.is_empty(),
            "{name}: nothing on stdout when invalid"
        );
        let stderr = text(&out.stderr);
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let (diagnostics, summary) = stderr.rsplit_once("egressd: ").unwrap();
        assert_eq!(diagnostics, expected, "{name}");
        assert!(
            summary.starts_with(&format!("{name} is not a valid policy (")),
            "{summary}"
        );
        n += 1;
    }
    assert!(n >= 20);
}

#[test]
fn check_warnings_only_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_policy(&dir, "version: 1\nallow: [github.com, github.com]\n");
    let out = egressd(dir.path(), &["check", "policy.yaml"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "ok: 2 rules (1 warning)\n");
    assert_eq!(
        text(&out.stderr),
        "policy.yaml:2:21: warning: \"github.com\" duplicates allow[0] (line 2); remove one\n"
    );
    drop(p);
}

#[test]
fn check_unreadable_file_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = egressd(dir.path(), &["check", "missing.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("egressd: cannot read the policy file missing.yaml:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
    std::fs::write(dir.path().join("bin.yaml"), [0xff, 0xfe, 0x00]).unwrap();
    let out = egressd(dir.path(), &["check", "bin.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not UTF-8"));
}

fn explain_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = egressd(dir, &all);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "exactly one JSON object: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

const POLICY: &str = "version: 1
include: [github-actions]
allow:
  - \"*.example.com\"
  - cidr: 198.51.100.0/24
    ports: [22]
deny:
  - gist.github.com
";

#[test]
fn explain_json_contract() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(&dir, POLICY);
    let d = dir.path();
    let j = explain_json(d, &["policy.yaml", "api.example.com"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "allow", "reason": "rule_allow", "rule": "allow[0]"})
    );
    let j = explain_json(d, &["policy.yaml", "example.com"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "deny", "reason": "dns_refused", "rule": "default"})
    );
    let j = explain_json(d, &["policy.yaml", "gist.github.com:443"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "deny", "reason": "rule_deny", "rule": "deny[0]"})
    );
    let j = explain_json(d, &["policy.yaml", "api.github.com"]);
    assert_eq!(j["rule"], "include:github-actions[1]");
    let j = explain_json(d, &["policy.yaml", "198.51.100.4:22"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "allow", "reason": "rule_allow", "rule": "allow[1]"})
    );
    let j = explain_json(d, &["policy.yaml", "198.51.100.4", "--port", "443"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "deny", "reason": "no_sni", "rule": "default"})
    );
    let j = explain_json(d, &["policy.yaml", "169.254.169.254", "--port", "80"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "deny", "reason": "builtin_metadata", "rule": "builtin:metadata"})
    );
    let j = explain_json(
        d,
        &[
            "policy.yaml",
            "[::ffff:10.0.0.5]:443",
            "--sni",
            "api.example.com",
        ],
    );
    assert_eq!(
        j,
        serde_json::json!({"decision": "deny", "reason": "builtin_private", "rule": "builtin:private"})
    );
    let j = explain_json(
        d,
        &[
            "policy.yaml",
            "[2001:db8::5]:443",
            "--sni",
            "api.example.com",
        ],
    );
    assert_eq!(
        j,
        serde_json::json!({"decision": "allow", "reason": "rule_allow", "rule": "allow[0]"})
    );
    let j = explain_json(d, &["policy.yaml", "127.0.0.1:5432"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "allow", "reason": "loopback", "rule": "builtin:loopback"})
    );
}

#[test]
fn explain_json_in_audit_mode_says_what_enforce_would_do() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(&dir, "version: 1\nmode: audit\nallow: [github.com]\n");
    let j = explain_json(dir.path(), &["policy.yaml", "example.org"]);
    assert_eq!(
        j,
        serde_json::json!({"decision": "allow", "enforce_would": "deny", "reason": "dns_refused", "rule": "default"})
    );
    let j = explain_json(dir.path(), &["policy.yaml", "github.com"]);
    assert_eq!(j["enforce_would"], "allow");
}

#[test]
fn explain_human_output_names_the_rule_and_the_assumptions() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(&dir, POLICY);
    let out = egressd(
        dir.path(),
        &[
            "explain",
            "policy.yaml",
            "198.51.100.9:443",
            "--sni",
            "a.example.com",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(s.contains("decision: allow\n"), "{s}");
    assert!(s.contains("reason:   rule_allow\n"), "{s}");
    assert!(
        s.contains("rule:     allow[0] (*.example.com, line 4)\n"),
        "{s}"
    );
    assert!(
        s.contains("assumed that a.example.com resolves to 198.51.100.9"),
        "{s}"
    );
    let out = egressd(dir.path(), &["explain", "policy.yaml", "a.example.com"]);
    let s = text(&out.stdout);
    assert!(
        s.contains("name-to-IP binding is checked at run time"),
        "{s}"
    );
    assert!(s.contains("dns:      allow (rule_allow, allow[0])"), "{s}");
}

#[test]
fn explain_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(&dir, POLICY);
    let d = dir.path();
    for args in [
        &[
            "explain",
            "policy.yaml",
            "a.example.com",
            "--sni",
            "b.example.com",
        ][..],
        &[
            "explain",
            "policy.yaml",
            "a.example.com:22",
            "--port",
            "443",
        ][..],
        &["explain", "policy.yaml", "a.example.com:0"][..],
        &["explain", "policy.yaml", "https://a.example.com/"][..],
        &["explain", "policy.yaml", "198.51.100.1", "--port", "0"][..],
        &["explain", "missing.yaml", "a.example.com"][..],
    ] {
        let out = egressd(d, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    std::fs::write(d.join("bad.yaml"), "version: 1\nallow: [\"*.com\"]\n").unwrap();
    let out = egressd(d, &["explain", "bad.yaml", "a.example.com"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("bad.yaml:2:9: \"*.com\""));
}
