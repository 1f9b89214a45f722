//! `cargo xtask bench`: egressd beside its peers (performance.md, issue 8).
//!
//! One command installs the peers (as root, from Debian's packages),
//! configures each for the same job in a temp dir on loopback ports, runs
//! W1-W7 against direct, the reference relay, each peer and egressd, and
//! prints one Markdown table per workload; J1 (on request) runs the e2e job
//! corpus with and without egressd. Every run is bounded in time and count;
//! every process is killed on drop.

mod allowlist;
mod audit_check;
mod backend;
mod cgroup;
mod install;
mod jobs;
mod loadgen;
mod machine;
mod measure;
mod netlab;
mod peers;
mod process;
mod redirect;
mod relay;
mod report;
mod tls;
mod workloads;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};

use measure::{Bench, Settings};
use peers::{Egressd, Env};

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A short run (2-3 minutes): 3 repetitions of 0.5 s, one W4 loss
    /// repetition, 512 MiB bulk, 1,000 idle tunnels; every workload, every target.
    #[arg(long)]
    quick: bool,
    /// Workloads to run, comma separated (W1..W7, J1). J1, the e2e job
    /// corpus (git, pip, npm, apt, curl, wget, python) with and without
    /// egressd, is not in the default list: it needs root and what
    /// scripts/install-deps.sh installs.
    #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W4,W5,W6,W7")]
    workloads: Vec<String>,
    /// J1's repetitions per target (default: 3 with --quick, else 5); a
    /// job lasts seconds and its steps are noisy on a shared machine.
    #[arg(long, value_name = "N")]
    j1_reps: Option<usize>,
    /// Also write the Markdown report to FILE.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this egressd binary instead of building `cargo build --release -p egressd`.
    #[arg(long)]
    egressd: Option<PathBuf>,
    /// Only these targets, comma separated (direct, relay, haproxy, nginx,
    /// squid, tinyproxy, dnsmasq, unbound, dnsdist, egressd).
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// Keep the temp dir (configurations, logs, egressd's journal) and print its path.
    #[arg(long)]
    keep: bool,
    /// Do not install missing peers (they are then skipped).
    #[arg(long)]
    no_install: bool,
    /// Internal: serve the reference relay in MODE (started by the harness).
    #[arg(long, hide = true)]
    serve_relay: Option<relay::Mode>,
    /// Internal: the relay's listen address.
    #[arg(long, hide = true)]
    relay_listen: Option<SocketAddr>,
    /// Internal: the relay's fixed upstream (SNI mode).
    #[arg(long, hide = true)]
    relay_upstream: Option<SocketAddr>,
    /// Internal: the relay's allowlist size.
    #[arg(long, hide = true, default_value_t = 10)]
    relay_rules: usize,
    /// Internal: run W7's client as described in SPEC (a JSON file), in its cgroup.
    #[arg(long, hide = true, value_name = "SPEC")]
    w7_client: Option<PathBuf>,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(mode) = args.serve_relay {
        let listen = args
            .relay_listen
            .context("--serve-relay needs --relay-listen")?;
        return relay::serve(mode, listen, args.relay_upstream, args.relay_rules);
    }
    if let Some(spec) = &args.w7_client {
        return redirect::client_main(spec);
    }
    if cfg!(debug_assertions) && std::env::var_os("EGRESSD_BENCH_DEBUG").is_none() {
        // A debug load generator would measure itself: rerun optimised.
        tracing::info!("rebuilding xtask with --release (set EGRESSD_BENCH_DEBUG=1 to skip)");
        let status = install::cargo()
            .args(["run", "--release", "--quiet", "-p", "xtask", "--"])
            .args(std::env::args_os().skip(1))
            .status()
            .context("run cargo")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let started = Instant::now();
    process::raise_nofile(262_144);
    let wanted: Vec<String> = args
        .workloads
        .iter()
        .map(|w| w.trim().to_ascii_uppercase())
        .collect();
    if let Some(other) = wanted
        .iter()
        .find(|w| !["W1", "W2", "W3", "W4", "W5", "W6", "W7", "J1"].contains(&w.as_str()))
    {
        bail!("unknown workload {other:?}: use W1..W7 or J1");
    }
    // J1 runs no peer.
    let missing = if wanted.iter().any(|w| w.starts_with('W')) {
        install::ensure_peers(!args.no_install)?
    } else {
        Vec::new()
    };

    let egressd = match args.egressd.clone() {
        Some(bin) => Some(Egressd::probe(bin)),
        None => match install::build_egressd() {
            Ok(bin) => Some(Egressd::probe(bin)),
            Err(e) => {
                tracing::warn!("egressd not built, its rows will say so: {e:#}");
                None
            }
        },
    };

    let pki = tls::Pki::generate()?;
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-backend")
        .enable_all()
        .build()?;
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-load")
        .enable_all()
        .build()?;
    let backends = backend::start(&servers, pki.server.clone())?;
    let dir = tempfile::Builder::new()
        .prefix("egressd-bench-")
        .tempdir()?;
    let only = match &args.targets {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|n| {
                    peers::Target::by_name(n.trim())
                        .with_context(|| format!("unknown target {n:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        ),
    };
    let bench = Bench {
        only,
        env: Env {
            dir: dir.path().to_path_buf(),
            backends,
            exe: std::env::current_exe()?,
            egressd: egressd.clone(),
        },
        load: load.handle().clone(),
        backend: servers.handle().clone(),
        settings: if args.quick {
            Settings::QUICK
        } else {
            Settings::FULL
        },
        next_op: Cell::new(0),
        timings: RefCell::new(Vec::new()),
        steal_notes: RefCell::new(Vec::new()),
    };
    let hellos = loadgen::tunnel::Hellos::new(&pki)?;
    let connector = tokio_rustls::TlsConnector::from(pki.client.clone());
    let (bulk_bytes, idle) = (bench.settings.bulk_bytes, bench.settings.idle_tunnels);
    tracing::info!(
        "set-up (peers, egressd build, PKI, backends) took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut tables = Vec::new();
    let mut per_workload = Vec::new();
    for w in &wanted {
        let phase_start = Instant::now();
        let cpu_before = machine::CpuTimes::now();
        let phase = bench.phase(w);
        let mut table = match w.as_str() {
            "W1" => workloads::w1(&bench),
            "W2" => workloads::w2(&bench, &connector),
            "W3" => workloads::w3(&bench, &hellos, bulk_bytes),
            "W4" => workloads::w4(&bench),
            "W5" => workloads::w5(&bench, &hellos),
            "W6" => workloads::w6(&bench, &hellos, idle),
            "W7" => workloads::w7(&bench),
            "J1" => jobs::j1(&bench, args.j1_reps.unwrap_or(bench.settings.reps).max(1)),
            other => bail!("unknown workload {other:?}: use W1..W7 or J1"),
        };
        drop(phase);
        if let Some(shares) = machine::Shares::since(cpu_before) {
            if shares.disturbed() {
                tracing::warn!(
                    "{w}: the hypervisor took {:.1}% of the CPU time: read this table's ratios with care",
                    shares.steal * 100.0
                );
            }
            table.notes.push(shares.note());
        }
        table.notes.extend(bench.steal_notes.take());
        per_workload.push(format!("{w} {:.0} s", phase_start.elapsed().as_secs_f64()));
        eprintln!("{}", table.markdown());
        tables.push(table);
    }
    for (name, took) in bench.timings.borrow().iter() {
        tracing::info!("phase {name:<48} {:>6.1} s", took.as_secs_f64());
    }
    let wall = started.elapsed();

    let mut md = String::new();
    md.push_str(&format!(
        "Command: `cargo xtask bench{}{}{}`; {} CPUs, kernel {}; egressd: {}.\n\n",
        if args.quick { " --quick" } else { "" },
        args.j1_reps
            .map_or(String::new(), |n| format!(" --j1-reps {n}")),
        if wanted.len() < 7 {
            format!(" --workloads {}", wanted.join(","))
        } else {
            String::new()
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        egressd
            .as_ref()
            .map_or("not built".to_owned(), |e| e.bin.display().to_string()),
    ));
    md.push_str(&format!(
        "Wall time {:.0} s ({}).\n\n",
        wall.as_secs_f64(),
        per_workload.join(", ")
    ));
    if !missing.is_empty() {
        md.push_str(&format!(
            "Peers not installed (skipped): {}.\n\n",
            missing.join(", ")
        ));
    }
    for t in &tables {
        md.push_str(&t.markdown());
    }
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("write {}", out.display()))?;
    }
    drop(load);
    drop(servers);
    if args.keep {
        tracing::info!("kept {}", dir.keep().display());
    }
    let failed: Vec<&str> = tables
        .iter()
        .filter(|t| t.failed)
        .map(|t| t.title.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "runs failed (unexpected errors or missing audit records) in: {}",
            failed.join("; ")
        );
    }
    Ok(())
}
