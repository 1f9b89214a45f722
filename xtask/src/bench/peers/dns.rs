//! DNS peers: dnsmasq (single-threaded by design), unbound (2 threads) and
//! dnsdist (2 listener threads), each forwarding allowed zones to the bench
//! upstream, refusing the rest, logging every query, caching nothing that the
//! workload could hit (every query name is new).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

use super::{Allowlist, Target, write};
use crate::bench::process::Guard;

/// Socket buffer size (bytes) the resolvers that have the knob get for
/// their UDP sockets: what egressd asks for its own (dnsdist's listeners via
/// `setUDPSocketBufferSizes`, unbound's `so-rcvbuf`/`so-sndbuf`; dnsmasq
/// has none). Without it their default 208 KiB dropped bursts that
/// egressd's 4 MiB absorbed.
const BUF: usize = 4 << 20;

pub fn start(
    target: Target,
    dir: &Path,
    listen: SocketAddr,
    up: SocketAddr,
    list: &Allowlist,
    log: &Path,
) -> anyhow::Result<Guard> {
    let d = dir.display();
    let zones: Vec<&String> = list.exact.iter().chain(list.suffixes.iter()).collect();
    let (name, cmd) = match target {
        Target::Dnsmasq => {
            let mut cfg = format!(
                "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\ncache-size=0\nuser=root\n\
                 pid-file={d}/dnsmasq.pid\nlog-queries\nlog-facility={d}/dnsmasq.log\nlog-async=100\ndns-forward-max=5000\n",
                port = listen.port()
            );
            for z in &zones {
                cfg.push_str(&format!("server=/{z}/{}#{}\n", up.ip(), up.port()));
            }
            let conf = write(dir, "dnsmasq.conf", &cfg)?;
            let mut cmd = Command::new("dnsmasq");
            cmd.arg("--keep-in-foreground")
                .arg(format!("--conf-file={}", conf.display()));
            ("dnsmasq", cmd)
        }
        Target::Unbound => {
            let mut cfg = format!(
                "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  num-threads: 2\n  so-reuseport: yes\n\
                 access-control: 127.0.0.0/8 allow\n  do-ip6: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n\
                 pidfile: \"{d}/unbound.pid\"\n  logfile: \"{d}/unbound.log\"\n  use-syslog: no\n  log-queries: yes\n  verbosity: 0\n\
                 module-config: \"iterator\"\n  do-not-query-localhost: no\n  num-queries-per-thread: 4096\n  outgoing-range: 8192\n\
                 msg-cache-size: 4m\n  rrset-cache-size: 4m\n  local-zone: \".\" refuse\n  so-rcvbuf: {BUF}\n  so-sndbuf: {BUF}\n",
                port = listen.port()
            );
            for z in &zones {
                cfg.push_str(&format!("  local-zone: \"{z}.\" transparent\n"));
            }
            for z in &zones {
                cfg.push_str(&format!(
                    "forward-zone:\n  name: \"{z}.\"\n  forward-addr: {}@{}\n",
                    up.ip(),
                    up.port()
                ));
            }
            let conf = write(dir, "unbound.conf", &cfg)?;
            let mut cmd = Command::new("unbound");
            cmd.arg("-d").arg("-c").arg(&conf);
            ("unbound", cmd)
        }
        Target::Dnsdist => {
            let mut cfg = format!(
                "setSecurityPollSuffix(\"\")\nsetUDPSocketBufferSizes({BUF}, {BUF})\nsetLocal(\"{listen}\", {{reusePort=true}})\naddLocal(\"{listen}\", {{reusePort=true}})\n\
                 newServer({{address=\"{up}\", checkName=\"bench.test.\", checkInterval=60}})\nallowed = newSuffixMatchNode()\n"
            );
            for z in &zones {
                cfg.push_str(&format!("allowed:add(newDNSName(\"{z}.\"))\n"));
            }
            cfg.push_str(&format!(
                "addAction(AllRule(), LogAction(\"{d}/dnsdist.log\", false, true, false))\n\
                 addAction(NotRule(SuffixMatchNodeRule(allowed, true)), RCodeAction(DNSRCode.REFUSED))\n"
            ));
            let conf = write(dir, "dnsdist.conf", &cfg)?;
            let mut cmd = Command::new("dnsdist");
            cmd.arg("--supervised")
                .arg("--disable-syslog")
                .arg("-C")
                .arg(&conf);
            ("dnsdist", cmd)
        }
        _ => bail!("{} is not a DNS peer", target.name()),
    };
    let mut g = Guard::spawn(name, cmd, log)?;
    wait_dns(listen, Duration::from_secs(10), &mut g, log)?;
    Ok(g)
}

/// Waits until `server` answers a query for an allowed name.
pub fn wait_dns(
    server: SocketAddr,
    timeout: Duration,
    g: &mut Guard,
    log: &Path,
) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii("probe.ok.bench.test.")?,
        RecordType::A,
    ));
    let bytes = q.to_vec()?;
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    loop {
        g.check_alive(log)?;
        let _ = sock.send_to(&bytes, server);
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && Message::from_vec(&buf[..n]).is_ok()
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "no DNS answer from {server} {timeout:?} after start (log: {})",
                log.display()
            );
        }
    }
}
