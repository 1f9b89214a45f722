//! The journal's JSON line for a [`Record`], written straight into the
//! journal's buffer: byte for byte what `serde_json` writes for the record's
//! `Serialize` (the schema's one form), without serde's per-field machinery.
//! The journal writes one line per decision, so on the DNS path this ran
//! once per query and was the largest item of the journal thread.
//!
//! Held to `serde_json` by a property test over every field (each
//! generated, `None` or not, strings with quotes, control characters and
//! non-ASCII text); a new `Record` field fails to compile in that test until
//! it is generated there and written here.

use std::io::Write as _;
use std::net::SocketAddr;

use crate::record::{JobTags, Process, Record};

/// Appends `rec` as one compact JSON object (no newline) to `out`.
pub fn write(rec: &Record, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"v\":");
    number(out, rec.v);
    let mut id = [0u8; ulid::ULID_LEN];
    name(out, b",\"id\":", rec.id.array_to_str(&mut id));
    out.extend_from_slice(b",\"ts\":\"");
    crate::time_format::print(&rec.ts, out);
    out.push(b'"');
    text(out, b",\"runner\":", Some(&rec.runner));
    if let Some(job) = &rec.job {
        out.extend_from_slice(b",\"job\":");
        job_tags(out, job);
    }
    name(out, b",\"kind\":", rec.kind.as_str());
    name(out, b",\"decision\":", rec.decision.as_str());
    if let Some(v) = rec.enforce_would {
        name(out, b",\"enforce_would\":", v.as_str());
    }
    name(out, b",\"reason\":", rec.reason.as_str());
    text(out, b",\"rule\":", Some(&rec.rule));
    text(out, b",\"host\":", rec.host.as_deref());
    name(out, b",\"host_source\":", rec.host_source.as_str());
    if let Some(a) = &rec.dst {
        out.extend_from_slice(b",\"dst\":");
        addr(out, a);
    }
    if let Some(p) = rec.port {
        out.extend_from_slice(b",\"port\":");
        number(out, p);
    }
    if let Some(a) = &rec.src {
        out.extend_from_slice(b",\"src\":");
        addr(out, a);
    }
    if let Some(p) = &rec.process {
        out.extend_from_slice(b",\"process\":");
        process(out, p);
    }
    for (key, value) in [
        (&b",\"bytes_up\":"[..], rec.bytes_up),
        (b",\"bytes_down\":", rec.bytes_down),
        (b",\"duration_ms\":", rec.duration_ms),
    ] {
        if let Some(v) = value {
            out.extend_from_slice(key);
            number(out, v);
        }
    }
    if let Some(n) = rec.count {
        out.extend_from_slice(b",\"count\":");
        number(out, n);
    }
    if let Some(samples) = &rec.samples {
        out.extend_from_slice(b",\"samples\":[");
        for (i, s) in samples.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, s);
        }
        out.push(b']');
    }
    text(out, b",\"detail\":", rec.detail.as_deref());
    out.push(b'}');
}

/// `key` and `value` quoted, unescaped: ids, codes and names that are
/// letters, digits and `_` only.
fn name(out: &mut Vec<u8>, key: &[u8], value: &str) {
    out.extend_from_slice(key);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `key` and `value` as a JSON string; nothing when `value` is `None`.
fn text(out: &mut Vec<u8>, key: &[u8], value: Option<&str>) {
    if let Some(v) = value {
        out.extend_from_slice(key);
        string(out, v);
    }
}

/// An object of `pid` (a process's only number, its first field) and the
/// `Some` ones of `fields`, in order (`{}` when none is).
fn object(out: &mut Vec<u8>, pid: Option<u32>, fields: &[(&str, Option<&str>)]) {
    out.push(b'{');
    let mut first = true;
    if let Some(pid) = pid {
        out.extend_from_slice(b"\"pid\":");
        number(out, pid);
        first = false;
    }
    for (key, value) in fields {
        if let Some(v) = value {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":");
            string(out, v);
        }
    }
    out.push(b'}');
}

fn job_tags(out: &mut Vec<u8>, j: &JobTags) {
    let fields = [
        ("repository", j.repository.as_deref()),
        ("workflow", j.workflow.as_deref()),
        ("run_id", j.run_id.as_deref()),
        ("run_attempt", j.run_attempt.as_deref()),
        ("job", j.job.as_deref()),
    ];
    object(out, None, &fields);
}

fn process(out: &mut Vec<u8>, p: &Process) {
    let fields = [
        ("comm", p.comm.as_deref()),
        ("exe", p.exe.as_deref()),
        ("cgroup", p.cgroup.as_deref()),
        ("container", p.container.as_deref()),
    ];
    object(out, p.pid, &fields);
}

/// `ip:port` as a JSON string (digits, dots, colons, brackets, `%`: nothing
/// to escape).
fn addr(out: &mut Vec<u8>, a: &SocketAddr) {
    out.push(b'"');
    match a {
        SocketAddr::V4(v4) => crate::addr_format::append_v4(v4, out),
        SocketAddr::V6(_) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{a}");
        }
    }
    out.push(b'"');
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `s` as a JSON string, escaped as `serde_json` escapes: `"` and `\`, the
/// short forms `\b \t \n \f \r`, `\u00XX` (lowercase hex) for the other
/// control characters; everything else as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.push(b'\\');
            out.push(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
    use std::sync::Arc;

    use egressd_policy::{Reason, Verdict};

    use crate::record::{HostSource, Kind};
    use proptest::prelude::*;

    use super::*;

    /// Text with what JSON escapes (quotes, backslashes, every control
    /// character), plain ASCII and non-ASCII characters.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9./_-]{0,12}",
            "[\\x00-\\x1f\"\\\\\\x7f a-zé€😀]{0,16}",
            any::<String>(),
        ]
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(text())
    }

    fn addr() -> impl Strategy<Value = Option<SocketAddr>> {
        proptest::option::of(prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
            (any::<[u8; 16]>(), any::<u16>(), any::<u32>()).prop_map(|(ip, port, scope)| {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope % 3))
            }),
        ])
    }

    fn verdict() -> impl Strategy<Value = Verdict> {
        prop_oneof![Just(Verdict::Allow), Just(Verdict::Deny)]
    }

    fn job() -> impl Strategy<Value = Option<Arc<JobTags>>> {
        proptest::option::of(
            (opt_text(), opt_text(), opt_text(), opt_text(), opt_text()).prop_map(
                |(repository, workflow, run_id, run_attempt, job)| {
                    Arc::new(JobTags {
                        repository,
                        workflow,
                        run_id,
                        run_attempt,
                        job,
                    })
                },
            ),
        )
    }

    fn process() -> impl Strategy<Value = Option<Box<Process>>> {
        proptest::option::of(
            (
                proptest::option::of(any::<u32>()),
                opt_text(),
                opt_text(),
                opt_text(),
                opt_text(),
            )
                .prop_map(|(pid, comm, exe, cgroup, container)| {
                    Box::new(Process {
                        pid,
                        comm,
                        exe,
                        cgroup,
                        container,
                    })
                }),
        )
    }

    fn record() -> impl Strategy<Value = Record> {
        let head = (
            any::<u8>(),
            any::<u128>(),
            // Microsecond timestamps across years 1 to 9999.
            -62_135_596_800_000_000i64..253_402_300_799_000_000,
            text(),
            job(),
            proptest::sample::select(Kind::ALL.to_vec()),
            verdict(),
            proptest::option::of(verdict()),
            proptest::sample::select(Reason::ALL.to_vec()),
            text(),
        );
        let tail = (
            opt_text(),
            proptest::sample::select(HostSource::ALL.to_vec()),
            addr(),
            proptest::option::of(any::<u16>()),
            addr(),
            process(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u64>()),
            proptest::option::of(proptest::collection::vec(text(), 0..4)),
            opt_text(),
        );
        (head, tail).prop_map(
            |(
                (v, id, micros, runner, job, kind, decision, enforce_would, reason, rule),
                (
                    host,
                    host_source,
                    dst,
                    port,
                    src,
                    process,
                    bytes_up,
                    bytes_down,
                    duration_ms,
                    count,
                    samples,
                    detail,
                ),
            )| Record {
                v,
                id: ulid::Ulid(id),
                ts: jiff::Timestamp::from_microsecond(micros).expect("in range"),
                runner,
                job,
                kind,
                decision,
                enforce_would,
                reason,
                rule,
                host,
                host_source,
                dst,
                port,
                src,
                process,
                bytes_up,
                bytes_down,
                duration_ms,
                count,
                samples,
                detail,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn every_record_is_written_as_serde_json_writes_it(rec in record()) {
            let mut ours = Vec::new();
            write(&rec, &mut ours);
            let serde = serde_json::to_vec(&rec).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&serde));
        }
    }

    #[test]
    fn every_control_character_and_escape_matches_serde_json() {
        let all: String = (0u8..0x80).map(char::from).chain("é€😀".chars()).collect();
        let mut ours = Vec::new();
        string(&mut ours, &all);
        assert_eq!(ours, serde_json::to_vec(&all).unwrap());
    }

    #[test]
    fn a_process_with_only_a_pid_or_nothing_is_written_as_serde_does() {
        for p in [
            Process {
                pid: Some(7),
                ..Process::default()
            },
            Process::default(),
            Process {
                pid: Some(7),
                comm: Some("curl".into()),
                ..Process::default()
            },
        ] {
            let mut ours = Vec::new();
            super::process(&mut ours, &p);
            assert_eq!(ours, serde_json::to_vec(&p).unwrap());
        }
    }
}
