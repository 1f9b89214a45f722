//! The reference relay: the floor every proxy is compared with. It does the
//! least a filtering proxy must do (read the CONNECT line or peek the
//! ClientHello SNI, check the name against the same allowlist with two hash
//! lookups, connect, copy with 256 KiB buffers) and nothing else: no logging,
//! no DNS (every `bench.test` name is 127.0.0.1). It runs as its own process
//! (`cargo xtask bench --serve-relay MODE ...`) so its CPU is measurable.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::allowlist::Allowlist;

/// What the relay expects first on a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// An HTTP CONNECT request.
    Connect,
    /// A TLS ClientHello, routed by SNI to the fixed upstream.
    Sni,
}

struct Names {
    exact: HashSet<String>,
    suffixes: HashSet<String>,
}

impl Names {
    fn allows(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.exact.contains(&name) {
            return true;
        }
        let mut rest = name.as_str();
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if self.suffixes.contains(rest) {
                return true;
            }
        }
        false
    }
}

const BUF: usize = 256 * 1024;

/// Serves until killed: 2 worker threads, like every peer.
pub fn serve(
    mode: Mode,
    listen: SocketAddr,
    upstream: Option<SocketAddr>,
    rules: usize,
) -> anyhow::Result<()> {
    let list = if rules <= 10 {
        Allowlist::base()
    } else {
        Allowlist::large(rules)
    };
    let names = Arc::new(Names {
        exact: list.exact.into_iter().collect(),
        suffixes: list.suffixes.into_iter().collect(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        loop {
            let Ok((s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let names = names.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let _ = match mode {
                    Mode::Connect => connect_conn(s, &names).await,
                    Mode::Sni => sni_conn(s, &names, upstream).await,
                };
            });
        }
    })
}

async fn connect_conn(mut s: TcpStream, names: &Names) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default())
        .into_owned();
    let mut parts = line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        return s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    };
    let Some((host, port)) = target.rsplit_once(':') else {
        return s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    };
    let Ok(port) = port.parse::<u16>() else {
        return s
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    };
    if !names.allows(host) {
        return s
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await;
    }
    let mut up = TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = up.set_nodelay(true);
    s.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await?;
    tokio::io::copy_bidirectional_with_sizes(&mut s, &mut up, BUF, BUF)
        .await
        .map(|_| ())
}

async fn sni_conn(
    mut s: TcpStream,
    names: &Names,
    upstream: Option<SocketAddr>,
) -> std::io::Result<()> {
    let Some(upstream) = upstream else {
        return Ok(());
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0;
    let sni = loop {
        let n = s.peek(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut acceptor = rustls::server::Acceptor::default();
        let mut rd = &buf[..n];
        let _ = acceptor.read_tls(&mut rd);
        match acceptor.accept() {
            Ok(Some(accepted)) => break accepted.client_hello().server_name().map(str::to_owned),
            Ok(None) if n < buf.len() => {
                if n == seen {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                seen = n;
            }
            _ => return Ok(()),
        }
    };
    match sni {
        Some(name) if names.allows(&name) => {}
        _ => return Ok(()),
    }
    let mut up = TcpStream::connect(upstream).await?;
    let _ = up.set_nodelay(true);
    tokio::io::copy_bidirectional_with_sizes(&mut s, &mut up, BUF, BUF)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_exact_and_strict_wildcards() {
        let l = Allowlist::base();
        let n = Names {
            exact: l.exact.into_iter().collect(),
            suffixes: l.suffixes.into_iter().collect(),
        };
        assert!(n.allows("ok3.bench.test"));
        assert!(n.allows("OK3.bench.test."));
        assert!(n.allows("q1.ok.bench.test"));
        assert!(!n.allows("ok.bench.test"));
        assert!(!n.allows("no1.bench.test"));
    }
}
