//! Byte-exact mirrors of the structs in `bpf/egressd.bpf.c` (maps and ring-buffer
//! records) and the one address form both sides share: 16 bytes, IPv4 as
//! v4-mapped IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

pub(crate) const AF_INET: u16 = 2;

/// `struct orig`: the original destination of a redirected socket and who made it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Orig {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub family: u16,
    pub pid: u32,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub comm: [u8; 16],
}

/// `struct tuple`: a redirected flow as the proxy sees it (s = client, d = proxy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host order.
    pub sport: u16,
    /// Host order.
    pub dport: u16,
    pub pad: u32,
}

/// `struct deny_event`, one ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawDenyEvent {
    pub cgroup_id: u64,
    pub pid: u32,
    pub kind: u32,
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub family: u16,
    pub protocol: u32,
    pub comm: [u8; 16],
    /// Socket cookie; 0 if not known.
    pub cookie: u64,
}

// SAFETY: plain `repr(C)` structs of integers and byte arrays, with no implicit
// padding (field sizes add up to the struct size, checked below), valid for any bits.
unsafe impl aya::Pod for Orig {}
// SAFETY: as above.
unsafe impl aya::Pod for Tuple {}

const _: () = assert!(std::mem::size_of::<Orig>() == 56);
const _: () = assert!(std::mem::size_of::<Tuple>() == 40);
const _: () = assert!(std::mem::size_of::<RawDenyEvent>() == 64);

impl RawDenyEvent {
    /// Reads one record; `None` when the kernel handed a record of another size.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked above, the struct is valid for any bits and
        // `read_unaligned` makes no alignment assumption about the ring buffer.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }
}

/// The 16-byte form of an address: IPv4 becomes `::ffff:a.b.c.d`.
pub(crate) fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Back from the 16-byte form; `family` says whether the destination was IPv4.
pub(crate) fn socket_addr(addr: [u8; 16], port_be: u16, family: u16) -> SocketAddr {
    let port = u16::from_be(port_be);
    let v6 = Ipv6Addr::from(addr);
    match (family, v6.to_ipv4_mapped()) {
        (AF_INET, Some(v4)) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
        (AF_INET, None) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        _ => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
    }
}

/// A NUL-padded kernel `comm` as a string.
pub(crate) fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The flow key for a socket the proxy accepted (`client` = its peer, `local` = its own address).
pub(crate) fn tuple(client: SocketAddr, local: SocketAddr) -> Tuple {
    Tuple {
        saddr: addr16(client.ip()),
        daddr: addr16(local.ip()),
        sport: client.port(),
        dport: local.port(),
        pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_v4_mapped_give_one_key() {
        let a = tuple(
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:15001".parse().unwrap(),
        );
        let b = tuple(
            "[::ffff:127.0.0.1]:4000".parse().unwrap(),
            "[::ffff:127.0.0.1]:15001".parse().unwrap(),
        );
        assert_eq!(a, b);
    }

    #[test]
    fn addresses_round_trip() {
        let v4: SocketAddr = "198.51.100.10:443".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::10]:443".parse().unwrap();
        assert_eq!(socket_addr(addr16(v4.ip()), 443u16.to_be(), AF_INET), v4);
        assert_eq!(socket_addr(addr16(v6.ip()), 443u16.to_be(), 10), v6);
    }

    #[test]
    fn comm_stops_at_nul() {
        let mut raw = [0u8; 16];
        raw[..7].copy_from_slice(b"python3");
        assert_eq!(comm(&raw), "python3");
        assert_eq!(comm(&[b'x'; 16]), "x".repeat(16));
    }
}
