//! Where an intercepted connection was really going: the `OriginalDst`
//! abstraction of architecture.md. A [`DstSource`] answers, for a socket the
//! transparent listener accepted, the destination the client asked for and,
//! when the source knows it, the process behind it. Implementations: the kernel's
//! `SO_ORIGINAL_DST` (nftables/iptables REDIRECT fallback, [`KernelOriginalDst`])
//! here, the eBPF map lookup in the enforcer. The explicit CONNECT proxy gets the
//! same facts from its request line (`crate::connect`), and both feed the one
//! decision path in `crate::flow`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use egressd_audit::Process;
use tokio::net::TcpStream;

/// The original destination of an accepted connection and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The `ip:port` the client connected to before it was redirected.
    pub dst: SocketAddr,
    /// The process, when the source can tell (the eBPF map can; the kernel's
    /// `SO_ORIGINAL_DST` cannot).
    pub process: Option<Process>,
}

/// Answers "where was this accepted socket really going?".
pub trait DstSource: Send + Sync + 'static {
    /// The origin of `accepted` (peer address `peer`, accepted on `local`), or
    /// `None` when it is unknown (the connection is then denied with
    /// `original_dst_unknown`).
    fn lookup(&self, accepted: &TcpStream, peer: SocketAddr, local: SocketAddr) -> Option<Origin>;

    /// A short name for logs (`so_original_dst`, `ebpf`).
    fn name(&self) -> &'static str;
}

/// The kernel's record of a NAT redirect: `getsockopt(SOL_IP, SO_ORIGINAL_DST)`
/// (and `SOL_IPV6, IP6T_SO_ORIGINAL_DST`), as set by an nftables or iptables
/// `redirect` rule. Needs no privilege to read.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelOriginalDst;

/// `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST` (linux/netfilter_ipv4.h, ipv6).
const SO_ORIGINAL_DST: libc::c_int = 80;

impl DstSource for KernelOriginalDst {
    fn lookup(&self, accepted: &TcpStream, _peer: SocketAddr, local: SocketAddr) -> Option<Origin> {
        let dst = kernel_original_dst(accepted, local.is_ipv6())?;
        // Without a NAT entry the kernel answers with the local address itself:
        // that is no redirect at all, and connecting there would loop.
        if dst == local {
            return None;
        }
        Some(Origin { dst, process: None })
    }

    fn name(&self) -> &'static str {
        "so_original_dst"
    }
}

/// Read the NAT original destination of `stream`. `None` when the kernel has
/// none (ENOENT: not redirected) or the call fails.
fn kernel_original_dst(stream: &TcpStream, v6: bool) -> Option<SocketAddr> {
    let fd = stream.as_raw_fd();
    if v6 {
        // SAFETY: an all-zero sockaddr_in6 is a valid value of the type.
        let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: fd is a live socket owned by `stream`; addr/len describe a
        // writable buffer of the size passed.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IPV6,
                SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 || addr.sin6_family != libc::AF_INET6 as libc::sa_family_t {
            return None;
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        let port = u16::from_be(addr.sin6_port);
        let dst = SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0));
        // A v4-mapped original destination is the IPv4 address (policy.md).
        Some(match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
            None => dst,
        })
    } else {
        // SAFETY: an all-zero sockaddr_in is a valid value of the type.
        let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: as above, for a sockaddr_in buffer.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_IP,
                SO_ORIGINAL_DST,
                (&raw mut addr).cast(),
                &mut len,
            )
        };
        if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_socket_that_was_not_redirected_has_no_origin() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let client = TcpStream::connect(local).await.unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        assert_eq!(KernelOriginalDst.lookup(&accepted, peer, local), None);
        drop(client);
    }
}
