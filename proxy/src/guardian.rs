//! The guardian: a small process of egressd's own (the same binary, as the
//! hidden `egressd guard`) that outlives an egressd killed without warning
//! (SIGKILL, the OOM killer) and undoes what must not outlast it: it kills
//! every process of the filtered cgroup and removes that cgroup, removes the
//! pins that kept the hooks attached meanwhile, and removes the files that
//! claim egressd is ready.
//!
//! egressd holds the write end of the guardian's stdin. Ending normally, it
//! writes [`RELEASE`] and waits for the guardian to exit; killed, its end of
//! the pipe closes with it, and the guardian, reading end-of-file without the
//! release, does its duties. A panic that unwinds past the [`Guardian`] drops
//! it unreleased: the guardian cleans up then too.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// What egressd writes when it ends normally and has cleaned up itself.
const RELEASE: &[u8] = b"released\n";

/// Longest the guardian waits for the killed cgroup to empty.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What the guardian undoes if egressd dies without releasing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Duties {
    /// A cgroup whose processes are killed and which is then removed.
    pub kill_cgroup: Option<PathBuf>,
    /// A pin directory whose pins are removed (after the kill: until the
    /// processes are gone, the pinned hooks keep their traffic blocked).
    pub pin_dir: Option<PathBuf>,
    /// Files removed (the ready file).
    pub remove: Vec<PathBuf>,
}

impl Duties {
    /// The guardian's command-line arguments (after `guard`).
    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(c) = &self.kill_cgroup {
            args.push("--kill-cgroup".into());
            args.push(c.clone().into_os_string());
        }
        if let Some(p) = &self.pin_dir {
            args.push("--pin-dir".into());
            args.push(p.clone().into_os_string());
        }
        for f in &self.remove {
            args.push("--remove".into());
            args.push(f.clone().into_os_string());
        }
        args
    }
}

/// Why the guardian could not be started or released.
#[derive(Debug, thiserror::Error)]
pub enum GuardianError {
    /// The process could not be started.
    #[error("cannot start the guardian process (`egressd guard`): {0}")]
    Spawn(std::io::Error),
    /// Telling it to stand down failed.
    #[error("cannot release the guardian process (pid {pid}): {cause}")]
    Release {
        /// Its pid.
        pid: u32,
        /// What failed.
        cause: std::io::Error,
    },
}

/// A running guardian. Release it once egressd has cleaned up itself.
#[derive(Debug)]
pub struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    /// Starts `egressd guard` with these duties, in a process group of its
    /// own (a terminal's Ctrl-C reaches egressd, which cleans up itself,
    /// not the guardian). The binary is this process's own image
    /// (`/proc/self/exe`), so an upgrade that replaced the file on disk
    /// does not change what runs.
    pub fn spawn(duties: &Duties) -> Result<Guardian, GuardianError> {
        Self::spawn_program(Path::new("/proc/self/exe"), duties)
    }

    fn spawn_program(program: &Path, duties: &Duties) -> Result<Guardian, GuardianError> {
        use std::os::unix::process::CommandExt as _;
        let mut child = Command::new(program)
            .arg("guard")
            .args(duties.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(GuardianError::Spawn)?;
        let stdin = child.stdin.take();
        Ok(Guardian { child, stdin })
    }

    /// Tells the guardian that egressd cleaned up itself, and waits for it.
    pub fn release(mut self) -> Result<(), GuardianError> {
        let pid = self.child.id();
        let err = |cause| GuardianError::Release { pid, cause };
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(RELEASE).map_err(err)?;
        }
        self.child.wait().map_err(err)?;
        Ok(())
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        // Unreleased (an error path or a panic): closing stdin without the
        // release makes the guardian clean up, and it is waited for, so what
        // it removes is gone when egressd exits.
        if self.stdin.take().is_some() {
            let _ = self.child.wait();
        }
    }
}

/// The guardian's side (`egressd guard`): waits until egressd releases it or
/// ends; returns what it had to undo (empty when released).
pub fn stand_guard(duties: &Duties, mut from_egressd: impl std::io::Read) -> Vec<String> {
    let mut got = Vec::new();
    // An error reading counts as the end: egressd is gone either way.
    let _ = from_egressd.read_to_end(&mut got);
    if got == RELEASE {
        return Vec::new();
    }
    undo(duties)
}

/// Kill, unpin, remove: in that order, so the pinned hooks stay until the
/// last process of the cgroup is gone. Best effort: each step says what it
/// did or why it could not.
fn undo(duties: &Duties) -> Vec<String> {
    let mut done = Vec::new();
    if let Some(cg) = &duties.kill_cgroup {
        done.push(kill_cgroup(cg));
    }
    if let Some(dir) = &duties.pin_dir {
        done.push(match egressd_ebpf::cleanup(dir) {
            Ok(removed) => format!("removed {} pins in {}", removed.len(), dir.display()),
            Err(e) => format!("could not remove the pins in {}: {e}", dir.display()),
        });
    }
    for f in &duties.remove {
        match std::fs::remove_file(f) {
            Ok(()) => done.push(format!("removed {}", f.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => done.push(format!("could not remove {}: {e}", f.display())),
        }
    }
    done
}

fn kill_cgroup(cg: &Path) -> String {
    if !cg.exists() {
        return format!("{} was already gone", cg.display());
    }
    match egressd_ebpf::kill_and_remove(cg, KILL_WAIT) {
        Ok(()) => format!("killed the processes of {} and removed it", cg.display()),
        Err(e) => format!(
            "could not kill the processes of {} and remove it: {e}",
            cg.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreleased_guardian_removes_its_files() {
        let tmp = tempfile::tempdir().unwrap();
        let ready = tmp.path().join("ready.json");
        std::fs::write(&ready, "{}").unwrap();
        let duties = Duties {
            remove: vec![ready.clone()],
            ..Duties::default()
        };
        assert!(stand_guard(&duties, RELEASE).is_empty());
        assert!(ready.exists(), "released: nothing is undone");
        // A release cut short is no release: egressd died while writing it.
        let done = stand_guard(&duties, &RELEASE[..4]);
        assert_eq!(done, [format!("removed {}", ready.display())]);
        std::fs::write(&ready, "{}").unwrap();
        let done = stand_guard(&duties, &b""[..]);
        assert_eq!(done, [format!("removed {}", ready.display())]);
        assert!(!ready.exists());
    }

    #[test]
    fn duties_become_arguments() {
        let d = Duties {
            kill_cgroup: Some("/cg/x".into()),
            pin_dir: Some("/sys/fs/bpf/x".into()),
            remove: vec!["/run/a".into(), "/run/b".into()],
        };
        let args: Vec<String> = d
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--kill-cgroup",
                "/cg/x",
                "--pin-dir",
                "/sys/fs/bpf/x",
                "--remove",
                "/run/a",
                "--remove",
                "/run/b"
            ]
        );
    }
}
