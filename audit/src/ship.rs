//! Shipping the journal to the policy service: the journal directory is the
//! outbox. A background task reads records after the last acknowledged
//! position, sends them in batches to a [`Sink`] (the HTTP client lives in
//! the service crate; this crate knows nothing of sockets), retries with
//! exponential backoff and jitter, and after each acknowledged batch writes
//! the position after it to a checkpoint file in the audit directory, so a
//! restarted runner resends only what was never acknowledged. Delivery is at
//! least once: a batch whose acknowledgement was lost is sent again, and the
//! service's idempotency on the record `id` makes that harmless.
//!
//! Job end and shutdown call [`ShipperHandle::flush`] with a deadline after
//! flushing the journal: it returns once everything on disk at the time of the
//! call is acknowledged, or reports what is still pending when time runs out.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::reader::{self, Position, ReadError};

/// The checkpoint file's name in the audit directory.
pub const CHECKPOINT_FILE: &str = "ship.checkpoint";

/// A batch for the service: JSON Lines, one record per line, each line
/// exactly as it is in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The lines, each ending in `\n`.
    pub body: String,
    /// How many records.
    pub records: usize,
}

/// The service's answer to a batch it stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ack {
    /// Records stored now.
    pub accepted: u64,
    /// Records the service already had (a resent batch).
    pub duplicate: u64,
    /// Records the service refused as invalid (never stored, never retried).
    pub rejected: u64,
}

/// Why a batch was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again (network, service or database down, timeouts,
    /// a token not (yet) accepted).
    #[error("{0}")]
    Retry(String),
    /// The service refused the batch's content for good: it is skipped.
    #[error("{0}")]
    Refused(String),
}

/// Where batches go: the policy service's `POST /v1/audit`, or a test double.
pub trait Sink: Send + Sync + 'static {
    /// Send one batch; `Ok` only once the receiver has durably stored it.
    fn send(&self, batch: &Batch) -> impl Future<Output = Result<Ack, SinkError>> + Send;
}

/// How the shipper batches, waits and retries.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    /// Most records in one batch.
    pub max_records: usize,
    /// Most bytes in one batch (one record more than this is still sent alone).
    pub max_bytes: usize,
    /// How often the journal is looked at when there is nothing to send.
    pub poll_interval: Duration,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl Default for ShipConfig {
    /// 1000 records or 1 MiB per batch, 500 ms poll, retries from 200 ms up
    /// to 30 s.
    fn default() -> Self {
        ShipConfig {
            max_records: 1000,
            max_bytes: 1 << 20,
            poll_interval: Duration::from_millis(500),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Counters since the shipper started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipStats {
    /// Batches acknowledged.
    pub batches: u64,
    /// Records the service stored.
    pub accepted: u64,
    /// Records the service already had.
    pub duplicate: u64,
    /// Records the service refused as invalid.
    pub rejected: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
}

/// What the shipper has done, published after every step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Position after the last acknowledged record (the checkpoint).
    pub acked: Position,
    /// The highest flush request answered: the journal was found empty past
    /// `acked` after that request was made.
    pub flushed: u64,
    /// Counters.
    pub stats: ShipStats,
    /// The last failure, while retrying; `None` once a batch goes through.
    pub failing: Option<SinkError>,
}

/// What can go wrong starting or flushing the shipper.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The checkpoint file exists but cannot be read or parsed.
    #[error(
        "cannot read the shipping checkpoint {}: {message}; fix or delete it (deleting resends the whole journal, which is harmless)",
        path.display()
    )]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The deadline passed before everything was acknowledged.
    #[error(
        "audit records were not all shipped before the deadline ({}); they stay in the journal and are sent on the next start",
        last_error.as_deref().unwrap_or("still sending")
    )]
    FlushTimeout {
        /// Position acknowledged so far.
        acked: Position,
        /// The last delivery failure, if any.
        last_error: Option<String>,
    },
    /// The shipper task is gone.
    #[error("the audit shipper has stopped")]
    Stopped,
}

/// Read the checkpoint in `dir`; `Position::default()` if there is none.
pub fn read_checkpoint(dir: &Path) -> Result<Position, ShipError> {
    Ok(checkpoint_if_shipped(dir)?.unwrap_or_default())
}

/// The checkpoint in `dir`, or `None` when no shipper ever acknowledged a
/// batch from this directory (the journal is not shipped). The journal uses
/// this to keep segments that are not shipped yet.
pub fn checkpoint_if_shipped(dir: &Path) -> Result<Option<Position>, ShipError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bad = |message: String| ShipError::Checkpoint {
        path: path.clone(),
        message,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Replace the checkpoint atomically: write a temporary file, sync it,
/// rename it over the old one, sync the directory.
pub fn write_checkpoint(dir: &Path, pos: Position) -> io::Result<()> {
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let text = serde_json::to_string(&pos).map_err(io::Error::other)?;
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Handle to a running shipper.
#[derive(Debug)]
pub struct ShipperHandle {
    flush_req: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<()>,
}

/// The shipper: see the module documentation.
#[derive(Debug)]
pub struct Shipper;

impl Shipper {
    /// Start shipping the journal in `dir` to `sink` from the checkpoint on.
    /// Must be called inside a tokio runtime.
    pub fn start<S: Sink>(
        dir: PathBuf,
        sink: S,
        config: ShipConfig,
    ) -> Result<ShipperHandle, ShipError> {
        let acked = read_checkpoint(&dir)?;
        let (flush_req, flush_rx) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(Progress {
            acked,
            ..Progress::default()
        });
        let worker = Worker {
            dir,
            sink,
            config,
            pos: acked,
            flush_rx,
            stop_rx,
            progress: progress_tx,
            warned: HashSet::new(),
        };
        let task = tokio::spawn(worker.run());
        Ok(ShipperHandle {
            flush_req,
            stop,
            progress,
            task,
        })
    }
}

impl ShipperHandle {
    /// The latest progress.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Ship everything in the journal now and wait until the service has
    /// acknowledged all records that were on disk when this was called, or
    /// until `deadline`. Flush the journal first: records still in its
    /// write buffer are not on disk yet.
    pub async fn flush(&self, deadline: Instant) -> Result<ShipStats, ShipError> {
        let mut generation = 0;
        self.flush_req.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        let mut progress = self.progress.clone();
        let waited =
            tokio::time::timeout_at(deadline, progress.wait_for(|p| p.flushed >= generation)).await;
        match waited {
            Ok(Ok(p)) => Ok(p.stats),
            Ok(Err(_)) => Err(ShipError::Stopped),
            Err(_) => {
                let p = self.progress.borrow();
                Err(ShipError::FlushTimeout {
                    acked: p.acked,
                    last_error: p.failing.as_ref().map(|e| e.to_string()),
                })
            }
        }
    }

    /// Stop shipping (a send in flight is abandoned: it is resent on the
    /// next start) and wait for the task to end. Returns the final counters.
    pub async fn stop(self) -> ShipStats {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.progress.borrow().stats
    }
}

struct Worker<S> {
    dir: PathBuf,
    sink: S,
    config: ShipConfig,
    pos: Position,
    flush_rx: watch::Receiver<u64>,
    stop_rx: watch::Receiver<bool>,
    progress: watch::Sender<Progress>,
    /// Corrupt lines already reported (they are skipped, and re-read until a
    /// later record moves the checkpoint past them).
    warned: HashSet<(PathBuf, u64)>,
}

/// One batch read from the journal.
struct Read {
    batch: Batch,
    end: Position,
    corrupt: Vec<(PathBuf, u64, String)>,
}

fn read_batch(dir: &Path, from: Position, config: &ShipConfig) -> Result<Read, ReadError> {
    let mut body = String::new();
    let mut records = 0;
    let mut end = from;
    let mut corrupt = Vec::new();
    for item in reader::read_raw(dir, from)? {
        match item {
            Ok(raw) => {
                body.push_str(&raw.line);
                body.push('\n');
                records += 1;
                end = raw.end;
                if records >= config.max_records || body.len() >= config.max_bytes {
                    break;
                }
            }
            Err(ReadError::Corrupt {
                path,
                offset,
                message,
            }) => corrupt.push((path, offset, message)),
            Err(e) => return Err(e),
        }
    }
    Ok(Read {
        batch: Batch { body, records },
        end,
        corrupt,
    })
}

/// A random number from the OS-seeded hasher keys: enough for jitter.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Delay before retry `attempt` (1-based): exponential, capped, with the
/// upper half randomised so that many runners do not retry in step.
fn backoff(config: &ShipConfig, attempt: u32) -> Duration {
    let exp = config
        .backoff_initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(config.backoff_max);
    let half = cap / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random_u64() % nanos)
}

impl<S: Sink> Worker<S> {
    async fn run(mut self) {
        loop {
            if *self.stop_rx.borrow() {
                return;
            }
            // The flush generation seen before reading: if this read finds
            // nothing new, every record on disk when that flush was asked
            // for has been acknowledged.
            let requested = *self.flush_rx.borrow_and_update();
            let dir = self.dir.clone();
            let from = self.pos;
            let config = self.config.clone();
            let read = tokio::task::spawn_blocking(move || read_batch(&dir, from, &config)).await;
            let read = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot read the audit journal for shipping; retrying");
                    if self.idle().await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal read task failed");
                    if self.idle().await {
                        return;
                    }
                    continue;
                }
            };
            for (path, offset, message) in read.corrupt {
                if self.warned.insert((path.clone(), offset)) {
                    tracing::warn!(segment = %path.display(), offset, %message, "skipping a corrupt journal line; it is not shipped");
                }
            }
            if read.batch.records == 0 {
                self.progress
                    .send_modify(|p| p.flushed = p.flushed.max(requested));
                if self.idle().await {
                    return;
                }
                continue;
            }
            let Some(ack) = self.deliver(&read.batch).await else {
                return;
            };
            self.pos = read.end;
            let dir = self.dir.clone();
            let end = read.end;
            match tokio::task::spawn_blocking(move || write_checkpoint(&dir, end)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot write the shipping checkpoint; a restart will resend (harmless)")
                }
                Err(e) => tracing::warn!(error = %e, "checkpoint task failed"),
            }
            self.progress.send_modify(|p| {
                p.acked = end;
                p.failing = None;
                p.stats.batches += 1;
                p.stats.accepted += ack.accepted;
                p.stats.duplicate += ack.duplicate;
                p.stats.rejected += ack.rejected;
            });
        }
    }

    /// Send until acknowledged or refused; `None` when asked to stop.
    async fn deliver(&mut self, batch: &Batch) -> Option<Ack> {
        let mut attempt = 0u32;
        loop {
            let outcome = tokio::select! {
                r = self.sink.send(batch) => r,
                _ = self.stop_rx.wait_for(|s| *s) => return None,
            };
            match outcome {
                Ok(ack) => return Some(ack),
                Err(SinkError::Refused(why)) => {
                    tracing::error!(records = batch.records, reason = %why, "the audit service refused a batch; it is skipped");
                    return Some(Ack {
                        rejected: batch.records as u64,
                        ..Ack::default()
                    });
                }
                Err(e @ SinkError::Retry(_)) => {
                    attempt = attempt.saturating_add(1);
                    let delay = backoff(&self.config, attempt);
                    tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "shipping audit records failed; retrying");
                    self.progress.send_modify(|p| {
                        p.failing = Some(e.clone());
                        p.stats.retries += 1;
                    });
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = self.stop_rx.wait_for(|s| *s) => return None,
                    }
                }
            }
        }
    }

    /// Wait for the poll interval, a flush request or a stop; true on stop.
    async fn idle(&mut self) -> bool {
        tokio::select! {
            () = tokio::time::sleep(self.config.poll_interval) => false,
            r = self.flush_rx.changed() => r.is_err(),
            _ = self.stop_rx.wait_for(|s| *s) => true,
        }
    }
}

#[cfg(test)]
mod tests;
