use ipnet::IpNet;

use super::*;
use crate::decision::{RuleId, RuleList};
use crate::matcher::Ports;

fn hit(order: u32) -> Hit {
    Hit {
        order,
        ports: Ports(None),
        id: RuleId::Base {
            list: RuleList::Allow,
            index: order,
        },
    }
}

/// Both families in one, for table-driven tests.
#[derive(Default)]
struct Tries {
    v4: PrefixTrie<u32>,
    v6: PrefixTrie<u128>,
}

fn trie(nets: &[&str]) -> Tries {
    let mut t = Tries::default();
    for (i, n) in (0u32..).zip(nets) {
        match n.parse::<IpNet>().unwrap() {
            IpNet::V4(n) => t.v4.insert(u32::from(n.network()), n.prefix_len(), hit(i)),
            IpNet::V6(n) => t.v6.insert(u128::from(n.network()), n.prefix_len(), hit(i)),
        }
    }
    t
}

fn find(t: &Tries, ip: &str) -> Option<u32> {
    let h = match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v4) => t.v4.lookup(u32::from(v4), PortQuery::AnyRule, 0),
        std::net::IpAddr::V6(v6) => t.v6.lookup(u128::from(v6), PortQuery::AnyRule, 0),
    };
    h.map(|h| h.order)
}

#[test]
fn first_and_last_address_of_a_network() {
    let t = trie(&["198.51.100.0/24"]);
    assert_eq!(find(&t, "198.51.100.0"), Some(0));
    assert_eq!(find(&t, "198.51.100.255"), Some(0));
    assert_eq!(find(&t, "198.51.99.255"), None);
    assert_eq!(find(&t, "198.51.101.0"), None);
}

#[test]
fn slash_zero_and_full_length() {
    let t = trie(&["203.0.113.7/32", "0.0.0.0/0"]);
    assert_eq!(find(&t, "203.0.113.7"), Some(0));
    assert_eq!(find(&t, "203.0.113.8"), Some(1));
    assert_eq!(find(&t, "255.255.255.255"), Some(1));
    let t = trie(&["::/0", "2001:db8::1/128"]);
    assert_eq!(
        find(&t, "2001:db8::1"),
        Some(0),
        "the earlier rule wins, not the longer"
    );
    let t = trie(&["2001:db8::1/128"]);
    assert_eq!(find(&t, "2001:db8::1"), Some(0));
    assert_eq!(find(&t, "2001:db8::2"), None);
    assert_eq!(find(&t, "2001:db8::"), None);
}

#[test]
fn splits_and_nesting() {
    let t = trie(&[
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.0/24",
        "10.128.0.0/9",
        "11.0.0.0/8",
    ]);
    assert_eq!(find(&t, "10.1.2.3"), Some(0));
    let t = trie(&["10.1.2.0/24", "10.1.0.0/16", "10.0.0.0/8", "10.128.0.0/9"]);
    assert_eq!(find(&t, "10.1.2.3"), Some(0));
    assert_eq!(find(&t, "10.1.3.3"), Some(1));
    assert_eq!(find(&t, "10.2.3.3"), Some(2));
    assert_eq!(find(&t, "10.200.3.3"), Some(2));
    assert_eq!(find(&t, "12.0.0.0"), None);
}

#[test]
fn min_len_skips_broader_prefixes() {
    let t = trie(&["0.0.0.0/0", "10.0.0.0/8", "10.0.0.5/32"]).v4;
    let k = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 5));
    assert_eq!(t.lookup(k, PortQuery::AnyRule, 0).map(|h| h.order), Some(0));
    assert_eq!(t.lookup(k, PortQuery::AnyRule, 8).map(|h| h.order), Some(1));
    assert_eq!(t.lookup(k, PortQuery::AnyRule, 9).map(|h| h.order), Some(2));
}
