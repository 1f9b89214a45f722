//! Test network namespaces joined to the host by a veth, and the sweep of
//! those left by killed runs.

use std::path::Path;

use crate::cmd::{must, sh};

/// A test network namespace `PREFIX-PID` joined to the host by a veth
/// (`PREFIXPID` on the host side, `PEERPID` inside), both removed on
/// drop. Leftovers of killed runs with the same prefix are removed first.
pub struct Veth {
    ns: String,
    link: String,
}

impl Veth {
    /// Create it with `host` addresses on the host side and `inside`
    /// addresses in the namespace (`ADDR/LEN`, IPv6 without DAD), then
    /// check that every one of `routed` goes through the link, before
    /// anything is sent: no test packet may take the default route.
    pub fn up(
        prefix: &str,
        peer_prefix: &str,
        host: &[&str],
        inside: &[&str],
        routed: &[&str],
    ) -> Veth {
        sweep_leftovers(&[prefix]);
        let pid = std::process::id();
        let ns = format!("{prefix}-{pid}");
        let link = format!("{prefix}{pid}");
        let peer = format!("{peer_prefix}{pid}");
        let _ = sh(&["ip", "netns", "del", &ns]);
        let _ = sh(&["ip", "link", "del", &link]);
        must(&["ip", "netns", "add", &ns]);
        let veth = Veth { ns, link };
        must(&[
            "ip", "link", "add", &veth.link, "type", "veth", "peer", "name", &peer,
        ]);
        must(&["ip", "link", "set", &peer, "netns", &veth.ns]);
        let add = |netns: Option<&str>, addr: &str, dev: &str| {
            let mut args = vec!["ip"];
            if let Some(n) = netns {
                args.extend(["-n", n]);
            }
            args.extend(["addr", "add", addr, "dev", dev]);
            if addr.contains(':') {
                args.push("nodad");
            }
            must(&args);
        };
        for a in host {
            add(None, a, &veth.link);
        }
        for a in inside {
            add(Some(&veth.ns), a, &peer);
        }
        must(&["ip", "link", "set", &veth.link, "up"]);
        must(&["ip", "-n", &veth.ns, "link", "set", &peer, "up"]);
        must(&["ip", "-n", &veth.ns, "link", "set", "lo", "up"]);
        for a in routed {
            let route =
                String::from_utf8_lossy(&sh(&["ip", "route", "get", a]).stdout).into_owned();
            assert!(
                route.contains(&format!("dev {} ", veth.link)),
                "{a} is not routed via {}: {route}",
                veth.link
            );
        }
        veth
    }

    /// The namespace.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The host side of the veth.
    pub fn link(&self) -> &str {
        &self.link
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.link]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

/// Remove network namespaces (`PREFIX-PID`) and links (`PREFIXPID`) of
/// killed test runs, for each of `prefixes`: only those whose pid is dead.
pub fn sweep_leftovers(prefixes: &[&str]) {
    let dead = |pid: &str| !Path::new("/proc").join(pid).exists();
    let out = sh(&["ip", "netns", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let pid = prefixes
            .iter()
            .find_map(|p| name.strip_prefix(p).and_then(|rest| rest.strip_prefix('-')));
        if pid.is_some_and(dead) {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
    let out = sh(&["ip", "-o", "link", "show"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let pid = prefixes.iter().find_map(|p| name.strip_prefix(p));
        if pid.is_some_and(dead) {
            let _ = sh(&["ip", "link", "del", name]);
        }
    }
}
