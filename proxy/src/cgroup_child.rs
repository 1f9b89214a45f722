//! The child cgroups egressd makes for the processes it filters itself:
//! `egressd exec`'s command and `egressd boot`'s self-test probe. Each is a
//! fresh, uniquely named directory (`<prefix>-<pid>-<n>`) under a parent,
//! removed by RAII: dropping the guard kills whatever still runs inside and
//! removes the directory. Directories of the same prefix whose owning egressd
//! pid is gone (a killed run) are swept away before a new one is made.
//!
//! The kernel hooks are attached to these directories, never to the cgroup v2
//! root.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use egressd_ebpf::{CgroupEntry, ChildCgroup, EbpfError, cgroup2_mount};

/// What can go wrong with a child cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/cgroup` has no cgroup v2 line (a v1-only system).
    #[error(
        "this process is in no cgroup v2 hierarchy (/proc/self/cgroup has no `0::` line); egressd needs cgroup v2"
    )]
    NotInCgroup2,
    /// A file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not a `source()`).
        cause: std::io::Error,
    },
    /// The kernel side refused (mount not found, mkdir, cgroup.procs).
    #[error(transparent)]
    Kernel(#[from] EbpfError),
}

/// The cgroup v2 directory this process runs in (mount point joined with the
/// `0::` path of `/proc/self/cgroup`).
pub fn own_cgroup() -> Result<PathBuf, CgroupError> {
    let path = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(path).map_err(|cause| CgroupError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let rel = own_cgroup_in(&text).ok_or(CgroupError::NotInCgroup2)?;
    Ok(cgroup2_mount()?.join(rel.trim_start_matches('/')))
}

/// The cgroup v2 mount point (from `/proc/self/mountinfo`).
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    Ok(cgroup2_mount()?)
}

/// The `0::` path in a `/proc/PID/cgroup` text.
fn own_cgroup_in(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A fresh child cgroup that egressd owns. See the module documentation.
#[derive(Debug)]
pub struct OwnedCgroup {
    inner: ChildCgroup,
    prefix: String,
}

/// Distinguishes several child cgroups made by one process.
static NEXT: AtomicU32 = AtomicU32::new(0);

impl OwnedCgroup {
    /// Make `parent/<prefix>-<pid>-<n>`, after removing leftovers of dead
    /// egressd processes with the same prefix.
    pub fn create(parent: &Path, prefix: &str) -> Result<OwnedCgroup, CgroupError> {
        sweep_leftovers(parent, prefix);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Ok(OwnedCgroup {
            inner: ChildCgroup::create(parent, &name)?,
            prefix: prefix.to_owned(),
        })
    }

    /// Where the pins of the hooks on this cgroup go: a directory of its own
    /// under the bpf filesystem, named like the cgroup, so that no two egressd
    /// on a host share one. Pin directories of the same prefix whose egressd
    /// and guardian are both gone (both killed) are removed first.
    pub fn pin_dir(&self) -> PathBuf {
        let root = Path::new(egressd_ebpf::DEFAULT_PIN_DIR)
            .parent()
            .unwrap_or(Path::new("/sys/fs/bpf"));
        for pins in left_by_dead_owners(root, &self.prefix) {
            tracing::info!(pins = %pins.display(), "removing pins left by a killed egressd");
            if let Err(e) = egressd_ebpf::cleanup(&pins) {
                tracing::warn!(error = %e, "leftover pins not removed");
            }
        }
        let name = self.path().file_name().unwrap_or_default();
        root.join(name)
    }

    /// Kill every process inside (the directory stays) and wait, briefly,
    /// until the kernel says none is left.
    pub async fn kill_all(&self) {
        let path = self.path();
        if let Err(e) = std::fs::write(path.join("cgroup.kill"), "1") {
            tracing::warn!(cgroup = %path.display(), error = %e, "cannot kill what is left in the cgroup");
            return;
        }
        for _ in 0..250 {
            if !populated(path) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::warn!(cgroup = %path.display(), "processes of the cgroup are still exiting");
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// The cgroup id the kernel programs report for processes inside.
    pub fn id(&self) -> Result<u64, CgroupError> {
        Ok(self.inner.id()?)
    }

    /// A handle that moves the calling process in; safe between `fork` and
    /// `exec` (see [`OwnedCgroup::spawn_inside`]).
    pub fn entry(&self) -> CgroupEntry {
        self.inner.entry()
    }

    /// Arrange for `cmd`'s process to enter this cgroup before it executes
    /// anything, so not one instruction of the program runs unfiltered.
    pub fn spawn_inside(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        let entry = self.entry();
        // SAFETY: the closure only calls `CgroupEntry::enter`, which uses
        // open/write/close (async-signal-safe) on a path prepared beforehand.
        unsafe {
            cmd.pre_exec(move || entry.enter());
        }
    }

    /// Kill what runs inside and remove the directory now (dropping does the
    /// same, logging instead of returning a failure).
    pub fn remove(self) -> Result<(), CgroupError> {
        Ok(self.inner.remove()?)
    }
}

/// Remove `parent/<prefix>-<pid>-*` directories whose pid is not running
/// (left by a killed egressd). Best effort: what cannot be removed is logged.
pub fn sweep_leftovers(parent: &Path, prefix: &str) {
    for cgroup in left_by_dead_owners(parent, prefix) {
        tracing::info!(cgroup = %cgroup.display(), "removing a child cgroup left by a killed egressd");
        if let Err(e) = egressd_ebpf::kill_and_remove(&cgroup, std::time::Duration::from_secs(2)) {
            tracing::warn!(error = %e, "leftover child cgroup not removed");
        }
    }
}

/// The entries `dir/<prefix>-<pid>-<n>` whose egressd (`pid`) is not running.
fn left_by_dead_owners(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .and_then(|n| owner_pid(n, prefix))
                .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
        })
        .map(|entry| entry.path())
        .collect()
}

/// Whether `cgroup.events` says a process is still inside (a cgroup that
/// cannot be read counts as empty: it is gone).
fn populated(cgroup: &Path) -> bool {
    std::fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l == "populated 1"))
}

/// The pid in `<prefix>-<pid>-<n>`.
fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_v2_line_of_proc_cgroup() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/egressd.service\n";
        assert_eq!(own_cgroup_in(text), Some("/system.slice/egressd.service"));
        assert_eq!(own_cgroup_in("4:memory:/x\n"), None);
    }

    #[test]
    fn leftover_names_carry_their_owner() {
        assert_eq!(owner_pid("egressd-exec-123-0", "egressd-exec"), Some(123));
        assert_eq!(owner_pid("egressd-exec-123", "egressd-exec"), None);
        assert_eq!(owner_pid("egressd-execx-123-0", "egressd-exec"), None);
        assert_eq!(owner_pid("other-123-0", "egressd-exec"), None);
    }
}
