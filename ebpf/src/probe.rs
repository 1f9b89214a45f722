//! Start-up checks: does this kernel run every program, and is the target a cgroup v2
//! directory? Errors name the missing feature (see docs/kernel.md).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use aya::EbpfLoader;

use crate::{EbpfError, PROGRAMS};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The kernel feature each program needs, as docs/kernel.md names it.
fn feature_of(program: &str) -> &'static str {
    match program {
        "sock_create" => "cgroup/sock_create with socket local storage (Linux 5.11+)",
        "sock_ops" => "sockops programs",
        "getpeername4" | "getpeername6" => "cgroup/getpeername4/6 (Linux 5.8+)",
        "recvmsg4" | "recvmsg6" => "cgroup/recvmsg4/6 (Linux 5.2+)",
        "skb_egress" => "cgroup_skb/egress with socket local storage",
        "sockopt_guard" => "cgroup/setsockopt programs (Linux 5.3+)",
        "packet_guard" => {
            "tc classifier programs reading the frame's socket (bpf_sk_fullsock, bpf_skb_ancestor_cgroup_id)"
        }
        "sendmsg4" | "sendmsg6" => "cgroup/sendmsg4/6 with bpf_get_netns_cookie (Linux 5.8+)",
        _ => "cgroup/connect4/6 with bpf_get_netns_cookie and bpf_getsockopt (Linux 5.8+)",
    }
}

/// Loads the object and every program without attaching anything.
pub(crate) fn probe() -> Result<(), EbpfError> {
    crate::cgroup2_mount()?;
    let one: u16 = 1;
    let mut ebpf = EbpfLoader::new()
        .override_global("proxy_port", &one, true)
        .override_global("dns_port", &one, true)
        .load(crate::OBJECT)
        .map_err(|e| EbpfError::MissingFeature {
            feature: "BPF with BTF, ring buffer, LPM trie and socket storage maps (Linux 5.11+), usable by this user",
            detail: error_chain(&e),
        })?;
    for name in PROGRAMS.into_iter().chain([crate::packet_guard::PROGRAM]) {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| EbpfError::Config(format!("the object has no program {name}")))?;
        let loaded = match program {
            aya::programs::Program::CgroupSockAddr(p) => p.load(),
            aya::programs::Program::SockOps(p) => p.load(),
            aya::programs::Program::CgroupSock(p) => p.load(),
            aya::programs::Program::CgroupSkb(p) => p.load(),
            aya::programs::Program::CgroupSockopt(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => {
                return Err(EbpfError::Config(format!(
                    "program {name} has an unexpected type"
                )));
            }
        };
        loaded.map_err(|e| EbpfError::MissingFeature {
            feature: feature_of(name),
            detail: error_chain(&e),
        })?;
    }
    Ok(())
}

/// The error and its sources on one line (aya keeps the verifier log in a source).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The filesystem type (`statfs.f_type`) of a path.
pub(crate) fn fs_magic(path: &Path) -> Result<i64, EbpfError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| EbpfError::Config(format!("{} contains a NUL byte", path.display())))?;
    // SAFETY: statfs is plain old data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(EbpfError::io(
            "inspecting",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on 64-bit glibc but narrower on other targets (not `expect`: it holds only here)"
    )]
    let f_type = i64::from(st.f_type);
    Ok(f_type)
}

/// Fails unless `path` is a directory on a cgroup v2 filesystem.
pub(crate) fn require_cgroup2_dir(path: &Path) -> Result<(), EbpfError> {
    if fs_magic(path)? != CGROUP2_SUPER_MAGIC {
        return Err(EbpfError::NotACgroup(path.to_path_buf()));
    }
    Ok(())
}
