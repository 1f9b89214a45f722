//! The proxy's client side of DNS: one exchange with the configured upstream
//! resolvers. UDP first, TCP when the UDP answer is truncated, the next
//! upstream when one fails; every wait bounded by the timeout. Sockets carry
//! the bypass mark when the kernel hooks are active, so they are not
//! redirected back into the proxy. Also where the system's upstreams are read.
//!
//! UDP sockets are connected to one upstream and kept in a small pool per
//! upstream after a clean exchange (creating, registering and closing a
//! socket per query was most of a query's cost). Each pooled socket has its
//! own kernel-chosen random source port and serves one query at a time; the
//! caller picks a random id, and only a response with that id and the
//! query's question is accepted, so a late or duplicate answer left on a
//! reused socket is skipped. A socket whose exchange failed or timed out is
//! closed, never reused. (This path serves the proxy's own resolver and
//! TCP clients; the UDP server forwards through `udp`'s shared sockets.)

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsError;
use super::message::HEADER_LEN;

/// Default wait for one upstream's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message (TCP length prefix, UDP datagram).
const MAX_MESSAGE: usize = 65535;
/// Receive buffer asked for the shared upstream sockets.
const UPSTREAM_RCVBUF: usize = 4 << 20;
/// Idle connected UDP sockets kept per upstream.
const POOL_SIZE: usize = 32;

/// The upstream resolvers and how to reach them.
#[derive(Debug, Clone)]
pub struct Upstreams {
    addrs: Arc<[SocketAddr]>,
    /// One pool per address, same order.
    pools: Arc<[SocketPool]>,
    timeout: Duration,
    mark: Option<u32>,
}

/// Idle UDP sockets connected to one upstream, in slots that are taken and
/// filled with atomic swaps (no lock: queries on every worker share it).
/// A socket is in a slot or held by the one exchange that took it.
#[derive(Debug)]
struct SocketPool {
    slots: Box<[ArcSwapOption<UdpSocket>]>,
}

impl Default for SocketPool {
    fn default() -> Self {
        SocketPool {
            slots: (0..POOL_SIZE).map(|_| ArcSwapOption::empty()).collect(),
        }
    }
}

impl SocketPool {
    fn take(&self) -> Option<Arc<UdpSocket>> {
        self.slots
            .iter()
            .filter(|slot| slot.load().is_some())
            .find_map(|slot| slot.swap(None))
    }

    /// Keep `sock` in an empty slot; when there is none, it is closed.
    fn give_back(&self, sock: Arc<UdpSocket>) {
        let empty: Option<Arc<UdpSocket>> = None;
        for slot in self.slots.iter() {
            if slot.load().is_none()
                && slot
                    .compare_and_swap(&empty, Some(Arc::clone(&sock)))
                    .is_none()
            {
                return;
            }
        }
    }

    /// Idle sockets held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.load().is_some()).count()
    }
}

fn pools(n: usize) -> Arc<[SocketPool]> {
    (0..n).map(|_| SocketPool::default()).collect()
}

/// An upstream's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    /// The raw answer (its id is the query's).
    pub reply: Vec<u8>,
    /// Which upstream gave it.
    pub from: SocketAddr,
    /// It came over TCP (after a truncated UDP answer, or asked so).
    pub tcp: bool,
}

impl Upstreams {
    /// `addrs` tried in order, each waited on for at most `timeout`.
    pub fn new(addrs: Vec<SocketAddr>, timeout: Duration) -> Self {
        Upstreams {
            pools: pools(addrs.len()),
            addrs: addrs.into(),
            timeout,
            mark: None,
        }
    }

    /// Mark the upstream sockets with `SO_MARK` (needs CAP_NET_ADMIN).
    pub fn with_socket_mark(mut self, mark: Option<u32>) -> Self {
        self.mark = mark;
        // Sockets made before carry the old mark.
        self.pools = pools(self.addrs.len());
        self
    }

    /// The upstream addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The per-upstream timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `SO_MARK` upstream sockets carry, if any.
    pub(super) fn mark(&self) -> Option<u32> {
        self.mark
    }

    /// After upstream `first` answered `query` truncated over UDP: its
    /// answer over TCP, else the later upstreams as [`exchange`](Self::exchange)
    /// asks them.
    pub(super) async fn exchange_truncated(
        &self,
        first: usize,
        query: &[u8],
    ) -> Result<Exchanged, DnsError> {
        let mut last = DnsError::NoUpstream;
        if let Some(&addr) = self.addrs.get(first) {
            match self.tcp(addr, query).await {
                Ok(reply) => {
                    return Ok(Exchanged {
                        reply,
                        from: addr,
                        tcp: true,
                    });
                }
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
                    last = e;
                }
            }
        }
        let rest = self.addrs.iter().zip(self.pools.iter()).skip(first + 1);
        for (&addr, pool) in rest {
            match self.exchange_one(addr, pool, query, false).await {
                Ok(x) => return Ok(x),
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Send `query` (already carrying the id to expect back) and return the
    /// first valid answer. `tcp_only` skips UDP (the client asked over TCP).
    pub async fn exchange(&self, query: &[u8], tcp_only: bool) -> Result<Exchanged, DnsError> {
        let mut last = DnsError::NoUpstream;
        for (&addr, pool) in self.addrs.iter().zip(self.pools.iter()) {
            match self.exchange_one(addr, pool, query, tcp_only).await {
                Ok(x) => return Ok(x),
                Err(e) => {
                    tracing::debug!(upstream = %addr, error = %e, "DNS upstream failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn exchange_one(
        &self,
        addr: SocketAddr,
        pool: &SocketPool,
        query: &[u8],
        tcp_only: bool,
    ) -> Result<Exchanged, DnsError> {
        if !tcp_only {
            let reply = self.udp(addr, pool, query).await?;
            // TC: retry the same upstream over TCP.
            if reply.get(2).is_none_or(|f| f & 0x02 == 0) {
                return Ok(Exchanged {
                    reply,
                    from: addr,
                    tcp: false,
                });
            }
        }
        let reply = self.tcp(addr, query).await?;
        Ok(Exchanged {
            reply,
            from: addr,
            tcp: true,
        })
    }

    async fn udp(
        &self,
        addr: SocketAddr,
        pool: &SocketPool,
        query: &[u8],
    ) -> Result<Vec<u8>, DnsError> {
        let io = |source| DnsError::Io { addr, source };
        // A pooled socket that cannot send (an ICMP error from its upstream
        // left pending, say) is replaced by a fresh one.
        let pooled = match pool.take() {
            Some(sock) => sock.send(query).await.is_ok().then_some(sock),
            None => None,
        };
        let sock = match pooled {
            Some(sock) => sock,
            None => {
                let sock = Arc::new(udp_socket(addr, self.mark).map_err(io)?);
                sock.send(query).await.map_err(io)?;
                sock
            }
        };
        let wait = async {
            let mut buf = Vec::with_capacity(MAX_MESSAGE);
            loop {
                buf.clear();
                // Into spare capacity: the 64 KiB are not zero-filled.
                sock.recv_buf(&mut buf).await.map_err(io)?;
                // A connected socket only hears `addr`; still, anything that
                // is not a response to this query is ignored (spoofing,
                // strays, a late answer to an earlier query on this socket).
                if is_reply_to(&buf, query) {
                    buf.shrink_to_fit();
                    return Ok(buf);
                }
            }
        };
        let reply = tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| DnsError::Timeout(addr, self.timeout))??;
        pool.give_back(sock);
        Ok(reply)
    }

    async fn tcp(&self, addr: SocketAddr, query: &[u8]) -> Result<Vec<u8>, DnsError> {
        let io = |source| DnsError::Io { addr, source };
        let exchange = async {
            let mut stream = tcp_connect(addr, self.mark).await.map_err(io)?;
            let len = u16::try_from(query.len()).map_err(|_| DnsError::BadReply(addr))?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(query);
            stream.write_all(&framed).await.map_err(io)?;
            let n = usize::from(stream.read_u16().await.map_err(io)?);
            let mut reply = vec![0u8; n];
            stream.read_exact(&mut reply).await.map_err(io)?;
            if !is_reply_to(&reply, query) {
                return Err(DnsError::BadReply(addr));
            }
            Ok(reply)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DnsError::Timeout(addr, self.timeout))?
    }
}

/// A response (QR set) with the query's id and, when the query has one,
/// its question (name compared without regard to ASCII case, type and class
/// exactly). A truncated (TC) answer may have lost its question: the id is
/// enough there, as it only leads to a TCP retry whose answer is checked.
pub(super) fn is_reply_to(reply: &[u8], query: &[u8]) -> bool {
    let header = reply.len() >= HEADER_LEN
        && query.len() >= 2
        && reply[..2] == query[..2]
        && reply[2] & 0x80 != 0;
    header
        && match (question(query), question(reply)) {
            (None, _) => true,
            (Some(_), None) => reply[2] & 0x02 != 0,
            (Some(asked), Some(answered)) => super::wire::same_question(asked, answered),
        }
}

/// The raw question section of a message with exactly one question whose
/// name is uncompressed: name labels, type and class.
fn question(msg: &[u8]) -> Option<&[u8]> {
    if msg.get(4..6)? != [0, 1] {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        match len {
            0 => break,
            1..=63 => at += len,
            _ => return None,
        }
    }
    msg.get(HEADER_LEN..at + 4)
}

fn udp_socket(peer: SocketAddr, mark: Option<u32>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(peer),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    // Connecting an unbound UDP socket binds it to a random ephemeral port;
    // it does not wait.
    s.connect(&peer.into())?;
    UdpSocket::from_std(s.into())
}

/// A UDP socket connected to `peer` with a large receive buffer, for the
/// UDP server's forwarding loops (one per loop and upstream).
pub(super) fn forwarding_udp(peer: SocketAddr, mark: Option<u32>) -> std::io::Result<UdpSocket> {
    let s = udp_socket(peer, mark)?;
    // Answers to a whole batch of queries can arrive at once; the kernel
    // caps this at net.core.rmem_max.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(UPSTREAM_RCVBUF);
    Ok(s)
}

async fn tcp_connect(peer: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(s.into());
    socket.connect(peer).await
}

/// The system's upstream resolvers: `/run/systemd/resolve/resolv.conf`
/// (systemd-resolved's real upstreams), else `/etc/resolv.conf`. Loopback
/// resolvers (127.0.0.53 and friends) are skipped, with a log line: their
/// own upstream queries would be redirected back into the proxy and loop.
pub fn system_upstreams() -> Vec<SocketAddr> {
    for path in ["/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"] {
        let Ok(text) = std::fs::read_to_string(Path::new(path)) else {
            continue;
        };
        let (found, skipped) = parse_resolv_conf(&text);
        for ip in &skipped {
            tracing::info!(
                resolver = %ip,
                file = path,
                "skipping a loopback DNS resolver as upstream: its own queries would loop through egressd; pass --dns-upstream to choose one"
            );
        }
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// The `nameserver` lines of a resolv.conf: (usable upstreams on port 53,
/// skipped loopback addresses).
pub fn parse_resolv_conf(text: &str) -> (Vec<SocketAddr>, Vec<IpAddr>) {
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A link-local IPv6 resolver may carry a %scope: not usable as a
        // plain SocketAddr, skipped like any unparsable entry.
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if ip.is_loopback() || ip.is_unspecified() {
            skipped.push(ip);
        } else {
            let addr = SocketAddr::new(ip, 53);
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
    }
    (found, skipped)
}

#[cfg(test)]
mod tests;
