//! The child cgroup W7's eBPF row runs its client in: a uniquely named
//! directory under the cgroup v2 mount (never the root itself), emptied and
//! removed on drop, and leftovers of killed runs swept before a new one.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Name prefix of the bench's cgroups; the creating process's pid follows.
const PREFIX: &str = "egressd-bench-";

/// A child cgroup of the cgroup v2 root, removed (after killing what is left
/// in it: only processes this harness placed there) when dropped.
#[derive(Debug)]
pub struct ChildCgroup {
    path: PathBuf,
}

impl ChildCgroup {
    /// Creates `<cgroup2 mount>/egressd-bench-<pid>`.
    pub fn create() -> anyhow::Result<Self> {
        let mount = cgroup2_mount()?;
        sweep_leftovers(&mount);
        let path = mount.join(format!("{PREFIX}{}", std::process::id()));
        if path.exists() {
            // Our own pid from an earlier run of this process: empty it first.
            remove(&path);
        }
        std::fs::create_dir(&path)
            .with_context(|| format!("create the cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    /// The cgroup's directory (what `egressd run --cgroup` takes).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        remove(&self.path);
    }
}

/// Moves the calling process (all its threads) into the cgroup at `dir` and
/// checks that the kernel says so. Call it before creating any socket: a
/// socket belongs to the cgroup it was created in.
pub fn enter(dir: &Path) -> anyhow::Result<()> {
    let pid = std::process::id();
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .with_context(|| format!("move pid {pid} into {}", dir.display()))?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .context("cgroup path without a name")?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let inside = own
        .lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .any(|p| p.trim_end().ends_with(&format!("/{name}")));
    if !inside {
        bail!(
            "pid {pid} is not in {} after the move: {own}",
            dir.display()
        );
    }
    Ok(())
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup` on
/// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    parse_mountinfo(&info).context("no cgroup2 file system is mounted (see /proc/self/mountinfo)")
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = mount.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes bench cgroups whose creating process no longer exists.
fn sweep_leftovers(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            tracing::info!(cgroup = %entry.path().display(), "removing a leftover bench cgroup");
            remove(&entry.path());
        }
    }
}

/// Kills what is left in the cgroup (the bench's own client processes) and
/// removes the directory, retrying while the kernel still lists members.
fn remove(path: &Path) {
    for _ in 0..150 {
        for pid in procs(path).unwrap_or_default() {
            // SAFETY: kill(2) on a pid read from this bench cgroup, which only
            // holds processes the harness put there; no memory is touched.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    tracing::warn!(cgroup = %path.display(), "could not remove the bench cgroup; remove it by hand (rmdir)");
}

fn procs(path: &Path) -> io::Result<Vec<libc::pid_t>> {
    Ok(std::fs::read_to_string(path.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 25 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                      42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let escaped = "41 25 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_mountinfo(escaped), Some(PathBuf::from("/mnt/cg two")));
        assert_eq!(
            parse_mountinfo("42 25 0:39 / /x rw - cgroup cgroup rw\n"),
            None
        );
    }
}
