//! [`Enforcer`]: loads the programs with the proxy's ports and exemptions,
//! attaches all of them to one cgroup and the packet-socket guard to every
//! interface (or nothing at all), keeps the `passthrough` map in step with this
//! host's container bridges, and answers original-destination lookups from the
//! `tuple_orig` map.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkbAttachType, Program};
use aya::{Ebpf, EbpfLoader};
use ipnet::IpNet;

use crate::abi::{self, Orig, Tuple};
use crate::bridges::{self, LocalNetworks};
use crate::events::DenyEvents;
use crate::netlink::LinkChanges;
use crate::packet_guard::{GuardSync, PacketGuard};
use crate::raw_link::{self, CgroupLink};
use crate::{EbpfError, EnforcerConfig, PROGRAMS, pin};

/// The original destination of a redirected socket and the process that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalDst {
    /// Where the application wanted to go (IPv4 also when it used a v4-mapped address).
    pub dst: SocketAddr,
    /// Process (thread group) id at connect/send time.
    pub pid: u32,
    /// The process's `comm` (at most 15 bytes).
    pub comm: String,
    /// cgroup id of the process (see `cgroup_path_of_id`).
    pub cgroup_id: u64,
    /// Network namespace cookie of the socket (differs from the host's for containers).
    pub netns_cookie: u64,
}

impl From<Orig> for OriginalDst {
    fn from(o: Orig) -> Self {
        Self {
            dst: abi::socket_addr(o.addr, o.port, o.family),
            pid: o.pid,
            comm: abi::comm(&o.comm),
            cgroup_id: o.cgroup_id,
            netns_cookie: o.netns_cookie,
        }
    }
}

/// A program's link to the cgroup: owned by this process (detached when dropped)
/// or pinned under bpffs (kept when the process dies).
#[derive(Debug)]
enum Attached {
    Owned(CgroupLink),
    Pinned(PinnedLink),
}

/// The loaded object and the packet guard's per-interface links: touched only when
/// interfaces change, never on a connection's path.
struct Loaded {
    guard: PacketGuard,
    // Last: the programs stay loaded until the links are released.
    ebpf: Ebpf,
}

/// The attached kernel programs. Dropping it detaches them unless they are pinned.
pub struct Enforcer {
    tuple_orig: HashMap<MapData, Tuple, Orig>,
    events: Option<RingBuf<MapData>>,
    events_lost: Array<MapData, u64>,
    links: Vec<(&'static str, Attached)>,
    pin_dir: Option<PathBuf>,
    dns_targets: Vec<IpAddr>,
    dns_port: u16,
    passthrough: Mutex<Passthrough>,
    // Last: the programs stay loaded until the links above are released.
    loaded: Mutex<Loaded>,
}

/// What one [`Enforcer::sync_local_networks`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocalSync {
    /// Container bridge networks left alone from now on.
    pub added: Vec<IpNet>,
    /// Networks no longer left alone (their bridge, port or route changed).
    pub removed: Vec<IpNet>,
    /// Entries the kernel map refused (full?): those networks stay filtered.
    pub failed: Vec<(IpNet, String)>,
}

/// The `passthrough` map and what is written in it: the configured networks and
/// the container bridges' (value 1 = left alone, 0 = a network inside one that is
/// not).
struct Passthrough {
    trie: LpmTrie<MapData, [u8; 16], u8>,
    configured: Vec<IpNet>,
    written: BTreeMap<IpNet, u8>,
    bridges: BTreeSet<IpNet>,
}

impl Passthrough {
    fn new(ebpf: &mut Ebpf, configured: &[IpNet]) -> Result<Passthrough, EbpfError> {
        let mut p = Passthrough {
            trie: take_map(ebpf, "passthrough", LpmTrie::try_from)?,
            configured: configured.iter().map(IpNet::trunc).collect(),
            written: BTreeMap::new(),
            bridges: BTreeSet::new(),
        };
        let wanted = p.wanted(&LocalNetworks::default());
        for (net, value) in wanted {
            p.write(net, value)?;
        }
        Ok(p)
    }

    /// Every entry the map should hold for `found`.
    fn wanted(&self, found: &LocalNetworks) -> BTreeMap<IpNet, u8> {
        let mut wanted: BTreeMap<IpNet, u8> = found
            .except
            .iter()
            .filter(|e| !self.configured.iter().any(|c| c.contains(*e)))
            .map(|&e| (e, 0))
            .collect();
        wanted.extend(found.local.iter().map(|&n| (n, 1)));
        wanted.extend(self.configured.iter().map(|&n| (n, 1)));
        wanted
    }

    fn write(&mut self, net: IpNet, value: u8) -> Result<(), EbpfError> {
        self.trie
            .insert(&key(net), value, 0)
            .map_err(|cause| EbpfError::Map {
                map: "passthrough",
                cause,
            })?;
        self.written.insert(net, value);
        Ok(())
    }

    fn erase(&mut self, net: IpNet) -> Result<(), EbpfError> {
        match self.trie.remove(&key(net)) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(cause) => {
                return Err(EbpfError::Map {
                    map: "passthrough",
                    cause,
                });
            }
        }
        self.written.remove(&net);
        Ok(())
    }

    /// Replaces the bridges' entries with `found` (the configured ones stay). The
    /// order never leaves more alone than either state would: local entries that
    /// go are removed first, "not local" entries written before the local ones
    /// they refine, and those removed last; a local network is written only if
    /// every exception inside it was.
    fn replace(&mut self, found: &LocalNetworks) -> LocalSync {
        let wanted = self.wanted(found);
        let mut sync = LocalSync::default();
        let stale: Vec<(IpNet, u8)> = self
            .written
            .iter()
            .filter(|(net, value)| wanted.get(net) != Some(value))
            .map(|(&n, &v)| (n, v))
            .collect();
        for &(net, _) in stale.iter().filter(|(_, v)| *v != 0) {
            if let Err(e) = self.erase(net) {
                sync.failed.push((net, e.to_string()));
            }
        }
        let mut unsure = Vec::new();
        for (&net, &value) in wanted.iter().filter(|(_, v)| **v == 0) {
            if self.written.get(&net) != Some(&value)
                && let Err(e) = self.write(net, value)
            {
                unsure.push(net);
                sync.failed.push((net, e.to_string()));
            }
        }
        for (&net, &value) in wanted.iter().filter(|(_, v)| **v != 0) {
            if self.written.get(&net) == Some(&value) {
                continue;
            }
            if unsure.iter().any(|e| net.contains(e)) {
                continue; // already listed: its exception could not be written
            }
            if let Err(e) = self.write(net, value) {
                sync.failed.push((net, e.to_string()));
            }
        }
        for &(net, _) in stale.iter().filter(|(_, v)| *v == 0) {
            if !wanted.contains_key(&net)
                && let Err(e) = self.erase(net)
            {
                sync.failed.push((net, e.to_string()));
            }
        }
        let now: BTreeSet<IpNet> = found
            .local
            .iter()
            .filter(|n| self.written.get(*n) == Some(&1))
            .copied()
            .collect();
        sync.added = now.difference(&self.bridges).copied().collect();
        sync.removed = self.bridges.difference(&now).copied().collect();
        self.bridges = now;
        sync
    }
}

/// The map key of a network: IPv4 in the 16-byte v4-mapped form.
fn key(net: IpNet) -> Key<[u8; 16]> {
    let prefix = match net {
        IpNet::V4(n) => u32::from(n.prefix_len()) + 96,
        IpNet::V6(n) => u32::from(n.prefix_len()),
    };
    Key::new(prefix, abi::addr16(net.addr()))
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field(
                "links",
                &self.links.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Enforcer {
    /// Checks that the kernel can run every program (loads them without attaching).
    /// The error names the missing feature.
    pub fn probe() -> Result<(), EbpfError> {
        crate::probe::probe()
    }

    /// Loads and attaches every program to `cfg.cgroup`. On any failure nothing stays
    /// attached. With `cfg.pin_dir` the links are pinned there (replacing the pins of
    /// an earlier run only after the new links are in place).
    pub fn attach(cfg: EnforcerConfig) -> Result<Enforcer, EbpfError> {
        if cfg.proxy_port == 0 || cfg.dns_port == 0 {
            return Err(EbpfError::Config(
                "proxy_port and dns_port must be set".into(),
            ));
        }
        crate::probe::require_cgroup2_dir(&cfg.cgroup)?;
        if let Some(dir) = &cfg.pin_dir {
            pin::prepare_dir(dir)?;
        }
        let mut ebpf = load(&cfg)?;
        let mut passthrough = Passthrough::new(&mut ebpf, &cfg.passthrough)?;
        // Before attaching: the first connection to a container is already local.
        match bridges::scan() {
            Ok(found) => log_local_sync(&passthrough.replace(&found)),
            Err(e) => tracing::warn!(
                "cannot list the container bridges (rtnetlink): {e}; traffic to them is filtered until the next rescan"
            ),
        }
        let cgroup =
            File::open(&cfg.cgroup).map_err(|e| EbpfError::io("opening cgroup", &cfg.cgroup, e))?;

        // Dropping `owned` (and `guard`) on an early return detaches what was
        // attached so far.
        let mut owned = Vec::with_capacity(PROGRAMS.len());
        for name in PROGRAMS {
            owned.push((name, attach_one(&mut ebpf, name, &cgroup)?));
        }
        let mut guard = PacketGuard::load(&mut ebpf, cfg.pin_dir.clone())?;
        let first = guard.sync(&mut ebpf, true)?;
        if let Some(dir) = &cfg.pin_dir {
            guard.prune_pins(dir)?;
        }
        let links = match &cfg.pin_dir {
            None => owned
                .into_iter()
                .map(|(n, l)| (n, Attached::Owned(l)))
                .collect(),
            Some(dir) => pin::pin_all(dir, owned)?
                .into_iter()
                .map(|(n, l)| (n, Attached::Pinned(l)))
                .collect(),
        };

        let tuple_orig = take_map(&mut ebpf, "tuple_orig", HashMap::try_from)?;
        let events = take_map(&mut ebpf, "events", RingBuf::try_from)?;
        let events_lost = take_map(&mut ebpf, "events_lost", Array::try_from)?;
        let mut dns_targets: Vec<IpAddr> =
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
        dns_targets.extend(first_gateways(&cfg.container_gateways).0.map(IpAddr::V4));
        dns_targets.extend(first_gateways(&cfg.container_gateways).1.map(IpAddr::V6));
        tracing::info!(
            cgroup = %cfg.cgroup.display(),
            pinned = cfg.pin_dir.is_some(),
            packet_guard = ?first.attached,
            "eBPF programs attached"
        );
        Ok(Enforcer {
            tuple_orig,
            events: Some(events),
            events_lost,
            links,
            pin_dir: cfg.pin_dir,
            dns_targets,
            dns_port: cfg.dns_port,
            passthrough: Mutex::new(passthrough),
            loaded: Mutex::new(Loaded { guard, ebpf }),
        })
    }

    /// Brings the networks left alone in step with this host's container bridges
    /// (bridges whose every port is a veth: see `bridges`), keeping the configured
    /// ones. Call after each interface or route change ([`Enforcer::watch_interfaces`]).
    pub fn sync_local_networks(&self) -> Result<LocalSync, EbpfError> {
        let found = bridges::scan().map_err(|e| {
            EbpfError::Config(format!(
                "cannot list the container bridges and their routes (rtnetlink): {e}"
            ))
        })?;
        let mut passthrough = self
            .passthrough
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sync = passthrough.replace(&found);
        log_local_sync(&sync);
        Ok(sync)
    }

    /// The container bridge networks left alone now.
    pub fn local_networks(&self) -> Vec<IpNet> {
        let passthrough = self
            .passthrough
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        passthrough.bridges.iter().copied().collect()
    }

    /// Attaches the packet-socket guard to interfaces that appeared since the last
    /// call and forgets the ones that are gone. Interfaces that cannot be guarded are
    /// listed in the result (the others are guarded regardless).
    pub fn sync_interfaces(&self) -> Result<GuardSync, EbpfError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let Loaded { guard, ebpf } = &mut *loaded;
        guard.sync(ebpf, false)
    }

    /// The interfaces the packet-socket guard is attached to.
    pub fn guarded_interfaces(&self) -> Vec<String> {
        let loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        loaded.guard.interfaces()
    }

    /// A wake-up for every interface or route change in this network namespace: call
    /// [`Enforcer::sync_interfaces`] and [`Enforcer::sync_local_networks`] after
    /// each. Needs a tokio runtime.
    pub fn watch_interfaces() -> Result<LinkChanges, EbpfError> {
        LinkChanges::subscribe().map_err(|e| {
            EbpfError::Config(format!(
                "cannot subscribe to network interface changes (rtnetlink): {e}"
            ))
        })
    }

    /// How many deny reports the kernel dropped so far because the ring buffer was
    /// full (the denies themselves still happened).
    pub fn deny_reports_lost(&self) -> u64 {
        self.events_lost.get(&0, 0).unwrap_or(0)
    }

    /// For a socket the transparent listener accepted (`client` = its peer address,
    /// `local` = its local address): the original destination and the process.
    /// Works for DNS over TCP and UDP too when the proxy knows its local address.
    pub fn original_dst(&self, client: SocketAddr, local: SocketAddr) -> Option<OriginalDst> {
        self.tuple_orig
            .get(&abi::tuple(client, local), 0)
            .ok()
            .map(OriginalDst::from)
    }

    /// For a DNS datagram or stream the DNS proxy received from `client`: the resolver
    /// the application asked and the process. Tries each address the programs redirect
    /// DNS to (loopback, container gateways) on the DNS port.
    pub fn dns_origin(&self, client: SocketAddr) -> Option<OriginalDst> {
        let client_is_v4 = match client.ip() {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
        self.dns_targets
            .iter()
            .filter(|t| t.is_ipv4() == client_is_v4)
            .find_map(|&t| self.original_dst(client, SocketAddr::new(t, self.dns_port)))
    }

    /// The in-kernel denies (UDP other than DNS, ping/raw sockets, backstop
    /// drops). Call once, inside a tokio runtime.
    pub fn deny_events(&mut self) -> Result<DenyEvents, EbpfError> {
        let ring = self
            .events
            .take()
            .ok_or_else(|| EbpfError::Events("already taken".into()))?;
        DenyEvents::new(ring).map_err(|e| {
            EbpfError::Events(format!(
                "cannot watch the ring buffer (inside a tokio runtime?): {e}"
            ))
        })
    }

    /// The programs attached (and pinned, in pin mode), in attach order.
    pub fn attached_programs(&self) -> Vec<&'static str> {
        self.links.iter().map(|(name, _)| *name).collect()
    }

    /// Whether the links are pinned (they outlive this process).
    pub fn is_pinned(&self) -> bool {
        self.pin_dir.is_some()
    }

    /// Detaches every program now, pinned or not, and removes the pins.
    pub fn detach(mut self) -> Result<(), EbpfError> {
        self.loaded
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .guard
            .detach();
        let mut first_error = None;
        for (name, link) in self.links.drain(..) {
            let result = match link {
                Attached::Owned(l) => {
                    drop(l);
                    Ok(())
                }
                Attached::Pinned(l) => l
                    .unpin()
                    .map(drop)
                    .map_err(|e| EbpfError::program(name, "unpin", e)),
            };
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(dir) = &self.pin_dir {
            let _ = std::fs::remove_dir(dir); // only if empty: other files are not ours
        }
        tracing::info!("eBPF programs detached");
        first_error.map_or(Ok(()), Err)
    }
}

/// The first IPv4 and the first IPv6 container gateway.
fn first_gateways(gateways: &[IpAddr]) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let v4 = gateways.iter().find_map(|g| match g {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let v6 = gateways.iter().find_map(|g| match g {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_none() => Some(*a),
        _ => None,
    });
    (v4, v6)
}

/// Loads the object with the configuration written into its `volatile const` globals.
fn load(cfg: &EnforcerConfig) -> Result<Ebpf, EbpfError> {
    let (gw4, gw6) = first_gateways(&cfg.container_gateways);
    // Addresses go in network byte order, i.e. the octets as they are in memory.
    let gw4 = gw4.map_or(0, |a| u32::from_ne_bytes(a.octets()));
    let gw6 = gw6.map_or([0u32; 4], |a| {
        let o = a.octets();
        std::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    });
    let proxy_cgroup_id = cfg.proxy_cgroup_id.unwrap_or(0);
    let filter_cgroup_id = crate::cgroup::cgroup_id_of(&cfg.cgroup)?;
    let filter_cgroup_level = crate::cgroup::cgroup_level(&cfg.cgroup)?;
    let ebpf = EbpfLoader::new()
        .override_global("proxy_port", &cfg.proxy_port, true)
        .override_global("dns_port", &cfg.dns_port, true)
        .override_global("bypass_mark", &cfg.bypass_mark, true)
        .override_global("proxy_cgroup_id", &proxy_cgroup_id, true)
        .override_global("gw4", &gw4, true)
        .override_global("gw6", &gw6, true)
        .override_global("filter_cgroup_id", &filter_cgroup_id, true)
        .override_global("filter_cgroup_level", &filter_cgroup_level, true)
        .load(crate::OBJECT)?;
    Ok(ebpf)
}

/// Logs what a sync of the container bridge networks changed.
fn log_local_sync(sync: &LocalSync) {
    for net in &sync.added {
        tracing::info!(network = %net, "container bridge network left alone");
    }
    for net in &sync.removed {
        tracing::info!(network = %net, "network no longer left alone");
    }
    for (net, error) in &sync.failed {
        tracing::warn!(network = %net, "passthrough entry not written (filtered instead): {error}");
    }
}

fn take_map<T>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, EbpfError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| EbpfError::Config(format!("the object has no map {name}")))?;
    convert(map).map_err(|cause| EbpfError::Map { map: name, cause })
}

/// Loads one program and attaches it to the cgroup, returning its link.
pub(crate) fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
) -> Result<CgroupLink, EbpfError> {
    let mode = CgroupAttachMode::Single;
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| EbpfError::Config(format!("the object has no program {name}")))?;
    let load_err = |e: aya::programs::ProgramError| EbpfError::program(name, "load", e);
    let attach_err = |e: aya::programs::ProgramError| EbpfError::program(name, "attach", e);
    let take_err = |e: aya::programs::ProgramError| EbpfError::program(name, "take link", e);
    let link_err = |e: aya::programs::links::LinkError| EbpfError::program(name, "take link", e);
    let link = match program {
        Program::CgroupSockAddr(p) => {
            p.load().map_err(load_err)?;
            let id = p.attach(cgroup, mode).map_err(attach_err)?;
            FdLink::try_from(p.take_link(id).map_err(take_err)?).map_err(link_err)?
        }
        Program::SockOps(p) => {
            p.load().map_err(load_err)?;
            let id = p.attach(cgroup, mode).map_err(attach_err)?;
            FdLink::try_from(p.take_link(id).map_err(take_err)?).map_err(link_err)?
        }
        Program::CgroupSock(p) => {
            p.load().map_err(load_err)?;
            let id = p.attach(cgroup, mode).map_err(attach_err)?;
            FdLink::try_from(p.take_link(id).map_err(take_err)?).map_err(link_err)?
        }
        Program::CgroupSockopt(p) => {
            // aya 0.14 has no FdLink for this program type (needed to pin it).
            p.load().map_err(load_err)?;
            let fd = p.fd().map_err(attach_err)?;
            let link =
                raw_link::link_create(fd.as_fd(), cgroup.as_fd(), raw_link::BPF_CGROUP_SETSOCKOPT)
                    .map_err(|e| EbpfError::io("attaching cgroup/setsockopt to", name, e))?;
            return Ok(CgroupLink::Raw(link));
        }
        Program::CgroupSkb(p) => {
            p.load().map_err(load_err)?;
            let id = p
                .attach(cgroup, CgroupSkbAttachType::Egress, mode)
                .map_err(attach_err)?;
            FdLink::try_from(p.take_link(id).map_err(take_err)?).map_err(link_err)?
        }
        _ => {
            return Err(EbpfError::Config(format!(
                "program {name} has an unexpected type"
            )));
        }
    };
    Ok(CgroupLink::Aya(link))
}
