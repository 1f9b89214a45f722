//! The netlink conversations of the enforcer: the packet sockets that exist
//! (sock_diag, `AF_PACKET`: cookie and inode of each), the interfaces and routes
//! (rtnetlink dumps: what makes a container bridge and its networks) and a wake-up
//! whenever an interface or a route appears, disappears or changes (rtnetlink
//! `RTMGRP_LINK` and the route groups). All speak about the network namespace of
//! the calling thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

const NETLINK_ROUTE: libc::c_int = 0;
const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTMGRP_LINK: u32 = 1;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const NLMSG_HDRLEN: usize = 16;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTA_TABLE: u16 = 15;
const RTA_VIA: u16 = 18;
/// Attribute types carry two flag bits (nested, network byte order) above these.
const NLA_TYPE_MASK: u16 = 0x3fff;
const RTM_F_CLONED: u32 = 0x200;

/// One packet socket as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PacketSocket {
    /// The socket cookie (what `bpf_get_socket_cookie` returns for it).
    pub cookie: u64,
    /// The socket's inode (`socket:[N]` in `/proc/PID/fd`).
    pub inode: u32,
}

fn netlink_socket(protocol: libc::c_int, groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::SOCK_RAW | libc::SOCK_CLOEXEC;
    if nonblocking {
        flags |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, flags, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain old data; zeroed is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_groups = groups;
    // SAFETY: `addr` is a valid sockaddr_nl of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Every packet socket of this network namespace (sock_diag dump).
pub(crate) fn packet_sockets() -> io::Result<Vec<PacketSocket>> {
    // packet_diag_req: family, protocol, pad, ino, show, cookie[2].
    let mut req = [0u8; 20];
    req[0] = libc::AF_PACKET as u8;
    let mut found = Vec::new();
    dump(
        NETLINK_SOCK_DIAG,
        SOCK_DIAG_BY_FAMILY,
        &req,
        |kind, body| {
            if kind == SOCK_DIAG_BY_FAMILY {
                found.push(packet_diag(body)?);
            }
            Ok(())
        },
    )?;
    Ok(found)
}

/// One `packet_diag_msg`: family, type, num (u16), ino (u32), cookie[2] (u32).
fn packet_diag(body: &[u8]) -> io::Result<PacketSocket> {
    let (Some(inode), Some(lo), Some(hi)) = (u32_at(body, 4), u32_at(body, 8), u32_at(body, 12))
    else {
        return Err(malformed());
    };
    Ok(PacketSocket {
        cookie: u64::from(lo) | (u64::from(hi) << 32),
        inode,
    })
}

/// One network interface as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` ("bridge", "veth", "vxlan"...); None for a physical device.
    pub kind: Option<String>,
    /// The index of the bridge (or bond...) this interface is a port of.
    pub master: Option<u32>,
}

/// One route as rtnetlink reports it (clones of the IPv6 route cache left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub dst: std::net::IpAddr,
    pub prefix_len: u8,
    pub table: u32,
    /// `rtm_type`: `RTN_UNICAST`, `RTN_LOCAL`, `RTN_BLACKHOLE`...
    pub kind: u8,
    pub oif: Option<u32>,
    /// A next hop beyond the link: a gateway, a `via` or several next hops.
    pub via: bool,
}

/// Every interface of this network namespace (rtnetlink dump).
pub(crate) fn links() -> io::Result<Vec<Link>> {
    // ifinfomsg: family, pad, type (u16), index (i32), flags, change.
    let req = [0u8; 16];
    let mut found = Vec::new();
    dump(NETLINK_ROUTE, RTM_GETLINK, &req, |kind, body| {
        if kind == RTM_NEWLINK {
            found.push(link(body)?);
        }
        Ok(())
    })?;
    Ok(found)
}

fn link(body: &[u8]) -> io::Result<Link> {
    let index = u32_at(body, 4).ok_or_else(malformed)?;
    let mut link = Link {
        index,
        name: String::new(),
        kind: None,
        master: None,
    };
    for (kind, value) in attributes(body.get(16..).ok_or_else(malformed)?) {
        match kind {
            IFLA_IFNAME => link.name = c_string(value),
            IFLA_MASTER => link.master = u32_at(value, 0).filter(|&m| m != 0),
            IFLA_LINKINFO => {
                link.kind = attributes(value)
                    .find(|&(k, _)| k == IFLA_INFO_KIND)
                    .map(|(_, v)| c_string(v));
            }
            _ => {}
        }
    }
    Ok(link)
}

/// Every route of one address family (`AF_INET`, `AF_INET6`), every table.
pub(crate) fn routes(family: libc::c_int) -> io::Result<Vec<Route>> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut req = [0u8; 12];
    req[0] = u8::try_from(family).map_err(io::Error::other)?;
    let mut found = Vec::new();
    dump(NETLINK_ROUTE, RTM_GETROUTE, &req, |kind, body| {
        if kind == RTM_NEWROUTE
            && let Some(r) = route(body)?
        {
            found.push(r);
        }
        Ok(())
    })?;
    Ok(found)
}

fn route(body: &[u8]) -> io::Result<Option<Route>> {
    let header = body.get(..12).ok_or_else(malformed)?;
    let flags = u32_at(header, 8).ok_or_else(malformed)?;
    if flags & RTM_F_CLONED != 0 {
        return Ok(None);
    }
    let v4 = i32::from(header[0]) == libc::AF_INET;
    let mut r = Route {
        dst: if v4 {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        },
        prefix_len: header[1],
        table: u32::from(header[4]),
        kind: header[7],
        oif: None,
        via: false,
    };
    for (kind, value) in attributes(&body[12..]) {
        match kind {
            RTA_DST => {
                r.dst = match (v4, value.len()) {
                    (true, 4) => {
                        std::net::Ipv4Addr::new(value[0], value[1], value[2], value[3]).into()
                    }
                    (false, 16) => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(value);
                        std::net::Ipv6Addr::from(o).into()
                    }
                    _ => return Err(malformed()),
                }
            }
            RTA_OIF => r.oif = u32_at(value, 0),
            RTA_TABLE => r.table = u32_at(value, 0).ok_or_else(malformed)?,
            RTA_GATEWAY | RTA_VIA | RTA_MULTIPATH => r.via = true,
            _ => {}
        }
    }
    Ok(Some(r))
}

/// The attributes (type, value) in `data`, flag bits cleared; stops at the first
/// malformed one.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(data.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = data.get(4..len)?;
        data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply")
}

/// Sends one dump request (`body` after the netlink header) and hands each
/// message of the reply (type, body) to `each`.
fn dump(
    protocol: libc::c_int,
    kind: u16,
    body: &[u8],
    mut each: impl FnMut(u16, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let fd = netlink_socket(protocol, 0, false)?;
    let len = NLMSG_HDRLEN + body.len();
    let mut req = vec![0u8; len];
    req[0..4].copy_from_slice(&u32::try_from(len).map_err(io::Error::other)?.to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN..].copy_from_slice(body);
    // SAFETY: `req` is a valid buffer of the length passed.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // Large enough for any dump datagram (the kernel fills at most 32 KiB).
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is a valid, writable buffer of the length passed.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = usize::try_from(n).map_err(io::Error::other)?;
        if n == 0 || parse_dump(&buf[..n], &mut each)? {
            return Ok(());
        }
    }
}

/// Walks one datagram of a dump, handing each message to `each`; true once the
/// dump is done.
fn parse_dump(
    mut data: &[u8],
    each: &mut impl FnMut(u16, &[u8]) -> io::Result<()>,
) -> io::Result<bool> {
    while data.len() >= NLMSG_HDRLEN {
        let len = u32_at(data, 0).ok_or_else(malformed)? as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().map_err(|_| malformed())?);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(malformed());
        }
        let body = &data[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = body
                    .get(0..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, i32::from_ne_bytes);
                if code == 0 {
                    return Ok(true);
                }
                return Err(io::Error::from_raw_os_error(-code));
            }
            _ => each(kind, body)?,
        }
        let step = len.next_multiple_of(4).min(data.len());
        data = &data[step..];
    }
    Ok(false)
}

/// Wakes up whenever a network interface or a route of this namespace appears, goes
/// or changes.
pub struct LinkChanges {
    fd: AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for LinkChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkChanges").finish_non_exhaustive()
    }
}

impl LinkChanges {
    /// Subscribes to link and route notifications. Needs a tokio runtime.
    pub(crate) fn subscribe() -> io::Result<LinkChanges> {
        let groups = RTMGRP_LINK | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        let fd = netlink_socket(NETLINK_ROUTE, groups, true)?;
        Ok(LinkChanges {
            // SAFETY: the fd is owned by the `AsyncFd` and stays open until it is dropped.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(io::Error::from)?,
        })
    }

    /// Waits for the next batch of notifications (their content is not needed: the
    /// caller rescans). An overflowed socket (`ENOBUFS`) also counts as a change.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let drained = drain(guard.get_inner().as_fd());
            guard.clear_ready();
            match drained {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads every pending datagram; true if there was at least one (or an overflow).
fn drain(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut buf = [0u8; 8192];
    let mut any = false;
    loop {
        // SAFETY: `buf` is a valid, writable buffer of the length passed.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            any = true;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(any),
            Some(libc::EINTR) => {}
            Some(libc::ENOBUFS) => any = true,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + body.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(body);
        m
    }

    /// The packet sockets in one datagram of a sock_diag dump; true once done.
    fn parse_packet_diag(data: &[u8], out: &mut Vec<PacketSocket>) -> io::Result<bool> {
        parse_dump(data, &mut |kind, body| {
            if kind == SOCK_DIAG_BY_FAMILY {
                out.push(packet_diag(body)?);
            }
            Ok(())
        })
    }

    #[test]
    fn parses_packet_diag_messages_and_done() {
        let mut body = vec![17u8, 3, 0, 0];
        body.extend_from_slice(&4242u32.to_ne_bytes());
        body.extend_from_slice(&7u32.to_ne_bytes());
        body.extend_from_slice(&1u32.to_ne_bytes());
        let mut data = msg(SOCK_DIAG_BY_FAMILY, &body);
        let mut out = Vec::new();
        assert!(!parse_packet_diag(&data, &mut out).unwrap());
        assert_eq!(
            out,
            [PacketSocket {
                cookie: 7 | (1 << 32),
                inode: 4242
            }]
        );
        data.extend(msg(NLMSG_DONE, &[0; 4]));
        out.clear();
        assert!(parse_packet_diag(&data, &mut out).unwrap());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn netlink_errors_and_garbage_are_errors() {
        let mut out = Vec::new();
        let err = parse_packet_diag(&msg(NLMSG_ERROR, &(-2i32).to_ne_bytes()), &mut out);
        assert_eq!(err.unwrap_err().raw_os_error(), Some(2));
        let mut truncated = msg(SOCK_DIAG_BY_FAMILY, &[0; 16]);
        truncated[0] = 200;
        assert!(parse_packet_diag(&truncated, &mut out).is_err());
        assert!(parse_packet_diag(&msg(SOCK_DIAG_BY_FAMILY, &[0; 8]), &mut out).is_err());
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    #[test]
    fn parses_a_link_with_its_kind_and_master() {
        let mut body = vec![0u8; 16];
        body[4..8].copy_from_slice(&7u32.to_ne_bytes());
        body.extend(attr(IFLA_IFNAME, b"veth1\0"));
        body.extend(attr(IFLA_MASTER, &3u32.to_ne_bytes()));
        // Nested, with the kernel's NLA_F_NESTED flag bit set.
        body.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"veth\0"),
        ));
        assert_eq!(
            link(&body).unwrap(),
            Link {
                index: 7,
                name: "veth1".into(),
                kind: Some("veth".into()),
                master: Some(3),
            }
        );
        let mut bare = vec![0u8; 16];
        bare[4..8].copy_from_slice(&2u32.to_ne_bytes());
        bare.extend(attr(IFLA_IFNAME, b"eth0\0"));
        let eth0 = link(&bare).unwrap();
        assert_eq!((eth0.kind, eth0.master), (None, None));
    }

    #[test]
    fn parses_routes_of_both_families() {
        let mut v4 = vec![libc::AF_INET as u8, 16, 0, 0, 254, 2, 253, 1, 0, 0, 0, 0];
        v4.extend(attr(RTA_DST, &[172, 18, 0, 0]));
        v4.extend(attr(RTA_OIF, &9u32.to_ne_bytes()));
        let r = route(&v4).unwrap().unwrap();
        assert_eq!(
            (r.dst, r.prefix_len, r.table, r.kind, r.oif, r.via),
            ("172.18.0.0".parse().unwrap(), 16, 254, 1, Some(9), false)
        );
        let mut v6 = vec![libc::AF_INET6 as u8, 0, 0, 0, 252, 2, 0, 1, 0, 0, 0, 0];
        v6.extend(attr(RTA_TABLE, &1000u32.to_ne_bytes()));
        v6.extend(attr(
            RTA_GATEWAY,
            &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ));
        let r = route(&v6).unwrap().unwrap();
        assert_eq!(
            (r.dst, r.prefix_len, r.table, r.via),
            ("::".parse().unwrap(), 0, 1000, true)
        );
        let mut cloned = v6.clone();
        cloned[8..12].copy_from_slice(&RTM_F_CLONED.to_ne_bytes());
        assert_eq!(route(&cloned).unwrap(), None);
        let mut bad = vec![libc::AF_INET as u8, 32, 0, 0, 254, 2, 253, 1, 0, 0, 0, 0];
        bad.extend(attr(RTA_DST, &[1, 2, 3]));
        assert!(route(&bad).is_err());
    }

    #[test]
    fn dumps_links_and_routes_of_this_namespace() {
        let links = links().unwrap();
        assert!(links.iter().any(|l| l.name == "lo"), "{links:?}");
        assert!(!routes(libc::AF_INET).unwrap().is_empty());
    }

    #[test]
    fn dumps_this_namespace() {
        // Works unprivileged; an empty list is a valid answer.
        match packet_sockets() {
            Ok(_) => {}
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
        }
    }
}
