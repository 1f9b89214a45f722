//! The byte relay of an allowed tunnel: both directions at once, half-close
//! passed on (a FIN one way leaves the other way open), an idle timeout over
//! both directions, and a cut on shutdown.
//!
//! Each direction's buffer starts small and doubles, up to [`BUFFER_SIZE`],
//! each time a read fills it: a bulk stream soon reads 256 KiB at a time
//! (tokio's fixed 8 KiB copy buffer costs two thirds of the throughput,
//! performance.md), while a short exchange never pays for a large buffer.
//! Reads go into uninitialised capacity, so nothing is zero-filled, and a
//! direction quiet for [`BUFFER_LINGER`] gives its buffer back, so idle
//! tunnels stay small.

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
/// The buffer a direction starts with (and restarts with after going quiet).
pub const INITIAL_BUFFER_SIZE: usize = 16 * 1024;
/// How long a direction waits for data before it frees its buffer.
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
    let up_dir = copy(client_r, upstream_w, &up, start, &count_up);
    let down_dir = copy(upstream_r, client_w, &down, start, &count_down);
    // Either direction failing ends the tunnel at once; a clean close of one
    // direction (half-close) waits for the other.
    let both = async {
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

/// One direction: read into the buffer, write it all, repeat; on EOF pass
/// the half-close on with `shutdown(SHUT_WR)`.
async fn copy(
    reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    progress: &Progress,
    start: Instant,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(), Side> {
    let mut buf = Buffer::new();
    loop {
        if buf.held() {
            // Wait a little with the buffer in hand; a quiet direction
            // gives it back and waits on without one.
            match tokio::time::timeout(BUFFER_LINGER, reader.readable()).await {
                Ok(ready) => ready.map_err(|_| Side::Reader)?,
                Err(_quiet) => {
                    buf.release();
                    reader.readable().await.map_err(|_| Side::Reader)?;
                }
            }
        } else {
            reader.readable().await.map_err(|_| Side::Reader)?;
        }
        let space = buf.space();
        let n = match reader.try_read_buf(space) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Side::Reader),
        };
        writer.write_all(space).await.map_err(|_| Side::Writer)?;
        buf.consumed(n);
        progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        progress
            .last_ms
            .store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        on_bytes(n as u64);
    }
    // The peer may already be gone; the other direction reports that.
    let _ = writer.shutdown().await;
    Ok(())
}

/// One direction's buffer: allocated on demand, never zero-filled, doubled
/// when a read fills it, dropped when the direction goes quiet.
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

    /// Free the memory; the next read starts small again.
    fn release(&mut self) {
        self.bytes = Vec::new();
        self.size = INITIAL_BUFFER_SIZE;
    }
}

#[cfg(test)]
mod tests;
