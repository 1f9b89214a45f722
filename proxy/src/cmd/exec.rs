//! `egressd exec`: run one command under the filter. A fresh child cgroup is
//! made (under `--cgroup`, or under the cgroup egressd runs in), the kernel
//! hooks are attached to it and nowhere else, the command starts inside it
//! (it enters the cgroup before it executes), egressd waits for it, prints
//! the summary of what it reached and what was denied, removes everything
//! (hooks, cgroup, leftover processes; also on Ctrl-C, SIGTERM or a panic)
//! and returns the command's exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use egressd_audit::{reader, summary};

use crate::cgroup_child::{self, OwnedCgroup};
use crate::cmd::UsageError;
use crate::daemon::{self, Defaults, Options};
use crate::guardian::{Duties, Guardian};

/// Options of `egressd exec`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example (as root):\n  \
    egressd exec --policy policy.yaml -- cargo build\n\n\
    The summary goes to stderr; the command's own output is untouched. The\n\
    exit code is the command's (128+N when a signal N ended it).")]
pub struct Args {
    /// The policy YAML.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Also write the summary (Markdown) to FILE.
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Enforcer options (as for `egressd run`).
    #[command(flatten)]
    pub options: Box<Options>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.options.no_ebpf {
        return Err(UsageError(
            "`egressd exec` filters through the kernel hooks; --no-ebpf cannot be used with it"
                .into(),
        )
        .into());
    }
    if args.options.pin {
        return Err(UsageError(
            "`egressd exec` always pins its hooks in a directory of its own and removes them when the command ends; drop --pin"
                .into(),
        )
        .into());
    }
    let loaded = crate::reload::load(&args.policy).map_err(|e| UsageError(e.to_string()))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let parent = match &args.options.cgroup {
        Some(p) => p.clone(),
        None => cgroup_child::own_cgroup()
            .context("cannot find the cgroup egressd runs in; pass --cgroup")?,
    };
    // The journal: --audit-dir, or a temporary one for this run only.
    let temp_audit = match &args.options.audit_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("egressd-exec-audit-")
                .tempdir()
                .context("cannot create a temporary audit directory; pass --audit-dir")?,
        ),
    };
    let cgroup = OwnedCgroup::create(&parent, "egressd-exec")
        .with_context(|| format!("cannot create a child cgroup under {}", parent.display()))?;
    // Fail closed: the hooks are pinned, so that if egressd is killed they
    // stay (the command's traffic refused) until the guardian, a process of
    // egressd's own outside the cgroup, has killed every process of the
    // command; only then does it remove the pins and the cgroup. The command
    // never outlives enforcement.
    let pin_dir = cgroup.pin_dir();
    let guardian = Guardian::spawn(&Duties {
        kill_cgroup: Some(cgroup.path().to_owned()),
        pin_dir: Some(pin_dir.clone()),
        remove: Vec::new(),
    })?;
    let defaults = Defaults {
        cgroup: Some(cgroup.path().to_owned()),
        listen: "127.0.0.1:0".parse()?,
        dns_listen: "127.0.0.1:0".parse()?,
        audit_dir: temp_audit.as_ref().map_or_else(
            || PathBuf::from(daemon::DEFAULT_AUDIT_DIR),
            |t| t.path().to_owned(),
        ),
    };
    let mut options = args.options.clone();
    // The hooks go to the fresh child, whatever --cgroup named (its parent).
    options.cgroup = None;
    let mut plan = daemon::plan(&options, loaded.policy, None, defaults)?;
    if let Some(k) = plan.kernel.as_mut() {
        k.pin_dir = Some(pin_dir.clone());
        k.keep_pins = false;
    }
    let runtime = crate::cmd::runtime()?;
    let outcome = runtime.block_on(supervise(plan, &args, &cgroup));
    // Everything the command left behind dies with the cgroup.
    if let Err(e) = cgroup.remove() {
        tracing::error!(error = %e, "the child cgroup could not be removed");
    }
    // Pins a failed start may have left (a clean shutdown removed its own).
    if let Err(e) = egressd_ebpf::cleanup(&pin_dir) {
        tracing::error!(error = %e, "the pins of this run could not be removed");
    }
    if let Err(e) = guardian.release() {
        tracing::warn!(error = %e, "the guardian");
    }
    drop(temp_audit);
    outcome
}

async fn supervise(
    plan: daemon::Plan,
    args: &Args,
    cgroup: &OwnedCgroup,
) -> anyhow::Result<ExitCode> {
    let audit_dir = plan.audit_dir.clone();
    let started = egressd_audit::time_format::now();
    let mut running = daemon::start(plan).await?;
    if let Some(path) = &args.options.ready_file {
        running.write_ready_file(path)?;
    }
    let waited = run_command(args, cgroup).await;
    // What the command left running dies before the hooks go, so that not
    // one packet of it leaves unfiltered.
    cgroup.kill_all().await;
    // Every decision the command caused is recorded before the command saw
    // its outcome; shutdown drains the kernel's deny events and waits for the
    // closing records of open tunnels.
    let shutdown = running.shutdown().await;
    let status = waited?;
    shutdown?;
    let sum = tokio::task::spawn_blocking(move || summarize_since(&audit_dir, started))
        .await
        .context("the summary task failed")??;
    let markdown = sum.to_markdown();
    eprintln!("\n{markdown}");
    if let Some(path) = &args.summary {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(status)
}

/// Start the command inside the cgroup and wait; SIGINT/SIGTERM to egressd
/// are passed on to it (a terminal's Ctrl-C reaches both anyway).
async fn run_command(args: &Args, cgroup: &OwnedCgroup) -> anyhow::Result<ExitCode> {
    use tokio::signal::unix::{SignalKind, signal};
    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| UsageError("give the command to run after --".into()))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(rest);
    cgroup.spawn_inside(&mut cmd);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("cannot start {}", program.to_string_lossy()))?;
    let pid = child.id();
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let status = loop {
        let forward = tokio::select! {
            s = child.wait() => break s.context("cannot wait for the command")?,
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        };
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped.
            unsafe {
                libc::kill(pid, forward);
            }
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

fn summarize_since(
    dir: &std::path::Path,
    since: jiff::Timestamp,
) -> anyhow::Result<summary::Summary> {
    let mut sum = summary::Summary::default();
    for rec in reader::read_dir(dir).context("cannot read the audit journal")? {
        match rec {
            Ok(r) if r.ts >= since => sum.add(&r),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipped while summarising"),
        }
    }
    Ok(sum)
}
