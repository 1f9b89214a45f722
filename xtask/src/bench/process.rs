//! Processes the harness starts: kill-on-drop guards, readiness waits, and
//! CPU/RSS readings of a process tree from /proc.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A started process group, killed (SIGKILL to the whole group) and reaped on drop.
pub struct Guard {
    name: String,
    child: Option<Child>,
}

impl Guard {
    /// Starts `cmd` in a new process group, stdout/stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// Process id of the group leader.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails if the process already exited (a peer that rejected its config).
    pub fn check_alive(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "{} exited early ({status}); its log {}:\n{tail}",
                self.name,
                log.display()
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the leader to exit on its own (a client
    /// process); kills the group if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already reaped", self.name);
        };
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                signal_group(child.id(), libc::SIGKILL);
                self.child = None;
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to the group and waits up to `grace` for the leader to exit.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        signal_group(child.id(), libc::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if child.try_wait()?.is_some() {
                signal_group(child.id(), libc::SIGKILL);
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("{} did not exit within {grace:?} of SIGTERM", self.name)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), libc::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group we created; no memory is touched.
    unsafe {
        libc::kill(-pid, sig);
    }
}

/// A free loopback TCP port (bound, then released; the race is acceptable here).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    // The same number must be free for UDP too (DNS peers bind both).
    let _u = UdpSocket::bind(("127.0.0.1", port))?;
    Ok(port)
}

/// Waits until a TCP connect to `addr` succeeds, or fails after `timeout`.
pub fn wait_tcp(
    addr: SocketAddr,
    timeout: Duration,
    guard: &mut Guard,
    log: &Path,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        guard.check_alive(log)?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "nothing listens on {addr} {timeout:?} after start (log: {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Waits until a file exists (egressd's --ready-file).
pub fn wait_file(
    path: &Path,
    timeout: Duration,
    guard: &mut Guard,
    log: &Path,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        guard.check_alive(log)?;
        if start.elapsed() > timeout {
            bail!(
                "{} not created {timeout:?} after start (log: {})",
                path.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    Ok(())
}

/// CPU time and memory of a process and all its descendants.
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeUsage {
    /// utime + stime of every live process of the tree, in microseconds.
    pub cpu_us: u64,
    /// Sum of VmRSS, in bytes.
    pub rss: u64,
}

/// Clock ticks per second of /proc/PID/stat's times.
fn ticks_per_s() -> u64 {
    // SAFETY: sysconf has no memory effects.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

/// Reads [`TreeUsage`] for `root` and its descendants.
pub fn tree_usage(root: u32) -> io::Result<TreeUsage> {
    let tick = ticks_per_s();
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some(fields) = stat_fields(&stat)
        {
            parents.push((pid, fields.0, fields.1));
        }
    }
    let mut tree = vec![root];
    let mut changed = true;
    while changed {
        changed = false;
        for (pid, ppid, _) in &parents {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                changed = true;
            }
        }
    }
    let mut usage = TreeUsage::default();
    for (pid, _, ticks) in parents.iter().filter(|(p, _, _)| tree.contains(p)) {
        usage.cpu_us += ticks * 1_000_000 / tick;
        usage.rss += vm_rss(*pid).unwrap_or(0);
    }
    Ok(usage)
}

/// (ppid, utime + stime in ticks) from a /proc/PID/stat line.
fn stat_fields(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Raises this process's open-file limit (children inherit it): 10,000 idle
/// tunnels need ~40,000 descriptors across the harness and the proxy.
pub fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            let new = libc::rlimit {
                rlim_cur: want,
                rlim_max: want.max(lim.rlim_max),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}
