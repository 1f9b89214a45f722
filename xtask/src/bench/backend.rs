//! The servers behind every proxy, on loopback: an echo server, a bulk sink, a
//! TLS echo server (the ClientHello storm's destination) and the DNS upstream
//! that answers every `bench.test` name with 127.0.0.1.
//!
//! The DNS upstream is W4's reference ("direct") and every resolver's
//! upstream, so it must never be the bottleneck: it runs on its own blocking
//! threads (not on the backends' runtime), each with its own `SO_REUSEPORT`
//! socket with a large receive buffer, so a few milliseconds without CPU on
//! a loaded machine queue queries instead of dropping them.
//!
//! The echo and sink servers skip one leading TLS record when the stream starts
//! with one, so the same bytes (a real ClientHello, then payload) pass through
//! SNI routers and CONNECT proxies alike.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, rdata::A};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Zone every backend name lives in.
pub const ZONE: &str = "bench.test";

/// Addresses of the running backends.
#[derive(Clone, Copy, Debug)]
pub struct Backends {
    /// Echo: everything after an optional leading TLS record comes back.
    pub echo: SocketAddr,
    /// Sink: reads a big-endian u64 length, counts that many bytes (or until
    /// EOF), answers the count as a big-endian u64.
    pub sink: SocketAddr,
    /// TLS echo: handshake, 32 bytes back, close.
    pub tls: SocketAddr,
    /// DNS upstream (UDP): A 127.0.0.1 for names under [`ZONE`], NXDOMAIN otherwise.
    pub dns: SocketAddr,
}

/// Starts every backend on `rt` (already-bound listeners; they live as long as the runtime).
pub fn start(
    rt: &tokio::runtime::Runtime,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<Backends> {
    rt.block_on(async {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let sink = TcpListener::bind("127.0.0.1:0").await?;
        let tls_l = TcpListener::bind("127.0.0.1:0").await?;
        let addrs = Backends {
            echo: echo.local_addr()?,
            sink: sink.local_addr()?,
            tls: tls_l.local_addr()?,
            dns: start_dns()?,
        };
        tokio::spawn(echo_server(echo));
        tokio::spawn(accept_loop(sink, |s| Box::pin(sink_conn(s))));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = tls_l.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    let Ok(mut t) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 32];
                    if t.read_exact(&mut buf).await.is_ok() {
                        let _ = t.write_all(&buf).await;
                        let _ = t.shutdown().await;
                    }
                });
            }
        });
        anyhow::Ok(addrs)
    })
}

/// Serves the echo protocol on `listener` until the task is dropped.
pub async fn echo_server(listener: TcpListener) {
    accept_loop(listener, |s| Box::pin(echo_conn(s))).await;
}

type ConnFuture = std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

async fn accept_loop(listener: TcpListener, handle: fn(TcpStream) -> ConnFuture) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handle(s));
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// Reads and drops one TLS record if the stream starts with one (0x16).
async fn skip_tls_record(s: &mut TcpStream) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    if s.peek(&mut first).await? == 0 || first[0] != 0x16 {
        return Ok(());
    }
    let mut header = [0u8; 5];
    s.read_exact(&mut header).await?;
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(())
}

async fn echo_conn(mut s: TcpStream) -> std::io::Result<()> {
    skip_tls_record(&mut s).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn sink_conn(mut s: TcpStream) -> std::io::Result<()> {
    skip_tls_record(&mut s).await?;
    let mut len = [0u8; 8];
    s.read_exact(&mut len).await?;
    let want = u64::from_be_bytes(len);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    while total < want {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_be_bytes()).await?;
    s.shutdown().await
}

/// Threads (and sockets) of the DNS upstream.
const DNS_THREADS: usize = 2;
/// Receive buffer per upstream socket: ~8,000 queued queries at ~1 KiB of
/// kernel memory each, over a second of W4's open-loop rates.
const DNS_RCVBUF: libc::c_int = 8 << 20;

/// Starts the DNS upstream on a free loopback port; returns its address.
fn start_dns() -> anyhow::Result<SocketAddr> {
    let first = reuseport_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    let addr = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..DNS_THREADS {
        sockets.push(reuseport_udp(addr)?);
    }
    for (i, sock) in sockets.into_iter().enumerate() {
        std::thread::Builder::new()
            .name(format!("bench-dns-{i}"))
            .spawn(move || dns_serve(&sock))?;
    }
    Ok(addr)
}

/// A blocking UDP socket bound to `addr` with `SO_REUSEPORT` (the kernel
/// spreads queries over the sockets by source port) and a large receive buffer.
fn reuseport_udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: `fd` is a fresh socket this function owns from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |level, name, value: libc::c_int| {
        // SAFETY: setsockopt(2) reads one c_int we pass by pointer with its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1) != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // As root the buffer may exceed net.core.rmem_max; otherwise the kernel
    // caps SO_RCVBUF at rmem_max (still far above the default).
    if set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, DNS_RCVBUF) != 0 {
        set(libc::SOL_SOCKET, libc::SO_RCVBUF, DNS_RCVBUF);
    }
    let sock = std::net::UdpSocket::from(fd);
    let std::net::SocketAddr::V4(v4) = addr else {
        anyhow::bail!("the DNS upstream binds IPv4 loopback only");
    };
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind(2) reads the sockaddr_in we pass with its exact size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(sock)
}

/// Answers queries on `sock` forever (a blocking loop on its own thread).
fn dns_serve(sock: &std::net::UdpSocket) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Some(bytes) = dns_answer(&buf[..n]) {
            let _ = sock.send_to(&bytes, peer);
        }
    }
}

/// The reply to one query: A 127.0.0.1 for names under [`ZONE`], NXDOMAIN otherwise.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries = query.queries.clone();
    if let Some(edns) = &query.edns {
        reply.edns = Some(edns.clone());
    }
    match query.queries.first() {
        Some(q) if in_zone(&q.name().to_ascii()) => {
            if q.query_type() == hickory_proto::rr::RecordType::A {
                reply.add_answer(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::LOCALHOST)),
                ));
            }
        }
        _ => reply.metadata.response_code = ResponseCode::NXDomain,
    }
    reply.to_vec().ok()
}

fn in_zone(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == ZONE || name.ends_with(".bench.test")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = Message::query();
        q.metadata.id = id;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        q.to_vec().unwrap()
    }

    #[test]
    fn the_upstream_answers_a_burst_without_losing_a_query() {
        let upstream = start_dns().unwrap();
        // A client socket with a buffer as large as the upstream's, so the
        // replies can wait until the whole burst is sent.
        let client = reuseport_udp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let burst = 2_000u16;
        for id in 0..burst {
            let name = if id % 2 == 0 {
                format!("q{id}.ok.bench.test.")
            } else {
                format!("q{id}.example.")
            };
            client.send_to(&query(id, &name), upstream).unwrap();
        }
        let mut seen = vec![false; usize::from(burst)];
        let mut buf = [0u8; 4096];
        for _ in 0..burst {
            let (n, _) = client.recv_from(&mut buf).expect("every query is answered");
            let reply = Message::from_vec(&buf[..n]).unwrap();
            let id = reply.metadata.id;
            assert!(!seen[usize::from(id)], "reply {id} came twice");
            seen[usize::from(id)] = true;
            if id.is_multiple_of(2) {
                assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
                assert_eq!(reply.answers[0].data, RData::A(A(Ipv4Addr::LOCALHOST)));
            } else {
                assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
                assert!(reply.answers.is_empty());
            }
        }
    }
}
