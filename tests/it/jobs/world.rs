//! The test world of the job corpus lives in `egressd_e2e::world` (the
//! benchmark harness runs the same world); this module names it for the
//! corpus' tests and checks that it stays inside its address block.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use egressd_e2e::world::*;

/// The world stays inside this module's address block (others use the rest).
#[test]
fn the_world_stays_in_its_address_block() {
    let block = u32::from("198.51.100.64".parse::<Ipv4Addr>().unwrap());
    for a in SITES.iter().map(|s| s.v4).chain([HOST4, RESOLVER4]) {
        let a: Ipv4Addr = a.parse().unwrap();
        assert_eq!(u32::from(a) & !31, block, "{a} is outside 198.51.100.64/27");
    }
    for a in SITES.iter().map(|s| s.v6).chain([HOST6]) {
        let a: Ipv6Addr = a.parse().unwrap();
        assert_eq!(a.segments()[..4], [0x2001, 0xdb8, 7, 0], "{a}");
    }
}
