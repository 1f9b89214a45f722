//! Reading a journal directory back: streaming, constant memory, oldest
//! record first, safe to run while the journal is being written.
//!
//! The torn-line rule: records are `\n`-terminated lines. Bytes after the last
//! `\n` of a segment are
//! - *not yet complete* while that segment is the newest in the directory
//!   (it may be the one being written): reading stops before them, and a later
//!   read from the returned [`Position`] picks the line up once it is whole;
//! - *torn* once a newer segment exists, because the journal creates segment
//!   `N + 1` only after `N` is completely written and synced, and a reopened
//!   journal never appends to an old segment. A torn tail (from a crash) is
//!   skipped with a warning and never returned as data.
//!
//! A complete line that is not a valid v1 record (disk corruption, a foreign
//! file) is reported as [`ReadError::Corrupt`] and reading continues after it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::Record;
use crate::segment;

/// A place in a journal: segment sequence number and byte offset in it. As a
/// checkpoint it is the position *after* the last record consumed.
/// `Position::default()` is before every record.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Segment sequence number.
    pub segment: u64,
    /// Byte offset of the next record in that segment.
    pub offset: u64,
}

/// Lines longer than this are not records (a record is well under 4 KiB);
/// they are reported as corrupt without being held in memory.
const MAX_LINE: usize = 1 << 20;

/// What can go wrong while reading.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A directory or segment could not be read.
    #[error("cannot read the audit journal at {}: {source}", path.display())]
    Io {
        /// The directory or segment.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A complete line that is not a valid schema v1 record. Reading goes on
    /// after it.
    #[error("{}: byte {offset}: not a valid audit record ({message}); skipped", path.display())]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Offset of the line's first byte.
        offset: u64,
        /// Why it is not a record.
        message: String,
    },
}

/// One record with the exact line it was read from.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where the line starts.
    pub start: Position,
    /// Where the next line starts (the checkpoint after this record).
    pub end: Position,
    /// The journal line, without its `\n`: export writes it byte for byte.
    pub line: String,
    /// The parsed record.
    pub record: Record,
}

/// Every record in `dir`, oldest first.
pub fn read_dir(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<Record, ReadError>> + use<>, ReadError> {
    Ok(read_raw(dir, Position::default())?.map(|r| r.map(|r| r.record)))
}

/// Every record after `from`, each with the position after it.
pub fn read_from(
    dir: &Path,
    from: Position,
) -> Result<impl Iterator<Item = Result<(Position, Record), ReadError>> + use<>, ReadError> {
    Ok(read_raw(dir, from)?.map(|r| r.map(|r| (r.end, r.record))))
}

/// Every record after `from` with its raw line. If the segment of `from` was
/// removed by rotation, reading starts at the oldest segment after it.
pub fn read_raw(dir: &Path, from: Position) -> Result<RawRecords, ReadError> {
    // Fail early and clearly when the directory is missing or unreadable.
    segment::list(dir).map_err(|source| ReadError::Io {
        path: dir.to_owned(),
        source,
    })?;
    Ok(RawRecords {
        dir: dir.to_owned(),
        from,
        current: None,
        line: Vec::new(),
        done: false,
    })
}

/// Iterator of [`RawRecord`]s; see [`read_raw`].
#[derive(Debug)]
pub struct RawRecords {
    dir: PathBuf,
    /// Where the next segment to open starts.
    from: Position,
    current: Option<Open>,
    line: Vec<u8>,
    done: bool,
}

#[derive(Debug)]
struct Open {
    seq: u64,
    path: PathBuf,
    reader: BufReader<File>,
    offset: u64,
    /// A newer segment exists, so this one is complete.
    sealed: bool,
}

enum Step {
    Line {
        start: u64,
    },
    Oversize {
        start: u64,
    },
    /// End of the complete lines; `partial` bytes follow.
    End {
        partial: u64,
    },
}

impl RawRecords {
    fn io(&self, path: &Path, source: io::Error) -> ReadError {
        ReadError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Open the first segment at or after `self.from`. `Ok(false)`: none.
    fn open_next(&mut self) -> Result<bool, ReadError> {
        let listed = segment::list(&self.dir).map_err(|e| self.io(&self.dir.clone(), e))?;
        let Some(pos) = listed.iter().position(|l| l.seq >= self.from.segment) else {
            return Ok(false);
        };
        let seq = listed[pos].seq;
        let sealed = pos + 1 < listed.len();
        let offset = if seq == self.from.segment {
            self.from.offset
        } else {
            0
        };
        let path = segment::path(&self.dir, seq);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            // Rotated away since listing: try again from the next one.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.from = Position {
                    segment: seq + 1,
                    offset: 0,
                };
                return self.open_next();
            }
            Err(e) => return Err(self.io(&path, e)),
        };
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))
                .map_err(|e| self.io(&path, e))?;
        }
        self.current = Some(Open {
            seq,
            path,
            reader: BufReader::with_capacity(64 << 10, file),
            offset,
            sealed,
        });
        Ok(true)
    }

    /// Whether a segment newer than `seq` exists now.
    fn newer_exists(&self, seq: u64) -> Result<bool, ReadError> {
        let listed = segment::list(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        Ok(listed.iter().any(|l| l.seq > seq))
    }

    fn step(open: &mut Open, line: &mut Vec<u8>) -> io::Result<Step> {
        line.clear();
        let start = open.offset;
        let mut taken: u64 = 0;
        let mut oversize = false;
        loop {
            let chunk = open.reader.fill_buf()?;
            if chunk.is_empty() {
                // No `\n` before the end: leave the partial bytes unread.
                if taken > 0 {
                    open.reader.seek(SeekFrom::Start(start))?;
                }
                return Ok(Step::End { partial: taken });
            }
            let (used, complete) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !oversize {
                if line.len() + used > MAX_LINE {
                    oversize = true;
                    line.clear();
                } else {
                    line.extend_from_slice(&chunk[..used]);
                }
            }
            open.reader.consume(used);
            taken += used as u64;
            if complete {
                open.offset = start + taken;
                return Ok(if oversize {
                    Step::Oversize { start }
                } else {
                    line.pop();
                    Step::Line { start }
                });
            }
        }
    }
}

impl Iterator for RawRecords {
    type Item = Result<RawRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let open = self.current.as_mut()?;
            let step = match Self::step(open, &mut self.line) {
                Ok(s) => s,
                Err(e) => {
                    let err = ReadError::Io {
                        path: open.path.clone(),
                        source: e,
                    };
                    self.done = true;
                    return Some(Err(err));
                }
            };
            let seq = open.seq;
            match step {
                Step::Line { start } => {
                    let start = Position {
                        segment: seq,
                        offset: start,
                    };
                    let end = Position {
                        segment: seq,
                        offset: open.offset,
                    };
                    self.from = end;
                    return Some(parse(&open.path, start, end, &self.line));
                }
                Step::Oversize { start } => {
                    self.from = Position {
                        segment: seq,
                        offset: open.offset,
                    };
                    return Some(Err(ReadError::Corrupt {
                        path: open.path.clone(),
                        offset: start,
                        message: format!("line longer than {MAX_LINE} bytes"),
                    }));
                }
                Step::End { partial } => {
                    if !open.sealed {
                        // Newest when we opened it; is it still? Look again
                        // after reaching the end, then read the end again:
                        // the writer finished it before creating the next.
                        match self.newer_exists(seq) {
                            Ok(true) => {
                                if let Some(open) = self.current.as_mut() {
                                    open.sealed = true;
                                }
                                continue;
                            }
                            Ok(false) => {
                                // The active segment: stop before an
                                // incomplete line; it is read next time.
                                self.done = true;
                                return None;
                            }
                            Err(e) => {
                                self.done = true;
                                return Some(Err(e));
                            }
                        }
                    }
                    if partial > 0 {
                        tracing::warn!(
                            segment = %open.path.display(),
                            offset = open.offset,
                            bytes = partial,
                            "skipping a torn last line (the writer stopped mid-record)"
                        );
                    }
                    self.from = Position {
                        segment: seq + 1,
                        offset: 0,
                    };
                    self.current = None;
                }
            }
        }
    }
}

fn parse(path: &Path, start: Position, end: Position, line: &[u8]) -> Result<RawRecord, ReadError> {
    let corrupt = |message: String| ReadError::Corrupt {
        path: path.to_owned(),
        offset: start.offset,
        message,
    };
    let text = std::str::from_utf8(line).map_err(|e| corrupt(e.to_string()))?;
    let record: Record = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
    Ok(RawRecord {
        start,
        end,
        line: text.to_owned(),
        record,
    })
}
