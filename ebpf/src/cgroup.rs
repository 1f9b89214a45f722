//! cgroup v2 plumbing: where the hierarchy is mounted, which directory a cgroup
//! id names (for audit `process.cgroup`), the container id a path shows, and
//! [`ChildCgroup`], a uniquely named child cgroup removed when dropped.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::EbpfError;

/// The cgroup v2 mount point, read from `/proc/self/mountinfo` (never assumed).
pub fn cgroup2_mount() -> Result<PathBuf, EbpfError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| EbpfError::io("reading", "/proc/self/mountinfo", e))?;
    cgroup2_mount_in(&text).ok_or(EbpfError::NoCgroup2)
}

/// The first cgroup2 mount point in a mountinfo text.
fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount_point)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && oct.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = oct
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The id the kernel reports for a cgroup directory (`bpf_get_current_cgroup_id`):
/// its inode number on the cgroup2 filesystem.
pub fn cgroup_id_of(path: &Path) -> Result<u64, EbpfError> {
    let meta = std::fs::metadata(path).map_err(|e| EbpfError::io("reading", path, e))?;
    Ok(meta.ino())
}

/// How deep a cgroup directory is below the cgroup2 root (the root is level 0), as
/// `bpf_skb_ancestor_cgroup_id` counts.
pub(crate) fn cgroup_level(path: &Path) -> Result<u32, EbpfError> {
    let root = cgroup2_mount()?;
    let canon = |p: &Path| {
        p.canonicalize()
            .map_err(|e| EbpfError::io("resolving", p, e))
    };
    let (root, path) = (canon(&root)?, canon(path)?);
    let below = path
        .strip_prefix(&root)
        .map_err(|_| EbpfError::NotACgroup(path.clone()))?;
    u32::try_from(below.components().count())
        .map_err(|_| EbpfError::Config(format!("{} is nested too deep", path.display())))
}

/// Best effort: the path of the cgroup with this id, relative to the cgroup2 mount
/// and starting with `/` (as `/proc/PID/cgroup` shows it). `None` when the cgroup
/// is gone or the hierarchy cannot be read.
/// Asks the kernel directly (`open_by_handle_at`, needs `CAP_DAC_READ_SEARCH`) and
/// falls back to searching the hierarchy.
pub fn cgroup_path_of_id(id: u64) -> Option<String> {
    let root = cgroup2_mount().ok()?;
    let found = open_by_cgroup_id(&root, id).or_else(|| find_by_inode(&root, id, 0))?;
    let rel = found.strip_prefix(&root).ok()?;
    Some(format!("/{}", rel.display()))
}

/// The directory of a cgroup id through its kernfs file handle (the id itself).
fn open_by_cgroup_id(root: &Path, id: u64) -> Option<PathBuf> {
    /// `struct file_handle` with the 8-byte kernfs handle inline.
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = std::fs::File::open(root).ok()?;
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is a valid `file_handle` header followed by `handle_bytes`
    // bytes; the mount fd is open for the duration of the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            std::os::fd::AsRawFd::as_raw_fd(&mount),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let dir = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
    .ok()?;
    Some(path)
}

/// Depth-first search for a directory with this inode (cgroup trees are shallow).
fn find_by_inode(dir: &Path, ino: u64, depth: u32) -> Option<PathBuf> {
    if std::fs::metadata(dir).ok()?.ino() == ino {
        return Some(dir.to_path_buf());
    }
    if depth > 16 {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && let Some(p) = find_by_inode(&entry.path(), ino, depth + 1)
        {
            return Some(p);
        }
    }
    None
}

/// The container id a cgroup path shows, if any: Docker (`/docker/<id>`,
/// `docker-<id>.scope`), containerd/CRI (`cri-containerd-<id>.scope`), podman
/// (`libpod-<id>.scope`). Ids are 64 lowercase hex characters.
pub fn container_id_of_cgroup_path(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|segment| {
        let segment = segment.strip_suffix(".scope").unwrap_or(segment);
        let id = segment.rsplit(['-', ':']).next().unwrap_or(segment);
        let is_id = id.len() == 64
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        is_id.then(|| id.to_string())
    })
}

/// A child cgroup egressd created (for `egressd exec` and the privileged tests).
/// Dropping it kills what still runs inside (`cgroup.kill`) and removes the directory.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
    procs: CString,
}

impl ChildCgroup {
    /// Creates `parent/name`; a leftover of that name from a killed run is removed first.
    pub fn create(parent: &Path, name: &str) -> Result<Self, EbpfError> {
        let path = parent.join(name);
        if path.exists() {
            drop(Self::adopt(path.clone())?);
        }
        std::fs::create_dir(&path).map_err(|e| EbpfError::io("creating cgroup", &path, e))?;
        Self::adopt(path)
    }

    fn adopt(path: PathBuf) -> Result<Self, EbpfError> {
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| EbpfError::NotACgroup(path.clone()))?;
        Ok(Self { path, procs })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its cgroup id (what the kernel programs report).
    pub fn id(&self) -> Result<u64, EbpfError> {
        cgroup_id_of(&self.path)
    }

    /// Moves a process into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), EbpfError> {
        let procs = self.path.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|e| EbpfError::io("writing", procs, e))
    }

    /// A handle that moves the calling process into this cgroup, for
    /// `CommandExt::pre_exec` (it outlives the borrow of `self`).
    pub fn entry(&self) -> CgroupEntry {
        CgroupEntry {
            procs: self.procs.clone(),
        }
    }

    /// Kills what runs inside and removes the directory, waiting briefly for the
    /// kernel to let go of it.
    pub fn remove(mut self) -> Result<(), EbpfError> {
        self.remove_now()
    }

    fn remove_now(&mut self) -> Result<(), EbpfError> {
        kill_and_remove(&self.path, Duration::from_secs(2))
    }
}

/// Kills every process of the cgroup at `path` (`cgroup.kill`) and removes
/// the directory, retrying for up to `wait` while the kernel lets go of it.
/// A directory that is not there is not an error.
pub fn kill_and_remove(path: &Path, wait: Duration) -> Result<(), EbpfError> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill exists since Linux 5.14; ignore its absence.
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    let deadline = std::time::Instant::now() + wait;
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(EbpfError::io("removing cgroup", path, e));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove_now() {
            tracing::warn!(error = %e, "child cgroup left behind");
        }
    }
}

/// Moves the calling process into a cgroup using only `open`/`write`/`close`, so it
/// is safe between `fork` and `exec`.
#[derive(Debug, Clone)]
pub struct CgroupEntry {
    procs: CString,
}

impl CgroupEntry {
    /// Writes "0" (the calling process) to the cgroup's `cgroup.procs`.
    pub fn enter(&self) -> std::io::Result<()> {
        // SAFETY: `procs` is a valid NUL-terminated path; the buffer outlives the call.
        unsafe {
            let fd = libc::open(self.procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(err);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let text = "25 1 0:23 / /sys rw - sysfs sysfs rw\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_mount_in("25 1 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        let escaped = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(escaped),
            Some(PathBuf::from("/mnt/cg two"))
        );
    }

    #[test]
    fn container_ids_from_paths() {
        let id = "a".repeat(64);
        assert_eq!(
            container_id_of_cgroup_path(&format!("/docker/{id}")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_of_cgroup_path(&format!("/system.slice/docker-{id}.scope")),
            Some(id.clone())
        );
        assert_eq!(
            container_id_of_cgroup_path(&format!("/kubepods/pod1/cri-containerd-{id}.scope")),
            Some(id)
        );
        assert_eq!(
            container_id_of_cgroup_path("/user.slice/user-1000.slice"),
            None
        );
    }
}
