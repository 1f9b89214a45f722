//! Export formats: JSON Lines (each record's journal line, byte for byte) and
//! CSV with a fixed, documented column order ([`CSV_COLUMNS`]) and a header
//! row. Both stream: one record in, one line out.
//!
//! This is the one definition of both formats: the policy service's central
//! export writes through the same [`Writer`] ([`Writer::write_record`] for
//! records that come from its store rather than a journal line, and
//! [`Writer::take`] to stream in chunks), so a record exported locally and
//! centrally gives the same bytes.

use std::io::{self, Write};

use crate::reader::RawRecord;
use crate::record::Record;

/// Output format of `egressd audit export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per line, exactly as in the journal.
    #[default]
    Jsonl,
    /// Comma-separated values with a header row.
    Csv,
}

/// The CSV columns, in order. Nested fields are flattened (`job.repository`
/// becomes `repository`, `process.pid` becomes `pid`); an absent field is an
/// empty cell. Part of the public interface, like the record's field names.
pub const CSV_COLUMNS: [&str; 30] = [
    "v",
    "id",
    "ts",
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
    // Added after the first release: last, so no column moves.
    "port",
    "count",
    // A counted record's sample names, separated by spaces (no name has one).
    "samples",
];

/// The CSV cells of one record, in [`CSV_COLUMNS`] order.
pub fn csv_row(r: &Record) -> [String; 30] {
    fn opt<T: ToString>(v: Option<T>) -> String {
        v.map(|v| v.to_string()).unwrap_or_default()
    }
    // Enum values as their stable serialised strings.
    fn code<T: serde::Serialize>(v: &T) -> String {
        match serde_json::to_value(v) {
            Ok(serde_json::Value::String(s)) => s,
            _ => String::new(),
        }
    }
    let job = r.job.as_ref();
    let p = r.process.as_ref();
    [
        r.v.to_string(),
        r.id.to_string(),
        code(&TsField(r.ts)),
        r.runner.clone(),
        opt(job.and_then(|j| j.repository.as_deref())),
        opt(job.and_then(|j| j.workflow.as_deref())),
        opt(job.and_then(|j| j.run_id.as_deref())),
        opt(job.and_then(|j| j.run_attempt.as_deref())),
        opt(job.and_then(|j| j.job.as_deref())),
        r.kind.as_str().to_owned(),
        r.decision.as_str().to_owned(),
        opt(r.enforce_would.map(|v| v.as_str())),
        r.reason.as_str().to_owned(),
        r.rule.clone(),
        opt(r.host.as_deref()),
        r.host_source.as_str().to_owned(),
        opt(r.dst),
        opt(r.src),
        opt(p.and_then(|p| p.pid)),
        opt(p.and_then(|p| p.comm.as_deref())),
        opt(p.and_then(|p| p.exe.as_deref())),
        opt(p.and_then(|p| p.cgroup.as_deref())),
        opt(p.and_then(|p| p.container.as_deref())),
        opt(r.bytes_up),
        opt(r.bytes_down),
        opt(r.duration_ms),
        opt(r.detail.as_deref()),
        opt(r.port),
        opt(r.count),
        opt(r.samples.as_ref().map(|s| s.join(" "))),
    ]
}

/// `ts` through the record's own serialiser, so CSV and JSON agree.
struct TsField(jiff::Timestamp);

impl serde::Serialize for TsField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::time_format::serialize(&self.0, s)
    }
}

/// Writes records in one [`Format`] to a byte sink.
pub struct Writer<W: Write> {
    inner: Inner<W>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "one writer per export; the size does not matter"
)]
enum Inner<W: Write> {
    Jsonl(W),
    Csv(csv::Writer<W>),
}

impl<W: Write> Writer<W> {
    /// Start writing; for CSV this writes the header row.
    pub fn new(format: Format, out: W) -> io::Result<Self> {
        let inner = match format {
            Format::Jsonl => Inner::Jsonl(out),
            Format::Csv => {
                let mut w = csv_writer(out);
                w.write_record(CSV_COLUMNS).map_err(csv_io)?;
                Inner::Csv(w)
            }
        };
        Ok(Writer { inner })
    }

    /// Write one record.
    pub fn write(&mut self, raw: &RawRecord) -> io::Result<()> {
        match &mut self.inner {
            Inner::Jsonl(w) => {
                w.write_all(raw.line.as_bytes())?;
                w.write_all(b"\n")
            }
            Inner::Csv(w) => w.write_record(csv_row(&raw.record)).map_err(csv_io),
        }
    }

    /// Write one record that has no journal line at hand (the service's
    /// store). JSON Lines is the record serialised exactly as the journal
    /// serialises it, so for every line the journal wrote this is the same
    /// bytes as [`Writer::write`].
    pub fn write_record(&mut self, r: &Record) -> io::Result<()> {
        match &mut self.inner {
            Inner::Jsonl(w) => {
                serde_json::to_writer(&mut *w, r).map_err(io::Error::other)?;
                w.write_all(b"\n")
            }
            Inner::Csv(w) => w.write_record(csv_row(r)).map_err(csv_io),
        }
    }

    /// Flush and hand back the sink.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::Jsonl(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Inner::Csv(w) => w.into_inner().map_err(|e| e.into_error()),
        }
    }
}

impl Writer<Vec<u8>> {
    /// Everything written since the last `take` (the header included, the
    /// first time), leaving the writer ready for more rows: for streaming an
    /// export in chunks.
    pub fn take(&mut self) -> io::Result<Vec<u8>> {
        match &mut self.inner {
            Inner::Jsonl(buf) => Ok(std::mem::take(buf)),
            Inner::Csv(w) => {
                // `csv::Writer` buffers internally and lends no `&mut` to its
                // sink: swap in a fresh one (no header) and unwrap the old.
                let old = std::mem::replace(w, csv_writer(Vec::new()));
                old.into_inner().map_err(|e| e.into_error())
            }
        }
    }
}

/// The CSV dialect: RFC 4180 quoting, `\n`-terminated rows.
fn csv_writer<W: Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out)
}

fn csv_io(e: csv::Error) -> io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests;
