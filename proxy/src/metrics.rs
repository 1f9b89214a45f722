//! Operational metrics in the Prometheus text format (`--metrics ADDR`):
//! decisions by verdict and reason, open connections, relayed bytes, DNS
//! queries, decision and connect latency histograms, journal queue depth,
//! decisions written as counts.
//! Plain atomics: recording a value on the hot path takes no lock and allocates
//! nothing; only a scrape formats text.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use egressd_policy::{Decision, Reason, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::engine::Engine;

/// Every reason code, in the order they are exported.
const REASONS: [Reason; Reason::ALL.len()] = Reason::ALL;

/// One counter slot per reason.
const REASON_SLOTS: usize = REASONS.len();

/// The slot of `reason` in the counters: its declaration index, no search.
fn reason_index(reason: Reason) -> usize {
    reason as usize
}

fn reason_label(slot: usize) -> &'static str {
    REASONS.get(slot).map_or("unknown", |r| r.as_str())
}

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25, 1.0, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug)]
pub struct Histogram {
    /// Non-cumulative counts; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        if let Some(c) = self.counts.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            match BUCKETS.get(i) {
                Some(b) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The process-wide counters.
#[derive(Debug)]
pub struct Metrics {
    /// `[verdict][reason]`: verdict 0 = allow, 1 = deny (what happened to the traffic).
    decisions: [[AtomicU64; REASON_SLOTS]; 2],
    /// Decisions in audit mode that enforce mode would have denied.
    would_deny: AtomicU64,
    dns_queries: [AtomicU64; 2],
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_rejected: AtomicU64,
    counted: AtomicU64,
    /// Time to reach a decision (peek excluded).
    pub decision_latency: Histogram,
    /// Time to connect to the upstream.
    pub connect_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            decisions: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            would_deny: AtomicU64::new(0),
            dns_queries: std::array::from_fn(|_| AtomicU64::new(0)),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_rejected: AtomicU64::new(0),
            counted: AtomicU64::new(0),
            decision_latency: Histogram::default(),
            connect_latency: Histogram::default(),
        }
    }
}

const fn verdict_index(v: Verdict) -> usize {
    match v {
        Verdict::Allow => 0,
        Verdict::Deny => 1,
    }
}

impl Metrics {
    /// Count a TCP decision (one per connection attempt).
    pub fn decision(&self, d: &Decision) {
        self.count_decision(d);
    }

    /// Count a DNS query's decision.
    pub fn dns_query(&self, d: &Decision) {
        if let Some(c) = self.dns_queries.get(verdict_index(d.verdict)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.count_decision(d);
    }

    fn count_decision(&self, d: &Decision) {
        if let Some(c) = self
            .decisions
            .get(verdict_index(d.verdict))
            .and_then(|row| row.get(reason_index(d.reason)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if d.enforce_would == Some(Verdict::Deny) {
            self.would_deny.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A tunnel was opened; the guard closes it in the gauge when dropped.
    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection { metrics: self }
    }

    /// Bytes relayed (client -> upstream, upstream -> client).
    pub fn bytes(&self, up: u64, down: u64) {
        if up > 0 {
            self.bytes_up.fetch_add(up, Ordering::Relaxed);
        }
        if down > 0 {
            self.bytes_down.fetch_add(down, Ordering::Relaxed);
        }
    }

    /// A policy reload: accepted or rejected.
    pub fn reload(&self, accepted: bool) {
        if accepted {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reloads_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` decisions written in a counted record, not one record each.
    pub fn counted(&self, n: u64) {
        self.counted.fetch_add(n, Ordering::Relaxed);
    }

    /// Current number of open tunnels.
    pub fn open_connections(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// The text exposition. `journal_queue_depth` is sampled by the caller.
    pub fn render(&self, journal_queue_depth: usize) -> String {
        let mut out = String::with_capacity(8 * 1024);
        out.push_str(
            "# HELP egressd_decisions_total Decisions by what happened to the traffic and why.\n\
             # TYPE egressd_decisions_total counter\n",
        );
        for (vi, verdict) in [Verdict::Allow, Verdict::Deny].into_iter().enumerate() {
            for slot in 0..REASON_SLOTS {
                let n = self
                    .decisions
                    .get(vi)
                    .and_then(|row| row.get(slot))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "egressd_decisions_total{{verdict=\"{}\",reason=\"{}\"}} {n}",
                        verdict.as_str(),
                        reason_label(slot)
                    );
                }
            }
        }
        let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        gauge(
            "egressd_audit_mode_would_deny_total",
            "counter",
            "Decisions let through in audit mode that enforce mode would have denied.",
            self.would_deny.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_connections_open",
            "gauge",
            "Tunnels currently relaying.",
            self.connections_open.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_connections_total",
            "counter",
            "Tunnels opened since start.",
            self.connections_total.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_bytes_up_total",
            "counter",
            "Bytes relayed from clients to upstreams.",
            self.bytes_up.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_bytes_down_total",
            "counter",
            "Bytes relayed from upstreams to clients.",
            self.bytes_down.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_journal_queue_depth",
            "gauge",
            "Audit records waiting to be written.",
            journal_queue_depth.to_string(),
        );
        gauge(
            "egressd_policy_reloads_total",
            "counter",
            "Policy reloads accepted.",
            self.reloads_ok.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_policy_reloads_rejected_total",
            "counter",
            "Policy reloads rejected (the previous policy stayed active).",
            self.reloads_rejected.load(Ordering::Relaxed).to_string(),
        );
        gauge(
            "egressd_audit_counted_decisions_total",
            "counter",
            "Repeated denies written in counted records (with a count) instead of one record each.",
            self.counted.load(Ordering::Relaxed).to_string(),
        );
        out.push_str(
            "# HELP egressd_dns_queries_total DNS queries by decision.\n\
             # TYPE egressd_dns_queries_total counter\n",
        );
        for (vi, verdict) in [Verdict::Allow, Verdict::Deny].into_iter().enumerate() {
            let n = self
                .dns_queries
                .get(vi)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "egressd_dns_queries_total{{verdict=\"{}\"}} {n}",
                verdict.as_str()
            );
        }
        self.decision_latency.render(
            &mut out,
            "egressd_decision_seconds",
            "Time from a complete peek to the decision.",
        );
        self.connect_latency.render(
            &mut out,
            "egressd_upstream_connect_seconds",
            "Time to connect to the upstream of an allowed tunnel.",
        );
        out
    }
}

/// Keeps `egressd_connections_open` counted while a tunnel lives.
#[derive(Debug)]
pub struct OpenConnection<'a> {
    metrics: &'a Metrics,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `GET /metrics` (any path, in fact) on `listener` until the engine
/// stops accepting. One short request per connection; a slow or silent
/// scraper is dropped after a few seconds.
pub async fn serve(engine: Arc<Engine>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = engine.stop_accepting().cancelled() => return,
        };
        let Ok((mut stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let engine = Arc::clone(&engine);
        tokio::spawn(async move {
            let mut head = [0u8; 2048];
            let mut got = 0;
            // Read until the end of the request head, or give up quietly.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while got < head.len() {
                    match stream.read(&mut head[got..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => got += n,
                    }
                    if head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let body = engine.metrics().render(engine.journal().queue_depth());
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egressd_policy::RuleId;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.decision(&Decision::enforce(
            Verdict::Deny,
            Reason::NoRule,
            RuleId::Default,
        ));
        m.decision(
            &Decision::enforce(Verdict::Deny, Reason::NoRule, RuleId::Default).into_audit_mode(),
        );
        m.decision_latency.observe(Duration::from_micros(3));
        let open = m.connection_opened();
        m.bytes(10, 20);
        let text = m.render(4);
        assert!(text.contains("egressd_decisions_total{verdict=\"deny\",reason=\"no_rule\"} 1"));
        assert!(text.contains("egressd_decisions_total{verdict=\"allow\",reason=\"no_rule\"} 1"));
        assert!(text.contains("egressd_audit_mode_would_deny_total 1"));
        assert!(text.contains("egressd_connections_open 1"));
        assert!(text.contains("egressd_bytes_down_total 20"));
        assert!(text.contains("egressd_journal_queue_depth 4"));
        assert!(text.contains("egressd_audit_counted_decisions_total 0"));
        assert!(text.contains("egressd_decision_seconds_bucket{le=\"0.00001\"} 1"));
        assert!(text.contains("egressd_decision_seconds_count 1"));
        drop(open);
        assert!(m.render(0).contains("egressd_connections_open 0"));
    }
}
