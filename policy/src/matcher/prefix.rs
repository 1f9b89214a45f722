//! Addresses: a path-compressed binary prefix trie (one per family). Keys are
//! left-aligned in a `u128` (IPv4 shifted up by 96 bits). Only nodes where
//! prefixes branch or end exist, so a lookup visits at most as many nodes as
//! there are distinct prefix lengths on the address's path.

use super::{Hit, PortQuery, earlier, first};

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    key: u128,
    len: u8,
    child: [u32; 2],
    /// Index into `PrefixTrie::hits`, or `NONE`.
    hits: u32,
}

/// Compiled IP/CIDR rules of one address family.
#[derive(Debug, Clone)]
pub(crate) struct PrefixTrie {
    width: u8,
    nodes: Vec<Node>,
    hits: Vec<Vec<Hit>>,
}

impl Default for PrefixTrie {
    fn default() -> Self {
        PrefixTrie::new(128)
    }
}

/// The top `len` bits of a key.
fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// Bit `i` (0 = most significant) of a key.
fn bit(key: u128, i: u8) -> usize {
    usize::from((key >> (127 - u32::from(i))) & 1 == 1)
}

fn common_len(a: u128, b: u128, max: u8) -> u8 {
    let same = u8::try_from((a ^ b).leading_zeros()).unwrap_or(128);
    same.min(max)
}

impl PrefixTrie {
    /// An empty trie for keys of `width` bits (32 or 128).
    pub(crate) fn new(width: u8) -> Self {
        PrefixTrie {
            width,
            nodes: vec![Node {
                key: 0,
                len: 0,
                child: [NONE; 2],
                hits: NONE,
            }],
            hits: Vec::new(),
        }
    }

    fn node(&mut self, key: u128, len: u8) -> u32 {
        let index = u32::try_from(self.nodes.len()).unwrap_or(NONE);
        self.nodes.push(Node {
            key: key & mask(len),
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

    /// Add a rule for `key/len` (left-aligned, host bits zero). Rules must be
    /// added in policy order.
    pub(crate) fn insert(&mut self, key: u128, len: u8, hit: Hit) {
        let len = len.min(self.width);
        let key = key & mask(len);
        let mut cur = 0u32;
        loop {
            let (cur_len, b) = {
                let n = &self.nodes[cur as usize];
                (n.len, if n.len < len { bit(key, n.len) } else { 0 })
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
            let common = common_len(key, c_key, len.min(c_len));
            if common == c_len {
                cur = child;
                continue;
            }
            // The child's prefix and ours part ways (or ours ends) at `common`.
            let mid = self.node(key, common);
            self.nodes[mid as usize].child[bit(c_key, common)] = child;
            self.nodes[cur as usize].child[b] = mid;
            if common == len {
                self.attach(mid, hit);
            } else {
                let leaf = self.node(key, len);
                self.attach(leaf, hit);
                self.nodes[mid as usize].child[bit(key, common)] = leaf;
            }
            return;
        }
    }

    /// The first rule (policy order) whose prefix, at least `min_len` long,
    /// covers `addr` and whose ports cover the query.
    pub(crate) fn lookup(&self, addr: u128, q: PortQuery, min_len: u8) -> Option<&Hit> {
        if self.hits.is_empty() {
            return None;
        }
        let mut best = None;
        let mut cur = 0u32;
        loop {
            let n = &self.nodes[cur as usize];
            if (addr ^ n.key) & mask(n.len) != 0 {
                return best;
            }
            if n.hits != NONE && n.len >= min_len {
                best = earlier(best, first(&self.hits[n.hits as usize], q));
            }
            if n.len >= self.width {
                return best;
            }
            let next = n.child[bit(addr, n.len)];
            if next == NONE {
                return best;
            }
            cur = next;
        }
    }
}

#[cfg(test)]
mod tests;
