//! Segment files of a journal directory: how they are named and how the
//! directory is listed in order.
//!
//! A segment is `audit-SEQ.jsonl` where `SEQ` is a 20-digit zero-padded
//! sequence number (`audit-00000000000000000042.jsonl`), so the lexical order
//! of names is the order of writing and the number is readable at a glance.
//! Sequence numbers start at 1 and only grow; a journal that opens a directory
//! always starts a new segment after the highest one present.

use std::io;
use std::path::{Path, PathBuf};

const PREFIX: &str = "audit-";
const SUFFIX: &str = ".jsonl";
const DIGITS: usize = 20;

/// The file name of segment `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{PREFIX}{seq:0DIGITS$}{SUFFIX}")
}

/// The path of segment `seq` in `dir`.
pub fn path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(file_name(seq))
}

/// The sequence number of a segment file name, or `None` for any other file.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment found in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    /// Its sequence number.
    pub seq: u64,
    /// Its size in bytes when listed.
    pub len: u64,
}

/// The segments in `dir`, oldest first. Other files are ignored.
pub fn list(dir: &Path) -> io::Result<Vec<Listed>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(seq) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        let len = match entry.metadata() {
            Ok(m) => m.len(),
            // Removed between listing and stat: the journal rotated it away.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        out.push(Listed { seq, len });
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_sequence() {
        assert_eq!(file_name(42), "audit-00000000000000000042.jsonl");
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert!(file_name(9) < file_name(10));
        for other in [
            "audit-42.jsonl",
            "audit-0000000000000000004x.jsonl",
            "audit-00000000000000000042.json",
            "x-00000000000000000042.jsonl",
            "audit-99999999999999999999.jsonl",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }
}
