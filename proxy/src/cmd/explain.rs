//! `egressd explain`: the decision, reason code and rule id the policy gives a
//! host, IP or `host:port`, computed offline (no DNS, no network). Where the
//! run-time answer also depends on DNS, the output says what was assumed.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use egressd_policy::{AssumeBound, Decision, JobContext, Mode, NoResolutions, Policy, Verdict};

use super::UsageError;

/// The port evaluated when neither TARGET nor `--port` gives one.
const DEFAULT_PORT: u16 = 443;

/// Options of `egressd explain`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  egressd explain policy.yaml github.com\n  \
egressd explain policy.yaml 140.82.112.3:443 --sni github.com\n  \
egressd explain policy.yaml '[2001:db8::7]:22' --json\n\n\
The port is the one in TARGET, else --port, else 443. Exit status: 0 whatever the decision,\n\
2 for a bad target or an invalid policy.")]
pub struct Args {
    /// The policy YAML file.
    pub policy: PathBuf,
    /// A host name, an IP address, host:port, or [IPv6]:port.
    pub target: String,
    /// The TLS SNI (or HTTP Host) the connection carries; goes with an IP target.
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// Destination port (when TARGET has none).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Print exactly one JSON object: {"decision","reason","rule"} (plus
    /// "enforce_would" in audit mode).
    #[arg(long)]
    pub json: bool,
    /// Evaluate for a job of this repository (owner/name): picks the override.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repository: Option<String>,
    /// Evaluate for a runner with this label (repeatable): picks the override.
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
}

/// What TARGET names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Ip(IpAddr, Option<u16>),
    Host(String, Option<u16>),
}

fn parse_target(raw: &str) -> Result<Target, UsageError> {
    let bad = |why: &str| {
        UsageError(format!(
            "cannot read the target {raw:?}: {why}; give a host name, an IP, host:port or [IPv6]:port"
        ))
    };
    if raw.is_empty() {
        return Err(bad("it is empty"));
    }
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Ok(Target::Ip(ip, None));
    }
    if let Ok(sa) = raw.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err(bad("port 0 is not a destination port"));
        }
        return Ok(Target::Ip(sa.ip(), Some(sa.port())));
    }
    if let Some(inner) = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<IpAddr>()
            .map(|ip| Target::Ip(ip, None))
            .map_err(|_| bad("the part in brackets is not an IPv6 address"));
    }
    if raw.starts_with('[') {
        return Err(bad(
            "an [IPv6]:port needs a valid address and a port from 1 to 65535",
        ));
    }
    let (host, port) = match raw.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
            (h, Some(port))
        }
        Some(_) => return Err(bad("it has colons but is not an IPv6 address")),
        None => (raw, None),
    };
    if host.contains("://") || host.contains('/') {
        return Err(bad("it looks like a URL; give only the host name"));
    }
    if !host.is_ascii() {
        return Err(bad(
            "host names must be ASCII; use the punycode (xn--) form",
        ));
    }
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad("the host name is empty or has spaces"));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Target::Ip(ip, port));
    }
    Ok(Target::Host(host.to_owned(), port))
}

/// The explanation, before rendering.
struct Explanation {
    decision: Decision,
    subject: String,
    /// The DNS decision, for a host name target.
    dns: Option<Decision>,
    notes: Vec<String>,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = parse_target(&args.target)?;
    let loaded = super::check::load(&args.policy)?;
    let policy = &loaded.policy;
    let job = JobContext {
        repository: args.repository.as_deref(),
        labels: &args.labels,
    };
    let rules = policy.ruleset(&job);

    let port = |in_target: Option<u16>| -> Result<(u16, bool), UsageError> {
        match (in_target, args.port) {
            (Some(a), Some(b)) if a != b => Err(UsageError(format!(
                "the target says port {a} but --port says {b}; give the port once"
            ))),
            (Some(p), _) | (None, Some(p)) => Ok((p, false)),
            (None, None) => Ok((DEFAULT_PORT, true)),
        }
    };

    let mut notes = Vec::new();
    let explanation = match target {
        Target::Ip(ip, p) => {
            let (port, defaulted) = port(p)?;
            if defaulted {
                notes.push(format!(
                    "no port given: evaluated for port {DEFAULT_PORT} (use --port)"
                ));
            }
            let dst = SocketAddr::new(ip, port);
            let decision = match &args.sni {
                Some(sni) => {
                    notes.push(format!(
                        "assumed that {sni} resolves to {ip}; at run time the proxy checks it, and a mismatch is denied with sni_ip_mismatch"
                    ));
                    rules.decide_connect(dst, Some(sni), &AssumeBound)
                }
                None => {
                    notes.push(
                        "no name (SNI/Host) given: only IP/CIDR rules apply; at run time the connection is also allowed if the proxy's DNS recently answered this address for an allowed name".to_owned(),
                    );
                    rules.decide_connect(dst, None, &NoResolutions)
                }
            };
            let subject = match &args.sni {
                Some(sni) => format!("{dst} with SNI {sni}"),
                None => dst.to_string(),
            };
            Explanation {
                decision,
                subject,
                dns: None,
                notes,
            }
        }
        Target::Host(host, p) => {
            if args.sni.is_some() {
                return Err(UsageError(
                    "--sni goes with an IP target (for a host name, the name is the SNI); drop --sni or give the IP"
                        .to_owned(),
                )
                .into());
            }
            let (port, defaulted) = port(p)?;
            if defaulted {
                notes.push(format!(
                    "no port given: evaluated for port {DEFAULT_PORT} (use --port)"
                ));
            }
            let decision = rules.decide_name(&host, port);
            let dns = rules.decide_dns(&host);
            notes.push(format!(
                "no address given: evaluated on the name; the name-to-IP binding is checked at run time (a connection is allowed only to an address {host} really resolves to, and never to a built-in class such as private or metadata addresses unless an IP/CIDR rule allows it)"
            ));
            Explanation {
                decision,
                subject: format!("{host}:{port}"),
                dns: Some(dns),
                notes,
            }
        }
    };

    if args.json {
        print_json(&explanation.decision)?;
    } else {
        print_human(policy, &job, &explanation);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(d: &Decision) -> anyhow::Result<()> {
    let mut obj = serde_json::Map::new();
    obj.insert("decision".into(), d.verdict.as_str().into());
    obj.insert("reason".into(), d.reason.as_str().into());
    obj.insert("rule".into(), d.rule.to_string().into());
    if let Some(would) = d.enforce_would {
        obj.insert("enforce_would".into(), would.as_str().into());
    }
    println!(
        "{}",
        serde_json::to_string(&serde_json::Value::Object(obj))?
    );
    Ok(())
}

/// `allow`, `deny`, or in audit mode `allow (audit; enforce would deny)`.
fn verdict_text(d: &Decision) -> String {
    match d.enforce_would {
        Some(would) => format!("{} (audit; enforce would {would})", d.verdict),
        None => d.verdict.to_string(),
    }
}

fn print_human(policy: &Policy, job: &JobContext<'_>, e: &Explanation) {
    let d = &e.decision;
    println!("target:   {}", e.subject);
    println!("decision: {}", verdict_text(d));
    println!("reason:   {}", d.reason);
    match policy.rule(d.rule) {
        Some(info) => match info.line {
            Some(line) => println!("rule:     {} ({}, line {line})", d.rule, info.text),
            None => println!("rule:     {} ({})", d.rule, info.text),
        },
        None => println!("rule:     {}", d.rule),
    }
    let rules = policy.ruleset(job);
    if rules.mode() == Mode::Audit
        && let Some(would) = d.enforce_would
    {
        println!(
            "mode:     audit: the traffic is let through; enforce mode would {}",
            match would {
                Verdict::Allow => "allow it",
                Verdict::Deny => "deny it",
            }
        );
    }
    match policy.matching_override(job) {
        Some(i) => println!("rules:    base + overrides[{i}]"),
        None if policy.override_count() > 0 => {
            println!("rules:    base (no override matched; see --repository, --label)");
        }
        None => {}
    }
    if let Some(dns) = &e.dns {
        println!(
            "dns:      {} ({}, {})",
            verdict_text(dns),
            dns.reason,
            dns.rule
        );
    }
    for note in &e.notes {
        println!("note:     {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_every_shape() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_target("github.com").unwrap(),
            Target::Host("github.com".into(), None)
        );
        assert_eq!(
            parse_target("github.com:22").unwrap(),
            Target::Host("github.com".into(), Some(22))
        );
        assert_eq!(
            parse_target("198.51.100.7").unwrap(),
            Target::Ip(ip("198.51.100.7"), None)
        );
        assert_eq!(
            parse_target("198.51.100.7:8443").unwrap(),
            Target::Ip(ip("198.51.100.7"), Some(8443))
        );
        assert_eq!(
            parse_target("2001:db8::1").unwrap(),
            Target::Ip(ip("2001:db8::1"), None)
        );
        assert_eq!(
            parse_target("[2001:db8::1]:22").unwrap(),
            Target::Ip(ip("2001:db8::1"), Some(22))
        );
        assert_eq!(
            parse_target("[2001:db8::1]").unwrap(),
            Target::Ip(ip("2001:db8::1"), None)
        );
        for bad in [
            "",
            "host:0",
            "host:99999",
            "host:x",
            "[nope]:1",
            "https://github.com",
            "bücher.example",
            "a b",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
