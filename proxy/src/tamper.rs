//! `egressd boot --watch-tamper`: periodically verify that enforcement is
//! still whole, without bpftool: the programs attached to the filtered cgroup
//! (counted per attach type with `BPF_PROG_QUERY`), the listening sockets
//! (in `/proc/net/tcp*`), and the policy file's content. A difference from
//! the state at boot is logged as an error, written as an `event` audit
//! record and reported to systemd; the state is then taken as the new
//! baseline so one change is reported once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// Attach types egressd uses (`enum bpf_attach_type` in linux/bpf.h).
const ATTACH_TYPES: [(u32, &str); 12] = [
    (1, "cgroup_skb/egress"),
    (2, "cgroup/sock_create"),
    (3, "sockops"),
    (10, "cgroup/connect4"),
    (11, "cgroup/connect6"),
    (14, "cgroup/sendmsg4"),
    (15, "cgroup/sendmsg6"),
    (19, "cgroup/recvmsg4"),
    (20, "cgroup/recvmsg6"),
    (22, "cgroup/setsockopt"),
    (29, "cgroup/getpeername4"),
    (30, "cgroup/getpeername6"),
];
const BPF_PROG_QUERY: libc::c_long = 16;

/// The `BPF_PROG_QUERY` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// How many programs are attached directly to `cgroup`, per attach type.
pub fn attached_programs(cgroup: &Path) -> std::io::Result<BTreeMap<&'static str, u32>> {
    let dir = std::fs::File::open(cgroup)?;
    let mut out = BTreeMap::new();
    for (attach_type, name) in ATTACH_TYPES {
        let mut attr = QueryAttr {
            target_fd: u32::try_from(dir.as_raw_fd()).unwrap_or(0),
            attach_type,
            ..QueryAttr::default()
        };
        // SAFETY: `attr` is a properly sized, initialised bpf_attr prefix the
        // kernel reads and writes; prog_ids is 0, so only prog_cnt is written.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                (&raw mut attr).cast::<libc::c_void>(),
                std::mem::size_of::<QueryAttr>() as libc::c_uint,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.insert(name, attr.prog_cnt);
    }
    Ok(out)
}

/// Whether a TCP socket listens on `addr` (from `/proc/net/tcp` or `tcp6`).
pub fn listening(addr: SocketAddr) -> bool {
    let (file, want) = match addr {
        SocketAddr::V4(a) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(a.ip().octets()),
                a.port()
            ),
        ),
        SocketAddr::V6(a) => {
            let o = a.ip().octets();
            let words: String = (0..4)
                .map(|i| {
                    format!(
                        "{:08X}",
                        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
                    )
                })
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", a.port()))
        }
    };
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let local = f.nth(1);
        let state = f.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// What is watched.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The filtered cgroup, when hooks are attached.
    pub cgroup: Option<PathBuf>,
    /// Listening addresses.
    pub listeners: Vec<SocketAddr>,
    /// The policy file, when the policy came from one.
    pub policy_file: Option<PathBuf>,
}

/// A snapshot of the watched state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    programs: Option<BTreeMap<&'static str, u32>>,
    listeners: Vec<(SocketAddr, bool)>,
    policy: Option<Vec<u8>>,
}

impl Watched {
    /// The state now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            programs: self
                .cgroup
                .as_deref()
                .and_then(|c| attached_programs(c).ok()),
            listeners: self.listeners.iter().map(|&a| (a, listening(a))).collect(),
            policy: self
                .policy_file
                .as_deref()
                .and_then(|p| std::fs::read(p).ok()),
        }
    }
}

/// What changed between `before` and `now`, one sentence each.
pub fn differences(before: &Snapshot, now: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    match (&before.programs, &now.programs) {
        (Some(b), Some(n)) => {
            for (name, count) in b {
                let still = n.get(name).copied().unwrap_or(0);
                if still < *count {
                    out.push(format!("a {name} program was detached from the filtered cgroup ({count} -> {still})"));
                }
            }
        }
        (Some(_), None) => out.push(
            "the filtered cgroup's programs can no longer be queried (cgroup removed?)".into(),
        ),
        _ => {}
    }
    for ((addr, was), (_, is)) in before.listeners.iter().zip(&now.listeners) {
        if *was && !*is {
            out.push(format!("the listener on {addr} is gone"));
        }
    }
    if before.policy != now.policy {
        out.push(
            "the policy file changed on disk (not applied: boot's policy is fixed until restart)"
                .into(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_its_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert!(listening(addr));
        drop(l);
        assert!(!listening(addr));
    }

    #[test]
    fn reports_each_loss_once() {
        let before = Snapshot {
            programs: Some([("cgroup/connect4", 1)].into_iter().collect()),
            listeners: vec![("127.0.0.1:1".parse().unwrap(), true)],
            policy: Some(b"a".to_vec()),
        };
        assert!(differences(&before, &before).is_empty());
        let now = Snapshot {
            programs: Some([("cgroup/connect4", 0)].into_iter().collect()),
            listeners: vec![("127.0.0.1:1".parse().unwrap(), false)],
            policy: Some(b"b".to_vec()),
        };
        assert_eq!(differences(&before, &now).len(), 3);
    }
}
