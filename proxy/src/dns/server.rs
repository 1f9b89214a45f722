//! The DNS server jobs' queries reach (redirected by the kernel hooks, or
//! configured as their resolver): policy on the query name, exactly one
//! audit record per query written before the answer is sent, allowed
//! queries asked upstream (in a query egressd builds from the decided
//! question: none of the client's other bytes leave) and their answers
//! remembered, `ech` removed.
//! UDP and TCP (length-prefixed, several queries per connection). In-flight
//! UDP queries and open TCP connections are bounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd_audit::{HostSource, Kind, Record};
use egressd_policy::{Decision, Reason, Verdict};
use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::DnsError;
use super::memory::DnsMemory;
use super::message::{self, Fact, Query};
use super::upstream::Exchanged;
use super::wire;
use crate::decide::enforce_outcome;
use crate::engine::Engine;

/// How stale bindings are swept out of the DNS memory.
pub(super) const PURGE_EVERY: Duration = Duration::from_secs(30);

/// What a query for a denied name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyAnswer {
    /// REFUSED (the default): the client knows it was a policy answer.
    #[default]
    Refused,
    /// NXDOMAIN: for clients that retry other resolvers on REFUSED.
    NxDomain,
}

/// Options of the DNS server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsOptions {
    /// What a denied query gets.
    pub deny_answer: DenyAnswer,
    /// UDP queries being answered at once; further datagrams wait in the
    /// socket buffer (the kernel drops beyond it).
    pub max_inflight: usize,
    /// TCP connections served at once; more are closed at accept.
    pub max_tcp_connections: usize,
    /// A TCP connection silent for this long (or this slow to send one
    /// message) is closed.
    pub tcp_idle: Duration,
}

impl Default for DnsOptions {
    fn default() -> Self {
        DnsOptions {
            deny_answer: DenyAnswer::Refused,
            max_inflight: 1024,
            max_tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// Serve DNS over UDP on `sock` until the engine stops accepting.
pub async fn serve_udp(engine: Arc<Engine>, sock: UdpSocket, tasks: TaskTracker) {
    serve_udp_with(engine, sock, tasks, DnsOptions::default()).await;
}

/// Serve DNS over TCP on `listener` until the engine stops accepting.
pub async fn serve_tcp(engine: Arc<Engine>, listener: TcpListener, tasks: TaskTracker) {
    serve_tcp_with(engine, listener, tasks, DnsOptions::default()).await;
}

/// [`serve_udp`] with options. Also sweeps the DNS memory periodically.
/// Returns once the engine stops accepting and every query already read
/// is answered.
pub async fn serve_udp_with(
    engine: Arc<Engine>,
    sock: UdpSocket,
    tasks: TaskTracker,
    opts: DnsOptions,
) {
    super::udp::serve(engine, sock, tasks, opts).await;
}

/// [`serve_tcp`] with options.
pub async fn serve_tcp_with(
    engine: Arc<Engine>,
    listener: TcpListener,
    tasks: TaskTracker,
    opts: DnsOptions,
) {
    let conns = Arc::new(Semaphore::new(opts.max_tcp_connections.max(1)));
    let stop = engine.stop_accepting().clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&conns).try_acquire_owned() else {
            tracing::debug!(%client, "DNS TCP connection limit reached: closing");
            continue;
        };
        let engine = Arc::clone(&engine);
        tasks.spawn(async move {
            tcp_connection(&engine, &opts, stream, client).await;
            drop(permit);
        });
    }
}

/// Queries one after another on one TCP connection.
async fn tcp_connection(
    engine: &Engine,
    opts: &DnsOptions,
    mut stream: TcpStream,
    client: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let stop = engine.stop_accepting();
    loop {
        let mut prefix = [0u8; 2];
        let first = tokio::select! {
            r = tokio::time::timeout(opts.tcp_idle, stream.read(&mut prefix)) => r,
            () = stop.cancelled() => return,
        };
        // Silence or a close between messages ends the connection quietly.
        let got = match first {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if got < 2
            && !matches!(
                tokio::time::timeout(opts.tcp_idle, stream.read_exact(&mut prefix[1..])).await,
                Ok(Ok(_))
            )
        {
            return cut_short(engine, client, 1, None).await;
        }
        let len = u16::from_be_bytes(prefix);
        let mut raw = vec![0u8; usize::from(len)];
        let mut read = 0;
        while read < raw.len() {
            match tokio::time::timeout(opts.tcp_idle, stream.read(&mut raw[read..])).await {
                Ok(Ok(n)) if n > 0 => read += n,
                _ => return cut_short(engine, client, read + 2, Some(len)).await,
            }
        }
        let Some(reply) = answer(engine, opts, &raw, client, true).await else {
            return;
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// A connection to the DNS port that ended inside a message (bytes that are
/// not DNS over TCP, or a message cut short): no answer, but a record, as
/// for every other decision.
async fn cut_short(engine: &Engine, client: SocketAddr, got: usize, announced: Option<u16>) {
    let decision = Decision::engine_deny(Reason::MalformedRequest);
    engine.metrics().dns_query(&decision);
    let mut rec = engine.record(Kind::Dns, &decision);
    rec.src = Some(client);
    rec.set_destination(None, DNS_PORT);
    rec.detail = Some(match announced {
        Some(len) => format!(
            "DNS over TCP: the connection ended after {got} bytes of a message announced as {len} bytes (not DNS, or cut short); closed without an answer"
        ),
        None => {
            "DNS over TCP: the connection ended inside a length prefix; closed without an answer"
                .to_owned()
        }
    });
    engine.audit(rec).await;
}

/// Answer one query: decide, audit (exactly one record, before the answer
/// exists for the client), ask upstream if allowed (the query egressd
/// builds from the decided question, [`Query::upstream`], never the
/// client's bytes). `None`: send nothing.
pub async fn answer(
    engine: &Engine,
    opts: &DnsOptions,
    raw: &[u8],
    client: SocketAddr,
    tcp: bool,
) -> Option<Vec<u8>> {
    match begin(engine, opts, raw, client) {
        Begun::Own { rec, reply } => {
            engine.audit(rec).await;
            reply
        }
        Begun::Forward { mut query, rec } => {
            query.set_upstream_id(rand::random());
            let outcome = engine
                .resolver()
                .upstreams()
                .exchange(query.upstream(), tcp)
                .await;
            let (rec, reply) = conclude(engine, &query, rec, outcome, tcp);
            engine.audit(rec).await;
            Some(reply)
        }
    }
}

/// The port of a DNS question, on the records of queries no upstream
/// answered (a refused name, a malformed query): the job asked the DNS
/// service, whichever address the query was redirected to.
const DNS_PORT: u16 = 53;

/// What a query needs after the policy has decided on it.
pub(super) enum Begun {
    /// The proxy answers it itself (malformed, denied): write `rec`, then
    /// send `reply` (nothing when `None`).
    Own {
        /// The query's audit record.
        rec: Record,
        /// The answer, if any.
        reply: Option<Vec<u8>>,
    },
    /// Allowed: ask upstream ([`Query::upstream`]), then [`conclude`].
    Forward {
        /// The client's query.
        query: Query,
        /// Its audit record, finished by [`conclude`].
        rec: Record,
    },
}

/// Read and decide one query, build its audit record; no I/O.
pub(super) fn begin(engine: &Engine, opts: &DnsOptions, raw: &[u8], client: SocketAddr) -> Begun {
    let query = match message::parse_query(raw) {
        Ok(q) => q,
        Err(rejected) => {
            let decision = Decision::engine_deny(Reason::MalformedRequest);
            engine.metrics().dns_query(&decision);
            let mut rec = engine.record(Kind::Dns, &decision);
            rec.src = Some(client);
            rec.set_destination(None, DNS_PORT);
            rec.detail = Some(rejected.what.to_owned());
            return Begun::Own {
                rec,
                reply: rejected.reply,
            };
        }
    };
    let (decision, via) = decide(engine, &query.name, Instant::now());
    engine.metrics().dns_query(&decision);
    let mut rec = engine.record(Kind::Dns, &decision);
    rec.src = Some(client);
    rec.set_destination(None, DNS_PORT);
    rec.host = Some(if query.name.is_empty() {
        ".".to_owned()
    } else {
        query.name.clone()
    });
    rec.host_source = HostSource::DnsQuery;
    if let Some(origin) = &via {
        rec.detail = Some(format!("CNAME target of the allowed name {origin}"));
    }
    if decision.is_allow() {
        return Begun::Forward { query, rec };
    }
    let rcode = match opts.deny_answer {
        DenyAnswer::Refused => ResponseCode::Refused,
        DenyAnswer::NxDomain => ResponseCode::NXDomain,
    };
    Begun::Own {
        reply: Some(message::own_answer(&query, rcode)),
        rec,
    }
}

/// The client's answer to an allowed query from the upstream exchange's
/// outcome (SERVFAIL when it failed), and its finished audit record.
pub(super) fn conclude(
    engine: &Engine,
    query: &Query,
    mut rec: Record,
    outcome: Result<Exchanged, DnsError>,
    tcp: bool,
) -> (Record, Vec<u8>) {
    let reply = outcome.and_then(|x| {
        let dst = x.from;
        relay_answer(x, query, engine.dns_memory(), Instant::now(), tcp).map(|r| (r, dst))
    });
    let reply = match reply {
        Ok((reply, dst)) => {
            rec.set_destination(Some(dst), DNS_PORT);
            reply
        }
        Err(e) => {
            rec.reason = Reason::UpstreamFailed;
            rec.detail = Some(format!("{e}; answered SERVFAIL"));
            message::own_answer(query, ResponseCode::ServFail)
        }
    };
    (rec, reply)
}

/// The policy's decision for a query name; a name that policy alone would
/// refuse is allowed when it is a fresh CNAME target of an allowed name
/// (returned as the second value). A deny rule on the target still wins.
fn decide(engine: &Engine, name: &str, now: Instant) -> (Decision, Option<Arc<str>>) {
    let d = engine.decide_name(name);
    if enforce_outcome(&d) == Verdict::Deny
        && d.reason == Reason::DnsRefused
        && let Some(origin) = engine.dns_memory().alias_origin(name, now)
    {
        let od = engine.decide_name(&origin);
        if enforce_outcome(&od) == Verdict::Allow {
            return (od, Some(origin));
        }
    }
    (d, None)
}

/// Check an upstream answer against the query, remember what it teaches,
/// remove `ech`, give it the client's id and fit it to the client's
/// transport. An answer of the everyday shape ([`wire::read_answer`]) that
/// fits is read from its bytes and relayed as it came; anything else goes
/// through a hickory message.
pub fn relay_answer(
    x: Exchanged,
    query: &Query,
    memory: &DnsMemory,
    now: Instant,
    tcp: bool,
) -> Result<Vec<u8>, DnsError> {
    if (tcp || x.reply.len() <= query.udp_payload)
        && let Some(answer) = wire::read_answer(&x.reply, query.question())
    {
        if answer.rcode == 0 {
            remember(memory, &query.name, &answer.facts, now);
        }
        let mut reply = x.reply;
        message::set_id(&mut reply, query.id);
        return Ok(reply);
    }
    relay_parsed(x, query, memory, now, tcp)
}

/// [`relay_answer`] through a hickory message.
pub fn relay_parsed(
    x: Exchanged,
    query: &Query,
    memory: &DnsMemory,
    now: Instant,
    tcp: bool,
) -> Result<Vec<u8>, DnsError> {
    let mut msg = Message::from_vec(&x.reply).map_err(|_| DnsError::BadReply(x.from))?;
    if !message::answers_question(query, &msg) {
        return Err(DnsError::BadReply(x.from));
    }
    if msg.response_code() == ResponseCode::NoError {
        remember(memory, &query.name, &message::facts(msg.answers()), now);
    }
    msg.set_id(query.id);
    let mut reply = if message::strip_ech(&mut msg) {
        msg.to_vec().map_err(|_| DnsError::BadReply(x.from))?
    } else {
        x.reply
    };
    message::set_id(&mut reply, query.id);
    Ok(if tcp {
        reply
    } else {
        message::fit_udp(reply, &msg, query.udp_payload)
    })
}

/// Remember the answer's addresses under the query name and each name of
/// its CNAME chain, and the chain's names as aliases of the query name.
fn remember(memory: &DnsMemory, qname: &str, facts: &[Fact], now: Instant) {
    let learned = message::learn(qname, facts);
    let ttl = Duration::from_secs(u64::from(learned.ttl));
    memory.remember(qname, &learned.addresses, ttl, now);
    for (alias, alias_ttl) in &learned.aliases {
        memory.remember(alias, &learned.addresses, ttl, now);
        memory.remember_alias(
            alias,
            qname,
            Duration::from_secs(u64::from(*alias_ttl)),
            now,
        );
    }
}
