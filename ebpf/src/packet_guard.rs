//! The packet-socket guard: the `packet_guard` tc program attached on ingress and
//! egress of every interface of the host's network namespace except loopback, and
//! kept in step as interfaces come and go ([`PacketGuard::sync`]). Before the first
//! attach, the packet sockets that already exist are written to `packet_old` so the
//! guard leaves them alone (a DHCP client's, for example), as the backstop leaves
//! older IP sockets alone.
//!
//! Why tc: no cgroup hook sees an `AF_PACKET` socket being created, and its frames
//! skip the IP output path where `cgroup_skb/egress` runs. The sending socket stays
//! attached to the frame, though: the guard drops frames whose socket is a packet
//! (or `AF_XDP`) socket of a process in the filtered cgroup. `sockopt_guard` closes
//! the two ways around tc (`PACKET_QDISC_BYPASS`, AF_XDP setup).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::HashMap;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachType};
use aya::programs::{Program, SchedClassifier};
use aya::util::KernelVersion;

use crate::EbpfError;
use crate::netlink;

/// The tc program's name in the object, and the prefix of its pins.
pub(crate) const PROGRAM: &str = "packet_guard";

/// One attachment of the guard on one side of one interface.
#[derive(Debug)]
enum GuardLink {
    Owned(SchedClassifierLink),
    Pinned(PinnedLink),
}

#[derive(Debug)]
struct Guarded {
    name: String,
    links: Vec<GuardLink>,
}

/// What one [`PacketGuard::sync`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GuardSync {
    /// Interfaces the guard was attached to now.
    pub attached: Vec<String>,
    /// Interfaces that could not be guarded, with the reason.
    pub failed: Vec<(String, String)>,
}

/// The guard's attachments, by interface index.
#[derive(Debug)]
pub(crate) struct PacketGuard {
    guarded: BTreeMap<u32, Guarded>,
    pin_dir: Option<PathBuf>,
    tcx: bool,
}

impl PacketGuard {
    /// Loads the program and exempts the packet sockets that exist now. Attaches nothing.
    pub(crate) fn load(ebpf: &mut Ebpf, pin_dir: Option<PathBuf>) -> Result<Self, EbpfError> {
        program(ebpf)?
            .load()
            .map_err(|e| EbpfError::program(PROGRAM, "load", e))?;
        exempt_existing_packet_sockets(ebpf)?;
        let tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        Ok(PacketGuard {
            guarded: BTreeMap::new(),
            pin_dir,
            tcx,
        })
    }

    /// Attaches the guard to every interface (but loopback) that does not have it yet
    /// and forgets the interfaces that are gone. With `strict`, the first failure is
    /// an error (nothing attached by this call stays); otherwise failures are listed
    /// in the result and the other interfaces are still guarded.
    pub(crate) fn sync(&mut self, ebpf: &mut Ebpf, strict: bool) -> Result<GuardSync, EbpfError> {
        let present = interfaces()?;
        self.guarded.retain(|index, g| {
            let keep = present.get(index) == Some(&g.name);
            if !keep {
                forget(g);
            }
            keep
        });
        let mut report = GuardSync::default();
        let mut new = Vec::new();
        for (index, name) in present {
            if name == "lo" || self.guarded.contains_key(&index) {
                continue;
            }
            match self.attach_interface(ebpf, index, &name) {
                Ok(links) => {
                    new.push(index);
                    self.guarded.insert(
                        index,
                        Guarded {
                            name: name.clone(),
                            links,
                        },
                    );
                    report.attached.push(name);
                }
                // An interface that went away meanwhile (a container's veth
                // on a busy host) needs no guard: not a failure.
                Err(_) if !still_there(index, &name) => {}
                Err(e) if strict => {
                    for index in new {
                        if let Some(mut g) = self.guarded.remove(&index) {
                            forget(&mut g);
                        }
                    }
                    return Err(e);
                }
                Err(e) => report.failed.push((name, e.to_string())),
            }
        }
        Ok(report)
    }

    /// Interfaces guarded now.
    pub(crate) fn interfaces(&self) -> Vec<String> {
        self.guarded.values().map(|g| g.name.clone()).collect()
    }

    fn attach_interface(
        &self,
        ebpf: &mut Ebpf,
        index: u32,
        name: &str,
    ) -> Result<Vec<GuardLink>, EbpfError> {
        let fail = |what: &str, e: String| {
            EbpfError::Config(format!(
                "cannot attach the packet-socket guard to interface {name} ({what}): {e}"
            ))
        };
        if !self.tcx {
            // Before tcx (Linux 6.6) tc programs hang off the clsact qdisc.
            match aya::programs::tc::qdisc_add_clsact(name) {
                Ok(()) => {}
                Err(e) if e.to_string().contains("exists") => {}
                Err(e) => return Err(fail("adding the clsact qdisc", e.to_string())),
            }
        }
        let program = program(ebpf)?;
        let mut links = Vec::with_capacity(2);
        for (side, attach_type) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            let id = program
                .attach(name, attach_type)
                .map_err(|e| fail(side, crate::probe::error_chain(&e)))?;
            let link = program
                .take_link(id)
                .map_err(|e| fail(side, crate::probe::error_chain(&e)))?;
            links.push(self.keep(link, index, side).map_err(|e| fail(side, e))?);
        }
        Ok(links)
    }

    /// In pin mode, pins a tcx link as `<pin dir>/packet_guard_if<ifindex>_<side>`
    /// (bpffs refuses names with a dot)
    /// (replacing a pin of an earlier run); netlink-attached links cannot be pinned
    /// and stay owned.
    fn keep(&self, link: SchedClassifierLink, index: u32, side: &str) -> Result<GuardLink, String> {
        let Some(dir) = &self.pin_dir else {
            return Ok(GuardLink::Owned(link));
        };
        if !self.tcx {
            return Ok(GuardLink::Owned(link));
        }
        let fd = FdLink::try_from(link).map_err(|e| e.to_string())?;
        let path = dir.join(pin_name(index, side));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing the old pin {}: {e}", path.display())),
        }
        fd.pin(&path)
            .map(GuardLink::Pinned)
            .map_err(|e| format!("pinning at {}: {e}", path.display()))
    }

    /// Removes pins of an earlier run for interfaces that are not guarded now.
    pub(crate) fn prune_pins(&self, dir: &Path) -> Result<(), EbpfError> {
        let ours: Vec<String> = self
            .guarded
            .keys()
            .flat_map(|&i| [pin_name(i, "ingress"), pin_name(i, "egress")])
            .collect();
        remove_pins(dir, |name| !ours.iter().any(|o| o == name)).map(drop)
    }

    /// Detaches the guard everywhere (and removes its pins).
    pub(crate) fn detach(&mut self) {
        for g in self.guarded.values_mut() {
            forget(g);
        }
        self.guarded.clear();
    }
}

fn forget(g: &mut Guarded) {
    for link in g.links.drain(..) {
        match link {
            GuardLink::Owned(l) => drop(l),
            GuardLink::Pinned(p) => {
                if let Err(e) = p.unpin() {
                    tracing::warn!(interface = %g.name, "cannot remove a packet-guard pin: {e}");
                }
            }
        }
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, EbpfError> {
    match ebpf.program_mut(PROGRAM) {
        Some(Program::SchedClassifier(p)) => Ok(p),
        Some(_) => Err(EbpfError::Config(format!(
            "program {PROGRAM} has an unexpected type"
        ))),
        None => Err(EbpfError::Config(format!(
            "the object has no program {PROGRAM}"
        ))),
    }
}

/// Writes the cookies of the packet sockets that exist now into `packet_old`. If
/// they cannot be listed (no `CONFIG_PACKET_DIAG`), none is exempt: existing packet
/// sockets of the filtered cgroup are then guarded like new ones (fail closed).
fn exempt_existing_packet_sockets(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let sockets = match netlink::packet_sockets() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot list the existing packet sockets (sock_diag, CONFIG_PACKET_DIAG): {e}; \
                 packet sockets older than egressd in the filtered cgroup are guarded too"
            );
            return Ok(());
        }
    };
    let map = ebpf
        .map_mut("packet_old")
        .ok_or_else(|| EbpfError::Config("the object has no packet_old map".into()))?;
    let mut old: HashMap<&mut aya::maps::MapData, u64, u8> =
        HashMap::try_from(map).map_err(|cause| EbpfError::Map {
            map: "packet_old",
            cause,
        })?;
    let mut kept = 0usize;
    for s in &sockets {
        match old.insert(s.cookie, 1, 0) {
            Ok(()) => kept += 1,
            // Full map: the rest are treated as new, i.e. guarded (fail closed).
            Err(e) => {
                tracing::warn!("packet socket {} not exempted: {e}", s.cookie);
            }
        }
    }
    tracing::debug!(
        existing = sockets.len(),
        exempted = kept,
        "packet sockets before egressd"
    );
    Ok(())
}

/// The interfaces of this network namespace, by index.
fn interfaces() -> Result<BTreeMap<u32, String>, EbpfError> {
    // SAFETY: if_nameindex returns a malloc'd array terminated by a zero entry, or NULL.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(EbpfError::Config(format!(
            "cannot list network interfaces: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut out = BTreeMap::new();
    let mut p = list;
    // SAFETY: walks the array up to its terminating entry; names are NUL-terminated
    // C strings owned by the array, copied before it is freed.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.insert((*p).if_index, name);
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// Whether the interface `index` still exists under `name`.
fn still_there(index: u32, name: &str) -> bool {
    interfaces().is_ok_and(|now| now.get(&index).is_some_and(|n| n == name))
}

/// The pin of one side of one interface.
fn pin_name(index: u32, side: &str) -> String {
    format!("{PIN_PREFIX}{index}_{side}")
}

/// What every guard pin's name starts with.
const PIN_PREFIX: &str = "packet_guard_if";

/// Removes the guard pins (`packet_guard_if*`) in `dir` that `which` selects; returns
/// the paths removed.
pub(crate) fn remove_pins(
    dir: &Path,
    which: impl Fn(&str) -> bool,
) -> Result<Vec<PathBuf>, EbpfError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EbpfError::io("reading pin directory", dir, e)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|n| n.starts_with(PIN_PREFIX) && which(n))
        {
            let path = entry.path();
            if crate::pin::remove_pin(&path)? {
                removed.push(path);
            }
        }
    }
    Ok(removed)
}
