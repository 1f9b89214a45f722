//! `egressd boot`'s self-test, run before the service reports ready:
//! 1. a name the policy allows must be decided `allow` by the engine's own
//!    decision path (the one the DNS server and the listeners use);
//! 2. the target the policy denies must be decided `deny` by the same path;
//! 3. with the kernel hooks attached, a real probe process, placed in a fresh
//!    child cgroup of the filtered cgroup, connects to that target: the
//!    connect must be intercepted (the target is an unroutable documentation
//!    address, so only the proxy can complete the handshake) and then refused
//!    without any data coming back.
//!
//! The probe runs entirely between `fork` and `exec` of a child process (only
//! async-signal-safe system calls) and reports its outcome as the child's
//! spawn error, so no helper binary is needed and nothing is executed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use egressd_audit::HostSource;
use egressd_policy::{RuleId, RuleList, Verdict};

use crate::cgroup_child::OwnedCgroup;
use crate::decide::enforce_outcome;
use crate::engine::Engine;

/// The default denied target: TEST-NET-1 (RFC 5737), routed nowhere.
pub const DEFAULT_DENIED_TARGET: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 443);
/// The name the probe puts in its HTTP `Host`: reserved, never allowed.
const PROBE_HOST: &str = "egressd-selftest.invalid";
/// How long the probe waits for the proxy's refusal.
const PROBE_TIMEOUT_SECS: libc::time_t = 15;

/// What the self-test found wrong.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    /// The engine does not allow the name it should.
    #[error("self-test: the policy should allow {name:?} but the engine decided {reason} ({rule})")]
    AllowedNameDenied {
        /// The name.
        name: String,
        /// The reason code.
        reason: String,
        /// The rule id.
        rule: String,
    },
    /// The engine would let the denied target through.
    #[error(
        "self-test: the engine allows {target}, which must be denied ({reason}, {rule}); pick another --self-test-target"
    )]
    TargetAllowed {
        /// The target.
        target: SocketAddr,
        /// The reason code.
        reason: String,
        /// The rule id.
        rule: String,
    },
    /// The probe's connection was not intercepted, or got through.
    #[error(
        "self-test: a connection from the filtered cgroup to {target} {what}: enforcement is not working"
    )]
    Probe {
        /// The target.
        target: SocketAddr,
        /// What happened.
        what: String,
    },
    /// The probe could not be set up.
    #[error("self-test: cannot run the probe: {0}")]
    Setup(String),
}

/// What the self-test proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfTestReport {
    /// The allowed name checked, if the policy had one to check.
    pub allowed_name: Option<String>,
    /// Whether the kernel probe ran (only with the hooks attached, and not in
    /// audit mode, where the probe would be let through by design).
    pub probed: bool,
}

/// An allowed name to check: `allow_name` when given, else the first plain
/// (or wildcard) name among the policy's first allow rules.
pub fn pick_allowed_name(engine: &Engine, allow_name: Option<&str>) -> Option<String> {
    if let Some(n) = allow_name {
        return Some(n.to_owned());
    }
    let policy = engine.policy();
    (0..64u32).find_map(|index| {
        let info = policy.rule(RuleId::Base {
            list: RuleList::Allow,
            index,
        })?;
        name_of_rule(&info.text)
    })
}

/// A concrete name a rule text allows, if it is a name rule.
fn name_of_rule(text: &str) -> Option<String> {
    let first = text.split_whitespace().next().unwrap_or_default();
    let host = first.split_once(':').map_or(first, |(h, _)| h);
    let host = host.strip_prefix("*.").map_or_else(
        || host.to_owned(),
        |rest| format!("egressd-selftest.{rest}"),
    );
    let plain = !host.is_empty()
        && host.contains('.')
        && host.parse::<IpAddr>().is_err()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    plain.then_some(host)
}

/// Run the self-test (see the module documentation). `probe_parent` is the
/// filtered cgroup when the kernel hooks are attached.
pub async fn run(
    engine: &Engine,
    allow_name: Option<&str>,
    target: SocketAddr,
    probe_parent: Option<&Path>,
) -> Result<SelfTestReport, SelfTestError> {
    run_checks(engine, Some(allow_name), target, probe_parent).await
}

/// The self-test in the fail-closed state (no valid policy): there is no
/// allowed name to check; the denied target must still be decided deny and
/// the probe intercepted and refused.
pub async fn run_fail_closed(
    engine: &Engine,
    target: SocketAddr,
    probe_parent: Option<&Path>,
) -> Result<SelfTestReport, SelfTestError> {
    run_checks(engine, None, target, probe_parent).await
}

async fn run_checks(
    engine: &Engine,
    allow_name: Option<Option<&str>>,
    target: SocketAddr,
    probe_parent: Option<&Path>,
) -> Result<SelfTestReport, SelfTestError> {
    let allowed_name = allow_name.and_then(|a| pick_allowed_name(engine, a));
    if let Some(name) = &allowed_name {
        let d = engine.decide_name(name);
        if enforce_outcome(&d) != Verdict::Allow {
            return Err(SelfTestError::AllowedNameDenied {
                name: name.clone(),
                reason: d.reason.to_string(),
                rule: d.rule.to_string(),
            });
        }
    } else if allow_name.is_some() {
        tracing::warn!(
            "self-test: the policy allows no plain name to check; pass --self-test-allow NAME"
        );
    }
    let decided = engine
        .decide_tcp(target, Some((PROBE_HOST, HostSource::HttpHost)))
        .await;
    if enforce_outcome(&decided.decision) != Verdict::Deny {
        return Err(SelfTestError::TargetAllowed {
            target,
            reason: decided.decision.reason.to_string(),
            rule: decided.decision.rule.to_string(),
        });
    }
    let audit_mode = engine.policy().base().mode() == egressd_policy::Mode::Audit;
    let probed = match probe_parent {
        Some(parent) if !audit_mode => {
            let parent = parent.to_owned();
            tokio::task::spawn_blocking(move || probe(&parent, target))
                .await
                .map_err(|e| SelfTestError::Setup(e.to_string()))??;
            true
        }
        Some(_) => {
            tracing::warn!(
                "self-test: audit mode lets the probe through by design; the kernel probe is skipped"
            );
            false
        }
        None => false,
    };
    Ok(SelfTestReport {
        allowed_name,
        probed,
    })
}

/// Outcome codes the probe child reports as its spawn error.
const CONNECT_FAILED: i32 = 1000;
const RECV_FAILED: i32 = 2000;
const GOT_DATA: i32 = 3000;
const SETUP_FAILED: i32 = 4000;

fn probe(parent: &Path, target: SocketAddr) -> Result<(), SelfTestError> {
    use std::os::unix::process::CommandExt as _;
    let SocketAddr::V4(v4) = target else {
        return Err(SelfTestError::Setup(
            "the self-test target must be an IPv4 address".into(),
        ));
    };
    let cgroup = OwnedCgroup::create(parent, "egressd-selftest")
        .map_err(|e| SelfTestError::Setup(e.to_string()))?;
    let entry = cgroup.entry();
    // SAFETY: an all-zero sockaddr_in is valid; the fields are set below.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = v4.port().to_be();
    addr.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
    let request: &'static [u8] =
        b"GET / HTTP/1.1\r\nHost: egressd-selftest.invalid\r\nConnection: close\r\n\r\n";
    let mut cmd = std::process::Command::new("/bin/true");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure makes only async-signal-safe system calls (open,
    // write, socket, setsockopt, connect, send, recv, close) on memory that
    // was prepared before the fork; it never allocates.
    unsafe {
        cmd.pre_exec(move || {
            let fail = |base: i32| io::Error::from_raw_os_error(base + errno());
            if entry.enter().is_err() {
                return Err(fail(SETUP_FAILED));
            }
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(fail(SETUP_FAILED));
            }
            let tv = libc::timeval {
                tv_sec: PROBE_TIMEOUT_SECS,
                tv_usec: 0,
            };
            let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                tv_len,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const tv).cast(),
                tv_len,
            );
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                let e = fail(CONNECT_FAILED);
                libc::close(fd);
                return Err(e);
            }
            libc::send(
                fd,
                request.as_ptr().cast(),
                request.len(),
                libc::MSG_NOSIGNAL,
            );
            let mut buf = [0u8; 64];
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            let outcome = match n {
                0 => io::Error::from_raw_os_error(RECV_FAILED + libc::ECONNRESET),
                n if n < 0 => fail(RECV_FAILED),
                _ => io::Error::from_raw_os_error(GOT_DATA),
            };
            libc::close(fd);
            Err(outcome)
        });
    }
    let outcome = match cmd.spawn() {
        Ok(mut child) => {
            let _ = child.wait();
            Err("the probe process was not stopped before exec".to_owned())
        }
        Err(e) => match e.raw_os_error().unwrap_or(0) {
            c if c == RECV_FAILED + libc::ECONNRESET || c == RECV_FAILED + libc::EPIPE => Ok(()),
            c if (RECV_FAILED..GOT_DATA).contains(&c) => Err(format!(
                "was accepted but then {}",
                io::Error::from_raw_os_error(c - RECV_FAILED)
            )),
            GOT_DATA => Err("got an answer: traffic to a denied target gets through".into()),
            c if (CONNECT_FAILED..RECV_FAILED).contains(&c) => Err(format!(
                "was not intercepted by the proxy (connect: {})",
                io::Error::from_raw_os_error(c - CONNECT_FAILED)
            )),
            c if (SETUP_FAILED..SETUP_FAILED + 1000).contains(&c) => {
                return Err(SelfTestError::Setup(format!(
                    "cannot enter {} or open a socket: {}",
                    cgroup.path().display(),
                    io::Error::from_raw_os_error(c - SETUP_FAILED)
                )));
            }
            _ => return Err(SelfTestError::Setup(e.to_string())),
        },
    };
    drop(cgroup);
    outcome.map_err(|what| SelfTestError::Probe { target, what })
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_name_rules_only() {
        assert_eq!(name_of_rule("github.com"), Some("github.com".into()));
        assert_eq!(name_of_rule("github.com:443"), Some("github.com".into()));
        assert_eq!(
            name_of_rule("*.githubusercontent.com"),
            Some("egressd-selftest.githubusercontent.com".into())
        );
        assert_eq!(name_of_rule("10.0.0.0/8"), None);
        assert_eq!(name_of_rule("198.51.100.7"), None);
        assert_eq!(name_of_rule("localhost"), None);
    }
}
