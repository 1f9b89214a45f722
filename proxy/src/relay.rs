//! The byte relay of an allowed tunnel: both directions at once with large
//! buffers (tokio's default 8 KiB copy buffer costs two thirds of the
//! throughput, performance.md), half-close passed on (a FIN one way leaves the
//! other way open), an idle timeout over both directions, and a cut on shutdown.
//! Buffers are allocated only when data first arrives, so idle tunnels stay small.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes per direction buffer.
pub const BUFFER_SIZE: usize = 256 * 1024;

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

/// One direction: read into a large buffer, write it all, repeat; on EOF pass
/// the half-close on with `shutdown(SHUT_WR)`.
async fn copy(
    reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    progress: &Progress,
    start: Instant,
    on_bytes: &(dyn Fn(u64) + Sync),
) -> Result<(), Side> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        reader.readable().await.map_err(|_| Side::Reader)?;
        if buf.is_empty() {
            buf = vec![0; BUFFER_SIZE];
        }
        let n = match reader.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Side::Reader),
        };
        let chunk = buf.get(..n).ok_or(Side::Reader)?;
        writer.write_all(chunk).await.map_err(|_| Side::Writer)?;
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

#[cfg(test)]
mod tests;
