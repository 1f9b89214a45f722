//! The byte relay of an allowed tunnel: both directions at once, half-close
//! passed on (a FIN one way leaves the other way open), an idle timeout over
//! both directions, and a cut on shutdown.
//!
//! A waiting direction holds no data buffer: when its reader is ready it
//! borrows the worker thread's scratch buffer, reads, writes on at once and
//! gives the buffer back, so an idle tunnel costs its task and its sockets
//! only. When the writer cannot take everything, the rest moves into a
//! buffer of the direction's own, which starts small and doubles, up to
//! [`BUFFER_SIZE`], each time a read fills it: a bulk stream soon reads
//! 256 KiB at a time (tokio's fixed 8 KiB copy buffer costs two thirds of
//! the throughput, performance.md). Reads go into uninitialised capacity, so
//! nothing is zero-filled, and a direction quiet for [`BUFFER_LINGER`] gives
//! its own buffer back. A short read ends a burst without one more `recv`
//! ([`crate::sockread`]).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The largest buffer a direction grows to.
pub const BUFFER_SIZE: usize = 256 * 1024;
/// The smallest buffer of a direction's own (see [`BUFFER_SIZE`]).
pub const INITIAL_BUFFER_SIZE: usize = 16 * 1024;
/// How long a direction waits for data before it frees its own buffer.
pub const BUFFER_LINGER: Duration = Duration::from_secs(1);

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both sides closed their sending direction.
    Closed,
    /// Nothing moved in either direction for the idle timeout.
    Idle,
    /// The proxy is shutting down and the grace period is over.
    Shutdown,
    /// A read or write failed on the client side.
    ClientError,
    /// A read or write failed on the upstream side.
    UpstreamError,
}

impl Ending {
    /// A short stable word for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Ending::Closed => "closed",
            Ending::Idle => "idle_timeout",
            Ending::Shutdown => "shutdown",
            Ending::ClientError => "client_error",
            Ending::UpstreamError => "upstream_error",
        }
    }
}

/// What a relay moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    /// Client -> upstream.
    pub up: u64,
    /// Upstream -> client.
    pub down: u64,
    /// Why it stopped.
    pub ending: Ending,
}

/// Counts shared between a direction and the idle watchdog.
struct Progress {
    bytes: AtomicU64,
    /// Milliseconds since `start` of the last transfer in this direction.
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            bytes: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }
}

/// Where a direction failed.
#[derive(Debug, Clone, Copy)]
enum Side {
    Reader,
    Writer,
}

/// Relay between `client` and `upstream` until both directions are closed,
/// the connection is idle for `idle`, or `shutdown` is cancelled. `on_bytes`
/// is called with (up, down) deltas for live metrics.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    shutdown: CancellationToken,
    on_bytes: &(dyn Fn(u64, u64) + Sync),
) -> Transferred {
    let start = Instant::now();
    let (client_r, client_w) = client.into_split();
    let (upstream_r, upstream_w) = upstream.into_split();
    let up = Progress::new();
    let down = Progress::new();

    let count_up = |n| on_bytes(n, 0);
    let count_down = |n| on_bytes(0, n);
    // Either direction failing ends the tunnel at once; a clean close of one
    // direction (half-close) waits for the other. The directions are made
    // inside the block that runs them: made outside and moved in, each would
    // take its room twice in this future (an async block keeps what it
    // captured beside its own locals), in every open tunnel's task.
    let both = async {
        let up_dir = copy(client_r, upstream_w, &up, start, &count_up);
        let down_dir = copy(upstream_r, client_w, &down, start, &count_down);
        tokio::pin!(up_dir, down_dir);
        tokio::select! {
            r = &mut up_dir => match r {
                Ok(()) => down_dir.await.map_or_else(|side| failed(side, false), |()| Ending::Closed),
                Err(side) => failed(side, true),
            },
            r = &mut down_dir => match r {
                Ok(()) => up_dir.await.map_or_else(|side| failed(side, true), |()| Ending::Closed),
                Err(side) => failed(side, false),
            },
        }
    };
    let watchdog = async {
        loop {
            let last = up
                .last_ms
                .load(Ordering::Relaxed)
                .max(down.last_ms.load(Ordering::Relaxed));
            let deadline = start + Duration::from_millis(last) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let ending = tokio::select! {
        e = both => e,
        () = watchdog => Ending::Idle,
        () = shutdown.cancelled() => Ending::Shutdown,
    };
    Transferred {
        up: up.bytes.load(Ordering::Relaxed),
        down: down.bytes.load(Ordering::Relaxed),
        ending,
    }
}

/// Which end failed: the up direction reads the client and writes the
/// upstream, the down direction the reverse.
fn failed(side: Side, up: bool) -> Ending {
    match (side, up) {
        (Side::Reader, true) | (Side::Writer, false) => Ending::ClientError,
        (Side::Writer, true) | (Side::Reader, false) => Ending::UpstreamError,
    }
}

/// One direction: wait until the reader has data, read it, write it all,
/// repeat; on EOF pass the half-close on with `shutdown(SHUT_WR)`.
///
/// A direction holds no buffer while it waits. Data is read into the
/// worker thread's [`scratch`] buffer and written on at once without
/// waiting; only when the writer cannot take it all do the remaining bytes
/// move into a buffer of the direction's own ([`Buffer`]), which then serves
/// the following reads (a bulk stream) until the direction goes quiet.
async fn copy(
    reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    progress: &Progress,
    start: Instant,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(), Side> {
    let count = |n: usize| {
        progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        progress
            .last_ms
            .store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        on_bytes(n as u64);
    };
    let mut buf = Buffer::new();
    loop {
        let n = if buf.held() {
            // Wait a little with the buffer in hand; a quiet direction
            // gives it back and waits on without one.
            match tokio::time::timeout(BUFFER_LINGER, reader.readable()).await {
                Ok(ready) => ready.map_err(|_| Side::Reader)?,
                Err(_quiet) => {
                    buf.release();
                    continue;
                }
            }
            let space = buf.space();
            let n = match crate::sockread::try_read(reader.as_ref(), space, usize::MAX) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if retry(&e) => continue,
                Err(_) => return Err(Side::Reader),
            };
            writer.write_all(space).await.map_err(|_| Side::Writer)?;
            buf.consumed(n);
            n
        } else {
            reader.readable().await.map_err(|_| Side::Reader)?;
            match scratch::pass_on(&reader, &writer, &mut buf)? {
                Passed::End => break,
                Passed::Nothing => continue,
                Passed::All(n) => n,
                Passed::Part { written } => {
                    // The writer is behind: the rest waits in `buf`.
                    if written > 0 {
                        count(written);
                    }
                    writer
                        .write_all(buf.pending())
                        .await
                        .map_err(|_| Side::Writer)?;
                    buf.pending().len()
                }
            }
        };
        count(n);
    }
    // The peer may already be gone; the other direction reports that.
    let _ = writer.shutdown().await;
    Ok(())
}

/// A read that found nothing after all, or was interrupted: wait again.
fn retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// What one pass through the scratch buffer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passed {
    /// The reader is at EOF.
    End,
    /// The readiness was stale: nothing read.
    Nothing,
    /// `n` bytes read and all written on.
    All(usize),
    /// Read more than the writer could take yet: `written` bytes are
    /// written, the rest is in the direction's own buffer.
    Part {
        /// Bytes already written on.
        written: usize,
    },
}

/// Each worker thread's one read buffer, lent to whichever direction is
/// ready: read, write on without waiting, give back. Idle tunnels therefore
/// hold no data buffer at all, and a short exchange allocates none.
mod scratch {
    use std::cell::RefCell;

    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    use super::{BUFFER_SIZE, Buffer, Passed, Side, retry};

    thread_local! {
        /// Allocated on a thread's first use, never zero-filled.
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Read what `reader` has (up to [`BUFFER_SIZE`]) and write as much of
    /// it to `writer` as the socket takes now; the rest is copied into
    /// `own` (which must be empty), for the caller to write when it can.
    pub(super) fn pass_on(
        reader: &OwnedReadHalf,
        writer: &OwnedWriteHalf,
        own: &mut Buffer,
    ) -> Result<Passed, Side> {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            if scratch.capacity() < BUFFER_SIZE {
                *scratch = Vec::with_capacity(BUFFER_SIZE);
            }
            let n = match crate::sockread::try_read(reader.as_ref(), scratch, BUFFER_SIZE) {
                Ok(0) => return Ok(Passed::End),
                Ok(n) => n,
                Err(e) if retry(&e) => return Ok(Passed::Nothing),
                Err(_) => return Err(Side::Reader),
            };
            let mut written = 0;
            while written < n {
                match writer.try_write(&scratch[written..n]) {
                    Ok(0) => return Err(Side::Writer),
                    Ok(w) => written += w,
                    Err(e) if retry(&e) => break,
                    Err(_) => return Err(Side::Writer),
                }
            }
            if written == n {
                Ok(Passed::All(n))
            } else {
                own.keep(&scratch[written..n]);
                Ok(Passed::Part { written })
            }
        })
    }
}

/// A direction's own buffer, for when the writer falls behind: allocated
/// on demand, never zero-filled, doubled when a read fills it, dropped when
/// the direction goes quiet.
struct Buffer {
    bytes: Vec<u8>,
    /// The capacity the next allocation gets.
    size: usize,
}

impl Buffer {
    fn new() -> Self {
        Buffer {
            bytes: Vec::new(),
            size: INITIAL_BUFFER_SIZE,
        }
    }

    fn held(&self) -> bool {
        self.bytes.capacity() != 0
    }

    /// Take over `rest`, the bytes the writer could not take yet: the
    /// buffer is sized for them (a power of two from [`INITIAL_BUFFER_SIZE`]
    /// up to [`BUFFER_SIZE`]), and the reads that follow go into it.
    fn keep(&mut self, rest: &[u8]) {
        self.size = rest
            .len()
            .next_power_of_two()
            .clamp(INITIAL_BUFFER_SIZE, BUFFER_SIZE);
        let mut bytes = Vec::with_capacity(self.size.max(rest.len()));
        bytes.extend_from_slice(rest);
        self.bytes = bytes;
    }

    /// The bytes kept by [`Buffer::keep`].
    fn pending(&self) -> &[u8] {
        &self.bytes
    }

    /// An empty vector with `size` bytes of spare capacity to read into.
    fn space(&mut self) -> &mut Vec<u8> {
        self.bytes.clear();
        if self.bytes.capacity() < self.size {
            // Replaced, not reserved: the old bytes need no copying.
            self.bytes = Vec::with_capacity(self.size);
        }
        &mut self.bytes
    }

    /// A read of `n` bytes was written out: a full buffer means the stream
    /// is outrunning it, so the next one is twice as large.
    fn consumed(&mut self, n: usize) {
        if n >= self.bytes.capacity() && self.size < BUFFER_SIZE {
            self.size = (self.size * 2).min(BUFFER_SIZE);
        }
    }

    /// Free the memory; the next read goes through the scratch buffer again.
    fn release(&mut self) {
        self.bytes = Vec::new();
        self.size = INITIAL_BUFFER_SIZE;
    }
}

#[cfg(test)]
mod tests;
