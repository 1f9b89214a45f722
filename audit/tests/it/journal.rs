//! The journal: flush durability, back-pressure, close, the directory lock,
//! reopening, and size-bounded rotation that records its own removals and
//! keeps what the shipper has not delivered up to a hard bound.

use std::collections::BTreeSet;
use std::time::Duration;

use egressd_audit::journal::{Journal, JournalConfig, JournalError, UNSHIPPED_FACTOR};
use egressd_audit::{Kind, Position, Record, reader, segment, ship};
use egressd_policy::Reason;

use crate::records::{number_of, numbered};

fn small(dir: &std::path::Path) -> JournalConfig {
    JournalConfig {
        segment_bytes: 4096,
        max_total_bytes: 1 << 30,
        flush_interval: Duration::from_millis(20),
        queue_capacity: 16,
        ..JournalConfig::new(dir)
    }
}

fn numbers(dir: &std::path::Path) -> Vec<u64> {
    reader::read_dir(dir)
        .unwrap()
        .map(|r| r.unwrap())
        .filter_map(|r| number_of(&r))
        .collect()
}

#[tokio::test]
async fn flushed_records_are_on_disk_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(small(tmp.path())).unwrap();
    for n in 0..100 {
        j.append(numbered(n)).await.unwrap();
    }
    j.flush().await.unwrap();
    assert_eq!(numbers(tmp.path()), (0..100).collect::<Vec<_>>());
    j.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_waits_and_drops_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        queue_capacity: 1,
        ..small(tmp.path())
    };
    let j = Journal::open(cfg).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..250 {
                j.append(numbered(t * 1000 + n)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    j.close().await.unwrap();
    let got: BTreeSet<u64> = numbers(tmp.path()).into_iter().collect();
    let want: BTreeSet<u64> = (0..8u64)
        .flat_map(|t| (0..250).map(move |n| t * 1000 + n))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn blocking_callers_work_too() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(small(tmp.path())).unwrap();
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    j.append_blocking(numbered(t * 100 + n)).unwrap();
                }
                j.flush_blocking().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(numbers(tmp.path()).len(), 200);
    j.close_blocking().unwrap();
}

#[tokio::test]
async fn close_writes_everything_then_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(small(tmp.path())).unwrap();
    let other = j.clone();
    for n in 0..10 {
        j.append(numbered(n)).await.unwrap();
    }
    j.close().await.unwrap();
    assert_eq!(numbers(tmp.path()).len(), 10);
    assert!(matches!(
        other.append(numbered(99)).await,
        Err(JournalError::Closed)
    ));
    assert!(matches!(other.flush().await, Err(JournalError::Closed)));
    other.close().await.unwrap();
}

#[tokio::test]
async fn one_writer_per_directory_and_reopen_starts_a_new_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::open(small(tmp.path())).unwrap();
    let second = Journal::open(small(tmp.path()));
    assert!(
        matches!(second, Err(JournalError::Locked { .. })),
        "{second:?}"
    );
    j.append(numbered(1)).await.unwrap();
    j.close().await.unwrap();
    // Closing released the lock.
    let j = Journal::open(small(tmp.path())).unwrap();
    j.append(numbered(2)).await.unwrap();
    j.close().await.unwrap();
    let seqs: Vec<u64> = segment::list(tmp.path())
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(numbers(tmp.path()), [1, 2]);
}

#[test]
fn invalid_configuration_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for cfg in [
        JournalConfig {
            segment_bytes: 0,
            ..small(tmp.path())
        },
        JournalConfig {
            max_total_bytes: 10,
            ..small(tmp.path())
        },
        JournalConfig {
            queue_capacity: 0,
            ..small(tmp.path())
        },
        JournalConfig {
            flush_interval: Duration::ZERO,
            ..small(tmp.path())
        },
    ] {
        assert!(matches!(Journal::open(cfg), Err(JournalError::Config(_))));
    }
}

#[tokio::test]
async fn rotation_removes_oldest_first_and_records_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 2048,
        max_total_bytes: 8192,
        ..small(tmp.path())
    };
    let j = Journal::open(cfg).unwrap();
    let total = 300;
    for n in 0..total {
        j.append(numbered(n)).await.unwrap();
    }
    j.close().await.unwrap();

    let listed = segment::list(tmp.path()).unwrap();
    let seqs: Vec<u64> = listed.iter().map(|l| l.seq).collect();
    assert!(
        seqs.len() > 1 && seqs[0] > 1,
        "old segments must be gone: {seqs:?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "only the newest remain: {seqs:?}"
    );
    let size: u64 = listed.iter().map(|l| l.len).sum();
    assert!(size <= 8192, "over the bound: {size}");

    let recs: Vec<_> = reader::read_dir(tmp.path())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    // What survives is the newest records, in order, without a gap.
    let nums: Vec<u64> = recs.iter().filter_map(number_of).collect();
    let first = nums[0];
    assert_eq!(nums, (first..total).collect::<Vec<_>>());
    // Each removal is an event naming an older segment.
    let removals: Vec<_> = recs
        .iter()
        .filter(|r| r.kind == Kind::Event && r.reason == Reason::JournalSegmentRemoved)
        .collect();
    assert!(!removals.is_empty());
    for r in removals {
        assert_eq!(r.runner, "test-runner");
        let detail = r.detail.as_deref().unwrap();
        let name = detail
            .strip_prefix("removed ")
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let seq = segment::parse_name(name).unwrap();
        assert!(seq < seqs[0], "{detail}");
    }
}

#[test]
fn a_reader_following_the_writer_sees_every_record_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 8192,
        flush_interval: Duration::from_millis(1),
        ..small(tmp.path())
    };
    let j = Journal::open(cfg).unwrap();
    let total = 5000u64;
    let writer = {
        let j = j.clone();
        std::thread::spawn(move || {
            for n in 0..total {
                j.append_blocking(numbered(n)).unwrap();
            }
            j.close_blocking().unwrap();
        })
    };
    // Follow like the shipper does: read from the checkpoint until nothing
    // new, then again; every pass ends cleanly at the writer's position.
    let mut checkpoint = reader::Position::default();
    let mut seen = Vec::new();
    let mut writer = Some(writer);
    loop {
        let finished = writer.as_ref().is_some_and(|w| w.is_finished());
        for item in reader::read_from(tmp.path(), checkpoint).unwrap() {
            let (pos, rec) = item.unwrap();
            assert!(pos > checkpoint);
            checkpoint = pos;
            seen.push(number_of(&rec).unwrap());
        }
        if finished {
            writer.take().unwrap().join().unwrap();
            // One last pass after the writer is done.
            for item in reader::read_from(tmp.path(), checkpoint).unwrap() {
                seen.push(number_of(&item.unwrap().1).unwrap());
            }
            break;
        }
        std::thread::yield_now();
    }
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
}

#[test]
fn handles_can_be_shared_across_threads_and_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<Journal>();
}

/// The `journal_segment_removed` events in `dir`: (removed segment, detail).
fn removals(recs: &[Record]) -> Vec<(u64, String)> {
    recs.iter()
        .filter(|r| r.kind == Kind::Event && r.reason == Reason::JournalSegmentRemoved)
        .map(|r| {
            let detail = r.detail.clone().unwrap();
            let name = detail
                .strip_prefix("removed ")
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            (segment::parse_name(name).unwrap(), detail)
        })
        .collect()
}

/// The number in "with N records not yet shipped", if the detail says so.
fn unshipped_count(detail: &str) -> Option<u64> {
    let (_, rest) = detail.split_once(" with ")?;
    rest.split_once(" records not yet shipped")?.0.parse().ok()
}

#[tokio::test]
async fn unshipped_segments_are_kept_up_to_the_hard_bound_and_losses_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // Segment 1: ten records, of which the shipper acknowledged four.
    let j = Journal::open(small(tmp.path())).unwrap();
    for n in 0..10 {
        j.append(numbered(n)).await.unwrap();
    }
    j.close().await.unwrap();
    let first: Vec<_> = reader::read_raw(tmp.path(), Position::default())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(first.len(), 10);
    ship::write_checkpoint(tmp.path(), first[3].end).unwrap();

    // An outage: records are written until the hard bound has removed
    // three segments (few enough that every removal event is still on disk).
    let (segment_bytes, max_total) = (2048, 8192);
    let cfg = JournalConfig {
        segment_bytes,
        max_total_bytes: max_total,
        ..small(tmp.path())
    };
    let j = Journal::open(cfg).unwrap();
    let mut total = 10;
    let mut max_seen = 0;
    while segment::list(tmp.path()).unwrap()[0].seq < 4 {
        assert!(total < 5000, "the hard bound never removed anything");
        j.append(numbered(total)).await.unwrap();
        j.flush().await.unwrap();
        total += 1;
        let size: u64 = segment::list(tmp.path())
            .unwrap()
            .iter()
            .map(|l| l.len)
            .sum();
        max_seen = max_seen.max(size);
    }
    j.close().await.unwrap();

    let listed = segment::list(tmp.path()).unwrap();
    let seqs: Vec<u64> = listed.iter().map(|l| l.seq).collect();
    let hard = max_total * UNSHIPPED_FACTOR;
    assert!(max_seen <= hard, "over the hard bound: {max_seen}");
    assert!(
        max_seen > max_total + segment_bytes,
        "unshipped segments are kept past max_total_bytes: {max_seen}"
    );

    let recs: Vec<Record> = reader::read_dir(tmp.path())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let removed = removals(&recs);
    assert_eq!(
        removed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..seqs[0]).collect::<Vec<_>>(),
        "one event per removed segment, in order"
    );
    let mut counted = 0;
    for (seq, detail) in &removed {
        let n =
            unshipped_count(detail).unwrap_or_else(|| panic!("no unshipped count in {detail:?}"));
        assert!(detail.contains("(set with --audit-max-size)"), "{detail}");
        if *seq == 1 {
            assert_eq!(n, 6, "segment 1 held six unshipped records: {detail}");
        }
        counted += n;
    }
    // Every line ever written (the records and one event per removal) is
    // still there, was shipped (four), or is counted in a removal event.
    let written = total + removed.len() as u64;
    assert_eq!(
        counted,
        written - 4 - recs.len() as u64,
        "records lost without being counted"
    );
    // What survives is the newest records, in order, without a gap.
    let nums: Vec<u64> = recs.iter().filter_map(number_of).collect();
    assert_eq!(nums, (nums[0]..total).collect::<Vec<_>>());
}

#[tokio::test]
async fn shipped_segments_are_removed_at_the_normal_bound() {
    let tmp = tempfile::tempdir().unwrap();
    // A checkpoint past everything: all shipped.
    ship::write_checkpoint(
        tmp.path(),
        Position {
            segment: u64::MAX,
            offset: 0,
        },
    )
    .unwrap();
    let cfg = JournalConfig {
        segment_bytes: 2048,
        max_total_bytes: 8192,
        ..small(tmp.path())
    };
    let j = Journal::open(cfg).unwrap();
    for n in 0..300 {
        j.append(numbered(n)).await.unwrap();
    }
    j.close().await.unwrap();
    let size: u64 = segment::list(tmp.path())
        .unwrap()
        .iter()
        .map(|l| l.len)
        .sum();
    assert!(size <= 8192, "over the bound: {size}");
    let recs: Vec<Record> = reader::read_dir(tmp.path())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let removed = removals(&recs);
    assert!(!removed.is_empty());
    for (_, detail) in removed {
        assert!(!detail.contains("not yet shipped"), "{detail}");
        // Says which budget and which option sets it.
        assert!(
            detail.contains("size budget of 8192 bytes (set with --audit-max-size)"),
            "{detail}"
        );
    }
}

#[tokio::test]
async fn the_active_jobs_records_are_kept_past_the_budget_which_then_says_exhausted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 2048,
        max_total_bytes: 2048,
        ..small(tmp.path())
    };
    let j = Journal::open(cfg).unwrap();
    // Before the job: removable as usual.
    for n in 0..40 {
        j.append(numbered(n)).await.unwrap();
    }
    j.flush().await.unwrap();
    assert!(!j.budget_exhausted());
    j.protect_active_job(true);
    let total = 300;
    for n in 40..total {
        j.append(numbered(n)).await.unwrap();
    }
    j.flush().await.unwrap();
    assert!(j.budget_exhausted(), "the job's records fill the budget");
    let recs: Vec<_> = reader::read_dir(tmp.path())
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let nums: Vec<u64> = recs.iter().filter_map(number_of).collect();
    let first = nums[0];
    assert!(
        first <= 40,
        "a record of the job was removed: first kept is {first}"
    );
    assert_eq!(
        nums,
        (first..total).collect::<Vec<_>>(),
        "none of the job's records is gone"
    );
    let exhausted: Vec<_> = recs
        .iter()
        .filter(|r| r.kind == Kind::Event && r.reason == Reason::AuditBudgetExhausted)
        .collect();
    assert_eq!(exhausted.len(), 1, "said once: {exhausted:?}");
    assert!(
        exhausted[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("--audit-max-size")
    );

    // The job ends: the budget applies again, oldest first.
    j.protect_active_job(false);
    assert!(!j.budget_exhausted());
    for n in total..total + 40 {
        j.append(numbered(n)).await.unwrap();
    }
    j.close().await.unwrap();
    let size: u64 = segment::list(tmp.path())
        .unwrap()
        .iter()
        .map(|l| l.len)
        .sum();
    assert!(size <= 2 * 2048, "over the bound after the job: {size}");
}
