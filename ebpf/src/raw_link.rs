//! Cgroup links that aya 0.14 cannot hand out as an `FdLink` (needed to pin them):
//! the `cgroup/setsockopt` program's. This module creates such a link and pins it
//! with the bpf(2) syscall directly; everything else goes through aya.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};

use crate::EbpfError;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_attach_type`: BPF_CGROUP_SETSOCKOPT.
pub(crate) const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// A link to a cgroup: aya's, or one made here.
#[derive(Debug)]
pub(crate) enum CgroupLink {
    Aya(FdLink),
    Raw(OwnedFd),
}

impl CgroupLink {
    /// Pins the link at `path` (on bpffs).
    pub(crate) fn pin(self, name: &'static str, path: &Path) -> Result<PinnedLink, EbpfError> {
        match self {
            CgroupLink::Aya(link) => link
                .pin(path)
                .map_err(|e| EbpfError::program(name, "pin", e)),
            CgroupLink::Raw(fd) => {
                obj_pin(fd.as_fd(), path).map_err(|e| EbpfError::io("pinning", path, e))?;
                PinnedLink::from_pin(path).map_err(|e| EbpfError::program(name, "pin", e))
            }
        }
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 64]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised buffer laid out as the `union bpf_attr`
    // member `cmd` reads; the kernel accepts a shorter union when the rest is zero.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_LINK_CREATE` of `program` on the cgroup `target` with `attach_type`.
pub(crate) fn link_create(
    program: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 64];
    attr[0..4].copy_from_slice(&fd_u32(program)?.to_ne_bytes());
    attr[4..8].copy_from_slice(&fd_u32(target)?.to_ne_bytes());
    attr[8..12].copy_from_slice(&attach_type.to_ne_bytes());
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this new link fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_OBJ_PIN` of `fd` at `path`.
fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut attr = [0u8; 64];
    attr[0..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&fd_u32(fd)?.to_ne_bytes());
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

fn fd_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)
}
