//! Which records an export, summary or suggestion looks at: time range,
//! decision, host glob, repository. Also parses the time arguments (RFC 3339
//! or relative to now: `90s`, `30m`, `2h`, `7d`, `2w`).

use egressd_policy::Verdict;
use jiff::Timestamp;

use crate::record::Record;

/// A conjunction of optional conditions; the default matches every record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<Timestamp>,
    /// Records strictly before this time.
    pub until: Option<Timestamp>,
    /// Records with this `decision` (what happened to the traffic; in audit
    /// mode that is `allow`, and `enforce_would` says the rest).
    pub decision: Option<Verdict>,
    /// Records whose `host`, or whose destination IP, matches.
    pub host: Option<HostGlob>,
    /// Records whose job ran in this repository (`owner/name`, exact).
    pub repository: Option<String>,
}

impl Filter {
    /// Whether `rec` passes every condition.
    pub fn matches(&self, rec: &Record) -> bool {
        if self.since.is_some_and(|t| rec.ts < t) || self.until.is_some_and(|t| rec.ts >= t) {
            return false;
        }
        if self.decision.is_some_and(|d| rec.decision != d) {
            return false;
        }
        if let Some(repo) = &self.repository {
            let theirs = rec.job.as_ref().and_then(|j| j.repository.as_deref());
            if theirs != Some(repo.as_str()) {
                return false;
            }
        }
        if let Some(glob) = &self.host {
            let by_name = rec.host.as_deref().is_some_and(|h| glob.matches(h));
            let by_ip = rec.dst.is_some_and(|d| glob.matches(&d.ip().to_string()));
            if !(by_name || by_ip) {
                return false;
            }
        }
        true
    }
}

/// A bad filter argument.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    /// Neither RFC 3339 nor a relative duration.
    #[error(
        "{0:?} is not a time: write RFC 3339 (2026-11-26T21:00:00Z) or a duration before now (90s, 30m, 2h, 7d, 2w)"
    )]
    Time(String),
    /// An empty host pattern.
    #[error("the host pattern is empty: write a name or glob such as \"*.example.com\"")]
    EmptyGlob,
}

/// Parse `--since`/`--until`: RFC 3339, or a number and unit (`s`, `m`, `h`,
/// `d`, `w`) meaning that long before `now`.
pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, FilterError> {
    let bad = || FilterError::Time(s.to_owned());
    let s_trim = s.trim();
    if let Ok(ts) = s_trim.parse::<Timestamp>() {
        return Ok(ts);
    }
    let split = s_trim.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s_trim.split_at(split);
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(secs_per).ok_or_else(bad)?;
    let span = jiff::SignedDuration::from_secs(secs);
    now.checked_sub(span).map_err(|_| bad())
}

/// A case-insensitive glob over host names and IPs: `*` is any run of
/// characters (dots included), `?` is one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGlob {
    pattern: String,
}

impl std::str::FromStr for HostGlob {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, FilterError> {
        if s.is_empty() {
            return Err(FilterError::EmptyGlob);
        }
        Ok(HostGlob {
            pattern: s.trim_end_matches('.').to_ascii_lowercase(),
        })
    }
}

impl HostGlob {
    /// The pattern as given, lowercased and without a trailing dot (what
    /// `egressd audit export --server` sends to the service).
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether `text` (a host name or IP) matches; one trailing dot and
    /// letter case are ignored.
    pub fn matches(&self, text: &str) -> bool {
        let text = text.trim_end_matches('.').as_bytes();
        // Iterative wildcard matching with one backtrack point: linear in
        // practice, never exponential.
        let p = self.pattern.as_bytes();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < text.len() {
            let t = text[ti].to_ascii_lowercase();
            if pi < p.len() && (p[pi] == b'?' || p[pi] == t) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

#[cfg(test)]
mod tests;
