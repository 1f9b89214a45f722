//! The HTTP API against a real PostgreSQL: ingest, idempotency, export
//! filters, auth, policy serving and hot reload.

use std::time::Duration;

use egressd_policy::Verdict;
use egressd_service::client::PolicyFetch;
use egressd_service::{Client, ExportFilter, ExportFormat};
use reqwest::StatusCode;

use crate::support::*;

/// Which records an export filter should keep.
type Keep = Box<dyn Fn(&egressd_audit::Record) -> bool>;

fn client(server: &TestServer, token: &str) -> Client {
    Client::new(&server.url(), token, Duration::from_secs(10)).unwrap()
}

async fn export(c: &Client, f: &ExportFilter) -> String {
    let mut out = Vec::new();
    c.export(f, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn ingest_is_idempotent_and_partitions_by_day() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let c = client(&server, ACME_TOKEN);
        let mut records = Vec::new();
        for i in 0..150 {
            let day = if i % 3 == 0 { "25" } else { "26" };
            let ts = format!("2026-11-{day}T10:00:{:02}.{:06}Z", i % 60, i);
            records.push(record("r1", "acme/app", "github.com", Verdict::Allow, &ts));
        }
        let reply = c.post_batch(jsonl(&records)).await.unwrap();
        assert_eq!((reply.accepted, reply.duplicate), (150, 0));
        assert!(reply.rejected.is_empty());

        // The same batch again (a retry): nothing new.
        let reply = c.post_batch(jsonl(&records)).await.unwrap();
        assert_eq!((reply.accepted, reply.duplicate), (0, 150));
        // An overlapping batch: only the new half is stored; a repeat within
        // the batch counts as a duplicate.
        let mut more: Vec<_> = records[..10].to_vec();
        let fresh: Vec<_> = (0..10)
            .map(|_| {
                record(
                    "r1",
                    "acme/app",
                    "github.com",
                    Verdict::Deny,
                    "2026-11-26T11:00:00.000001Z",
                )
            })
            .collect();
        more.extend(fresh.iter().cloned());
        more.push(fresh[0].clone());
        let reply = c.post_batch(jsonl(&more)).await.unwrap();
        assert_eq!((reply.accepted, reply.duplicate), (10, 11));

        // The same id with another timestamp is still the same record.
        let mut moved = records[1].clone();
        moved.ts = "2026-11-20T00:00:00.000000Z".parse().unwrap();
        let reply = c.post_batch(jsonl(&[moved])).await.unwrap();
        assert_eq!((reply.accepted, reply.duplicate), (0, 1));

        assert_eq!(db.counts().await, (160, 160));
        let parts: Vec<String> = db
            .client()
            .await
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE i.inhparent = 'audit'::regclass",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // One partition per UTC day: those the batches touched (the 20th
        // too: it is created before the batch learns it holds only a
        // duplicate), besides the ones prepared around today.
        for day in ["audit_p20261120", "audit_p20261125", "audit_p20261126"] {
            assert!(
                parts.iter().any(|p| p == day),
                "{day} missing from {parts:?}"
            );
        }
        let versions: Vec<i32> = db
            .client()
            .await
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, vec![1]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn invalid_lines_are_rejected_by_line() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let c = client(&server, ACME_TOKEN);
        let good = record(
            "r1",
            "acme/app",
            "github.com",
            Verdict::Allow,
            "2026-11-26T10:00:00.000000Z",
        );
        let body = format!("{}{{\"v\":1}}\n", jsonl(&[good]));
        let reply = c.post_batch(body).await.unwrap();
        assert_eq!(reply.accepted, 1);
        assert_eq!(reply.rejected.len(), 1);
        assert_eq!(reply.rejected[0].line, 2);

        let err = c.post_batch("garbage\n".into()).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::BAD_REQUEST), "{err}");
        assert_eq!(db.counts().await, (1, 1));
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn export_filters_in_both_formats() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let acme = client(&server, ACME_TOKEN);
        let globex = client(&server, GLOBEX_TOKEN);
        let hosts = [
            "github.com",
            "api.github.com",
            "objects.githubusercontent.com",
            "evil.example",
        ];
        let repos = ["acme/app", "acme/lib"];
        let mut records = Vec::new();
        for i in 0..80usize {
            let verdict = if i % 4 == 3 {
                Verdict::Deny
            } else {
                Verdict::Allow
            };
            let ts = format!("2026-11-{}T{:02}:00:00.{:06}Z", 24 + i % 3, i % 24, i);
            records.push(record(
                &format!("r{}", i % 5),
                repos[i % 2],
                hosts[i % 4],
                verdict,
                &ts,
            ));
        }
        acme.post_batch(jsonl(&records)).await.unwrap();
        // Another org's records never show up in acme's export.
        let other = record(
            "g1",
            "acme/app",
            "github.com",
            Verdict::Allow,
            "2026-11-25T00:00:00.000000Z",
        );
        globex
            .post_batch(jsonl(std::slice::from_ref(&other)))
            .await
            .unwrap();

        let cases: Vec<(ExportFilter, Keep)> = vec![
            (ExportFilter::default(), Box::new(|_| true)),
            (
                ExportFilter {
                    since: Some("2026-11-25T00:00:00Z".parse().unwrap()),
                    until: Some("2026-11-26T00:00:00Z".parse().unwrap()),
                    ..Default::default()
                },
                Box::new(|r| r.ts.to_string().starts_with("2026-11-25")),
            ),
            (
                ExportFilter {
                    decision: Some(Verdict::Deny),
                    ..Default::default()
                },
                Box::new(|r| r.decision == Verdict::Deny),
            ),
            (
                ExportFilter {
                    host: Some("*.GitHub.com".into()),
                    ..Default::default()
                },
                Box::new(|r| r.host.as_deref() == Some("api.github.com")),
            ),
            (
                ExportFilter {
                    host: Some("*github*".into()),
                    decision: Some(Verdict::Allow),
                    ..Default::default()
                },
                Box::new(|r| {
                    r.host.as_deref().is_some_and(|h| h.contains("github"))
                        && r.decision == Verdict::Allow
                }),
            ),
            (
                ExportFilter {
                    repository: Some("acme/lib".into()),
                    ..Default::default()
                },
                Box::new(|r| {
                    r.job.as_ref().and_then(|j| j.repository.as_deref()) == Some("acme/lib")
                }),
            ),
        ];
        for (filter, keep) in cases {
            let mut want: Vec<_> = records.iter().filter(|r| keep(r)).collect();
            want.sort_by_key(|r| (r.ts, r.id));
            let want: Vec<String> = want.iter().map(|r| r.id.to_string()).collect();
            assert!(!want.is_empty(), "{filter:?} selects something");
            let got = ids_of_jsonl(&export(&acme, &filter).await);
            assert_eq!(got, want, "jsonl {filter:?}");
            let csv_filter = ExportFilter {
                format: ExportFormat::Csv,
                ..filter.clone()
            };
            let got = ids_of_csv(&export(&acme, &csv_filter).await);
            assert_eq!(got, want, "csv {filter:?}");
        }
        // The JSON Lines export is the records themselves.
        let all = export(&acme, &ExportFilter::default()).await;
        let first: egressd_audit::Record =
            serde_json::from_str(all.lines().next().unwrap()).unwrap();
        assert!(records.contains(&first));
        // globex sees only its own record.
        let got = ids_of_jsonl(&export(&globex, &ExportFilter::default()).await);
        assert_eq!(got, vec![other.id.to_string()]);

        // Unknown or malformed parameters are refused, not ignored.
        let raw = reqwest::Client::new();
        for q in [
            "repo=acme/app",
            "since=yesterday",
            "decision=maybe",
            "format=xml",
        ] {
            let resp = raw
                .get(format!("{}/v1/audit?{q}", server.url()))
                .bearer_auth(ACME_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{q}");
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn every_call_needs_a_token_of_the_right_org() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let raw = reqwest::Client::new();
        let url = server.url();
        let body = jsonl(&[record(
            "r1",
            "acme/app",
            "github.com",
            Verdict::Allow,
            "2026-11-26T10:00:00.000000Z",
        )]);
        let calls = [
            ("GET", "/v1/orgs/acme/policy"),
            ("GET", "/v1/audit"),
            ("POST", "/v1/audit"),
            ("GET", "/v1/nothing-here"),
        ];
        for (method, path) in calls {
            for auth in [
                None,
                Some("Bearer wrong-token"),
                Some("Basic YWNtZTp4"),
                Some(ACME_TOKEN),
            ] {
                let mut req = match method {
                    "GET" => raw.get(format!("{url}{path}")),
                    _ => raw.post(format!("{url}{path}")).body(body.clone()),
                };
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with {auth:?}"
                );
                assert_eq!(resp.headers()["www-authenticate"], "Bearer");
            }
        }
        assert_eq!(db.counts().await, (0, 0), "nothing stored without a token");

        // A valid token of another org.
        let globex = client(&server, GLOBEX_TOKEN);
        let err = globex.fetch_policy("acme", None).await.unwrap_err();
        assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
        assert!(err.to_string().contains("globex"), "{err}");
        // Its own policy is fine; an org without a policy file is 404.
        assert!(matches!(
            globex.fetch_policy("globex", None).await.unwrap(),
            PolicyFetch::Fresh { .. }
        ));

        // Health needs nothing.
        let resp = raw.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn policies_are_served_with_etags_and_broken_files_refused() {
    let Some(db) = database().await else { return };
    tokio::time::timeout(TEST_TIMEOUT, async {
        let cfg = ConfigDir::new();
        let server = TestServer::start(cfg.config(&db), "127.0.0.1:0".parse().unwrap()).await;
        let acme = client(&server, ACME_TOKEN);
        let PolicyFetch::Fresh { text, etag } = acme.fetch_policy("acme", None).await.unwrap()
        else {
            panic!("expected the policy");
        };
        assert_eq!(text, GOOD_POLICY);
        let etag = etag.expect("an ETag");
        assert_eq!(
            acme.fetch_policy("acme", Some(&etag)).await.unwrap(),
            PolicyFetch::NotModified
        );

        // `boot --policy-url URL --token-file FILE` takes the same path.
        let token_file = cfg.dir.path().join("runner-token");
        std::fs::write(&token_file, format!("{ACME_TOKEN}\n")).unwrap();
        let url = format!("{}/v1/orgs/acme/policy", server.url());
        let fetched = egressd_service::client::fetch_policy_url(
            &url,
            &token_file,
            Some(&etag),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(fetched, PolicyFetch::NotModified);

        // A broken file is refused: the last good policy keeps being served.
        let file = cfg.policies().join("acme.yaml");
        write_atomic(&file, BROKEN_POLICY);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            acme.fetch_policy("acme", Some(&etag)).await.unwrap(),
            PolicyFetch::NotModified
        );
        let PolicyFetch::Fresh { text, .. } = acme.fetch_policy("acme", None).await.unwrap() else {
            panic!("expected the policy");
        };
        assert_eq!(text, GOOD_POLICY);

        // A fixed file is picked up.
        write_atomic(&file, GOOD_POLICY_2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let PolicyFetch::Fresh { text, etag: new } =
                acme.fetch_policy("acme", Some(&etag)).await.unwrap()
            {
                assert_eq!(text, GOOD_POLICY_2);
                assert_ne!(new.as_deref(), Some(etag.as_str()));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "reload not seen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("test timed out");
}
