//! The rows of each section of the summary (denied, would be denied in audit
//! mode, allowed), taken from the per-endpoint counts: one row per endpoint,
//! port and cause, the names of one domain folded into one `*.domain` row
//! when there are many of them, most decisions first.

use std::collections::HashMap;

use super::{Cause, NameSet, Row, Service, Summary};
use crate::suggest::{looks_like_public_suffix, valid_host};

/// Names under one domain (with the same port and cause) from which they
/// share one row: fewer are listed one by one.
pub(super) const GROUP_MIN: usize = 6;

/// A section of the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    /// Refused.
    Denied,
    /// Let through in audit mode; enforce mode would have refused.
    WouldDeny,
    /// Let through, and enforce mode would have too.
    Allowed,
}

/// One row of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// The host, IP or `?`; `*.domain` for a group.
    pub(super) endpoint: String,
    /// Names in the group; 1 for a single endpoint.
    pub(super) names: u64,
    /// The port column.
    pub(super) service: Service,
    /// Decisions of this section.
    pub(super) count: u64,
    /// Processes.
    pub(super) processes: NameSet,
    /// The allowing rules (allowed section).
    pub(super) rules: NameSet,
    /// Why it was (or would have been) denied (deny sections).
    pub(super) cause: Option<Cause>,
}

impl Entry {
    /// A group row (`*.domain`).
    pub(super) fn is_group(&self) -> bool {
        self.names > 1
    }
}

/// The rows of `section`, grouped and ordered: most decisions first, ties by
/// endpoint and port.
pub(super) fn section(s: &Summary, section: Section) -> Vec<Entry> {
    let mut rows = Vec::new();
    for ((endpoint, service), row) in &s.rows {
        let entry = |count: u64, rules: &NameSet, cause: Option<&Cause>| Entry {
            endpoint: endpoint.clone(),
            names: 1,
            service: *service,
            count,
            processes: row.processes.clone(),
            rules: rules.clone(),
            cause: cause.cloned(),
        };
        match section {
            Section::Denied => causes(&row.denies, &mut rows, entry),
            Section::WouldDeny => causes(&row.would_denies, &mut rows, entry),
            Section::Allowed => {
                let n = allowed_only(row);
                if n > 0 {
                    rows.push(entry(n, &row.allowed_by, None));
                }
            }
        }
    }
    let mut rows = group(rows);
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.endpoint.cmp(&b.endpoint))
            .then(a.service.cmp(&b.service))
    });
    rows
}

fn causes(
    by: &[(Cause, u64)],
    rows: &mut Vec<Entry>,
    entry: impl Fn(u64, &NameSet, Option<&Cause>) -> Entry,
) {
    let none = NameSet::default();
    rows.extend(by.iter().map(|(c, n)| entry(*n, &none, Some(c))));
}

/// Decisions that let the traffic through that enforce mode would have too.
fn allowed_only(row: &Row) -> u64 {
    row.allowed.saturating_sub(row.would_deny)
}

/// The domain a name is grouped under: its parent, when a wildcard on it
/// would be a valid rule that does not span unrelated sites.
fn parent(endpoint: &str) -> Option<String> {
    let name = valid_host(endpoint)?;
    let (_, parent) = name.split_once('.')?;
    (parent.contains('.') && !looks_like_public_suffix(parent)).then(|| parent.to_owned())
}

/// Fold [`GROUP_MIN`] or more names under one domain, with one port and
/// cause, into one `*.domain` row.
fn group(rows: Vec<Entry>) -> Vec<Entry> {
    let mut buckets: HashMap<(String, Service, Option<Cause>), Vec<usize>> = HashMap::new();
    for (i, e) in rows.iter().enumerate() {
        if e.endpoint.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        if let Some(p) = parent(&e.endpoint) {
            buckets
                .entry((p, e.service, e.cause.clone()))
                .or_default()
                .push(i);
        }
    }
    let mut taken = vec![false; rows.len()];
    let mut out = Vec::new();
    for ((parent, service, cause), members) in buckets {
        if members.len() < GROUP_MIN {
            continue;
        }
        let mut g = Entry {
            endpoint: format!("*.{parent}"),
            names: members.len() as u64,
            service,
            count: 0,
            processes: NameSet::default(),
            rules: NameSet::default(),
            cause,
        };
        for i in members {
            taken[i] = true;
            g.count += rows[i].count;
            g.processes.merge(&rows[i].processes);
            g.rules.merge(&rows[i].rules);
        }
        out.push(g);
    }
    out.extend(
        rows.into_iter()
            .zip(taken)
            .filter(|(_, t)| !t)
            .map(|(e, _)| e),
    );
    out
}
