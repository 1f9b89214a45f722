//! egressd kernel side: loads the C eBPF programs built from `bpf/`, attaches
//! them to a cgroup v2 directory, and answers "what was the original
//! destination of this accepted socket, and which process made it?".
//!
//! The programs never decide policy. They steer every outbound TCP connection
//! and DNS query of the filtered cgroup to the egressd proxy and deny in the
//! kernel what the proxy cannot see (UDP other than DNS, ping and raw
//! sockets, frames of packet sockets, anything that slipped past the socket
//! hooks), reporting each deny as a [`DenyEvent`].
//!
//! The object is built by `cargo xtask ebpf-build` and committed
//! (`bpf/egressd.bpf.o`), so building this crate needs no clang.

mod abi;
mod bridges;
pub mod cgroup;
mod config;
mod enforcer;
mod error;
mod events;
mod netlink;
mod packet_guard;
mod pin;
mod probe;
mod raw_link;

pub use cgroup::{
    CgroupEntry, ChildCgroup, cgroup_path_of_id, cgroup2_mount, container_id_of_cgroup_path,
    kill_and_remove,
};
pub use config::EnforcerConfig;
pub use enforcer::{Enforcer, LocalSync, OriginalDst};
pub use error::EbpfError;
pub use events::{DenyEvent, DenyEvents, DenyKind, packet_socket_owner};
pub use netlink::LinkChanges;
pub use packet_guard::GuardSync;
pub use pin::{DEFAULT_PIN_DIR, cleanup};

/// The compiled kernel programs (`bpf/egressd.bpf.c`, built with clang-19).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../bpf/egressd.bpf.o");

/// Names of the cgroup programs, in attach order; also the names of their pins.
/// (`packet_guard`, the tc program, is attached per interface: see
/// `Enforcer::sync_interfaces`.)
pub const PROGRAMS: [&str; 12] = [
    "sock_create",
    "sockopt_guard",
    "sock_ops",
    "getpeername4",
    "getpeername6",
    "recvmsg4",
    "recvmsg6",
    "skb_egress",
    "sendmsg4",
    "sendmsg6",
    "connect4",
    "connect6",
];
