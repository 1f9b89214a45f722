//! The endpoint summary of a set of records (a job, a time range): one row
//! per host (or IP when no name was seen) and port with allowed and denied
//! counts, the processes and the rules, rendered as a GitHub-flavoured
//! Markdown table for `$GITHUB_STEP_SUMMARY`. Memory grows with the number of
//! distinct endpoints, not with the number of records.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};

use egressd_policy::{Reason, Verdict};

use crate::record::{Kind, Record};

/// Distinct processes or rules listed per row before "and N more".
const MAX_NAMES: usize = 5;
/// Rows rendered before the rest is cut (a step summary is limited in size).
const MAX_ROWS: usize = 300;

/// What was reached: a host name, or the destination IP when no name was
/// known, or `?` when neither was.
pub type Endpoint = String;

/// The port column: which protocol, and the port where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// TCP to this port.
    Tcp(u16),
    /// UDP to this port (denied in the kernel unless DNS).
    Udp(u16),
    /// A DNS query (the host is the name asked).
    Dns,
    /// An ICMP socket.
    Icmp,
    /// A raw or packet socket.
    Raw,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Tcp(p) => write!(f, "{p}"),
            Service::Udp(p) => write!(f, "udp/{p}"),
            Service::Dns => f.write_str("dns"),
            Service::Icmp => f.write_str("icmp"),
            Service::Raw => f.write_str("raw"),
        }
    }
}

/// A set of names that keeps at most [`MAX_NAMES`] and counts the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameSet {
    names: BTreeSet<String>,
    more: bool,
}

impl NameSet {
    fn insert(&mut self, name: &str) {
        if self.names.contains(name) {
            return;
        }
        if self.names.len() < MAX_NAMES {
            self.names.insert(name.to_owned());
        } else {
            self.more = true;
        }
    }

    /// The names kept, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Whether names were left out.
    pub fn truncated(&self) -> bool {
        self.more
    }
}

/// One endpoint's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Decisions that let the traffic through.
    pub allowed: u64,
    /// Decisions that refused it.
    pub denied: u64,
    /// Of `allowed`: audit mode, enforce mode would have denied.
    pub would_deny: u64,
    /// Process names (`comm`, else the `exe` file name).
    pub processes: NameSet,
    /// Rule ids that decided.
    pub rules: NameSet,
}

/// The summary of some records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    rows: HashMap<(Endpoint, Service), Row>,
    /// Decisions that let traffic through.
    pub allowed: u64,
    /// Decisions that refused traffic.
    pub denied: u64,
    /// Audit mode: allowed decisions that enforce mode would have denied.
    pub would_deny: u64,
    /// Records of kind `event` (things about egressd itself).
    pub events: u64,
    /// Of `events`: journal segments removed to bound its size.
    pub segments_removed: u64,
}

/// Summarise `records`. Closing records (byte counts of a connection already
/// counted) and events are not endpoint decisions and are not counted as such.
pub fn summarize<I: IntoIterator<Item = Record>>(records: I) -> Summary {
    let mut s = Summary::default();
    for rec in records {
        s.add(&rec);
    }
    s
}

impl Summary {
    /// Count one more record.
    pub fn add(&mut self, rec: &Record) {
        if rec.kind == Kind::Event {
            self.events += 1;
            if rec.reason == Reason::JournalSegmentRemoved {
                self.segments_removed += 1;
            }
            return;
        }
        if rec.is_closing() {
            return;
        }
        let (endpoint, service) = endpoint_of(rec);
        let row = self.rows.entry((endpoint, service)).or_default();
        match rec.decision {
            Verdict::Allow => {
                self.allowed += 1;
                row.allowed += 1;
                if rec.enforce_would == Some(Verdict::Deny) {
                    self.would_deny += 1;
                    row.would_deny += 1;
                }
            }
            Verdict::Deny => {
                self.denied += 1;
                row.denied += 1;
            }
        }
        if let Some(name) = process_name(rec) {
            row.processes.insert(name);
        }
        row.rules.insert(&rec.rule);
    }

    /// Rows, most important first: denied, then would-be-denied, then the
    /// busiest; ties by endpoint and port.
    pub fn rows(&self) -> Vec<(&Endpoint, Service, &Row)> {
        let mut rows: Vec<_> = self.rows.iter().map(|((e, s), r)| (e, *s, r)).collect();
        rows.sort_by(|a, b| {
            (b.2.denied > 0)
                .cmp(&(a.2.denied > 0))
                .then(b.2.denied.cmp(&a.2.denied))
                .then(b.2.would_deny.cmp(&a.2.would_deny))
                .then(b.2.allowed.cmp(&a.2.allowed))
                .then(a.0.cmp(b.0))
                .then(a.1.cmp(&b.1))
        });
        rows
    }

    /// A GitHub-flavoured Markdown summary: a header line with the totals,
    /// then the table (`Host or IP | Port | Allowed | Denied | Processes |
    /// Rule`, plus `Would deny` when audit-mode records are present).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let endpoints = self.rows.len();
        let _ = write!(
            out,
            "### egressd: {} allowed, {} denied, {} endpoint{}",
            self.allowed,
            self.denied,
            endpoints,
            if endpoints == 1 { "" } else { "s" }
        );
        let audit_mode = self.rows.values().any(|r| r.would_deny > 0);
        if audit_mode {
            let _ = write!(
                out,
                " (audit mode: {} would have been denied)",
                self.would_deny
            );
        }
        out.push_str("\n\n");
        if self.segments_removed > 0 {
            let _ = writeln!(
                out,
                "> **Warning:** {} audit journal segment(s) were removed to stay within the size bound; \
                 older records are missing. Raise the journal size or ship records centrally.\n",
                self.segments_removed
            );
        }
        if endpoints == 0 {
            out.push_str("No network decisions were recorded.\n");
            return out;
        }
        out.push_str("| Host or IP | Port | Allowed | Denied |");
        if audit_mode {
            out.push_str(" Would deny |");
        }
        out.push_str(" Processes | Rule |\n|---|---|--:|--:|");
        if audit_mode {
            out.push_str("--:|");
        }
        out.push_str("---|---|\n");
        let rows = self.rows();
        for (endpoint, service, row) in rows.iter().take(MAX_ROWS) {
            let _ = write!(
                out,
                "| {} | {} | {} | {} |",
                markdown_text(endpoint),
                service,
                row.allowed,
                row.denied
            );
            if audit_mode {
                let _ = write!(out, " {} |", row.would_deny);
            }
            let _ = writeln!(
                out,
                " {} | {} |",
                names_cell(&row.processes),
                names_cell(&row.rules)
            );
        }
        if rows.len() > MAX_ROWS {
            let _ = writeln!(
                out,
                "\n{} more endpoints not shown; use `egressd audit export` for all records.",
                rows.len() - MAX_ROWS
            );
        }
        out
    }
}

fn endpoint_of(rec: &Record) -> (Endpoint, Service) {
    let port = rec.dst.map_or(0, |d| d.port());
    let service = match rec.kind {
        Kind::Dns => Service::Dns,
        Kind::Udp => Service::Udp(port),
        Kind::Icmp => Service::Icmp,
        Kind::Raw => Service::Raw,
        Kind::Tcp | Kind::Event => Service::Tcp(port),
    };
    let endpoint = match (&rec.host, rec.dst) {
        (Some(h), _) => h.trim_end_matches('.').to_ascii_lowercase(),
        (None, Some(d)) => d.ip().to_string(),
        (None, None) => "?".to_owned(),
    };
    (endpoint, service)
}

/// The process's short name: `comm`, else the file name of `exe`.
pub(crate) fn process_name(rec: &Record) -> Option<&str> {
    let p = rec.process.as_ref()?;
    p.comm
        .as_deref()
        .filter(|c| !c.is_empty())
        .or_else(|| p.exe.as_deref().map(|e| e.rsplit('/').next().unwrap_or(e)))
}

fn names_cell(set: &NameSet) -> String {
    let mut cell = set
        .names()
        .map(markdown_text)
        .collect::<Vec<_>>()
        .join(", ");
    if set.truncated() {
        cell.push_str(", …");
    }
    cell
}

/// Text from the network (an SNI, a process name) made inert in a Markdown
/// table cell: punctuation Markdown reacts to is escaped, control characters
/// are replaced.
fn markdown_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
