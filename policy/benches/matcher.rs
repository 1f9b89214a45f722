//! Nanoseconds per decision at 10 and 10,000 rules, for each kind of lookup:
//! exact names, wildcard names, misses, IPv4 and IPv6 CIDRs. The rules are a
//! deterministic mix (40% exact names, 20% wildcards, 25% IPv4 CIDRs, 15%
//! IPv6 CIDRs), loaded through `Policy::parse` like a real policy.
//!
//! `cargo bench -p egressd-policy --bench matcher -- --warm-up-time 1 --measurement-time 2`
//!
//! Time is the benchmark thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), not
//! wall time: on a shared machine (CI, a busy laptop) wall time also counts
//! the time the thread waited for a core, which says nothing about the
//! matcher. Set `EGRESSD_BENCH_WALL=1` for wall time.

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::Criterion;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use egressd_policy::{NoResolutions, Policy, Ruleset};

/// CPU time of the calling thread, in nanoseconds.
struct ThreadCpu {
    /// Only lends its nanosecond formatter.
    wall: WallTime,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant
    // every Linux kernel supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, started: u64) -> u64 {
        thread_cpu_ns().saturating_sub(started)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        self.wall.formatter()
    }
}

/// A small deterministic generator (no dependency needed for this).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

struct Workload {
    rules: Ruleset,
    exact: Vec<String>,
    wildcard: Vec<String>,
    miss: Vec<String>,
    v4: Vec<SocketAddr>,
    v6: Vec<SocketAddr>,
}

fn workload(n: usize) -> Workload {
    let mut rng = Lcg(0x5eed ^ n as u64);
    let mut yaml = String::from("version: 1\nallow:\n");
    let mut w = Workload {
        rules: Policy::parse("x", "version: 1\n")
            .map(|l| l.policy.base().clone())
            .unwrap_or_else(|d| panic!("{d}")),
        exact: Vec::new(),
        wildcard: Vec::new(),
        miss: Vec::new(),
        v4: Vec::new(),
        v6: Vec::new(),
    };
    // One cycle of 20 kinds, spread so that the first ten rules hold every kind.
    const KINDS: &[u8; 20] = b"EW4E6EW4E4EW4E6EW4E6";
    for i in 0..n {
        match KINDS[i % 20] {
            b'E' => {
                let name = format!("host{i}.team{}.example.com", rng.next() % 97);
                let _ = writeln!(yaml, "  - {name}");
                w.exact.push(name);
            }
            b'W' => {
                let suffix = format!("svc{i}.corp{}.example.net", rng.next() % 89);
                let _ = writeln!(yaml, "  - \"*.{suffix}\"");
                w.wildcard.push(format!("a.b.{suffix}"));
            }
            b'4' => {
                let len = 16 + (rng.next() % 17) as u32;
                let addr = (rng.next() as u32 | 0x0100_0000) & 0xdfff_ffff & !(u32::MAX >> len);
                // Keep clear of the built-in classes so the trie is what decides.
                let addr = (addr & 0x00ff_ffff) | (u32::from(45 + (i % 50) as u8) << 24);
                let net = std::net::Ipv4Addr::from(addr);
                let _ = writeln!(yaml, "  - cidr: {net}/{len}");
                w.v4.push(SocketAddr::new(net.into(), 443));
            }
            _ => {
                let len = 32 + (rng.next() % 65) as u32;
                let hi =
                    (0x2600u128 << 112) | (u128::from(rng.next()) << 64) | u128::from(rng.next());
                let addr = hi & !(u128::MAX >> len);
                let net = std::net::Ipv6Addr::from(addr);
                let _ = writeln!(yaml, "  - cidr: \"{net}/{len}\"");
                w.v6.push(SocketAddr::new(net.into(), 443));
            }
        }
        w.miss.push(format!(
            "nothing{i}.unlisted{}.example.org",
            rng.next() % 13
        ));
    }
    let loaded = Policy::parse("bench.yaml", &yaml).unwrap_or_else(|d| panic!("{d}"));
    w.rules = loaded.policy.base().clone();
    for list in [&mut w.exact, &mut w.wildcard, &mut w.miss] {
        list.truncate(64);
    }
    w.v4.truncate(64);
    w.v6.truncate(64);
    w
}

fn bench<M: Measurement>(c: &mut Criterion<M>) {
    for n in [10usize, 10_000] {
        let w = workload(n);
        let mut g = c.benchmark_group(format!("rules_{n}"));
        let mut i = 0usize;
        let mut pick = |len: usize| {
            i = i.wrapping_add(1);
            i % len.max(1)
        };
        g.bench_function("dns_exact", |b| {
            b.iter(|| w.rules.decide_dns(black_box(&w.exact[pick(w.exact.len())])))
        });
        g.bench_function("dns_wildcard", |b| {
            b.iter(|| {
                w.rules
                    .decide_dns(black_box(&w.wildcard[pick(w.wildcard.len())]))
            })
        });
        g.bench_function("dns_miss", |b| {
            b.iter(|| w.rules.decide_dns(black_box(&w.miss[pick(w.miss.len())])))
        });
        g.bench_function("connect_v4_cidr", |b| {
            b.iter(|| {
                w.rules
                    .decide_connect(black_box(w.v4[pick(w.v4.len())]), None, &NoResolutions)
            })
        });
        g.bench_function("connect_v6_cidr", |b| {
            b.iter(|| {
                w.rules
                    .decide_connect(black_box(w.v6[pick(w.v6.len())]), None, &NoResolutions)
            })
        });
        let dst: SocketAddr = "192.0.2.1:443".parse().unwrap_or_else(|e| panic!("{e}"));
        g.bench_function("connect_sni_wildcard", |b| {
            b.iter(|| {
                w.rules.decide_connect(
                    black_box(dst),
                    Some(black_box(&w.wildcard[pick(w.wildcard.len())])),
                    &NoResolutions,
                )
            })
        });
        g.finish();
    }
}

fn main() {
    if std::env::var_os("EGRESSD_BENCH_WALL").is_some() {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    } else {
        let mut c = Criterion::default()
            .with_measurement(ThreadCpu { wall: WallTime })
            .configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
}
