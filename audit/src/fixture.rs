//! Records for unit tests, built field by field.

use egressd_policy::{Decision, Reason, RuleId, RuleList, Verdict};

use crate::record::{HostSource, JobTags, Kind, Process, Record};

/// A TCP record to `dst` decided by `reason`/`rule`; `host` from SNI.
pub fn tcp(
    verdict: Verdict,
    reason: Reason,
    rule: RuleId,
    host: Option<&str>,
    dst: &str,
) -> Record {
    let mut r = Record::new(
        "runner-1",
        Kind::Tcp,
        &Decision::enforce(verdict, reason, rule),
    );
    r.host = host.map(str::to_owned);
    r.host_source = if host.is_some() {
        HostSource::Sni
    } else {
        HostSource::None
    };
    r.dst = Some(dst.parse().unwrap());
    r.src = Some("10.1.0.2:40000".parse().unwrap());
    r
}

/// An allowed TCP connection to `host` at `dst` by rule `allow[0]`.
pub fn allowed(host: Option<&str>, dst: &str) -> Record {
    let rule = RuleId::Base {
        list: RuleList::Allow,
        index: 0,
    };
    tcp(Verdict::Allow, Reason::RuleAllow, rule, host, dst)
}

/// A TCP connection denied by the default rule.
pub fn denied(host: Option<&str>, dst: &str) -> Record {
    tcp(Verdict::Deny, Reason::NoRule, RuleId::Default, host, dst)
}

/// The audit-mode form of `r` decided by `reason`: let through, would deny.
pub fn would_deny(mut r: Record) -> Record {
    r.enforce_would = Some(Verdict::Deny);
    r.decision = Verdict::Allow;
    r
}

/// A DNS query for `name`.
pub fn dns(verdict: Verdict, name: &str) -> Record {
    let d = match verdict {
        Verdict::Allow => Decision::enforce(
            verdict,
            Reason::RuleAllow,
            RuleId::Base {
                list: RuleList::Allow,
                index: 0,
            },
        ),
        Verdict::Deny => Decision::enforce(verdict, Reason::DnsRefused, RuleId::Default),
    };
    let mut r = Record::new("runner-1", Kind::Dns, &d);
    r.host = Some(name.to_owned());
    r.host_source = HostSource::DnsQuery;
    r.dst = Some("127.0.0.53:53".parse().unwrap());
    r
}

/// `r` made by process `comm`.
pub fn by(mut r: Record, comm: &str) -> Record {
    r.process = Some(
        Process {
            pid: Some(4242),
            comm: Some(comm.to_owned()),
            ..Process::default()
        }
        .into(),
    );
    r
}

/// `r` in a job of `repo`.
pub fn in_repo(mut r: Record, repo: &str) -> Record {
    r.job = Some(
        JobTags {
            repository: Some(repo.to_owned()),
            ..JobTags::default()
        }
        .into(),
    );
    r
}
