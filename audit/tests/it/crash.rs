//! kill -9 a writer mid-stream, then prove that every record it was told was
//! flushed is on disk, that ids are unique, and that nothing else (no torn
//! line, no garbage) comes back. The writer is this test binary re-run with
//! [`CHILD_DIR`] set, executing only [`child_writer`].

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use egressd_audit::export::{Format, Writer};
use egressd_audit::journal::{Journal, JournalConfig};
use egressd_audit::reader::Position;
use egressd_audit::{reader, segment};

use crate::records::{number_of, numbered};

/// Set in the child's environment: the journal directory to write to.
const CHILD_DIR: &str = "EGRESSD_AUDIT_CRASH_CHILD_DIR";
/// Acknowledged records the parent waits for before killing the child.
const KILL_AFTER_ACKS: usize = 3000;
/// Upper bound on what the child writes if nobody kills it.
const CHILD_LIMIT: u64 = 2_000_000;

/// Kills the child even when an assertion fails first.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's side; does nothing in a normal test run. It appends
/// continuously, flushes every 64 records, and after each flush has returned
/// prints `ACK <id>` for each record of that batch.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = JournalConfig {
            segment_bytes: 64 << 10,
            max_total_bytes: 1 << 40,
            flush_interval: Duration::from_millis(5),
            queue_capacity: 1024,
            ..JournalConfig::new(dir)
        };
        let j = Journal::open(cfg).unwrap();
        let mut batch = Vec::with_capacity(64);
        let mut out = std::io::stdout().lock();
        for n in 0..CHILD_LIMIT {
            let rec = numbered(n);
            batch.push(rec.id);
            j.append(rec).await.unwrap();
            if batch.len() == 64 {
                j.flush().await.unwrap();
                let mut text = String::new();
                for id in batch.drain(..) {
                    text.push_str(&format!("ACK {id}\n"));
                }
                out.write_all(text.as_bytes()).unwrap();
                out.flush().unwrap();
            }
        }
    });
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "--exact",
            "crash::child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout);

    let mut acked: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut killed = false;
    loop {
        buf.clear();
        let n = lines.read_line(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        // Only whole lines count: the kill may cut the last one short.
        if let Some(id) = buf.strip_prefix("ACK ").and_then(|s| s.strip_suffix('\n')) {
            acked.push(id.to_owned());
        }
        if !killed && acked.len() >= KILL_AFTER_ACKS {
            // SIGKILL, while the child is appending the next records.
            child.0.kill().unwrap();
            killed = true;
        }
    }
    let status = child.0.wait().unwrap();
    assert!(killed, "the child ended before it was killed: {status:?}");
    assert!(!status.success());

    // Everything read back is a whole record written by the child.
    let mut ids = HashSet::new();
    let mut nums = Vec::new();
    for item in reader::read_dir(tmp.path()).unwrap() {
        let rec = item.unwrap();
        assert_eq!(rec.runner, "test-runner");
        nums.push(number_of(&rec).unwrap());
        assert!(ids.insert(rec.id.to_string()), "duplicate id {}", rec.id);
    }
    for id in &acked {
        assert!(ids.contains(id), "acknowledged record {id} is missing");
    }
    // The journal is append-only and the child wrote in order.
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "records out of order or missing in between"
    );
    assert!(
        segment::list(tmp.path()).unwrap().len() > 1,
        "the test should span several segments"
    );

    // Export gives back exactly the complete lines on disk, in both formats.
    let mut on_disk = Vec::new();
    for seg in segment::list(tmp.path()).unwrap() {
        let bytes = std::fs::read(segment::path(tmp.path(), seg.seq)).unwrap();
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        on_disk.extend_from_slice(&bytes[..complete]);
    }
    assert_eq!(export_all(tmp.path(), Format::Jsonl), on_disk);
    let csv = String::from_utf8(export_all(tmp.path(), Format::Csv)).unwrap();
    assert_eq!(csv.lines().count(), nums.len() + 1);

    // A new journal after the crash seals the crashed segment: a torn tail
    // there is skipped, and the new record follows the old ones.
    let before = nums.len();
    let j = Journal::open(JournalConfig::new(tmp.path())).unwrap();
    let mut last = numbered(u64::MAX);
    last.detail = Some("after crash".into());
    j.append_blocking(last).unwrap();
    j.close_blocking().unwrap();
    let after: Vec<_> = reader::read_dir(tmp.path())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(after.len(), before + 1);
    assert_eq!(after[before].detail.as_deref(), Some("after crash"));
}

fn export_all(dir: &std::path::Path, format: Format) -> Vec<u8> {
    let mut w = Writer::new(format, Vec::new()).unwrap();
    for raw in reader::read_raw(dir, Position::default()).unwrap() {
        w.write(&raw.unwrap()).unwrap();
    }
    w.finish().unwrap()
}
