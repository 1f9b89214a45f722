//! Targets under load: a workload starts all its targets at once (a
//! [`Fleet`]), runs its passes over them with the repetitions interleaved
//! (one target at a time; reading each target's CPU and RSS from /proc),
//! then stops them all at once and, for
//! egressd, checks its audit journal against every decision of every pass.
//! Each phase's wall time is logged as it ends and kept for the summary.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::allowlist::Allowlist;
use super::audit_check::{self, AuditCheck};
use super::loadgen::{self, Op};
use super::machine;
use super::peers::{self, Env, Role, Running, Target};

/// Run lengths.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Repetitions per measurement (the median is reported).
    pub reps: usize,
    /// Length of one repetition.
    pub dur: Duration,
    /// Repetitions of W4's loss pass (open loop at 80% of each target's peak).
    pub loss_reps: usize,
    /// W3's bytes per repetition (split over the streams).
    pub bulk_bytes: u64,
    /// W6's idle tunnels.
    pub idle_tunnels: u64,
    /// W6's wait for memory to settle after opening and after closing.
    pub settle: Duration,
}

impl Settings {
    /// `--quick`: every workload against every target, short repetitions.
    pub const QUICK: Settings = Settings {
        reps: 3,
        dur: Duration::from_millis(500),
        loss_reps: 1,
        bulk_bytes: 512 << 20,
        idle_tunnels: 1_000,
        settle: Duration::from_millis(200),
    };
    /// The full run.
    pub const FULL: Settings = Settings {
        reps: 5,
        dur: Duration::from_secs(5),
        loss_reps: 3,
        bulk_bytes: 4 << 30,
        idle_tunnels: 7_000,
        settle: Duration::from_millis(500),
    };
}

/// The harness's shared state.
pub struct Bench {
    /// Targets' environment.
    pub env: Env,
    /// The load generator's runtime.
    pub load: tokio::runtime::Handle,
    /// The backends' runtime (W7 adds a server to it).
    pub backend: tokio::runtime::Handle,
    /// Run lengths.
    pub settings: Settings,
    /// Next op index (names and DNS salts stay fresh across runs).
    pub next_op: Cell<u64>,
    /// Only these targets run (`--targets`); `None`: all.
    pub only: Option<Vec<Target>>,
    /// Wall time of every finished phase, in order.
    pub timings: RefCell<Vec<(String, Duration)>>,
    /// Per pass, the CPU time the hypervisor took during each target's
    /// repetitions; the running workload's table takes them as notes.
    pub steal_notes: RefCell<Vec<String>>,
}

/// Closed or open loop.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// `clients` back to back, at most `max_ops` ops per repetition.
    Closed {
        /// Concurrent clients.
        clients: usize,
        /// Op cap per repetition.
        max_ops: u64,
    },
    /// Constant arrival rate (ops/s).
    Open {
        /// Ops per second.
        rate: f64,
    },
}

/// What the repetitions of one pass over one target measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Verified ops per second, per repetition.
    pub rates: Vec<f64>,
    /// Payload bytes per second, per repetition.
    pub bytes_per_s: Vec<f64>,
    /// Target CPU microseconds per verified op, per repetition.
    pub cpu_per_op: Vec<f64>,
    /// Target CPU seconds per GB of payload, per repetition.
    pub cpu_s_per_gb: Vec<f64>,
    /// Median latency (us) per repetition (until ready, for ops that say).
    pub p50: Vec<f64>,
    /// 99th percentile latency (us) per repetition.
    pub p99: Vec<f64>,
    /// Median latency (us) until the op finished, per repetition.
    pub done_p50: Vec<f64>,
    /// 99th percentile latency (us) until the op finished, per repetition.
    pub done_p99: Vec<f64>,
    /// RSS of the target's process tree after the last repetition.
    pub rss: u64,
    /// Ops that failed verification (timeouts included).
    pub errors: u64,
    /// Of `errors`, ops without an answer within the timeout.
    pub timeouts: u64,
    /// Ops sent.
    pub ops: u64,
    /// Ops allowed (and verified).
    pub allowed: u64,
    /// The first error messages.
    pub samples: Vec<String>,
    /// Share of the CPU time the hypervisor took, per repetition.
    pub steal: Vec<f64>,
}

impl Measured {
    /// Whether the run must be marked failed.
    pub fn failed(&self) -> bool {
        self.errors > 0
    }

    /// Adds one repetition's report (and the target's CPU over it).
    pub fn add(&mut self, r: loadgen::Report, cpu_us: u64) {
        let cpu = cpu_us as f64;
        self.rates.push(r.rate());
        self.bytes_per_s
            .push(r.bytes as f64 / r.elapsed.as_secs_f64().max(1e-9));
        self.cpu_per_op.push(cpu / r.decisions().max(1) as f64);
        if r.bytes > 0 {
            self.cpu_s_per_gb.push(cpu / 1e6 / (r.bytes as f64 / 1e9));
        }
        self.p50.push(r.hist.value_at_quantile(0.5) as f64);
        self.p99.push(r.hist.value_at_quantile(0.99) as f64);
        self.done_p50.push(r.done.value_at_quantile(0.5) as f64);
        self.done_p99.push(r.done.value_at_quantile(0.99) as f64);
        self.errors += r.errors;
        self.timeouts += r.timeouts;
        self.ops += r.allowed + r.denied + r.errors;
        self.allowed += r.allowed;
        self.samples.extend(r.error_samples);
    }

    /// The errors cell.
    pub fn errors_cell(&self) -> String {
        if self.errors == 0 {
            "0".to_owned()
        } else {
            format!(
                "**{} of {}** ({})",
                self.errors,
                self.ops,
                self.samples.first().cloned().unwrap_or_default()
            )
        }
    }
}

/// One pass's result for one target, or why it has none.
pub type Outcome = Result<Measured, String>;

/// A started target and the decisions its journal must hold.
pub struct Member {
    /// The running target.
    pub running: Running,
    /// Decisions the load generator saw it make, over every pass.
    pub decisions: u64,
    /// Allowed tunnels (each owes a closing record).
    pub closing: u64,
}

impl Member {
    /// Stops the target gracefully and checks its journal (egressd only).
    fn finish(self) -> anyhow::Result<Option<AuditCheck>> {
        let audit_dir = self.running.audit_dir.clone();
        self.running.stop()?;
        let Some(dir) = audit_dir else {
            return Ok(None);
        };
        Ok(Some(AuditCheck {
            expected_decisions: self.decisions,
            expected_closing: self.closing,
            found: audit_check::count(&dir)?,
        }))
    }
}

/// The targets of one workload, started together.
pub struct Fleet<'b> {
    bench: &'b Bench,
    tag: String,
    tunnels: bool,
    members: Vec<(Target, Result<Member, String>)>,
}

/// What [`Fleet::stop`] found for each target: its journal check (`None`
/// for targets without a journal), or why it has none.
pub type Audits = Vec<(Target, Result<Option<AuditCheck>, String>)>;

/// Times a phase: logs its start, and its wall time when dropped.
#[must_use = "the phase ends when this is dropped"]
pub struct Phase<'b> {
    bench: &'b Bench,
    name: String,
    start: Instant,
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        tracing::info!("{} done in {:.1} s", self.name, took.as_secs_f64());
        self.bench
            .timings
            .borrow_mut()
            .push((self.name.clone(), took));
    }
}

impl Bench {
    /// Starts timing the phase `name`.
    pub fn phase(&self, name: &str) -> Phase<'_> {
        tracing::info!("{name} ...");
        Phase {
            bench: self,
            name: name.to_owned(),
            start: Instant::now(),
        }
    }

    /// Starts every target of `targets` for workload `tag` at once (one
    /// thread each; each start waits until its target answers). `tunnels`:
    /// allowed ops are tunnels that owe egressd a closing record.
    pub fn fleet(
        &self,
        tag: &str,
        targets: &[Target],
        role: &(dyn Fn(Target) -> Role + Sync),
        list: &Allowlist,
        tunnels: bool,
    ) -> Fleet<'_> {
        let _phase = self.phase(&format!("{tag}: start {} targets", targets.len()));
        let env = &self.env;
        let members = std::thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|&t| {
                    let skipped = self.skipped(t);
                    let unsupported = self.unsupported(t, role(t));
                    s.spawn(move || {
                        if skipped {
                            return Err("skipped (--targets)".to_owned());
                        }
                        let start = Instant::now();
                        let r = match peers::start(t, role(t), list, env, tag) {
                            Ok(Some(running)) => Ok(Member {
                                running,
                                decisions: 0,
                                closing: 0,
                            }),
                            Ok(None) => Err(unsupported),
                            Err(e) => Err(format!("failed to start: {e:#}").replace('\n', " ")),
                        };
                        tracing::info!(
                            "{tag}: {} up in {:.2} s",
                            t.name(),
                            start.elapsed().as_secs_f64()
                        );
                        r
                    })
                })
                .collect();
            targets
                .iter()
                .zip(handles)
                .map(|(&t, h)| {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err("its start-up thread panicked".to_owned()));
                    if let Err(e) = &r {
                        tracing::warn!("{tag}: {}: {e}", t.name());
                    }
                    (t, r)
                })
                .collect()
        });
        Fleet {
            bench: self,
            tag: tag.to_owned(),
            tunnels,
            members,
        }
    }

    /// Whether `--targets` leaves `target` out.
    pub fn skipped(&self, target: Target) -> bool {
        self.only.as_ref().is_some_and(|o| !o.contains(&target))
    }

    /// Why `target` cannot run `role`.
    pub fn unsupported(&self, target: Target, role: Role) -> String {
        if target == Target::Egressd {
            return match &self.env.egressd {
                None => "egressd was not built".to_owned(),
                Some(e) => e.features.lacks(role).unwrap_or("not supported").to_owned(),
            };
        }
        format!("{} does not do this workload", target.name())
    }

    /// Runs one repetition of `load` with `op` against `running` into `m`.
    fn measure_once<O: Op>(
        &self,
        running: &Running,
        load: Load,
        timeout: Duration,
        op: &Arc<O>,
        m: &mut Measured,
    ) -> anyhow::Result<()> {
        let first = self.next_op.get();
        let cpu0 = machine::CpuTimes::now();
        let u0 = running.usage();
        let r = match load {
            Load::Closed { clients, max_ops } => loadgen::closed_loop(
                &self.load,
                op.clone(),
                clients,
                self.settings.dur,
                max_ops,
                first,
                timeout,
            )?,
            Load::Open { rate } => loadgen::open_loop(
                &self.load,
                op.clone(),
                rate,
                self.settings.dur,
                first,
                timeout,
            )?,
        };
        let u1 = running.usage();
        if let Some(s) = machine::Shares::since(cpu0) {
            m.steal.push(s.steal);
        }
        self.next_op
            .set(first + r.allowed + r.denied + r.errors + 1);
        m.add(r, u1.cpu_us.saturating_sub(u0.cpu_us));
        m.rss = u1.rss;
        Ok(())
    }
}

/// One target's part of a pass: its load, its op, what it measured so far.
type Run<O> = (Load, Arc<O>, Measured);

impl Fleet<'_> {
    /// Runs pass `name` over every started target: `reps` repetitions of
    /// the load `load` gives for it (`None`: skip it), interleaved (every
    /// target's first repetition, then every target's second, ...), so a
    /// slow drift of the shared machine (other tenants, CPU frequency)
    /// touches every target alike instead of whichever ran last.
    pub fn pass<O: Op>(
        &mut self,
        name: &str,
        reps: usize,
        load: &dyn Fn(Target) -> Option<Load>,
        timeout: Duration,
        make: &dyn Fn(&Running) -> Arc<O>,
    ) -> Vec<(Target, Outcome)> {
        let _phase = self.bench.phase(&format!("{}: {name}", self.tag));
        let targets: Vec<Target> = self.members.iter().map(|(t, _)| *t).collect();
        let mut runs: Vec<(Target, Result<Run<O>, String>)> = targets
            .into_iter()
            .map(|t| {
                let r = match load(t) {
                    Some(l) => self.op(t, make).map(|op| (l, op, Measured::default())),
                    None => Err("no load for this pass".to_owned()),
                };
                (t, r)
            })
            .collect();
        let start = Instant::now();
        for _ in 0..reps {
            for (t, run) in &mut runs {
                if let Ok((l, op, m)) = run
                    && let Err(e) = self.rep(*t, *l, timeout, op, m)
                {
                    *run = Err(e);
                }
            }
        }
        // Named per target only when a repetition was disturbed: the
        // workload's note gives the share over the whole workload.
        let measured: Vec<(Target, &Measured)> = runs
            .iter()
            .filter_map(|(t, run)| run.as_ref().ok().map(|(_, _, m)| (*t, m)))
            .collect();
        let max = |m: &Measured| m.steal.iter().copied().fold(0.0, f64::max);
        if measured.iter().any(|(_, m)| max(m) > machine::STEAL_WARN) {
            let each: Vec<String> = measured
                .iter()
                .filter(|(_, m)| !m.steal.is_empty())
                .map(|(t, m)| {
                    format!(
                        "{} {:.1}% ({:.1}%)",
                        t.name(),
                        super::report::median(&m.steal) * 100.0,
                        max(m) * 100.0
                    )
                })
                .collect();
            self.bench.steal_notes.borrow_mut().push(format!(
                "{} {name}: a repetition had more than {:.0}% of its CPU time taken by the hypervisor; per target, median (max): {}",
                self.tag,
                machine::STEAL_WARN * 100.0,
                each.join(", ")
            ));
        }
        runs.into_iter()
            .map(|(t, run)| {
                let r = run.map(|(_, _, m)| m);
                if let Ok(m) = &r {
                    tracing::info!(
                        "{} {name}: {}: {:.0} ops/s, {} errors ({:.1} s for the pass)",
                        self.tag,
                        t.name(),
                        super::report::median(&m.rates),
                        m.errors,
                        start.elapsed().as_secs_f64()
                    );
                }
                (t, r)
            })
            .collect()
    }

    /// One repetition of `load` with `op` against the started target `t`,
    /// added to `m` (and to the decisions its journal must hold).
    pub fn rep<O: Op>(
        &mut self,
        t: Target,
        load: Load,
        timeout: Duration,
        op: &Arc<O>,
        m: &mut Measured,
    ) -> Result<(), String> {
        let bench = self.bench;
        let member = self.member(t)?;
        let (ops, errors, allowed) = (m.ops, m.errors, m.allowed);
        bench
            .measure_once(&member.running, load, timeout, op, m)
            .map_err(|e| format!("failed to run: {e:#}").replace('\n', " "))?;
        member.decisions += (m.ops - ops) - (m.errors - errors);
        member.closing += m.allowed - allowed;
        Ok(())
    }

    /// The op `make` builds for the started target `t`.
    pub fn op<O: Op>(
        &mut self,
        t: Target,
        make: &dyn Fn(&Running) -> Arc<O>,
    ) -> Result<Arc<O>, String> {
        self.member(t).map(|m| make(&m.running))
    }

    /// The started target `t` and its journal expectations.
    pub fn member(&mut self, t: Target) -> Result<&mut Member, String> {
        match self.members.iter_mut().find(|(x, _)| *x == t) {
            Some((_, m)) => m.as_mut().map_err(|e| e.clone()),
            None => Err(format!("{} is not in this workload", t.name())),
        }
    }

    /// Stops every target at once and checks egressd's journal.
    pub fn stop(self) -> Audits {
        let _phase = self.bench.phase(&format!("{}: stop", self.tag));
        let tunnels = self.tunnels;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .members
                .into_iter()
                .map(|(t, m)| {
                    let h = s.spawn(move || {
                        let start = Instant::now();
                        let r = m.and_then(|mut m| {
                            if !tunnels {
                                m.closing = 0;
                            }
                            m.finish()
                                .map_err(|e| format!("failed to stop: {e:#}").replace('\n', " "))
                        });
                        tracing::debug!(
                            "{}: stopped in {:.2} s",
                            t.name(),
                            start.elapsed().as_secs_f64()
                        );
                        r
                    });
                    (t, h)
                })
                .collect();
            handles
                .into_iter()
                .map(|(t, h)| {
                    let r = h
                        .join()
                        .unwrap_or_else(|_| Err("its stop thread panicked".to_owned()));
                    (t, r)
                })
                .collect()
        })
    }
}
