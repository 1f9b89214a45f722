//! The transparent listener: connections redirected to the proxy (by the eBPF
//! connect hook or an nftables `redirect`) arrive here; a [`DstSource`] tells
//! where each was really going, and the shared decision path does the rest.

use std::net::SocketAddr;
use std::sync::Arc;

use egressd_audit::Process;
use egressd_policy::{Decision, Reason};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::origin::DstSource;
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
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = engine.stop_accepting().cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let engine = Arc::clone(&engine);
                let source = Arc::clone(&source);
                tasks.spawn(async move { handle(engine, stream, peer, local, &*source).await });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed on the transparent listener");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(
    engine: Arc<Engine>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    source: &dyn DstSource,
) {
    let started = Instant::now();
    let origin = source.lookup(&client, peer, local);
    let dst = origin.as_ref().map(|o| o.dst);
    let process: Option<Process> = origin.as_ref().and_then(|o| o.process.clone());
    let deny_now = |reason: Reason, detail: String| {
        let engine = Arc::clone(&engine);
        let process = process.clone();
        async move {
            tunnel::audit_decision(&engine, &Decision::engine_deny(reason), |r| {
                r.src = Some(peer);
                r.dst = dst;
                r.process = process;
                r.detail = Some(detail);
            })
            .await;
        }
    };
    let Some(_permit) = engine.try_tunnel() else {
        deny_now(
            Reason::LimitExceeded,
            format!("more than {} tunnels open", engine.limits().max_tunnels),
        )
        .await;
        tunnel::reset(client);
        return;
    };
    let Some(origin) = origin else {
        deny_now(
            Reason::OriginalDstUnknown,
            format!("{} knows no original destination", source.name()),
        )
        .await;
        tunnel::reset(client);
        return;
    };
    let peeked = tunnel::peek(&mut client, &engine, Vec::new()).await;
    let name = match &peeked.first {
        FirstBytes::Named { name, source } => Some((name.as_str(), *source)),
        FirstBytes::Nameless => None,
        FirstBytes::Refused { reason, detail } => {
            deny_now(*reason, detail.clone()).await;
            tunnel::reset(client);
            return;
        }
    };
    let decide_started = Instant::now();
    let decided = engine.decide_tcp(origin.dst, name).await;
    engine
        .metrics()
        .decision_latency
        .observe(decide_started.elapsed());
    let record = tunnel::audit_decision(&engine, &decided.decision, |r| {
        r.host = decided.host.clone();
        r.host_source = decided.host_source;
        r.dst = Some(origin.dst);
        r.src = Some(peer);
        r.process = origin.process.clone();
    })
    .await;
    if !decided.decision.is_allow() {
        tunnel::reset(client);
        return;
    }
    match tunnel::connect_upstream(&engine, origin.dst).await {
        Ok(upstream) => {
            tunnel::run(engine, client, upstream, &peeked.bytes, record, started).await;
        }
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
        }
    }
}

#[cfg(test)]
mod tests;
