//! The one job every proxy is configured for: which names (and addresses) are
//! allowed, which name each generated connection or query uses, and the
//! allowlist rendered in each peer's own configuration language.

/// The allowlist: exact names, wildcard suffixes (`*.SUFFIX`), CIDRs.
#[derive(Clone, Debug)]
pub struct Allowlist {
    /// Exact hostnames.
    pub exact: Vec<String>,
    /// Wildcard rules, stored without the leading `*.`.
    pub suffixes: Vec<String>,
    /// IPv4 and IPv6 CIDRs (filler for the 10,000-rule variant; no traffic goes there).
    pub cidrs: Vec<String>,
}

impl Allowlist {
    /// Ten rules: `ok0..ok8.bench.test` and `*.ok.bench.test`.
    pub fn base() -> Self {
        Self {
            exact: (0..9).map(|i| format!("ok{i}.bench.test")).collect(),
            suffixes: vec!["ok.bench.test".to_owned()],
            cidrs: Vec::new(),
        }
    }

    /// The base rules plus filler up to `total` rules: names, wildcards, IPv4
    /// CIDRs (198.18.0.0/15, the benchmarking range) and IPv6 CIDRs (2001:db8::/32).
    pub fn large(total: usize) -> Self {
        let mut list = Self::base();
        let mut i = 0usize;
        while list.len() < total {
            match i % 4 {
                0 => list.exact.push(format!("f{i}.rules.test")),
                1 => list.suffixes.push(format!("w{i}.rules.test")),
                2 => list.cidrs.push(format!(
                    "198.{}.{}.{}/32",
                    18 + (i >> 16) % 2,
                    (i >> 8) & 0xff,
                    i & 0xff
                )),
                _ => list.cidrs.push(format!("2001:db8:{:x}::/48", i & 0xffff)),
            }
            i += 1;
        }
        list
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.exact.len() + self.suffixes.len() + self.cidrs.len()
    }

    /// egressd's policy YAML.
    pub fn egressd_yaml(&self) -> String {
        let mut y = String::from("version: 1\nmode: enforce\nallow:\n");
        for n in &self.exact {
            y.push_str(&format!("  - host: {n}\n"));
        }
        for s in &self.suffixes {
            y.push_str(&format!("  - \"*.{s}\"\n"));
        }
        for c in &self.cidrs {
            y.push_str(&format!("  - cidr: {c}\n"));
        }
        y
    }
}

/// Every name [`tunnel_name`] can yield.
pub fn tunnel_names() -> Vec<String> {
    (0..9)
        .map(|i| format!("ok{i}.bench.test"))
        .chain((0..7).map(|i| format!("no{i}.bench.test")))
        .collect()
}

/// The hostname of tunnel `i` (W1/W2/W3/W6) and whether it is allowed: 90% are.
pub fn tunnel_name(i: u64) -> (String, bool) {
    if i % 10 == 9 {
        (format!("no{}.bench.test", i % 7), false)
    } else {
        (format!("ok{}.bench.test", i % 9), true)
    }
}

/// The name of DNS query `i` (W4) and whether it is allowed: 70% are. Every
/// name is new, so no resolver answers from a cache: each allowed query is
/// really forwarded, as egressd forwards.
pub fn dns_name(i: u64, salt: u64) -> (String, bool) {
    if i % 10 < 7 {
        (format!("q{i}-{salt}.ok.bench.test"), true)
    } else {
        (format!("q{i}-{salt}.no.bench.test"), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_list_has_exactly_the_asked_rules_and_keeps_the_base() {
        let l = Allowlist::large(10_000);
        assert_eq!(l.len(), 10_000);
        assert!(l.exact.contains(&"ok0.bench.test".to_owned()));
        assert!(l.suffixes.contains(&"ok.bench.test".to_owned()));
        let yaml = l.egressd_yaml();
        assert_eq!(yaml.matches("\n  - ").count(), 10_000);
    }

    #[test]
    fn mixes_are_ninety_and_seventy_percent_allowed() {
        let tunnels = (0..1000).filter(|&i| tunnel_name(i).1).count();
        assert_eq!(tunnels, 900);
        let dns = (0..1000).filter(|&i| dns_name(i, 1).1).count();
        assert_eq!(dns, 700);
        for i in 0..1000 {
            assert!(tunnel_names().contains(&tunnel_name(i).0));
        }
    }
}
