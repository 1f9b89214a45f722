//! Records the tests write, recognisable when read back.

use egressd_audit::{HostSource, Kind, Record};
use egressd_policy::{Decision, Reason, RuleId, RuleList, Verdict};

/// Record number `n` of a test run: an allowed TCP connection whose `detail`
/// carries `n`.
pub fn numbered(n: u64) -> Record {
    let d = Decision::enforce(
        Verdict::Allow,
        Reason::RuleAllow,
        RuleId::Base {
            list: RuleList::Allow,
            index: 0,
        },
    );
    let mut r = Record::new("test-runner", Kind::Tcp, &d);
    r.host = Some("github.com".into());
    r.host_source = HostSource::Sni;
    r.dst = Some("198.51.100.1:443".parse().unwrap());
    r.src = Some("10.1.0.2:40000".parse().unwrap());
    r.detail = Some(format!("n={n}"));
    r
}

/// The `n` of a record made by [`numbered`].
pub fn number_of(r: &Record) -> Option<u64> {
    r.detail.as_deref()?.strip_prefix("n=")?.parse().ok()
}
