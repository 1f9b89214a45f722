//! The summary as GitHub-flavoured Markdown, at most [`MAX_BYTES`]: the
//! heading with the totals, the denied rows (with why and how to allow each),
//! the rows audit mode would have denied, the rules to add as YAML, then the
//! allowed rows. The room is shared fairly between the sections, so however
//! many denies there are the allowed endpoints keep a section of their own;
//! what does not fit is counted, with the `egressd audit export` command
//! that lists it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use super::cause::{self, Explained, Remedy, Target};
use super::entries::{self, Entry, Section};
use super::{NameSet, Summary};

/// The most bytes a summary takes: GitHub accepts up to 1 MiB per step
/// summary; a summary is read by a person, and other steps write there too.
pub const MAX_BYTES: usize = 64 * 1024;
/// Room kept for everything but the rows: headings, warnings, notes.
const FRAME: usize = 4 * 1024;
/// Group rows whose export command the note spells out.
const MAX_GROUP_COMMANDS: usize = 5;

/// One section's rows, rendered as far as the whole budget reaches.
struct Prepared {
    kind: Section,
    entries: Vec<Entry>,
    explained: Vec<Option<Explained>>,
    lines: Vec<String>,
    /// Bytes each rendered row needs (its line, and its YAML rule).
    costs: Vec<usize>,
    /// Rows that fit the section's share.
    shown: usize,
}

impl Prepared {
    fn new(s: &Summary, kind: Section, budget: usize) -> Prepared {
        let entries = entries::section(s, kind);
        let mut p = Prepared {
            kind,
            explained: Vec::new(),
            lines: Vec::new(),
            costs: Vec::new(),
            shown: 0,
            entries: Vec::new(),
        };
        let mut total = 0;
        for e in &entries {
            if total > budget {
                break;
            }
            let explained = e
                .cause
                .as_ref()
                .map(|c| cause::explain(c, &e.endpoint, e.service));
            let line = row_line(e, explained.as_ref());
            let cost = line.len() + explained.as_ref().map_or(0, yaml_cost);
            total += cost;
            p.lines.push(line);
            p.costs.push(cost);
            p.explained.push(explained);
        }
        p.entries = entries;
        p
    }

    fn need(&self) -> usize {
        self.costs.iter().sum()
    }

    /// Show the rows that fit in `share` bytes.
    fn fit(&mut self, share: usize) {
        let mut used = 0;
        self.shown = self
            .costs
            .iter()
            .take_while(|c| {
                used += **c;
                used <= share
            })
            .count();
    }

    fn left_out(&self) -> (usize, u64) {
        let rest = &self.entries[self.shown..];
        (rest.len(), rest.iter().map(|e| e.count).sum())
    }
}

/// Share `budget` between sections needing `needs`: each gets what it needs
/// up to an equal part of what the smaller ones left.
fn shares(needs: &[usize], budget: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..needs.len()).collect();
    order.sort_by_key(|&i| needs[i]);
    let mut out = vec![0; needs.len()];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let share = needs[i].min(left / (needs.len() - k));
        out[i] = share;
        left -= share;
    }
    out
}

pub(super) fn markdown(s: &Summary) -> String {
    let mut out = heading(s);
    if s.rows.is_empty() {
        out.push_str("No network decisions were recorded.\n");
        return out;
    }
    let budget = MAX_BYTES.saturating_sub(out.len() + FRAME);
    let mut sections: Vec<Prepared> = [Section::Denied, Section::WouldDeny, Section::Allowed]
        .into_iter()
        .map(|k| Prepared::new(s, k, budget))
        .filter(|p| !p.entries.is_empty())
        .collect();
    let needs: Vec<usize> = sections.iter().map(Prepared::need).collect();
    for (p, share) in sections.iter_mut().zip(shares(&needs, budget)) {
        p.fit(share);
    }
    let mut rules = Rules::default();
    for p in sections.iter().filter(|p| p.kind != Section::Allowed) {
        write_section(&mut out, p);
        for e in p.explained[..p.shown].iter().flatten() {
            if let Remedy::Allow(sug) = &e.remedy {
                rules.add(&sug.target, sug.port);
            }
        }
    }
    rules.write(&mut out);
    for p in sections.iter().filter(|p| p.kind == Section::Allowed) {
        write_section(&mut out, p);
    }
    group_note(&mut out, &sections);
    let (rows, decisions) = sections.iter().fold((0, 0), |(r, d), p| {
        let (pr, pd) = p.left_out();
        (r + pr, d + pd)
    });
    if rows > 0 {
        let _ = writeln!(
            out,
            "\n> This summary is kept under {} KiB (GitHub takes at most 1 MiB per step summary): \
             {rows} row{} ({decisions} decision{}) left out, as counted above.",
            MAX_BYTES / 1024,
            plural(rows as u64),
            plural(decisions),
        );
    }
    if out.len() > MAX_BYTES {
        // The frame is sized for the notes; never exceed the bound anyway.
        let mut end = MAX_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn heading(s: &Summary) -> String {
    let mut out = String::new();
    let endpoints = s.rows.len();
    let _ = write!(
        out,
        "### egressd: {} allowed, {} denied, {} endpoint{}",
        s.allowed,
        s.denied,
        endpoints,
        plural(endpoints as u64)
    );
    if s.would_deny > 0 {
        let _ = write!(
            out,
            " (audit mode: {} would have been denied)",
            s.would_deny
        );
    }
    out.push_str("\n\n");
    if s.segments_removed > 0 {
        let _ = writeln!(
            out,
            "> **Warning:** {} audit journal segment(s) were removed to stay within the size bound; \
             older records are missing. Raise the journal size or ship records centrally.\n",
            s.segments_removed
        );
    }
    if s.budget_exhausted {
        out.push_str(
            "> **Egress stopped:** this job's audit records filled the journal's size budget, so egressd \
             denied its further traffic (`audit_budget_exhausted`) instead of removing its earlier records. \
             Find what flooded it, or raise --audit-max-size.\n\n",
        );
    }
    if s.coalesced > 0 {
        let _ = writeln!(
            out,
            "{} repeated decision(s) were recorded as counts (records with `count` and `samples`), not one record each.\n",
            s.coalesced
        );
    }
    out
}

fn write_section(out: &mut String, p: &Prepared) {
    let decisions: u64 = p.entries.iter().map(|e| e.count).sum();
    let (title, count_column, columns, export) = match p.kind {
        Section::Denied => (
            "Denied",
            "Denied",
            "Why | How to allow |\n|---|---|--:|---|---|---|",
            "list every denied record with `egressd audit export --decision deny`",
        ),
        Section::WouldDeny => (
            "Would be denied in enforce mode (audit mode let it through)",
            "Would deny",
            "Why | How to allow |\n|---|---|--:|---|---|---|",
            "`egressd audit export` lists every record (these have `enforce_would` `deny`)",
        ),
        Section::Allowed => (
            "Allowed",
            "Allowed",
            "Rule |\n|---|---|--:|---|---|",
            "list every allowed record with `egressd audit export --decision allow`",
        ),
    };
    let _ = writeln!(
        out,
        "#### {title}: {decisions} decision{}\n\n| Host or IP | Port | {count_column} | Processes | {columns}",
        plural(decisions)
    );
    for line in &p.lines[..p.shown] {
        out.push_str(line);
    }
    let (rows, decisions) = p.left_out();
    if rows > 0 {
        let _ = writeln!(
            out,
            "\n{rows} more row{} ({decisions} decision{}) not shown; {export}.",
            plural(rows as u64),
            plural(decisions)
        );
    }
    out.push('\n');
}

fn row_line(e: &Entry, explained: Option<&Explained>) -> String {
    let host = if e.is_group() {
        markdown_text(&format!("{} ({} names)", e.endpoint, e.names))
    } else {
        markdown_text(&e.endpoint)
    };
    let mut line = format!(
        "| {host} | {} | {} | {} |",
        e.service,
        e.count,
        names_cell(&e.processes)
    );
    match explained {
        Some(x) => {
            let _ = writeln!(line, " {} | {} |", x.why, remedy_cell(&x.remedy));
        }
        None => {
            let _ = writeln!(line, " {} |", names_cell(&e.rules));
        }
    }
    line
}

fn remedy_cell(r: &Remedy) -> String {
    match r {
        Remedy::Allow(s) => {
            let mut cell = format!("add `{}`", target_yaml(&s.target).replace('|', "\\|"));
            if let Some(p) = s.port {
                let _ = write!(cell, " with `ports: [{p}]`");
            }
            cell.push_str(" to `allow:` (YAML below)");
            if let Target::Host(h) = &s.target
                && let Some(parent) = h.strip_prefix("*.")
            {
                let _ = write!(cell, "; it allows every name under {parent}");
            }
            cell
        }
        Remedy::Blocked(t) | Remedy::Other(t) => t.clone(),
    }
}

/// `host: "x"` or `ip: "x"`: a JSON string is a valid YAML double-quoted
/// scalar, and `*.` must be quoted in YAML.
fn target_yaml(t: &Target) -> String {
    let (key, value) = match t {
        Target::Host(h) => ("host", h.clone()),
        Target::Ip(ip) => ("ip", ip.to_string()),
    };
    let quoted = serde_json::to_string(&value).unwrap_or_else(|_| format!("\"{value}\""));
    format!("{key}: {quoted}")
}

fn yaml_cost(x: &Explained) -> usize {
    match &x.remedy {
        // `  - ` + target + `\n    ports: [NNNNN]\n` and a comment at most.
        Remedy::Allow(s) => 80 + target_yaml(&s.target).len(),
        Remedy::Blocked(_) | Remedy::Other(_) => 0,
    }
}

/// The rules to add, merged per target, in the order their rows appear.
#[derive(Default)]
struct Rules {
    order: Vec<(Target, BTreeSet<u16>)>,
    index: HashMap<Target, usize>,
}

impl Rules {
    fn add(&mut self, target: &Target, port: Option<u16>) {
        let i = *self.index.entry(target.clone()).or_insert_with(|| {
            self.order.push((target.clone(), BTreeSet::new()));
            self.order.len() - 1
        });
        if let Some(p) = port {
            self.order[i].1.insert(p);
        }
    }

    fn write(&self, out: &mut String) {
        if self.order.is_empty() {
            return;
        }
        let example = self
            .order
            .iter()
            .find_map(|(t, ports)| {
                let host = match t {
                    Target::Host(h) if h.starts_with("*.") => return None,
                    Target::Host(h) => h.clone(),
                    Target::Ip(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
                    Target::Ip(ip) => ip.to_string(),
                };
                Some(match ports.first() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "HOST:PORT".to_owned());
        let _ = writeln!(
            out,
            "To allow what no rule allows, add these rules to the policy's `allow:` list \
             (check the result with `egressd explain POLICY {example}`):\n\n```yaml\nallow:"
        );
        for (target, ports) in &self.order {
            if ports.is_empty() {
                out.push_str("  # seen in DNS queries only: add `ports:` to narrow it\n");
            }
            let _ = writeln!(out, "  - {}", target_yaml(target));
            if !ports.is_empty() {
                let list: Vec<String> = ports.iter().map(u16::to_string).collect();
                let _ = writeln!(out, "    ports: [{}]", list.join(", "));
            }
        }
        out.push_str("```\n\n");
    }
}

/// Say that group rows hold many names, and how to list them.
fn group_note(out: &mut String, sections: &[Prepared]) {
    let mut groups: Vec<&str> = Vec::new();
    let mut more = false;
    for p in sections {
        for e in p.entries[..p.shown].iter().filter(|e| e.is_group()) {
            if groups.contains(&e.endpoint.as_str()) {
                continue;
            }
            if groups.len() == MAX_GROUP_COMMANDS {
                more = true;
                break;
            }
            groups.push(&e.endpoint);
        }
    }
    if groups.is_empty() {
        return;
    }
    let commands: Vec<String> = groups
        .iter()
        .map(|g| format!("`egressd audit export --host '{g}'`"))
        .collect();
    let _ = writeln!(
        out,
        "A row `*.domain (N names)` stands for {} or more names under one domain with the same port \
         and outcome; the full list is in the export: {}{}.",
        entries::GROUP_MIN,
        commands.join(", "),
        if more { ", ..." } else { "" }
    );
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
pub(super) fn markdown_text(s: &str) -> String {
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
