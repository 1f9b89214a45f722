//! The steps every TCP connection shares once its destination is known, in
//! whichever way it arrived (transparent listener or CONNECT proxy): peek at
//! the client's first bytes within the size and time limits, connect to the
//! original destination from a marked socket, replay the peeked bytes, relay,
//! and write the closing record. A denied connection is reset at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use egressd_audit::{HostSource, Record};
use egressd_policy::{Decision, Reason};
use socket2::SockRef;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::peek::{self, PeekError, Peeked};
use crate::relay::{self, Ending};

/// What the client's first bytes said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstBytes {
    /// A name to decide on.
    Named {
        /// The name (lowercase).
        name: String,
        /// TLS SNI or HTTP Host.
        source: HostSource,
    },
    /// No name: another protocol, TLS without SNI, HTTP without Host, or a
    /// client that waits for the server to speak first.
    Nameless,
    /// The bytes are refused before any policy question: malformed, too
    /// large, or sent too slowly.
    Refused {
        /// `malformed_request` or `limit_exceeded`.
        reason: Reason,
        /// For the record's `detail`.
        detail: String,
    },
}

/// The client's first bytes and what they are.
#[derive(Debug)]
pub struct Peek {
    /// Everything read so far; replayed to the upstream.
    pub bytes: Vec<u8>,
    /// The classification.
    pub first: FirstBytes,
}

/// Read the client's first bytes until the parser can classify them, the
/// size cap is reached, or a timeout fires. `initial` holds bytes already
/// read (after a CONNECT head).
pub async fn peek(client: &mut TcpStream, engine: &Engine, initial: Vec<u8>) -> Peek {
    let mut peeked = read_first_bytes(client, engine, initial).await;
    // The bytes are held until replayed, for as long as the tunnel lives:
    // keep them, not the read-ahead room around them.
    peeked.bytes.shrink_to_fit();
    peeked
}

async fn read_first_bytes(client: &mut TcpStream, engine: &Engine, initial: Vec<u8>) -> Peek {
    let limits = engine.limits();
    let cap = limits.peek.buffer_cap();
    let started = Instant::now();
    let mut buf = initial;
    loop {
        match peek::classify(&buf, &limits.peek) {
            Ok(p) => {
                return Peek {
                    first: classified(p),
                    bytes: buf,
                };
            }
            Err(PeekError::Incomplete) if buf.len() < cap => {}
            Err(PeekError::Incomplete | PeekError::TooLarge) => {
                return refused(
                    buf,
                    Reason::LimitExceeded,
                    "the ClientHello or request head exceeds the size limit".into(),
                );
            }
            Err(PeekError::Malformed(why)) => {
                return refused(buf, Reason::MalformedRequest, format!("malformed: {why}"));
            }
        }
        // A client that has not started may be waiting for the server to
        // speak first; one that started must finish within peek_timeout.
        let deadline = if buf.is_empty() {
            started + limits.first_byte_wait.min(limits.peek_timeout)
        } else {
            started + limits.peek_timeout
        };
        // Room for a typical ClientHello first (a few hundred bytes to 2 KiB),
        // up to a whole TLS record after that.
        let step = if buf.is_empty() { 4 * 1024 } else { 16 * 1024 };
        let room = cap.saturating_sub(buf.len()).min(step);
        let old_len = buf.len();
        // Read into spare capacity: nothing is zero-filled.
        buf.reserve(room);
        let read =
            tokio::time::timeout_at(deadline, crate::sockread::read(client, &mut buf, room)).await;
        match read {
            Ok(Ok(n)) => {
                if n == 0 {
                    return if buf.is_empty() {
                        // Closed without a byte: decided by address, like a
                        // server-first protocol.
                        Peek {
                            bytes: buf,
                            first: FirstBytes::Nameless,
                        }
                    } else {
                        refused(
                            buf,
                            Reason::MalformedRequest,
                            "the client closed the connection in the middle of its first message"
                                .into(),
                        )
                    };
                }
            }
            Ok(Err(e)) => {
                return refused(
                    buf,
                    Reason::MalformedRequest,
                    format!("client read failed: {e}"),
                );
            }
            Err(_elapsed) => {
                return if buf.is_empty() {
                    Peek {
                        bytes: buf,
                        first: FirstBytes::Nameless,
                    }
                } else {
                    refused(
                        buf,
                        Reason::MalformedRequest,
                        format!(
                            "the client sent {} bytes and then nothing within {} ms",
                            old_len,
                            limits.peek_timeout.as_millis()
                        ),
                    )
                };
            }
        }
    }
}

fn refused(bytes: Vec<u8>, reason: Reason, detail: String) -> Peek {
    Peek {
        bytes,
        first: FirstBytes::Refused { reason, detail },
    }
}

fn classified(p: Peeked) -> FirstBytes {
    match p {
        Peeked::Tls {
            sni: Some(name), ..
        } => FirstBytes::Named {
            name,
            source: HostSource::Sni,
        },
        Peeked::Http {
            host: Some(name), ..
        } => FirstBytes::Named {
            name,
            source: HostSource::HttpHost,
        },
        Peeked::Tls { sni: None, .. } | Peeked::Http { host: None, .. } | Peeked::Other => {
            FirstBytes::Nameless
        }
    }
}

/// Connect to `dst` from a socket carrying the bypass mark (when set), within
/// the connect timeout.
pub async fn connect_upstream(engine: &Engine, dst: SocketAddr) -> io::Result<TcpStream> {
    let started = Instant::now();
    let socket = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = engine.upstream_mark() {
        SockRef::from(&socket).set_mark(mark)?;
    }
    let stream = tokio::time::timeout(engine.limits().connect_timeout, socket.connect(dst))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    engine.metrics().connect_latency.observe(started.elapsed());
    Ok(stream)
}

/// Close `stream` with a TCP reset (SO_LINGER 0): the client fails at once
/// instead of waiting.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Write the decision record for `decision`, count it, and return the record
/// (the closing record is cut from it).
pub async fn audit_decision(
    engine: &Engine,
    decision: &Decision,
    fill: impl FnOnce(&mut Record),
) -> Record {
    let mut rec = engine.record(egressd_audit::Kind::Tcp, decision);
    fill(&mut rec);
    if decision.is_allow() {
        tracing::debug!(
            host = rec.host.as_deref(), dst = ?rec.dst, src = ?rec.src,
            reason = decision.reason.as_str(), rule = %decision.rule, "allowed"
        );
    } else {
        tracing::info!(
            host = rec.host.as_deref(), dst = ?rec.dst, src = ?rec.src,
            reason = decision.reason.as_str(), rule = %decision.rule,
            detail = rec.detail.as_deref(), "denied"
        );
    }
    engine.metrics().decision(decision);
    engine.audit(rec.clone()).await;
    rec
}

/// A listener for tunnels on `addr`, made as `TcpListener::bind` makes one
/// (SO_REUSEADDR, a backlog of 1024), with `TCP_NODELAY` set before it
/// listens: every accepted socket inherits it, so replies are relayed as
/// they come with no call per connection.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts on `listener` until the engine stops accepting; every connection
/// is handled by `handle` in its own task (tracked by `tasks`, so shutdown can
/// wait for it). `listener_name` names the listener in logs.
pub async fn accept_loop<F, Fut>(
    engine: &Engine,
    listener: TcpListener,
    tasks: tokio_util::task::TaskTracker,
    listener_name: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Made once: a cancellation future made per connection would register
    // with the token and leave it again for every connection.
    let stop = engine.stop_accepting().cancelled();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                tasks.spawn(handle(stream, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed on the {listener_name} listener");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An allowed connection, connected upstream, whose decision is recorded:
/// what every way in (transparent, CONNECT, SNI) hands to [`run_open`].
#[derive(Debug)]
pub struct OpenTunnel {
    /// The client's side.
    pub client: TcpStream,
    /// The upstream's side.
    pub upstream: TcpStream,
    /// The client's first bytes, to replay to the upstream.
    pub replay: Vec<u8>,
    /// The decision record (the closing record is cut from it), boxed: it
    /// is kept for the tunnel's whole life, in every open tunnel's task.
    pub record: Box<Record>,
}

/// Replay the tunnel's first bytes to the upstream (and free them), relay
/// both ways until the tunnel ends, then write the closing record derived
/// from the decision record. One layer of future over the relay: an idle
/// tunnel's task is about the relay's state.
pub async fn run_open(engine: Arc<Engine>, open: OpenTunnel, started: Instant) {
    let OpenTunnel {
        client,
        mut upstream,
        replay,
        record: decision_record,
    } = open;
    let _open = engine.metrics().connection_opened();
    let replayed = upstream.write_all(&replay).await;
    let replay_len = replay.len() as u64;
    drop(replay);
    let (up_extra, transferred) = if let Err(e) = replayed {
        tracing::debug!(error = %e, "upstream closed before the first bytes were replayed");
        (0, None)
    } else {
        let t = relay::relay(
            client,
            upstream,
            engine.limits().idle_timeout,
            engine.cut_tunnels(),
            &|up, down| engine.metrics().bytes(up, down),
        )
        .await;
        (replay_len, Some(t))
    };
    engine.metrics().bytes(up_extra, 0);
    let mut closing = *decision_record;
    closing.id = egressd_audit::id::next();
    closing.ts = egressd_audit::time_format::now();
    closing.bytes_up = Some(up_extra + transferred.map_or(0, |t| t.up));
    closing.bytes_down = Some(transferred.map_or(0, |t| t.down));
    closing.duration_ms = Some(started.elapsed().as_millis() as u64);
    closing.detail = match transferred.map(|t| t.ending) {
        None => Some("upstream closed before the first bytes were replayed".into()),
        Some(Ending::Closed) => None,
        Some(other) => Some(format!("ended: {}", other.as_str())),
    };
    // Boxed: queueing a record is a future of about a kilobyte (the record
    // and the wait for room in the journal's queue), which would otherwise
    // take room in every open tunnel's task for its whole life.
    Box::pin(engine.audit(closing)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    use super::{accept_loop, listen};
    use crate::limits::Limits;
    use crate::test_support::TestEngine;

    /// Every connection accepted on a [`listen`]er has TCP_NODELAY, with no
    /// call per connection.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let t = TestEngine::new("version: 1\n", Limits::default());
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let engine = Arc::clone(&t.engine);
        let tasks = tokio_util::task::TaskTracker::new();
        tokio::spawn(async move {
            accept_loop(&engine, listener, tasks, "test", |stream, _| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(stream.nodelay().unwrap());
                }
            })
            .await;
        });
        for _ in 0..3 {
            let _client = TcpStream::connect(addr).await.unwrap();
            assert!(rx.recv().await.unwrap(), "accepted without TCP_NODELAY");
        }
    }
}
