use std::net::IpAddr;

use super::*;

fn class(s: &str) -> Option<AddrClass> {
    classify(s.parse::<IpAddr>().unwrap()).map(|b| b.class)
}

#[test]
fn mapped_v6_is_v4() {
    let ip: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
    assert_eq!(canonical(ip), "10.1.2.3".parse::<IpAddr>().unwrap());
    assert_eq!(class("::ffff:169.254.169.254"), Some(AddrClass::Metadata));
    assert_eq!(class("::ffff:127.0.0.1"), Some(AddrClass::Loopback));
    assert_eq!(class("::ffff:198.51.100.7"), None);
}

#[test]
fn cgnat_boundaries() {
    assert_eq!(class("100.63.255.255"), None);
    assert_eq!(class("100.64.0.0"), Some(AddrClass::Private));
    assert_eq!(class("100.127.255.255"), Some(AddrClass::Private));
    assert_eq!(class("100.128.0.0"), None);
}

#[test]
fn rfc1918_boundaries() {
    assert_eq!(class("9.255.255.255"), None);
    assert_eq!(class("10.0.0.0"), Some(AddrClass::Private));
    assert_eq!(class("10.255.255.255"), Some(AddrClass::Private));
    assert_eq!(class("11.0.0.0"), None);
    assert_eq!(class("172.15.255.255"), None);
    assert_eq!(class("172.16.0.0"), Some(AddrClass::Private));
    assert_eq!(class("172.31.255.255"), Some(AddrClass::Private));
    assert_eq!(class("172.32.0.0"), None);
    assert_eq!(class("192.167.255.255"), None);
    assert_eq!(class("192.168.0.0"), Some(AddrClass::Private));
    assert_eq!(class("192.168.255.255"), Some(AddrClass::Private));
    assert_eq!(class("192.169.0.0"), None);
}

#[test]
fn every_class_v4() {
    assert_eq!(class("127.0.0.1"), Some(AddrClass::Loopback));
    assert_eq!(class("127.255.255.255"), Some(AddrClass::Loopback));
    assert_eq!(class("169.254.169.254"), Some(AddrClass::Metadata));
    assert_eq!(class("169.254.169.253"), Some(AddrClass::LinkLocal));
    assert_eq!(class("169.254.0.0"), Some(AddrClass::LinkLocal));
    assert_eq!(class("169.255.0.0"), None);
    assert_eq!(class("224.0.0.0"), Some(AddrClass::Multicast));
    assert_eq!(class("239.255.255.255"), Some(AddrClass::Multicast));
    assert_eq!(class("223.255.255.255"), None);
    assert_eq!(class("255.255.255.255"), Some(AddrClass::Broadcast));
    assert_eq!(class("0.0.0.0"), Some(AddrClass::Unspecified));
    assert_eq!(class("0.255.255.255"), Some(AddrClass::Unspecified));
    assert_eq!(class("1.0.0.0"), None);
    assert_eq!(class("198.51.100.7"), None);
}

#[test]
fn every_class_v6() {
    assert_eq!(class("::1"), Some(AddrClass::Loopback));
    assert_eq!(class("::"), Some(AddrClass::Unspecified));
    assert_eq!(class("fd00:ec2::254"), Some(AddrClass::Metadata));
    assert_eq!(class("fd00:ec2::253"), Some(AddrClass::Private));
    assert_eq!(class("fc00::"), Some(AddrClass::Private));
    assert_eq!(
        class("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        Some(AddrClass::Private)
    );
    assert_eq!(class("fe00::"), None);
    assert_eq!(class("fe80::1"), Some(AddrClass::LinkLocal));
    assert_eq!(class("febf:ffff::1"), Some(AddrClass::LinkLocal));
    assert_eq!(class("fec0::1"), None);
    assert_eq!(class("ff02::1"), Some(AddrClass::Multicast));
    assert_eq!(
        class("64:ff9b::a00:5"),
        Some(AddrClass::EmbeddedV4),
        "NAT64 well-known"
    );
    assert_eq!(
        class("64:ff9b:1::a00:5"),
        Some(AddrClass::EmbeddedV4),
        "NAT64 local-use"
    );
    assert_eq!(class("2002:a00:5::1"), Some(AddrClass::EmbeddedV4), "6to4");
    assert_eq!(
        class("2001:0:4136:e378::1"),
        Some(AddrClass::EmbeddedV4),
        "Teredo"
    );
    assert_eq!(class("2001:1::1"), None, "next to Teredo");
    assert_eq!(
        class("::10.0.0.5"),
        Some(AddrClass::EmbeddedV4),
        "IPv4-compatible"
    );
    assert_eq!(class("2001:db8::1"), None);
    assert_eq!(class("2606:4700::1111"), None);
}
