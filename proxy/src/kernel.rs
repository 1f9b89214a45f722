//! The eBPF enforcer as the data plane sees it: the original destination of
//! a redirected connection (a [`DstSource`]), the process behind a DNS query
//! (a [`ProcessLookup`]), and the in-kernel denies turned into audit records.
//! Process attribution (pid, comm from the kernel hook; exe, cgroup path and
//! container id from /proc and the cgroup tree) is built here once for all
//! three. Also the enforcer's upkeep while it runs ([`upkeep`]): the packet
//! guard follows interfaces as they come and go, and lost deny reports become
//! an `event` record.

use std::net::SocketAddr;
use std::sync::Arc;

use egressd_audit::{Kind, Process};
use egressd_ebpf::{DenyEvent, DenyEvents, DenyKind, Enforcer, OriginalDst};
use egressd_policy::{Decision, Reason};
use tokio::net::TcpStream;

use crate::engine::Engine;
use crate::origin::{DstSource, Origin};

/// Who made a DNS query that reached the DNS server from `client`.
pub trait ProcessLookup: Send + Sync + 'static {
    /// The process behind the query, when the kernel recorded it.
    fn dns_process(&self, client: SocketAddr) -> Option<Process>;
}

/// Original destinations and DNS origins from the enforcer's maps.
pub struct EbpfOrigins {
    enforcer: Arc<Enforcer>,
    cgroups: papaya::HashMap<u64, Option<String>>,
}

impl std::fmt::Debug for EbpfOrigins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfOrigins").finish_non_exhaustive()
    }
}

impl EbpfOrigins {
    /// Lookups in `enforcer`'s maps.
    pub fn new(enforcer: Arc<Enforcer>) -> Arc<EbpfOrigins> {
        Arc::new(EbpfOrigins {
            enforcer,
            cgroups: papaya::HashMap::new(),
        })
    }

    /// The audit `process` for what the kernel reported.
    pub fn process(&self, pid: u32, comm: &str, cgroup_id: u64) -> Process {
        let cgroup = proc_cgroup(pid).or_else(|| self.cgroup_path(cgroup_id));
        Process {
            pid: (pid != 0).then_some(pid),
            comm: (!comm.is_empty()).then(|| comm.to_owned()),
            exe: proc_exe(pid),
            container: cgroup
                .as_deref()
                .and_then(egressd_ebpf::container_id_of_cgroup_path),
            cgroup,
        }
    }

    /// A cgroup id's path, from a cache: finding it walks the cgroup tree.
    fn cgroup_path(&self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        let map = self.cgroups.pin();
        if let Some(found) = map.get(&id) {
            return found.clone();
        }
        if map.len() > 4096 {
            map.clear();
        }
        let found = egressd_ebpf::cgroup_path_of_id(id);
        map.insert(id, found.clone());
        found
    }

    fn origin(&self, o: OriginalDst) -> Origin {
        Origin {
            dst: o.dst,
            process: Some(self.process(o.pid, &o.comm, o.cgroup_id)),
        }
    }
}

impl DstSource for EbpfOrigins {
    fn lookup(&self, _accepted: &TcpStream, peer: SocketAddr, local: SocketAddr) -> Option<Origin> {
        self.enforcer
            .original_dst(peer, local)
            .map(|o| self.origin(o))
    }

    fn name(&self) -> &'static str {
        "ebpf"
    }
}

impl ProcessLookup for EbpfOrigins {
    fn dns_process(&self, client: SocketAddr) -> Option<Process> {
        let o = self.enforcer.dns_origin(client)?;
        Some(self.process(o.pid, &o.comm, o.cgroup_id))
    }
}

/// `/proc/PID/exe`, while the process exists.
fn proc_exe(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

/// `/proc/PID/comm`, while the process exists.
fn proc_comm(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// The cgroup v2 path of a running process (the `0::` line).
fn proc_cgroup(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The record kind and reason for an in-kernel deny.
pub fn deny_kind(ev: &DenyEvent) -> (Kind, Reason) {
    let kind_of_protocol = || match ev.protocol {
        6 => Kind::Tcp,
        17 => Kind::Udp,
        1 | 58 => Kind::Icmp,
        _ => Kind::Raw,
    };
    match ev.kind {
        DenyKind::Udp => (Kind::Udp, Reason::UdpBlocked),
        DenyKind::Icmp => (Kind::Icmp, Reason::IcmpBlocked),
        DenyKind::Raw => (Kind::Raw, Reason::RawBlocked),
        DenyKind::Backstop => (kind_of_protocol(), Reason::EgressBackstop),
        DenyKind::NoGateway => (kind_of_protocol(), Reason::NoGateway),
        DenyKind::Packet => (Kind::Raw, Reason::PacketBlocked),
        DenyKind::Sockopt => (Kind::Raw, Reason::SockoptBlocked),
    }
}

fn deny_detail(ev: &DenyEvent) -> String {
    match ev.kind {
        DenyKind::Udp => "UDP other than DNS is denied in the kernel (EPERM)".into(),
        DenyKind::Icmp => "ICMP ping sockets are denied in the kernel (EPERM)".into(),
        DenyKind::Raw => format!(
            "raw or packet socket (protocol {}) denied in the kernel (EPERM)",
            ev.protocol
        ),
        DenyKind::Backstop => format!(
            "packet (IP protocol {}) that bypassed the socket hooks, dropped on egress",
            ev.protocol
        ),
        DenyKind::NoGateway => {
            "connection from another network namespace, and no container gateway of its family is configured (--container-gateway)"
                .into()
        }
        DenyKind::Packet => format!(
            "frame (EtherType 0x{:04x}) from a packet socket (cookie {}) dropped by the packet-socket guard; further frames of this socket are dropped without a record",
            ev.protocol,
            ev.socket_cookie.unwrap_or(0)
        ),
        DenyKind::Sockopt => format!(
            "socket option at level {} that would bypass the packet-socket guard (PACKET_QDISC_BYPASS or AF_XDP) denied in the kernel (EPERM)",
            ev.protocol
        ),
    }
}

/// Write one audit record per in-kernel deny until the engine stops accepting.
pub async fn audit_denies(engine: Arc<Engine>, mut events: DenyEvents, origins: Arc<EbpfOrigins>) {
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            () = engine.stop_accepting().cancelled() => break,
        };
        let Some(ev) = ev else {
            tracing::error!(
                "the kernel deny ring buffer failed: in-kernel denies are no longer audited"
            );
            return;
        };
        record_deny(&engine, &origins, &ev).await;
    }
    // What the kernel reported before the stop is still audited.
    while let Some(ev) = events.try_recv() {
        record_deny(&engine, &origins, &ev).await;
    }
}

async fn record_deny(engine: &Engine, origins: &EbpfOrigins, ev: &DenyEvent) {
    let (kind, reason) = deny_kind(ev);
    let mut rec = engine.record(kind, &Decision::engine_deny(reason));
    rec.dst = ev.dst;
    rec.process = Some(match (ev.kind, ev.socket_cookie) {
        // The tc guard runs without process context: find the socket's owner.
        (DenyKind::Packet, Some(cookie)) => {
            let pid =
                tokio::task::spawn_blocking(move || egressd_ebpf::packet_socket_owner(cookie))
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            let comm = proc_comm(pid).unwrap_or_default();
            Box::new(origins.process(pid, &comm, ev.cgroup_id))
        }
        _ => Box::new(origins.process(ev.pid, &ev.comm, ev.cgroup_id)),
    });
    rec.detail = Some(deny_detail(ev));
    engine.metrics().decision(&Decision::engine_deny(reason));
    engine.audit(rec).await;
}

/// While the engine accepts: attach the packet-socket guard to interfaces as they
/// appear (an `event` record for one that cannot be guarded), keep the networks of
/// this host's container bridges left alone as bridges, ports and routes come and
/// go, and write an `event` record when the kernel reports lost deny reports. Every
/// few seconds all are checked even without a notification.
pub async fn upkeep(engine: Arc<Engine>, enforcer: Arc<Enforcer>) {
    let mut changes = match Enforcer::watch_interfaces() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!("{e}: new interfaces and routes are picked up every 5 s instead");
            None
        }
    };
    let mut lost_seen = 0u64;
    loop {
        let changed = async {
            match changes.as_mut() {
                Some(c) => c.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = changed => {
                if let Err(e) = r {
                    tracing::warn!("interface notifications failed ({e}): polling every 5 s");
                    changes = None;
                }
            }
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            () = engine.stop_accepting().cancelled() => return,
        }
        match enforcer.sync_interfaces() {
            Ok(sync) => {
                for name in &sync.attached {
                    tracing::info!(interface = %name, "packet-socket guard attached");
                }
                for (name, error) in &sync.failed {
                    tracing::error!(interface = %name, "packet-socket guard NOT attached: {error}");
                    audit_event(
                        &engine,
                        Reason::InterfaceUnguarded,
                        format!("interface {name} is not guarded against packet sockets: {error}"),
                    )
                    .await;
                }
            }
            Err(e) => tracing::error!("cannot list network interfaces: {e}"),
        }
        // A failed rescan keeps the last networks: each is still a container
        // bridge's until a rescan says otherwise.
        if let Err(e) = enforcer.sync_local_networks() {
            tracing::warn!("{e}; retrying in 5 s");
        }
        let lost = enforcer.deny_reports_lost();
        if lost > lost_seen {
            tracing::error!(
                lost = lost - lost_seen,
                "kernel deny reports lost: the ring buffer was full"
            );
            audit_event(
                &engine,
                Reason::KernelReportsLost,
                format!(
                    "{} in-kernel deny reports were lost because the ring buffer was full ({lost} since start); the denies themselves happened",
                    lost - lost_seen
                ),
            )
            .await;
            lost_seen = lost;
        }
    }
}

async fn audit_event(engine: &Engine, reason: Reason, detail: String) {
    let mut rec = engine.record(Kind::Event, &Decision::engine_deny(reason));
    rec.detail = Some(detail);
    engine.metrics().decision(&Decision::engine_deny(reason));
    engine.audit(rec).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: DenyKind, protocol: u32) -> DenyEvent {
        DenyEvent {
            kind,
            dst: None,
            protocol,
            pid: 1,
            comm: "x".into(),
            cgroup_id: 0,
            socket_cookie: None,
        }
    }

    #[test]
    fn kernel_denies_map_to_record_kinds() {
        assert_eq!(
            deny_kind(&ev(DenyKind::Udp, 17)),
            (Kind::Udp, Reason::UdpBlocked)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Icmp, 1)),
            (Kind::Icmp, Reason::IcmpBlocked)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Raw, 255)),
            (Kind::Raw, Reason::RawBlocked)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Backstop, 17)),
            (Kind::Udp, Reason::EgressBackstop)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Backstop, 58)),
            (Kind::Icmp, Reason::EgressBackstop)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Backstop, 6)),
            (Kind::Tcp, Reason::EgressBackstop)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Backstop, 255)),
            (Kind::Raw, Reason::EgressBackstop)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::NoGateway, 6)),
            (Kind::Tcp, Reason::NoGateway)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Packet, 0x0800)),
            (Kind::Raw, Reason::PacketBlocked)
        );
        assert_eq!(
            deny_kind(&ev(DenyKind::Sockopt, 263)),
            (Kind::Raw, Reason::SockoptBlocked)
        );
    }

    #[test]
    fn own_process_is_attributed() {
        let me = std::process::id();
        let exe = proc_exe(me).unwrap();
        assert!(exe.starts_with('/'));
        assert!(proc_cgroup(me).is_some_and(|c| c.starts_with('/')));
        assert_eq!(proc_exe(0), None);
    }
}
