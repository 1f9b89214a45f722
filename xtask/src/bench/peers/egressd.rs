//! egressd under test: `egressd run --no-ebpf` with the explicit CONNECT
//! listener, the DNS listener and loopback filtering (so decisions on loopback
//! are real). What the binary supports is read from `egressd run --help`, so
//! the harness works against whatever egressd exists and says what it lacks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Allowlist, Role, write};
use crate::bench::loadgen::tunnel::Via;
use crate::bench::process::{self, Guard};

/// Flags of `egressd run` the harness uses, as found in its `--help`.
#[derive(Clone, Debug, Default)]
pub struct Features {
    /// `egressd run` exists and takes `--policy`.
    pub run: bool,
    /// `--explicit ADDR` (HTTP CONNECT).
    pub explicit: bool,
    /// `--listen ADDR` (the transparent listener).
    pub listen: bool,
    /// `--dns-listen ADDR`.
    pub dns_listen: bool,
    /// `--sni-listen ADDR:PORT` (SNI routing) with `--sni-upstream-port`.
    pub sni_listen: bool,
    /// `--filter-loopback`.
    pub filter_loopback: bool,
    /// `--cgroup PATH` (attach the kernel hooks to a chosen cgroup; W7's eBPF row).
    pub cgroup: bool,
    /// `--workers N`, if egressd has a worker knob.
    pub workers: bool,
    /// `--audit-max-size SIZE` (the journal's size budget).
    pub audit_max_size: bool,
}

/// The journal budget egressd gets in the bench: far above what any run
/// writes (a full W4 writes about 2 GB), so no segment is ever removed.
const BENCH_AUDIT_MAX: &str = "256GiB";

impl Features {
    /// What is missing for `role`, if anything.
    pub fn lacks(&self, role: Role) -> Option<&'static str> {
        if !self.run {
            return Some("`egressd run` is not implemented in this build");
        }
        if !self.filter_loopback {
            return Some("no --filter-loopback: on loopback egressd would decide nothing");
        }
        match role {
            Role::Connect | Role::Sni { .. } if !self.explicit => {
                Some("no --explicit (HTTP CONNECT) listener")
            }
            Role::Dns if !self.dns_listen => Some("no --dns-listen"),
            _ => None,
        }
    }
}

/// The egressd binary under test.
#[derive(Clone, Debug)]
pub struct Egressd {
    /// Path of the release binary.
    pub bin: PathBuf,
    /// What it supports.
    pub features: Features,
}

impl Egressd {
    /// Reads the features of `bin` from `egressd run --help`.
    pub fn probe(bin: PathBuf) -> Self {
        let help = Command::new(&bin)
            .args(["run", "--help"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default();
        let has = |flag: &str| help.contains(flag);
        let features = Features {
            run: has("--policy") && !help.contains("not built yet"),
            explicit: has("--explicit"),
            listen: has("--listen"),
            dns_listen: has("--dns-listen"),
            sni_listen: has("--sni-listen") && has("--sni-upstream-port"),
            filter_loopback: has("--filter-loopback"),
            cgroup: has("--cgroup"),
            workers: has("--workers"),
            audit_max_size: has("--audit-max-size"),
        };
        Self { bin, features }
    }

    /// Starts egressd for `role`; `Ok(None)` when it lacks what `role` needs.
    /// SNI routing (W2) uses `--sni-listen`, dialling the upstream's port; a
    /// build without it runs W2 through the CONNECT listener with the real
    /// ClientHello inside the tunnel.
    #[expect(clippy::type_complexity, reason = "one private call site")]
    pub fn start(
        &self,
        role: Role,
        dir: &Path,
        list: &Allowlist,
        dns_upstream: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Option<(Guard, Via, Option<SocketAddr>, PathBuf)>> {
        let f = &self.features;
        if f.lacks(role).is_some() {
            return Ok(None);
        }
        let policy = write(dir, "policy.yaml", &list.egressd_yaml())?;
        let audit = dir.join("audit");
        std::fs::create_dir_all(&audit)?;
        let ready = dir.join("ready");
        let explicit = SocketAddr::from(([127, 0, 0, 1], process::free_port()?));
        let mut cmd = Command::new(&self.bin);
        cmd.env("TOKIO_WORKER_THREADS", "2").env("RUST_LOG", "warn");
        cmd.args(["run", "--no-ebpf", "--runner", "bench", "--filter-loopback"]);
        cmd.arg("--policy")
            .arg(&policy)
            .arg("--audit-dir")
            .arg(&audit)
            .arg("--ready-file")
            .arg(&ready);
        cmd.arg("--dns-upstream").arg(dns_upstream.to_string());
        if f.workers {
            cmd.args(["--workers", "2"]);
        }
        if f.audit_max_size {
            // The default 1 GiB would drop a full W4 run's oldest segments,
            // and the audit check needs every record of the run.
            cmd.args(["--audit-max-size", BENCH_AUDIT_MAX]);
        }
        if f.explicit {
            cmd.arg("--explicit").arg(explicit.to_string());
        }
        if f.listen {
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", process::free_port()?));
        }
        let dns = if f.dns_listen {
            let d = SocketAddr::from(([127, 0, 0, 1], process::free_port()?));
            cmd.arg("--dns-listen").arg(d.to_string());
            Some(d)
        } else {
            None
        };
        let via = match role {
            Role::Sni { upstream } if f.sni_listen => {
                let sni = SocketAddr::from(([127, 0, 0, 1], process::free_port()?));
                cmd.arg("--sni-listen").arg(sni.to_string());
                cmd.arg("--sni-upstream-port")
                    .arg(upstream.port().to_string());
                Via::Sni(sni)
            }
            _ => Via::Connect(explicit),
        };
        let mut g = Guard::spawn("egressd", cmd, log)?;
        process::wait_file(&ready, Duration::from_secs(20), &mut g, log)?;
        Ok(Some((g, via, dns, audit)))
    }
}
