//! The proxy's client side of DNS: one exchange with the configured upstream
//! resolvers. UDP first from a fresh socket (random source port, random id
//! chosen by the caller), TCP when the UDP answer is truncated, the next
//! upstream when one fails; every wait bounded by the timeout. Sockets carry
//! the bypass mark when the kernel hooks are active, so they are not
//! redirected back into the proxy. Also where the system's upstreams are read.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::DnsError;
use super::message::HEADER_LEN;

/// Default wait for one upstream's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest DNS message (TCP length prefix, UDP datagram).
const MAX_MESSAGE: usize = 65535;

/// The upstream resolvers and how to reach them.
#[derive(Debug, Clone)]
pub struct Upstreams {
    addrs: Arc<[SocketAddr]>,
    timeout: Duration,
    mark: Option<u32>,
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
            addrs: addrs.into(),
            timeout,
            mark: None,
        }
    }

    /// Mark the upstream sockets with `SO_MARK` (needs CAP_NET_ADMIN).
    pub fn with_socket_mark(mut self, mark: Option<u32>) -> Self {
        self.mark = mark;
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

    /// Send `query` (already carrying the id to expect back) and return the
    /// first valid answer. `tcp_only` skips UDP (the client asked over TCP).
    pub async fn exchange(&self, query: &[u8], tcp_only: bool) -> Result<Exchanged, DnsError> {
        let mut last = DnsError::NoUpstream;
        for &addr in self.addrs.iter() {
            match self.exchange_one(addr, query, tcp_only).await {
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
        query: &[u8],
        tcp_only: bool,
    ) -> Result<Exchanged, DnsError> {
        if !tcp_only {
            let reply = self.udp(addr, query).await?;
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

    async fn udp(&self, addr: SocketAddr, query: &[u8]) -> Result<Vec<u8>, DnsError> {
        let io = |source| DnsError::Io { addr, source };
        let sock = udp_socket(addr, self.mark).map_err(io)?;
        sock.connect(addr).await.map_err(io)?;
        sock.send(query).await.map_err(io)?;
        let wait = async {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                let n = sock.recv(&mut buf).await.map_err(io)?;
                // A connected socket only hears `addr`; still, anything that
                // is not a response to this id is ignored (spoofing, strays).
                if is_reply_to(&buf[..n], query) {
                    buf.truncate(n);
                    return Ok(buf);
                }
            }
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .map_err(|_| DnsError::Timeout(addr, self.timeout))?
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

/// A response (QR set) with the query's id.
fn is_reply_to(reply: &[u8], query: &[u8]) -> bool {
    reply.len() >= HEADER_LEN
        && query.len() >= 2
        && reply[..2] == query[..2]
        && reply[2] & 0x80 != 0
}

fn udp_socket(peer: SocketAddr, mark: Option<u32>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    s.set_nonblocking(true)?;
    let any: SocketAddr = match peer {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    s.bind(&any.into())?;
    UdpSocket::from_std(s.into())
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
