//! `egressd audit export|summary|suggest` end to end: the real binary over
//! journal directories made of the golden records (audit/tests/golden), so
//! the bytes exported are the bytes the golden tests pin.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic there is a failed assertion"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The golden journal lines, in the order they are put in the journal.
const GOLDEN: [&str; 5] = [
    "tcp_allow_closing",
    "dns_deny",
    "audit_mode_would_deny",
    "event_segment_removed",
    "tcp_deny_no_job_no_process",
];

/// The `egressd` binary of the same build as this test binary
/// (`target/<profile>/deps/it-HASH` -> `target/<profile>/egressd`).
fn egressd() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = profile_dir.join("egressd");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p egressd`",
        bin.display()
    );
    bin
}

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../audit/tests/golden")
        .join(format!("{name}.jsonl"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn segment(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("audit-{seq:020}.jsonl"))
}

/// A journal of two segments holding the golden records: the first ends in a
/// torn line (a crash), the second (the newest) in an incomplete one (being
/// written). Neither may be exported.
fn golden_journal() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = GOLDEN.iter().map(|n| golden(n)).collect();
    let torn = &lines[1][..25];
    let first = format!("{}{}{}{torn}", lines[0], lines[1], lines[2]);
    std::fs::write(segment(tmp.path(), 1), first).unwrap();
    let incomplete = &lines[0][..60];
    let second = format!("{}{}{incomplete}", lines[3], lines[4]);
    std::fs::write(segment(tmp.path(), 2), second).unwrap();
    tmp
}

fn audit(dir: &Path, args: &[&str]) -> Output {
    Command::new(egressd())
        .arg("audit")
        .arg(args[0])
        .arg("--dir")
        .arg(dir)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn golden_concat(names: &[&str]) -> String {
    names.iter().map(|n| golden(n)).collect()
}

#[test]
fn jsonl_export_is_the_journal_lines_byte_for_byte() {
    let j = golden_journal();
    let o = audit(j.path(), &["export"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), golden_concat(&GOLDEN));
    // The skipped torn line is reported; progress is not (not a terminal).
    let err = stderr(&o);
    assert!(err.contains("torn"), "{err}");
    assert!(!err.contains("records read"), "{err}");
}

#[test]
fn csv_export_to_a_file_has_the_documented_columns() {
    let j = golden_journal();
    let out = j.path().join("out").join("records.csv");
    std::fs::create_dir(j.path().join("out")).unwrap();
    let o = audit(
        j.path(),
        &[
            "export",
            "--format",
            "csv",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let csv = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1 + GOLDEN.len(), "{csv}");
    assert_eq!(
        lines[0],
        "v,id,ts,runner,repository,workflow,run_id,run_attempt,job,kind,decision,enforce_would,\
reason,rule,host,host_source,dst,src,pid,comm,exe,cgroup,container,bytes_up,bytes_down,duration_ms,detail,port,count,samples"
    );
    assert_eq!(
        lines[1],
        "1,01JDQ6Z3K4ZV9Y8X7W6V5T4S3R,2026-11-26T21:58:13.123456Z,runner-7,acme/web,CI,1234567890,1,build,\
tcp,allow,,rule_allow,allow[3],github.com,sni,198.51.100.10:443,10.1.0.2:40312,4242,curl,/usr/bin/curl,\
/system.slice/runner.service,,517,4096,250,,,,"
    );
    assert_eq!(
        lines[3],
        "1,01JDQ6Z3K6BBBBBBBBBBBBBBBB,2026-11-26T21:58:15.500000Z,runner-7,acme/web,CI,1234567890,1,build,\
tcp,allow,deny,builtin_metadata,builtin:metadata,,none,169.254.169.254:80,[2001:db8::2]:40000,99,python3,,\
/ci/job-1,3f2a9c,,,,,,,"
    );
    let leftovers: Vec<_> = std::fs::read_dir(j.path().join("out")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "only the finished file remains");
}

#[test]
fn filters_select_records() {
    let j = golden_journal();
    let cases: [(&[&str], &[&str]); 6] = [
        (
            &["--decision", "deny"],
            &[
                "dns_deny",
                "event_segment_removed",
                "tcp_deny_no_job_no_process",
            ],
        ),
        (
            &["--decision", "allow"],
            &["tcp_allow_closing", "audit_mode_would_deny"],
        ),
        (&["--host", "*.EXAMPLE"], &["dns_deny"]),
        (&["--host", "2001:db8::*"], &["tcp_deny_no_job_no_process"]),
        (
            &["--repository", "acme/web"],
            &["tcp_allow_closing", "audit_mode_would_deny"],
        ),
        (
            &[
                "--since",
                "2026-11-26T21:58:15Z",
                "--until",
                "2026-11-26T22:58:17+01:00",
            ],
            &["audit_mode_would_deny", "event_segment_removed"],
        ),
    ];
    for (args, want) in cases {
        let mut full = vec!["export"];
        full.extend_from_slice(args);
        let o = audit(j.path(), &full);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stdout(&o), golden_concat(want), "{args:?}");
    }
    // Relative times count back from now; every golden record is in the past.
    let o = audit(j.path(), &["export", "--since", "0s"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), "");
    let o = audit(j.path(), &["export", "--until", "0s"]);
    assert_eq!(stdout(&o), golden_concat(&GOLDEN));
}

#[test]
fn bad_arguments_exit_2_and_say_what_to_write() {
    let j = golden_journal();
    let o = audit(j.path(), &["export", "--since", "yesterday"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("RFC 3339"), "{}", stderr(&o));
    let o = audit(j.path(), &["export", "--format", "xml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_missing_journal_exits_1_and_names_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let o = audit(&tmp.path().join("nope"), &["export"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("--dir") && err.contains("nope"), "{err}");
}

#[test]
fn a_corrupt_line_is_reported_skipped_and_fails_the_export() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "{}not a record\n{}",
        golden("dns_deny"),
        golden("event_segment_removed")
    );
    std::fs::write(segment(tmp.path(), 1), text).unwrap();
    let o = audit(tmp.path(), &["export"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        golden_concat(&["dns_deny", "event_segment_removed"])
    );
    assert!(
        stderr(&o).contains("not a valid audit record"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn summary_is_a_markdown_table() {
    let j = golden_journal();
    let o = audit(j.path(), &["summary"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = stdout(&o);
    // The closing record is not a decision; the event is not an endpoint.
    assert!(
        md.starts_with(
            "### egressd: 1 allowed, 2 denied, 3 endpoints (audit mode: 1 would have been denied)\n"
        ),
        "{md}"
    );
    // Denies first, each with why and how to allow it; then what audit mode
    // would have denied. The one allowed record is a closing record: no
    // decision, so no allowed section.
    let denied = md.find("#### Denied: 2 decisions\n").expect(&md);
    let would = md
        .find("#### Would be denied in enforce mode (audit mode let it through): 1 decision\n")
        .expect(&md);
    assert!(denied < would, "{md}");
    assert!(!md.contains("#### Allowed"), "{md}");
    assert!(
        md[denied..would].contains(
            "| evil.example | dns | 1 |  | no rule allows this name (its DNS query was refused) | add `host: \"evil.example\"` to `allow:` (YAML below) |"
        ),
        "{md}"
    );
    assert!(
        md[denied..would].contains(
            "| 2001:db8::7 | 22 | 1 |  | no host name in the connection, and no rule allows this address | add `ip: \"2001:db8::7\"` with `ports: [22]`"
        ),
        "{md}"
    );
    assert!(
        md[would..].contains(
            "| 169.254.169.254 | 80 | 1 | python3 | cloud metadata endpoint | cannot: blocked by the built-in rule `builtin:metadata` |"
        ),
        "{md}"
    );
    assert!(
        md.contains("```yaml\nallow:\n  - ip: \"2001:db8::7\"\n    ports: [22]\n  # seen in DNS queries only: add `ports:` to narrow it\n  - host: \"evil.example\"\n```"),
        "{md}"
    );
    assert!(md.contains("segment(s) were removed"), "{md}");

    let o = audit(j.path(), &["summary", "--repository", "nobody/none"]);
    assert!(stdout(&o).contains("No network decisions were recorded."));
}

/// One audit-mode record (the traffic went through; enforce would deny).
fn seen(i: u32, host: Option<&str>, dst: &str, comm: &str) -> String {
    let host = host.map_or(String::new(), |h| format!("\"host\":\"{h}\","));
    let source = if host.is_empty() { "none" } else { "sni" };
    format!(
        "{{\"v\":1,\"id\":\"01JDQ6Z3K90000000000000{i:03}\",\"ts\":\"2026-11-26T10:00:00.{i:06}Z\",\
\"runner\":\"r\",\"kind\":\"tcp\",\"decision\":\"allow\",\"enforce_would\":\"deny\",\"reason\":\"no_rule\",\
\"rule\":\"default\",{host}\"host_source\":\"{source}\",\"dst\":\"{dst}\",\"process\":{{\"comm\":\"{comm}\"}}}}\n"
    )
}

#[test]
fn suggest_prints_a_policy_that_check_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        seen(1, Some("api.example.com"), "198.51.100.1:443", "curl"),
        seen(2, Some("api.example.com"), "198.51.100.1:80", "curl"),
        seen(3, Some("a.cdn.example.net"), "198.51.100.2:443", "git"),
        seen(4, Some("b.cdn.example.net"), "198.51.100.3:443", "git"),
        seen(5, Some("c.cdn.example.net"), "198.51.100.4:443", "git"),
        seen(6, None, "198.51.100.9:22", "ssh"),
        seen(7, None, "[2001:db8::9]:5432", "psql"),
    ];
    std::fs::write(segment(tmp.path(), 1), lines.concat()).unwrap();
    let o = audit(tmp.path(), &["suggest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let yaml = stdout(&o);
    assert!(
        yaml.contains("  - host: \"api.example.com\"\n    ports: [80, 443]\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("  - host: \"*.cdn.example.net\"\n    ports: [443]\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("  - ip: \"198.51.100.9\"\n    ports: [22]\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("  - ip: \"2001:db8::9\"\n    ports: [5432]\n"),
        "{yaml}"
    );

    let policy = tmp.path().join("suggested.yaml");
    std::fs::write(&policy, &yaml).unwrap();
    let check = Command::new(egressd())
        .arg("check")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "egressd check refused the suggestion:\n{}\n{yaml}",
        stderr(&check)
    );
}
