//! Export from the store: the filter (`since`, `until`, `decision`, `host`
//! glob, `repository`), the SQL it becomes, and the JSON Lines / CSV output,
//! streamed through a server-side portal in fixed-size chunks so that an
//! export of any size holds one chunk of rows in memory at a time.

use std::time::SystemTime;

use bytes::Bytes;
use egressd_audit::Record;
use egressd_policy::Verdict;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

use crate::store::ingest::wire_name;
use crate::store::{Store, StoreError};

/// Rows fetched from the portal per round trip.
const CHUNK_ROWS: i32 = 1000;

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// One schema-v1 record per line, as in the journal.
    #[default]
    Jsonl,
    /// A header line then one row per record ([`CSV_COLUMNS`]).
    Csv,
}

impl ExportFormat {
    /// The HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "application/jsonl",
            ExportFormat::Csv => "text/csv; charset=utf-8",
        }
    }
}

/// Which records to export; every field narrows the selection. This is also
/// the query string of `GET /v1/audit`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilter {
    /// Records at or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<jiff::Timestamp>,
    /// Records strictly before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<jiff::Timestamp>,
    /// Only this decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Verdict>,
    /// Host glob: `*` matches any run of characters, case-insensitive
    /// (`*.example.com`, `api.github.com`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Exactly this repository (`owner/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Output format (default JSON Lines).
    #[serde(default)]
    pub format: ExportFormat,
}

/// A host glob as a `LIKE` pattern with `\` as escape character.
pub fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

type Param = Box<dyn ToSql + Sync + Send>;

/// The export query for `org` and its parameters.
fn query(org: &str, f: &ExportFilter) -> (String, Vec<Param>) {
    let mut sql = String::from("SELECT record::text FROM audit WHERE org = $1");
    let mut params: Vec<Param> = vec![Box::new(org.to_owned())];
    let mut add = |cond: &str, p: Param| {
        params.push(p);
        sql.push_str(&cond.replace("$?", &format!("${}", params.len())));
    };
    if let Some(t) = f.since {
        add(" AND ts >= $?", Box::new(SystemTime::from(t)));
    }
    if let Some(t) = f.until {
        add(" AND ts < $?", Box::new(SystemTime::from(t)));
    }
    if let Some(d) = f.decision {
        add(" AND decision = $?", Box::new(d.as_str().to_owned()));
    }
    if let Some(h) = &f.host {
        add(" AND host ILIKE $? ESCAPE '\\'", Box::new(glob_to_like(h)));
    }
    if let Some(r) = &f.repository {
        add(" AND repository = $?", Box::new(r.clone()));
    }
    sql.push_str(" ORDER BY ts, id");
    (sql, params)
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: &[&str] = &[
    "ts",
    "id",
    "runner",
    "repository",
    "workflow",
    "run_id",
    "run_attempt",
    "job",
    "kind",
    "decision",
    "enforce_would",
    "reason",
    "rule",
    "host",
    "host_source",
    "dst",
    "src",
    "pid",
    "comm",
    "exe",
    "cgroup",
    "container",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "detail",
];

/// One CSV row (matching [`CSV_COLUMNS`]) for `r`.
pub fn csv_row(r: &Record) -> Vec<String> {
    let opt = |s: Option<&String>| s.cloned().unwrap_or_default();
    let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    let job = r.job.clone().unwrap_or_default();
    let p = r.process.clone().unwrap_or_default();
    vec![
        r.ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string(),
        r.id.to_string(),
        r.runner.clone(),
        opt(job.repository.as_ref()),
        opt(job.workflow.as_ref()),
        opt(job.run_id.as_ref()),
        opt(job.run_attempt.as_ref()),
        opt(job.job.as_ref()),
        wire_name(&r.kind),
        r.decision.to_string(),
        r.enforce_would.map(|v| v.to_string()).unwrap_or_default(),
        r.reason.to_string(),
        r.rule.clone(),
        opt(r.host.as_ref()),
        wire_name(&r.host_source),
        r.dst.map(|a| a.to_string()).unwrap_or_default(),
        r.src.map(|a| a.to_string()).unwrap_or_default(),
        p.pid.map(|n| n.to_string()).unwrap_or_default(),
        opt(p.comm.as_ref()),
        opt(p.exe.as_ref()),
        opt(p.cgroup.as_ref()),
        opt(p.container.as_ref()),
        num(r.bytes_up),
        num(r.bytes_down),
        num(r.duration_ms),
        opt(r.detail.as_ref()),
    ]
}

/// Formats rows into output chunks.
struct Formatter {
    format: ExportFormat,
    csv: csv::Writer<Vec<u8>>,
    jsonl: Vec<u8>,
}

impl Formatter {
    fn new(format: ExportFormat) -> Self {
        Formatter {
            format,
            csv: csv::Writer::from_writer(Vec::new()),
            jsonl: Vec::new(),
        }
    }

    fn header(&mut self) -> Result<(), csv::Error> {
        if self.format == ExportFormat::Csv {
            self.csv.write_record(CSV_COLUMNS)?;
        }
        Ok(())
    }

    fn push(&mut self, r: &Record) -> Result<(), csv::Error> {
        match self.format {
            ExportFormat::Jsonl => {
                serde_json::to_writer(&mut self.jsonl, r)
                    .map_err(|e| csv::Error::from(std::io::Error::other(e)))?;
                self.jsonl.push(b'\n');
            }
            ExportFormat::Csv => self.csv.write_record(csv_row(r))?,
        }
        Ok(())
    }

    fn take(&mut self) -> Result<Bytes, csv::Error> {
        match self.format {
            ExportFormat::Jsonl => Ok(Bytes::from(std::mem::take(&mut self.jsonl))),
            ExportFormat::Csv => {
                self.csv.flush()?;
                let w = std::mem::replace(&mut self.csv, csv::Writer::from_writer(Vec::new()));
                // `into_inner` only fails when the flush fails; it just did not.
                let buf = w
                    .into_inner()
                    .map_err(|e| csv::Error::from(e.into_error()))?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// What can interrupt an export stream.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record no longer parses (a schema newer than this binary).
    #[error("stored record {0} cannot be read: {1}")]
    Record(String, String),
    /// Formatting failed.
    #[error("cannot format the export: {0}")]
    Format(#[from] csv::Error),
}

impl Store {
    /// Stream `org`'s records that match `filter`, formatted, oldest first.
    /// The receiver yields chunks; an `Err` ends the stream early. Dropping
    /// the receiver stops the query.
    pub fn export(
        self: &std::sync::Arc<Self>,
        org: &str,
        filter: &ExportFilter,
    ) -> mpsc::Receiver<Result<Bytes, ExportError>> {
        let (tx, rx) = mpsc::channel(4);
        let store = std::sync::Arc::clone(self);
        let (sql, params) = query(org, filter);
        let format = filter.format;
        tokio::spawn(async move {
            if let Err(e) = store.export_into(&sql, &params, format, &tx).await {
                tracing::warn!(error = %e, "export interrupted");
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn export_into(
        &self,
        sql: &str,
        params: &[Param],
        format: ExportFormat,
        out: &mpsc::Sender<Result<Bytes, ExportError>>,
    ) -> Result<(), ExportError> {
        let mut client = self.pool().get().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let portal = tx.bind(sql, &refs).await.map_err(StoreError::from)?;
        let mut fmt = Formatter::new(format);
        fmt.header()?;
        loop {
            let rows = tx
                .query_portal(&portal, CHUNK_ROWS)
                .await
                .map_err(StoreError::from)?;
            for row in &rows {
                let text: &str = row.get(0);
                let record: Record = serde_json::from_str(text).map_err(|e| {
                    ExportError::Record(text.chars().take(80).collect(), e.to_string())
                })?;
                fmt.push(&record)?;
            }
            let chunk = fmt.take()?;
            if !chunk.is_empty() && out.send(Ok(chunk)).await.is_err() {
                // The client went away.
                return Ok(());
            }
            if rows.len() < CHUNK_ROWS as usize {
                break;
            }
        }
        tx.commit().await.map_err(StoreError::from)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(glob_to_like("*.example.com"), "%.example.com");
        assert_eq!(glob_to_like("a_b%c\\"), "a\\_b\\%c\\\\");
    }

    #[test]
    fn query_numbers_parameters_in_order() {
        let f = ExportFilter {
            since: Some("2026-11-26T00:00:00Z".parse().unwrap()),
            decision: Some(Verdict::Deny),
            host: Some("*.x".into()),
            repository: Some("o/r".into()),
            ..ExportFilter::default()
        };
        let (sql, params) = query("acme", &f);
        assert_eq!(
            sql,
            "SELECT record::text FROM audit WHERE org = $1 AND ts >= $2 AND decision = $3 \
             AND host ILIKE $4 ESCAPE '\\' AND repository = $5 ORDER BY ts, id"
        );
        assert_eq!(params.len(), 5);
    }

    #[test]
    fn csv_rows_match_the_header() {
        let line = r#"{"v":1,"id":"01JDQ3S1M7X9V0ZK4Q2W8T6B5N","ts":"2026-11-26T21:58:13.123456Z","runner":"r1","job":{"repository":"o/r"},"kind":"tcp","decision":"deny","reason":"no_rule","rule":"default","host":"a,b","host_source":"sni"}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        let row = csv_row(&r);
        assert_eq!(row.len(), CSV_COLUMNS.len());
        let mut f = Formatter::new(ExportFormat::Csv);
        f.header().unwrap();
        f.push(&r).unwrap();
        let text = String::from_utf8(f.take().unwrap().to_vec()).unwrap();
        let second = text.lines().nth(1).unwrap();
        assert!(
            second.starts_with("2026-11-26T21:58:13.123456Z,01JDQ3S1M7X9V0ZK4Q2W8T6B5N,r1,o/r,")
        );
        assert!(second.contains(",\"a,b\","));
    }
}
