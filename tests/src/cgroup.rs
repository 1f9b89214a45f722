//! Child cgroups standing in for a runner's jobs: created under this
//! process's own cgroup with a unique name, entered by commands before they
//! execute, killed and removed on drop.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Whether a cgroup path (as in /proc/PID/cgroup) still exists.
pub fn cgroup_exists(rel: &str) -> bool {
    cgroup2_mount().join(rel.trim_start_matches('/')).exists()
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .expect("a cgroup2 mount")
}

/// The cgroup this process runs in.
fn own_cgroup() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line");
    cgroup2_mount().join(rel.trim_start_matches('/'))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A uniquely named child cgroup standing in for the runner's jobs;
/// dropping it kills what runs inside and removes it. Leftovers of killed
/// runs (dead pid in the name) are removed first.
pub struct JobCgroup {
    path: PathBuf,
    procs: CString,
}

impl JobCgroup {
    /// Create `<own cgroup>/egressd-it-jobs-<pid>-<n>`.
    pub fn create() -> JobCgroup {
        let parent = own_cgroup();
        for e in std::fs::read_dir(&parent)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", parent.display()))
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("egressd-it-jobs-")
                && let Some((pid, _)) = rest.split_once('-')
                && !Path::new("/proc").join(pid).exists()
            {
                remove_cgroup(&e.path());
            }
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("egressd-it-jobs-{}-{n}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", path.display()));
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("a cgroup path has no NUL byte");
        JobCgroup { path, procs }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Kill every process inside (the cgroup stays).
    pub fn kill_all(&self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
    }

    /// Make `cmd` enter the cgroup before it executes.
    pub fn spawn_inside(&self, cmd: &mut Command) {
        let procs = self.procs.clone();
        // SAFETY: only open/write/close (async-signal-safe) between fork
        // and exec, on a path prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n == 1 { Ok(()) } else { Err(err) }
            });
        }
    }
}

fn remove_cgroup(path: &Path) {
    let _ = std::fs::write(path.join("cgroup.kill"), "1");
    for _ in 0..100 {
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}
