//! One target under one load: start it, run the repetitions, read its CPU
//! and RSS from /proc, stop it, and for egressd check its audit journal.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use super::allowlist::Allowlist;
use super::audit_check::{self, AuditCheck};
use super::loadgen::{self, Op};
use super::peers::{self, Env, Role, Running, Target};

/// Run lengths.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Repetitions per measurement (the median is reported).
    pub reps: usize,
    /// Length of one repetition.
    pub dur: Duration,
}

/// The harness's shared state.
pub struct Bench {
    /// Targets' environment.
    pub env: Env,
    /// The load generator's runtime.
    pub load: tokio::runtime::Handle,
    /// Run lengths.
    pub settings: Settings,
    /// Next op index (names and DNS salts stay fresh across runs).
    pub next_op: Cell<u64>,
    /// Only these targets run (`--targets`); `None`: all.
    pub only: Option<Vec<Target>>,
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

/// What the repetitions of one target measured.
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
    /// Median latency (us) per repetition.
    pub p50: Vec<f64>,
    /// 99th percentile latency (us) per repetition.
    pub p99: Vec<f64>,
    /// RSS of the target's process tree after the last repetition.
    pub rss: u64,
    /// Ops that failed verification.
    pub errors: u64,
    /// Ops sent.
    pub ops: u64,
    /// The first error messages.
    pub samples: Vec<String>,
    /// egressd's journal check.
    pub audit: Option<AuditCheck>,
}

impl Measured {
    /// Whether the run must be marked failed.
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.audit.as_ref().is_some_and(|a| a.missing() > 0)
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
    /// The audit cell.
    pub fn audit_cell(&self) -> String {
        self.audit
            .as_ref()
            .map_or_else(|| "-".to_owned(), AuditCheck::cell)
    }
}

impl Bench {
    /// Starts `target` and measures it under `load`; `Ok(Err(reason))` when
    /// the target does not support the workload.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per workload, each names its values"
    )]
    pub fn run<O: Op>(
        &self,
        target: Target,
        role: Role,
        list: &Allowlist,
        tag: &str,
        load: Load,
        timeout: Duration,
        tunnels: bool,
        make: &dyn Fn(&Running) -> Arc<O>,
    ) -> anyhow::Result<Result<Measured, String>> {
        if self.skipped(target) {
            return Ok(Err("skipped (--targets)".to_owned()));
        }
        let running = match peers::start(target, role, list, &self.env, tag)? {
            Some(r) => r,
            None => return Ok(Err(self.unsupported(target, role))),
        };
        let op = make(&running);
        let mut m = Measured::default();
        let (mut decisions, mut allowed) = (0, 0);
        for _ in 0..self.settings.reps {
            let first = self.next_op.get();
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
            let ops = r.allowed + r.denied + r.errors;
            self.next_op.set(first + ops + 1);
            let cpu = u1.cpu_us.saturating_sub(u0.cpu_us) as f64;
            m.rates.push(r.rate());
            m.bytes_per_s
                .push(r.bytes as f64 / r.elapsed.as_secs_f64().max(1e-9));
            m.cpu_per_op.push(cpu / r.decisions().max(1) as f64);
            if r.bytes > 0 {
                m.cpu_s_per_gb.push(cpu / 1e6 / (r.bytes as f64 / 1e9));
            }
            m.p50.push(r.hist.value_at_quantile(0.5) as f64);
            m.p99.push(r.hist.value_at_quantile(0.99) as f64);
            m.errors += r.errors;
            m.ops += ops;
            decisions += r.decisions();
            allowed += r.allowed;
            m.samples.extend(r.error_samples);
        }
        m.rss = running.usage().rss;
        let audit_dir = running.audit_dir.clone();
        running.stop()?;
        if let Some(dir) = audit_dir {
            let found = audit_check::count(&dir)?;
            m.audit = Some(AuditCheck {
                expected_decisions: decisions,
                expected_closing: if tunnels { allowed } else { 0 },
                found,
            });
        }
        Ok(Ok(m))
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
}
