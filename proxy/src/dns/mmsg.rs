//! Batched UDP datagrams: `sendmmsg` and `recvmmsg`, so a forwarding loop
//! hands the kernel a whole batch (its queries for one upstream, its answers
//! to clients, the datagrams waiting on a socket) in one system call instead
//! of one call per datagram. The batch is sent or read before the loop can
//! be preempted by the threads its datagrams wake (the upstream, the
//! clients), instead of once per datagram.
//!
//! Only the system calls live here (with the DNS path's only `unsafe`);
//! what to do with a datagram that fails is the caller's business. The
//! functions are non-blocking on non-blocking sockets: `WouldBlock` says to
//! wait for readiness (use them inside tokio's `try_io`).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::SockAddr;

/// Datagrams per system call, at most.
pub(super) const MAX: usize = 32;

/// Sends `msgs` in order, each to its address (`None`: the connected peer),
/// in one call. `Ok(k)`: the first `k` went out (at most [`MAX`]; fewer
/// when the socket's buffer filled up, then retry the rest). `Err`: the
/// first datagram failed and nothing went out (a later one's failure shows
/// as a short count, and its error at the next call).
pub(super) fn send(fd: BorrowedFd<'_>, msgs: &[(&[u8], Option<SocketAddr>)]) -> io::Result<usize> {
    let n = msgs.len().min(MAX);
    if n == 0 {
        return Ok(0);
    }
    let addrs: [Option<SockAddr>; MAX] =
        std::array::from_fn(|i| msgs.get(i).and_then(|m| m.1).map(SockAddr::from));
    // SAFETY: all-zero iovec and mmsghdr values are valid (null pointers,
    // zero lengths); the used ones are filled in below.
    let mut iov: [libc::iovec; MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for (i, (bytes, _)) in msgs.iter().take(n).enumerate() {
        iov[i].iov_base = bytes.as_ptr().cast_mut().cast();
        iov[i].iov_len = bytes.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_iov = &raw mut iov[i];
        h.msg_iovlen = 1;
        if let Some(a) = &addrs[i] {
            h.msg_name = a.as_ptr().cast_mut().cast();
            h.msg_namelen = a.len();
        }
    }
    // SAFETY: `hdrs[..n]` point at `iov` and `addrs`, which outlive the call;
    // each iovec describes a live byte slice the kernel only reads.
    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// One datagram read by [`recv`]: its length (the bytes are at the start of
/// its slot) and who sent it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Got {
    pub(super) len: usize,
    pub(super) from: Option<SocketAddr>,
}

/// The buffer [`recv`] reads into: [`MAX`] slots of `slot` bytes each. Its
/// pages are touched only as far as datagrams fill them.
pub(super) struct RecvBuf {
    bytes: Vec<u8>,
    slot: usize,
    got: Vec<Got>,
}

impl RecvBuf {
    /// Slots of `slot` bytes: the largest datagram accepted whole.
    pub(super) fn new(slot: usize) -> Self {
        RecvBuf {
            bytes: vec![0; slot * MAX],
            slot,
            got: Vec::with_capacity(MAX),
        }
    }

    /// Datagram `i` of the last [`recv`] and its sender (`None` past what it
    /// read).
    pub(super) fn get(&self, i: usize) -> Option<(&[u8], Option<SocketAddr>)> {
        let g = self.got.get(i)?;
        let start = i * self.slot;
        Some((self.bytes.get(start..start + g.len)?, g.from))
    }
}

/// Reads up to `want` (at most [`MAX`]) waiting datagrams into `buf` in one
/// call, without waiting: `Ok(k)` with `k >= 1`, or `WouldBlock` when none
/// waits. A datagram longer than a slot is cut to the slot (the caller
/// sizes slots for the largest it accepts).
pub(super) fn recv(fd: BorrowedFd<'_>, buf: &mut RecvBuf, want: usize) -> io::Result<usize> {
    buf.got.clear();
    let n = want.clamp(1, MAX);
    // SAFETY: all-zero sockaddr_storage, iovec and mmsghdr values are valid.
    let mut names: [libc::sockaddr_storage; MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut iov: [libc::iovec; MAX] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for (i, chunk) in buf.bytes.chunks_exact_mut(buf.slot).take(n).enumerate() {
        iov[i].iov_base = chunk.as_mut_ptr().cast();
        iov[i].iov_len = chunk.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_iov = &raw mut iov[i];
        h.msg_iovlen = 1;
        h.msg_name = (&raw mut names[i]).cast();
        h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: `hdrs[..n]` point at `iov` and `names`, which outlive the
    // call; each iovec describes a distinct writable slot of `buf.bytes`.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let k = (rc as usize).min(n);
    for (h, name) in hdrs.iter().zip(&names).take(k) {
        buf.got.push(Got {
            len: (h.msg_len as usize).min(buf.slot),
            from: socket_addr(name, h.msg_hdr.msg_namelen),
        });
    }
    Ok(k)
}

/// The IPv4 or IPv6 address the kernel wrote into `name` (`len` bytes).
fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for every socket address type.
            let a = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe { &*(&raw const *name).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            Some(SocketAddrV6::new(ip, port, a.sin6_flowinfo, a.sin6_scope_id).into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (std::net::UdpSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn a_batch_goes_out_in_order_and_comes_back_with_its_senders() {
        let (a, b) = pair();
        let to = Some(b.local_addr().unwrap());
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1 + i as usize]).collect();
        let msgs: Vec<(&[u8], Option<SocketAddr>)> =
            bodies.iter().map(|b| (b.as_slice(), to)).collect();
        let mut sent = 0;
        while sent < msgs.len() {
            sent += send(a.as_fd(), &msgs[sent..]).unwrap();
        }
        let mut buf = RecvBuf::new(512);
        let mut seen = Vec::new();
        while seen.len() < bodies.len() {
            match recv(b.as_fd(), &mut buf, MAX) {
                Ok(k) => {
                    assert!(buf.get(k).is_none(), "only {k} datagrams read");
                    for i in 0..k {
                        let (bytes, from) = buf.get(i).unwrap();
                        assert_eq!(from, Some(a.local_addr().unwrap()));
                        seen.push(bytes.to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(seen, bodies);
        let e = recv(b.as_fd(), &mut buf, MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_connected_socket_sends_without_addresses_and_a_refusal_is_an_error_of_a_read() {
        let (a, b) = pair();
        a.connect(b.local_addr().unwrap()).unwrap();
        assert_eq!(
            send(a.as_fd(), &[(b"one", None), (b"two", None)]).unwrap(),
            2
        );
        let mut buf = RecvBuf::new(16);
        let mut got = 0;
        while got < 2 {
            if let Ok(k) = recv(b.as_fd(), &mut buf, MAX) {
                got += k;
            }
        }
        // Nothing listens at `b`'s address any more: the kernel's ICMP
        // "port unreachable" comes back as an error of `a`.
        let gone = b.local_addr().unwrap();
        drop(b);
        let _ = send(a.as_fd(), &[(b"three", None)]);
        let refused = (0..1000).find_map(|_| match recv(a.as_fd(), &mut buf, MAX) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Some(e),
            _ => {
                std::thread::sleep(std::time::Duration::from_millis(1));
                None
            }
        });
        assert!(refused.is_some(), "no refusal from {gone}");
    }

    #[test]
    fn ipv6_senders_are_read_back() {
        let a = std::net::UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
        let b = std::net::UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
        b.set_nonblocking(true).unwrap();
        send(a.as_fd(), &[(b"six", Some(b.local_addr().unwrap()))]).unwrap();
        let mut buf = RecvBuf::new(16);
        while recv(b.as_fd(), &mut buf, MAX).is_err() {}
        assert_eq!(
            buf.get(0),
            Some((&b"six"[..], Some(a.local_addr().unwrap())))
        );
    }

    #[test]
    fn a_datagram_longer_than_a_slot_is_cut_to_it() {
        let (a, b) = pair();
        let to = Some(b.local_addr().unwrap());
        send(a.as_fd(), &[(&[7u8; 100], to)]).unwrap();
        let mut buf = RecvBuf::new(10);
        while recv(b.as_fd(), &mut buf, 1).is_err() {}
        assert_eq!(buf.get(0).unwrap().0, &[7u8; 10]);
    }
}
