//! Addresses: a path-compressed binary prefix trie, one per family, keyed by
//! the address as an integer (`u32` for IPv4 so its nodes stay small, `u128`
//! for IPv6). Only nodes where prefixes branch or end exist, so a lookup
//! visits at most as many nodes as there are distinct prefix lengths on the
//! address's path.

use super::{Hit, PortQuery, earlier, first};

const NONE: u32 = u32::MAX;

/// An address as an integer, most significant bit first.
pub(crate) trait Key: Copy + Eq + std::fmt::Debug {
    /// Bits in the key (32 or 128).
    const WIDTH: u8;
    /// The top `len` bits of a key.
    fn mask(self, len: u8) -> Self;
    /// Bit `i` (0 = most significant).
    fn bit(self, i: u8) -> usize;
    /// How many leading bits `self` and `other` share (up to `WIDTH`).
    fn common(self, other: Self) -> u8;
    /// The zero key.
    const ZERO: Self;
}

macro_rules! key {
    ($t:ty, $w:expr) => {
        impl Key for $t {
            const WIDTH: u8 = $w;
            const ZERO: Self = 0;
            fn mask(self, len: u8) -> Self {
                if len == 0 {
                    0
                } else {
                    self & (<$t>::MAX << ($w - u32::from(len.min($w))))
                }
            }
            fn bit(self, i: u8) -> usize {
                usize::from((self >> ($w - 1 - u32::from(i))) & 1 == 1)
            }
            fn common(self, other: Self) -> u8 {
                u8::try_from((self ^ other).leading_zeros()).unwrap_or($w)
            }
        }
    };
}
key!(u32, 32);
key!(u128, 128);

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    len: u8,
    child: [u32; 2],
    /// Index into `PrefixTrie::hits`, or `NONE`.
    hits: u32,
}

/// Compiled IP/CIDR rules of one address family.
#[derive(Debug, Clone)]
pub(crate) struct PrefixTrie<K> {
    nodes: Vec<Node<K>>,
    hits: Vec<Vec<Hit>>,
}

impl<K: Key> Default for PrefixTrie<K> {
    fn default() -> Self {
        PrefixTrie::new()
    }
}

impl<K: Key> PrefixTrie<K> {
    /// An empty trie.
    pub(crate) fn new() -> Self {
        PrefixTrie {
            nodes: vec![Node {
                key: K::ZERO,
                len: 0,
                child: [NONE; 2],
                hits: NONE,
            }],
            hits: Vec::new(),
        }
    }

    fn node(&mut self, key: K, len: u8) -> u32 {
        let index = u32::try_from(self.nodes.len()).unwrap_or(NONE);
        self.nodes.push(Node {
            key: key.mask(len),
            len,
            child: [NONE; 2],
            hits: NONE,
        });
        index
    }

    fn attach(&mut self, node: u32, hit: Hit) {
        let n = &mut self.nodes[node as usize];
        if n.hits == NONE {
            n.hits = u32::try_from(self.hits.len()).unwrap_or(NONE);
            self.hits.push(Vec::new());
        }
        let slot = n.hits as usize;
        self.hits[slot].push(hit);
    }

    /// Add a rule for `key/len` (host bits ignored). Rules must be added in
    /// policy order.
    pub(crate) fn insert(&mut self, key: K, len: u8, hit: Hit) {
        let len = len.min(K::WIDTH);
        let key = key.mask(len);
        let mut cur = 0u32;
        loop {
            let (cur_len, b) = {
                let n = &self.nodes[cur as usize];
                (n.len, if n.len < len { key.bit(n.len) } else { 0 })
            };
            if cur_len == len {
                self.attach(cur, hit);
                return;
            }
            let child = self.nodes[cur as usize].child[b];
            if child == NONE {
                let leaf = self.node(key, len);
                self.attach(leaf, hit);
                self.nodes[cur as usize].child[b] = leaf;
                return;
            }
            let (c_key, c_len) = {
                let c = &self.nodes[child as usize];
                (c.key, c.len)
            };
            let common = key.common(c_key).min(len.min(c_len));
            if common == c_len {
                cur = child;
                continue;
            }
            // The child's prefix and ours part ways (or ours ends) at `common`.
            let mid = self.node(key, common);
            self.nodes[mid as usize].child[c_key.bit(common)] = child;
            self.nodes[cur as usize].child[b] = mid;
            if common == len {
                self.attach(mid, hit);
            } else {
                let leaf = self.node(key, len);
                self.attach(leaf, hit);
                self.nodes[mid as usize].child[key.bit(common)] = leaf;
            }
            return;
        }
    }

    /// The first rule (policy order) whose prefix, at least `min_len` long,
    /// covers `addr` and whose ports cover the query.
    pub(crate) fn lookup(&self, addr: K, q: PortQuery, min_len: u8) -> Option<&Hit> {
        if self.hits.is_empty() {
            return None;
        }
        let mut best = None;
        let mut cur = 0u32;
        loop {
            let n = &self.nodes[cur as usize];
            if addr.common(n.key) < n.len {
                return best;
            }
            if n.hits != NONE && n.len >= min_len {
                best = earlier(best, first(&self.hits[n.hits as usize], q));
            }
            if n.len >= K::WIDTH {
                return best;
            }
            let next = n.child[addr.bit(n.len)];
            if next == NONE {
                return best;
            }
            cur = next;
        }
    }
}

#[cfg(test)]
mod tests;
