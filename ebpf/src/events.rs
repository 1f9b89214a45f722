//! In-kernel denies reported through the `events` ring buffer, read asynchronously.

use std::net::SocketAddr;

use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::abi::{self, RawDenyEvent};

/// What the kernel denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyKind {
    /// UDP to a port other than 53 (QUIC included): `connect`/`sendmsg` got EPERM.
    Udp,
    /// An ICMP/ICMPv6 "ping" socket: `socket()` got EPERM.
    Icmp,
    /// A raw socket: `socket()` got EPERM.
    Raw,
    /// A packet that slipped past the socket hooks, dropped on egress.
    Backstop,
    /// A container's connection that could not be redirected: no gateway of its family
    /// is configured (`EnforcerConfig::container_gateways`).
    NoGateway,
    /// A frame sent through a packet (`AF_PACKET`/`AF_XDP`) socket created under
    /// egressd, dropped by the tc guard. No process context: see
    /// [`DenyEvent::socket_cookie`]; `protocol` is the frame's EtherType.
    Packet,
    /// A socket option that would skip the packet guard (`PACKET_QDISC_BYPASS`, any
    /// `SOL_XDP` option): `setsockopt` got EPERM. `protocol` is the option level.
    Sockopt,
}

impl DenyKind {
    fn from_raw(kind: u32) -> Option<Self> {
        Some(match kind {
            1 => Self::Udp,
            2 => Self::Icmp,
            3 => Self::Raw,
            5 => Self::Backstop,
            6 => Self::NoGateway,
            7 => Self::Packet,
            8 => Self::Sockopt,
            _ => return None,
        })
    }

    /// One stable lowercase word per kind (for logs and audit).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Raw => "raw",
            Self::Backstop => "backstop",
            Self::NoGateway => "no_gateway",
            Self::Packet => "packet",
            Self::Sockopt => "sockopt",
        }
    }
}

/// One in-kernel deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEvent {
    /// What was denied.
    pub kind: DenyKind,
    /// The destination, when the deny had one (UDP, backstop, no-gateway).
    pub dst: Option<SocketAddr>,
    /// IP protocol number (17 UDP, 6 TCP, 1 ICMP, 58 ICMPv6...) or the socket's protocol.
    pub protocol: u32,
    /// Process (thread group) id. For backstop drops: the process that created the socket.
    pub pid: u32,
    /// The process's `comm` (at most 15 bytes).
    pub comm: String,
    /// cgroup id of the process (see `cgroup_path_of_id`).
    pub cgroup_id: u64,
    /// The socket's cookie when the kernel knew it (backstop and packet drops): with
    /// [`packet_socket_owner`] it finds the owner of a packet socket.
    pub socket_cookie: Option<u64>,
}

impl DenyEvent {
    fn from_raw(raw: &RawDenyEvent) -> Option<Self> {
        let dst = (raw.family != 0).then(|| abi::socket_addr(raw.addr, raw.port, raw.family));
        Some(Self {
            kind: DenyKind::from_raw(raw.kind)?,
            dst,
            protocol: raw.protocol,
            pid: raw.pid,
            comm: abi::comm(&raw.comm),
            cgroup_id: raw.cgroup_id,
            socket_cookie: (raw.cookie != 0).then_some(raw.cookie),
        })
    }
}

/// The process holding the packet socket with this cookie, in this network
/// namespace: its pid, found through sock_diag (cookie to inode) and `/proc/*/fd`.
/// `None` when the socket is gone, belongs to another namespace or cannot be seen.
pub fn packet_socket_owner(cookie: u64) -> Option<u32> {
    let inode = crate::netlink::packet_sockets()
        .ok()?
        .into_iter()
        .find(|s| s.cookie == cookie)?
        .inode;
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The receiving end of the deny ring buffer. Needs a tokio runtime (it registers
/// the ring buffer's fd with the reactor).
pub struct DenyEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for DenyEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyEvents").finish_non_exhaustive()
    }
}

impl DenyEvents {
    /// Registers the ring buffer with the current tokio reactor.
    pub(crate) fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(std::io::Error::other("no tokio runtime is running"));
        }
        // SAFETY: the fd belongs to the ring buffer's map, which the `AsyncFd` owns:
        // it stays open and unchanged until the `AsyncFd` is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(Self { ring })
    }

    /// The next deny, waiting until one arrives. Records of an unknown kind (a newer
    /// object than this loader) are skipped. `None` only if the ring buffer fails.
    pub async fn recv(&mut self) -> Option<DenyEvent> {
        loop {
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            let mut guard = self.ring.readable_mut().await.ok()?;
            if let Some(event) = next_event(guard.get_inner_mut()) {
                return Some(event);
            }
            guard.clear_ready();
        }
    }

    /// The next deny already in the buffer, without waiting.
    pub fn try_recv(&mut self) -> Option<DenyEvent> {
        next_event(self.ring.get_mut())
    }
}

fn next_event(ring: &mut RingBuf<MapData>) -> Option<DenyEvent> {
    while let Some(item) = ring.next() {
        if let Some(event) = RawDenyEvent::parse(&item)
            .as_ref()
            .and_then(DenyEvent::from_raw)
        {
            return Some(event);
        }
    }
    None
}
