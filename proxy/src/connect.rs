//! The explicit HTTP CONNECT proxy (`--explicit ADDR`): how a user without
//! eBPF (or root) filters with egressd (`HTTPS_PROXY`). The request line is
//! this path's original destination; from there it shares the decision path,
//! the peek, the relay and the records with the transparent listener.
//!
//! `CONNECT host:port`: a name is first asked the DNS question (a name the
//! DNS server would refuse is not resolved through the proxy either), then
//! resolved with the proxy's resolver and decided per address; allowed ->
//! `200 Connection Established` and a tunnel, denied -> `403 Forbidden` with a
//! one-line body naming the reason code and rule id. Inside an allowed tunnel
//! the TLS SNI (or HTTP Host) must be the CONNECT host.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use egressd_audit::{HostSource, Process, Record};
use egressd_policy::{Decision, Reason, RuleId, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::decide::{Decided, same_name};
use crate::dial::{self, Dialled};
use crate::engine::Engine;
use crate::tunnel::{self, FirstBytes};

/// Accept on `listener` until the engine stops accepting.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    tasks: tokio_util::task::TaskTracker,
) {
    tunnel::accept_loop(&engine, listener, tasks, "CONNECT", |stream, peer| {
        handle(Arc::clone(&engine), stream, peer)
    })
    .await;
}

/// A parsed CONNECT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The host as requested: a name (lowercase, no trailing dot) or an IP.
    pub host: Target,
    /// The port.
    pub port: u16,
}

/// The host part of a CONNECT target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A host name.
    Name(String),
    /// An IP literal (v4-mapped IPv6 already IPv4).
    Ip(IpAddr),
}

/// Why a request head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Not a parseable HTTP/1 request head.
    #[error("not an HTTP request: {0}")]
    Malformed(String),
    /// A method other than CONNECT.
    #[error("only CONNECT is supported, not {0}")]
    NotConnect(String),
    /// The CONNECT target is not `host:port`.
    #[error("bad CONNECT target {0:?}: write host:port")]
    BadTarget(String),
}

/// Parse a complete request head (up to and including the blank line).
pub fn parse_head(head: &[u8]) -> Result<ConnectTarget, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("incomplete".into())),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default();
    if !method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::NotConnect(method.chars().take(16).collect()));
    }
    let target = req.path.unwrap_or_default();
    parse_target(target).ok_or_else(|| HeadError::BadTarget(target.chars().take(64).collect()))
}

/// `host:port`, `[v6]:port`; the port is required.
fn parse_target(target: &str) -> Option<ConnectTarget> {
    let (host, port) = if let Some(rest) = target.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:")?;
        (v6, port)
    } else {
        target.rsplit_once(':')?
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        return Some(ConnectTarget {
            host: Target::Ip(ip),
            port,
        });
    }
    if target.starts_with('[') {
        return None;
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(ConnectTarget {
        host: Target::Name(name),
        port,
    })
}

/// Read a request head: up to the blank line, within the size cap and the
/// peek timeout. Returns the head and any bytes the client sent after it.
async fn read_head(
    client: &mut TcpStream,
    engine: &Engine,
) -> Result<(Vec<u8>, Vec<u8>), (Reason, String)> {
    let limits = engine.limits();
    let deadline = Instant::now() + limits.peek_timeout;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find_head_end(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() >= limits.max_connect_head {
            return Err((
                Reason::LimitExceeded,
                format!(
                    "the CONNECT request head exceeds {} bytes",
                    limits.max_connect_head
                ),
            ));
        }
        // Read into spare capacity, 1 KiB at most at a time (a CONNECT head
        // is usually a few hundred bytes): nothing is zero-filled.
        buf.reserve(HEAD_CHUNK);
        let mut chunk = (&mut *client).take(HEAD_CHUNK as u64);
        match tokio::time::timeout_at(deadline, chunk.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                return Err((
                    Reason::MalformedRequest,
                    "the client closed the connection before its request was complete".into(),
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err((Reason::MalformedRequest, format!("client read failed: {e}")));
            }
            Err(_) => {
                return Err((
                    Reason::MalformedRequest,
                    format!(
                        "the client sent {} bytes of its request and then nothing within {} ms",
                        buf.len(),
                        limits.peek_timeout.as_millis()
                    ),
                ));
            }
        }
    }
}

/// How much of a request head is read at a time.
const HEAD_CHUNK: usize = 1024;

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// An HTTP response with a one-line text body, then close.
async fn respond(client: &mut TcpStream, status: &str, body: &str, extra_headers: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

/// The 403 (or 502/503/400) body: one line naming the reason and rule.
fn refusal_body(d: &Decision, host: Option<&str>) -> String {
    match host {
        Some(h) => format!(
            "egressd denied {h}: reason={} rule={}\n",
            d.reason.as_str(),
            d.rule
        ),
        None => format!(
            "egressd denied: reason={} rule={}\n",
            d.reason.as_str(),
            d.rule
        ),
    }
}

async fn refuse(client: &mut TcpStream, status: &str, d: &Decision, host: Option<&str>) {
    let headers = format!(
        "X-Egressd-Reason: {}\r\nX-Egressd-Rule: {}\r\n",
        d.reason.as_str(),
        d.rule
    );
    respond(client, status, &refusal_body(d, host), &headers).await;
}

fn status_for(reason: Reason) -> &'static str {
    match reason {
        Reason::UpstreamFailed => "502 Bad Gateway",
        Reason::LimitExceeded => "503 Service Unavailable",
        Reason::MalformedRequest => "400 Bad Request",
        _ => "403 Forbidden",
    }
}

async fn handle(engine: Arc<Engine>, mut client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let Some(_permit) = engine.try_tunnel() else {
        // Boxed, as the setup below: inline, this rare path's futures would
        // take room in every open tunnel's task.
        Box::pin(async {
            let d = Decision::engine_deny(Reason::LimitExceeded);
            tunnel::audit_decision(&engine, &d, |r| {
                r.src = Some(peer);
                r.detail = Some(format!(
                    "more than {} tunnels open",
                    engine.limits().max_tunnels
                ));
            })
            .await;
            refuse(&mut client, status_for(d.reason), &d, None).await;
        })
        .await;
        return;
    };
    // The setup (request head, resolution, connect, peek, decisions) runs in
    // a future of its own on the heap, freed before the relay starts: the
    // task an open tunnel keeps is only as large as the relay's state.
    let Some(open) = Box::pin(open_tunnel(&engine, client, peer)).await else {
        return;
    };
    tunnel::run_open(engine, open, started).await;
}

/// Everything before the relay: read and parse the request, decide, connect,
/// answer, peek inside the tunnel and decide again. Every refusal is audited
/// and answered here; `None` then.
async fn open_tunnel(
    engine: &Engine,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Option<tunnel::OpenTunnel> {
    let (head, rest) = match read_head(&mut client, engine).await {
        Ok(h) => h,
        Err((reason, detail)) => {
            let d = Decision::engine_deny(reason);
            tunnel::audit_decision(engine, &d, |r| {
                r.src = Some(peer);
                r.detail = Some(detail);
            })
            .await;
            refuse(&mut client, status_for(reason), &d, None).await;
            return None;
        }
    };
    let target = match parse_head(&head) {
        Ok(t) => t,
        Err(e) => {
            let d = Decision::engine_deny(Reason::MalformedRequest);
            tunnel::audit_decision(engine, &d, |r| {
                r.src = Some(peer);
                r.detail = Some(e.to_string());
            })
            .await;
            let status = match e {
                HeadError::NotConnect(_) => "405 Method Not Allowed",
                _ => "400 Bad Request",
            };
            refuse(&mut client, status, &d, None).await;
            return None;
        }
    };
    let opened = match &target.host {
        Target::Ip(ip) => dial::dial_ip(engine, SocketAddr::new(*ip, target.port)).await,
        Target::Name(name) => dial::dial_name(engine, name, target.port, HostSource::Connect).await,
    };
    let (decided, dst, upstream) = match opened {
        Dialled::Refused {
            decided,
            dst,
            detail,
        } => {
            tunnel::audit_decision(engine, &decided.decision, |r| {
                fill(r, &decided, &target, dst, peer, None);
                r.detail = detail;
            })
            .await;
            refuse(
                &mut client,
                status_for(decided.decision.reason),
                &decided.decision,
                decided.host.as_deref(),
            )
            .await;
            return None;
        }
        Dialled::Connected {
            decided,
            dst,
            upstream,
        } => (decided, dst, upstream),
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        .await
        .is_err()
    {
        // The client left; nothing was relayed, so the decision still stands
        // as the record of the attempt.
        tunnel::audit_decision(engine, &decided.decision, |r| {
            fill(r, &decided, &target, Some(dst), peer, None);
            r.detail = Some("the client left before the tunnel opened".into());
        })
        .await;
        return None;
    }
    let peeked = tunnel::peek(&mut client, engine, rest).await;
    let final_decided = match &peeked.first {
        FirstBytes::Refused { reason, detail } => {
            let d = Decision::engine_deny(*reason);
            let decided = Decided {
                decision: d,
                host: decided.host.clone(),
                host_source: decided.host_source,
            };
            tunnel::audit_decision(engine, &d, |r| {
                fill(r, &decided, &target, Some(dst), peer, None);
                r.detail = Some(detail.clone());
            })
            .await;
            tunnel::reset(client);
            return None;
        }
        FirstBytes::Nameless => decided,
        FirstBytes::Named { name, source } => {
            inner_name(engine, &decided, &target.host, dst, name, *source).await
        }
    };
    let record = tunnel::audit_decision(engine, &final_decided.decision, |r| {
        fill(r, &final_decided, &target, Some(dst), peer, None);
        if let (Target::Name(connect_host), Some(inner)) = (&target.host, &final_decided.host)
            && !same_name(connect_host, inner)
        {
            r.detail = Some(format!("CONNECT {connect_host}:{}", target.port));
        }
    })
    .await;
    if !final_decided.decision.is_allow() {
        tunnel::reset(client);
        return None;
    }
    Some(tunnel::OpenTunnel {
        client,
        upstream,
        replay: peeked.bytes,
        record: Box::new(record),
    })
}

/// The record of a decision on `target`: the address decided on when there
/// was one, else the port the request asked for.
fn fill(
    r: &mut Record,
    d: &Decided,
    target: &ConnectTarget,
    dst: Option<SocketAddr>,
    src: SocketAddr,
    process: Option<Process>,
) {
    r.host = d.host.clone();
    r.host_source = d.host_source;
    r.set_destination(dst, target.port);
    r.src = Some(src);
    r.process = process.map(Box::new);
}

/// Inside an allowed tunnel: the name the client's first bytes carry must be
/// the CONNECT host (for a name target), and must itself be allowed for this
/// address (for an IP target, exactly as on the transparent path).
async fn inner_name(
    engine: &Engine,
    connect: &Decided,
    target: &Target,
    dst: SocketAddr,
    name: &str,
    source: HostSource,
) -> Decided {
    match target {
        Target::Name(host) if same_name(host, name) => Decided {
            decision: connect.decision,
            host: Some(name.to_owned()),
            host_source: source,
        },
        Target::Name(_) => {
            let mismatch = Decision::enforce(Verdict::Deny, Reason::SniIpMismatch, RuleId::Engine);
            // In audit mode the policy lets it through and records it.
            let decision = if connect.decision.enforce_would.is_some() {
                mismatch.into_audit_mode()
            } else {
                mismatch
            };
            Decided {
                decision,
                host: Some(name.to_owned()),
                host_source: source,
            }
        }
        Target::Ip(_) => engine.decide_tcp(dst, Some((name, source))).await,
    }
}

#[cfg(test)]
mod tests;
