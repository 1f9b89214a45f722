//! W1-W7 (performance.md): which targets each workload runs against, with
//! which op and load, and the table each prints.

use std::sync::Arc;
use std::time::Duration;

use super::allowlist::Allowlist;
use super::loadgen::Op;
use super::loadgen::dns::DnsQuery;
use super::loadgen::tunnel::{self, Bulk, ConnectEcho, Hellos, TlsEcho, TunnelSetup, Via};
use super::measure::{Audits, Bench, Fleet, Load, Measured, Outcome};
use super::peers::{Role, Running, Target};
use super::redirect;
use super::report::{Table, median, ratio, spread};

const CONNECT_TARGETS: [Target; 5] = [
    Target::Direct,
    Target::Relay,
    Target::Squid,
    Target::Tinyproxy,
    Target::Egressd,
];
const SNI_TARGETS: [Target; 5] = [
    Target::Direct,
    Target::Relay,
    Target::Haproxy,
    Target::Nginx,
    Target::Egressd,
];
const DNS_TARGETS: [Target; 5] = [
    Target::Direct,
    Target::Dnsmasq,
    Target::Unbound,
    Target::Dnsdist,
    Target::Egressd,
];

/// The role a target plays in a TCP workload whose SNI routers forward to `upstream`.
fn tcp_role(t: Target, upstream: std::net::SocketAddr) -> Role {
    match t {
        Target::Haproxy | Target::Nginx => Role::Sni { upstream },
        Target::Relay | Target::Egressd if upstream.port() != 0 => Role::Sni { upstream },
        _ => Role::Connect,
    }
}

/// The journal cell of `t` and whether it fails the run (a missing record,
/// or egressd not stopping cleanly).
fn audit_cell(audits: &Audits, t: Target) -> (String, bool) {
    match audits.iter().find(|(x, _)| *x == t).map(|(_, a)| a) {
        Some(Ok(Some(check))) => (check.cell(), check.missing() > 0),
        Some(Ok(None)) | None => ("-".to_owned(), false),
        Some(Err(e)) => (format!("**{e}**"), !t.is_peer()),
    }
}

/// The peer whose `f` is best (the highest when `higher`, else the lowest),
/// with its measurements; peers that did not run or give NaN are skipped.
fn best_peer_run(
    results: &[(Target, Outcome)],
    f: impl Fn(&Measured) -> f64,
    higher: bool,
) -> Option<(Target, &Measured)> {
    results
        .iter()
        .filter(|(t, _)| t.is_peer())
        .filter_map(|(t, r)| r.as_ref().ok().map(|m| (*t, m)))
        .filter(|(_, m)| !f(m).is_nan())
        .max_by(|a, b| {
            let order = f(a.1).total_cmp(&f(b.1));
            if higher { order } else { order.reverse() }
        })
}

/// The best peer's value of `f` (see [`best_peer_run`]).
fn best_peer(
    results: &[(Target, Outcome)],
    f: impl Fn(&Measured) -> f64,
    higher: bool,
) -> Option<f64> {
    best_peer_run(results, &f, higher).map(|(_, m)| f(m))
}

/// egressd against the best peer (by median peak) repetition by repetition:
/// the passes interleave targets within each repetition, so each pair ran
/// seconds apart on the same machine state, and their ratio is free of the
/// slower drift (other tenants, CPU frequency) that moves a ratio of medians
/// between runs. `None` without egressd, a peer or matching repetitions.
fn paired_note(results: &[(Target, Outcome)], unit: &str) -> Option<String> {
    let (peer, pm) = best_peer_run(results, |m| median(&m.rates), true)?;
    let em = of(results, Target::Egressd)?;
    let pairs = |a: &[f64], b: &[f64], flip: bool| -> Vec<f64> {
        a.iter()
            .zip(b)
            .filter(|(x, y)| **x > 0.0 && **y > 0.0)
            .map(|(x, y)| if flip { y / x } else { x / y })
            .collect()
    };
    let rates = pairs(&em.rates, &pm.rates, false);
    if rates.is_empty() || em.rates.len() != pm.rates.len() {
        return None;
    }
    let cpu = pairs(&em.cpu_per_op, &pm.cpu_per_op, true);
    let range = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        });
        format!("{:.2}x ({lo:.2}-{hi:.2})", median(v))
    };
    let mut note = format!(
        "egressd against {} (the best peer) repetition by repetition, {} pairs run seconds apart: {unit} {}",
        peer.name(),
        rates.len(),
        range(&rates)
    );
    if cpu.len() == rates.len() {
        note.push_str(&format!(
            ", CPU per op {} (above 1: egressd uses less)",
            range(&cpu)
        ));
    }
    Some(note)
}

fn of(results: &[(Target, Outcome)], t: Target) -> Option<&Measured> {
    results
        .iter()
        .find(|(x, _)| *x == t)
        .and_then(|(_, r)| r.as_ref().ok())
}

/// W1 and W2: peak conn/s (closed loop), then latency at one common rate
/// (open loop, half the relay's peak) for every target; all targets are
/// started once, before the first pass.
fn rate_workload<O: Op>(
    b: &Bench,
    table: &mut Table,
    tag: &str,
    targets: &[Target],
    upstream: std::net::SocketAddr,
    timeout: Duration,
    make: &dyn Fn(&Running) -> Arc<O>,
) {
    let list = Allowlist::base();
    let clients = 32;
    let reps = b.settings.reps;
    let mut fleet = b.fleet(tag, targets, &|t| tcp_role(t, upstream), &list, true);
    let peaks = fleet.pass(
        "peak",
        reps,
        &|_| {
            Some(Load::Closed {
                clients,
                max_ops: u64::MAX,
            })
        },
        timeout,
        make,
    );
    // Latency at one rate for all: half the floor's peak, or half a
    // target's own peak when it cannot take that much (its row says so).
    let floor = of(&peaks, Target::Relay).map_or(1000.0, |m| median(&m.rates));
    let rate = (floor * 0.5).max(50.0);
    let rate_of =
        |t: Target| of(&peaks, t).map_or(rate, |m| rate.min(median(&m.rates) * 0.5).max(20.0));
    let lats = fleet.pass(
        "latency",
        reps,
        &|t| Some(Load::Open { rate: rate_of(t) }),
        timeout,
        make,
    );
    let audits = fleet.stop();
    let direct = of(&peaks, Target::Direct).map(|m| median(&m.rates));
    let relay = of(&peaks, Target::Relay).map(|m| median(&m.rates));
    let best = best_peer(&peaks, |m| median(&m.rates), true);
    let d50 = of(&lats, Target::Direct)
        .map(|m| median(&m.p50))
        .unwrap_or(0.0);
    let d99 = of(&lats, Target::Direct)
        .map(|m| median(&m.p99))
        .unwrap_or(0.0);
    for ((t, peak), (_, lat)) in peaks.iter().zip(&lats) {
        let mut row = vec![t.name().to_owned()];
        match (peak, lat) {
            (Ok(p), Ok(l)) => {
                let r = median(&p.rates);
                let (audit, missing) = audit_cell(&audits, *t);
                row.extend([
                    spread(&p.rates, 0),
                    ratio(r, direct),
                    ratio(r, relay),
                    ratio(r, best),
                    format!("{:.0}", rate_of(*t)),
                    format!("{:+.0}", median(&l.p50) - d50),
                    format!("{:+.0}", median(&l.p99) - d99),
                    format!("{:.0}", median(&l.p50)),
                    format!("{:.0}", median(&l.p99)),
                    if *t == Target::Direct {
                        "-".to_owned()
                    } else {
                        spread(&p.cpu_per_op, 1)
                    },
                    if *t == Target::Direct {
                        "-".to_owned()
                    } else {
                        format!("{:.1}", p.rss as f64 / 1048576.0)
                    },
                    format!("{} / {}", p.errors_cell(), l.errors_cell()),
                    audit,
                ]);
                table.failed |= missing || (!t.is_peer() && (p.failed() || l.failed()));
            }
            (Err(e), _) | (_, Err(e)) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 12));
            }
        }
        table.rows.push(row);
    }
    table.notes.extend(paired_note(&peaks, "conn/s"));
    table.notes.push(format!(
        "peak: {clients} clients back to back, {reps} x {:?}, median (min-max); latency: open loop at {rate:.0} conn/s (half the relay's peak; half a target's own peak when that is lower, see 'latency at'), from the scheduled start (coordinated omission corrected), median of the repetitions' p50/p99; added = minus direct; audit records: both passes of one egressd process",
        b.settings.dur
    ));
}

const RATE_HEADER: [&str; 14] = [
    "target",
    "conn/s peak",
    "vs direct",
    "vs relay",
    "vs best peer",
    "latency at conn/s",
    "added p50 us",
    "added p99 us",
    "p50 us",
    "p99 us",
    "CPU us/conn",
    "RSS MiB",
    "errors (peak / latency)",
    "audit records",
];

/// W1: CONNECT, 32 B echo, close; 90% allowed.
pub fn w1(b: &Bench) -> Table {
    let mut t = Table::new(
        "W1 short tunnels: CONNECT, 32 B echo, close (90% allowed)",
        &RATE_HEADER,
    );
    let echo = b.env.backends.echo;
    rate_workload(
        b,
        &mut t,
        "w1",
        &CONNECT_TARGETS,
        std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        Duration::from_secs(5),
        &|r| {
            Arc::new(ConnectEcho {
                via: r.via,
                echo,
                hellos: None,
            })
        },
    );
    t
}

/// W2: TLS handshake with SNI, one 32 B request, close; 90% allowed.
pub fn w2(b: &Bench, connector: &tokio_rustls::TlsConnector) -> Table {
    let mut t = Table::new(
        "W2 SNI storm: real TLS handshake, one 32 B request per connection (90% allowed)",
        &RATE_HEADER,
    );
    let tls = b.env.backends.tls;
    rate_workload(
        b,
        &mut t,
        "w2",
        &SNI_TARGETS,
        tls,
        Duration::from_secs(5),
        &|r| {
            Arc::new(TlsEcho {
                via: r.via,
                tls,
                connector: connector.clone(),
            })
        },
    );
    t.notes.push("haproxy, nginx, the relay and egressd (`--sni-listen`, dialling the name's resolved address on the upstream's port) route on the ClientHello's SNI (an egressd build without `--sni-listen` runs W2 through CONNECT instead)".to_owned());
    t
}

/// W3: bulk upload, 1 and 8 streams.
pub fn w3(b: &Bench, hellos: &Hellos, total: u64) -> Table {
    let mut t = Table::new(
        "W3 bulk upload through an allowed tunnel",
        &[
            "target",
            "streams",
            "Gbit/s",
            "vs direct",
            "vs relay",
            "vs best peer",
            "CPU s/GB",
            "RSS MiB",
            "errors",
            "audit records",
        ],
    );
    let sink = b.env.backends.sink;
    let list = Allowlist::base();
    let targets = [
        Target::Direct,
        Target::Relay,
        Target::Squid,
        Target::Tinyproxy,
        Target::Haproxy,
        Target::Nginx,
        Target::Egressd,
    ];
    let role = |tg: Target| match tg {
        Target::Haproxy | Target::Nginx => Role::Sni { upstream: sink },
        _ => Role::Connect,
    };
    let mut fleet = b.fleet("w3", &targets, &role, &list, true);
    let passes: Vec<(u64, Vec<(Target, Outcome)>)> = [1u64, 8]
        .into_iter()
        .map(|streams| {
            let per = total / streams;
            let results = fleet.pass(
                &format!("{streams} streams"),
                b.settings.reps,
                &|_| {
                    Some(Load::Closed {
                        clients: streams as usize,
                        max_ops: streams,
                    })
                },
                Duration::from_secs(120),
                &|r| {
                    Arc::new(Bulk {
                        via: r.via,
                        sink,
                        bytes: per,
                        hellos: hellos.clone(),
                    })
                },
            );
            (streams, results)
        })
        .collect();
    let audits = fleet.stop();
    for (streams, results) in &passes {
        let gbit = |m: &Measured| median(&m.bytes_per_s) * 8.0 / 1e9;
        let direct = of(results, Target::Direct).map(gbit);
        let relay = of(results, Target::Relay).map(gbit);
        let best = best_peer(results, gbit, true);
        for (tg, r) in results {
            let mut row = vec![tg.name().to_owned(), streams.to_string()];
            match r {
                Ok(m) => {
                    let g: Vec<f64> = m.bytes_per_s.iter().map(|b| b * 8.0 / 1e9).collect();
                    let (audit, missing) = audit_cell(&audits, *tg);
                    row.extend([
                        spread(&g, 1),
                        ratio(gbit(m), direct),
                        ratio(gbit(m), relay),
                        ratio(gbit(m), best),
                        if *tg == Target::Direct {
                            "-".to_owned()
                        } else {
                            spread(&m.cpu_s_per_gb, 2)
                        },
                        if *tg == Target::Direct {
                            "-".to_owned()
                        } else {
                            format!("{:.1}", m.rss as f64 / 1048576.0)
                        },
                        m.errors_cell(),
                        audit,
                    ]);
                    t.failed |= missing || (!tg.is_peer() && m.failed());
                }
                Err(e) => {
                    row.push(format!("not run: {e}"));
                    row.extend(std::iter::repeat_n(String::new(), 7));
                }
            }
            t.rows.push(row);
        }
    }
    t.notes.push(format!(
        "{:.2} GiB per repetition split over the streams, {} repetitions; every stream starts with a real ClientHello (SNI routers route on it) and the sink's byte count is checked; CONNECT proxies and egressd via CONNECT, haproxy/nginx via SNI; audit records: both stream counts of one egressd process",
        total as f64 / (1u64 << 30) as f64,
        b.settings.reps
    ));
    t
}

/// W5's pairs of repetitions at least (its target, a 2% change, is finer
/// than the quick run's 3 repetitions can resolve).
const W5_MIN_REPS: usize = 5;

/// Bisection steps of W4's search for the highest rate without loss.
const LOSSLESS_STEPS: usize = 5;
/// Passes the search may take: every step that loses is run once more.
const LOSSLESS_PASSES: usize = 2 * LOSSLESS_STEPS;
/// The search's bracket, as fractions of the target's own closed-loop peak.
const LOSSLESS_LOW: f64 = 0.4;
const LOSSLESS_HIGH: f64 = 1.1;

/// One target's search for its highest rate without loss.
#[derive(Debug, Clone, Copy)]
struct Lossless {
    /// The bracket still to bisect.
    lo: f64,
    hi: f64,
    /// The highest rate at which a step lost nothing.
    passed: Option<f64>,
    /// The lowest rate tried (what a target that never passed is below).
    lowest: f64,
    /// A rate that lost once: it is run once more before it counts as
    /// lost, so one hiccup of the shared machine does not condemn it.
    retry: Option<f64>,
    /// Bisection steps decided so far.
    decided: usize,
}

impl Lossless {
    /// A search between [`LOSSLESS_LOW`] and [`LOSSLESS_HIGH`] of `peak`.
    fn new(peak: f64) -> Self {
        Lossless {
            lo: peak * LOSSLESS_LOW,
            hi: peak * LOSSLESS_HIGH,
            passed: None,
            lowest: peak * LOSSLESS_HIGH,
            retry: None,
            decided: 0,
        }
    }

    /// The rate of the next step: a rate that lost once, again, or the
    /// middle of the bracket.
    fn next_rate(&self) -> f64 {
        self.retry.unwrap_or((self.lo + self.hi) / 2.0)
    }

    /// Whether all [`LOSSLESS_STEPS`] steps are decided.
    fn done(&self) -> bool {
        self.decided >= LOSSLESS_STEPS
    }

    /// A step at `rate` lost queries (`lost`) or not. A first loss at a
    /// rate decides nothing yet: the next step runs the same rate again.
    fn record(&mut self, rate: f64, lost: bool) {
        self.lowest = self.lowest.min(rate);
        if lost && self.retry.is_none() {
            self.retry = Some(rate);
            return;
        }
        self.retry = None;
        self.decided += 1;
        if lost {
            self.hi = rate;
        } else {
            self.lo = rate;
            self.passed = Some(self.passed.map_or(rate, |p| p.max(rate)));
        }
    }

    /// `"48123 (1.05x)"`, or `"< 20000"` when no step passed.
    fn cell(&self, best_peer: Option<f64>) -> String {
        match self.passed {
            Some(r) => format!("{r:.0} ({})", ratio(r, best_peer)),
            None => format!("< {:.0}", self.lowest),
        }
    }
}

/// Bisects, for every target with a peak, the open-loop rate between
/// [`LOSSLESS_LOW`] and [`LOSSLESS_HIGH`] of that peak: a step with no lost
/// or wrong answer raises the floor; a rate that loses twice in a row (the
/// step is run once more) lowers the ceiling. Every step is one pass over
/// the targets still searching, so a drift of the machine touches them
/// alike.
fn lossless_search<O: Op>(
    fleet: &mut Fleet<'_>,
    peaks: &[(Target, Outcome)],
    timeout: Duration,
    make: &dyn Fn(&Running) -> Arc<O>,
) -> Vec<(Target, Lossless)> {
    let mut searches: Vec<(Target, Lossless)> = peaks
        .iter()
        .filter_map(|(tg, r)| r.as_ref().ok().map(|m| (*tg, median(&m.rates))))
        .filter(|(_, peak)| *peak > 0.0)
        .map(|(tg, peak)| (tg, Lossless::new(peak)))
        .collect();
    for step in 0..LOSSLESS_PASSES {
        let rates: Vec<(Target, f64)> = searches
            .iter()
            .filter(|(_, s)| !s.done())
            .map(|(tg, s)| (*tg, s.next_rate()))
            .collect();
        if rates.is_empty() {
            break;
        }
        let results = fleet.pass(
            &format!("without loss, pass {}", step + 1),
            1,
            &|tg| {
                rates
                    .iter()
                    .find(|(x, _)| *x == tg)
                    .map(|(_, rate)| Load::Open { rate: *rate })
            },
            timeout,
            make,
        );
        for (tg, rate) in &rates {
            let Some((_, search)) = searches.iter_mut().find(|(x, _)| x == tg) else {
                continue;
            };
            // A step that did not run counts as lost: nothing was shown.
            let lost = results
                .iter()
                .find(|(x, _)| x == tg)
                .is_none_or(|(_, r)| r.as_ref().map_or(true, |m| m.errors > 0));
            search.record(*rate, lost);
        }
    }
    searches
}

/// W4: DNS, 70% allowed names, UDP.
pub fn w4(b: &Bench) -> Table {
    let mut t = Table::new(
        "W4 DNS over UDP (70% allowed names, every name new)",
        &[
            "target",
            "qps peak",
            "vs direct",
            "vs best peer",
            "added p50 us",
            "added p99 us",
            "loss at 80% of own peak",
            "qps without loss",
            "CPU us/query",
            "RSS MiB",
            "errors (peak / latency)",
            "audit records",
        ],
    );
    let list = Allowlist::base();
    let timeout = Duration::from_secs(1);
    let salt = b.next_op.get();
    let make = |r: &Running| {
        Arc::new(DnsQuery {
            server: r.dns.unwrap_or(b.env.backends.dns),
            salt,
            filters: r.dns != Some(b.env.backends.dns),
        })
    };
    let mut fleet = b.fleet("w4", &DNS_TARGETS, &|_| Role::Dns, &list, false);
    let peaks = fleet.pass(
        "peak",
        b.settings.reps,
        &|_| {
            Some(Load::Closed {
                clients: 64,
                max_ops: u64::MAX,
            })
        },
        timeout,
        &make,
    );
    let lowest = peaks
        .iter()
        .filter(|(x, _)| *x != Target::Direct)
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(|m| median(&m.rates))
        .fold(f64::INFINITY, f64::min);
    let rate = if lowest.is_finite() {
        (lowest * 0.5).max(50.0)
    } else {
        500.0
    };
    let lats = fleet.pass(
        "latency",
        b.settings.reps,
        &|_| Some(Load::Open { rate }),
        timeout,
        &make,
    );
    let losses = fleet.pass(
        "loss",
        b.settings.loss_reps,
        &|tg| {
            of(&peaks, tg).map(|m| Load::Open {
                rate: median(&m.rates) * 0.8,
            })
        },
        timeout,
        &make,
    );
    let lossless = lossless_search(&mut fleet, &peaks, timeout, &make);
    let audits = fleet.stop();
    let direct = of(&peaks, Target::Direct).map(|m| median(&m.rates));
    let best = best_peer(&peaks, |m| median(&m.rates), true);
    let best_lossless = lossless
        .iter()
        .filter(|(tg, _)| tg.is_peer())
        .filter_map(|(_, s)| s.passed)
        .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))));
    let d50 = of(&lats, Target::Direct)
        .map(|m| median(&m.p50))
        .unwrap_or(0.0);
    let d99 = of(&lats, Target::Direct)
        .map(|m| median(&m.p99))
        .unwrap_or(0.0);
    // The reference (the bench's own upstream) is not under test: queries
    // it never answered are its loss, shown as such; a wrong answer from it
    // is still an error of the run.
    let reference_loss = |tg: Target, m: &Measured| {
        if tg == Target::Direct && m.errors > 0 && m.errors == m.timeouts {
            Some(format!(
                "0 (the reference lost {} of {})",
                m.timeouts, m.ops
            ))
        } else {
            None
        }
    };
    for (((tg, peak), (_, lat)), (_, loss)) in peaks.iter().zip(&lats).zip(&losses) {
        let mut row = vec![tg.name().to_owned()];
        match (peak, lat) {
            (Ok(p), Ok(l)) => {
                let r = median(&p.rates);
                let (audit, missing) = audit_cell(&audits, *tg);
                let cell = |m: &Measured| reference_loss(*tg, m).unwrap_or_else(|| m.errors_cell());
                row.extend([
                    spread(&p.rates, 0),
                    ratio(r, direct),
                    ratio(r, best),
                    format!("{:+.0}", median(&l.p50) - d50),
                    format!("{:+.0}", median(&l.p99) - d99),
                    loss.as_ref()
                        .map_or("-".to_owned(), |m| format!("{} of {}", m.errors, m.ops)),
                    lossless
                        .iter()
                        .find(|(x, _)| x == tg)
                        .map_or("-".to_owned(), |(_, s)| s.cell(best_lossless)),
                    if *tg == Target::Direct {
                        "-".to_owned()
                    } else {
                        spread(&p.cpu_per_op, 1)
                    },
                    if *tg == Target::Direct {
                        "-".to_owned()
                    } else {
                        format!("{:.1}", p.rss as f64 / 1048576.0)
                    },
                    format!("{} / {}", cell(p), cell(l)),
                    audit,
                ]);
                let failed = |m: &Measured| m.failed() && reference_loss(*tg, m).is_none();
                t.failed |= missing || (!tg.is_peer() && (failed(p) || failed(l)));
            }
            (Err(e), _) | (_, Err(e)) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 10));
            }
        }
        t.rows.push(row);
    }
    t.notes.extend(paired_note(&peaks, "qps"));
    t.notes.push(format!(
        "qps without loss (performance.md's W4 measure): for each target a bisection over open-loop rates between {:.0}% and {:.0}% of its own peak, {LOSSLESS_STEPS} steps of one {:?} repetition each (the targets interleaved step by step); a step passes when every query got its right answer within the timeout, and a step that lost is run once more at the same rate before that rate counts as lost (one hiccup of the shared machine does not condemn a rate); the cell is the highest passing rate and its ratio to the best peer's (\"< N\": even the lowest step lost queries)",
        LOSSLESS_LOW * 100.0,
        LOSSLESS_HIGH * 100.0,
        b.settings.dur
    ));
    t.notes.push(format!(
        "direct = the bench upstream itself (its losses are reported as its own, not as errors of the run); peak: 64 clients back to back, {} x {:?}; latency: open loop at {rate:.0} qps (half the lowest resolver peak) for all, {} x {:?}; loss: open loop at 80% of each target's own peak, {} x {:?}, 1 s timeout; every target runs all three passes in one process (audit records: all passes); dnsmasq is single-threaded (no worker knob); answer caches cannot help (every name is new)",
        b.settings.reps,
        b.settings.dur,
        b.settings.reps,
        b.settings.dur,
        b.settings.loss_reps,
        b.settings.dur
    ));
    t
}

/// W5: 10 vs 10,000 rules, W1-style peak (CONNECT echo; SNI routers get the
/// ClientHello before the echo).
pub fn w5(b: &Bench, hellos: &Hellos) -> Table {
    let mut t = Table::new(
        "W5 10 vs 10,000 rules (names, wildcards, IPv4/IPv6 CIDRs): short-tunnel peak",
        &[
            "target",
            "conn/s, 10 rules",
            "conn/s, 10,000 rules",
            "change",
            "errors",
            "audit records",
        ],
    );
    let echo = b.env.backends.echo;
    let targets = [
        Target::Relay,
        Target::Squid,
        Target::Tinyproxy,
        Target::Haproxy,
        Target::Nginx,
        Target::Egressd,
    ];
    let small = Allowlist::base();
    let large = Allowlist::large(10_000);
    let sni = |tg: Target| matches!(tg, Target::Haproxy | Target::Nginx);
    let role = |tg: Target| {
        if sni(tg) {
            Role::Sni { upstream: echo }
        } else {
            Role::Connect
        }
    };
    let make = |r: &Running| {
        Arc::new(ConnectEcho {
            via: r.via,
            echo,
            hellos: matches!(r.via, Via::Sni(_)).then(|| hellos.clone()),
        })
    };
    let load = Load::Closed {
        clients: 32,
        max_ops: u64::MAX,
    };
    // Both rule sets run side by side, so each target's two figures are
    // measured back to back.
    let mut ten = b.fleet("w5-10", &targets, &role, &small, true);
    let mut tenk = b.fleet("w5-10k", &targets, &role, &large, true);
    // Each repetition with 10 rules is followed at once by one with 10,000
    // on the same target, and the change is the median of those pairs'
    // ratios: the machine's drift between pairs cancels out.
    let reps = b.settings.reps.max(W5_MIN_REPS);
    let passes: Vec<(Target, Outcome, Outcome, Vec<f64>)> = {
        let _phase = b.phase("w5: peaks, 10 and 10,000 rules per target, paired");
        targets
            .iter()
            .map(|&tg| {
                let timeout = Duration::from_secs(5);
                let (mut a, mut z) = (Measured::default(), Measured::default());
                let mut pairs = Vec::with_capacity(reps);
                let run = (|| -> Result<(), String> {
                    let (op_a, op_z) = (ten.op(tg, &make)?, tenk.op(tg, &make)?);
                    for _ in 0..reps {
                        ten.rep(tg, load, timeout, &op_a, &mut a)?;
                        tenk.rep(tg, load, timeout, &op_z, &mut z)?;
                        if let (Some(ra), Some(rz)) = (a.rates.last(), z.rates.last()) {
                            pairs.push(rz / ra.max(1e-9));
                        }
                    }
                    Ok(())
                })();
                match run {
                    Ok(()) => (tg, Ok(a), Ok(z), pairs),
                    Err(e) => (tg, Err(e.clone()), Err(e), pairs),
                }
            })
            .collect()
    };
    let (audits_a, audits_z) = (ten.stop(), tenk.stop());
    for (tg, a, z, pairs) in passes {
        let mut row = vec![tg.name().to_owned()];
        match (a, z) {
            (Ok(a), Ok(z)) => {
                let (audit_a, missing_a) = audit_cell(&audits_a, tg);
                let (audit_z, missing_z) = audit_cell(&audits_z, tg);
                row.extend([
                    spread(&a.rates, 0),
                    spread(&z.rates, 0),
                    format!("{:+.1}%", (median(&pairs) - 1.0) * 100.0),
                    format!("{} / {}", a.errors_cell(), z.errors_cell()),
                    if audit_a == "-" {
                        audit_a
                    } else {
                        format!("{audit_a}; {audit_z}")
                    },
                ]);
                t.failed |= missing_a || missing_z || (!tg.is_peer() && (a.failed() || z.failed()));
            }
            (Err(e), _) | (_, Err(e)) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 4));
            }
        }
        t.rows.push(row);
    }
    t.notes.push(format!("{reps} pairs of repetitions per target, each a 10-rule repetition then at once a 10,000-rule one; rates are the medians (min-max), change is the median of the pairs' ratios"));
    t.notes.push("Squid gets the name rules only (its `dst` CIDR ACLs resolve every request's name); haproxy/nginx match SNI names only; ns per lookup is in the policy crate's criterion benches".to_owned());
    t
}

/// RSS before, RSS with the tunnels open, failed opens.
type IdleRow = Result<(u64, u64, u64), String>;

/// W6: idle tunnels, RSS per tunnel.
pub fn w6(b: &Bench, hellos: &Hellos, n: u64) -> Table {
    let mut t = Table::new(
        &format!("W6 {n} idle tunnels (open, one echo round trip, hold)"),
        &[
            "target",
            "RSS before MiB",
            "RSS with tunnels MiB",
            "bytes per tunnel",
            "vs best peer",
            "errors",
            "audit records",
        ],
    );
    let echo = b.env.backends.echo;
    let list = Allowlist::base();
    let targets = [
        Target::Relay,
        Target::Squid,
        Target::Tinyproxy,
        Target::Haproxy,
        Target::Nginx,
        Target::Egressd,
    ];
    let role = |tg: Target| {
        if matches!(tg, Target::Haproxy | Target::Nginx) {
            Role::Sni { upstream: echo }
        } else {
            Role::Connect
        }
    };
    let settle = b.settings.settle;
    let mut fleet = b.fleet("w6", &targets, &role, &list, true);
    let measured: Vec<(Target, IdleRow)> = {
        let _phase = b.phase(&format!("w6: {n} idle tunnels per target"));
        targets
            .iter()
            .map(|&tg| {
                let r = fleet.member(tg).map(|m| {
                    let start = std::time::Instant::now();
                    let u0 = m.running.usage();
                    let (streams, errors) =
                        b.load
                            .block_on(open_idle_all(m.running.via, echo, n, hellos));
                    std::thread::sleep(settle);
                    let u1 = m.running.usage();
                    let opened = streams.len() as u64;
                    drop(streams);
                    // Let the proxy see the closes before the next target runs.
                    std::thread::sleep(settle);
                    m.decisions += opened;
                    m.closing += opened;
                    tracing::info!(
                        "w6: {}: {opened} tunnels, {errors} failed, {:.1} s",
                        tg.name(),
                        start.elapsed().as_secs_f64()
                    );
                    (u0.rss, u1.rss, errors)
                });
                (tg, r)
            })
            .collect()
    };
    let audits = fleet.stop();
    let rows = measured;
    let per = |(a, z, _): &(u64, u64, u64)| z.saturating_sub(*a) as f64 / n as f64;
    let best = rows
        .iter()
        .filter(|(x, _)| x.is_peer())
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(per)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.min(v)))
        });
    for (tg, r) in &rows {
        let mut row = vec![tg.name().to_owned()];
        match r {
            Ok(v) => {
                let (a, z, errors) = v;
                let (audit, missing) = audit_cell(&audits, *tg);
                row.extend([
                    format!("{:.1}", *a as f64 / 1048576.0),
                    format!("{:.1}", *z as f64 / 1048576.0),
                    format!("{:.0}", per(v)),
                    ratio(per(v), best),
                    if *errors == 0 {
                        "0".to_owned()
                    } else {
                        format!("**{errors}**")
                    },
                    audit,
                ]);
                t.failed |= missing || (!tg.is_peer() && *errors > 0);
            }
            Err(e) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 5));
            }
        }
        t.rows.push(row);
    }
    t.notes.push("RSS is the whole process tree's VmRSS; for 'vs best peer' lower is better (a ratio above 1 means more memory per tunnel); the full run holds 7,000 tunnels, not 10,000: this sandbox caps open files at 20,000 per process (no CAP_SYS_RESOURCE), and a tunnel costs a proxy two descriptors and the harness two (client and echo server), HAProxy's maxconn is set to fit".to_owned());
    t
}

async fn open_idle_all(
    via: Via,
    echo: std::net::SocketAddr,
    n: u64,
    hellos: &Hellos,
) -> (Vec<tokio::net::TcpStream>, u64) {
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let (sem, hellos) = (sem.clone(), hellos.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            tokio::time::timeout(
                Duration::from_secs(10),
                tunnel::open_idle(via, echo, i, &hellos),
            )
            .await
        }));
    }
    let mut streams = Vec::with_capacity(n as usize);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(Ok(s))) => streams.push(s),
            _ => errors += 1,
        }
    }
    (streams, errors)
}

/// W7: time until a client may send to its destination: direct, through the
/// explicit CONNECT listeners, and (as root) redirected by egressd's eBPF
/// programs beside a direct connect over the same path.
pub fn w7(b: &Bench) -> Table {
    let mut t = Table::new(
        "W7 connect latency (until the client may send)",
        &[
            "path",
            "p50 us",
            "p99 us",
            "first echo p50 us",
            "first echo p99 us",
            "errors",
            "audit records",
        ],
    );
    let echo = b.env.backends.echo;
    let list = Allowlist::base();
    let rows = [
        ("direct (loopback)", Target::Direct),
        ("explicit CONNECT, relay (floor)", Target::Relay),
        ("explicit CONNECT, egressd", Target::Egressd),
    ];
    let targets: Vec<Target> = rows.iter().map(|(_, t)| *t).collect();
    let mut fleet = b.fleet("w7", &targets, &|_| Role::Connect, &list, true);
    let results = fleet.pass(
        "latency",
        b.settings.reps,
        &|_| {
            Some(Load::Open {
                rate: redirect::RATE,
            })
        },
        Duration::from_secs(5),
        &|r| Arc::new(TunnelSetup { via: r.via, echo }),
    );
    let audits = fleet.stop();
    let mut push = |label: &str, r: &Outcome, audit: (String, bool)| match r {
        Ok(m) => {
            t.failed |= audit.1 || m.failed();
            t.rows.push(vec![
                label.to_owned(),
                spread(&m.p50, 0),
                spread(&m.p99, 0),
                spread(&m.done_p50, 0),
                spread(&m.done_p99, 0),
                m.errors_cell(),
                audit.0,
            ]);
        }
        Err(e) => {
            t.failed |= audit.1;
            let mut row = vec![label.to_owned(), format!("not run: {e}")];
            row.extend(std::iter::repeat_n(String::new(), 5));
            t.rows.push(row);
        }
    };
    for ((label, tg), (_, r)) in rows.iter().zip(&results) {
        push(label, r, audit_cell(&audits, *tg));
    }
    let ebpf_direct = "direct to the namespace (veth), client in the child cgroup";
    let ebpf = "eBPF redirect, egressd (same client, same cgroup)";
    match redirect::measure(b) {
        Ok(rows) => {
            push(ebpf_direct, &rows.direct, ("-".to_owned(), false));
            match rows.egressd {
                Ok((m, check)) => {
                    let missing = check.missing() > 0;
                    push(ebpf, &Ok(m), (check.cell(), missing));
                }
                // As root this row must run: a failure to run it fails the run.
                Err(e) => push(ebpf, &Err(e), ("-".to_owned(), true)),
            }
        }
        Err(why) => {
            push(ebpf_direct, &Err(why.clone()), ("-".to_owned(), false));
            push(ebpf, &Err(why), ("-".to_owned(), false));
        }
    }
    t.notes.push(format!(
        "open loop at {:.0} connections/s, {} x {:?}; latency from the scheduled start until the client may send (direct and eBPF: connect() returned; explicit: the proxy answered 200), then 32 bytes must come back from the echo server ('first echo': until they did); every op is an allowed destination",
        redirect::RATE,
        b.settings.reps,
        b.settings.dur
    ));
    t.notes.push("eBPF rows (root only): the kernel hooks leave loopback alone, so the destination is an echo server in a network namespace of the bench behind a veth pair (198.51.100.226), on a port of each row's own (a row's connections stay in TIME_WAIT for a minute); the client is a separate process in a fresh child cgroup, first with nothing attached (the direct row for this path), then with `egressd run --cgroup <child> --filter-loopback` attached; the client sends no name, so egressd decides on a CIDR rule for that address; with eBPF, egressd connects upstream after the client's first bytes, so its decision and upstream connect show in 'first echo', not in connect()".to_owned());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rates: &[f64], cpu: &[f64]) -> Outcome {
        Ok(Measured {
            rates: rates.to_vec(),
            cpu_per_op: cpu.to_vec(),
            ..Measured::default()
        })
    }

    #[test]
    fn paired_note_compares_egressd_with_the_best_peer_rep_by_rep() {
        let results = vec![
            (Target::Direct, measured(&[500.0, 500.0, 500.0], &[])),
            (
                Target::Haproxy,
                measured(&[90.0, 90.0, 90.0], &[10.0, 10.0, 10.0]),
            ),
            // The best peer by median; its second repetition ran on a slow
            // machine, and so did egressd's.
            (
                Target::Nginx,
                measured(&[100.0, 50.0, 100.0], &[10.0, 20.0, 10.0]),
            ),
            (
                Target::Egressd,
                measured(&[110.0, 60.0, 90.0], &[8.0, 16.0, 10.0]),
            ),
        ];
        let note = paired_note(&results, "conn/s").unwrap();
        assert!(
            note.starts_with("egressd against nginx (the best peer)"),
            "{note}"
        );
        assert!(note.contains("3 pairs"), "{note}");
        assert!(note.contains("conn/s 1.10x (0.90-1.20)"), "{note}");
        assert!(note.contains("CPU per op 1.25x (1.00-1.25)"), "{note}");
    }

    #[test]
    fn the_lossless_search_closes_in_on_the_highest_rate_without_loss() {
        // A target that loses queries above 700 qps, with a peak of 1,000:
        // the bracket starts at 400-1,100.
        let mut s = Lossless::new(1000.0);
        let mut passes = 0;
        while !s.done() && passes < LOSSLESS_PASSES {
            let rate = s.next_rate();
            s.record(rate, rate > 700.0);
            passes += 1;
        }
        assert!(s.done(), "{s:?}");
        let found = s.passed.unwrap();
        assert!(found <= 700.0 && found > 700.0 - 700.0 / 32.0, "{s:?}");
        assert_eq!(s.cell(Some(found / 2.0)), format!("{found:.0} (2.00x)"));

        // One that loses at every step is below the lowest rate tried; each
        // rate was tried twice, so the passes cover the steps.
        let mut never = Lossless::new(1000.0);
        for _ in 0..LOSSLESS_PASSES {
            never.record(never.next_rate(), true);
        }
        assert!(never.done(), "{never:?}");
        assert_eq!(never.passed, None);
        assert!(never.lowest < 450.0, "{never:?}");
        assert_eq!(never.cell(None), format!("< {:.0}", never.lowest));
    }

    #[test]
    fn a_rate_that_loses_once_is_run_again_before_it_counts_as_lost() {
        let mut s = Lossless::new(1000.0);
        let first = s.next_rate();
        s.record(first, true);
        assert_eq!(s.next_rate(), first, "the same rate again");
        assert_eq!((s.decided, s.hi), (0, 1100.0), "nothing decided yet");
        // It passes the second time: the floor rises to it.
        s.record(first, false);
        assert_eq!((s.decided, s.lo, s.passed), (1, first, Some(first)));
        // A rate that loses twice lowers the ceiling.
        let second = s.next_rate();
        assert!(second > first);
        s.record(second, true);
        s.record(second, true);
        assert_eq!((s.decided, s.hi, s.retry), (2, second, None));
        assert!(s.next_rate() < second && s.next_rate() > first);
    }

    #[test]
    fn best_peer_takes_the_highest_or_the_lowest_and_skips_non_peers() {
        let results = vec![
            (Target::Egressd, measured(&[900.0], &[])),
            (Target::Haproxy, measured(&[90.0], &[])),
            (Target::Nginx, measured(&[100.0], &[])),
            (Target::Squid, Err("not installed".to_owned())),
        ];
        let rate = |m: &Measured| median(&m.rates);
        assert_eq!(best_peer(&results, rate, true), Some(100.0));
        assert_eq!(best_peer(&results, rate, false), Some(90.0));
        assert_eq!(
            best_peer_run(&results, rate, true).map(|(t, _)| t),
            Some(Target::Nginx)
        );
        assert_eq!(best_peer(&results[..1], rate, true), None);
    }

    #[test]
    fn paired_note_needs_egressd_and_a_peer() {
        let only_peer = vec![(Target::Nginx, measured(&[1.0], &[1.0]))];
        assert!(paired_note(&only_peer, "qps").is_none());
        let failed_egressd = vec![
            (Target::Nginx, measured(&[1.0], &[1.0])),
            (Target::Egressd, Err("not built".to_owned())),
        ];
        assert!(paired_note(&failed_egressd, "qps").is_none());
    }
}
