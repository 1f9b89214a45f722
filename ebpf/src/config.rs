//! What the enforcer is told: which cgroup, where the proxy listens, what is exempt.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// How to attach the kernel programs.
#[derive(Debug, Clone, Default)]
pub struct EnforcerConfig {
    /// cgroup v2 directory to attach to; its processes and descendants are filtered.
    pub cgroup: PathBuf,
    /// Transparent TCP listener port (on 127.0.0.1 and ::1, and on container gateway addresses).
    pub proxy_port: u16,
    /// DNS proxy port (UDP and TCP) on the same addresses.
    pub dns_port: u16,
    /// `SO_MARK` the proxy sets on its own upstream sockets (random per start; 0 = none).
    pub bypass_mark: u32,
    /// The proxy's own cgroup id, exempt from every hook (None = no cgroup exemption).
    pub proxy_cgroup_id: Option<u64>,
    /// Host-side addresses that sockets in other network namespaces (containers) are
    /// redirected to: the first IPv4 and the first IPv6 address are used. Without one
    /// of a family, redirected traffic of that family from a container is denied.
    pub container_gateways: Vec<IpAddr>,
    /// Destinations left alone besides loopback and this host's container bridges
    /// (which the enforcer finds and follows itself); DNS to them is still redirected.
    pub passthrough: Vec<IpNet>,
    /// Some => pin links under this bpffs directory so a crashed proxy fails closed.
    pub pin_dir: Option<PathBuf>,
}
