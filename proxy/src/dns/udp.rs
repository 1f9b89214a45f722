//! The DNS server over UDP: a few forwarding loops (one per runtime worker,
//! at most [`MAX_LOOPS`]) share the client socket. A loop reads a batch of
//! client queries, answers at once what the proxy answers itself
//! (malformed, denied), and sends allowed queries upstream on its own
//! socket connected to that upstream (one per upstream), keeping each in a
//! table keyed by the random id it went out with until its answer, its
//! timeout (then the next upstream, or SERVFAIL) or a send failure. No task
//! per query and no lock: the table belongs to its loop. A truncated answer
//! is fetched over TCP in a task of its own (rare).
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd_audit::Record;
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;
use tokio_util::task::TaskTracker;

use super::DnsError;
use super::message::{self, Query};
use super::server::{Begun, DnsOptions, PURGE_EVERY, begin, conclude};
use super::upstream::{Exchanged, Upstreams, forwarding_udp, is_reply_to};
use crate::engine::Engine;

/// Forwarding loops per client socket, at most.
const MAX_LOOPS: usize = 2;
/// Datagrams one loop reads from one socket before the others get a turn.
const BATCH: usize = 32;
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
    let loops = tokio::runtime::Handle::current()
        .metrics()
        .num_workers()
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
    query: Query,
    /// What was sent upstream (the current id in its first two bytes).
    forward: Vec<u8>,
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
}

impl Forwarder {
    fn new(engine: Arc<Engine>, client: Arc<UdpSocket>, tasks: TaskTracker, cap: usize) -> Self {
        let upstreams = engine.resolver().upstreams().clone();
        let ups = (0..upstreams.addrs().len()).map(|_| None).collect();
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
        let mut buf = vec![0u8; MAX_MESSAGE];
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
                    self.check_refused().await;
                    self.expire(Instant::now()).await;
                }
                _ = purge.tick(), if purges => self.engine.dns_memory().purge(Instant::now()),
                () = &mut cancelled, if !stopping => stopping = true,
            }
        }
    }

    /// Read up to a batch of client queries and deal with each.
    async fn read_queries(&mut self, opts: &DnsOptions, buf: &mut [u8]) {
        for _ in 0..BATCH {
            if self.pending.len() >= self.cap {
                break;
            }
            let (n, client) = match self.client.try_recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    break;
                }
            };
            let Some(raw) = buf.get(..n) else { break };
            match begin(&self.engine, opts, raw, client) {
                Begun::Own { rec, reply } => self.outbox.push(Outgoing {
                    rec,
                    reply: reply.map(|r| (r, client)),
                }),
                Begun::Forward { query, rec } => {
                    let pending = Box::new(Pending {
                        client,
                        query,
                        forward: raw.to_vec(),
                        rec,
                        upstream: 0,
                        seq: 0,
                        last: DnsError::NoUpstream,
                    });
                    self.forward(pending, Instant::now()).await;
                }
            }
        }
        self.send_outbox().await;
    }

    /// Read up to a batch of datagrams from upstream `i`'s socket.
    async fn read_answers(&mut self, i: usize, buf: &mut [u8]) {
        for _ in 0..BATCH {
            let Some(Some(sock)) = self.ups.get(i) else {
                break;
            };
            let n = match sock.try_recv(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    // An ICMP "port unreachable" came back: nothing listens
                    // there, so no pending query of this upstream will be
                    // answered. They go to the next upstream now rather
                    // than at their timeout.
                    self.refused(i, e).await;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "DNS upstream receive failed");
                    break;
                }
            };
            if let Some(reply) = buf.get(..n) {
                self.on_answer(reply, i);
            }
        }
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
        if p.upstream != from || !is_reply_to(reply, &p.forward) {
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
    async fn check_refused(&mut self) {
        for i in 0..self.ups.len() {
            let err = match self.ups.get(i) {
                Some(Some(s)) => s.take_error().ok().flatten(),
                _ => None,
            };
            if let Some(e) = err.filter(|e| e.kind() == ErrorKind::ConnectionRefused) {
                self.refused(i, e).await;
            }
        }
    }

    /// Upstream `i` refused: each query pending on it goes to the next one.
    async fn refused(&mut self, i: usize, e: std::io::Error) {
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
                self.next_upstream(p, DnsError::Io { addr, source }, now)
                    .await;
            }
        }
    }

    /// `p`'s upstream failed with `why`: on to the next one.
    async fn next_upstream(&mut self, mut p: Box<Pending>, why: DnsError, now: Instant) {
        p.last = why;
        p.upstream += 1;
        self.forward(p, now).await;
    }

    /// Queries whose upstream did not answer in time go to the next one.
    async fn expire(&mut self, now: Instant) {
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
            self.next_upstream(p, why, now).await;
        }
        self.send_outbox().await;
    }

    /// Send `p` to its upstream (or the first later one that takes it) and
    /// keep it pending; SERVFAIL when no upstream is left.
    async fn forward(&mut self, mut p: Box<Pending>, now: Instant) {
        let timeout = self.upstreams.timeout();
        while let Some(&addr) = self.upstreams.addrs().get(p.upstream) {
            let id = self.free_id();
            message::set_id(&mut p.forward, id);
            match self.send_upstream(p.upstream, addr, &p.forward).await {
                Ok(()) => {
                    self.seq += 1;
                    p.seq = self.seq;
                    self.deadlines.push_back((now + timeout, id, p.seq));
                    self.pending.insert(id, p);
                    return;
                }
                Err(source) => {
                    let e = DnsError::Io { addr, source };
                    tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
                    p.last = e;
                    p.upstream += 1;
                }
            }
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

    /// Send `query` to upstream `i` (at `addr`) on its connected socket.
    async fn send_upstream(
        &mut self,
        i: usize,
        addr: SocketAddr,
        query: &[u8],
    ) -> std::io::Result<()> {
        let mark = self.upstreams.mark();
        let Some(slot) = self.ups.get_mut(i) else {
            return Err(std::io::ErrorKind::NotFound.into());
        };
        let sock = match slot {
            Some(s) => s,
            None => slot.insert(forwarding_udp(canonical(addr), mark)?),
        };
        sock.send(query).await.map(|_| ())
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
            let outcome = upstreams.exchange_truncated(p.upstream, &p.forward).await;
            let (rec, reply) = conclude(&engine, &p.query, p.rec, outcome, false);
            engine.audit(rec).await;
            send_answer(&client, &reply, p.client).await;
        });
    }

    /// Queue every record of the batch, then send its answers.
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
        for (reply, to) in &replies {
            send_answer(&self.client, reply, *to).await;
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
