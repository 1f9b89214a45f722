//! The one runtime state every listener shares: the active policy (swapped
//! atomically on reload), the job tags, the audit journal, the DNS memory and
//! resolver, metrics, limits, the tunnel budget and the shutdown tokens. The
//! transparent listener, the CONNECT proxy and the DNS server all hold the
//! same `Arc<Engine>`, so they decide with the same policy and write to the
//! same journal. Reads on the hot path are lock-free (`ArcSwap` loads and
//! atomics).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use egressd_audit::{JobTags, Journal, Kind, Process, Record};
use egressd_policy::{Decision, JobContext, Policy};
use tokio_util::sync::CancellationToken;

use crate::coalesce::{Admit, Coalescer};
use crate::cut::CutSignal;
use crate::dns::{DnsMemory, Resolver};
use crate::kernel::ProcessLookup;
use crate::limits::Limits;
use crate::metrics::Metrics;

/// The job running on the runner, as far as the policy and the records care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveJob {
    /// Tags written into every record; `None` between jobs.
    pub tags: Option<Arc<JobTags>>,
    /// The runner labels the job asked for (they select policy overrides).
    pub labels: Vec<String>,
}

impl ActiveJob {
    /// What the policy needs to pick the job's rule set.
    pub fn context(&self) -> JobContext<'_> {
        JobContext {
            repository: self.tags.as_ref().and_then(|t| t.repository.as_deref()),
            labels: &self.labels,
        }
    }
}

/// What the engine is built from (see [`Engine::new`]).
pub struct EngineParts {
    /// The validated policy.
    pub policy: Policy,
    /// The open audit journal.
    pub journal: Journal,
    /// Addresses recently answered by the DNS server, per name.
    pub dns_memory: Arc<DnsMemory>,
    /// The proxy's own resolver (upstreams, never the redirected system one).
    pub resolver: Resolver,
    /// The runner name written into every record.
    pub runner: String,
    /// Protective limits.
    pub limits: Limits,
    /// `SO_MARK` for upstream sockets so the kernel hooks let them pass; `None`
    /// when nothing in the kernel redirects (`--no-ebpf`).
    pub upstream_mark: Option<u32>,
    /// Also filter loopback destinations (policy.md step 1 skipped): for
    /// testing a policy against local servers.
    pub filter_loopback: bool,
}

/// The shared runtime state. See the module documentation.
pub struct Engine {
    policy: ArcSwap<Policy>,
    job: ArcSwap<ActiveJob>,
    journal: Journal,
    dns_memory: Arc<DnsMemory>,
    resolver: Resolver,
    runner: String,
    metrics: Metrics,
    limits: Limits,
    /// Tunnels open (or being set up), against `limits.max_tunnels`.
    tunnels: Arc<AtomicUsize>,
    upstream_mark: Option<u32>,
    filter_loopback: bool,
    stop_accepting: CancellationToken,
    cut_tunnels: CutSignal,
    /// Deny everything (`policy_unavailable`) while no trustworthy policy is
    /// active (boot degraded).
    fail_closed: AtomicBool,
    /// Who made a DNS query, when the kernel hooks can tell.
    process_lookup: ArcSwapOption<Arc<dyn ProcessLookup>>,
    /// Repeated denies counted instead of written one by one.
    coalescer: Coalescer,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("runner", &self.runner)
            .field("limits", &self.limits)
            .field("upstream_mark", &self.upstream_mark)
            .field("filter_loopback", &self.filter_loopback)
            .finish_non_exhaustive()
    }
}

/// One tunnel's place in the `max_tunnels` budget, given back when dropped.
/// A counter, not a semaphore: nobody waits for a place (a connection over
/// the budget is refused at once), and a semaphore's release takes a lock
/// shared by every tunnel.
#[derive(Debug)]
pub struct TunnelSlot {
    open: Arc<AtomicUsize>,
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Engine {
    /// Assemble the engine.
    pub fn new(parts: EngineParts) -> Arc<Engine> {
        Arc::new(Engine {
            policy: ArcSwap::from_pointee(parts.policy),
            job: ArcSwap::from_pointee(ActiveJob::default()),
            journal: parts.journal,
            dns_memory: parts.dns_memory,
            resolver: parts.resolver,
            runner: parts.runner,
            metrics: Metrics::default(),
            tunnels: Arc::new(AtomicUsize::new(0)),
            limits: parts.limits,
            upstream_mark: parts.upstream_mark,
            filter_loopback: parts.filter_loopback,
            stop_accepting: CancellationToken::new(),
            cut_tunnels: CutSignal::new(),
            fail_closed: AtomicBool::new(false),
            process_lookup: ArcSwapOption::empty(),
            coalescer: Coalescer::default(),
        })
    }

    /// The active policy (a cheap snapshot; a reload does not change it).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// Make `policy` the active one. Decisions already made keep the old one.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The active job.
    pub fn job(&self) -> Arc<ActiveJob> {
        self.job.load_full()
    }

    /// Set (or, with `ActiveJob::default()`, clear) the active job. The
    /// journal keeps the active job's records whatever its size budget
    /// (see [`Engine::denies_everything`]).
    pub fn set_job(&self, job: ActiveJob) {
        self.journal.protect_active_job(job.tags.is_some());
        self.job.store(Arc::new(job));
    }

    /// The audit journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Addresses the DNS server recently answered.
    pub fn dns_memory(&self) -> &Arc<DnsMemory> {
        &self.dns_memory
    }

    /// The proxy's own resolver.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The runner name.
    pub fn runner(&self) -> &str {
        &self.runner
    }

    /// Process-wide metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Protective limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The bypass mark for upstream sockets, if any.
    pub fn upstream_mark(&self) -> Option<u32> {
        self.upstream_mark
    }

    /// Whether loopback destinations are filtered too.
    pub fn filter_loopback(&self) -> bool {
        self.filter_loopback
    }

    /// Fail closed (`true`): every decision is a deny with
    /// `policy_unavailable` until this is set back to `false`.
    pub fn set_fail_closed(&self, on: bool) {
        self.fail_closed.store(on, Ordering::Release);
    }

    /// True while failing closed.
    pub fn is_fail_closed(&self) -> bool {
        self.fail_closed.load(Ordering::Acquire)
    }

    /// Why every decision is a deny now, if it is: no trustworthy policy
    /// (`policy_unavailable`), or the active job's records fill the audit
    /// journal's budget (`audit_budget_exhausted`: the journal would have to
    /// remove some of them to record more). Two atomic loads.
    pub fn denies_everything(&self) -> Option<egressd_policy::Reason> {
        if self.is_fail_closed() {
            Some(egressd_policy::Reason::PolicyUnavailable)
        } else if self.journal.budget_exhausted() {
            Some(egressd_policy::Reason::AuditBudgetExhausted)
        } else {
            None
        }
    }

    /// Attribute DNS queries to processes with `lookup` (the kernel hooks).
    pub fn set_process_lookup(&self, lookup: Arc<dyn ProcessLookup>) {
        self.process_lookup.store(Some(Arc::new(lookup)));
    }

    /// Stop attributing DNS queries (the kernel hooks are detached).
    pub fn clear_process_lookup(&self) {
        self.process_lookup.store(None);
    }

    /// The process behind a DNS query from `client`, when known.
    pub fn dns_process(&self, client: SocketAddr) -> Option<Process> {
        self.process_lookup
            .load()
            .as_ref()
            .and_then(|l| l.dns_process(client))
    }

    /// Take a slot of the tunnel budget; `None` when `max_tunnels` are in use.
    pub fn try_tunnel(&self) -> Option<TunnelSlot> {
        let max = self.limits.max_tunnels;
        self.tunnels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(TunnelSlot {
            open: Arc::clone(&self.tunnels),
        })
    }

    /// Cancelled when listeners must stop accepting (shutdown begins).
    pub fn stop_accepting(&self) -> &CancellationToken {
        &self.stop_accepting
    }

    /// Raised when open tunnels must be cut (the shutdown grace is over).
    pub fn cut_tunnels(&self) -> &CutSignal {
        &self.cut_tunnels
    }

    /// A record of `decision` now, with the runner and the active job filled in.
    pub fn record(&self, kind: Kind, decision: &Decision) -> Record {
        let mut rec = Record::new(&self.runner, kind, decision);
        rec.job = self.job.load().tags.clone();
        rec
    }

    /// Append `rec` to the journal (waits only for queue room, never drops),
    /// or count it: a deny repeated past [`crate::coalesce::VERBATIM`] in an
    /// interval is written in that interval's counted record instead
    /// ([`Engine::flush_coalesced`]).
    /// A DNS record without a process gets the one the kernel hooks recorded
    /// for its client socket (a map lookup, when the hooks are attached).
    /// A closed journal is logged: the record cannot be kept anywhere else.
    pub async fn audit(&self, mut rec: Record) {
        if rec.kind == Kind::Dns
            && rec.process.is_none()
            && let Some(client) = rec.src
        {
            rec.process = self.dns_process(client).map(Box::new);
        }
        if self.coalescer.admit(&rec) == Admit::Counted {
            return;
        }
        self.append(rec).await;
    }

    async fn append(&self, rec: Record) {
        if let Err(e) = self.journal.append(rec).await {
            tracing::error!(error = %e, "audit record not written");
        }
    }

    /// Write the counted records of the interval that ends now (every
    /// [`crate::coalesce::INTERVAL`], at job end, at shutdown).
    pub async fn flush_coalesced(&self) {
        for rec in self.coalescer.flush().await {
            self.metrics.counted(rec.decisions());
            self.append(rec).await;
        }
    }

    /// Flush the counted records every [`crate::coalesce::INTERVAL`] until
    /// the listeners stop (shutdown flushes the last ones).
    pub async fn flush_coalesced_every_interval(self: Arc<Self>) {
        let mut tick = tokio::time::interval(crate::coalesce::INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush_coalesced().await,
                () = self.stop_accepting.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::limits::Limits;
    use crate::test_support::TestEngine;

    #[test]
    fn the_tunnel_budget_refuses_over_max_and_takes_back_what_is_dropped() {
        let t = TestEngine::new(
            "version: 1\n",
            Limits {
                max_tunnels: 2,
                ..Limits::default()
            },
        );
        let e = &t.engine;
        let a = e.try_tunnel().expect("first of two");
        let b = e.try_tunnel().expect("second of two");
        assert!(e.try_tunnel().is_none(), "a third over max_tunnels 2");
        drop(a);
        let c = e.try_tunnel().expect("the dropped slot is free again");
        assert!(e.try_tunnel().is_none());
        drop((b, c));
        assert!(
            e.try_tunnel().is_some() && e.try_tunnel().is_some(),
            "both back"
        );
    }
}
