//! Ingest: a JSON Lines batch is parsed and validated line by line, the
//! day partitions it touches are created if missing, and the batch goes to
//! PostgreSQL in one `COPY` into a session temp table followed by one
//! insert-select that stores only ids never seen before for the org (see the
//! module doc of [`crate::store`] for why that is idempotent).

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;

use bytes::Bytes;
use egressd_audit::{Record, SCHEMA_VERSION};
use futures_util::SinkExt as _;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// What a batch did to the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestCounts {
    /// Records stored now.
    pub accepted: u64,
    /// Records whose id was already stored for the org (or repeated within
    /// the batch): not stored again.
    pub duplicate: u64,
}

/// A line of a batch that is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// 1-based line number in the batch.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
}

/// The oldest and newest years a record may carry (partition names and
/// bounds stay four-digit years).
const YEARS: std::ops::RangeInclusive<i16> = 1970..=9998;

/// Parse a JSON Lines batch. Blank lines are ignored; every other line must
/// be a schema-v1 record.
pub fn parse_batch(body: &[u8]) -> (Vec<Record>, Vec<Rejected>) {
    let mut records = Vec::new();
    let mut rejected = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let error = match serde_json::from_slice::<Record>(line) {
            Ok(r) if r.v != SCHEMA_VERSION => format!(
                "schema version {} is not supported (this service stores v{SCHEMA_VERSION})",
                r.v
            ),
            Ok(r) if !YEARS.contains(&utc_date(&r).year()) => {
                format!("ts {} is outside the years 1970-9998", r.ts)
            }
            Ok(r) => {
                records.push(r);
                continue;
            }
            Err(e) => e.to_string(),
        };
        rejected.push(Rejected { line: i + 1, error });
    }
    (records, rejected)
}

fn utc_date(r: &Record) -> Date {
    r.ts.to_zoned(jiff::tz::TimeZone::UTC).date()
}

/// The stable string of a serde unit enum (`"tcp"`, `"allow"`, ...).
pub(crate) fn wire_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Append `s` to a COPY text-format row, escaped.
fn copy_field(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
}

fn copy_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => copy_field(out, s),
        None => out.push_str("\\N"),
    }
}

/// One COPY text row for `r` stored under `org`.
fn copy_row(out: &mut String, org: &str, r: &Record) -> Result<(), serde_json::Error> {
    let json = serde_json::to_string(r)?;
    copy_field(out, org);
    out.push('\t');
    let _ = write!(out, "{}", r.id);
    out.push('\t');
    let _ = write!(out, "{}", r.ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ"));
    out.push('\t');
    copy_field(out, &r.runner);
    out.push('\t');
    copy_opt(out, r.job.as_ref().and_then(|j| j.repository.as_deref()));
    out.push('\t');
    copy_field(out, &wire_name(&r.kind));
    out.push('\t');
    copy_field(out, &r.decision.to_string());
    out.push('\t');
    copy_field(out, &r.reason.to_string());
    out.push('\t');
    copy_opt(out, r.host.as_deref());
    out.push('\t');
    copy_field(out, &json);
    out.push('\n');
    Ok(())
}

const COLUMNS: &str = "org, id, ts, runner, repository, kind, decision, reason, host, record";

impl Store {
    /// Store `records` for `org`, each id at most once per org however
    /// often it is sent. One transaction: either the whole batch is stored
    /// (minus duplicates) or nothing is.
    pub async fn ingest(&self, org: &str, records: &[Record]) -> Result<IngestCounts, StoreError> {
        let mut seen = HashSet::with_capacity(records.len());
        let unique: Vec<&Record> = records.iter().filter(|r| seen.insert(r.id)).collect();
        let repeated_in_batch = (records.len() - unique.len()) as u64;
        if unique.is_empty() {
            return Ok(IngestCounts {
                accepted: 0,
                duplicate: repeated_in_batch,
            });
        }
        let days: BTreeSet<Date> = unique.iter().map(|r| utc_date(r)).collect();
        self.ensure_partitions(&days).await?;

        let mut rows = String::with_capacity(unique.len() * 512);
        for r in &unique {
            // Serialising a `Record` cannot fail (no maps with non-string
            // keys); skip defensively rather than store a half row.
            if let Err(e) = copy_row(&mut rows, org, r) {
                tracing::error!(id = %r.id, error = %e, "cannot serialise a record");
            }
        }

        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // `IF NOT EXISTS` on an existing table is a NOTICE: keep it out of
        // the logs of every batch.
        tx.batch_execute(
            "SET LOCAL client_min_messages = warning;
             CREATE TEMP TABLE IF NOT EXISTS audit_in (
                org text, id text, ts timestamptz, runner text, repository text,
                kind text, decision text, reason text, host text, record jsonb
            ) ON COMMIT DELETE ROWS",
        )
        .await?;
        let sink = tx
            .copy_in(&format!("COPY audit_in ({COLUMNS}) FROM STDIN"))
            .await?;
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from(rows)).await?;
        sink.finish().await?;
        // Ids are inserted in id order so that two batches sharing ids lock
        // them in the same order (no deadlock between overlapping retries).
        let accepted = tx
            .execute(
                &format!(
                    "WITH fresh AS (
                        INSERT INTO audit_ids (org, id, ts)
                        SELECT org, id, ts FROM audit_in ORDER BY id
                        ON CONFLICT DO NOTHING
                        RETURNING id
                    )
                    INSERT INTO audit ({COLUMNS})
                    SELECT i.org, i.id, i.ts, i.runner, i.repository, i.kind,
                           i.decision, i.reason, i.host, i.record
                    FROM audit_in i JOIN fresh USING (id)"
                ),
                &[],
            )
            .await?;
        tx.commit().await?;
        Ok(IngestCounts {
            accepted,
            duplicate: unique.len() as u64 - accepted + repeated_in_batch,
        })
    }

    /// Create the partitions of yesterday, today and the next two days (UTC)
    /// ahead of need. Creating a partition locks the whole `audit` table
    /// briefly (and waits for running exports), so it is done here, at start
    /// and hourly, rather than on the ingest path at midnight.
    pub async fn prepare_partitions(&self) -> Result<(), StoreError> {
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        let mut days = BTreeSet::new();
        let mut d = today.yesterday().unwrap_or(today);
        for _ in 0..4 {
            days.insert(d);
            d = d.tomorrow().unwrap_or(d);
        }
        self.ensure_partitions(&days).await
    }

    /// Create the day partitions of `audit` that are not known to exist.
    async fn ensure_partitions(&self, days: &BTreeSet<Date>) -> Result<(), StoreError> {
        let missing: Vec<Date> = {
            let known = self
                .partitions
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            days.iter()
                .copied()
                .filter(|d| !known.contains(&day_key(*d)))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Concurrent `CREATE TABLE IF NOT EXISTS` of one name can still fail
        // on the catalog's unique index: take a lock first.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK_KEY])
            .await?;
        // Creating a partition waits for every reader of `audit`; give up
        // (the batch is retried) rather than stall all ingest behind a long
        // export.
        tx.batch_execute("SET LOCAL lock_timeout = '5s'; SET LOCAL client_min_messages = warning")
            .await?;
        for day in &missing {
            tx.batch_execute(&partition_ddl(*day)).await?;
        }
        tx.commit().await?;
        let mut known = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        known.extend(missing.iter().map(|d| day_key(*d)));
        Ok(())
    }
}

/// Advisory lock key for partition creation ("egressp" in ASCII).
const PARTITION_LOCK_KEY: i64 = 0x0065_6772_6573_7370;

fn day_key(d: Date) -> u32 {
    // YEARS keeps the year in 1970..=9998, so the cast is lossless.
    (d.year() as u32) * 10_000 + (d.month() as u32) * 100 + d.day() as u32
}

fn partition_ddl(day: Date) -> String {
    let next = day.tomorrow().unwrap_or(day);
    format!(
        "CREATE TABLE IF NOT EXISTS audit_p{key} PARTITION OF audit \
         FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
        key = day_key(day),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"v":1,"id":"01JDQ3S1M7X9V0ZK4Q2W8T6B5N","ts":"2026-11-26T21:58:13.123456Z","runner":"r1","kind":"tcp","decision":"allow","reason":"rule_allow","rule":"allow[0]","host":"example.com","host_source":"sni"}"#;

    #[test]
    fn parses_and_rejects_by_line() {
        let body = format!(
            "{GOOD}\n\nnot json\n{}\n",
            GOOD.replace("\"v\":1", "\"v\":2")
        );
        let (ok, bad) = parse_batch(body.as_bytes());
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].line, 3);
        assert_eq!(bad[1].line, 4);
        assert!(
            bad[1].error.contains("schema version 2"),
            "{}",
            bad[1].error
        );
    }

    #[test]
    fn copy_rows_escape_and_null() {
        let (mut ok, _) = parse_batch(GOOD.as_bytes());
        let mut r = ok.remove(0);
        r.runner = "a\tb\\c\nd".into();
        let mut out = String::new();
        copy_row(&mut out, "acme", &r).unwrap();
        let fields: Vec<&str> = out.trim_end_matches('\n').split('\t').collect();
        assert_eq!(fields.len(), 10);
        assert_eq!(fields[0], "acme");
        assert_eq!(fields[2], "2026-11-26T21:58:13.123456Z");
        assert_eq!(fields[3], "a\\tb\\\\c\\nd");
        assert_eq!(fields[4], "\\N");
        assert_eq!(fields[5], "tcp");
        assert!(!out[..out.len() - 1].contains('\n'));
    }

    #[test]
    fn partition_names_and_bounds() {
        let d = jiff::civil::date(2026, 12, 31);
        assert_eq!(
            partition_ddl(d),
            "CREATE TABLE IF NOT EXISTS audit_p20261231 PARTITION OF audit FOR VALUES FROM ('2026-12-31 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        );
    }
}
