//! The load generator: closed loop (a fixed number of clients back to back,
//! for peaks) and open loop (a constant arrival rate, for latency), over any
//! [`Op`]. Latency is measured from each request's *scheduled* start, so a
//! stalled server cannot hide its queue (no coordinated omission).
//!
//! Every op verifies its answer; an op that gets a wrong answer is an error,
//! counted apart from the expected denials.

pub mod dns;
pub mod tunnel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// What a verified op observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed and the payload came back intact (`bytes` moved upstream).
    Allowed {
        /// Payload bytes sent to the destination.
        bytes: u64,
        /// When the client could first send to its destination, if the op
        /// measures that (W7); the latency then ends here, not at the end.
        ready: Option<Instant>,
    },
    /// Denied, as the allowlist says it must be.
    Denied,
}

/// One request of a workload; `i` picks the name (and so the expected verdict).
pub trait Op: Send + Sync + 'static {
    /// Runs request `i`; `Err` is a verification failure or I/O error.
    fn call(&self, i: u64) -> impl Future<Output = Result<Outcome, String>> + Send;
}

/// Counters and latency of one load run.
#[derive(Debug)]
pub struct Report {
    /// Ops that were allowed and verified.
    pub allowed: u64,
    /// Ops that were denied as expected.
    pub denied: u64,
    /// Ops that failed verification, timed out or hit an I/O error.
    pub errors: u64,
    /// Of `errors`, the ops that got no answer within the timeout (for UDP:
    /// lost queries).
    pub timeouts: u64,
    /// The first few error messages.
    pub error_samples: Vec<String>,
    /// Payload bytes moved by allowed ops.
    pub bytes: u64,
    /// Wall time of the run (until the last op finished).
    pub elapsed: Duration,
    /// Latency in microseconds (open loop: from the scheduled start), until
    /// the op's `ready` instant when it reports one, else until it finished.
    pub hist: Histogram<u64>,
    /// Latency in microseconds until the op finished (its answer verified).
    pub done: Histogram<u64>,
}

impl Report {
    /// Verified ops per second.
    pub fn rate(&self) -> f64 {
        (self.allowed + self.denied) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Decisions the proxy must have made (and audited).
    pub fn decisions(&self) -> u64 {
        self.allowed + self.denied
    }
}

struct Shared {
    allowed: AtomicU64,
    denied: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    bytes: AtomicU64,
    samples: Mutex<Vec<String>>,
    hist: Mutex<Histogram<u64>>,
    done: Mutex<Histogram<u64>>,
}

impl Shared {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            allowed: AtomicU64::new(0),
            denied: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            samples: Mutex::new(Vec::new()),
            hist: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
            done: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3)?),
        })
    }

    /// Records one op that started (or was scheduled to start) at `start`.
    fn record(&self, result: Result<Outcome, OpError>, start: Instant) {
        let end = Instant::now();
        let micros = |t: Instant| t.saturating_duration_since(start).as_micros() as u64;
        let mut ready_at = end;
        match result {
            Ok(Outcome::Allowed { bytes, ready }) => {
                self.allowed.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
                ready_at = ready.unwrap_or(end);
            }
            Ok(Outcome::Denied) => {
                self.denied.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if e.timed_out {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                let e = e.message;
                if let Ok(mut s) = self.samples.lock()
                    && s.len() < 5
                {
                    s.push(e);
                }
                return;
            }
        }
        if let Ok(mut h) = self.hist.lock() {
            h.saturating_record(micros(ready_at).max(1));
        }
        if let Ok(mut h) = self.done.lock() {
            h.saturating_record(micros(end).max(1));
        }
    }

    fn into_report(self, elapsed: Duration) -> Report {
        Report {
            allowed: self.allowed.into_inner(),
            denied: self.denied.into_inner(),
            errors: self.errors.into_inner(),
            timeouts: self.timeouts.into_inner(),
            error_samples: self.samples.into_inner().unwrap_or_default(),
            bytes: self.bytes.into_inner(),
            elapsed,
            hist: self.hist.into_inner().unwrap_or_else(|e| e.into_inner()),
            done: self.done.into_inner().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// Why an op failed.
struct OpError {
    message: String,
    /// No answer within the timeout (as opposed to a wrong answer or an I/O error).
    timed_out: bool,
}

async fn timed<O: Op>(op: &O, i: u64, timeout: Duration) -> Result<Outcome, OpError> {
    match tokio::time::timeout(timeout, op.call(i)).await {
        Ok(r) => r.map_err(|message| OpError {
            message,
            timed_out: false,
        }),
        Err(_) => Err(OpError {
            message: format!("op {i}: no answer within {timeout:?}"),
            timed_out: true,
        }),
    }
}

/// `clients` clients run ops back to back until `duration` passed or
/// `max_ops` ops started; `first` offsets the op index (names stay fresh).
pub fn closed_loop<O: Op>(
    rt: &tokio::runtime::Handle,
    op: Arc<O>,
    clients: usize,
    duration: Duration,
    max_ops: u64,
    first: u64,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::new()?);
    let next = Arc::new(AtomicU64::new(first));
    let start = Instant::now();
    let deadline = start + duration;
    rt.block_on(async {
        let mut tasks = Vec::with_capacity(clients);
        for _ in 0..clients {
            let (op, shared, next) = (op.clone(), shared.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i - first >= max_ops {
                        break;
                    }
                    let t0 = Instant::now();
                    let r = timed(&*op, i, timeout).await;
                    shared.record(r, t0);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = start.elapsed();
    let shared =
        Arc::into_inner(shared).ok_or_else(|| anyhow::anyhow!("load tasks still running"))?;
    Ok(shared.into_report(elapsed))
}

/// Ops start at a constant `rate` per second for `duration` (open loop); each
/// op's latency counts from its scheduled start time.
pub fn open_loop<O: Op>(
    rt: &tokio::runtime::Handle,
    op: Arc<O>,
    rate: f64,
    duration: Duration,
    first: u64,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let shared = Arc::new(Shared::new()?);
    let in_flight = Arc::new(AtomicU64::new(0));
    let total = (rate * duration.as_secs_f64()).ceil() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let start = Instant::now();
    // The dispatcher is a plain thread with a fine timer slack: tokio's timer
    // wheel has a 1 ms granularity, which would bunch arrivals into bursts.
    let dispatcher = {
        let (rt, op, shared, in_flight) =
            (rt.clone(), op.clone(), shared.clone(), in_flight.clone());
        std::thread::spawn(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
            }
            for k in 0..total {
                let intended = start + interval.mul_f64(k as f64);
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                let (op, shared, in_flight) = (op.clone(), shared.clone(), in_flight.clone());
                in_flight.fetch_add(1, Ordering::Relaxed);
                rt.spawn(async move {
                    let r = timed(&*op, first + k, timeout).await;
                    shared.record(r, intended);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        })
    };
    let _ = dispatcher.join();
    while in_flight.load(Ordering::Relaxed) > 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    // Tasks drop their clones right after decrementing; give them a moment.
    let mut shared = shared;
    for _ in 0..1000 {
        match Arc::try_unwrap(shared) {
            Ok(s) => return Ok(s.into_report(elapsed)),
            Err(s) => {
                shared = s;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    anyhow::bail!("open-loop tasks did not finish")
}
