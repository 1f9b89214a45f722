//! The local audit journal: append-only JSON Lines in size-rotated segments
//! with a bounded total size, written by one owned thread.
//!
//! Invariants (the reader and the shipper rely on them):
//! - Callers never touch the disk. [`Journal::append`] only waits for room in
//!   a bounded queue; a full queue is back-pressure, never a drop.
//! - One writer thread serialises (`json_line`), writes, and `fdatasync`s at most every
//!   `flush_interval` (or at once for [`Journal::flush`]), so many records
//!   share one sync.
//! - Every record is one `\n`-terminated line. Segment `N + 1` is created only
//!   after segment `N` is completely written and synced, so at most the newest
//!   segment can end in an incomplete line while a writer is alive.
//! - Opening a journal always starts a new segment after the highest one in
//!   the directory: an old segment, possibly torn by a crash, is never
//!   appended to.
//! - When the total size exceeds `max_total_bytes`, whole segments are removed
//!   oldest first (never the one being written), and each removal is logged
//!   and itself written as an `event` record (`journal_segment_removed`).
//! - The journal is the shipper's outbox: when the directory holds a shipping
//!   checkpoint, a segment the shipper has not fully acknowledged is kept
//!   past `max_total_bytes`, up to [`UNSHIPPED_FACTOR`] times it. Only beyond
//!   that is it removed, with an error log and an event record that counts
//!   the records lost to the central store.
//! - The active job's records are never removed: while a job is active
//!   ([`Journal::protect_active_job`]), no segment written since it started
//!   is removed. When the bound would need one removed, the journal instead
//!   raises [`Journal::budget_exhausted`] (the engine then denies the job's
//!   further traffic, `audit_budget_exhausted`), writes that as an `event`
//!   record once, and keeps everything.
//! - If writing fails (disk full), the bytes stay in memory and are retried
//!   every `flush_interval`; once a few MiB are pending the writer stops
//!   taking from the queue, so callers feel back-pressure instead of losing
//!   records, and [`Journal::flush`] reports the error.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use egressd_policy::{Decision, Reason};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::reader::Position;
use crate::record::{Kind, Record};
use crate::{segment, ship};

/// While the oldest segment is not fully shipped, the journal may grow to
/// this many times `max_total_bytes` before it removes records the policy
/// service never received.
pub const UNSHIPPED_FACTOR: u64 = 2;

/// Where and how the journal writes.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The journal directory (created if missing).
    pub dir: PathBuf,
    /// A segment is closed and a new one started before it would exceed this.
    pub segment_bytes: u64,
    /// Oldest segments are removed so that the closed segments plus a full
    /// active one never hold more than this; segments not yet shipped are
    /// kept up to [`UNSHIPPED_FACTOR`] times this.
    pub max_total_bytes: u64,
    /// Longest time a written record waits for its `fdatasync`.
    pub flush_interval: Duration,
    /// Records that may wait for the writer before appends wait in turn.
    pub queue_capacity: usize,
}

impl JournalConfig {
    /// Defaults: 16 MiB segments, 1 GiB in total, 200 ms flush, 65 536 queued.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: 16 << 20,
            max_total_bytes: 1 << 30,
            flush_interval: Duration::from_millis(200),
            queue_capacity: 64 << 10,
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        let bad = |why: &str| Err(JournalError::Config(why.to_owned()));
        if self.segment_bytes == 0 {
            return bad("segment_bytes must be at least 1");
        }
        if self.max_total_bytes < self.segment_bytes {
            return bad("max_total_bytes must be at least segment_bytes");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval must be longer than zero");
        }
        Ok(())
    }
}

/// What can go wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The configuration is unusable.
    #[error("invalid audit journal configuration: {0}")]
    Config(String),
    /// A file or directory operation failed while opening.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create the audit directory`).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another journal (in this or another process) writes to the directory.
    #[error(
        "another egressd journal is already writing to {}; stop it or choose another audit directory",
        dir.display()
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The journal was closed, or its writer thread is gone.
    #[error("the audit journal is closed; no more records can be appended")]
    Closed,
    /// Records could not be written or synced; they are kept in memory and
    /// retried, so nothing is lost unless the process dies before it works.
    #[error(
        "cannot write the audit journal in {}: {message}; records are kept and retried, free space or fix the directory",
        dir.display()
    )]
    Write {
        /// The directory.
        dir: PathBuf,
        /// The OS error, as text (it is reported to every waiting caller).
        message: String,
    },
}

/// Reply to a flush or close: `Err` carries the write error's text.
type Ack = oneshot::Sender<Result<(), String>>;

#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is a record: boxing would add an allocation per record and save no queue memory"
)]
enum Msg {
    Record(Record),
    Flush(Ack),
    Close(Ack),
}

/// A handle to the journal. Cheap to clone; every clone feeds the same writer
/// thread, which stops once [`Journal::close`] is called or every handle is
/// dropped (after writing and syncing everything queued).
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    dir: Arc<PathBuf>,
    budget: Arc<Budget>,
}

/// What the handles and the writer share about the size budget.
#[derive(Debug, Default)]
struct Budget {
    /// The segment being written, as far as handles need to know it.
    active_seq: AtomicU64,
    /// The first segment of the active job (`0`: no job is active).
    protect_from: AtomicU64,
    /// The active job's records would have to be removed to stay within
    /// the budget.
    exhausted: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("queue_depth", &self.queue_depth())
            .finish()
    }
}

impl Journal {
    /// Create the directory if needed, take its lock, start a new segment and
    /// the writer thread.
    pub fn open(cfg: JournalConfig) -> Result<Journal, JournalError> {
        cfg.validate()?;
        let dir = cfg.dir.clone();
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| JournalError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&dir).map_err(io_err("create the audit directory", &dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open the journal lock", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_err("lock", &lock_path)(e));
            }
        }
        let listed = segment::list(&dir).map_err(io_err("list the audit directory", &dir))?;
        let seq = listed.last().map_or(1, |l| l.seq + 1);
        let (file, path) = create_segment(&dir, seq)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(io_err("start the journal writer for", &dir))?;
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let budget = Arc::new(Budget::default());
        budget.active_seq.store(seq, Ordering::Release);
        let mut writer = Writer {
            budget: Arc::clone(&budget),
            sealed: listed.into_iter().collect(),
            seq,
            file,
            path,
            seg_len: 0,
            buf: Vec::with_capacity(WRITE_CHUNK * 2),
            line: Vec::with_capacity(1024),
            unsynced_since: None,
            last_runner: None,
            cfg,
            _lock: lock,
        };
        writer.enforce_total();
        std::thread::Builder::new()
            .name("egressd-journal".into())
            .spawn(move || runtime.block_on(writer.run(rx)))
            .map_err(io_err("start the journal writer for", &dir))?;
        Ok(Journal {
            tx,
            dir: Arc::new(dir),
            budget,
        })
    }

    /// A job starts (`true`) or ends: from now until it ends, no segment
    /// holding its records is removed to stay within the size budget (the
    /// segment being written now is the first; it may hold a few records of
    /// before the job, kept too). Either lifts [`Journal::budget_exhausted`]:
    /// a job that started without the previous one ending gets the budget
    /// afresh, and the previous job's segments are removable again.
    pub fn protect_active_job(&self, active: bool) {
        let from = if active {
            self.budget.active_seq.load(Ordering::Acquire)
        } else {
            0
        };
        self.budget.protect_from.store(from, Ordering::Release);
        self.budget.exhausted.store(false, Ordering::Release);
    }

    /// True once the active job's records fill the size budget: the journal
    /// would have to remove some of them to stay within it, and does not.
    /// Egress must stop (fail closed) until the job ends. An atomic load.
    pub fn budget_exhausted(&self) -> bool {
        self.budget.exhausted.load(Ordering::Acquire)
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queue `rec` for writing. Waits only for room in the queue (never for
    /// the disk); never drops.
    pub async fn append(&self, rec: Record) -> Result<(), JournalError> {
        // Room first, then the record: waiting in `send` would keep a second
        // copy of the record inside its future, in every caller's future.
        let room = self.tx.reserve().await.map_err(|_| JournalError::Closed)?;
        room.send(Msg::Record(rec));
        Ok(())
    }

    /// [`Journal::append`] for threads that are not async tasks (a plain
    /// thread or `spawn_blocking`). Panics if called from an async task, like
    /// every blocking tokio call: use `append` there.
    pub fn append_blocking(&self, rec: Record) -> Result<(), JournalError> {
        self.tx
            .blocking_send(Msg::Record(rec))
            .map_err(|_| JournalError::Closed)
    }

    /// Resolve once every record appended before this call is written and
    /// synced to disk.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Flush(ack))
            .await
            .map_err(|_| JournalError::Closed)?;
        self.wait(done.await)
    }

    /// [`Journal::flush`] for threads that are not async tasks.
    pub fn flush_blocking(&self) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .blocking_send(Msg::Flush(ack))
            .map_err(|_| JournalError::Closed)?;
        self.wait(done.blocking_recv())
    }

    /// Records waiting for the writer (a gauge for metrics).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Write and sync everything queued, then stop the writer. Appends after
    /// this fail with [`JournalError::Closed`]; closing twice is harmless.
    pub async fn close(&self) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_err() {
            // Already stopped: everything was written when it stopped.
            return Ok(());
        }
        self.wait(done.await)
    }

    /// [`Journal::close`] for threads that are not async tasks.
    pub fn close_blocking(&self) -> Result<(), JournalError> {
        let (ack, done) = oneshot::channel();
        if self.tx.blocking_send(Msg::Close(ack)).is_err() {
            return Ok(());
        }
        self.wait(done.blocking_recv())
    }

    fn wait(
        &self,
        reply: Result<Result<(), String>, oneshot::error::RecvError>,
    ) -> Result<(), JournalError> {
        match reply {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(JournalError::Write {
                dir: self.dir.to_path_buf(),
                message,
            }),
            Err(_) => Err(JournalError::Closed),
        }
    }
}

/// Pending bytes are handed to the kernel once this many have accumulated.
const WRITE_CHUNK: usize = 256 << 10;
/// While this many bytes cannot be written, the writer takes no more records.
const PENDING_LIMIT: usize = 8 << 20;
/// Messages taken from the queue at once.
const BATCH: usize = 4096;
/// After a batch smaller than this, with no flush or close waiting, the writer
/// lets records gather for [`COALESCE`] before it takes the next batch: under
/// a steady trickle of records it then wakes about once per millisecond, not
/// once per record (the wake-ups cost the data plane more than the writing).
/// Senders never wait for the disk, only for queue room, so this delays no
/// connection; a flush waits at most that much longer.
const COALESCE_BELOW: usize = 64;
const COALESCE: Duration = Duration::from_millis(1);

struct Writer {
    cfg: JournalConfig,
    budget: Arc<Budget>,
    /// Closed segments still on disk, oldest first.
    sealed: VecDeque<segment::Listed>,
    seq: u64,
    file: File,
    path: PathBuf,
    /// Size of the active segment including `buf`.
    seg_len: u64,
    /// Serialised lines not yet handed to the kernel.
    buf: Vec<u8>,
    /// Scratch for one serialised record.
    line: Vec<u8>,
    /// When the oldest unsynced byte was accepted.
    unsynced_since: Option<Instant>,
    /// The runner of the latest record, for the journal's own event records.
    last_runner: Option<String>,
    _lock: File,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut acks: Vec<Ack> = Vec::new();
        let mut close_acks: Vec<Ack> = Vec::new();
        loop {
            let deadline = self.unsynced_since.map(|t| t + self.cfg.flush_interval);
            let can_take = self.buf.len() < PENDING_LIMIT;
            let received = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH), if can_take => Some(n),
                () = sleep_until_opt(deadline), if deadline.is_some() => None,
            };
            if received == Some(0) {
                // Closed and drained, or every handle dropped.
                let outcome = self.sync();
                if let Err(e) = &outcome {
                    tracing::error!(dir = %self.cfg.dir.display(), error = %e,
                        "audit journal stopped with records it could not write");
                }
                // Release the segment and the directory lock before anyone
                // hears that the journal is closed, so it can be reopened.
                drop(self);
                for ack in acks.drain(..).chain(close_acks.drain(..)) {
                    let _ = ack.send(outcome.clone());
                }
                return;
            }
            for msg in batch.drain(..) {
                match msg {
                    Msg::Record(rec) => self.push(&rec),
                    Msg::Flush(ack) => acks.push(ack),
                    Msg::Close(ack) => {
                        // Refuse new messages; the queued ones are still taken.
                        rx.close();
                        close_acks.push(ack);
                    }
                }
            }
            let due = deadline.is_some_and(|d| d <= Instant::now());
            if !acks.is_empty() || due {
                let outcome = self.sync();
                for ack in acks.drain(..) {
                    let _ = ack.send(outcome.clone());
                }
            } else if self.buf.len() >= WRITE_CHUNK {
                // Hand full chunks to the kernel early; a failure is retried
                // at the next sync.
                let _ = self.write_out();
            }
            if received.is_some_and(|n| n < COALESCE_BELOW) && close_acks.is_empty() {
                tokio::time::sleep(COALESCE).await;
            }
        }
    }

    /// Serialise one record into the pending buffer, rotating first if it
    /// would not fit in the active segment.
    fn push(&mut self, rec: &Record) {
        if self.last_runner.as_deref() != Some(rec.runner.as_str()) {
            self.last_runner = Some(rec.runner.clone());
        }
        // Taken out of `self`: rotating may push event records, which use
        // the scratch buffer too.
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        crate::json_line::write(rec, &mut line);
        line.push(b'\n');
        let len = line.len() as u64;
        if self.seg_len > 0 && self.seg_len + len > self.cfg.segment_bytes {
            self.rotate();
        }
        self.buf.extend_from_slice(&line);
        self.seg_len += len;
        self.unsynced_since.get_or_insert_with(Instant::now);
        self.line = line;
    }

    /// Close the active segment (fully written and synced) and start the next.
    fn rotate(&mut self) {
        if let Err(e) = self.sync() {
            // Keep growing the current segment rather than break the
            // invariant that only the newest segment may be incomplete.
            tracing::error!(path = %self.path.display(), error = %e,
                "cannot finish audit segment; not rotating");
            return;
        }
        let seq = self.seq + 1;
        match create_segment(&self.cfg.dir, seq) {
            Ok((file, path)) => {
                self.sealed.push_back(segment::Listed {
                    seq: self.seq,
                    len: self.seg_len,
                });
                self.seq = seq;
                self.budget.active_seq.store(seq, Ordering::Release);
                self.file = file;
                self.path = path;
                self.seg_len = 0;
                self.enforce_total();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start a new audit segment; not rotating");
            }
        }
    }

    /// Remove the oldest closed segments while the journal is over its bound,
    /// recording each removal. A segment the shipper has not fully
    /// acknowledged is kept up to the hard bound (see [`UNSHIPPED_FACTOR`]).
    fn enforce_total(&mut self) {
        // Read once per call: rotations are rare, and the shipper only moves
        // the checkpoint forward, so a stale value errs on the side of keeping.
        let mut checkpoint: Option<Option<Position>> = None;
        loop {
            // Room is kept for the active segment to fill up, so the bound
            // holds between rotations too.
            let active = self.seg_len.max(self.cfg.segment_bytes);
            let total: u64 = self.sealed.iter().map(|s| s.len).sum::<u64>() + active;
            if total <= self.cfg.max_total_bytes {
                return;
            }
            let Some(oldest) = self.sealed.front().copied() else {
                return;
            };
            let protect_from = self.budget.protect_from.load(Ordering::Acquire);
            if protect_from != 0 && oldest.seq >= protect_from {
                self.exhausted(total);
                return;
            }
            let checkpoint = *checkpoint.get_or_insert_with(|| self.checkpoint());
            let unshipped_from = checkpoint.and_then(|pos| unshipped_from(pos, oldest));
            let hard_bound = self.cfg.max_total_bytes.saturating_mul(UNSHIPPED_FACTOR);
            if unshipped_from.is_some() && total <= hard_bound {
                tracing::warn!(
                    segment = oldest.seq,
                    total_bytes = total,
                    max_total_bytes = self.cfg.max_total_bytes,
                    "the audit journal is over its size bound but keeps segments the shipper has not delivered yet; \
                     check that the policy service is reachable"
                );
                return;
            }
            let path = segment::path(&self.cfg.dir, oldest.seq);
            // Counted before removing: the file is gone afterwards.
            let lost = unshipped_from.map(|from| count_lines(&path, from));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e,
                        "cannot remove the oldest audit segment; the journal stays over its size bound");
                    return;
                }
            }
            self.sealed.pop_front();
            let name = segment::file_name(oldest.seq);
            let dir = self.cfg.dir.display();
            let max = self.cfg.max_total_bytes;
            let detail = match lost {
                None => {
                    let detail = format!(
                        "removed {name} ({} bytes): the journal in {dir} went over its size budget of {max} bytes (set with --audit-max-size)",
                        oldest.len
                    );
                    tracing::warn!(segment = oldest.seq, bytes = oldest.len, "{detail}");
                    detail
                }
                Some(lost) => {
                    let count = match &lost {
                        Ok(n) => n.to_string(),
                        Err(_) => "an unknown number of".to_owned(),
                    };
                    let detail = format!(
                        "removed {name} ({} bytes) with {count} records not yet shipped: the journal in {dir} \
                         went over {UNSHIPPED_FACTOR} x its size budget of {max} bytes (set with --audit-max-size) \
                         while the shipper could not deliver",
                        oldest.len
                    );
                    tracing::error!(
                        segment = oldest.seq,
                        bytes = oldest.len,
                        unshipped = lost.as_ref().ok(),
                        count_error = lost.as_ref().err().map(|e| e.to_string()),
                        "{detail}"
                    );
                    detail
                }
            };
            self.push_event(Reason::JournalSegmentRemoved, detail);
        }
    }

    /// The active job's records fill the budget: say so once per job, keep
    /// them all, and let the engine deny the job's further traffic.
    fn exhausted(&mut self, total: u64) {
        if self.budget.exhausted.swap(true, Ordering::AcqRel) {
            return;
        }
        let detail = format!(
            "the active job's audit records fill the journal in {} ({total} bytes with a full new segment) \
             past its size budget of {} bytes (set with --audit-max-size): they are kept, and the job's \
             further traffic is denied until it ends",
            self.cfg.dir.display(),
            self.cfg.max_total_bytes
        );
        tracing::error!(
            total_bytes = total,
            max_total_bytes = self.cfg.max_total_bytes,
            "{detail}"
        );
        self.push_event(Reason::AuditBudgetExhausted, detail);
    }

    /// Write the journal's own `event` record.
    fn push_event(&mut self, reason: Reason, detail: String) {
        let runner = self.last_runner.clone().unwrap_or_else(local_hostname);
        let mut rec = Record::new(&runner, Kind::Event, &Decision::engine_deny(reason));
        rec.detail = Some(detail);
        self.push(&rec);
    }

    /// The shipping checkpoint, `None` when the journal is not shipped. An
    /// unreadable checkpoint counts as "nothing shipped": keeping records is
    /// the safe side.
    fn checkpoint(&self) -> Option<Position> {
        match ship::checkpoint_if_shipped(&self.cfg.dir) {
            Ok(pos) => pos,
            Err(e) => {
                tracing::warn!(error = %e, "treating every audit segment as not shipped");
                Some(Position::default())
            }
        }
    }

    /// Hand pending bytes to the kernel. On error the unwritten rest stays.
    fn write_out(&mut self) -> io::Result<()> {
        let mut written = 0;
        let result = loop {
            if written == self.buf.len() {
                break Ok(());
            }
            match self.file.write(&self.buf[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..written);
        result
    }

    /// Write everything pending and `fdatasync` the active segment.
    fn sync(&mut self) -> Result<(), String> {
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        let outcome = self.write_out().and_then(|()| self.file.sync_data());
        match outcome {
            Ok(()) => {
                self.unsynced_since = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e,
                    pending_bytes = self.buf.len(), "cannot write the audit journal; will retry");
                // Retry one interval from now.
                self.unsynced_since = Some(Instant::now());
                Err(e.to_string())
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Create segment `seq` (it must not exist) and make its name durable.
fn create_segment(dir: &Path, seq: u64) -> Result<(File, PathBuf), JournalError> {
    let path = segment::path(dir, seq);
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| JournalError::Io {
            action: "create the audit segment",
            path: path.clone(),
            source,
        })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| JournalError::Io {
            action: "sync the audit directory",
            path: dir.to_owned(),
            source,
        })?;
    Ok((file, path))
}

/// The offset in `seg` from which records are not acknowledged by a shipper
/// at `pos`, or `None` when the whole segment is shipped. Shipping goes in
/// journal order, so a checkpoint in a later segment covers all of `seg`.
fn unshipped_from(pos: Position, seg: segment::Listed) -> Option<u64> {
    if pos.segment > seg.seq || (pos.segment == seg.seq && pos.offset >= seg.len) {
        None
    } else if pos.segment == seg.seq {
        Some(pos.offset)
    } else {
        Some(0)
    }
}

/// Complete lines (records) in the file at `path` from byte `from` on.
fn count_lines(path: &Path, from: u64) -> io::Result<u64> {
    use std::io::{Read as _, Seek as _};
    let mut f = File::open(path)?;
    f.seek(io::SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut lines = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(lines),
            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The machine's host name, for event records written before any record told
/// the journal its runner name.
fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
