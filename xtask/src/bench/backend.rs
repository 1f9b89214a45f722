//! The servers behind every proxy, on loopback: an echo server, a bulk sink, a
//! TLS echo server (the ClientHello storm's destination) and the DNS upstream
//! that answers every `bench.test` name with 127.0.0.1.
//!
//! The echo and sink servers skip one leading TLS record when the stream starts
//! with one, so the same bytes (a real ClientHello, then payload) pass through
//! SNI routers and CONNECT proxies alike.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, rdata::A};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

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
        let dns = UdpSocket::bind("127.0.0.1:0").await?;
        let addrs = Backends {
            echo: echo.local_addr()?,
            sink: sink.local_addr()?,
            tls: tls_l.local_addr()?,
            dns: dns.local_addr()?,
        };
        tokio::spawn(accept_loop(echo, |s| Box::pin(echo_conn(s))));
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
        let dns = Arc::new(dns);
        // Two receivers on one socket: the upstream must never be the bottleneck.
        for _ in 0..2 {
            tokio::spawn(dns_loop(dns.clone()));
        }
        anyhow::Ok(addrs)
    })
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

async fn dns_loop(sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if query.metadata.message_type != MessageType::Query {
            continue;
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
        if let Ok(bytes) = reply.to_vec() {
            let _ = sock.send_to(&bytes, peer).await;
        }
    }
}

fn in_zone(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == ZONE || name.ends_with(".bench.test")
}
