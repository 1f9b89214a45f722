//! Golden records: the exact bytes a record serialises to are a public
//! interface (schema v1). Each file in `tests/golden/` is one journal line;
//! the record built here must serialise to exactly that line and the line
//! must parse back to exactly this record.

use std::path::PathBuf;

use egressd_audit::{HostSource, JobTags, Kind, Process, Record, SCHEMA_VERSION};
use egressd_policy::{AddrClass, Reason, Verdict};

fn base(id: &str, ts: &str, kind: Kind, decision: Verdict, reason: Reason, rule: &str) -> Record {
    Record {
        v: SCHEMA_VERSION,
        id: id.parse().unwrap(),
        ts: ts.parse().unwrap(),
        runner: "runner-7".into(),
        job: None,
        kind,
        decision,
        enforce_would: None,
        reason,
        rule: rule.into(),
        host: None,
        host_source: HostSource::None,
        dst: None,
        port: None,
        src: None,
        process: None,
        bytes_up: None,
        bytes_down: None,
        duration_ms: None,
        count: None,
        samples: None,
        detail: None,
    }
}

fn job() -> JobTags {
    JobTags {
        repository: Some("acme/web".into()),
        workflow: Some("CI".into()),
        run_id: Some("1234567890".into()),
        run_attempt: Some("1".into()),
        job: Some("build".into()),
    }
}

fn curl() -> Process {
    Process {
        pid: Some(4242),
        comm: Some("curl".into()),
        exe: Some("/usr/bin/curl".into()),
        cgroup: Some("/system.slice/runner.service".into()),
        container: None,
    }
}

fn cases() -> Vec<(&'static str, Record)> {
    let mut tcp_closing = base(
        "01JDQ6Z3K4ZV9Y8X7W6V5T4S3R",
        "2026-11-26T21:58:13.123456Z",
        Kind::Tcp,
        Verdict::Allow,
        Reason::RuleAllow,
        "allow[3]",
    );
    tcp_closing.job = Some(job().into());
    tcp_closing.host = Some("github.com".into());
    tcp_closing.host_source = HostSource::Sni;
    tcp_closing.dst = Some("198.51.100.10:443".parse().unwrap());
    tcp_closing.src = Some("10.1.0.2:40312".parse().unwrap());
    tcp_closing.process = Some(curl().into());
    tcp_closing.bytes_up = Some(517);
    tcp_closing.bytes_down = Some(4096);
    tcp_closing.duration_ms = Some(250);

    let mut dns_deny = base(
        "01JDQ6Z3K5AAAAAAAAAAAAAAAA",
        "2026-11-26T21:58:14.000001Z",
        Kind::Dns,
        Verdict::Deny,
        Reason::DnsRefused,
        "default",
    );
    dns_deny.host = Some("evil.example".into());
    dns_deny.host_source = HostSource::DnsQuery;
    dns_deny.dst = Some("127.0.0.53:53".parse().unwrap());
    dns_deny.src = Some("10.1.0.2:53211".parse().unwrap());

    let mut audit_mode = base(
        "01JDQ6Z3K6BBBBBBBBBBBBBBBB",
        "2026-11-26T21:58:15.500000Z",
        Kind::Tcp,
        Verdict::Allow,
        Reason::BuiltinMetadata,
        &egressd_policy::RuleId::Builtin(AddrClass::Metadata).to_string(),
    );
    audit_mode.enforce_would = Some(Verdict::Deny);
    audit_mode.job = Some(job().into());
    audit_mode.dst = Some("169.254.169.254:80".parse().unwrap());
    audit_mode.src = Some("[2001:db8::2]:40000".parse().unwrap());
    audit_mode.process = Some(
        Process {
            pid: Some(99),
            comm: Some("python3".into()),
            exe: None,
            cgroup: Some("/ci/job-1".into()),
            container: Some("3f2a9c".into()),
        }
        .into(),
    );

    let mut event = base(
        "01JDQ6Z3K7CCCCCCCCCCCCCCCC",
        "2026-11-26T21:58:16.000000Z",
        Kind::Event,
        Verdict::Deny,
        Reason::JournalSegmentRemoved,
        "engine",
    );
    event.detail = Some(
        "removed audit-00000000000000000001.jsonl (16777216 bytes): the journal in /var/lib/egressd/audit went over its size budget of 1073741824 bytes (set with --audit-max-size)".into(),
    );

    let mut ipv6_no_name = base(
        "01JDQ6Z3K8DDDDDDDDDDDDDDDD",
        "2026-11-26T21:58:17.999999Z",
        Kind::Tcp,
        Verdict::Deny,
        Reason::NoSni,
        "default",
    );
    ipv6_no_name.dst = Some("[2001:db8::7]:22".parse().unwrap());

    // A name denied before any address was dialled (`CONNECT name:443`): no
    // `dst`, the port asked for in `port`.
    let mut name_denied = base(
        "01JDQ6Z3K9EEEEEEEEEEEEEEEE",
        "2026-11-26T21:58:18.250000Z",
        Kind::Tcp,
        Verdict::Deny,
        Reason::NoRule,
        "default",
    );
    name_denied.host = Some("n0.many.test".into());
    name_denied.host_source = HostSource::Connect;
    name_denied.port = Some(443);
    name_denied.src = Some("127.0.0.1:40100".parse().unwrap());

    // A counted record: 118 more denies like the first ones, in one interval.
    let mut dns_counted = base(
        "01JDQ6Z3KAFFFFFFFFFFFFFFFF",
        "2026-11-26T21:58:19.000000Z",
        Kind::Dns,
        Verdict::Deny,
        Reason::DnsRefused,
        "default",
    );
    dns_counted.host = Some("evil.example".into());
    dns_counted.host_source = HostSource::DnsQuery;
    dns_counted.src = Some("10.1.0.2:53211".parse().unwrap());
    dns_counted.count = Some(118);
    dns_counted.samples = Some(vec!["a1.evil.example".into(), "b2.evil.example".into()]);
    dns_counted.detail =
        Some("118 more decisions like this from 2026-11-26T21:58:18.000000Z".into());

    vec![
        ("dns_deny_counted", dns_counted),
        ("tcp_allow_closing", tcp_closing),
        ("tcp_deny_name_port_only", name_denied),
        ("dns_deny", dns_deny),
        ("audit_mode_would_deny", audit_mode),
        ("event_segment_removed", event),
        ("tcp_deny_no_job_no_process", ipv6_no_name),
    ]
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.jsonl"))
}

#[test]
fn records_serialise_to_the_golden_lines() {
    for (name, rec) in cases() {
        let want = std::fs::read_to_string(golden_path(name)).unwrap();
        let got = format!("{}\n", serde_json::to_string(&rec).unwrap());
        assert_eq!(
            got, want,
            "{name}: serialisation changed; that is a schema change"
        );
    }
}

#[test]
fn golden_lines_parse_back_to_the_same_records() {
    for (name, rec) in cases() {
        let line = std::fs::read_to_string(golden_path(name)).unwrap();
        let parsed: Record = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(parsed, rec, "{name}");
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            line.trim_end(),
            "{name}"
        );
    }
}

#[test]
fn other_schema_versions_are_refused() {
    let line = std::fs::read_to_string(golden_path("dns_deny")).unwrap();
    let v2 = line.replacen("{\"v\":1,", "{\"v\":2,", 1);
    let err = serde_json::from_str::<Record>(&v2).unwrap_err().to_string();
    assert!(err.contains("schema version 2 is not supported"), "{err}");
}

#[test]
fn fresh_records_round_trip_exactly() {
    // `Record::new` keeps microseconds only, so what is read back is equal.
    let rec = crate::records::numbered(1);
    let line = serde_json::to_string(&rec).unwrap();
    assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), rec);
}
