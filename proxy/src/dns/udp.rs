//! The DNS server over UDP: a few forwarding loops (one per two runtime
//! workers, at least one, at most [`MAX_LOOPS`]) share the client address.
//! A loop reads a batch of client queries (one `recvmmsg`), answers at once
//! what the proxy answers itself (malformed, denied), and sends the allowed
//! ones upstream (one `sendmmsg` per upstream) on its own socket connected
//! to that upstream, keeping each in a table keyed by the random id it went
//! out with until its answer, its timeout (then the next upstream, or
//! SERVFAIL) or a send failure (the same). No task per query and no lock:
//! the table belongs to its loop. A truncated answer is fetched over TCP in
//! a task of its own (rare). The system calls are in `mmsg`.
//!
//! An upstream datagram is accepted only on the socket connected to the
//! upstream the query was sent to (the kernel drops datagrams from any
//! other address), with the query's id and question (`upstream::is_reply_to`);
//! anything else (strays, spoofs, late answers to queries that timed out)
//! is dropped. Every audit record of a batch is queued before any of the
//! batch's answers is sent: each record still precedes its answer, and the
//! journal's writer is woken once per batch instead of once per query.

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd_audit::Record;
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;
use tokio_util::task::TaskTracker;

use super::DnsError;
use super::message::Query;
use super::mmsg::{self, RecvBuf};
use super::server::{Begun, DnsOptions, PURGE_EVERY, begin, conclude};
use super::upstream::{Exchanged, Upstreams, forwarding_udp, is_reply_to};
use crate::engine::Engine;

/// Forwarding loops per client socket, at most.
const MAX_LOOPS: usize = 4;
/// Runtime workers per forwarding loop. A loop is a thread beside the
/// runtime's workers and forwards tens of thousands of queries a second; a
/// second loop on a two-worker host cost more than it gave: each loop's
/// batches were smaller and each went to sleep and was woken more often.
/// W4 on 2 cores, 5 alternating pairs against dnsdist: CPU per query 0.86-0.95x
/// dnsdist's with one loop, 0.99-1.13x with two, at the same throughput.
const WORKERS_PER_LOOP: usize = 2;
/// Datagrams one loop reads from one socket before the others get a turn
/// (one `recvmmsg`).
const BATCH: usize = mmsg::MAX;
/// The largest DNS message.
const MAX_MESSAGE: usize = 65535;
/// Queries one loop keeps in flight, at most (ids are 16 bits).
const MAX_PENDING: usize = 16_384;
/// Receive buffer asked for the client socket (capped by net.core.rmem_max):
/// a burst of queries waits there while a loop works through a batch.
const CLIENT_RCVBUF: usize = 4 << 20;

/// Serve DNS on `sock` until the engine stops accepting, then finish the
/// queries already read. Each loop runs on a thread of its own with its own
/// single-threaded runtime, so a datagram wakes exactly the thread that
/// reads it (on the shared runtime, readiness seen by one worker's I/O
/// driver woke another worker to run the loop: a context switch per
/// wake-up). A task of `tasks` waits for each loop, so a shutdown waiting
/// on `tasks` waits for their last audit records.
pub(super) async fn serve(
    engine: Arc<Engine>,
    sock: UdpSocket,
    tasks: TaskTracker,
    opts: DnsOptions,
) {
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(CLIENT_RCVBUF);
    let loops = (tokio::runtime::Handle::current().metrics().num_workers() / WORKERS_PER_LOOP)
        .clamp(1, MAX_LOOPS);
    let sock = match sock.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "DNS UDP socket unusable: no DNS over UDP");
            return;
        }
    };
    // Each loop gets a socket of its own on the same address (SO_REUSEPORT:
    // the kernel spreads clients over them), so a datagram wakes one loop,
    // not all of them. Without twins the loops share the one socket.
    let mut clients = vec![sock];
    if loops > 1 {
        match reuseport_twins(&clients[0], loops - 1) {
            Ok(twins) => clients.extend(twins),
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP loops share one socket");
                for _ in 1..loops {
                    match clients[0].try_clone() {
                        Ok(c) => clients.push(c),
                        Err(e) => {
                            tracing::error!(error = %e, "DNS UDP socket not shared with a forwarding loop");
                            break;
                        }
                    }
                }
            }
        }
    }
    let cap = (opts.max_inflight / loops).clamp(1, MAX_PENDING);
    let mut done = Vec::with_capacity(loops);
    for (i, client) in clients.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let engine = Arc::clone(&engine);
        let spawned = std::thread::Builder::new()
            .name(format!("egressd-dns{i}"))
            .spawn(move || {
                run_loop(engine, client, cap, opts, i == 0);
                drop(tx);
            });
        match spawned {
            // Tracked by `tasks`, so a shutdown waits for the thread's last
            // records even once this function is no longer polled.
            Ok(_) => done.push(tasks.spawn(async move {
                let _ = rx.await;
            })),
            Err(e) => tracing::error!(error = %e, "DNS UDP forwarding thread not started"),
        }
    }
    if done.is_empty() {
        tracing::error!("no DNS UDP forwarding loop runs: queries over UDP go unanswered");
    }
    for d in done {
        // The sender is dropped when the thread ends, normally or not.
        let _ = d.await;
    }
}

/// One forwarding loop on the calling thread, until it is done.
fn run_loop(
    engine: Arc<Engine>,
    client: std::net::UdpSocket,
    cap: usize,
    opts: DnsOptions,
    purges: bool,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "DNS UDP forwarding loop has no runtime");
            return;
        }
    };
    rt.block_on(async move {
        let client = match UdpSocket::from_std(client) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::error!(error = %e, "DNS UDP socket not registered");
                return;
            }
        };
        // Truncated answers are fetched over TCP in tasks of this runtime;
        // the loop ends only after them.
        let tcp = TaskTracker::new();
        Forwarder::new(engine, client, tcp.clone(), cap)
            .run(opts, purges)
            .await;
        tcp.close();
        tcp.wait().await;
    });
}

/// `n` more sockets bound to `sock`'s address in one SO_REUSEPORT group with it.
fn reuseport_twins(
    sock: &std::net::UdpSocket,
    n: usize,
) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let addr = sock.local_addr()?;
    let only_v6 = addr.is_ipv6() && socket2::SockRef::from(sock).only_v6()?;
    socket2::SockRef::from(sock).set_reuse_port(true)?;
    (0..n)
        .map(|_| {
            let twin = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            if addr.is_ipv6() {
                twin.set_only_v6(only_v6)?;
            }
            twin.set_reuse_port(true)?;
            let _ = twin.set_recv_buffer_size(CLIENT_RCVBUF);
            twin.set_nonblocking(true)?;
            twin.bind(&addr.into())?;
            Ok(twin.into())
        })
        .collect()
}

/// An allowed query waiting for its upstream answer.
struct Pending {
    client: SocketAddr,
    /// Also what is sent upstream ([`Query::upstream`], the current id in
    /// its first two bytes).
    query: Query,
    rec: Record,
    /// Index of the upstream asked.
    upstream: usize,
    /// Tells this query's deadline entry from one of an earlier query that
    /// had the same id.
    seq: u64,
    /// Why the previous upstream gave no answer.
    last: DnsError,
}

/// An answer ready for a client, after its record.
struct Outgoing {
    rec: Record,
    reply: Option<(Vec<u8>, SocketAddr)>,
}

/// One forwarding loop's state. See the module documentation.
struct Forwarder {
    engine: Arc<Engine>,
    client: Arc<UdpSocket>,
    tasks: TaskTracker,
    upstreams: Upstreams,
    /// A socket connected to each upstream (same order), made on first use:
    /// no route lookup per datagram, and the kernel keeps out datagrams
    /// from anyone else.
    ups: Vec<Option<UdpSocket>>,
    /// Boxed: a pending query (its record included) is moved in and out of
    /// the table and through the conclusion; a box moves as a pointer.
    pending: HashMap<u16, Box<Pending>>,
    /// (deadline, id, seq) in sending order: the timeout is the same for
    /// every query, so the earliest deadline is always in front.
    deadlines: VecDeque<(Instant, u16, u64)>,
    seq: u64,
    cap: usize,
    outbox: Vec<Outgoing>,
    /// Per upstream (same order), the ids of pending queries to send to it
    /// at the end of the batch, in one `sendmmsg`.
    unsent: Vec<Vec<u16>>,
}

impl Forwarder {
    fn new(engine: Arc<Engine>, client: Arc<UdpSocket>, tasks: TaskTracker, cap: usize) -> Self {
        let upstreams = engine.resolver().upstreams().clone();
        let ups = (0..upstreams.addrs().len()).map(|_| None).collect();
        let unsent = (0..upstreams.addrs().len()).map(|_| Vec::new()).collect();
        Forwarder {
            engine,
            client,
            tasks,
            upstreams,
            ups,
            pending: HashMap::with_capacity(cap),
            deadlines: VecDeque::new(),
            seq: 0,
            cap,
            outbox: Vec::with_capacity(BATCH),
            unsent,
        }
    }

    async fn run(mut self, opts: DnsOptions, purges: bool) {
        let stop = self.engine.stop_accepting().clone();
        let timeout = self.upstreams.timeout();
        let mut sweep = tokio::time::interval(
            (timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(100)),
        );
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut purge = tokio::time::interval(PURGE_EVERY);
        purge.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut buf = RecvBuf::new(MAX_MESSAGE);
        let mut stopping = false;
        // Made once: a cancellation future made per turn would register
        // with the token and leave it again at every turn.
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        loop {
            if stopping && self.pending.is_empty() {
                return;
            }
            let room = !stopping && self.pending.len() < self.cap;
            tokio::select! {
                // The socket's own waker slot, not a waiter list entry made
                // and dropped at every turn.
                r = std::future::poll_fn(|cx| self.client.poll_recv_ready(cx)), if room => match r {
                    Ok(()) => self.read_queries(&opts, &mut buf).await,
                    Err(e) => tracing::debug!(error = %e, "DNS UDP socket not readable"),
                },
                (i, r) = readable(&self.ups) => match r {
                    Ok(()) => self.read_answers(i, &mut buf).await,
                    Err(e) => tracing::debug!(error = %e, "DNS upstream socket not readable"),
                },
                _ = sweep.tick(), if !self.deadlines.is_empty() => {
                    self.check_refused();
                    self.expire(Instant::now());
                    self.send_unsent().await;
                    self.send_outbox().await;
                }
                _ = purge.tick(), if purges => self.engine.dns_memory().purge(Instant::now()),
                () = &mut cancelled, if !stopping => stopping = true,
            }
        }
    }

    /// Read up to a batch of client queries (one `recvmmsg`) and deal with
    /// each; then send the batch's queries upstream and its answers.
    async fn read_queries(&mut self, opts: &DnsOptions, buf: &mut RecvBuf) {
        let room = self.cap.saturating_sub(self.pending.len());
        if room > 0 {
            let got = self.client.try_io(tokio::io::Interest::READABLE, || {
                mmsg::recv(self.client.as_fd(), buf, room.min(BATCH))
            });
            // Only what this call read: `try_io` may say WouldBlock without
            // reading, and `buf` still holds the previous batch.
            let read = match got {
                Ok(k) => k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    0
                }
            };
            let now = Instant::now();
            for i in 0..read {
                let Some((raw, Some(client))) = buf.get(i) else {
                    continue;
                };
                match begin(&self.engine, opts, raw, client) {
                    Begun::Own { rec, reply } => self.outbox.push(Outgoing {
                        rec,
                        reply: reply.map(|r| (r, client)),
                    }),
                    Begun::Forward { query, rec } => {
                        let pending = Box::new(Pending {
                            client,
                            query,
                            rec,
                            upstream: 0,
                            seq: 0,
                            last: DnsError::NoUpstream,
                        });
                        self.forward(pending, now);
                    }
                }
            }
        }
        self.send_unsent().await;
        self.send_outbox().await;
    }

    /// Read up to a batch of datagrams from upstream `i`'s socket (one
    /// `recvmmsg`).
    async fn read_answers(&mut self, i: usize, buf: &mut RecvBuf) {
        let Some(Some(sock)) = self.ups.get(i) else {
            return;
        };
        let got = sock.try_io(tokio::io::Interest::READABLE, || {
            mmsg::recv(sock.as_fd(), buf, BATCH)
        });
        match got {
            Ok(read) => {
                for k in 0..read {
                    if let Some((reply, _)) = buf.get(k) {
                        self.on_answer(reply, i);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                // An ICMP "port unreachable" came back: nothing listens
                // there, so no pending query of this upstream will be
                // answered. They go to the next upstream now rather than
                // at their timeout.
                self.refused(i, e);
            }
            Err(e) => tracing::debug!(error = %e, "DNS upstream receive failed"),
        }
        self.send_unsent().await;
        self.send_outbox().await;
    }

    /// A datagram from upstream `from`: the answer of a pending query, or
    /// ignored.
    fn on_answer(&mut self, reply: &[u8], from: usize) {
        let Some(&[hi, lo]) = reply.get(..2) else {
            return;
        };
        let id = u16::from_be_bytes([hi, lo]);
        let Some(p) = self.pending.get(&id) else {
            return;
        };
        let asked = self.upstreams.addrs().get(p.upstream).copied();
        if p.upstream != from || !is_reply_to(reply, p.query.upstream()) {
            return;
        }
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let Some(addr) = asked else { return };
        // TC: the same upstream over TCP, in a task (a TCP exchange would
        // hold up the loop).
        if reply.get(2).is_some_and(|f| f & 0x02 != 0) {
            self.over_tcp(p);
            return;
        }
        let x = Exchanged {
            reply: reply.to_vec(),
            from: addr,
            tcp: false,
        };
        self.conclude(p, Ok(x));
    }

    /// An ICMP "port unreachable" shows as a pending error on the connected
    /// socket (epoll says error, not readable, so no read sees it): looked
    /// for at every sweep, so a refusing upstream is passed over within a
    /// sweep period instead of at each query's timeout.
    fn check_refused(&mut self) {
        for i in 0..self.ups.len() {
            let err = match self.ups.get(i) {
                Some(Some(s)) => s.take_error().ok().flatten(),
                _ => None,
            };
            if let Some(e) = err.filter(|e| e.kind() == ErrorKind::ConnectionRefused) {
                self.refused(i, e);
            }
        }
    }

    /// Upstream `i` refused: each query pending on it goes to the next one.
    fn refused(&mut self, i: usize, e: std::io::Error) {
        let Some(&addr) = self.upstreams.addrs().get(i) else {
            return;
        };
        tracing::debug!(upstream = %addr, error = %e, "DNS upstream refused");
        let ids: Vec<u16> = self
            .pending
            .iter()
            .filter(|(_, p)| p.upstream == i)
            .map(|(id, _)| *id)
            .collect();
        let now = Instant::now();
        for id in ids {
            if let Some(p) = self.pending.remove(&id) {
                let source = std::io::Error::new(e.kind(), e.to_string());
                self.next_upstream(p, DnsError::Io { addr, source }, now);
            }
        }
    }

    /// `p`'s upstream failed with `why`: on to the next one.
    fn next_upstream(&mut self, mut p: Box<Pending>, why: DnsError, now: Instant) {
        p.last = why;
        p.upstream += 1;
        self.forward(p, now);
    }

    /// Queries whose upstream did not answer in time go to the next one.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id, seq)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if self.pending.get(&id).is_none_or(|p| p.seq != seq) {
                continue;
            }
            let Some(mut p) = self.pending.remove(&id) else {
                continue;
            };
            let why = match self.upstreams.addrs().get(p.upstream) {
                Some(&addr) => {
                    let e = DnsError::Timeout(addr, self.upstreams.timeout());
                    tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
                    e
                }
                None => std::mem::replace(&mut p.last, DnsError::NoUpstream),
            };
            self.next_upstream(p, why, now);
        }
    }

    /// Queue `p` for its upstream (or the first later one whose socket
    /// could be made) and keep it pending; SERVFAIL when no upstream is
    /// left. [`send_unsent`](Self::send_unsent) sends it.
    fn forward(&mut self, mut p: Box<Pending>, now: Instant) {
        let timeout = self.upstreams.timeout();
        let mark = self.upstreams.mark();
        while let Some(&addr) = self.upstreams.addrs().get(p.upstream) {
            let made = match self.ups.get_mut(p.upstream) {
                Some(Some(_)) => Ok(()),
                Some(slot) => forwarding_udp(canonical(addr), mark).map(|s| {
                    *slot = Some(s);
                }),
                None => Err(ErrorKind::NotFound.into()),
            };
            if let Err(source) = made {
                let e = DnsError::Io { addr, source };
                tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
                p.last = e;
                p.upstream += 1;
                continue;
            }
            let id = self.free_id();
            p.query.set_upstream_id(id);
            self.seq += 1;
            p.seq = self.seq;
            self.deadlines.push_back((now + timeout, id, p.seq));
            if let Some(q) = self.unsent.get_mut(p.upstream) {
                q.push(id);
            }
            self.pending.insert(id, p);
            return;
        }
        let last = std::mem::replace(&mut p.last, DnsError::NoUpstream);
        self.conclude(p, Err(last));
    }

    /// A random id no pending query of this loop uses.
    fn free_id(&self) -> u16 {
        loop {
            let id: u16 = rand::random();
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// Send the queued queries, each upstream's in `sendmmsg` batches. A
    /// query whose send fails goes to the next upstream (queued behind,
    /// and sent in the same pass), or ends in SERVFAIL.
    async fn send_unsent(&mut self) {
        for i in 0..self.unsent.len() {
            // Only queries still pending (all of them: nothing answers or
            // drops a query between its queueing and this send).
            if let Some(q) = self.unsent.get_mut(i) {
                q.retain(|id| self.pending.contains_key(id));
            }
            while let Some(ids) = self.unsent.get(i).filter(|q| !q.is_empty()) {
                let Some(Some(sock)) = self.ups.get(i) else {
                    break;
                };
                let msgs: Vec<(&[u8], Option<SocketAddr>)> = ids
                    .iter()
                    .take(mmsg::MAX)
                    .filter_map(|id| self.pending.get(id))
                    .map(|p| (p.query.upstream(), None))
                    .collect();
                let sent = sock.try_io(tokio::io::Interest::WRITABLE, || {
                    mmsg::send(sock.as_fd(), &msgs)
                });
                drop(msgs);
                match sent {
                    // Never for a non-empty batch; taken as the first one's
                    // failure rather than retried forever.
                    Ok(0) => self.send_failed(i, ErrorKind::WriteZero.into()),
                    Ok(k) => {
                        if let Some(q) = self.unsent.get_mut(i) {
                            q.drain(..k.min(q.len()));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let ready = match self.ups.get(i) {
                            Some(Some(sock)) => sock.writable().await,
                            _ => Ok(()),
                        };
                        if let Err(e) = ready {
                            self.send_failed(i, e);
                        }
                    }
                    Err(source) => self.send_failed(i, source),
                }
            }
        }
    }

    /// The first query queued for upstream `i` could not be sent.
    fn send_failed(&mut self, i: usize, source: std::io::Error) {
        let Some(id) = self
            .unsent
            .get_mut(i)
            .filter(|q| !q.is_empty())
            .map(|q| q.remove(0))
        else {
            return;
        };
        let (Some(p), Some(&addr)) = (self.pending.remove(&id), self.upstreams.addrs().get(i))
        else {
            return;
        };
        let e = DnsError::Io { addr, source };
        tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
        self.next_upstream(p, e, Instant::now());
    }

    /// The upstream exchange of `p` is over: its record and answer join the
    /// outbox.
    fn conclude(&mut self, p: Box<Pending>, outcome: Result<Exchanged, DnsError>) {
        let Pending {
            client, query, rec, ..
        } = *p;
        let (rec, reply) = conclude(&self.engine, &query, rec, outcome, false);
        self.outbox.push(Outgoing {
            rec,
            reply: Some((reply, client)),
        });
    }

    fn over_tcp(&self, p: Box<Pending>) {
        let engine = Arc::clone(&self.engine);
        let client = Arc::clone(&self.client);
        let upstreams = self.upstreams.clone();
        self.tasks.spawn(async move {
            let outcome = upstreams
                .exchange_truncated(p.upstream, p.query.upstream())
                .await;
            let (rec, reply) = conclude(&engine, &p.query, p.rec, outcome, false);
            engine.audit(rec).await;
            send_answer(&client, &reply, p.client).await;
        });
    }

    /// Queue every record of the batch, then send its answers (`sendmmsg`
    /// batches; an answer that cannot be sent is logged and dropped, as
    /// the client's retry would be).
    async fn send_outbox(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.outbox);
        let mut replies = Vec::with_capacity(out.len());
        for o in out.drain(..) {
            self.engine.audit(o.rec).await;
            replies.extend(o.reply);
        }
        let mut rest: &[(Vec<u8>, SocketAddr)] = &replies;
        while !rest.is_empty() {
            let msgs: Vec<(&[u8], Option<SocketAddr>)> = rest
                .iter()
                .take(mmsg::MAX)
                .map(|(r, to)| (r.as_slice(), Some(*to)))
                .collect();
            let sent = self.client.try_io(tokio::io::Interest::WRITABLE, || {
                mmsg::send(self.client.as_fd(), &msgs)
            });
            match sent {
                Ok(k) => rest = rest.get(k.max(1)..).unwrap_or_default(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Err(e) = self.client.writable().await {
                        tracing::debug!(error = %e, "DNS UDP socket not writable");
                        break;
                    }
                }
                Err(e) => {
                    if let Some((_, client)) = rest.first() {
                        tracing::debug!(%client, error = %e, "DNS UDP answer not sent");
                    }
                    rest = rest.get(1..).unwrap_or_default();
                }
            }
        }
        self.outbox = out;
    }
}

async fn send_answer(sock: &UdpSocket, reply: &[u8], client: SocketAddr) {
    if let Err(e) = sock.send_to(reply, client).await {
        tracing::debug!(%client, error = %e, "DNS UDP answer not sent");
    }
}

/// The first upstream socket with a datagram waiting (its index), or
/// never when there is none.
async fn readable(ups: &[Option<UdpSocket>]) -> (usize, std::io::Result<()>) {
    std::future::poll_fn(|cx| {
        for (i, s) in ups.iter().enumerate() {
            if let Some(s) = s
                && let std::task::Poll::Ready(r) = s.poll_recv_ready(cx)
            {
                return std::task::Poll::Ready((i, r));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// An IPv4-mapped IPv6 address is reached over IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}
