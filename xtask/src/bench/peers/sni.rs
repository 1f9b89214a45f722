//! SNI-passthrough peers: HAProxy (`req.ssl_sni`, splice on) and nginx
//! (`stream` + `ssl_preread`), both with the allowlist and 2 workers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Allowlist, write};
use crate::bench::process::{self, Guard};

pub fn haproxy(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    list: &Allowlist,
    log: &Path,
) -> anyhow::Result<Guard> {
    let exact = write(dir, "exact.lst", &(list.exact.join("\n") + "\n"))?;
    let suffix: Vec<String> = list.suffixes.iter().map(|s| format!(".{s}")).collect();
    let suffix = write(dir, "suffix.lst", &(suffix.join("\n") + "\n"))?;
    let cfg = format!(
        "global
    nbthread 2
    maxconn 7500
    log stdout format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    option splice-auto
    maxconn 7500
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend sni
    bind {listen}
    tcp-request inspect-delay 5s
    tcp-request content reject if {{ req.ssl_hello_type 1 }} !{{ req.ssl_sni -i -f {exact} }} !{{ req.ssl_sni -i -m end -f {suffix} }}
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    tcp-request content reject
    default_backend allowed
backend allowed
    server up {upstream}
",
        exact = exact.display(),
        suffix = suffix.display()
    );
    let conf = write(dir, "haproxy.cfg", &cfg)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&conf);
    let mut g = Guard::spawn("haproxy", cmd, log)?;
    process::wait_tcp(listen, Duration::from_secs(10), &mut g, log)?;
    Ok(g)
}

pub fn nginx(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    list: &Allowlist,
    log: &Path,
) -> anyhow::Result<Guard> {
    let mut map = String::new();
    for n in &list.exact {
        map.push_str(&format!("        {n} {upstream};\n"));
    }
    for s in &list.suffixes {
        map.push_str(&format!("        *.{s} {upstream};\n"));
    }
    let d = dir.display();
    let cfg = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
master_process on;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{ worker_connections 9500; }}
stream {{
    log_format decision '$time_iso8601 $remote_addr $ssl_preread_server_name $upstream_addr $status $bytes_received $bytes_sent $session_time';
    access_log {d}/access.log decision buffer=64k flush=1s;
    map_hash_bucket_size 128;
    map_hash_max_size 65536;
    map $ssl_preread_server_name $dest {{
        hostnames;
{map}        default unix:{d}/denied.sock;
    }}
    server {{
        listen {listen};
        ssl_preread on;
        preread_timeout 5s;
        proxy_connect_timeout 5s;
        proxy_pass $dest;
    }}
}}
"
    );
    let conf = write(dir, "nginx.conf", &cfg)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf);
    let mut g = Guard::spawn("nginx", cmd, log)?;
    process::wait_tcp(listen, Duration::from_secs(10), &mut g, log)?;
    Ok(g)
}
