//! The runner integration against the real binary: `egressd boot` with the
//! kernel hooks on a test cgroup standing in for the runner's jobs, the job
//! hooks (`egressd job start` / `job end`) with GitHub-style environments,
//! traffic from the job cgroup to servers in a test network namespace, the
//! fail-closed states (broken policy, unreachable policy service), and the
//! packaging (the systemd unit, install.sh into a temporary DESTDIR).

#![expect(
    clippy::unwrap_used,
    reason = "a failed setup step or lookup is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use egressd_audit::Record;
use egressd_policy::{Reason, Verdict};

use self::kit::{ALLOWED, Boot, DENIED, OVERRIDE_ONLY, Topology, github_env, tags, wait_for};

/// What the privileged modules (this one, `exec`, `transparent` and `jobs`)
/// share: the namespace topology, the skip rule, and leftover checks; a
/// running `egressd boot` with its job hooks, job cgroups, namespaces and
/// journal reading come from `egressd_e2e` (shared with the benchmark
/// harness) and are named here for them.
pub(crate) mod kit {
    use std::os::unix::process::CommandExt as _;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use egressd_audit::Record;

    pub use egressd_e2e::boot::{Boot, github_env, records, tags, wait_bounded};
    pub use egressd_e2e::cgroup::{JobCgroup, cgroup_exists, cgroup2_mount};
    pub use egressd_e2e::cmd::{clear_proxy_env, sh};
    pub use egressd_e2e::netns::{Veth, sweep_leftovers};

    /// Host side of the test link; the namespace holds `ALLOWED` and
    /// `OVERRIDE_ONLY`; `DENIED` is on the link but nobody has it. The block
    /// 198.51.100.200/29 is used by these modules only.
    pub const HOST: &str = "198.51.100.201";
    /// A server the base policy allows (port 8080).
    pub const ALLOWED: &str = "198.51.100.202";
    /// A server only a policy override allows (port 8080).
    pub const OVERRIDE_ONLY: &str = "198.51.100.203";
    /// An address no policy allows.
    pub const DENIED: &str = "198.51.100.204";
    /// What the servers answer.
    pub const SERVER_BODY: &str = "hello from the test namespace";

    static LOCK: Mutex<()> = Mutex::new(());

    /// True when the test can run; otherwise prints the skip line (and fails
    /// under CI=true, where these tests must run).
    pub fn privileged() -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        println!("skipped: needs root and bpf()");
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "privileged runner tests must run in CI (CI=true): run them as root"
        );
        false
    }

    /// The namespace with the servers, held for one test at a time.
    pub struct Topology {
        net: Veth,
        server: Child,
        _lock: MutexGuard<'static, ()>,
        _block: crate::support::BlockLock,
    }

    impl Topology {
        /// Build it (or fail: no test packet may take the default route).
        pub fn up() -> Topology {
            let lock = LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let block = crate::support::lock_block("kit-198.51.100.200");
            let net = Veth::up(
                "egrt",
                "egrp",
                &[&format!("{HOST}/29")],
                &[&format!("{ALLOWED}/29"), &format!("{OVERRIDE_ONLY}/29")],
                &[ALLOWED, OVERRIDE_ONLY, DENIED],
            );
            let script = format!(
                "import http.server\n\
                 class H(http.server.BaseHTTPRequestHandler):\n  \
                   def do_GET(self):\n    \
                     b=b'{SERVER_BODY}'\n    \
                     self.send_response(200); self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)\n  \
                   def log_message(self,*a): pass\n\
                 http.server.ThreadingHTTPServer(('0.0.0.0',8080),H).serve_forever()\n"
            );
            let server = Command::new("ip")
                .args(["netns", "exec", net.netns(), "python3", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let t = Topology {
                net,
                server,
                _lock: lock,
                _block: block,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            let addr: std::net::SocketAddr = format!("{ALLOWED}:8080").parse().unwrap();
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                assert!(Instant::now() < deadline, "the test server did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            t
        }
    }

    impl Topology {
        /// The namespace holding the servers.
        pub fn netns(&self) -> &str {
            self.net.netns()
        }

        /// The host side of the veth into it (HOST's interface).
        pub fn host_link(&self) -> &str {
            self.net.link()
        }
    }

    impl Drop for Topology {
        fn drop(&mut self) {
            // The server first; the namespace goes with `net`.
            let _ = self.server.kill();
            let _ = self.server.wait();
        }
    }

    /// Give `cmd` SIGTERM when the test thread that started it is gone, so
    /// a killed test run leaves no daemon (nor egressd attached) behind.
    pub fn die_with_test(cmd: &mut Command) {
        // SAFETY: prctl(2) is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// The options every test's transparent `egressd run` or `boot` shares:
    /// filter `cgroup`, journal and ready file in `dir`, listeners on free
    /// loopback ports, `dns` as the upstream, the runner's name; no proxy
    /// variables, no terminal, gone with the test.
    pub fn enforcer(cmd: &mut Command, cgroup: &Path, dir: &Path, dns: &str, runner: &str) {
        cmd.arg("--cgroup")
            .arg(cgroup)
            .arg("--audit-dir")
            .arg(dir.join("audit"))
            .arg("--ready-file")
            .arg(dir.join("ready.json"))
            .args(["--listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"])
            .args(["--dns-upstream", dns, "--runner", runner])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        clear_proxy_env(cmd);
        die_with_test(cmd);
    }

    /// `bpftool cgroup tree` output.
    pub fn bpftool_cgroup_tree() -> String {
        let out = sh(&["bpftool", "cgroup", "tree"]);
        assert!(
            out.status.success(),
            "bpftool cgroup tree failed (install bpftool)"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Wait until the journal holds a record matching `pred`.
    pub fn wait_for(boot: &Boot, what: &str, pred: impl Fn(&Record) -> bool) -> Record {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let recs = boot.records();
            if let Some(r) = recs.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no record {what}: {recs:#?}\n{}",
                boot.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const POLICY: &str = "version: 1\n\
allow:\n  \
  - ok.test\n  \
  - cidr: 198.51.100.202/32\n    ports: [8080]\n\
overrides:\n  \
  - when: { repository: \"octo/wide\" }\n    \
    allow:\n      \
      - cidr: 198.51.100.203/32\n        ports: [8080]\n";

#[test]
fn runner_lifecycle_tags_summarises_and_leaves_nothing() {
    if !kit::privileged() {
        return;
    }
    let _t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut boot = Boot::start(&["--policy", policy.to_str().unwrap()], &[]);
    let ready = boot.ready();
    assert_eq!(ready["state"], "enforcing", "{ready}");
    assert_eq!(ready["cgroup"], boot.jobs.path().to_str().unwrap());
    assert!(boot.log().contains("self-test passed"), "{}", boot.log());
    let notes = boot.notifications();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("READY=1\nSTATUS=enforcing (policy file")),
        "systemd is told READY=1 once ready: {notes:?}"
    );
    let socket_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(boot.path("control.sock"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(socket_mode & 0o777, 0o660, "root or the control group only");

    // Job 1.
    let env1 = github_env("octo/app", "101", "build");
    let started = boot.job(&["start"], &env1);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let (code, body) = boot.curl_from_job(ALLOWED);
    assert_eq!(
        (code, body.as_str()),
        (0, kit::SERVER_BODY),
        "{}",
        boot.log()
    );
    let (code, _) = boot.curl_from_job(DENIED);
    assert_ne!(code, 0, "the denied connection fails");
    let (code, _) = boot.curl_from_job(OVERRIDE_ONLY);
    assert_ne!(code, 0, "the override is not for octo/app");
    let t1 = tags("octo/app", "101", "build");
    wait_for(&boot, "for the denied connection", |r| {
        r.dst.map(|d| d.to_string()) == Some(format!("{DENIED}:8080"))
    });
    let summary_file = dir.path().join("step-summary.md");
    std::fs::write(&summary_file, "# earlier step\n").unwrap();
    let mut env1_end = env1.clone();
    let summary_path = summary_file.to_str().unwrap().to_owned();
    env1_end.push(("GITHUB_STEP_SUMMARY", &summary_path));
    let ended = boot.job(&["end", "--fail-on-deny"], &env1_end);
    assert_eq!(
        ended.status.code(),
        Some(1),
        "--fail-on-deny with a deny exits 1"
    );
    let printed = String::from_utf8_lossy(&ended.stdout).into_owned();

    // The printed summary is exactly the summary of job 1's records.
    let job1: Vec<Record> = boot
        .records()
        .into_iter()
        .filter(|r| r.job.as_deref() == Some(&t1))
        .collect();
    assert!(
        job1.iter().any(|r| r.decision == Verdict::Deny),
        "{job1:#?}"
    );
    for r in &job1 {
        let p = r
            .process
            .as_ref()
            .expect("every job record names its process");
        assert_eq!(p.comm.as_deref(), Some("curl"));
        assert_eq!(r.runner, "it-runner");
    }
    let expected = egressd_audit::summary::summarize(job1.iter().cloned()).to_markdown();
    assert!(
        printed.contains(&expected),
        "printed:\n{printed}\nexpected:\n{expected}"
    );
    assert!(
        expected
            .split("#### ")
            .any(|section| section.starts_with("Denied: ")
                && section.contains(&format!(
                    "| {DENIED} | 8080 | 1 | curl | no rule allows this address |"
                ))),
        "{expected}"
    );
    let step = std::fs::read_to_string(&summary_file).unwrap();
    assert!(
        step.starts_with("# earlier step\n") && step.contains(&expected),
        "appended:\n{step}"
    );

    // Between jobs: no tags.
    let (code, _) = boot.curl_from_job(ALLOWED);
    assert_eq!(code, 0);

    // Job 2, a repository with an override.
    let env2 = github_env("octo/wide", "102", "test");
    assert!(boot.job(&["start"], &env2).status.success());
    let (code, body) = boot.curl_from_job(OVERRIDE_ONLY);
    assert_eq!(
        (code, body.as_str()),
        (0, kit::SERVER_BODY),
        "the override applies to octo/wide"
    );
    let ended = boot.job(&["end", "--fail-on-deny"], &env2);
    assert!(
        ended.status.success(),
        "nothing denied in job 2: {}",
        String::from_utf8_lossy(&ended.stdout)
    );
    let t2 = tags("octo/wide", "102", "test");
    let recs = boot.records();
    let job2: Vec<&Record> = recs
        .iter()
        .filter(|r| r.job.as_deref() == Some(&t2))
        .collect();
    let over = job2
        .iter()
        .find(|r| {
            r.dst.map(|d| d.to_string()) == Some(format!("{OVERRIDE_ONLY}:8080")) && !r.is_closing()
        })
        .expect("job 2's connection carries job 2's tags");
    assert_eq!(over.rule, "overrides[0].allow[0]");
    assert!(
        recs.iter()
            .filter(|r| r.job.is_none())
            .any(|r| r.dst.map(|d| d.to_string()) == Some(format!("{ALLOWED}:8080"))),
        "traffic between jobs carries no job tags"
    );
    assert!(!recs.iter().any(|r| r.job.as_deref() == Some(&t1)
        && r.dst.map(|d| d.to_string()) == Some(format!("{OVERRIDE_ONLY}:8080"))
        && r.decision == Verdict::Allow));

    // SIGTERM: exit 0, nothing of egressd left.
    let status = boot.terminate();
    assert!(status.success(), "{}", boot.log());
    assert!(!boot.path("ready.json").exists());
    assert!(!boot.path("control.sock").exists());
    let tree = kit::bpftool_cgroup_tree();
    let name = boot
        .jobs
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        !tree.contains(&name),
        "programs still attached to {name}:\n{tree}"
    );
    assert!(
        !std::fs::read_dir(boot.jobs.path().parent().unwrap())
            .unwrap()
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("egressd-selftest-")),
        "the self-test cgroup is gone"
    );
}

/// Boot in a fail-closed state: ready, but `degraded`, with the reason in
/// the ready file, the log, `job status` and an `event` record; job traffic
/// is denied.
fn assert_fail_closed(boot: &Boot, why: &str) {
    let ready = boot.ready();
    assert_eq!(ready["state"], "degraded", "{ready}");
    assert!(ready["detail"].as_str().unwrap().contains(why), "{ready}");
    let notes = boot.notifications();
    assert!(
        notes.iter().any(
            |n| n.starts_with("READY=1\nSTATUS=DEGRADED, all egress denied: ") && n.contains(why)
        ),
        "the degraded state is in systemd's status: {notes:?}"
    );
    assert!(boot.log().contains("FAIL CLOSED"), "{}", boot.log());
    let event = wait_for(boot, "of kind event", |r| {
        r.kind == egressd_audit::Kind::Event
    });
    assert_eq!(event.reason, Reason::PolicyUnavailable);
    assert!(
        event.detail.as_deref().unwrap_or_default().contains(why),
        "{event:?}"
    );
    let status = boot.job(&["status"], &[]);
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stdout).contains("degraded"));

    let (code, _) = boot.curl_from_job(ALLOWED);
    assert_ne!(code, 0, "no job traffic gets out without a policy");
    let denied = wait_for(boot, "for the blocked connection", |r| {
        r.dst.map(|d| d.to_string()) == Some(format!("{ALLOWED}:8080"))
    });
    assert_eq!(denied.decision, Verdict::Deny);
    assert_eq!(denied.reason, Reason::PolicyUnavailable, "{denied:?}");
}

#[test]
fn a_broken_policy_boots_fail_closed_and_says_why() {
    if !kit::privileged() {
        return;
    }
    let _t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow:\n  - \"*example.com\"\n").unwrap();
    let mut boot = Boot::start(&["--policy", policy.to_str().unwrap()], &[]);
    assert_fail_closed(&boot, "policy.yaml:3");
    assert!(boot.terminate().success());
}

#[test]
fn an_unreachable_policy_service_boots_fail_closed_and_says_why() {
    if !kit::privileged() {
        return;
    }
    let _t = Topology::up();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/v1/orgs/octo/policy");
    let mut boot = Boot::start(
        &[
            "--policy-url",
            &url,
            "--token-file",
            "$DIR/token",
            "--policy-cache",
            "$DIR/lkg.yaml",
        ],
        &[],
    );
    // (the token file does not exist either: the message names what failed)
    assert_fail_closed(&boot, "no policy");
    assert!(boot.terminate().success());
}

/// `boot --policy-url`: the org policy comes from a real `egressd serve`
/// (PostgreSQL-backed), is enforced, and is kept as the last-known-good copy;
/// a later boot with the service gone enforces that copy and says so.
#[test]
fn boot_fetches_the_org_policy_from_the_service_and_falls_back_to_its_copy() {
    if !kit::privileged() {
        return;
    }
    let Some(db) = super::service::database_url() else {
        return;
    };
    let _t = Topology::up();
    let svc = OrgService::start(&db, "boot");
    let cache = svc.cache.clone();
    let args = svc.boot_args();

    let mut boot = Boot::start(&args, &[]);
    let ready = boot.ready();
    assert_eq!(ready["state"], "enforcing", "{ready}");
    assert!(
        ready["detail"].as_str().unwrap().contains("policy service"),
        "{ready}"
    );
    assert_eq!(
        std::fs::read_to_string(&cache).unwrap(),
        POLICY,
        "the fetched policy is kept as the last-known-good copy"
    );
    assert_eq!(
        boot.curl_from_job(ALLOWED),
        (0, kit::SERVER_BODY.to_owned())
    );
    let (code, _) = boot.curl_from_job(DENIED);
    assert_ne!(code, 0, "the service's policy does not allow {DENIED}");
    assert!(boot.terminate().success());
    drop(boot);

    svc.serve.kill();
    let mut boot = Boot::start(&args, &[]);
    let ready = boot.ready();
    assert_eq!(ready["state"], "enforcing", "{ready}");
    assert!(
        ready["detail"]
            .as_str()
            .unwrap()
            .contains("last-known-good policy copy"),
        "a stale copy is never silent: {ready}"
    );
    assert!(boot.log().contains("last-known-good"), "{}", boot.log());
    assert_eq!(
        boot.curl_from_job(ALLOWED),
        (0, kit::SERVER_BODY.to_owned())
    );
    let (code, _) = boot.curl_from_job(DENIED);
    assert_ne!(code, 0, "the cached policy still denies {DENIED}");
    assert!(boot.terminate().success());
}

/// A real `egressd serve` (PostgreSQL-backed) holding [`POLICY`] for a fresh
/// org, with what `boot --policy-url` needs to fetch it.
struct OrgService {
    serve: super::service::Serve,
    org: String,
    addr: std::net::SocketAddr,
    token_file: PathBuf,
    /// Where boot keeps its last-known-good copy.
    cache: PathBuf,
    _cfg: super::service::Config,
    _secrets: tempfile::TempDir,
}

impl OrgService {
    fn start(db: &str, prefix: &str) -> OrgService {
        let org = super::service::org(prefix);
        let cfg = super::service::Config::new(&[&org]);
        std::fs::write(cfg.policies().join(format!("{org}.yaml")), POLICY).unwrap();
        let secrets = tempfile::tempdir().unwrap();
        let token_file = secrets.path().join("token");
        std::fs::write(&token_file, super::service::token(&org)).unwrap();
        let addr = super::service::free_addr();
        let bin = crate::support::egressd_bin();
        let mut serve = super::service::Serve::start(&bin, &cfg, db, addr, &[]);
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(serve.wait_ready());
        OrgService {
            serve,
            addr,
            token_file,
            cache: secrets.path().join("last-known-good.yaml"),
            org,
            _cfg: cfg,
            _secrets: secrets,
        }
    }

    /// `--policy-url URL --token-file FILE --policy-cache FILE`.
    fn boot_args(&self) -> Vec<String> {
        vec![
            "--policy-url".into(),
            format!("http://{}/v1/orgs/{}/policy", self.addr, self.org),
            "--token-file".into(),
            self.token_file.display().to_string(),
            "--policy-cache".into(),
            self.cache.display().to_string(),
        ]
    }

    /// The ids of every record the service holds for the org, sorted.
    fn shipped_ids(&self) -> Vec<String> {
        let token = super::service::token(&self.org);
        let reply = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(super::service::request(
                self.addr,
                "GET",
                "/v1/audit",
                Some(&token),
                &[],
                b"",
            ))
            .unwrap();
        assert_eq!(reply.status, 200, "the service's export: {}", reply.text());
        let mut ids = super::service::export_ids(&reply);
        ids.sort();
        ids
    }
}

fn sorted_ids<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<String> {
    let mut ids: Vec<String> = records.into_iter().map(|r| r.id.to_string()).collect();
    ids.sort();
    ids
}

/// `boot --policy-url ... --ship`: `job end` returns only once the job's
/// records are at the policy service, and SIGTERM ships the rest: every
/// record of the boot reaches the service, once.
#[test]
fn boot_ships_every_record_to_the_policy_service() {
    if !kit::privileged() {
        return;
    }
    let Some(db) = super::service::database_url() else {
        return;
    };
    let _t = Topology::up();
    let svc = OrgService::start(&db, "ship");
    let mut boot = Boot::start(&svc.boot_args(), &["--ship"]);
    assert_eq!(boot.ready()["state"], "enforcing", "{}", boot.ready());

    let env = github_env("octo/app", "301", "ship");
    assert!(
        boot.job(&["start"], &env).status.success(),
        "{}",
        boot.log()
    );
    assert_eq!(
        boot.curl_from_job(ALLOWED),
        (0, kit::SERVER_BODY.to_owned())
    );
    let (code, _) = boot.curl_from_job(DENIED);
    assert_ne!(code, 0);
    wait_for(&boot, "closing the allowed connection", |r| {
        r.dst.map(|d| d.to_string()) == Some(format!("{ALLOWED}:8080")) && r.bytes_up.is_some()
    });
    wait_for(&boot, "for the denied connection", |r| {
        r.dst.map(|d| d.to_string()) == Some(format!("{DENIED}:8080"))
    });
    let ended = boot.job(&["end"], &env);
    assert!(
        ended.status.success(),
        "{}",
        String::from_utf8_lossy(&ended.stderr)
    );
    let t = tags("octo/app", "301", "ship");
    let job: Vec<Record> = boot
        .records()
        .into_iter()
        .filter(|r| r.job.as_deref() == Some(&t))
        .collect();
    assert!(job.len() >= 3, "decisions and a closing record: {job:#?}");
    let shipped = svc.shipped_ids();
    for id in sorted_ids(&job) {
        assert!(
            shipped.contains(&id),
            "`job end` returned before record {id} reached the service\n{}",
            boot.log()
        );
    }

    assert!(boot.terminate().success(), "{}", boot.log());
    let local = boot.records();
    assert_eq!(
        svc.shipped_ids(),
        sorted_ids(&local),
        "every record of the boot reached the service, once"
    );
}

#[test]
fn the_systemd_unit_parses_cleanly() {
    let unit = repo().join("packaging/egressd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        "Type=notify",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
        "ReadWritePaths=/var/lib/egressd /sys/fs/bpf",
    ] {
        assert!(text.contains(needed), "the unit lacks {needed}");
    }
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("systemd-analyze not installed: structural check only");
        return;
    };
    assert!(version.status.success());
    // Verify a copy whose ExecStart names a binary that exists here.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("egressd.service");
    let bin = crate::support::egressd_bin();
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/egressd", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn install_sh_stages_into_a_destdir_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("image");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    // A launcher for the real binary: install.sh runs its `check` for real,
    // and copying a few bytes instead of a debug build keeps the test quick.
    let launcher = dir.path().join("egressd");
    std::fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\"\n",
            crate::support::egressd_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &launcher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let install = |extra: &[&str]| {
        let out = Command::new("sh")
            .arg(repo().join("packaging/install.sh"))
            .arg("--destdir")
            .arg(&dest)
            .arg("--binary")
            .arg(&launcher)
            .arg("--policy")
            .arg(&policy)
            .args([
                "--labels",
                "self-hosted,linux",
                "--runner-service",
                "actions.runner.octo-app.r1.service",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install(&[]);
    let snapshot = || {
        let mut files = Vec::new();
        let mut stack = vec![dest.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let mode = std::os::unix::fs::PermissionsExt::mode(
                        &e.metadata().unwrap().permissions(),
                    );
                    files.push((
                        p.strip_prefix(&dest).unwrap().to_owned(),
                        mode & 0o777,
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        files.sort();
        files
    };
    let first = snapshot();
    let names: Vec<String> = first
        .iter()
        .map(|(p, m, _)| format!("{} {m:o}", p.display()))
        .collect();
    for want in [
        "usr/local/bin/egressd 755",
        "etc/systemd/system/egressd.service 644",
        "etc/egressd/policy.yaml 644",
        "etc/default/egressd 644",
        "usr/local/lib/egressd/job-started.sh 755",
        "usr/local/lib/egressd/job-completed.sh 755",
        "etc/systemd/system/actions.runner.octo-app.r1.service.d/egressd.conf 644",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:#?}"
        );
    }
    let defaults = std::fs::read_to_string(dest.join("etc/default/egressd")).unwrap();
    assert!(
        defaults.contains(
            "--policy /etc/egressd/policy.yaml --control-group egressd --labels self-hosted,linux"
        ),
        "{defaults}"
    );
    install(&[]);
    assert_eq!(snapshot(), first, "a second run changes nothing");

    // An invalid policy is refused before anything is written.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 2\n").unwrap();
    let out = Command::new("sh")
        .arg(repo().join("packaging/install.sh"))
        .arg("--destdir")
        .arg(dir.path().join("other"))
        .arg("--binary")
        .arg(&launcher)
        .arg("--policy")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.path().join("other").exists());
}

#[test]
fn install_sh_refuses_to_run_without_root() {
    // As root, drop to nobody for the check; as another user, run it as is.
    // SAFETY: geteuid has no preconditions.
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    let out = cmd
        .arg(repo().join("packaging/install.sh"))
        .arg("--policy")
        .arg("/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn watch_tamper_records_a_detached_program() {
    if !kit::privileged() {
        return;
    }
    let _t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut boot = Boot::start(
        &["--policy", policy.to_str().unwrap()],
        &["--watch-tamper", "--tamper-interval", "200ms"],
    );
    // A job with root detaches the connect4 link of the job cgroup.
    let cgroup_id =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(boot.jobs.path()).unwrap());
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| {
            l["cgroup_id"].as_u64() == Some(cgroup_id)
                && l["attach_type"]
                    .as_str()
                    .is_some_and(|a| a.contains("inet4_connect"))
        })
        .unwrap_or_else(|| panic!("no connect4 link on the job cgroup: {links}"));
    let id = link["id"].as_u64().unwrap().to_string();
    let detached = Command::new("bpftool")
        .args(["link", "detach", "id", &id])
        .output()
        .unwrap();
    assert!(
        detached.status.success(),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );

    let event = wait_for(&boot, "about the tampering", |r| {
        r.kind == egressd_audit::Kind::Event
            && r.detail.as_deref().is_some_and(|d| d.contains("tampering"))
    });
    assert!(
        event.detail.as_deref().unwrap().contains("connect4"),
        "{event:?}"
    );
    assert_eq!(event.reason, Reason::TamperDetected, "{event:?}");
    assert!(boot.log().contains("TAMPERING"));
    let status = boot.job(&["status"], &[]);
    assert_eq!(status.status.code(), Some(1), "degraded after tampering");
    assert!(String::from_utf8_lossy(&status.stdout).contains("tampering detected"));
    assert!(boot.terminate().success());
}

#[test]
fn pinned_links_keep_a_killed_boot_fail_closed_until_cleanup() {
    if !kit::privileged() {
        return;
    }
    let _t = Topology::up();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    let pin_dir = format!("/sys/fs/bpf/egressd-it-{}", std::process::id());
    let _ = std::fs::remove_dir_all(&pin_dir);
    let mut boot = Boot::start(
        &["--policy", policy.to_str().unwrap()],
        &["--pin", "--pin-dir", &pin_dir],
    );
    let (code, _) = boot.curl_from_job(ALLOWED);
    assert_eq!(code, 0, "enforcing and allowed");

    // A crash: the links stay, so the job's traffic stays blocked.
    boot.child.kill().unwrap();
    boot.child.wait().unwrap();
    let cg = boot.jobs.path().to_str().unwrap().to_owned();
    let show = |cg: &str| {
        let out = Command::new("bpftool")
            .args(["cgroup", "show", cg])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        show(&cg).contains("connect4"),
        "pinned links outlive the process:\n{}",
        show(&cg)
    );
    let (code, _) = boot.curl_from_job(ALLOWED);
    assert_ne!(code, 0, "with egressd dead, nothing gets out (fail closed)");

    let out = Command::new(crate::support::egressd_bin())
        .args(["cleanup", "--pin-dir", &pin_dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !show(&cg).contains("connect4"),
        "cleanup detached everything:\n{}",
        show(&cg)
    );
    let _ = std::fs::remove_dir(&pin_dir);
}

/// A job whose own (allowed, so never counted) DNS queries fill the journal
/// at the smallest budget: none of its records is removed; egressd says the
/// budget is exhausted, denies the job's further traffic with
/// `audit_budget_exhausted` (fail closed), the job summary says so, and the
/// next job may resolve again. Bounded: 200 000 queries or 60 s.
#[test]
fn a_job_that_fills_the_journal_budget_is_denied_further_traffic_and_loses_no_record() {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;
    use std::time::{Duration, Instant};
    if !kit::privileged() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(crate::fake_dns::FakeDns::start(&[(
        "a.test",
        crate::fake_dns::RecordSpec::addr("198.51.100.7".parse().unwrap()),
    )]));
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow:\n  - a.test\n").unwrap();
    let boot = Boot::start_resolving(
        &["--policy", policy.to_str().unwrap()],
        &["--audit-max-size", "16MiB"],
        &dns.addr().to_string(),
    );
    let listen: std::net::SocketAddr = boot.ready()["dns"].as_str().unwrap().parse().unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(listen).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let ask = |id: u16, name: &str| -> Option<ResponseCode> {
        sock.send(&crate::dns::query(id, name, RecordType::A))
            .unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).ok()?;
        Some(Message::from_vec(&buf[..n]).unwrap().response_code())
    };

    let env = github_env("octo/flood", "301", "flood");
    let started = boot.job(&["start"], &env);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(
        ask(1, "exfil-first.flood.test"),
        Some(ResponseCode::Refused)
    );

    const WINDOW: u16 = 64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sent, mut answered, mut refused) = (0u32, 0u32, 0u32);
    let mut buf = [0u8; 1500];
    while refused == 0 && sent < 200_000 && Instant::now() < deadline {
        for i in 0..WINDOW {
            sock.send(&crate::dns::query(i, "a.test", RecordType::A))
                .unwrap();
        }
        sent += u32::from(WINDOW);
        for _ in 0..WINDOW {
            let Ok(n) = sock.recv(&mut buf) else { break };
            answered += 1;
            if Message::from_vec(&buf[..n]).unwrap().response_code() == ResponseCode::Refused {
                refused += 1;
            }
        }
    }
    eprintln!("budget flood: sent {sent}, answered {answered}, refused {refused}");
    assert!(
        refused > 0,
        "egressd never stopped the job after {sent} queries:\n{}",
        boot.log()
    );

    let mut end_env = env.clone();
    let summary_file = dir.path().join("summary.md");
    let summary_path = summary_file.to_str().unwrap().to_owned();
    end_env.push(("GITHUB_STEP_SUMMARY", &summary_path));
    let ended = boot.job(&["end"], &end_env);
    assert!(
        ended.status.success(),
        "{}",
        String::from_utf8_lossy(&ended.stderr)
    );
    let summary = std::fs::read_to_string(&summary_file).unwrap();
    assert!(summary.contains("Egress stopped"), "{summary}");
    // The 64 budget denies of the last window are more than one key's
    // verbatim ones: their counted record is in the job's summary.
    assert!(
        summary.contains("repeated decision(s) were recorded as counts"),
        "{summary}"
    );

    let records = boot.records();
    let first: Vec<_> = records
        .iter()
        .filter(|r| r.host.as_deref() == Some("exfil-first.flood.test"))
        .collect();
    assert_eq!(first.len(), 1, "the job's first deny is gone");
    assert!(
        !records
            .iter()
            .any(|r| r.reason == Reason::JournalSegmentRemoved),
        "the journal removed the job's records"
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == egressd_audit::Kind::Event
                && r.reason == Reason::AuditBudgetExhausted),
        "no event says the budget was exhausted"
    );
    let stopped: u64 = records
        .iter()
        .filter(|r| r.reason == Reason::AuditBudgetExhausted && r.kind == egressd_audit::Kind::Dns)
        .map(Record::decisions)
        .sum();
    assert!(
        stopped >= u64::from(refused),
        "{stopped} budget denies recorded, {refused} answered"
    );
    // Every answered query of the job is there: none was removed.
    let allowed = records
        .iter()
        .filter(|r| r.host.as_deref() == Some("a.test") && r.decision == Verdict::Allow)
        .count() as u64;
    let kept = allowed + stopped;
    assert!(
        u64::from(answered) <= kept && kept <= u64::from(sent),
        "sent {sent}, answered {answered}, in the journal {allowed} allowed and {stopped} stopped"
    );

    // The next job starts with egress allowed again.
    let next = boot.job(&["start"], &github_env("octo/next", "302", "build"));
    assert!(
        next.status.success(),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    assert_eq!(ask(2, "a.test"), Some(ResponseCode::NoError));
    drop(rt);
}
