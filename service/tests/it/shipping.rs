//! Runners shipping their journals through the HTTP client into a real
//! PostgreSQL while the service is killed and restarted: nothing lost,
//! nothing stored twice.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use egressd_audit::ship::{ShipConfig, Shipper, ShipperHandle};
use egressd_audit::{Journal, JournalConfig};
use egressd_policy::Verdict;
use egressd_service::{Client, ExportFilter};
use tokio::time::Instant;

use crate::support::*;

fn ship_config() -> ShipConfig {
    ShipConfig {
        max_records: 40,
        max_bytes: 1 << 20,
        poll_interval: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
    }
}

fn start_shipper(dir: &Path, url: &str) -> ShipperHandle {
    let client = Client::new(url, ACME_TOKEN, Duration::from_secs(5)).unwrap();
    Shipper::start(dir.to_owned(), client, ship_config()).unwrap()
}

/// Append `n` records of `repository` to `journal`, a few at a time, with
/// pauses so that shipping happens while the service goes down and up.
async fn produce(journal: Journal, runner: String, repository: String, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = record(
            &runner,
            &repository,
            "github.com",
            Verdict::Allow,
            "2026-11-26T10:00:00.000000Z",
        );
        r.ts = jiff::Timestamp::now();
        ids.push(r.id.to_string());
        journal.append(r).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    journal.flush().await.unwrap();
    ids
}

async fn stored_ids(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query("SELECT id FROM audit ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_ships_through_a_service_restart_and_its_own_restart() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let addr = server.addr;
        let url = server.url();
        let audit = tempfile::tempdir().unwrap();
        let journal = Journal::open(JournalConfig::new(audit.path())).unwrap();
        let shipper = start_shipper(audit.path(), &url);
        let producer = tokio::spawn(produce(
            journal.clone(),
            "r1".into(),
            "acme/app".into(),
            600,
        ));

        tokio::time::sleep(Duration::from_millis(250)).await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The runner restarts too: a new shipper resumes from the checkpoint.
        let before = shipper.stop().await;
        let shipper = start_shipper(audit.path(), &url);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            shipper.progress().failing.is_some() || before.retries > 0,
            "the outage was seen"
        );
        let server = TestServer::start(cfg.config(&db), addr).await;

        let mut ids = producer.await.unwrap();
        shipper
            .flush(Instant::now() + Duration::from_secs(60))
            .await
            .unwrap();
        shipper.stop().await;
        journal.close().await.unwrap();

        ids.sort();
        assert_eq!(stored_ids(&db).await, ids, "every record exactly once");
        drop(server);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_runners_ship_concurrently_through_a_service_restart() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        const RUNNERS: usize = 20;
        const PER_RUNNER: usize = 150;
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let addr = server.addr;
        let url = server.url();

        let mut runners = Vec::new();
        for i in 0..RUNNERS {
            let dir = tempfile::tempdir().unwrap();
            let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
            let shipper = start_shipper(dir.path(), &url);
            let producer = tokio::spawn(produce(
                journal.clone(),
                format!("runner-{i}"),
                format!("acme/repo-{i}"),
                PER_RUNNER,
            ));
            runners.push((dir, journal, shipper, producer));
        }

        tokio::time::sleep(Duration::from_millis(200)).await;
        server.kill();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let server = TestServer::start(cfg.config(&db), addr).await;

        let mut all = Vec::new();
        let mut per_repo = Vec::new();
        let mut retries = 0;
        for (_dir, journal, shipper, producer) in
            runners.iter_mut().map(|r| (&r.0, &r.1, &r.2, &mut r.3))
        {
            let ids = producer.await.unwrap();
            shipper
                .flush(Instant::now() + Duration::from_secs(60))
                .await
                .unwrap();
            retries += shipper.progress().stats.retries;
            journal.flush().await.unwrap();
            all.extend(ids.iter().cloned());
            per_repo.push(ids);
        }
        assert!(
            retries > 0,
            "the restart happened while runners were shipping"
        );
        for (_dir, journal, shipper, _) in runners {
            shipper.stop().await;
            journal.close().await.unwrap();
        }

        all.sort();
        assert_eq!(all.len(), RUNNERS * PER_RUNNER);
        assert_eq!(
            db.counts().await,
            ((RUNNERS * PER_RUNNER) as i64, (RUNNERS * PER_RUNNER) as i64)
        );
        assert_eq!(stored_ids(&db).await, all, "exactly one row per record");

        let client = Client::new(&server.url(), ACME_TOKEN, Duration::from_secs(10)).unwrap();
        let mut out = Vec::new();
        let filter = ExportFilter {
            repository: Some("acme/repo-7".into()),
            ..Default::default()
        };
        client.export(&filter, &mut out).await.unwrap();
        let got: BTreeSet<String> = ids_of_jsonl(&String::from_utf8(out).unwrap())
            .into_iter()
            .collect();
        let want: BTreeSet<String> = per_repo[7].iter().cloned().collect();
        assert_eq!(got.len(), PER_RUNNER);
        assert_eq!(got, want, "the repository's records, all and only them");
    })
    .await
    .expect("test timed out");
}
