//! The transparent listener: connections redirected to the proxy (by the eBPF
//! connect hook or an nftables `redirect`) arrive here; a [`DstSource`] tells
//! where each was really going, and the shared decision path does the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use egressd_policy::{Decision, Reason};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::origin::{DstSource, Origin};
use crate::tunnel::{self, FirstBytes};

/// Accept on `listener` until the engine stops accepting; every connection is
/// handled in its own task (tracked by `tasks`, so shutdown can wait for it).
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    source: Arc<dyn DstSource>,
    tasks: tokio_util::task::TaskTracker,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "transparent listener has no local address");
            return;
        }
    };
    tunnel::accept_loop(&engine, listener, tasks, "transparent", |stream, peer| {
        let engine = Arc::clone(&engine);
        let source = Arc::clone(&source);
        async move { handle(engine, stream, peer, local, &*source).await }
    })
    .await;
}

async fn handle(
    engine: Arc<Engine>,
    client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    source: &dyn DstSource,
) {
    let started = Instant::now();
    let origin = source.lookup(&client, peer, local);
    // The denies here are boxed, as the setup below: inline, their futures
    // would take room in every open tunnel's task.
    let Some(_permit) = engine.try_tunnel() else {
        Box::pin(deny_now(
            &engine,
            peer,
            origin,
            Reason::LimitExceeded,
            format!("more than {} tunnels open", engine.limits().max_tunnels),
        ))
        .await;
        tunnel::reset(client);
        return;
    };
    let Some(origin) = origin else {
        Box::pin(deny_now(
            &engine,
            peer,
            None,
            Reason::OriginalDstUnknown,
            format!("{} knows no original destination", source.name()),
        ))
        .await;
        tunnel::reset(client);
        return;
    };
    // The setup (peek, decision, connect) runs in a future of its own on the
    // heap, freed before the relay starts: the task an open tunnel keeps is
    // only as large as the relay's state.
    let Some(open) = Box::pin(open_tunnel(&engine, client, peer, origin, started)).await else {
        return;
    };
    tunnel::run_open(engine, open, started).await;
}

/// Audit an engine deny before any policy question.
async fn deny_now(
    engine: &Engine,
    peer: SocketAddr,
    origin: Option<Origin>,
    reason: Reason,
    detail: String,
) {
    tunnel::audit_decision(engine, &Decision::engine_deny(reason), |r| {
        r.src = Some(peer);
        if let Some(o) = origin {
            r.dst = Some(o.dst);
            r.process = o.process.map(Box::new);
        }
        r.detail = Some(detail);
    })
    .await;
}

/// Everything before the relay: peek, decide, connect. Every refusal is
/// audited (and the client reset) here; `None` then.
async fn open_tunnel(
    engine: &Engine,
    mut client: TcpStream,
    peer: SocketAddr,
    origin: Origin,
    started: Instant,
) -> Option<tunnel::OpenTunnel> {
    let peeked = tunnel::peek(&mut client, engine, Vec::new()).await;
    let name = match &peeked.first {
        FirstBytes::Named { name, source } => Some((name.as_str(), *source)),
        FirstBytes::Nameless => None,
        FirstBytes::Refused { reason, detail } => {
            deny_now(engine, peer, Some(origin), *reason, detail.clone()).await;
            tunnel::reset(client);
            return None;
        }
    };
    let decide_started = Instant::now();
    let decided = engine.decide_tcp(origin.dst, name).await;
    engine
        .metrics()
        .decision_latency
        .observe(decide_started.elapsed());
    let record = tunnel::audit_decision(engine, &decided.decision, |r| {
        r.host = decided.host.clone();
        r.host_source = decided.host_source;
        r.dst = Some(origin.dst);
        r.src = Some(peer);
        r.process = origin.process.clone().map(Box::new);
    })
    .await;
    if !decided.decision.is_allow() {
        tunnel::reset(client);
        return None;
    }
    match tunnel::connect_upstream(engine, origin.dst).await {
        Ok(upstream) => Some(tunnel::OpenTunnel {
            client,
            upstream,
            replay: peeked.bytes,
            record: Box::new(record),
        }),
        Err(e) => {
            let mut failed = record;
            failed.id = egressd_audit::id::next();
            failed.ts = egressd_audit::time_format::now();
            failed.reason = Reason::UpstreamFailed;
            failed.bytes_up = Some(0);
            failed.bytes_down = Some(0);
            failed.duration_ms = Some(started.elapsed().as_millis() as u64);
            failed.detail = Some(format!("cannot connect to {}: {e}", origin.dst));
            engine.audit(failed).await;
            tunnel::reset(client);
            None
        }
    }
}

#[cfg(test)]
mod tests;
