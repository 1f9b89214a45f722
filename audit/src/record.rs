//! The audit record, schema version 1 (`../shared/design/audit.md`): one JSON
//! object per line. Field names and codes are a public interface: golden tests
//! pin the exact bytes; changing them needs a new `v`. An optional field may
//! be added within v1 (readers ignore fields they do not know): `port`,
//! `count` and `samples` (a counted record, see [`Record::decisions`]).

use std::net::SocketAddr;
use std::sync::Arc;

use egressd_policy::{Decision, Reason, Verdict};
use serde::{Deserialize, Serialize};

/// The schema version written in every record's `v`.
pub const SCHEMA_VERSION: u8 = 1;

/// What kind of traffic (or event) the record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A TCP connection (transparent or through the CONNECT proxy).
    Tcp,
    /// A DNS query.
    Dns,
    /// A UDP datagram other than DNS (denied in the kernel).
    Udp,
    /// An ICMP socket (denied in the kernel).
    Icmp,
    /// A raw or packet socket (denied in the kernel).
    Raw,
    /// Not traffic: something about egressd itself that a security team must
    /// see (a rejected policy reload, a removed journal segment, tampering).
    Event,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 6] = [
        Kind::Tcp,
        Kind::Dns,
        Kind::Udp,
        Kind::Icmp,
        Kind::Raw,
        Kind::Event,
    ];

    /// The stable serialised string (`tcp`, `dns`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Dns => "dns",
            Kind::Udp => "udp",
            Kind::Icmp => "icmp",
            Kind::Raw => "raw",
            Kind::Event => "event",
        }
    }
}

/// Where the record's `host` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostSource {
    /// TLS ClientHello server_name.
    Sni,
    /// HTTP/1 `Host` header.
    HttpHost,
    /// The HTTP CONNECT request line.
    Connect,
    /// The name asked in a DNS query.
    DnsQuery,
    /// A recent DNS answer that gave this IP for the name.
    DnsCache,
    /// No name known.
    None,
}

impl HostSource {
    /// Every source.
    pub const ALL: [HostSource; 6] = [
        HostSource::Sni,
        HostSource::HttpHost,
        HostSource::Connect,
        HostSource::DnsQuery,
        HostSource::DnsCache,
        HostSource::None,
    ];

    /// The stable serialised string (`sni`, `http_host`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            HostSource::Sni => "sni",
            HostSource::HttpHost => "http_host",
            HostSource::Connect => "connect",
            HostSource::DnsQuery => "dns_query",
            HostSource::DnsCache => "dns_cache",
            HostSource::None => "none",
        }
    }
}

/// The job active on the runner when the decision was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JobTags {
    /// `GITHUB_REPOSITORY` (`owner/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// `GITHUB_WORKFLOW`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// `GITHUB_RUN_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// `GITHUB_RUN_ATTEMPT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_attempt: Option<String>,
    /// `GITHUB_JOB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The process behind the traffic, as far as the kernel told us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Process {
    /// Thread-group id (what users call the pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The kernel's 16-byte task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// `/proc/PID/exe`, when the process still existed to ask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// cgroup v2 path relative to the cgroup mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// Container id when the cgroup path shows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// One audit record (schema v1). Serialised field order is the order below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Schema version, [`SCHEMA_VERSION`]; any other value is rejected when
    /// reading, because its fields may not mean what v1's mean.
    #[serde(deserialize_with = "schema_version")]
    pub v: u8,
    /// Unique, time-ordered id (ULID): the idempotency key for shipping.
    pub id: ulid::Ulid,
    /// When the decision was made: RFC 3339 UTC with microseconds.
    #[serde(with = "crate::time_format")]
    pub ts: jiff::Timestamp,
    /// Runner name / host id.
    pub runner: String,
    /// The job active at the time, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Arc<JobTags>>,
    /// Traffic kind.
    pub kind: Kind,
    /// What happened to the traffic.
    pub decision: Verdict,
    /// Audit mode only: what enforce mode would have done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce_would: Option<Verdict>,
    /// Stable reason code.
    pub reason: Reason,
    /// The rule id that decided (`allow[3]`, `builtin:metadata`, `default`).
    pub rule: String,
    /// The name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Where `host` came from.
    pub host_source: HostSource,
    /// `ip:port` actually (or would have been) connected to.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::addr_format::serialize"
    )]
    pub dst: Option<SocketAddr>,
    /// The destination port asked for, written only when `dst` is absent
    /// (a name denied before any address was dialled, a DNS query refused):
    /// with `dst` the port is `dst`'s. Read it with [`Record::port`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `ip:port` of the client socket.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::addr_format::serialize"
    )]
    pub src: Option<SocketAddr>,
    /// The process, as far as the kernel told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Box<Process>>,
    /// Closing record of an allowed TCP connection: bytes client -> upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Closing record: bytes upstream -> client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    /// Closing record: how long the connection lived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// A counted record: this many decisions like this one (same kind,
    /// verdict, reason, rule, client and zone) were made during the
    /// interval that ended at `ts`, beyond the ones written verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A counted record: a few distinct hosts among the counted decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<String>>,
    /// Free-text detail for people (an error message, the event's subject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Accept only [`SCHEMA_VERSION`].
fn schema_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let v = u8::deserialize(d)?;
    if v == SCHEMA_VERSION {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format_args!(
            "schema version {v} is not supported (this egressd reads version {SCHEMA_VERSION})"
        )))
    }
}

impl Record {
    /// A record for `decision` now, with a fresh id. The caller fills in
    /// host, dst, src, process and job.
    pub fn new(runner: &str, kind: Kind, decision: &Decision) -> Self {
        Record {
            v: SCHEMA_VERSION,
            id: crate::id::next(),
            ts: crate::time_format::now(),
            runner: runner.to_owned(),
            job: None,
            kind,
            decision: decision.verdict,
            enforce_would: decision.enforce_would,
            reason: decision.reason,
            rule: decision.rule.to_string(),
            host: None,
            host_source: HostSource::None,
            dst: None,
            port: None,
            src: None,
            process: None,
            bytes_up: None,
            bytes_down: None,
            duration_ms: None,
            count: None,
            samples: None,
            detail: None,
        }
    }

    /// Where the traffic was going: `dst` when an address was dialled or
    /// decided on, else only the `port` that was asked for (so every record
    /// of a decision carries its port, and `dst` never holds an address
    /// nobody chose).
    pub fn set_destination(&mut self, dst: Option<SocketAddr>, port: u16) {
        self.dst = dst;
        self.port = if dst.is_some() { None } else { Some(port) };
    }

    /// The destination port: `dst`'s, else `port`.
    pub fn port(&self) -> Option<u16> {
        self.dst.map(|d| d.port()).or(self.port)
    }

    /// True for the closing record of a TCP connection (it carries byte
    /// counts); every other record is exactly one decision.
    pub fn is_closing(&self) -> bool {
        self.bytes_up.is_some() || self.duration_ms.is_some()
    }

    /// How many decisions this record stands for: `count` for a counted
    /// record, else one.
    pub fn decisions(&self) -> u64 {
        self.count.unwrap_or(1)
    }
}

#[cfg(test)]
mod names {
    use super::{HostSource, Kind};

    /// `as_str` (the journal's line writer, the CSV export) says what serde
    /// says, for every variant.
    #[test]
    fn as_str_is_the_serialised_name() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str(), "{k:?}");
        }
        for h in HostSource::ALL {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str(), "{h:?}");
        }
    }
}

#[cfg(test)]
mod docs {
    use egressd_policy::Reason;

    /// docs/audit.md is the public list of reason codes: it names every one.
    #[test]
    fn the_schema_doc_lists_every_reason_code() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/audit.md"))
            .expect("docs/audit.md");
        for r in Reason::ALL {
            assert!(
                doc.contains(&format!("| `{}` |", r.as_str())),
                "docs/audit.md lacks `{r}`"
            );
        }
    }
}
