//! Counting egressd's audit records after a run: one decision record per
//! decision the load generator caused (a counted record as its `count`),
//! plus closing records (with
//! `bytes_up`) for allowed tunnels. A single missing record fails the run.

use std::path::Path;

/// Records found in an audit directory.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuditCount {
    /// Decision records (no `bytes_up`).
    pub decisions: u64,
    /// Closing records (with `bytes_up`).
    pub closing: u64,
    /// Lines that are not a JSON object (a torn tail, at most one per segment).
    pub unreadable: u64,
    /// `journal_segment_removed` events: the journal outgrew its size budget
    /// and dropped whole segments, so the counts above are short by design.
    pub segments_removed: u64,
}

/// Counts every JSON Lines record under `dir` (recursively).
pub fn count(dir: &Path) -> std::io::Result<AuditCount> {
    let mut c = AuditCount::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(serde_json::Value::Object(o))
                        if o.get("reason").and_then(|r| r.as_str())
                            == Some("journal_segment_removed") =>
                    {
                        c.segments_removed += 1;
                    }
                    Ok(serde_json::Value::Object(o))
                        if o.contains_key("v") && o.contains_key("decision") =>
                    {
                        if o.get("bytes_up").is_some_and(|b| !b.is_null()) {
                            c.closing += 1;
                        } else {
                            // A counted record stands for `count` decisions.
                            c.decisions += o.get("count").and_then(|n| n.as_u64()).unwrap_or(1);
                        }
                    }
                    _ => c.unreadable += 1,
                }
            }
        }
    }
    Ok(c)
}

/// The verdict on one egressd lifetime.
#[derive(Clone, Debug)]
pub struct AuditCheck {
    /// Decisions the load generator saw egressd make.
    pub expected_decisions: u64,
    /// Allowed tunnels that must have a closing record.
    pub expected_closing: u64,
    /// What the journal holds.
    pub found: AuditCount,
}

impl AuditCheck {
    /// Records missing (0 when the journal is complete). A journal that
    /// removed segments cannot be checked: it counts as at least one missing.
    pub fn missing(&self) -> u64 {
        let short = self.expected_decisions.saturating_sub(self.found.decisions)
            + self.expected_closing.saturating_sub(self.found.closing);
        if self.found.segments_removed > 0 {
            short.max(1)
        } else {
            short
        }
    }

    /// One table cell.
    pub fn cell(&self) -> String {
        let m = self.missing();
        let status = if m == 0 { "ok" } else { "**MISSING**" };
        let removed = match self.found.segments_removed {
            0 => String::new(),
            n => format!(
                " ({n} segments removed: the journal outgrew --audit-max-size; raise it for the bench)"
            ),
        };
        format!(
            "{status}: {}/{} decisions, {}/{} closing{removed}",
            self.found.decisions,
            self.expected_decisions,
            self.found.closing,
            self.expected_closing
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_decisions_and_closing_records_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("seg-1.jsonl"),
            "{\"v\":1,\"decision\":\"allow\"}\n{\"v\":1,\"decision\":\"allow\",\"bytes_up\":32}\n{\"v\":1,\"decision\":\"deny\"}\n{\"v\":1,\"dec",
        )
        .unwrap();
        let c = count(dir.path()).unwrap();
        assert_eq!((c.decisions, c.closing, c.unreadable), (2, 1, 1));
        let check = AuditCheck {
            expected_decisions: 3,
            expected_closing: 1,
            found: c,
        };
        assert_eq!(check.missing(), 1);
    }

    #[test]
    fn a_counted_record_counts_as_its_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("seg-1.jsonl"),
            "{\"v\":1,\"decision\":\"deny\"}\n{\"v\":1,\"decision\":\"deny\",\"count\":480}\n",
        )
        .unwrap();
        assert_eq!(count(dir.path()).unwrap().decisions, 481);
    }

    #[test]
    fn a_journal_that_removed_segments_fails_the_check_even_when_counts_match() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("seg-2.jsonl"),
            "{\"v\":1,\"decision\":\"deny\",\"reason\":\"journal_segment_removed\"}\n{\"v\":1,\"decision\":\"allow\"}\n",
        )
        .unwrap();
        let c = count(dir.path()).unwrap();
        assert_eq!((c.decisions, c.segments_removed), (1, 1));
        let check = AuditCheck {
            expected_decisions: 1,
            expected_closing: 0,
            found: c,
        };
        assert_eq!(check.missing(), 1);
        assert!(
            check.cell().contains("1 segments removed"),
            "{}",
            check.cell()
        );
    }
}
