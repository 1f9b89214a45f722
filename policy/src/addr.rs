//! Addresses: the IPv4-mapped IPv6 rule (`::ffff:a.b.c.d` is the IPv4
//! address, everywhere) and the built-in address classes of policy.md step 3,
//! each with the block it was found in (an allow rule opens a class only when
//! it lies inside that block).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::decision::AddrClass;

/// `::ffff:a.b.c.d` becomes `a.b.c.d`; everything else is unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// A built-in class an address falls in, with the prefix length of the block
/// it matched (e.g. 8 for 10.0.0.0/8, 32 for 169.254.169.254).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassBlock {
    /// The class.
    pub class: AddrClass,
    /// Prefix length of the matched block.
    pub prefix_len: u8,
}

const fn block(class: AddrClass, prefix_len: u8) -> Option<ClassBlock> {
    Some(ClassBlock { class, prefix_len })
}

/// The built-in class of an address (after [`canonical`]), most specific
/// block first (metadata before link-local, before private).
pub fn classify(ip: IpAddr) -> Option<ClassBlock> {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<ClassBlock> {
    let o = ip.octets();
    let bits = u32::from(ip);
    let in_net = |net: u32, len: u32| bits >> (32 - len) == net >> (32 - len);
    if o[0] == 127 {
        return block(AddrClass::Loopback, 8);
    }
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return block(AddrClass::Metadata, 32);
    }
    if ip == Ipv4Addr::BROADCAST {
        return block(AddrClass::Broadcast, 32);
    }
    if o[0] == 0 {
        return block(AddrClass::Unspecified, 8);
    }
    if o[0] == 169 && o[1] == 254 {
        return block(AddrClass::LinkLocal, 16);
    }
    if o[0] >> 4 == 0xe {
        return block(AddrClass::Multicast, 4);
    }
    if o[0] == 10 {
        return block(AddrClass::Private, 8);
    }
    if in_net(0xac10_0000, 12) {
        return block(AddrClass::Private, 12);
    }
    if o[0] == 192 && o[1] == 168 {
        return block(AddrClass::Private, 16);
    }
    if in_net(0x6440_0000, 10) {
        return block(AddrClass::Private, 10);
    }
    None
}

fn classify_v6(ip: Ipv6Addr) -> Option<ClassBlock> {
    let bits = u128::from(ip);
    let in_net = |net: u128, len: u32| bits >> (128 - len) == net >> (128 - len);
    if ip == Ipv6Addr::LOCALHOST {
        return block(AddrClass::Loopback, 128);
    }
    if ip == Ipv6Addr::UNSPECIFIED {
        return block(AddrClass::Unspecified, 128);
    }
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return block(AddrClass::Metadata, 128);
    }
    if in_net(0xfe80 << 112, 10) {
        return block(AddrClass::LinkLocal, 10);
    }
    if in_net(0xff00 << 112, 8) {
        return block(AddrClass::Multicast, 8);
    }
    // NAT64 well-known and local-use prefixes, 6to4, Teredo, and the
    // deprecated IPv4-compatible ::a.b.c.d: all carry an IPv4 address that
    // could reach a private or metadata address through a translator.
    if in_net(0x0064_ff9b << 96, 96) {
        return block(AddrClass::EmbeddedV4, 96);
    }
    if in_net((0x0064_ff9b_0001_u128) << 80, 48) {
        return block(AddrClass::EmbeddedV4, 48);
    }
    if in_net(0x2002 << 112, 16) {
        return block(AddrClass::EmbeddedV4, 16);
    }
    if in_net(0x2001_0000 << 96, 32) {
        return block(AddrClass::EmbeddedV4, 32);
    }
    if in_net(0, 96) {
        return block(AddrClass::EmbeddedV4, 96);
    }
    if in_net(0xfc00 << 112, 7) {
        return block(AddrClass::Private, 7);
    }
    None
}

#[cfg(test)]
mod tests;
