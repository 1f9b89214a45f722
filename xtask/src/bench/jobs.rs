//! J1: a CI job of real tools with and without egressd on this machine.
//!
//! The job is every step of the job corpus (`egressd_e2e::corpus`: git
//! clone, pip install, npm install, apt-get update + install + purge, curl
//! over HTTP/1.1 and HTTP/2, wget, python's urllib and requests; no
//! poisoned step), against the corpus' world (`egressd_e2e::world`), built
//! once. The policy is what a rollout gives: one run of the job under
//! `egressd boot` in audit mode, then `egressd audit suggest`. Then one
//! `egressd boot` enforcing it, started once as a runner boots, and the
//! repetitions, interleaved: "direct" runs the job in a fresh plain child
//! cgroup (no egressd; its resolver is the world's DNS on the host side of
//! the link), "egressd" runs it between `egressd job start` and `job end
//! --fail-on-deny` in the boot's filtered cgroup, as a runner's hooks do.
//! Which target goes first alternates from one repetition to the next.
//! Every step is bounded in time, and so is the workload; a step that
//! fails, or a single deny record, fails the workload: a false deny would
//! invalidate the comparison.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use egressd_e2e::boot::{self, Boot};
use egressd_e2e::cgroup::JobCgroup;
use egressd_e2e::corpus::{self, Installed, Script};
use egressd_e2e::step;
use egressd_e2e::world::{Backend, RESOLVER4, World};
use egressd_policy::Verdict;

use super::measure::Bench;
use super::process;
use super::report::{Table, median, spread};

const TITLE: &str =
    "J1 the job corpus (git, pip, npm, apt, curl, wget, python) with and without egressd";
/// The repository the jobs' hooks name (what `audit suggest` is asked for).
const REPOSITORY: &str = "octo/bench";
/// The job's name in its hooks' environment.
const JOB: &str = "corpus";
/// One step's time limit (a hung tool fails the workload, it does not stall it).
const STEP_LIMIT: Duration = Duration::from_secs(120);
/// The whole workload's, checked before each repetition.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(40 * 60);

/// One run of the job.
#[derive(Debug, Default)]
struct Run {
    /// Wall time of the job (egressd: from `job start` to the end of `job end`).
    wall: f64,
    /// Wall time of each step, in corpus order.
    steps: Vec<f64>,
    /// Wall time of `job start` plus `job end` (egressd only).
    hooks: f64,
    /// egressd's CPU time over the job (egressd only).
    cpu_ms: f64,
}

/// Every repetition of both targets.
#[derive(Debug, Default)]
struct Runs {
    direct: Vec<Run>,
    egressd: Vec<Run>,
    /// Deny records in the enforcing boot's journal (each a line for the note).
    denies: Vec<String>,
    /// `job end --fail-on-deny` failures (its stderr).
    end_failures: Vec<String>,
    /// The suggested policy's allow rules.
    rules: usize,
    /// The steps' names, in order.
    names: Vec<&'static str>,
}

/// The J1 table (failed, with the reason in its notes, when the job could
/// not be measured or egressd denied anything).
pub fn j1(b: &Bench, reps: usize) -> Table {
    let mut table = Table::new(
        TITLE,
        &[
            "target",
            "job wall s",
            "vs direct (medians)",
            "vs direct (paired)",
            "hooks ms",
            "egressd CPU ms per job",
            "deny records",
        ],
    );
    let Some(e) = &b.env.egressd else {
        table.failed = true;
        table.notes.push("egressd was not built".to_owned());
        return table;
    };
    // The world's set-up panics with what went wrong (it is shared with the
    // tests); the workload reports it instead of ending the harness.
    let measured =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(b, &e.bin, reps)));
    match measured {
        Ok(Ok(runs)) => fill(&mut table, &runs),
        Ok(Err(err)) => {
            table.failed = true;
            table
                .notes
                .push(format!("not measured: {err:#}").replace('\n', " "));
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            table.failed = true;
            table
                .notes
                .push(format!("not measured, the set-up failed: {why}").replace('\n', " "));
        }
    }
    table
}

/// Builds the world, gets the policy, runs `reps` interleaved repetitions.
fn measure(b: &Bench, bin: &Path, reps: usize) -> anyhow::Result<Runs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "J1 needs root (a network namespace, cgroups, eBPF): run it as root after scripts/install-deps.sh"
        );
    }
    let start = Instant::now();
    if !egressd_e2e::bin::use_egressd(bin.to_path_buf()) {
        tracing::warn!("J1: egressd was chosen before; it runs that one");
    }
    let mut world = {
        let _phase = b.phase("J1: build the world");
        World::up(&[Backend::Git, Backend::Pypi, Backend::Npm, Backend::Deb])
    };
    let host_dns = world.serve_dns_on_host().ip().to_string();
    let _installed = Installed::guard();
    let job = corpus::all(world.ca());
    let dir = tempfile::Builder::new().prefix("egressd-j1-").tempdir()?;
    let dns = world.dns_upstream().to_string();

    let policy = {
        let _phase = b.phase("J1: audit run and suggestion");
        let file = dir.path().join("audit.yaml");
        std::fs::write(&file, "version: 1\nmode: audit\n")?;
        let mut audit = Boot::start_resolving(&["--policy", &path_str(&file)?], &[], &dns);
        let run = under_egressd(&audit, &world, &job, "audit", false);
        let status = audit.terminate();
        run.context("the job under egressd in audit mode")?;
        if !status.success() {
            bail!("egressd boot (audit) exited {status}:\n{}", audit.log());
        }
        boot::audit_suggest(&audit.path("audit"), REPOSITORY)?
    };
    tracing::info!("J1: the suggested policy:\n{policy}");
    let file = dir.path().join("enforce.yaml");
    std::fs::write(&file, &policy)?;
    let mut enforce = Boot::start_resolving(&["--policy", &path_str(&file)?], &[], &dns);
    if enforce.ready()["state"] != "enforcing" {
        bail!(
            "egressd boot is not enforcing the suggestion:\n{}",
            enforce.log()
        );
    }
    let mut runs = Runs {
        rules: policy
            .lines()
            .filter(|l| l.trim_start().starts_with("- "))
            .count(),
        names: job.iter().map(|(n, _)| *n).collect(),
        ..Runs::default()
    };
    {
        // Not measured: the direct path must work before it is compared.
        let _phase = b.phase("J1: direct warm-up");
        direct(&world, &job, &host_dns).context("direct warm-up")?;
    }
    {
        let _phase = b.phase(&format!("J1: {reps} repetitions"));
        for rep in 0..reps {
            if start.elapsed() > WORKLOAD_LIMIT {
                bail!(
                    "out of time after {rep} repetitions ({} min allowed)",
                    WORKLOAD_LIMIT.as_secs() / 60
                );
            }
            let run_id = (rep + 1).to_string();
            for first_direct in [rep % 2 == 0, rep % 2 != 0] {
                if first_direct {
                    let r = direct(&world, &job, &host_dns)
                        .with_context(|| format!("direct, repetition {}", rep + 1))?;
                    runs.direct.push(r);
                } else {
                    let (r, end) = under_egressd(&enforce, &world, &job, &run_id, true)
                        .with_context(|| format!("egressd, repetition {}", rep + 1))?;
                    runs.end_failures.extend(end);
                    runs.egressd.push(r);
                }
            }
            tracing::info!(
                "J1 repetition {}: direct {:.2} s, egressd {:.2} s",
                rep + 1,
                runs.direct.last().map_or(0.0, |r| r.wall),
                runs.egressd.last().map_or(0.0, |r| r.wall),
            );
        }
    }
    let status = enforce.terminate();
    if !status.success() {
        bail!("egressd boot exited {status}:\n{}", enforce.log());
    }
    // After the stop the journal is flushed: every record of the measured
    // jobs is in it. (The boot's self-test probe, outside any job, is
    // denied by design.)
    let jobs: Vec<_> = (1..=reps)
        .map(|rep| boot::tags(REPOSITORY, &rep.to_string(), JOB))
        .collect();
    runs.denies = enforce
        .records()
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .filter(|r| r.job.as_deref().is_some_and(|t| jobs.contains(t)))
        .map(|r| {
            format!(
                "{:?} {} host={} dst={} comm={}",
                r.kind,
                r.reason,
                r.host.as_deref().unwrap_or("-"),
                r.dst.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                r.process
                    .as_ref()
                    .and_then(|p| p.comm.as_deref())
                    .unwrap_or("-"),
            )
        })
        .collect();
    Ok(runs)
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// Runs every step of `job` in `cgroup` with `resolver`; each step's wall time.
fn steps(
    cgroup: &JobCgroup,
    world: &World,
    resolver: &str,
    job: &[(&str, Script)],
) -> anyhow::Result<Vec<f64>> {
    let mut took = Vec::with_capacity(job.len());
    for (name, script) in job {
        let t = Instant::now();
        let s = step::run(
            cgroup,
            world.ca(),
            resolver,
            &format!("set -e\n{}", script.text),
            &script.env(),
            STEP_LIMIT,
        )
        .with_context(|| format!("step {name}"))?;
        took.push(t.elapsed().as_secs_f64());
        if s.code() != Some(0) {
            bail!("step {name} exited {:?}:\n{}", s.code(), s.output());
        }
    }
    Ok(took)
}

/// The job in a fresh plain child cgroup, resolving through `resolver`.
fn direct(world: &World, job: &[(&str, Script)], resolver: &str) -> anyhow::Result<Run> {
    let cgroup = JobCgroup::create();
    let t = Instant::now();
    let steps = steps(&cgroup, world, resolver, job)?;
    Ok(Run {
        wall: t.elapsed().as_secs_f64(),
        steps,
        ..Run::default()
    })
}

/// The job as a runner runs it under `boot`: `job start`, the steps in the
/// boot's cgroup, `job end` (with `--fail-on-deny` when `fail_on_deny`).
/// With the run, `job end`'s stderr when it failed.
fn under_egressd(
    boot: &Boot,
    world: &World,
    job: &[(&str, Script)],
    run_id: &str,
    fail_on_deny: bool,
) -> anyhow::Result<(Run, Option<String>)> {
    let env = boot::github_env(REPOSITORY, run_id, JOB);
    let pid = boot.child.id();
    let cpu = || {
        process::tree_usage(pid)
            .map(|u| u.cpu_us)
            .context("egressd's CPU time")
    };
    let cpu0 = cpu()?;
    let t = Instant::now();
    let started = boot.job(&["start"], &env);
    if !started.status.success() {
        bail!(
            "egressd job start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            boot.log()
        );
    }
    let start_took = t.elapsed();
    let steps = steps(&boot.jobs, world, RESOLVER4, job)?;
    let end_at = Instant::now();
    let mut end = vec!["end"];
    if fail_on_deny {
        end.push("--fail-on-deny");
    }
    let ended = boot.job(&end, &env);
    let wall = t.elapsed();
    let hooks = start_took + end_at.elapsed();
    let cpu1 = cpu()?;
    let failed =
        (!ended.status.success()).then(|| String::from_utf8_lossy(&ended.stderr).trim().to_owned());
    Ok((
        Run {
            wall: wall.as_secs_f64(),
            steps,
            hooks: hooks.as_secs_f64(),
            cpu_ms: cpu1.saturating_sub(cpu0) as f64 / 1000.0,
        },
        failed,
    ))
}

/// The rows and notes of the measured runs.
fn fill(table: &mut Table, runs: &Runs) {
    let walls = |v: &[Run]| v.iter().map(|r| r.wall).collect::<Vec<_>>();
    let (d, e) = (walls(&runs.direct), walls(&runs.egressd));
    let paired: Vec<f64> = e
        .iter()
        .zip(&d)
        .filter(|(_, d)| **d > 0.0)
        .map(|(e, d)| e / d)
        .collect();
    let hooks: Vec<f64> = runs.egressd.iter().map(|r| r.hooks * 1000.0).collect();
    let cpu: Vec<f64> = runs.egressd.iter().map(|r| r.cpu_ms).collect();
    table.rows.push(vec![
        "direct".to_owned(),
        spread(&d, 2),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
    ]);
    let denies = if runs.denies.is_empty() {
        "0".to_owned()
    } else {
        format!("**{}**", runs.denies.len())
    };
    table.rows.push(vec![
        "egressd".to_owned(),
        spread(&e, 2),
        ratio_of(median(&e) / median(&d)),
        format!("{} ({})", ratio_of(median(&paired)), range(&paired)),
        spread(&hooks, 0),
        spread(&cpu, 0),
        denies,
    ]);
    let mut per_step = String::new();
    for (i, name) in runs.names.iter().enumerate() {
        let at = |v: &[Run]| {
            v.iter()
                .filter_map(|r| r.steps.get(i).copied())
                .collect::<Vec<_>>()
        };
        let (sd, se) = (at(&runs.direct), at(&runs.egressd));
        let _ = write!(
            per_step,
            "{}{name} {:.2} / {:.2} ({})",
            if i == 0 { "" } else { ", " },
            median(&sd),
            median(&se),
            ratio_of(median(&se) / median(&sd))
        );
    }
    table.notes.push(format!(
        "{} repetitions per target, interleaved (which target runs first alternates); egressd enforces the policy `egressd audit suggest` gave after one audit-mode run of the job ({} rules); its job wall time includes `job start` and `job end --fail-on-deny` (the hooks column)",
        runs.direct.len(),
        runs.rules
    ));
    table
        .notes
        .push(format!("per step, median s direct / egressd: {per_step}"));
    table.notes.push(
        format!(
            "paired: each repetition's egressd job against the direct job run next to it, median (min-max); egressd CPU: utime + stime of egressd's process tree over the job, hooks included, from /proc/PID/stat (10 ms ticks; mean {:.1} ms)",
            cpu.iter().sum::<f64>() / cpu.len().max(1) as f64
        ),
    );
    if !runs.denies.is_empty() {
        table.failed = true;
        table.notes.push(format!(
            "egressd denied what the suggested policy should allow, the comparison is void: {}",
            runs.denies
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if let Some(first) = runs.end_failures.first() {
        table.failed = true;
        table.notes.push(format!(
            "job end --fail-on-deny failed {} times: {first}",
            runs.end_failures.len()
        ));
    }
}

/// A ratio with three decimals (the target is within 2%), or `-`.
fn ratio_of(x: f64) -> String {
    if x.is_finite() && x > 0.0 {
        format!("{x:.3}x")
    } else {
        "-".to_owned()
    }
}

/// `min-max` with three decimals, or `-`.
fn range(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".to_owned();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.3}-{hi:.3}")
}
