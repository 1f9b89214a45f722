//! A step of a job, run as a runner runs one: a shell script (`sh`) in a
//! job cgroup, with a fresh directory `$T`, `$HOME` inside it, the test CA
//! in `$CA`, a private resolv.conf naming one resolver, and an environment
//! holding only what the step is given (no proxy variables, none of the
//! tool settings this machine's environment carries); bounded in time.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::cgroup::JobCgroup;

/// Why a step has no outcome.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its directory could not be prepared.
    #[error("cannot prepare the step's directory: {0}")]
    Prepare(#[source] std::io::Error),
    /// `unshare` (or the shell) could not be started.
    #[error("cannot start the step: {0}")]
    Spawn(#[source] std::io::Error),
    /// Its output could not be collected.
    #[error("cannot collect the step's output: {0}")]
    Wait(#[source] std::io::Error),
    /// It ran past its time limit and was killed.
    #[error("the step did not end within {0:?}")]
    Timeout(Duration),
}

/// A finished step: its exit status, output and directory.
pub struct Step {
    dir: tempfile::TempDir,
    out: Output,
}

impl Step {
    /// Its exit code.
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    /// What the step wrote to `$T/<name>`, trimmed ("" when it wrote nothing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Its stdout and stderr.
    pub fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
}

/// Run `script` in `cgroup` with `ca` as `$CA`, `resolver` (an IP address)
/// in its resolv.conf and `env` added; killed after `limit`.
pub fn run(
    cgroup: &JobCgroup,
    ca: &Path,
    resolver: &str,
    script: &str,
    env: &[(&str, &str)],
    limit: Duration,
) -> Result<Step, Error> {
    let dir = tempfile::tempdir().map_err(Error::Prepare)?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("home")).map_err(Error::Prepare)?;
    // apt's download method runs as _apt: let it into the step's directory.
    std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(Error::Prepare)?;
    std::fs::write(d.join("resolv.conf"), format!("nameserver {resolver}\n"))
        .map_err(Error::Prepare)?;
    std::fs::write(d.join("step.sh"), script).map_err(Error::Prepare)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c"])
        .arg("mount --bind \"$T/resolv.conf\" /etc/resolv.conf && exec sh \"$T/step.sh\"")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .env("T", d)
        .env("HOME", d.join("home"))
        .env("CA", ca)
        .envs(env.iter().copied())
        .current_dir(d)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cgroup.spawn_inside(&mut cmd);
    let child = cmd.spawn().map_err(Error::Spawn)?;
    let out = wait_output(child, cgroup, limit)?;
    Ok(Step { dir, out })
}

/// `wait_with_output`, bounded: the child and whatever it started in
/// `cgroup` (which would hold its pipes open) are killed when the time is up.
fn wait_output(child: Child, cgroup: &JobCgroup, limit: Duration) -> Result<Output, Error> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let _ = waiter.join();
            out.map_err(Error::Wait)
        }
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on our child, still unreaped (the waiter
                // has not returned).
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            cgroup.kill_all();
            let _ = waiter.join();
            Err(Error::Timeout(limit))
        }
    }
}
