//! The endpoint summary of a set of records (a job, a time range), rendered
//! as GitHub-flavoured Markdown for `$GITHUB_STEP_SUMMARY`: one row per host
//! (or IP when no name was seen) and port with allowed and denied counts, the
//! processes and the rules, and per deny the cause it was denied for. Memory
//! grows with the number of distinct endpoints, not with the number of
//! records. What a row says and how rows are grouped and bounded in size
//! lives in the submodules.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use egressd_policy::{Reason, Verdict};

use crate::record::{Kind, Record};

mod cause;
mod entries;
mod render;

pub use render::MAX_BYTES;

/// Distinct processes or rules listed per row before "and N more".
const MAX_NAMES: usize = 5;

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

impl Service {
    /// The port a rule would name, when there is one.
    fn port(self) -> Option<u16> {
        match self {
            Service::Tcp(p) | Service::Udp(p) => Some(p),
            Service::Dns | Service::Icmp | Service::Raw => None,
        }
    }
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

    fn merge(&mut self, other: &NameSet) {
        for n in &other.names {
            self.insert(n);
        }
        self.more |= other.more;
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

/// Why traffic was (or, in audit mode, would have been) denied: the reason
/// code and the rule that decided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cause {
    /// The reason code.
    pub reason: Reason,
    /// The rule id.
    pub rule: String,
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
    /// Rule ids that allowed it (enforce mode would have too).
    allowed_by: NameSet,
    /// `denied`, by cause (nearly always one).
    denies: Vec<(Cause, u64)>,
    /// `would_deny`, by cause.
    would_denies: Vec<(Cause, u64)>,
}

/// Count the decisions of `rec` (one, or a counted record's `count`) under
/// its cause in `by`.
fn count_cause(by: &mut Vec<(Cause, u64)>, rec: &Record) {
    let n = rec.decisions();
    match by
        .iter_mut()
        .find(|(c, _)| c.reason == rec.reason && c.rule == rec.rule)
    {
        Some((_, have)) => *have += n,
        None => by.push((
            Cause {
                reason: rec.reason,
                rule: rec.rule.clone(),
            },
            n,
        )),
    }
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
    /// Decisions written as counted records (`count`), not one record each
    /// (they are in `denied` or `would_deny` too).
    pub coalesced: u64,
    /// The job's traffic was denied because its records filled the audit
    /// journal's size budget (`audit_budget_exhausted`).
    pub budget_exhausted: bool,
}

/// Summarise `records`. Closing records (byte counts of a connection already
/// counted) and events are not endpoint decisions and are not counted as such.
/// A counted record counts as the `count` decisions it stands for.
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
            match rec.reason {
                Reason::JournalSegmentRemoved => self.segments_removed += 1,
                Reason::AuditBudgetExhausted => self.budget_exhausted = true,
                _ => {}
            }
            return;
        }
        if rec.is_closing() {
            return;
        }
        if rec.reason == Reason::AuditBudgetExhausted {
            self.budget_exhausted = true;
        }
        let n = rec.decisions();
        if rec.count.is_some() {
            self.coalesced += n;
        }
        let (endpoint, service) = endpoint_of(rec);
        let row = self.rows.entry((endpoint, service)).or_default();
        match rec.decision {
            Verdict::Allow => {
                self.allowed += n;
                row.allowed += n;
                if rec.enforce_would == Some(Verdict::Deny) {
                    self.would_deny += n;
                    row.would_deny += n;
                    count_cause(&mut row.would_denies, rec);
                } else {
                    row.allowed_by.insert(&rec.rule);
                }
            }
            Verdict::Deny => {
                self.denied += n;
                row.denied += n;
                count_cause(&mut row.denies, rec);
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

    /// Distinct endpoints (host or IP, and port).
    pub fn endpoints(&self) -> usize {
        self.rows.len()
    }

    /// A GitHub-flavoured Markdown summary of at most [`MAX_BYTES`]: a
    /// heading with the totals, then a section of denied endpoints (most
    /// denied first, each with why and how to allow it), one of what audit
    /// mode would have denied, and one of the allowed endpoints, which denies
    /// never crowd out. Many names under one domain share a row; what does
    /// not fit is counted, with the command that lists it all.
    pub fn to_markdown(&self) -> String {
        render::markdown(self)
    }
}

fn endpoint_of(rec: &Record) -> (Endpoint, Service) {
    // A name denied before it was dialled has only the port asked for.
    let port = rec.port().unwrap_or(0);
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

#[cfg(test)]
mod tests;
