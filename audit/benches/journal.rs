//! Journal throughput: records per second sustained through the real writer
//! thread with batched `fdatasync` (200 ms interval, the default), in wall
//! time and in CPU time of the process, and the cost of reading them back.
//! Bytes per record are printed once at start.
//!
//! Run: `cargo bench -p egressd-audit --bench journal`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use egressd_audit::journal::{Journal, JournalConfig};
use egressd_audit::{HostSource, JobTags, Kind, Process, Record, reader};
use egressd_policy::{Decision, Reason, RuleId, RuleList, Verdict};

/// Records per measured batch.
const BATCH: u64 = 100_000;

/// A typical record: an allowed TLS connection in a job, with its process.
fn typical() -> Record {
    let d = Decision::enforce(
        Verdict::Allow,
        Reason::RuleAllow,
        RuleId::Base {
            list: RuleList::Allow,
            index: 3,
        },
    );
    let mut r = Record::new("gh-runner-ubuntu-24-04-x64-017", Kind::Tcp, &d);
    r.job = Some(
        JobTags {
            repository: Some("acme/web-frontend".into()),
            workflow: Some("CI".into()),
            run_id: Some("11873465201".into()),
            run_attempt: Some("1".into()),
            job: Some("build".into()),
        }
        .into(),
    );
    r.host = Some("objects.githubusercontent.com".into());
    r.host_source = HostSource::Sni;
    r.dst = Some("198.51.100.133:443".parse().expect("valid address"));
    r.src = Some("10.1.0.2:51234".parse().expect("valid address"));
    r.process = Some(
        Process {
            pid: Some(48213),
            comm: Some("git-remote-http".into()),
            exe: Some("/usr/lib/git-core/git-remote-http".into()),
            cgroup: Some("/system.slice/actions.runner.service".into()),
            container: None,
        }
        .into(),
    );
    r
}

fn bench(c: &mut Criterion) {
    let sample = typical();
    let line = serde_json::to_string(&sample).expect("serialisable");
    eprintln!(
        "bytes per record (typical, with job and process): {}",
        line.len() + 1
    );
    let mut minimal = Record::new(
        "runner",
        Kind::Dns,
        &Decision::engine_deny(Reason::DnsRefused),
    );
    minimal.host = Some("example.com".into());
    let min_len = serde_json::to_string(&minimal).expect("serialisable").len() + 1;
    eprintln!("bytes per record (DNS deny, no job or process): {min_len}");

    // The journal's line writer against serde_json on the same record.
    let mut lines = c.benchmark_group("record_line");
    let mut buf = Vec::with_capacity(1024);
    lines.bench_function("serde_json", |b| {
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, std::hint::black_box(&sample)).expect("serialisable");
        })
    });
    lines.bench_function("json_line", |b| {
        b.iter(|| {
            buf.clear();
            egressd_audit::json_line::write(std::hint::black_box(&sample), &mut buf);
        })
    });
    lines.finish();

    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("journal");
    let cfg = JournalConfig {
        max_total_bytes: 512 << 20,
        ..JournalConfig::new(&dir)
    };
    let journal = Journal::open(cfg).expect("journal opens");

    let mut g = c.benchmark_group("journal");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(BATCH));
    // One producer thread appending as fast as it can; the writer thread
    // serialises, writes and syncs. Timed until the last record is synced.
    g.bench_function("append_100k_then_flush", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let records: Vec<Record> = (0..BATCH).map(|_| typical()).collect();
                let start = Instant::now();
                for r in records {
                    journal.append_blocking(r).expect("append");
                }
                journal.flush_blocking().expect("flush");
                total += start.elapsed();
            }
            total
        });
    });
    // The same work, measured in CPU time of the whole process (producer and
    // writer thread together): records per CPU-second is the "one core"
    // figure, and it does not depend on how busy the machine is.
    g.bench_function("append_100k_then_flush_cpu_time", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let records: Vec<Record> = (0..BATCH).map(|_| typical()).collect();
                let start = process_cpu_time();
                for r in records {
                    journal.append_blocking(r).expect("append");
                }
                journal.flush_blocking().expect("flush");
                total += process_cpu_time().saturating_sub(start);
            }
            total
        });
    });
    g.finish();
    journal.close_blocking().expect("close");

    let mut g = c.benchmark_group("reader");
    g.sample_size(10);
    let n = reader::read_dir(&dir).expect("readable").count() as u64;
    g.throughput(Throughput::Elements(n));
    g.bench_function("read_dir_parse_all", |b| {
        b.iter(|| {
            let mut count = 0u64;
            for r in reader::read_dir(&dir).expect("readable") {
                black_box(r.expect("valid record"));
                count += 1;
            }
            count
        });
    });
    g.finish();
}

/// User plus system CPU time of this process so far, from `/proc/self/stat`
/// (in clock ticks of 10 ms; batches take far longer than that).
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse::<u64>().expect("numeric tick count"))
        .sum();
    Duration::from_millis(ticks * 10)
}

criterion_group!(benches, bench);
criterion_main!(benches);
