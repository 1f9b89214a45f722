//! Ingest load figure: records per second that `POST /v1/audit` stores in
//! PostgreSQL, through HTTP on loopback, with several runners posting
//! batches at once. Creates a throwaway database on the cluster it is given
//! and drops it afterwards.
//!
//! ```text
//! export EGRESSD_TEST_DATABASE_URL="$(scripts/postgres-test.sh start)"
//! cargo run --release -p egressd-service --example ingest_load -- [RECORDS] [BATCH] [RUNNERS]
//! ```

use std::time::{Duration, Instant};

use anyhow::Context as _;
use egressd_audit::{HostSource, JobTags, Kind, Record};
use egressd_policy::{Decision, Reason, RuleId, Verdict};
use egressd_service::{Client, Service, ServiceConfig};

fn arg(n: usize, default: usize) -> anyhow::Result<usize> {
    match std::env::args().nth(n) {
        Some(s) => s
            .parse()
            .with_context(|| format!("argument {n}: {s:?} is not a number")),
        None => Ok(default),
    }
}

fn batch(runner: usize, size: usize) -> String {
    let d = Decision {
        verdict: Verdict::Allow,
        enforce_would: None,
        reason: Reason::RuleAllow,
        rule: RuleId::Default,
    };
    let mut body = String::with_capacity(size * 400);
    for i in 0..size {
        let mut r = Record::new(&format!("runner-{runner}"), Kind::Tcp, &d);
        r.host = Some(format!("h{}.example.com", i % 50));
        r.host_source = HostSource::Sni;
        r.dst = "198.51.100.7:443".parse().ok();
        r.src = "10.0.0.2:40000".parse().ok();
        r.job = Some(
            JobTags {
                repository: Some(format!("acme/repo-{}", runner % 10)),
                workflow: Some("ci".into()),
                run_id: Some("1234567".into()),
                run_attempt: Some("1".into()),
                job: Some("build".into()),
            }
            .into(),
        );
        r.bytes_up = Some(1234);
        r.bytes_down = Some(56789);
        r.duration_ms = Some(42);
        if let Ok(line) = serde_json::to_string(&r) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    body
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let records = arg(1, 200_000)?;
    let batch_size = arg(2, 1000)?.max(1);
    let runners = arg(3, 8)?.max(1);
    let admin = std::env::var("EGRESSD_TEST_DATABASE_URL")
        .context("set EGRESSD_TEST_DATABASE_URL (scripts/postgres-test.sh start prints it)")?;
    let name = format!(
        "egressd_load_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let (admin_client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin_client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .context("database URL without a path")?;
    let url = format!("{base}/{name}");

    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("policies"))?;
    std::fs::write(
        dir.path().join("tokens"),
        "acme load-test-token-0123456789\n",
    )?;
    let mut config =
        ServiceConfig::new(dir.path().join("policies"), url, dir.path().join("tokens"));
    config.max_db_connections = runners.max(4);
    let service = Service::start(&config).await?;
    let store = std::sync::Arc::clone(service.store());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(service.run(listener, None, async {
        let _ = stop_rx.await;
    }));

    let batches = records.div_ceil(batch_size);
    // Bodies are built before the clock starts: the figure is the service's.
    let bodies: Vec<String> = (0..batches)
        .map(|b| batch(b % runners, batch_size))
        .collect();
    let mut per_runner: Vec<Vec<String>> = vec![Vec::new(); runners];
    for (i, b) in bodies.into_iter().enumerate() {
        per_runner[i % runners].push(b);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for bodies in per_runner {
        let client = Client::new(
            &format!("http://{addr}"),
            "load-test-token-0123456789",
            Duration::from_secs(60),
        )?;
        tasks.push(tokio::spawn(async move {
            let mut stored = 0u64;
            for body in bodies {
                stored += client.post_batch(body).await?.accepted;
            }
            Ok::<u64, egressd_service::client::ClientError>(stored)
        }));
    }
    let mut stored = 0;
    for t in tasks {
        stored += t.await??;
    }
    let elapsed = started.elapsed();
    let rows: i64 = {
        let client = store.pool().get().await?;
        client
            .query_one("SELECT count(*) FROM audit", &[])
            .await?
            .get(0)
    };
    println!(
        "ingested {stored} records ({rows} rows) in {:.2} s: {:.0} records/s (batches of {batch_size}, {runners} concurrent runners)",
        elapsed.as_secs_f64(),
        stored as f64 / elapsed.as_secs_f64()
    );
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(store);
    admin_client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await?;
    Ok(())
}
