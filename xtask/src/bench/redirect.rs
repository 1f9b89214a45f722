//! W7's eBPF rows: connect latency through egressd's kernel redirect, beside
//! a direct connect over the same path.
//!
//! The kernel hooks filter a cgroup's processes and leave loopback
//! destinations alone, so (as root) the harness builds a network namespace
//! with echo servers ([`NetLab`]), creates a uniquely named child cgroup
//! ([`ChildCgroup`]), and re-executes itself as a client process
//! (`bench --w7-client SPEC`, hidden) that moves into that cgroup before it
//! opens a socket. The client runs first without egressd (the direct row),
//! then with `egressd run --cgroup <child>` attached (the eBPF row); it
//! verifies every echo and writes its per-repetition figures as JSON. The
//! cgroup, the namespace and every process are removed by guards, on error too.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::allowlist::Allowlist;
use super::audit_check::{self, AuditCheck};
use super::cgroup::{self, ChildCgroup};
use super::loadgen::{self, tunnel::TunnelSetup, tunnel::Via};
use super::measure::{Bench, Measured};
use super::netlab::{self, NetLab};
use super::peers::Egressd;
use super::process::{self, Guard};

/// W7's open-loop rate (connections per second), the same for every row.
pub const RATE: f64 = 500.0;

/// What the client process is asked to do (written as JSON by the harness).
struct Spec {
    dest: SocketAddr,
    rate: f64,
    dur: Duration,
    reps: usize,
    first: u64,
    cgroup: PathBuf,
    out: PathBuf,
}

impl Spec {
    fn to_json(&self) -> Value {
        json!({
            "dest": self.dest.to_string(),
            "rate": self.rate,
            "dur_ms": self.dur.as_millis() as u64,
            "reps": self.reps,
            "first": self.first,
            "cgroup": self.cgroup,
            "out": self.out,
        })
    }

    fn from_json(v: &Value) -> anyhow::Result<Self> {
        let s = |k: &str| v[k].as_str().with_context(|| format!("spec: no {k}"));
        let n = |k: &str| v[k].as_u64().with_context(|| format!("spec: no {k}"));
        Ok(Self {
            dest: s("dest")?.parse()?,
            rate: v["rate"].as_f64().context("spec: no rate")?,
            dur: Duration::from_millis(n("dur_ms")?),
            reps: usize::try_from(n("reps")?)?,
            first: n("first")?,
            cgroup: PathBuf::from(s("cgroup")?),
            out: PathBuf::from(s("out")?),
        })
    }
}

/// The hidden `bench --w7-client SPEC`: moves this process into the spec's
/// cgroup, runs W7's op (connect, then a verified 32-byte echo) in an open
/// loop, and writes one JSON object per repetition to the spec's `out`.
pub fn client_main(spec: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(spec).with_context(|| format!("read {}", spec.display()))?;
    let spec = Spec::from_json(&serde_json::from_str(&text)?)?;
    // Before any socket exists: a socket belongs to the cgroup it was created in.
    cgroup::enter(&spec.cgroup)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let op = Arc::new(TunnelSetup {
        via: Via::Direct,
        echo: spec.dest,
    });
    let mut first = spec.first;
    let mut reps = Vec::with_capacity(spec.reps);
    for _ in 0..spec.reps {
        let r = loadgen::open_loop(
            rt.handle(),
            op.clone(),
            spec.rate,
            spec.dur,
            first,
            Duration::from_secs(5),
        )?;
        first += r.allowed + r.denied + r.errors + 1;
        reps.push(json!({
            "allowed": r.allowed,
            "denied": r.denied,
            "errors": r.errors,
            "timeouts": r.timeouts,
            "samples": r.error_samples,
            "rate": r.rate(),
            "p50": r.hist.value_at_quantile(0.5),
            "p99": r.hist.value_at_quantile(0.99),
            "done_p50": r.done.value_at_quantile(0.5),
            "done_p99": r.done.value_at_quantile(0.99),
        }));
    }
    std::fs::write(&spec.out, serde_json::to_vec(&Value::Array(reps))?)
        .with_context(|| format!("write {}", spec.out.display()))?;
    Ok(())
}

/// The two eBPF rows of W7.
pub struct Rows {
    /// The client in the child cgroup with nothing attached, to the namespace.
    pub direct: Result<Measured, String>,
    /// The same client with egressd's programs attached, and its journal check.
    pub egressd: Result<(Measured, AuditCheck), String>,
}

/// Measures both rows; `Err` says why neither could run (not root, no egressd).
pub fn measure(b: &Bench) -> Result<Rows, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "skipped: needs root (egressd's eBPF programs on a child cgroup, a network namespace)"
                .to_owned(),
        );
    }
    if b.skipped(super::peers::Target::Egressd) {
        return Err("skipped (--targets)".to_owned());
    }
    let Some(egressd) = &b.env.egressd else {
        return Err("egressd was not built".to_owned());
    };
    if let Some(why) = lacks(egressd) {
        return Err(why.to_owned());
    }
    let _phase = b.phase("w7: eBPF redirect");
    let fail = |e: anyhow::Error| format!("failed to run: {e:#}").replace('\n', " ");
    // Dropped in reverse order: egressd (inside the closure), then the
    // cgroup (killing any client left), then the namespace.
    let lab = NetLab::up(&b.backend).map_err(fail)?;
    let cg = ChildCgroup::create().map_err(fail)?;
    // Each row its own echo port: no row finds the last one's TIME_WAITs.
    let [direct_echo, egressd_echo] = lab.echoes;
    let direct = run_client(b, &cg, direct_echo, "direct").map_err(fail);
    let egressd = with_egressd(b, egressd, &cg, egressd_echo).map_err(fail);
    Ok(Rows { direct, egressd })
}

/// Why this egressd cannot run the eBPF row, if it cannot.
fn lacks(e: &Egressd) -> Option<&'static str> {
    let f = &e.features;
    if !f.run {
        return Some("`egressd run` is not implemented in this build");
    }
    if !f.cgroup || !f.listen {
        return Some("no --cgroup/--listen: this egressd cannot attach to a chosen cgroup");
    }
    None
}

/// Starts egressd attached to `cg`, runs the client, stops egressd and
/// checks its journal.
fn with_egressd(
    b: &Bench,
    e: &Egressd,
    cg: &ChildCgroup,
    echo: SocketAddr,
) -> anyhow::Result<(Measured, AuditCheck)> {
    let dir = b.env.dir.join("egressd-w7-ebpf");
    std::fs::create_dir_all(&dir)?;
    let mut list = Allowlist::base();
    // The client sends no name (binary bytes): the address rule decides.
    list.cidrs.push(format!("{}/32", netlab::SERVER));
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, list.egressd_yaml())?;
    let audit = dir.join("audit");
    std::fs::create_dir_all(&audit)?;
    let ready = dir.join("ready");
    let log = dir.join("stdout.log");
    let free = || -> anyhow::Result<String> {
        Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, process::free_port()?)).to_string())
    };
    let mut cmd = Command::new(&e.bin);
    cmd.env("TOKIO_WORKER_THREADS", "2").env("RUST_LOG", "warn");
    cmd.args(["run", "--runner", "bench", "--filter-loopback"])
        .arg("--cgroup")
        .arg(cg.path())
        .arg("--listen")
        .arg(free()?)
        .arg("--dns-listen")
        .arg(free()?)
        .arg("--dns-upstream")
        .arg(b.env.backends.dns.to_string())
        .arg("--policy")
        .arg(&policy)
        .arg("--audit-dir")
        .arg(&audit)
        .arg("--ready-file")
        .arg(&ready);
    if e.features.workers {
        cmd.args(["--workers", "2"]);
    }
    let mut g = Guard::spawn("egressd (eBPF)", cmd, &log)?;
    process::wait_file(&ready, Duration::from_secs(20), &mut g, &log)?;
    let m = run_client(b, cg, echo, "egressd")?;
    // SIGTERM: egressd flushes its journal and detaches its programs.
    g.terminate(Duration::from_secs(10))?;
    let check = AuditCheck {
        expected_decisions: m.ops - m.errors,
        expected_closing: m.allowed,
        found: audit_check::count(&audit)?,
    };
    Ok((m, check))
}

/// Runs the client process in `cg` against `echo` and reads its figures.
fn run_client(
    b: &Bench,
    cg: &ChildCgroup,
    echo: SocketAddr,
    tag: &str,
) -> anyhow::Result<Measured> {
    let dir = b.env.dir.join(format!("w7-client-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let spec = Spec {
        dest: echo,
        rate: RATE,
        dur: b.settings.dur,
        reps: b.settings.reps,
        first: b.next_op.get(),
        cgroup: cg.path().to_path_buf(),
        out: dir.join("result.json"),
    };
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_json().to_string())?;
    let log = dir.join("client.log");
    let mut cmd = Command::new(&b.env.exe);
    cmd.args(["bench", "--w7-client"]).arg(&spec_file);
    let mut g = Guard::spawn("W7 client", cmd, &log)?;
    let budget = b.settings.dur * b.settings.reps as u32 + Duration::from_secs(30);
    let status = g.wait_exit(budget)?;
    if !status.success() {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("the W7 client failed ({status}): {}", tail.trim());
    }
    let reps: Value = serde_json::from_slice(&std::fs::read(&spec.out)?)?;
    let mut m = Measured::default();
    let f = |r: &Value, k: &str| r[k].as_f64().unwrap_or(0.0);
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap_or(0);
    for r in reps
        .as_array()
        .context("the W7 client's result is not a list")?
    {
        m.rates.push(f(r, "rate"));
        m.p50.push(f(r, "p50"));
        m.p99.push(f(r, "p99"));
        m.done_p50.push(f(r, "done_p50"));
        m.done_p99.push(f(r, "done_p99"));
        m.errors += n(r, "errors");
        m.timeouts += n(r, "timeouts");
        m.allowed += n(r, "allowed");
        m.ops += n(r, "allowed") + n(r, "denied") + n(r, "errors");
        if let Some(s) = r["samples"].as_array() {
            m.samples
                .extend(s.iter().filter_map(|x| x.as_str()).map(str::to_owned));
        }
    }
    b.next_op.set(b.next_op.get() + m.ops + 1);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_spec_survives_its_json() {
        let spec = Spec {
            dest: "198.51.100.226:4321".parse().unwrap(),
            rate: 500.0,
            dur: Duration::from_millis(750),
            reps: 3,
            first: 42,
            cgroup: PathBuf::from("/sys/fs/cgroup/egressd-bench-1"),
            out: PathBuf::from("/tmp/out.json"),
        };
        let back = Spec::from_json(&spec.to_json()).unwrap();
        assert_eq!(back.dest, spec.dest);
        assert_eq!(back.dur, spec.dur);
        assert_eq!((back.reps, back.first), (3, 42));
        assert_eq!(back.cgroup, spec.cgroup);
        assert_eq!(back.out, spec.out);
    }
}
