//! This host's container bridges and their networks: what the kernel programs
//! leave alone like loopback (the `passthrough` map), because traffic between
//! containers on a local bridge, or between them and the host, never leaves the
//! host.
//!
//! A container bridge is a Linux bridge of this network namespace whose every port
//! is a veth (or that has no port yet): Docker's `docker0` and `br-<id>`, podman's
//! and compose's networks. One port of another kind (a physical NIC, vxlan, tap,
//! wireguard, a bond...) may lead off the host: that bridge is not local. Its
//! networks are the routes of the main table through it with no next hop beyond
//! the link. A more specific route inside such a network that goes elsewhere stays
//! filtered (an entry that says "not local"), and so does a network another route
//! also claims. Link-local and multicast networks are never local: the map knows
//! no interface, and `fe80::/64` is on every link.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::netlink::{self, Link, Route};

const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;

/// What the `passthrough` map holds for the bridges: networks left alone and, inside
/// them, networks that are not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LocalNetworks {
    pub local: BTreeSet<IpNet>,
    pub except: BTreeSet<IpNet>,
}

/// The container bridges' networks as the kernel reports them now.
pub(crate) fn scan() -> io::Result<LocalNetworks> {
    let links = netlink::links()?;
    let mut routes = netlink::routes(libc::AF_INET)?;
    routes.extend(netlink::routes(libc::AF_INET6)?);
    Ok(local_networks(&links, &routes))
}

/// The indexes of the container bridges among `links`.
fn container_bridges(links: &[Link]) -> BTreeSet<u32> {
    let mut ports: BTreeMap<u32, bool> = links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| (l.index, true))
        .collect();
    for l in links {
        if let Some(only_veth) = l.master.and_then(|m| ports.get_mut(&m)) {
            *only_veth &= l.kind.as_deref() == Some("veth");
        }
    }
    ports
        .into_iter()
        .filter_map(|(index, only_veth)| only_veth.then_some(index))
        .collect()
}

fn network(r: &Route) -> Option<IpNet> {
    match r.dst {
        std::net::IpAddr::V4(a) => Ipv4Net::new(a, r.prefix_len).ok().map(IpNet::V4),
        std::net::IpAddr::V6(a) => Ipv6Net::new(a, r.prefix_len).ok().map(IpNet::V6),
    }
    .map(|n| n.trunc())
}

/// Networks no bridge makes local: the default route, and any that overlaps the
/// link-local or multicast ranges (they exist on every link).
fn never_local(net: &IpNet) -> bool {
    const SPECIAL: [&str; 4] = ["169.254.0.0/16", "224.0.0.0/4", "fe80::/10", "ff00::/8"];
    net.prefix_len() == 0
        || SPECIAL.iter().any(|s| {
            s.parse::<IpNet>()
                .is_ok_and(|s| s.contains(net) || net.contains(&s))
        })
}

fn local_networks(links: &[Link], routes: &[Route]) -> LocalNetworks {
    let bridges = container_bridges(links);
    let mut candidates = BTreeSet::new();
    let mut others = BTreeSet::new();
    for r in routes.iter().filter(|r| r.table == RT_TABLE_MAIN) {
        let Some(net) = network(r) else { continue };
        let through_bridge =
            r.kind == RTN_UNICAST && !r.via && r.oif.is_some_and(|oif| bridges.contains(&oif));
        if through_bridge && !never_local(&net) {
            candidates.insert(net);
        } else {
            others.insert(net);
        }
    }
    let local: BTreeSet<IpNet> = candidates.difference(&others).copied().collect();
    let except = others
        .into_iter()
        .filter(|o| {
            local
                .iter()
                .any(|l| l.prefix_len() < o.prefix_len() && l.contains(o))
        })
        .collect();
    LocalNetworks { local, except }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, kind: Option<&str>, master: Option<u32>) -> Link {
        Link {
            index,
            name: format!("if{index}"),
            kind: kind.map(str::to_owned),
            master,
        }
    }

    fn route(net: &str, oif: u32, via: bool) -> Route {
        let net: IpNet = net.parse().unwrap();
        Route {
            dst: net.addr(),
            prefix_len: net.prefix_len(),
            table: RT_TABLE_MAIN,
            kind: RTN_UNICAST,
            oif: Some(oif),
            via,
        }
    }

    fn nets(list: &[&str]) -> BTreeSet<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn only_bridges_with_only_veth_ports_are_container_bridges() {
        let links = [
            link(1, None, None),           // lo / a NIC
            link(2, Some("bridge"), None), // docker0, two containers
            link(3, Some("veth"), Some(2)),
            link(4, Some("veth"), Some(2)),
            link(5, Some("bridge"), None), // no port yet
            link(6, Some("bridge"), None), // a NIC in it
            link(7, Some("veth"), Some(6)),
            link(8, None, Some(6)),
            link(9, Some("bridge"), None), // a vxlan in it
            link(10, Some("vxlan"), Some(9)),
            link(11, Some("bond"), None), // not a bridge
            link(12, Some("veth"), Some(11)),
            link(13, Some("bridge"), None), // a tap in it
            link(14, Some("tun"), Some(13)),
        ];
        assert_eq!(container_bridges(&links), BTreeSet::from([2, 5]));
    }

    #[test]
    fn a_container_bridge_s_direct_routes_are_local_with_what_leads_elsewhere_excepted() {
        let links = [
            link(1, None, None),
            link(2, Some("bridge"), None),
            link(3, Some("veth"), Some(2)),
            link(4, Some("bridge"), None),
            link(5, None, Some(4)),
        ];
        let mut routes = vec![
            route("0.0.0.0/0", 1, true),
            route("192.0.2.0/24", 1, false),
            route("172.17.0.0/16", 2, false),
            route("fd00:17::/64", 2, false),
            route("fe80::/64", 2, false),
            route("fe80::/64", 1, false),
            route("224.0.0.0/4", 2, false),
            // A more specific route inside it leads off the host.
            route("172.17.9.0/24", 1, false),
            route("172.17.10.0/24", 2, true),
            // Through a container (a gateway on the bridge): not local.
            route("10.9.0.0/16", 2, true),
            // A bridge with a NIC in it.
            route("172.18.0.0/16", 4, false),
            // Claimed by another route too.
            route("172.19.0.0/16", 2, false),
            route("172.19.0.0/16", 1, true),
            // A default route through the bridge.
            route("::/0", 2, false),
        ];
        let mut blackhole = route("172.17.11.0/24", 2, false);
        blackhole.kind = 6;
        routes.push(blackhole);
        let mut other_table = route("172.20.0.0/16", 2, false);
        other_table.table = 100;
        routes.push(other_table);
        let got = local_networks(&links, &routes);
        assert_eq!(got.local, nets(&["172.17.0.0/16", "fd00:17::/64"]));
        assert_eq!(
            got.except,
            nets(&["172.17.9.0/24", "172.17.10.0/24", "172.17.11.0/24"])
        );
    }

    #[test]
    fn scans_this_namespace() {
        // Works unprivileged; whatever bridges exist, their networks are specific.
        let got = scan().unwrap();
        assert!(got.local.iter().all(|n| !never_local(n)), "{got:?}");
    }
}
