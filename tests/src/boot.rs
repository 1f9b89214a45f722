//! A running `egressd boot` as a runner starts it: the kernel hooks on a
//! job cgroup of its own, a control socket for `egressd job start|end`
//! (with GitHub-style environments), its journal and ready file in a temp
//! dir; killed on drop. Set-up failures panic with what went wrong.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use egressd_audit::{JobTags, Record};

use crate::bin::egressd_bin;
use crate::cgroup::JobCgroup;
use crate::cmd::clear_proxy_env;

/// Every record in a journal directory.
pub fn records(dir: &Path) -> Vec<Record> {
    egressd_audit::reader::read_dir(dir)
        .map(|it| it.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// Wait for `child` (bounded), killing it when the time is up.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait for the process") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `egressd boot` attached to a job cgroup, killed on drop.
pub struct Boot {
    /// The `egressd boot` process.
    pub child: Child,
    dir: tempfile::TempDir,
    /// The cgroup the hooks are attached to: the runner's jobs.
    pub jobs: JobCgroup,
    /// Where egressd's sd_notify datagrams arrive (its `NOTIFY_SOCKET`).
    notify: std::os::unix::net::UnixDatagram,
}

impl Boot {
    /// Start it with `policy_args` (`$DIR` stands for its directory) and
    /// `extra` options, resolving through nothing (127.0.0.1:9).
    pub fn start(policy_args: &[impl AsRef<str>], extra: &[&str]) -> Boot {
        Boot::start_resolving(policy_args, extra, "127.0.0.1:9")
    }

    /// [`Boot::start`] with `dns_upstream` as its upstream resolver.
    pub fn start_resolving(
        policy_args: &[impl AsRef<str>],
        extra: &[&str],
        dns_upstream: &str,
    ) -> Boot {
        let dir = tempfile::tempdir().expect("a temp dir");
        let jobs = JobCgroup::create();
        let log = std::fs::File::create(dir.path().join("boot.log")).expect("create boot.log");
        let notify_path = dir.path().join("notify.sock");
        let notify =
            std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        notify
            .set_nonblocking(true)
            .expect("a non-blocking notify socket");
        let mut cmd = Command::new(egressd_bin());
        cmd.arg("boot")
            .args(policy_args.iter().map(|a| {
                a.as_ref()
                    .replace("$DIR", &dir.path().display().to_string())
            }))
            .arg("--cgroup")
            .arg(jobs.path())
            .arg("--control-socket")
            .arg(dir.path().join("control.sock"))
            .arg("--audit-dir")
            .arg(dir.path().join("audit"))
            .arg("--ready-file")
            .arg(dir.path().join("ready.json"))
            .args(["--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
            .args([
                "--dns-upstream",
                dns_upstream,
                "--runner",
                "it-runner",
                "--labels",
                "linux",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        clear_proxy_env(&mut cmd);
        let mut boot = Boot {
            child: cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start egressd boot: {e}")),
            dir,
            jobs,
            notify,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !boot.dir.path().join("ready.json").exists() {
            if let Some(s) = boot.child.try_wait().expect("wait for egressd boot") {
                panic!("egressd boot exited ({s}) before ready:\n{}", boot.log());
            }
            assert!(
                Instant::now() < deadline,
                "boot not ready in 60 s:\n{}",
                boot.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        boot
    }

    /// Every sd_notify message received so far.
    pub fn notifications(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.notify.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// `f` in its directory.
    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("boot.log")).unwrap_or_default()
    }

    /// Its ready file.
    pub fn ready(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path("ready.json")).expect("read ready.json");
        serde_json::from_str(&text).expect("ready.json is JSON")
    }

    /// Every record of its journal so far.
    pub fn records(&self) -> Vec<Record> {
        records(&self.path("audit"))
    }

    /// The records of the job tagged `tags`.
    pub fn records_of(&self, tags: &JobTags) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.job.as_deref() == Some(tags))
            .collect()
    }

    /// `egressd job ARGS` with a GitHub-style environment.
    pub fn job(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(egressd_bin());
        cmd.arg("job")
            .args(args)
            .arg("--control-socket")
            .arg(self.path("control.sock"));
        for v in [
            "GITHUB_REPOSITORY",
            "GITHUB_WORKFLOW",
            "GITHUB_RUN_ID",
            "GITHUB_RUN_ATTEMPT",
            "GITHUB_JOB",
            "GITHUB_STEP_SUMMARY",
        ] {
            cmd.env_remove(v);
        }
        cmd.envs(env.iter().copied());
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run egressd job: {e}"))
    }

    /// curl from inside the job cgroup; its exit code.
    pub fn curl_from_job(&self, ip: &str) -> (i32, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", &format!("http://{ip}:8080/")]);
        clear_proxy_env(&mut cmd);
        self.jobs.spawn_inside(&mut cmd);
        let out = cmd.output().expect("run curl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// SIGTERM, then wait (bounded) for its exit.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on the child we spawned and have not reaped.
        unsafe {
            libc::kill(
                i32::try_from(self.child.id()).expect("a pid fits pid_t"),
                libc::SIGTERM,
            );
        }
        wait_bounded(&mut self.child, Duration::from_secs(30))
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The environment GitHub gives a job's hooks.
pub fn github_env<'a>(
    repo: &'a str,
    run_id: &'a str,
    job: &'a str,
) -> Vec<(&'static str, &'a str)> {
    vec![
        ("GITHUB_REPOSITORY", repo),
        ("GITHUB_WORKFLOW", "CI"),
        ("GITHUB_RUN_ID", run_id),
        ("GITHUB_RUN_ATTEMPT", "1"),
        ("GITHUB_JOB", job),
    ]
}

/// The job tags egressd records for [`github_env`].
pub fn tags(repo: &str, run_id: &str, job: &str) -> JobTags {
    JobTags {
        repository: Some(repo.into()),
        workflow: Some("CI".into()),
        run_id: Some(run_id.into()),
        run_attempt: Some("1".into()),
        job: Some(job.into()),
    }
}

/// Why `egressd audit suggest` gave no policy.
#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    /// It could not be started.
    #[error("cannot run egressd audit suggest: {0}")]
    Spawn(#[source] std::io::Error),
    /// It failed (its stderr).
    #[error("audit suggest: {0}")]
    Failed(String),
    /// It printed something that is not text.
    #[error("audit suggest printed something that is not UTF-8")]
    NotText,
}

/// `egressd audit suggest` on the journal in `audit` for `repository`: the
/// policy it suggests (YAML).
pub fn audit_suggest(audit: &Path, repository: &str) -> Result<String, SuggestError> {
    let out = Command::new(egressd_bin())
        .args(["audit", "suggest", "--dir"])
        .arg(audit)
        .args(["--repository", repository])
        .output()
        .map_err(SuggestError::Spawn)?;
    if !out.status.success() {
        return Err(SuggestError::Failed(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| SuggestError::NotText)
}
