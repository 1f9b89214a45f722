//! The two netlink conversations the packet guard needs: the packet sockets that
//! exist (sock_diag, `AF_PACKET`: cookie and inode of each) and a wake-up whenever
//! a network interface appears, disappears or changes (rtnetlink `RTMGRP_LINK`).
//! Both speak about the network namespace of the calling thread.

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
const NLMSG_HDRLEN: usize = 16;

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
    let fd = netlink_socket(NETLINK_SOCK_DIAG, 0, false)?;
    // nlmsghdr (16) + packet_diag_req (20): family, protocol, pad, ino, show, cookie[2].
    let mut req = [0u8; 36];
    req[0..4].copy_from_slice(&36u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_PACKET as u8;
    // SAFETY: `req` is a valid buffer of the length passed.
    let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
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
        if n == 0 {
            return Ok(found);
        }
        if parse_packet_diag(&buf[..n], &mut found)? {
            return Ok(found);
        }
    }
}

/// Parses one datagram of a sock_diag dump into `out`; true once the dump is done.
fn parse_packet_diag(mut data: &[u8], out: &mut Vec<PacketSocket>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    while data.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().map_err(|_| bad())?) as usize;
        let kind = u16::from_ne_bytes(data[4..6].try_into().map_err(|_| bad())?);
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(bad());
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
            SOCK_DIAG_BY_FAMILY => {
                // packet_diag_msg: family, type, num (u16), ino (u32), cookie[2] (u32).
                if body.len() < 16 {
                    return Err(bad());
                }
                let inode = u32::from_ne_bytes(body[4..8].try_into().map_err(|_| bad())?);
                let lo = u32::from_ne_bytes(body[8..12].try_into().map_err(|_| bad())?);
                let hi = u32::from_ne_bytes(body[12..16].try_into().map_err(|_| bad())?);
                out.push(PacketSocket {
                    cookie: u64::from(lo) | (u64::from(hi) << 32),
                    inode,
                });
            }
            _ => {}
        }
        let step = len.next_multiple_of(4).min(data.len());
        data = &data[step..];
    }
    Ok(false)
}

/// Wakes up whenever a network interface of this namespace appears, goes or changes.
pub struct LinkChanges {
    fd: AsyncFd<OwnedFd>,
}

impl std::fmt::Debug for LinkChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkChanges").finish_non_exhaustive()
    }
}

impl LinkChanges {
    /// Subscribes to link notifications. Needs a tokio runtime.
    pub(crate) fn subscribe() -> io::Result<LinkChanges> {
        let fd = netlink_socket(NETLINK_ROUTE, RTMGRP_LINK, true)?;
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

    #[test]
    fn dumps_this_namespace() {
        // Works unprivileged; an empty list is a valid answer.
        match packet_sockets() {
            Ok(_) => {}
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
        }
    }
}
