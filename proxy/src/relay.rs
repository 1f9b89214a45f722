//! The byte relay of an allowed tunnel: both directions at once, half-close
//! passed on (a FIN one way leaves the other way open), an idle timeout over
//! both directions, and a cut on shutdown.
//!
//! The relay is a future written by hand ([`Relay`]): an open tunnel's task
//! holds its two sockets, two small direction records, one timer and its
//! registration with the cut signal, a few hundred bytes, where the same
//! logic in `async` blocks took about 1.5 KB. A wake-up takes no lock: the
//! cut signal is a flag ([`crate::cut`]).
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

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep};

use crate::cut::CutSignal;

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

/// Where a direction failed.
#[derive(Debug, Clone, Copy)]
enum Side {
    Reader,
    Writer,
}

/// Relay between `client` and `upstream` until both directions are closed,
/// the connection is idle for `idle`, or `cut` is raised. `on_bytes` is
/// called with (up, down) deltas for live metrics.
pub fn relay<'a>(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    cut: &'a CutSignal,
    on_bytes: &'a (dyn Fn(u64, u64) + Sync),
) -> Relay<'a> {
    let now = Instant::now();
    Relay {
        client,
        upstream,
        up: Direction::new(now),
        down: Direction::new(now),
        idle,
        cut,
        cut_wait: cut.notified(),
        cut_waker: None,
        timer: tokio::time::sleep_until(now + idle),
        on_bytes,
    }
}

pin_project_lite::pin_project! {
    /// The relay of one tunnel, made by [`relay`]; resolves once.
    #[must_use = "a relay moves nothing unless awaited"]
    pub struct Relay<'a> {
        client: TcpStream,
        upstream: TcpStream,
        // Client -> upstream.
        up: Direction,
        // Upstream -> client.
        down: Direction,
        idle: Duration,
        cut: &'a CutSignal,
        // Registered at the first poll, and again when the task's waker
        // changes; otherwise only the flag is read.
        #[pin]
        cut_wait: Notified<'a>,
        cut_waker: Option<Waker>,
        // Fires at the earliest of the idle deadline and the linger
        // deadlines of held buffers; moved earlier only when a buffer is
        // taken, otherwise re-armed when it fires (activity moves the idle
        // deadline later without touching the timer).
        #[pin]
        timer: Sleep,
        on_bytes: &'a (dyn Fn(u64, u64) + Sync),
    }
}

impl std::fmt::Debug for Relay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("up", &self.up.bytes)
            .field("down", &self.down.bytes)
            .finish_non_exhaustive()
    }
}

impl Future for Relay<'_> {
    type Output = Transferred;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Transferred> {
        let mut this = self.project();
        let done = |up: &Direction, down: &Direction, ending| {
            Poll::Ready(Transferred {
                up: up.bytes,
                down: down.bytes,
                ending,
            })
        };
        let waker = cx.waker();
        if !this.cut_waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            if this.cut_wait.as_mut().poll(cx).is_ready() {
                return done(this.up, this.down, Ending::Shutdown);
            }
            *this.cut_waker = Some(waker.clone());
        }
        if this.cut.is_raised() {
            return done(this.up, this.down, Ending::Shutdown);
        }
        let on_bytes = *this.on_bytes;
        // Either direction failing ends the tunnel at once; a clean close
        // of one direction (half-close) waits for the other.
        if let Poll::Ready(Err(side)) = this
            .up
            .poll_move(cx, this.client, this.upstream, &|n| on_bytes(n, 0))
        {
            return done(this.up, this.down, failed(side, true));
        }
        if let Poll::Ready(Err(side)) = this
            .down
            .poll_move(cx, this.upstream, this.client, &|n| on_bytes(0, n))
        {
            return done(this.up, this.down, failed(side, false));
        }
        if this.up.is_done() && this.down.is_done() {
            return done(this.up, this.down, Ending::Closed);
        }
        let next = next_deadline(this.up, this.down, *this.idle);
        if next < this.timer.deadline() {
            this.timer.as_mut().reset(next);
        }
        while this.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= this.up.last.max(this.down.last) + *this.idle {
                return done(this.up, this.down, Ending::Idle);
            }
            this.up.release_if_quiet(now);
            this.down.release_if_quiet(now);
            let next = next_deadline(this.up, this.down, *this.idle);
            this.timer.as_mut().reset(next);
        }
        Poll::Pending
    }
}

/// The earliest of the idle deadline (over both directions) and the
/// directions' buffer-linger deadlines.
fn next_deadline(up: &Direction, down: &Direction, idle: Duration) -> Instant {
    let mut next = up.last.max(down.last) + idle;
    for linger in [up.linger_deadline(), down.linger_deadline()]
        .into_iter()
        .flatten()
    {
        next = next.min(linger);
    }
    next
}

/// Which end failed: the up direction reads the client and writes the
/// upstream, the down direction the reverse.
fn failed(side: Side, up: bool) -> Ending {
    match (side, up) {
        (Side::Reader, true) | (Side::Writer, false) => Ending::ClientError,
        (Side::Writer, true) | (Side::Reader, false) => Ending::UpstreamError,
    }
}

/// What a direction is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for its reader.
    Reading,
    /// Writing its own buffer's bytes from `from` on; `grow` when they were
    /// read into that buffer (a full read makes the next buffer larger).
    Writing { from: usize, grow: bool },
    /// The reader's end of stream was passed on (`shutdown(SHUT_WR)`).
    Done,
}

/// One direction: wait until the reader has data, read it, write it all,
/// repeat; on end of stream pass the half-close on.
///
/// Data is read into the worker thread's [`scratch`] buffer and written on
/// at once without waiting; only when the writer cannot take it all do the
/// remaining bytes move into a buffer of the direction's own ([`Buffer`]),
/// which then serves the following reads (a bulk stream) until the
/// direction goes quiet.
#[derive(Debug)]
struct Direction {
    /// Bytes written on.
    bytes: u64,
    /// When bytes last moved this way (made: when the relay started).
    last: Instant,
    buf: Buffer,
    phase: Phase,
}

impl Direction {
    fn new(now: Instant) -> Self {
        Direction {
            bytes: 0,
            last: now,
            buf: Buffer::new(),
            phase: Phase::Reading,
        }
    }

    fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// `n` bytes were written on.
    fn moved(&mut self, n: usize, on_bytes: &dyn Fn(u64)) {
        self.bytes += n as u64;
        self.last = Instant::now();
        on_bytes(n as u64);
    }

    /// When a buffer held while waiting for the reader is given back.
    fn linger_deadline(&self) -> Option<Instant> {
        (self.phase == Phase::Reading && self.buf.held()).then(|| self.last + BUFFER_LINGER)
    }

    fn release_if_quiet(&mut self, now: Instant) {
        if self.linger_deadline().is_some_and(|d| d <= now) {
            self.buf.release();
        }
    }

    /// Move what `reader` has to `writer` until one of them must wait
    /// (`Pending`, with the wake-up registered), the reader's end of stream
    /// is passed on (`Ready(Ok)`), or a socket fails.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        reader: &TcpStream,
        writer: &TcpStream,
        on_bytes: &dyn Fn(u64),
    ) -> Poll<Result<(), Side>> {
        loop {
            match self.phase {
                Phase::Done => return Poll::Ready(Ok(())),
                Phase::Writing { from, grow } => {
                    let pending = self.buf.pending_from(from);
                    if pending.is_empty() {
                        if grow {
                            self.buf.consumed(from);
                        }
                        self.phase = Phase::Reading;
                        continue;
                    }
                    ready!(writer.poll_write_ready(cx)).map_err(|_| Side::Writer)?;
                    match writer.try_write(pending) {
                        Ok(0) => return Poll::Ready(Err(Side::Writer)),
                        Ok(w) => {
                            self.phase = Phase::Writing {
                                from: from + w,
                                grow,
                            };
                            self.moved(w, on_bytes);
                        }
                        Err(e) if retry(&e) => {}
                        Err(_) => return Poll::Ready(Err(Side::Writer)),
                    }
                }
                Phase::Reading => {
                    ready!(reader.poll_read_ready(cx)).map_err(|_| Side::Reader)?;
                    if self.buf.held() {
                        match crate::sockread::try_read(reader, self.buf.space(), usize::MAX) {
                            Ok(0) => self.finish(writer),
                            Ok(_) => {
                                self.phase = Phase::Writing {
                                    from: 0,
                                    grow: true,
                                }
                            }
                            Err(e) if retry(&e) => {}
                            Err(_) => return Poll::Ready(Err(Side::Reader)),
                        }
                    } else {
                        match scratch::pass_on(reader, writer, &mut self.buf)? {
                            Passed::End => self.finish(writer),
                            Passed::Nothing => {}
                            Passed::All(n) => self.moved(n, on_bytes),
                            Passed::Part { written } => {
                                // The writer is behind: the rest waits in `buf`.
                                if written > 0 {
                                    self.moved(written, on_bytes);
                                }
                                self.phase = Phase::Writing {
                                    from: 0,
                                    grow: false,
                                };
                            }
                        }
                    }
                }
            }
        }
    }

    /// The reader is at its end: pass the half-close on and free the buffer.
    fn finish(&mut self, writer: &TcpStream) {
        // The peer may already be gone; the other direction reports that.
        let _ = SockRef::from(writer).shutdown(Shutdown::Write);
        self.buf.release();
        self.phase = Phase::Done;
    }
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

    use tokio::net::TcpStream;

    use super::{BUFFER_SIZE, Buffer, Passed, Side, retry};

    thread_local! {
        /// Allocated on a thread's first use, never zero-filled.
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// Read what `reader` has (up to [`BUFFER_SIZE`]) and write as much of
    /// it to `writer` as the socket takes now; the rest is copied into
    /// `own` (which must be empty), for the caller to write when it can.
    pub(super) fn pass_on(
        reader: &TcpStream,
        writer: &TcpStream,
        own: &mut Buffer,
    ) -> Result<Passed, Side> {
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            if scratch.capacity() < BUFFER_SIZE {
                *scratch = Vec::with_capacity(BUFFER_SIZE);
            }
            let n = match crate::sockread::try_read(reader, scratch, BUFFER_SIZE) {
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
#[derive(Debug)]
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

    /// The bytes kept by [`Buffer::keep`] or read into [`Buffer::space`],
    /// from `from` on.
    fn pending_from(&self, from: usize) -> &[u8] {
        self.bytes.get(from..).unwrap_or_default()
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
