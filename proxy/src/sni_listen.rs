//! The SNI listener (`--sni-listen ADDR`): TLS clients steered to the proxy
//! by name (DNS or `/etc/hosts` pointing allowed names at it), with neither
//! eBPF, nor an original destination, nor a CONNECT round trip, the way an
//! SNI proxy works. The ClientHello's server name is the destination: it is
//! decided and dialled as a CONNECT host is ([`dial::dial_name`]: the DNS
//! question, the proxy's resolver, the policy's IP checks on every resolved
//! address) on the configured upstream port, and the peeked bytes are
//! replayed to the upstream, so TLS is never terminated. Records carry
//! `host_source` `sni`. With ECH, the outer (public) name is routed on: it
//! is the name the network sees, and it names the server that decrypts the
//! inner hello.
//!
//! A connection without a name to route on is denied, audited and reset:
//! TLS without a server name (ECH offered without an outer name included) is
//! `no_sni`; anything that is not a TLS ClientHello is `malformed_request`.

use std::net::SocketAddr;
use std::sync::Arc;

use egressd_audit::HostSource;
use egressd_policy::{Decision, Reason};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::dial::{self, Dialled};
use crate::engine::Engine;
use crate::limits::Limits;
use crate::peek::{self, Peeked};
use crate::tunnel::{self, FirstBytes};

/// The port allowed connections are dialled on unless `--sni-upstream-port`
/// says otherwise.
pub const DEFAULT_UPSTREAM_PORT: u16 = 443;

/// Accept on `listener` until the engine stops accepting; every connection is
/// routed on its SNI to `upstream_port` in its own task (tracked by `tasks`,
/// so shutdown can wait for it).
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    upstream_port: u16,
    tasks: tokio_util::task::TaskTracker,
) {
    tunnel::accept_loop(&engine, listener, tasks, "SNI", |stream, peer| {
        handle(Arc::clone(&engine), stream, peer, upstream_port)
    })
    .await;
}

async fn handle(engine: Arc<Engine>, client: TcpStream, peer: SocketAddr, upstream_port: u16) {
    let started = Instant::now();
    let Some(_permit) = engine.try_tunnel() else {
        // Boxed, as the setup below: inline, this rare path's future would
        // take room in every open tunnel's task.
        Box::pin(deny_unnamed(
            &engine,
            peer,
            upstream_port,
            Reason::LimitExceeded,
            format!("more than {} tunnels open", engine.limits().max_tunnels),
        ))
        .await;
        tunnel::reset(client);
        return;
    };
    // The setup (peek, decision, resolution, connect) runs in a future of its
    // own on the heap, freed before the relay starts: the task an open tunnel
    // keeps is only as large as the relay's state.
    let Some(open) = Box::pin(open_tunnel(&engine, client, peer, upstream_port)).await else {
        return;
    };
    tunnel::run_open(engine, open, started).await;
}

/// Peek the ClientHello, decide and dial its server name, and record the
/// decision; `None` when the connection was denied (recorded and reset).
async fn open_tunnel(
    engine: &Engine,
    mut client: TcpStream,
    peer: SocketAddr,
    upstream_port: u16,
) -> Option<tunnel::OpenTunnel> {
    let peeked = tunnel::peek(&mut client, engine, Vec::new()).await;
    let name = match &peeked.first {
        FirstBytes::Named {
            name,
            source: HostSource::Sni,
        } => name.as_str(),
        FirstBytes::Refused { reason, detail } => {
            deny_unnamed(engine, peer, upstream_port, *reason, detail.clone()).await;
            tunnel::reset(client);
            return None;
        }
        FirstBytes::Named { .. } | FirstBytes::Nameless => {
            let (reason, detail) = unroutable(&peeked.bytes, engine.limits());
            deny_unnamed(engine, peer, upstream_port, reason, detail).await;
            tunnel::reset(client);
            return None;
        }
    };
    match dial::dial_name(engine, name, upstream_port, HostSource::Sni).await {
        Dialled::Refused {
            decided,
            dst,
            detail,
        } => {
            tunnel::audit_decision(engine, &decided.decision, |r| {
                r.host = decided.host.clone();
                r.host_source = decided.host_source;
                r.set_destination(dst, upstream_port);
                r.src = Some(peer);
                r.detail = detail;
            })
            .await;
            tunnel::reset(client);
            None
        }
        Dialled::Connected {
            decided,
            dst,
            upstream,
        } => {
            let record = tunnel::audit_decision(engine, &decided.decision, |r| {
                r.host = decided.host.clone();
                r.host_source = decided.host_source;
                r.dst = Some(dst);
                r.src = Some(peer);
            })
            .await;
            Some(tunnel::OpenTunnel {
                client,
                upstream,
                replay: peeked.bytes,
                record: Box::new(record),
            })
        }
    }
}

/// Record a deny made before any name was known: no address either, only
/// the upstream port every connection to this listener is for.
async fn deny_unnamed(
    engine: &Engine,
    peer: SocketAddr,
    upstream_port: u16,
    reason: Reason,
    detail: String,
) {
    tunnel::audit_decision(engine, &Decision::engine_deny(reason), |r| {
        r.set_destination(None, upstream_port);
        r.src = Some(peer);
        r.detail = Some(detail);
    })
    .await;
}

/// Why the first bytes `bytes`, which carry no server name to route on,
/// cannot be routed: the reason code and the record's `detail`. Only the
/// deny path asks, so the bytes are classified a second time here rather
/// than widening what every peek returns.
fn unroutable(bytes: &[u8], limits: &Limits) -> (Reason, String) {
    if bytes.is_empty() {
        return (
            Reason::MalformedRequest,
            format!(
                "the client sent nothing (it closed, or was silent for {} ms): the SNI listener needs a TLS ClientHello",
                limits.first_byte_wait.min(limits.peek_timeout).as_millis()
            ),
        );
    }
    match peek::classify(bytes, &limits.peek) {
        Ok(Peeked::Tls { ech: true, .. }) => (
            Reason::NoSni,
            "the ClientHello offers ECH without an outer server name: the SNI listener routes on the server name".into(),
        ),
        Ok(Peeked::Tls { .. }) => (
            Reason::NoSni,
            "the ClientHello has no server name: the SNI listener routes on the server name".into(),
        ),
        Ok(Peeked::Http { .. }) => (
            Reason::MalformedRequest,
            "an HTTP request, not a TLS ClientHello: the SNI listener takes TLS only (use the CONNECT proxy for HTTP)".into(),
        ),
        Ok(Peeked::Other) | Err(_) => (
            Reason::MalformedRequest,
            "not a TLS ClientHello: the SNI listener takes TLS only".into(),
        ),
    }
}

#[cfg(test)]
mod tests;
