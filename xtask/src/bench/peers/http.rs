//! CONNECT peers: Squid (`dstdomain`, 2 SMP workers) and tinyproxy (fnmatch
//! filter, default deny; thread per connection, it has no worker knob;
//! `LogLevel Connect`, the quietest level that still logs every decision:
//! tinyproxy fsyncs its log after every line).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Allowlist, hosts_file, write};
use crate::bench::process::{self, Guard};

pub fn squid(
    dir: &Path,
    listen: SocketAddr,
    list: &Allowlist,
    log: &Path,
) -> anyhow::Result<Guard> {
    let mut names: Vec<String> = list.exact.clone();
    names.extend(list.suffixes.iter().map(|s| format!(".{s}")));
    let names = write(dir, "names.txt", &(names.join("\n") + "\n"))?;
    let hosts = hosts_file(dir)?;
    let d = dir.display();
    // `dst` (CIDR) rules are left out: Squid resolves every request's name
    // to evaluate them, which would add DNS to the denied path.
    let cfg = format!(
        "http_port {listen}
workers 2
pid_filename {d}/squid.pid
cache_log {d}/cache.log
access_log stdio:{d}/access.log
cache_store_log none
logfile_rotate 0
cache deny all
cache_mem 8 MB
hosts_file {hosts}
dns_nameservers 127.0.0.1
acl CONNECT method CONNECT
acl allowed dstdomain \"{names}\"
http_access allow CONNECT allowed
http_access deny all
max_filedescriptors 20000
shutdown_lifetime 1 seconds
coredump_dir {d}
visible_hostname bench
cache_effective_user proxy
",
        hosts = hosts.display(),
        names = names.display()
    );
    let conf = write(dir, "squid.conf", &cfg)?;
    let mut cmd = Command::new("squid");
    // A service name of its own: two Squids may run at once (W5 runs its 10
    // and 10,000 rule sets side by side), and the name keys Squid's shared
    // memory segments and IPC sockets.
    cmd.arg("--foreground")
        .arg("-n")
        .arg(format!("bench{}", listen.port()))
        .arg("-f")
        .arg(&conf);
    let mut g = Guard::spawn("squid", cmd, log)?;
    process::wait_tcp(listen, Duration::from_secs(20), &mut g, log)?;
    Ok(g)
}

pub fn tinyproxy(
    dir: &Path,
    listen: SocketAddr,
    list: &Allowlist,
    log: &Path,
) -> anyhow::Result<Guard> {
    let mut filter: Vec<String> = list.exact.clone();
    filter.extend(list.suffixes.iter().map(|s| format!("*.{s}")));
    let filter = write(dir, "filter.txt", &(filter.join("\n") + "\n"))?;
    let hosts = hosts_file(dir)?;
    let d = dir.display();
    let cfg = format!(
        "User proxy
Group proxy
Port {port}
Listen 127.0.0.1
Timeout 60
LogFile \"{d}/tinyproxy.log\"
LogLevel Connect
PidFile \"{d}/tinyproxy.pid\"
MaxClients 30000
Filter \"{filter}\"
FilterType fnmatch
FilterDefaultDeny Yes
",
        port = listen.port(),
        filter = filter.display()
    );
    let conf = write(dir, "tinyproxy.conf", &cfg)?;
    // tinyproxy resolves with getaddrinfo: give it a private /etc/hosts in its
    // own mount namespace (nothing outside that process sees it).
    // Its resolv.conf points at loopback so no lookup ever leaves the machine.
    let resolv = write(dir, "resolv.conf", "nameserver 127.0.0.1\n")?;
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && exec tinyproxy -d -c {}",
        hosts.display(),
        resolv.display(),
        conf.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let mut g = Guard::spawn("tinyproxy", cmd, log)?;
    process::wait_tcp(listen, Duration::from_secs(10), &mut g, log)?;
    Ok(g)
}
