//! Shipper tests against an in-memory sink that can be made to fail.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use egressd_policy::{Decision, Reason, RuleId, Verdict};

use super::*;
use crate::journal::{Journal, JournalConfig};
use crate::record::{Kind, Record};

/// Stores every record id it is sent; fails while `down` is set.
#[derive(Clone, Default)]
struct MemorySink {
    seen: Arc<Mutex<HashMap<ulid::Ulid, usize>>>,
    down: Arc<Mutex<bool>>,
}

impl MemorySink {
    fn set_down(&self, down: bool) {
        *self.down.lock().unwrap() = down;
    }
    fn ids(&self) -> HashMap<ulid::Ulid, usize> {
        self.seen.lock().unwrap().clone()
    }
}

impl Sink for MemorySink {
    async fn send(&self, batch: &Batch) -> Result<Ack, SinkError> {
        if *self.down.lock().unwrap() {
            return Err(SinkError::Retry("service down".into()));
        }
        let mut seen = self.seen.lock().unwrap();
        let mut ack = Ack::default();
        for line in batch.body.lines() {
            let r: Record = serde_json::from_str(line).unwrap();
            let n = seen.entry(r.id).or_insert(0);
            *n += 1;
            if *n == 1 {
                ack.accepted += 1;
            } else {
                ack.duplicate += 1;
            }
        }
        Ok(ack)
    }
}

fn record(i: usize) -> Record {
    let d = Decision {
        verdict: Verdict::Allow,
        enforce_would: None,
        reason: Reason::RuleAllow,
        rule: RuleId::Default,
    };
    let mut r = Record::new("runner-1", Kind::Tcp, &d);
    r.host = Some(format!("h{i}.example.com"));
    r
}

fn fast() -> ShipConfig {
    ShipConfig {
        max_records: 7,
        max_bytes: 1 << 20,
        poll_interval: Duration::from_millis(20),
        backoff_initial: Duration::from_millis(5),
        backoff_max: Duration::from_millis(40),
    }
}

async fn write(journal: &Journal, n: usize) -> Vec<ulid::Ulid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = record(i);
        ids.push(r.id);
        journal.append(r).await.unwrap();
    }
    journal.flush().await.unwrap();
    ids
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

#[tokio::test]
async fn ships_everything_in_batches_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let sink = MemorySink::default();
    let shipper = Shipper::start(dir.path().to_owned(), sink.clone(), fast()).unwrap();
    let ids = write(&journal, 50).await;
    let stats = shipper.flush(deadline()).await.unwrap();
    assert_eq!(stats.accepted, 50);
    assert_eq!(stats.batches, 8, "50 records in batches of at most 7");
    let seen = sink.ids();
    assert_eq!(seen.len(), 50);
    assert!(ids.iter().all(|id| seen[id] == 1));
    assert_eq!(
        read_checkpoint(dir.path()).unwrap(),
        shipper.progress().acked
    );
    shipper.stop().await;
}

#[tokio::test]
async fn retries_through_an_outage_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let sink = MemorySink::default();

    let first = Shipper::start(dir.path().to_owned(), sink.clone(), fast()).unwrap();
    let mut ids = write(&journal, 20).await;
    first.flush(deadline()).await.unwrap();

    sink.set_down(true);
    ids.extend(write(&journal, 20).await);
    let short = Instant::now() + Duration::from_millis(200);
    let err = first.flush(short).await.unwrap_err();
    assert!(matches!(err, ShipError::FlushTimeout { .. }), "{err}");
    assert!(first.progress().stats.retries > 0);
    first.stop().await;

    // A new shipper (a restarted runner) resends only what was not acked.
    sink.set_down(false);
    let second = Shipper::start(dir.path().to_owned(), sink.clone(), fast()).unwrap();
    let stats = second.flush(deadline()).await.unwrap();
    assert_eq!(stats.accepted, 20);
    assert_eq!(stats.duplicate, 0);
    let seen = sink.ids();
    assert_eq!(seen.len(), 40);
    assert!(
        ids.iter().all(|id| seen[id] == 1),
        "every record exactly once"
    );
    second.stop().await;
}

#[tokio::test]
async fn refused_batches_are_skipped_not_retried_forever() {
    struct Refuser;
    impl Sink for Refuser {
        async fn send(&self, _: &Batch) -> Result<Ack, SinkError> {
            Err(SinkError::Refused("bad".into()))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    write(&journal, 3).await;
    let shipper = Shipper::start(dir.path().to_owned(), Refuser, fast()).unwrap();
    let stats = shipper.flush(deadline()).await.unwrap();
    assert_eq!(stats.rejected, 3);
    shipper.stop().await;
}

#[test]
fn a_broken_checkpoint_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_checkpoint(dir.path()).unwrap(), Position::default());
    std::fs::write(dir.path().join(CHECKPOINT_FILE), "nonsense").unwrap();
    assert!(matches!(
        read_checkpoint(dir.path()),
        Err(ShipError::Checkpoint { .. })
    ));
    let p = Position {
        segment: 3,
        offset: 99,
    };
    write_checkpoint(dir.path(), p).unwrap();
    assert_eq!(read_checkpoint(dir.path()).unwrap(), p);
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let c = ShipConfig::default();
    for attempt in 1..40 {
        let d = backoff(&c, attempt);
        let exp = c
            .backoff_initial
            .saturating_mul(1 << (attempt - 1).min(20))
            .min(c.backoff_max);
        assert!(d >= exp / 2 && d <= exp, "attempt {attempt}: {d:?}");
    }
}
