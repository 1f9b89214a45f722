//! Counted records: repeated denies of one kind from one client are written
//! verbatim up to [`VERBATIM`] per interval, and the rest of that interval as
//! one record with a `count` and a few `samples`, so no job can flood the
//! journal (and push earlier records out of its size budget) by repeating a
//! denied request.
//!
//! A decision is counted under its key: kind, verdict (and audit mode's
//! would-be verdict), reason, rule, the job, the client (the process's pid
//! and comm when the kernel told us, else its cgroup, else the client IP),
//! the destination port, and the zone (the last two labels of the name, else
//! the destination IP). The first [`VERBATIM`] decisions of a key in an
//! interval are written as usual, before their answer; the others only bump
//! an atomic counter, and [`Coalescer::flush`] writes one counted record per
//! key at the end of the interval, at job end and at shutdown. At most
//! [`MAX_KEYS`] keys are tracked per interval; decisions beyond that share
//! one key per kind, verdict, reason and rule, so memory stays bounded
//! whatever a job sends.
//!
//! The hot path takes no lock: the interval's table is an `ArcSwap`ed
//! papaya map of atomics. A flush swaps in a fresh table and waits until no
//! caller still holds the old one before reading its counters, so every
//! counted decision is in exactly one counted record.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use egressd_audit::{Kind, Record};
use egressd_policy::{Reason, Verdict};

/// Decisions of one key written verbatim per interval.
pub const VERBATIM: u64 = 20;
/// How long an interval lasts: a counted record is at most this late.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Countable decisions written verbatim per interval over all keys: many
/// keys (a job can vary its client address or zone) must not multiply
/// [`VERBATIM`].
const MAX_VERBATIM: u64 = 500;
/// Keys tracked per interval before decisions share a coarser key: at most
/// this many counted records per interval.
const MAX_KEYS: usize = 512;
/// Distinct hosts kept as samples in a counted record.
const SAMPLES: usize = 5;

/// Whose and what kind of decision: see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: Kind,
    decision: Verdict,
    enforce_would: Option<Verdict>,
    reason: Reason,
    rule: String,
    /// The job's tags, by identity: a new job is a new `Arc`.
    job: usize,
    client: Client,
    port: Option<u16>,
    zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    Process(Option<u32>, Option<String>),
    Cgroup(String),
    Ip(IpAddr),
    Unknown,
}

impl Key {
    fn of(rec: &Record) -> Key {
        let client = match (&rec.process, rec.src) {
            (Some(p), _) if p.pid.is_some() || p.comm.is_some() => {
                Client::Process(p.pid, p.comm.clone())
            }
            (Some(p), _) if p.cgroup.is_some() => {
                Client::Cgroup(p.cgroup.clone().unwrap_or_default())
            }
            (_, Some(src)) => Client::Ip(src.ip()),
            _ => Client::Unknown,
        };
        let zone = match (&rec.host, rec.dst) {
            (Some(h), _) => Some(zone(h)),
            (None, Some(dst)) => Some(dst.ip().to_string()),
            (None, None) => None,
        };
        Key {
            kind: rec.kind,
            decision: rec.decision,
            enforce_would: rec.enforce_would,
            reason: rec.reason,
            rule: rec.rule.clone(),
            job: rec.job.as_ref().map_or(0, |j| Arc::as_ptr(j) as usize),
            client,
            port: rec.port(),
            zone,
        }
    }

    /// The key decisions share once [`MAX_KEYS`] are tracked.
    fn coarse(mut self) -> Key {
        self.client = Client::Unknown;
        self.port = None;
        self.zone = None;
        self
    }
}

/// The last two labels of `host`, lower-cased (`a.b.evil.example` ->
/// `evil.example`): where a job's random names under one zone meet.
fn zone(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let mut dots = host.rmatch_indices('.');
    let start = match (dots.next(), dots.next()) {
        (Some(_), Some((i, _))) => i + 1,
        _ => 0,
    };
    host[start..].to_ascii_lowercase()
}

/// Should `rec` be counted rather than always written? Only denies (and
/// audit mode's would-be denies) of traffic: events and closing records are
/// rare and each says something different.
fn countable(rec: &Record) -> bool {
    rec.kind != Kind::Event
        && !rec.is_closing()
        && (rec.decision == Verdict::Deny || rec.enforce_would == Some(Verdict::Deny))
}

/// One key's decisions in one interval.
struct Slot {
    /// The first decision of the key in the interval: what the counted
    /// record says (besides its count and samples).
    template: Record,
    seen: AtomicU64,
    written: AtomicU64,
    sampled: AtomicUsize,
    samples: [ArcSwapOption<String>; SAMPLES],
}

struct Table {
    slots: papaya::HashMap<Key, Slot>,
    keys: AtomicUsize,
    /// Decisions written verbatim, over all keys.
    written: AtomicU64,
    started: jiff::Timestamp,
}

impl Table {
    fn new() -> Table {
        Table {
            slots: papaya::HashMap::new(),
            keys: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            started: egressd_audit::time_format::now(),
        }
    }
}

/// What to do with a record: see [`Coalescer::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Write it now.
    Write,
    /// It is counted; the interval's counted record will stand for it.
    Counted,
}

/// See the module documentation.
pub struct Coalescer {
    table: ArcSwap<Table>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").finish_non_exhaustive()
    }
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            table: ArcSwap::from_pointee(Table::new()),
        }
    }
}

impl Coalescer {
    /// Count `rec` under its key; [`Admit::Write`] while its key has had
    /// fewer than [`VERBATIM`] decisions this interval and fewer than
    /// [`MAX_VERBATIM`] were written over all keys (and for records that are
    /// never counted).
    pub fn admit(&self, rec: &Record) -> Admit {
        if !countable(rec) {
            return Admit::Write;
        }
        // A full `Arc`, not a guard: `flush` waits for these to be dropped.
        let table = self.table.load_full();
        let slots = table.slots.pin();
        let mut key = Key::of(rec);
        let mut coarse = false;
        if !slots.contains_key(&key) && table.keys.load(Ordering::Relaxed) >= MAX_KEYS {
            key = key.coarse();
            coarse = true;
        }
        let slot = slots.get_or_insert_with(key, || {
            table.keys.fetch_add(1, Ordering::Relaxed);
            let mut template = rec.clone();
            if coarse {
                // Decisions of many clients and zones: none of theirs is the
                // record's (the samples say which names).
                template.set_destination(None, 0);
                template.port = None;
                template.src = None;
                template.process = None;
                template.host = None;
            }
            Slot {
                template,
                seen: AtomicU64::new(0),
                written: AtomicU64::new(0),
                sampled: AtomicUsize::new(0),
                samples: Default::default(),
            }
        });
        if slot.seen.fetch_add(1, Ordering::AcqRel) < VERBATIM
            && table.written.fetch_add(1, Ordering::AcqRel) < MAX_VERBATIM
        {
            slot.written.fetch_add(1, Ordering::AcqRel);
            return Admit::Write;
        }
        if let Some(host) = &rec.host {
            sample(slot, host);
        }
        Admit::Counted
    }

    /// End the interval: the counted records of every key that had more
    /// than [`VERBATIM`] decisions, stamped now. Decisions admitted from now
    /// on count in the next interval.
    pub async fn flush(&self) -> Vec<Record> {
        let old = self.table.swap(Arc::new(Table::new()));
        // Callers hold the old table only inside `admit` (no await there).
        while Arc::strong_count(&old) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let started = old.started;
        let slots = old.slots.pin();
        slots
            .values()
            .filter_map(|slot| counted(slot, started))
            .collect()
    }
}

/// Keep `host` as a sample of `slot` unless it is one already or enough are.
fn sample(slot: &Slot, host: &str) {
    if slot.sampled.load(Ordering::Relaxed) >= SAMPLES {
        return;
    }
    let seen = slot.samples.iter().any(|s| {
        s.load()
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(host))
    });
    if seen {
        return;
    }
    let i = slot.sampled.fetch_add(1, Ordering::AcqRel);
    if let Some(s) = slot.samples.get(i) {
        s.store(Some(Arc::new(host.to_owned())));
    }
}

/// The counted record of `slot`, if any of its decisions were counted.
fn counted(slot: &Slot, started: jiff::Timestamp) -> Option<Record> {
    let n = slot.seen.load(Ordering::Acquire) - slot.written.load(Ordering::Acquire);
    if n == 0 {
        return None;
    }
    let t = &slot.template;
    let mut rec = t.clone();
    rec.id = egressd_audit::id::next();
    rec.ts = egressd_audit::time_format::now();
    // The zone, not the first name: the count is of every name under it.
    rec.host = t.host.as_deref().map(zone);
    let mut samples: Vec<String> = Vec::new();
    for s in &slot.samples {
        if let Some(s) = s.load_full()
            && !samples.iter().any(|have| have.eq_ignore_ascii_case(&s))
        {
            samples.push(s.to_string());
        }
    }
    rec.samples = (!samples.is_empty()).then_some(samples);
    rec.count = Some(n);
    rec.detail = Some(format!(
        "{n} more decisions like this (same kind, reason, rule, client and zone) since {}, counted here instead of written one by one",
        String::from_utf8_lossy(&{
            let mut ts = Vec::new();
            egressd_audit::time_format::print(&started, &mut ts);
            ts
        })
    ));
    Some(rec)
}

#[cfg(test)]
mod tests;
