//! Export from the store: the filter (`since`, `until`, `decision`, `host`
//! glob, `repository`), the SQL it becomes, and the JSON Lines / CSV output,
//! streamed through a server-side portal in fixed-size chunks so that an
//! export of any size holds one chunk of rows in memory at a time.

use std::time::SystemTime;

use bytes::Bytes;
use egressd_audit::Record;
use egressd_audit::export;
use egressd_policy::Verdict;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;

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
    /// A header line then one row per record
    /// ([`egressd_audit::export::CSV_COLUMNS`]).
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
    /// Host glob: `*` matches any run of characters, `?` one character,
    /// case-insensitive (`*.example.com`, `api.github.com`).
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
            '?' => out.push('_'),
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

/// Formats rows into output chunks with the audit crate's writer: the one
/// definition of the public JSON Lines and CSV formats, so the central
/// export gives the same bytes as `egressd audit export --dir`.
struct Formatter {
    writer: export::Writer<Vec<u8>>,
}

impl Formatter {
    /// Start; for CSV the header row is in the first chunk.
    fn new(format: ExportFormat) -> std::io::Result<Self> {
        let format = match format {
            ExportFormat::Jsonl => export::Format::Jsonl,
            ExportFormat::Csv => export::Format::Csv,
        };
        Ok(Formatter {
            writer: export::Writer::new(format, Vec::new())?,
        })
    }

    fn push(&mut self, r: &Record) -> std::io::Result<()> {
        self.writer.write_record(r)
    }

    fn take(&mut self) -> std::io::Result<Bytes> {
        self.writer.take().map(Bytes::from)
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
    Format(#[from] std::io::Error),
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
        let mut fmt = Formatter::new(format)?;
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
        assert_eq!(glob_to_like("api?.x"), "api_.x");
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
    fn csv_is_the_audit_crates_format() {
        let line = r#"{"v":1,"id":"01JDQ3S1M7X9V0ZK4Q2W8T6B5N","ts":"2026-11-26T21:58:13.123456Z","runner":"r1","job":{"repository":"o/r"},"kind":"tcp","decision":"deny","reason":"no_rule","rule":"default","host":"a,b","host_source":"sni"}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        let mut f = Formatter::new(ExportFormat::Csv).unwrap();
        f.push(&r).unwrap();
        let text = String::from_utf8(f.take().unwrap().to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "{}\n1,01JDQ3S1M7X9V0ZK4Q2W8T6B5N,2026-11-26T21:58:13.123456Z,r1,o/r,,,,,tcp,deny,,no_rule,default,\"a,b\",sni,,,,,,,,,,,,,,\n",
                export::CSV_COLUMNS.join(",")
            )
        );
        let mut f = Formatter::new(ExportFormat::Jsonl).unwrap();
        f.push(&r).unwrap();
        assert_eq!(f.take().unwrap(), format!("{line}\n").as_bytes());
    }
}
