//! W1-W7 (performance.md): which targets each workload runs against, with
//! which op and load, and the table each prints.

use std::sync::Arc;
use std::time::Duration;

use super::allowlist::Allowlist;
use super::audit_check::{self, AuditCheck};
use super::loadgen::Op;
use super::loadgen::dns::DnsQuery;
use super::loadgen::tunnel::{self, Bulk, ConnectEcho, Hellos, TlsEcho, TunnelSetup, Via};
use super::measure::{Bench, Load, Measured};
use super::peers::{self, Role, Running, Target};
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
        Target::Relay if upstream.port() != 0 => Role::Sni { upstream },
        _ => Role::Connect,
    }
}

type Outcome = Result<Measured, String>;

#[expect(
    clippy::too_many_arguments,
    reason = "mirrors Bench::run, plus the row's error text"
)]
fn run_or_row<O: Op>(
    b: &Bench,
    t: Target,
    role: Role,
    list: &Allowlist,
    tag: &str,
    load: Load,
    timeout: Duration,
    tunnels: bool,
    make: &dyn Fn(&Running) -> Arc<O>,
) -> Outcome {
    eprintln!("bench: {tag}: {} ...", t.name());
    match b.run(t, role, list, tag, load, timeout, tunnels, make) {
        Ok(r) => r,
        Err(e) => Err(format!("failed to run: {e:#}").replace('\n', " ")),
    }
}

fn best_peer(
    results: &[(Target, Outcome)],
    f: impl Fn(&Measured) -> f64,
    higher: bool,
) -> Option<f64> {
    let vals = results
        .iter()
        .filter(|(t, _)| t.is_peer())
        .filter_map(|(_, r)| r.as_ref().ok())
        .map(&f);
    if higher {
        vals.fold(None, |a, v| Some(a.map_or(v, |a: f64| a.max(v))))
    } else {
        vals.fold(None, |a, v| Some(a.map_or(v, |a: f64| a.min(v))))
    }
}

fn of(results: &[(Target, Outcome)], t: Target) -> Option<&Measured> {
    results
        .iter()
        .find(|(x, _)| *x == t)
        .and_then(|(_, r)| r.as_ref().ok())
}

/// W1 and W2: peak conn/s (closed loop), then latency at one common rate
/// (open loop, half the relay's peak) for every target.
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
    let peaks: Vec<(Target, Outcome)> = targets
        .iter()
        .map(|&t| {
            (
                t,
                run_or_row(
                    b,
                    t,
                    tcp_role(t, upstream),
                    &list,
                    &format!("{tag}-peak"),
                    Load::Closed {
                        clients,
                        max_ops: u64::MAX,
                    },
                    timeout,
                    true,
                    make,
                ),
            )
        })
        .collect();
    // Latency at one rate for all: half the floor's peak, or half a
    // target's own peak when it cannot take that much (its row says so).
    let floor = of(&peaks, Target::Relay).map_or(1000.0, |m| median(&m.rates));
    let rate = (floor * 0.5).max(50.0);
    let rate_of =
        |t: Target| of(&peaks, t).map_or(rate, |m| rate.min(median(&m.rates) * 0.5).max(20.0));
    let lats: Vec<(Target, Outcome)> = targets
        .iter()
        .map(|&t| {
            (
                t,
                run_or_row(
                    b,
                    t,
                    tcp_role(t, upstream),
                    &list,
                    &format!("{tag}-latency"),
                    Load::Open { rate: rate_of(t) },
                    timeout,
                    true,
                    make,
                ),
            )
        })
        .collect();
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
                    if p.audit.is_some() {
                        format!("{}; {}", p.audit_cell(), l.audit_cell())
                    } else {
                        "-".to_owned()
                    },
                ]);
                table.failed |= !t.is_peer() && (p.failed() || l.failed());
            }
            (Err(e), _) | (_, Err(e)) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 12));
            }
        }
        table.rows.push(row);
    }
    table.notes.push(format!(
        "peak: {clients} clients back to back, {} x {:?}, median (min-max); latency: open loop at {rate:.0} conn/s (half the relay's peak; half a target's own peak when that is lower, see 'latency at'), from the scheduled start (coordinated omission corrected), median of the repetitions' p50/p99; added = minus direct",
        b.settings.reps, b.settings.dur
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
    "audit records (peak; latency)",
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
    t.notes.push("haproxy, nginx and the relay route on the ClientHello's SNI; egressd has no SNI-routing listener usable without an original destination (that needs eBPF or nftables), so it runs W2 through its CONNECT listener with the real ClientHello inside the tunnel (one more round trip than the SNI routers)".to_owned());
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
    for streams in [1u64, 8] {
        let per = total / streams;
        let results: Vec<(Target, Outcome)> = targets
            .iter()
            .map(|&tg| {
                let role = match tg {
                    Target::Haproxy | Target::Nginx => Role::Sni { upstream: sink },
                    _ => Role::Connect,
                };
                let load = Load::Closed {
                    clients: streams as usize,
                    max_ops: streams,
                };
                (
                    tg,
                    run_or_row(
                        b,
                        tg,
                        role,
                        &list,
                        &format!("w3-{streams}"),
                        load,
                        Duration::from_secs(120),
                        true,
                        &|r| {
                            Arc::new(Bulk {
                                via: r.via,
                                sink,
                                bytes: per,
                                hellos: hellos.clone(),
                            })
                        },
                    ),
                )
            })
            .collect();
        let gbit = |m: &Measured| median(&m.bytes_per_s) * 8.0 / 1e9;
        let direct = of(&results, Target::Direct).map(gbit);
        let relay = of(&results, Target::Relay).map(gbit);
        let best = best_peer(&results, gbit, true);
        for (tg, r) in &results {
            let mut row = vec![tg.name().to_owned(), streams.to_string()];
            match r {
                Ok(m) => {
                    let g: Vec<f64> = m.bytes_per_s.iter().map(|b| b * 8.0 / 1e9).collect();
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
                        m.audit_cell(),
                    ]);
                    t.failed |= !tg.is_peer() && m.failed();
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
        "{:.2} GiB per repetition split over the streams, {} repetitions; every stream starts with a real ClientHello (SNI routers route on it) and the sink's byte count is checked; CONNECT proxies and egressd via CONNECT, haproxy/nginx via SNI",
        total as f64 / (1u64 << 30) as f64,
        b.settings.reps
    ));
    t
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
            "CPU us/query",
            "RSS MiB",
            "errors (peak / latency)",
            "audit records (peak; latency)",
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
    let peaks: Vec<(Target, Outcome)> = DNS_TARGETS
        .iter()
        .map(|&tg| {
            (
                tg,
                run_or_row(
                    b,
                    tg,
                    Role::Dns,
                    &list,
                    "w4-peak",
                    Load::Closed {
                        clients: 64,
                        max_ops: u64::MAX,
                    },
                    timeout,
                    false,
                    &make,
                ),
            )
        })
        .collect();
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
    let lats: Vec<(Target, Outcome)> = DNS_TARGETS
        .iter()
        .map(|&tg| {
            (
                tg,
                run_or_row(
                    b,
                    tg,
                    Role::Dns,
                    &list,
                    "w4-latency",
                    Load::Open { rate },
                    timeout,
                    false,
                    &make,
                ),
            )
        })
        .collect();
    let losses: Vec<(Target, Option<(u64, u64)>)> = DNS_TARGETS
        .iter()
        .map(|&tg| {
            let own = of(&peaks, tg).map(|m| median(&m.rates));
            let loss = own.and_then(|own| {
                run_or_row(
                    b,
                    tg,
                    Role::Dns,
                    &list,
                    "w4-loss",
                    Load::Open { rate: own * 0.8 },
                    timeout,
                    false,
                    &make,
                )
                .ok()
                .map(|m| (m.errors, m.ops))
            });
            (tg, loss)
        })
        .collect();
    let direct = of(&peaks, Target::Direct).map(|m| median(&m.rates));
    let best = best_peer(&peaks, |m| median(&m.rates), true);
    let d50 = of(&lats, Target::Direct)
        .map(|m| median(&m.p50))
        .unwrap_or(0.0);
    let d99 = of(&lats, Target::Direct)
        .map(|m| median(&m.p99))
        .unwrap_or(0.0);
    for (((tg, peak), (_, lat)), (_, loss)) in peaks.iter().zip(&lats).zip(&losses) {
        let mut row = vec![tg.name().to_owned()];
        match (peak, lat) {
            (Ok(p), Ok(l)) => {
                let r = median(&p.rates);
                row.extend([
                    spread(&p.rates, 0),
                    ratio(r, direct),
                    ratio(r, best),
                    format!("{:+.0}", median(&l.p50) - d50),
                    format!("{:+.0}", median(&l.p99) - d99),
                    loss.map_or("-".to_owned(), |(e, n)| format!("{e} of {n}")),
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
                    format!("{} / {}", p.errors_cell(), l.errors_cell()),
                    if p.audit.is_some() {
                        format!("{}; {}", p.audit_cell(), l.audit_cell())
                    } else {
                        "-".to_owned()
                    },
                ]);
                t.failed |= !tg.is_peer() && (p.failed() || l.failed());
            }
            (Err(e), _) | (_, Err(e)) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 9));
            }
        }
        t.rows.push(row);
    }
    t.notes.push(format!(
        "direct = the bench upstream itself; peak: 64 clients back to back; latency: open loop at {rate:.0} qps (half the lowest resolver peak) for all; loss: open loop at 80% of each target's own peak, 1 s timeout; dnsmasq is single-threaded (no worker knob); answer caches cannot help (every name is new)"
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
    for tg in targets {
        let sni = matches!(tg, Target::Haproxy | Target::Nginx);
        let role = if sni {
            Role::Sni { upstream: echo }
        } else {
            Role::Connect
        };
        let make = |r: &Running| {
            Arc::new(ConnectEcho {
                via: r.via,
                echo,
                hellos: sni.then(|| hellos.clone()),
            })
        };
        let load = Load::Closed {
            clients: 32,
            max_ops: u64::MAX,
        };
        let a = run_or_row(
            b,
            tg,
            role,
            &small,
            "w5-10",
            load,
            Duration::from_secs(5),
            true,
            &make,
        );
        let z = run_or_row(
            b,
            tg,
            role,
            &large,
            "w5-10k",
            load,
            Duration::from_secs(5),
            true,
            &make,
        );
        let mut row = vec![tg.name().to_owned()];
        match (a, z) {
            (Ok(a), Ok(z)) => {
                let (ra, rz) = (median(&a.rates), median(&z.rates));
                row.extend([
                    spread(&a.rates, 0),
                    spread(&z.rates, 0),
                    format!("{:+.1}%", (rz / ra.max(1e-9) - 1.0) * 100.0),
                    format!("{} / {}", a.errors_cell(), z.errors_cell()),
                    if a.audit.is_some() {
                        format!("{}; {}", a.audit_cell(), z.audit_cell())
                    } else {
                        "-".to_owned()
                    },
                ]);
                t.failed |= !tg.is_peer() && (a.failed() || z.failed());
            }
            (Err(e), _) | (_, Err(e)) => {
                row.push(format!("not run: {e}"));
                row.extend(std::iter::repeat_n(String::new(), 4));
            }
        }
        t.rows.push(row);
    }
    t.notes.push("Squid gets the name rules only (its `dst` CIDR ACLs resolve every request's name); haproxy/nginx match SNI names only; ns per lookup is in the policy crate's criterion benches".to_owned());
    t
}

/// RSS before, RSS with the tunnels open, failed opens, the journal check.
type IdleRow = Result<(u64, u64, u64, Option<AuditCheck>), String>;

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
    let mut rows: Vec<(Target, IdleRow)> = Vec::new();
    for tg in targets {
        eprintln!("bench: w6: {} ...", tg.name());
        let role = if matches!(tg, Target::Haproxy | Target::Nginx) {
            Role::Sni { upstream: echo }
        } else {
            Role::Connect
        };
        let res = (|| -> anyhow::Result<Result<_, String>> {
            if b.skipped(tg) {
                return Ok(Err("skipped (--targets)".to_owned()));
            }
            let Some(running) = peers::start(tg, role, &list, &b.env, "w6")? else {
                return Ok(Err(b.unsupported(tg, role)));
            };
            let u0 = running.usage();
            let via = running.via;
            let (streams, errors) = b.load.block_on(open_idle_all(via, echo, n, hellos));
            std::thread::sleep(Duration::from_millis(500));
            let u1 = running.usage();
            let opened = streams.len() as u64;
            drop(streams);
            std::thread::sleep(Duration::from_millis(500));
            let audit_dir = running.audit_dir.clone();
            running.stop()?;
            let audit = match audit_dir {
                Some(d) => Some(AuditCheck {
                    expected_decisions: opened,
                    expected_closing: opened,
                    found: audit_check::count(&d)?,
                }),
                None => None,
            };
            Ok(Ok((u0.rss, u1.rss, errors, audit)))
        })();
        rows.push((
            tg,
            res.unwrap_or_else(|e| Err(format!("failed to run: {e:#}").replace('\n', " "))),
        ));
    }
    let per =
        |(a, z, _, _): &(u64, u64, u64, Option<AuditCheck>)| z.saturating_sub(*a) as f64 / n as f64;
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
                let (a, z, errors, audit) = v;
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
                    audit.as_ref().map_or("-".to_owned(), AuditCheck::cell),
                ]);
                t.failed |= (!tg.is_peer() && *errors > 0)
                    || audit.as_ref().is_some_and(|a| a.missing() > 0);
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

/// W7: time until a client may send to its destination.
pub fn w7(b: &Bench) -> Table {
    let mut t = Table::new(
        "W7 connect latency (until the client may send)",
        &["path", "p50 us", "p99 us", "errors"],
    );
    let echo = b.env.backends.echo;
    let list = Allowlist::base();
    for (label, tg) in [
        ("direct", Target::Direct),
        ("explicit CONNECT, relay (floor)", Target::Relay),
        ("explicit CONNECT, egressd", Target::Egressd),
    ] {
        let r = run_or_row(
            b,
            tg,
            Role::Connect,
            &list,
            "w7",
            Load::Open { rate: 500.0 },
            Duration::from_secs(5),
            true,
            &|r| Arc::new(TunnelSetup { via: r.via, echo }),
        );
        match r {
            Ok(m) => {
                t.failed |= m.failed();
                t.rows.push(vec![
                    label.to_owned(),
                    spread(&m.p50, 0),
                    spread(&m.p99, 0),
                    m.errors_cell(),
                ]);
            }
            Err(e) => t.rows.push(vec![
                label.to_owned(),
                format!("not run: {e}"),
                String::new(),
                String::new(),
            ]),
        }
    }
    t.rows.push(vec![
        "eBPF redirect, egressd".to_owned(),
        "not measured by this harness: it needs the load generator in a child cgroup under egressd's eBPF programs".to_owned(),
        String::new(),
        String::new(),
    ]);
    t.notes.push(format!(
        "open loop at 500 connections/s, {} x {:?}, latency from the scheduled start",
        b.settings.reps, b.settings.dur
    ));
    t
}
