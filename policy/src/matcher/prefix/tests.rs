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

/// The first rule, in order, covering `addr` with at least `min_len` bits.
fn naive_first(rules: &[(u32, u8)], addr: u32, min_len: u8, port: u16) -> Option<u32> {
    (0u32..)
        .zip(rules)
        .find(|(i, (net, len))| {
            *len >= min_len
                && addr.mask(*len) == net.mask(*len)
                && ported(*i).covers(PortQuery::Port(port))
        })
        .map(|(i, _)| i)
}

/// Every third rule is for port 80 only, so a port query skips some hits.
fn ported(order: u32) -> Ports {
    Ports((order % 3 == 1).then(|| vec![80].into()))
}

/// Networks clustered around a few bases so they nest, share bits and
/// split each other, in amounts that make the index grow and rebuild.
fn v4_rules() -> impl proptest::strategy::Strategy<Value = Vec<(u32, u8)>> {
    use proptest::prelude::*;
    let base = prop::sample::select(vec![0x0a00_0000u32, 0x0a01_0000, 0xc633_6400, 0x2d00_0000]);
    let rule = (base, any::<u32>(), 0u32..33, 0u8..=32).prop_map(|(b, r, spread, len)| {
        (
            b ^ (r & u32::MAX.checked_shr(32 - spread).unwrap_or(0)),
            len,
        )
    });
    prop::collection::vec(rule, 1..400)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    #[test]
    fn indexed_lookup_equals_a_scan(rules in v4_rules(), probes in proptest::collection::vec((proptest::prelude::any::<u32>(), 0usize..400, 0u8..=32, 0u32..33), 64)) {
        let mut t = PrefixTrie::<u32>::new();
        for (i, (net, len)) in (0u32..).zip(&rules) {
            t.insert(*net, *len, Hit { ports: ported(i), ..hit(i) });
        }
        for (r, pick, min_len, spread) in probes {
            let port = if r % 2 == 0 { 80 } else { 443 };
            // Half the probes land inside a rule's network, the rest anywhere.
            let (net, _) = rules[pick % rules.len()];
            let addr = if spread == 32 { r } else { net ^ (r & (u32::MAX >> spread)) };
            let got = t.lookup(addr, PortQuery::Port(port), min_len).map(|h| h.order);
            proptest::prop_assert_eq!(got, naive_first(&rules, addr, min_len, port), "addr {:#x}", addr);
        }
    }
}

#[test]
fn v6_index_with_a_shared_top() {
    // Every rule under 2600::/16 so the index starts below the shared bits.
    let mut t = PrefixTrie::<u128>::new();
    let nets: Vec<(u128, u8)> = (0u128..3000)
        .map(|i| {
            (
                (0x2600u128 << 112) | (((i * 0x9e37_79b9_7f4a_7c15) << 40) & (u128::MAX >> 16)),
                32 + (i % 65) as u8,
            )
        })
        .collect();
    for (i, (net, len)) in (0u32..).zip(&nets) {
        t.insert(*net, *len, hit(i));
    }
    for (i, (net, _)) in (0u32..).zip(&nets) {
        let got = t.lookup(*net | 1, PortQuery::AnyRule, 0).map(|h| h.order);
        let want = (0u32..)
            .zip(&nets)
            .find(|(_, (n, l))| (*net | 1).mask(*l) == n.mask(*l))
            .map(|(j, _)| j);
        assert_eq!(got, want, "rule {i}");
    }
    assert_eq!(
        t.lookup(0x2700u128 << 112, PortQuery::AnyRule, 0)
            .map(|h| h.order),
        None
    );
    t.insert(0, 0, hit(3000));
    assert_eq!(
        t.lookup(0x2700u128 << 112, PortQuery::AnyRule, 0)
            .map(|h| h.order),
        Some(3000)
    );
}
