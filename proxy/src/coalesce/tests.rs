use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use egressd_audit::{HostSource, Kind, Process, Record};
use egressd_policy::{Decision, Reason, Verdict};

use super::*;

fn dns_deny(host: &str, pid: u32) -> Record {
    let mut rec = Record::new("r", Kind::Dns, &Decision::engine_deny(Reason::DnsRefused));
    rec.host = Some(host.to_owned());
    rec.host_source = HostSource::DnsQuery;
    rec.src = Some(SocketAddr::from(([127, 0, 0, 1], 40000)));
    rec.process = Some(Box::new(Process {
        pid: Some(pid),
        comm: Some("flood".into()),
        ..Process::default()
    }));
    rec
}

/// Admit every record; how many were to be written now.
fn admit_all(c: &Coalescer, recs: impl IntoIterator<Item = Record>) -> u64 {
    recs.into_iter()
        .filter(|r| c.admit(r) == Admit::Write)
        .count() as u64
}

#[tokio::test]
async fn the_first_denies_are_written_and_the_rest_counted_in_one_record() {
    let c = Coalescer::default();
    let written = admit_all(
        &c,
        (0..500).map(|i| dns_deny(&format!("n{i}.Evil.example."), 7)),
    );
    assert_eq!(written, VERBATIM);
    let counted = c.flush().await;
    assert_eq!(counted.len(), 1, "{counted:?}");
    let rec = &counted[0];
    assert_eq!(rec.count, Some(500 - VERBATIM));
    assert_eq!(rec.decisions(), 500 - VERBATIM);
    assert_eq!(rec.host.as_deref(), Some("evil.example"));
    assert_eq!(
        (rec.kind, rec.decision, rec.reason),
        (Kind::Dns, Verdict::Deny, Reason::DnsRefused)
    );
    assert_eq!(rec.process.as_ref().and_then(|p| p.pid), Some(7));
    let samples = rec.samples.as_ref().expect("samples");
    assert_eq!(samples.len(), SAMPLES);
    assert_eq!(samples[0], "n20.Evil.example.", "the first counted name");
    assert!(
        rec.detail
            .as_deref()
            .is_some_and(|d| d.contains("480 more decisions"))
    );
    // A new interval starts verbatim again, and an empty one writes nothing.
    assert!(c.flush().await.is_empty());
    assert_eq!(
        admit_all(&c, (0..3).map(|_| dns_deny("a.evil.example", 7))),
        3
    );
}

#[tokio::test]
async fn other_processes_zones_and_verdicts_are_other_keys() {
    let c = Coalescer::default();
    let n = VERBATIM + 5;
    let mut written = admit_all(&c, (0..n).map(|_| dns_deny("a.evil.example", 1)));
    written += admit_all(&c, (0..n).map(|_| dns_deny("a.evil.example", 2)));
    written += admit_all(&c, (0..n).map(|_| dns_deny("a.other.example", 1)));
    assert_eq!(written, 3 * VERBATIM);
    let counted = c.flush().await;
    assert_eq!(counted.len(), 3);
    assert!(counted.iter().all(|r| r.count == Some(5)));
    // Allows, events and closing records are always written.
    let allow = Record::new("r", Kind::Tcp, &Decision::engine_deny(Reason::RuleAllow));
    let mut allow = allow;
    allow.decision = Verdict::Allow;
    let mut event = dns_deny("a.evil.example", 1);
    event.kind = Kind::Event;
    let mut closing = dns_deny("a.evil.example", 1);
    closing.kind = Kind::Tcp;
    closing.bytes_up = Some(1);
    for r in [allow, event, closing] {
        assert_eq!(admit_all(&c, std::iter::repeat_n(r, 100)), 100);
    }
    assert!(c.flush().await.is_empty());
}

#[tokio::test]
async fn past_the_key_cap_decisions_share_a_coarse_key_and_none_is_lost() {
    let c = Coalescer::default();
    let clients = MAX_KEYS as u32 + 100;
    let per = 2 * VERBATIM;
    let mut written = 0;
    for pid in 0..clients {
        written += admit_all(
            &c,
            (0..per).map(|i| dns_deny(&format!("x{i}.evil.example"), pid)),
        );
    }
    let counted = c.flush().await;
    assert!(counted.len() <= MAX_KEYS + 1, "{}", counted.len());
    let coarse = counted
        .iter()
        .find(|r| r.process.is_none())
        .expect("a coarse record");
    assert_eq!(coarse.host, None);
    let total: u64 = written + counted.iter().map(Record::decisions).sum::<u64>();
    assert_eq!(total, u64::from(clients) * per);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_is_in_exactly_one_record_while_intervals_end() {
    let c = Arc::new(Coalescer::default());
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..3u32)
        .map(|pid| {
            let (c, written) = (Arc::clone(&c), Arc::clone(&written));
            std::thread::spawn(move || {
                for i in 0..30_000u32 {
                    if c.admit(&dns_deny(&format!("{i}.evil.example"), pid % 2)) == Admit::Write {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let flusher = {
        let (c, stop) = (Arc::clone(&c), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut counted = 0;
            let mut records = 0;
            while !stop.load(Ordering::Acquire) {
                let recs = c.flush().await;
                records += recs.len();
                counted += recs.iter().map(Record::decisions).sum::<u64>();
                tokio::task::yield_now().await;
            }
            (counted, records)
        })
    };
    for s in senders {
        s.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    let (mut counted, records) = flusher.await.unwrap();
    counted += c.flush().await.iter().map(Record::decisions).sum::<u64>();
    assert!(records > 0, "some intervals counted");
    assert_eq!(written.load(Ordering::Relaxed) + counted, 90_000);
}

#[test]
fn the_zone_is_the_last_two_labels() {
    assert_eq!(zone("a.b.Evil.Example."), "evil.example");
    assert_eq!(zone("evil.example"), "evil.example");
    assert_eq!(zone("localhost"), "localhost");
    assert_eq!(zone(""), "");
}
