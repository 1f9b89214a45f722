//! TCP ops: CONNECT-echo (W1), TLS ClientHello storm (W2), bulk (W3), idle
//! tunnels (W6), and how a client reaches its destination through each kind
//! of proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{Op, Outcome};
use crate::bench::allowlist::tunnel_name;

/// How the client reaches a destination.
#[derive(Clone, Copy, Debug)]
pub enum Via {
    /// Straight to the destination: nothing filters, every name "allowed".
    Direct,
    /// HTTP CONNECT proxy at this address (squid, tinyproxy, egressd explicit, relay).
    Connect(SocketAddr),
    /// SNI router at this address (haproxy, nginx, relay): it routes on the
    /// ClientHello the client sends first and closes denied connections.
    Sni(SocketAddr),
}

impl Via {
    fn filters(self) -> bool {
        !matches!(self, Via::Direct)
    }
}

/// Precomputed ClientHello records, one per name the workloads use.
#[derive(Clone)]
pub struct Hellos(Arc<HashMap<String, Vec<u8>>>);

impl Hellos {
    /// ClientHellos for every name [`tunnel_name`] yields.
    pub fn new(pki: &crate::bench::tls::Pki) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        for name in crate::bench::allowlist::tunnel_names() {
            let hello = pki.client_hello(&name)?;
            map.insert(name, hello);
        }
        Ok(Self(Arc::new(map)))
    }
    fn get(&self, name: &str) -> Result<&[u8], String> {
        self.0
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("no ClientHello for {name}"))
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Sends `CONNECT name:port` and reads the answer head; returns the status code.
async fn connect_request(s: &mut TcpStream, name: &str, port: u16) -> Result<u16, String> {
    let req = format!("CONNECT {name}:{port} HTTP/1.1\r\nHost: {name}:{port}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(io("write CONNECT"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.map_err(io("read CONNECT answer"))?;
        if n == 0 {
            if head.is_empty() {
                return Err("proxy closed without answering CONNECT".to_owned());
            }
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() > 64 * 1024 {
            break;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("bad CONNECT answer: {line:?}"))?;
    // A 200 head must not carry tunnel bytes yet: the destination has not spoken.
    if code == 200
        && let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n")
        && end + 4 != head.len()
    {
        return Err("bytes after the 200 head before the destination spoke".to_owned());
    }
    Ok(code)
}

/// Opens a tunnel to `dest` for `name`. `Ok(None)`: denied, as expected.
/// With `hello`, a real ClientHello record is sent first (SNI routers need it;
/// the echo and sink servers skip it).
async fn open(
    via: Via,
    dest: SocketAddr,
    name: &str,
    allowed: bool,
    hello: Option<&[u8]>,
) -> Result<Option<TcpStream>, String> {
    let allowed = allowed || !via.filters();
    let mut s = match via {
        Via::Direct => TcpStream::connect(dest)
            .await
            .map_err(io("connect destination"))?,
        Via::Connect(proxy) | Via::Sni(proxy) => TcpStream::connect(proxy)
            .await
            .map_err(io("connect proxy"))?,
    };
    let _ = s.set_nodelay(true);
    if let Via::Connect(_) = via {
        let code = connect_request(&mut s, name, dest.port()).await?;
        match (allowed, code) {
            (true, 200) => {}
            (false, 403) => return Ok(None),
            (true, c) => {
                return Err(format!(
                    "allowed {name}: CONNECT answered {c}, expected 200"
                ));
            }
            (false, c) => return Err(format!("denied {name}: CONNECT answered {c}, expected 403")),
        }
    }
    if let Some(hello) = hello {
        s.write_all(hello).await.map_err(io("write ClientHello"))?;
    }
    if let (Via::Sni(_), false) = (via, allowed) {
        expect_closed(&mut s, name).await?;
        return Ok(None);
    }
    Ok(Some(s))
}

/// A denied SNI connection must be closed by the proxy without a byte from upstream.
async fn expect_closed(s: &mut TcpStream, name: &str) -> Result<(), String> {
    let mut buf = [0u8; 64];
    match s.read(&mut buf).await {
        Ok(0) | Err(_) => Ok(()),
        Ok(_) => Err(format!("denied {name}: the proxy let bytes through")),
    }
}

fn payload(i: u64) -> [u8; 32] {
    let mut p = [0u8; 32];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (i.wrapping_mul(31).wrapping_add(k as u64) & 0xff) as u8;
    }
    // A binary first byte: never 0x16 (the echo server and every peeking
    // proxy would take it for a TLS record) and never a letter (a proxy that
    // sniffs for HTTP would wait for a request head, e.g. after "E ").
    p[0] = 0;
    p
}

async fn echo_check(s: &mut TcpStream, i: u64) -> Result<(), String> {
    let p = payload(i);
    s.write_all(&p).await.map_err(io("write payload"))?;
    let mut back = [0u8; 32];
    s.read_exact(&mut back).await.map_err(io("read echo"))?;
    if back != p {
        return Err(format!("op {i}: echo differs"));
    }
    Ok(())
}

/// W1: CONNECT host:port, 32 bytes echoed, close.
pub struct ConnectEcho {
    /// How to reach the echo server.
    pub via: Via,
    /// The echo server.
    pub echo: SocketAddr,
    /// ClientHello preamble per name (sent inside the tunnel) when set.
    pub hellos: Option<Hellos>,
}

impl Op for ConnectEcho {
    async fn call(&self, i: u64) -> Result<Outcome, String> {
        let (name, allowed) = tunnel_name(i);
        let hello = match &self.hellos {
            Some(h) => Some(h.get(&name)?),
            None => None,
        };
        let Some(mut s) = open(self.via, self.echo, &name, allowed, hello).await? else {
            return Ok(Outcome::Denied);
        };
        echo_check(&mut s, i).await?;
        Ok(Outcome::Allowed {
            bytes: 32,
            ready: None,
        })
    }
}

/// W2: a full TLS handshake (real ClientHello with SNI), 32 bytes echoed, close.
pub struct TlsEcho {
    /// How to reach the TLS server.
    pub via: Via,
    /// The TLS echo server.
    pub tls: SocketAddr,
    /// The client configuration trusting the test CA.
    pub connector: tokio_rustls::TlsConnector,
}

impl Op for TlsEcho {
    async fn call(&self, i: u64) -> Result<Outcome, String> {
        let (name, allowed) = tunnel_name(i);
        let allowed = allowed || !self.via.filters();
        let s = match self.via {
            Via::Sni(proxy) => {
                let s = TcpStream::connect(proxy)
                    .await
                    .map_err(io("connect proxy"))?;
                let _ = s.set_nodelay(true);
                s
            }
            via => match open(via, self.tls, &name, allowed, None).await? {
                Some(s) => s,
                None => return Ok(Outcome::Denied),
            },
        };
        let server_name = ServerName::try_from(name.clone()).map_err(|e| e.to_string())?;
        let handshake = self.connector.connect(server_name, s).await;
        let mut t = match (handshake, allowed) {
            (Ok(t), true) => t,
            (Err(_), false) => return Ok(Outcome::Denied),
            (Ok(_), false) => return Err(format!("denied {name}: TLS handshake went through")),
            (Err(e), true) => return Err(format!("allowed {name}: TLS handshake failed: {e}")),
        };
        let p = payload(i);
        t.write_all(&p).await.map_err(io("write TLS payload"))?;
        let mut back = [0u8; 32];
        t.read_exact(&mut back).await.map_err(io("read TLS echo"))?;
        if back != p {
            return Err(format!("op {i}: TLS echo differs"));
        }
        Ok(Outcome::Allowed {
            bytes: 32,
            ready: None,
        })
    }
}

/// W3: one stream of `bytes` upstream through an allowed tunnel; the sink's
/// byte count must match.
pub struct Bulk {
    /// How to reach the sink.
    pub via: Via,
    /// The sink server.
    pub sink: SocketAddr,
    /// Bytes per stream.
    pub bytes: u64,
    /// ClientHello preamble (always sent: SNI routers need it, CONNECT proxies may peek).
    pub hellos: Hellos,
}

impl Op for Bulk {
    async fn call(&self, i: u64) -> Result<Outcome, String> {
        // Only allowed names: a bulk stream measures the data path.
        let (name, _) = tunnel_name(i % 9);
        let hello = self.hellos.get(&name)?;
        let Some(mut s) = open(self.via, self.sink, &name, true, Some(hello)).await? else {
            return Err(format!("allowed {name} was denied"));
        };
        // Length first: CONNECT proxies close both ways at the first EOF, so
        // the sink must know when the stream is complete without a half-close.
        s.write_all(&self.bytes.to_be_bytes())
            .await
            .map_err(io("write bulk length"))?;
        let chunk = vec![0x5au8; 256 * 1024];
        let mut left = self.bytes;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            s.write_all(&chunk[..n]).await.map_err(io("write bulk"))?;
            left -= n as u64;
        }
        let mut count = [0u8; 8];
        s.read_exact(&mut count)
            .await
            .map_err(io("read sink count"))?;
        let got = u64::from_be_bytes(count);
        if got != self.bytes {
            return Err(format!("sink got {got} bytes, sent {}", self.bytes));
        }
        Ok(Outcome::Allowed {
            bytes: self.bytes,
            ready: None,
        })
    }
}

/// W6: opens one allowed tunnel, checks it with an echo round trip, returns it open.
pub async fn open_idle(
    via: Via,
    echo: SocketAddr,
    i: u64,
    hellos: &Hellos,
) -> Result<TcpStream, String> {
    let (name, _) = tunnel_name(i % 9);
    let hello = hellos.get(&name)?;
    let Some(mut s) = open(via, echo, &name, true, Some(hello)).await? else {
        return Err(format!("allowed {name} was denied"));
    };
    echo_check(&mut s, i).await?;
    Ok(s)
}

/// W7: time until the client may send to the destination (direct or
/// redirected by the kernel: connect() returned; explicit: the proxy answered
/// 200), allowed names only; then 32 bytes must come back from the echo
/// server (that op's end is the "first echo" latency).
pub struct TunnelSetup {
    /// How to reach the echo server.
    pub via: Via,
    /// The echo server.
    pub echo: SocketAddr,
}

impl Op for TunnelSetup {
    async fn call(&self, i: u64) -> Result<Outcome, String> {
        let (name, _) = tunnel_name(i % 9);
        let Some(mut s) = open(self.via, self.echo, &name, true, None).await? else {
            return Err(format!("allowed {name} was denied"));
        };
        let ready = Instant::now();
        echo_check(&mut s, i).await?;
        Ok(Outcome::Allowed {
            bytes: 32,
            ready: Some(ready),
        })
    }
}
