//! What the DNS server's answers taught us: name -> addresses and address ->
//! names, each binding kept for its TTL (raised to a floor, capped) plus a
//! grace period, then really removed by [`DnsMemory::purge`]. Also the CNAME
//! targets reached from an allowed name, so that a resolver following the
//! chain itself may ask for them.
//!
//! Reads are on the TCP hot path (`binds`, `names_for`): lock-free maps
//! (papaya), no global lock; a read allocates only the returned names.
//! Names are stored lowercase without a trailing dot; IPv4-mapped IPv6
//! addresses are stored and looked up as IPv4.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egressd_policy::Resolutions;

/// Default floor under short TTLs: long-lived connections and clients that
/// cache answers longer than told (JVMs) keep working.
pub const DEFAULT_TTL_FLOOR: Duration = Duration::from_secs(60);
/// Default grace after the (floored) TTL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// No answer is believed for longer than this, whatever its TTL says.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Addresses kept per name (the latest-expiring win): bounds what one
/// round-robin name can make us hold.
const MAX_IPS_PER_NAME: usize = 64;
/// Names kept per address (a CDN address serves many names): the
/// latest-expiring win. A list holds up to twice as many (older entries
/// are dropped in one go, see [`NameList`]); readers see at most this many.
const MAX_NAMES_PER_IP: usize = 32;
/// Names (and, separately, addresses) held at most. A job asking for new
/// allowed names as fast as it can (a wildcard rule makes that easy) would
/// otherwise grow the memory without bound until the purge catches up; at
/// the cap new names are not remembered until a purge makes room. That fails
/// closed: a connection by address only to such a name is not recognised,
/// while a connection naming its host is still checked against egressd's own
/// resolver.
pub const DEFAULT_MAX_NAMES: usize = 100_000;

/// One remembered binding: the other side and when it stops counting.
#[derive(Debug, Clone)]
struct Binding<T> {
    value: T,
    expires: Instant,
}

type Bindings<T> = Box<[Binding<T>]>;

/// The names one address was given for, newest first, as a persistent
/// list: a new name is one node in front of the old list, which it shares,
/// so a popular address (a CDN's) that gets a new name per answer costs one
/// allocation instead of a copy of all its names (copying meant an atomic
/// increment and, later, decrement per name per answer). When a list grows
/// past twice [`MAX_NAMES_PER_IP`] it is rebuilt with the latest-expiring
/// ones, once per that many new names. A name may appear more than once
/// (each answer adds a node); readers keep its latest expiry.
#[derive(Debug)]
struct NameList {
    name: Binding<Arc<str>>,
    /// Nodes in this list, this one included.
    len: usize,
    rest: Option<Arc<NameList>>,
}

impl NameList {
    fn iter(self: &Arc<Self>) -> impl Iterator<Item = &Binding<Arc<str>>> {
        std::iter::successors(Some(self), |n| n.rest.as_ref()).map(|n| &n.name)
    }

    /// Whether `name` is among the [`RECENT`](Self::RECENT) newest nodes
    /// with an expiry at least `expires` (then adding it again changes
    /// nothing). Only the newest are looked at: each node is a pointer to
    /// chase, and a name asked again is usually one of the last ones; one
    /// found further down is added again, which readers and rebuilds absorb.
    fn holds(self: &Arc<Self>, name: &Arc<str>, expires: Instant) -> bool {
        self.iter()
            .take(Self::RECENT)
            .any(|b| b.expires >= expires && (Arc::ptr_eq(&b.value, name) || b.value == *name))
    }

    const RECENT: usize = 4;

    /// `old` with `name` in front, rebuilt when that makes it too long.
    fn push(old: Option<&Arc<Self>>, name: Binding<Arc<str>>, now: Instant) -> Arc<Self> {
        let len = old.map_or(0, |o| o.len) + 1;
        let list = Arc::new(NameList {
            name,
            len,
            rest: old.cloned(),
        });
        if len > 2 * MAX_NAMES_PER_IP {
            NameList::build(&NameList::live(&list, now)).unwrap_or(list)
        } else {
            list
        }
    }

    /// The distinct names still fresh at `now`, each with its latest
    /// expiry, the latest-expiring first, at most [`MAX_NAMES_PER_IP`].
    fn live(self: &Arc<Self>, now: Instant) -> Vec<Binding<Arc<str>>> {
        let mut out: Vec<Binding<Arc<str>>> = Vec::new();
        for b in self.iter().filter(|b| b.expires > now) {
            keep_latest(&mut out, b);
        }
        out.sort_by_key(|b| std::cmp::Reverse(b.expires));
        out.truncate(MAX_NAMES_PER_IP);
        out
    }

    /// A list of `names` in that order; `None` when there are none.
    fn build(names: &[Binding<Arc<str>>]) -> Option<Arc<Self>> {
        names.iter().rev().fold(None, |rest, b| {
            Some(Arc::new(NameList {
                name: b.clone(),
                len: rest.as_ref().map_or(0, |r: &Arc<NameList>| r.len) + 1,
                rest,
            }))
        })
    }
}

impl Drop for NameList {
    /// Unlinks the tail node by node: a long list must not drop recursively.
    fn drop(&mut self) {
        let mut next = self.rest.take();
        while let Some(node) = next {
            next = match Arc::try_unwrap(node) {
                Ok(mut n) => n.rest.take(),
                Err(_) => None,
            };
        }
    }
}

/// Name <-> address memory of DNS answers. See the module documentation.
pub struct DnsMemory {
    ttl_floor: Duration,
    grace: Duration,
    by_name: papaya::HashMap<Arc<str>, Bindings<IpAddr>>,
    by_ip: papaya::HashMap<IpAddr, Arc<NameList>>,
    /// CNAME target -> the allowed name whose answer led there.
    aliases: papaya::HashMap<Arc<str>, Binding<Arc<str>>>,
    /// See [`DEFAULT_MAX_NAMES`].
    max_names: usize,
    /// The cap was hit since the last purge (logged once per purge period).
    full: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for DnsMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsMemory")
            .field("ttl_floor", &self.ttl_floor)
            .field("grace", &self.grace)
            .field("names", &self.by_name.len())
            .field("ips", &self.by_ip.len())
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl Default for DnsMemory {
    fn default() -> Self {
        DnsMemory::new()
    }
}

impl DnsMemory {
    /// A memory with the default floor ([`DEFAULT_TTL_FLOOR`]) and grace
    /// ([`DEFAULT_GRACE`]).
    pub fn new() -> Self {
        DnsMemory::with_timing(DEFAULT_TTL_FLOOR, DEFAULT_GRACE)
    }

    /// A memory that keeps each binding for `max(ttl, ttl_floor)` (at most
    /// [`MAX_TTL`]) plus `grace`. The name and address tables are sized for
    /// [`DEFAULT_MAX_NAMES`] from the start: a table that doubles as it
    /// fills copies every entry (and misses the cache on each) at every
    /// step, on the path of DNS answers. What that costs up front is the
    /// tables' slot metadata (a byte a slot); the slots' pages are touched
    /// only as they fill.
    pub fn with_timing(ttl_floor: Duration, grace: Duration) -> Self {
        DnsMemory {
            ttl_floor,
            grace,
            by_name: papaya::HashMap::with_capacity(DEFAULT_MAX_NAMES),
            by_ip: papaya::HashMap::with_capacity(DEFAULT_MAX_NAMES),
            aliases: papaya::HashMap::new(),
            max_names: DEFAULT_MAX_NAMES,
            full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The same memory holding at most `max` names and `max` addresses.
    #[must_use]
    pub fn with_max_names(mut self, max: usize) -> Self {
        self.max_names = max;
        if max < DEFAULT_MAX_NAMES {
            self.by_name = papaya::HashMap::with_capacity(max);
            self.by_ip = papaya::HashMap::with_capacity(max);
        }
        self
    }

    /// True (and logged once per purge period) when nothing more may be
    /// remembered for `name`: it is new and the names are at the cap, or the
    /// addresses are.
    fn is_full_for(&self, name: &str) -> bool {
        let full = (self.by_name.len() >= self.max_names && !self.by_name.pin().contains_key(name))
            || self.by_ip.len() >= self.max_names;
        // Read before written: while full, every answer comes here, and a
        // swap would write the flag's cache line each time.
        if full
            && !self.full.load(std::sync::atomic::Ordering::Relaxed)
            && !self.full.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                max = self.max_names,
                "DNS memory full: new names are not remembered until stale ones are purged"
            );
        }
        full
    }

    fn expiry(&self, ttl: Duration, now: Instant) -> Instant {
        now + ttl.max(self.ttl_floor).min(MAX_TTL) + self.grace
    }

    /// Remember that `name` was answered with `ips` for `ttl` at `now`.
    pub fn remember(&self, name: &str, ips: &[IpAddr], ttl: Duration, now: Instant) {
        if ips.is_empty() {
            return;
        }
        let Some(name) = normalise(name) else { return };
        if self.is_full_for(&name) {
            return;
        }
        let name: Arc<str> = Arc::from(name.as_ref());
        let expires = self.expiry(ttl, now);
        let fresh: Vec<Binding<IpAddr>> = ips
            .iter()
            .map(|ip| Binding {
                value: canonical(*ip),
                expires,
            })
            .collect();
        let by_name = self.by_name.pin();
        by_name.update_or_insert_with(
            Arc::clone(&name),
            |old| merge(old, &fresh, now, MAX_IPS_PER_NAME),
            || merge(&[], &fresh, now, MAX_IPS_PER_NAME),
        );
        let by_ip = self.by_ip.pin();
        for b in &fresh {
            if by_ip.get(&b.value).is_some_and(|l| l.holds(&name, expires)) {
                continue;
            }
            let one = || Binding {
                value: Arc::clone(&name),
                expires,
            };
            by_ip.update_or_insert_with(
                b.value,
                |old| NameList::push(Some(old), one(), now),
                || NameList::push(None, one(), now),
            );
        }
    }

    /// Remember that `target` is a CNAME target reached from the allowed
    /// name `origin`, for `ttl` at `now`.
    pub fn remember_alias(&self, target: &str, origin: &str, ttl: Duration, now: Instant) {
        let (Some(target), Some(origin)) = (normalise(target), normalise(origin)) else {
            return;
        };
        if target == origin {
            return;
        }
        if self.aliases.len() >= self.max_names && !self.aliases.pin().contains_key(target.as_ref())
        {
            return;
        }
        // A target reached from an alias keeps the first allowed name.
        let origin: Arc<str> = match self.alias_origin(&origin, now) {
            Some(first) => first,
            None => Arc::from(origin.as_ref()),
        };
        let expires = self.expiry(ttl, now);
        self.aliases.pin().insert(
            Arc::from(target.as_ref()),
            Binding {
                value: origin,
                expires,
            },
        );
    }

    /// The allowed name whose answer led, through CNAMEs, to `name`, if that
    /// is still fresh.
    pub fn alias_origin(&self, name: &str, now: Instant) -> Option<Arc<str>> {
        let name = normalise(name)?;
        let aliases = self.aliases.pin();
        let b = aliases.get(name.as_ref())?;
        (b.expires > now).then(|| Arc::clone(&b.value))
    }

    /// Whether `name` was answered with `ip` and that is still fresh at `now`.
    pub fn binds_at(&self, name: &str, ip: IpAddr, now: Instant) -> bool {
        let Some(name) = normalise(name) else {
            return false;
        };
        let ip = canonical(ip);
        let by_name = self.by_name.pin();
        by_name
            .get(name.as_ref())
            .is_some_and(|bs| bs.iter().any(|b| b.value == ip && b.expires > now))
    }

    /// [`binds_at`](Self::binds_at) now.
    pub fn binds(&self, name: &str, ip: IpAddr) -> bool {
        self.binds_at(name, ip, Instant::now())
    }

    /// The names answered with `ip` that are still fresh at `now`, the
    /// latest-expiring first.
    pub fn names_at(&self, ip: IpAddr, now: Instant) -> Vec<Arc<str>> {
        let by_ip = self.by_ip.pin();
        let Some(list) = by_ip.get(&canonical(ip)) else {
            return Vec::new();
        };
        list.live(now).into_iter().map(|b| b.value).collect()
    }

    /// [`names_at`](Self::names_at) now, as owned strings.
    pub fn names_for(&self, ip: IpAddr) -> Vec<String> {
        self.names_at(ip, Instant::now())
            .into_iter()
            .map(|n| n.as_ref().to_owned())
            .collect()
    }

    /// Really remove every binding that is stale at `now`.
    pub fn purge(&self, now: Instant) {
        prune(&self.by_name, now);
        prune(&self.by_ip, now);
        self.aliases.pin().retain(|_, b| b.expires > now);
        self.full.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many names, addresses and aliases are held (stale ones included
    /// until the next purge).
    pub fn len(&self) -> (usize, usize, usize) {
        (self.by_name.len(), self.by_ip.len(), self.aliases.len())
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0, 0)
    }

    /// The memory seen at a fixed instant, as the policy's [`Resolutions`].
    pub fn at(&self, now: Instant) -> At<'_> {
        At { memory: self, now }
    }
}

/// [`DnsMemory`] read at a fixed instant (what the policy asks through
/// [`Resolutions`]).
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    memory: &'a DnsMemory,
    now: Instant,
}

impl Resolutions for At<'_> {
    fn binds(&self, name: &str, ip: IpAddr) -> bool {
        self.memory.binds_at(name, ip, self.now)
    }
}

impl Resolutions for DnsMemory {
    fn binds(&self, name: &str, ip: IpAddr) -> bool {
        self.binds_at(name, ip, Instant::now())
    }
}

/// Old bindings still fresh at `now` plus `fresh` (a value present in both
/// keeps the later expiry), at most `cap`, the latest-expiring kept.
/// `old` holds each value once (every stored list comes from here), so only
/// the fresh bindings are looked up: one popular address (a CDN's, or
/// loopback in a test) gets a new name per answer, and comparing every pair
/// of its names was most of the cost of remembering.
fn merge<T: Clone + PartialEq>(
    old: &[Binding<T>],
    fresh: &[Binding<T>],
    now: Instant,
    cap: usize,
) -> Bindings<T> {
    let mut out: Vec<Binding<T>> = Vec::with_capacity(old.len() + fresh.len());
    out.extend(old.iter().filter(|b| b.expires > now).cloned());
    for b in fresh.iter().filter(|b| b.expires > now) {
        keep_latest(&mut out, b);
    }
    if out.len() == cap + 1 {
        // The common case at the cap: one binding in, the earliest out (of
        // equals, the latest added, as the sort below would).
        if let Some(earliest) = out
            .iter()
            .enumerate()
            .rev()
            .min_by_key(|(_, b)| b.expires)
            .map(|(i, _)| i)
        {
            out.swap_remove(earliest);
        }
    } else if out.len() > cap {
        out.sort_by_key(|b| std::cmp::Reverse(b.expires));
        out.truncate(cap);
    }
    out.into_boxed_slice()
}

/// What [`DnsMemory::purge`] needs of a stored value: how many of its
/// entries are fresh at `now` (and of how many), and a copy of it with only
/// those (`None` when none is left).
trait Expiring: Sized {
    fn fresh_of(&self, now: Instant) -> (usize, usize);
    fn only_fresh(&self, now: Instant) -> Option<Self>;
}

impl<T: Clone> Expiring for Bindings<T> {
    fn fresh_of(&self, now: Instant) -> (usize, usize) {
        (self.iter().filter(|b| b.expires > now).count(), self.len())
    }

    fn only_fresh(&self, now: Instant) -> Option<Self> {
        let fresh: Bindings<T> = self.iter().filter(|b| b.expires > now).cloned().collect();
        (!fresh.is_empty()).then_some(fresh)
    }
}

impl Expiring for Arc<NameList> {
    fn fresh_of(&self, now: Instant) -> (usize, usize) {
        (self.iter().filter(|b| b.expires > now).count(), self.len)
    }

    fn only_fresh(&self, now: Instant) -> Option<Self> {
        NameList::build(&self.live(now))
    }
}

/// Remove the entries of `map` with nothing fresh at `now`, and rebuild
/// those with something stale.
fn prune<K, V>(map: &papaya::HashMap<K, V>, now: Instant)
where
    K: std::hash::Hash + Eq + Clone,
    V: Expiring,
{
    let pinned = map.pin();
    let mut partly: Vec<K> = Vec::new();
    pinned.retain(|k, v| {
        let (fresh, of) = v.fresh_of(now);
        if fresh > 0 && fresh < of {
            partly.push(k.clone());
        }
        fresh > 0
    });
    for k in partly {
        pinned.compute(k, |entry| match entry {
            Some((_, v)) => match v.only_fresh(now) {
                Some(fresh) => papaya::Operation::Insert(fresh),
                None => papaya::Operation::Remove,
            },
            None => papaya::Operation::Abort(()),
        });
    }
}

/// `b` into `out`: a value already there keeps the later expiry, a new one
/// is added.
fn keep_latest<T: Clone + PartialEq>(out: &mut Vec<Binding<T>>, b: &Binding<T>) {
    match out.iter_mut().find(|o| o.value == b.value) {
        Some(o) => o.expires = o.expires.max(b.expires),
        None => out.push(b.clone()),
    }
}

/// Lowercase, one trailing dot removed; borrowed when already so. `None`
/// for the empty (root) name.
pub(crate) fn normalise(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(if name.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(name.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(name)
    })
}

/// An IPv4-mapped IPv6 address is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}
