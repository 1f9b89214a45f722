//! Addresses: a path-compressed binary prefix trie, one per family, keyed by
//! the address as an integer (`u32` for IPv4 so its nodes stay small, `u128`
//! for IPv6), with a direct-indexed first level in front of it.
//!
//! The trie alone visits one node per branching bit, about log2(rules) nodes
//! at 10,000 rules, each a dependent load. The index cuts that walk: every
//! prefix shares the top `base_len` bits (`base`), and the next `bits` bits
//! of an address pick an entry holding (a) the hit-bearing nodes shorter than
//! the indexed depth that cover the whole entry, and (b) the first trie node
//! at or below that depth, where the ordinary walk resumes. `bits` grows with
//! the number of prefixes (about two entries per prefix, at most 2^16), so a
//! lookup reads one entry and then, typically, one or two nodes.
//!
//! The index is kept exact on every insert: an insert changes the trie only
//! inside the inserted prefix's block, so only the entries overlapping it are
//! recomputed; when the shared top bits shrink or the entry count should grow,
//! the whole index is rebuilt (amortised by doubling).

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
    /// `count` bits starting at bit `from` (0 = most significant), as an
    /// index; `from + count <= WIDTH`.
    fn field(self, from: u8, count: u8) -> usize;
    /// `base` with `index` written into the `count` bits below its top
    /// `from` bits; `from + count <= WIDTH`.
    fn with_field(self, from: u8, count: u8, index: usize) -> Self;
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
            fn field(self, from: u8, count: u8) -> usize {
                if count == 0 {
                    0
                } else {
                    // At most 16 bits survive the shifts, so the cast is exact.
                    ((self << u32::from(from)) >> ($w - u32::from(count))) as usize
                }
            }
            fn with_field(self, from: u8, count: u8, index: usize) -> Self {
                if count == 0 {
                    self
                } else {
                    self | ((index as $t) << ($w - u32::from(from) - u32::from(count)))
                }
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

/// The most index bits (2^16 entries of 12 bytes).
const MAX_BITS: u8 = 16;

/// One block of `bits` bits below `base`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The first node at or below the indexed depth inside the block, or `NONE`.
    start: u32,
    /// Where this block's covering shorter hit nodes sit in `Index::shorts`.
    shorts_at: u32,
    shorts_len: u32,
}

const EMPTY: Entry = Entry {
    start: NONE,
    shorts_at: 0,
    shorts_len: 0,
};

/// The first level of a trie (see the module documentation).
#[derive(Debug, Clone)]
struct Index<K> {
    /// Every prefix in the trie is at least `base_len` long and starts with
    /// the top `base_len` bits of `base` (the other bits are zero).
    base: K,
    base_len: u8,
    /// Bits after `base_len` that pick an entry; `base_len + bits <= WIDTH`.
    bits: u8,
    entries: Vec<Entry>,
    /// Hit nodes (trie indices), in runs named by the entries, each run
    /// sorted by the order of its nodes' first rules. Recomputed
    /// entries append new runs; `live` counts the ones still referenced so
    /// the garbage can be dropped by a rebuild.
    shorts: Vec<u32>,
    live: usize,
}

/// Compiled IP/CIDR rules of one address family.
#[derive(Debug, Clone)]
pub(crate) struct PrefixTrie<K> {
    nodes: Vec<Node<K>>,
    hits: Vec<Vec<Hit>>,
    /// `None` until the first insert.
    index: Option<Index<K>>,
}

impl<K: Key> Default for PrefixTrie<K> {
    fn default() -> Self {
        PrefixTrie::new()
    }
}

/// Index bits for `n` hit-bearing prefixes: about two entries per prefix.
fn wanted_bits(n: usize) -> u8 {
    let log = usize::BITS - n.max(1).leading_zeros();
    u8::try_from(log + 1).unwrap_or(MAX_BITS).min(MAX_BITS)
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
            index: None,
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
        self.insert_node(key, len, hit);
        self.reindex(key, len);
    }

    fn insert_node(&mut self, key: K, len: u8, hit: Hit) {
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

    /// Bring the index up to date after `key/len` was inserted: the trie
    /// changed only inside that block, so only the entries overlapping it
    /// can differ, unless the shape of the index itself has to change.
    fn reindex(&mut self, key: K, len: u8) {
        let wanted = wanted_bits(self.hits.len());
        let (base, base_len) = match &self.index {
            None => (key, len),
            Some(ix) => {
                let base_len = ix.base_len.min(len).min(key.common(ix.base));
                (ix.base.mask(base_len), base_len)
            }
        };
        let bits = wanted.min(K::WIDTH - base_len);
        let rebuild = match &self.index {
            None => true,
            Some(ix) => {
                ix.base_len != base_len || ix.bits != bits || ix.shorts.len() > 4 * ix.live + 1024
            }
        };
        if rebuild {
            self.rebuild(base, base_len, bits);
            return;
        }
        let Some(ix) = &self.index else { return };
        let depth = ix.base_len + ix.bits;
        let (first, count) = if len >= depth {
            (key.field(ix.base_len, ix.bits), 1)
        } else {
            (
                key.field(ix.base_len, len - ix.base_len) << (depth - len),
                1usize << (depth - len),
            )
        };
        for i in first..first + count {
            self.recompute(i);
        }
    }

    fn rebuild(&mut self, base: K, base_len: u8, bits: u8) {
        self.index = Some(Index {
            base,
            base_len,
            bits,
            entries: vec![EMPTY; 1usize << bits],
            shorts: Vec::new(),
            live: 0,
        });
        for i in 0..1usize << bits {
            self.recompute(i);
        }
    }

    /// Recompute entry `i` by walking the trie down to the indexed depth.
    fn recompute(&mut self, i: usize) {
        let Some(ix) = &mut self.index else { return };
        let depth = ix.base_len + ix.bits;
        let block = ix.base.with_field(ix.base_len, ix.bits, i);
        let old = ix.entries[i];
        ix.live -= old.shorts_len as usize;
        let at = ix.shorts.len();
        let mut start = NONE;
        let mut cur = 0u32;
        loop {
            let n = &self.nodes[cur as usize];
            if n.len >= depth {
                if n.key.mask(depth) == block {
                    start = cur;
                }
                break;
            }
            if block.mask(n.len) != n.key {
                break;
            }
            if n.hits != NONE {
                ix.shorts.push(cur);
            }
            let next = n.child[block.bit(n.len)];
            if next == NONE {
                break;
            }
            cur = next;
        }
        // Earliest first rule first, so a lookup can stop at the first node
        // whose rules all come after the best hit so far.
        ix.shorts[at..].sort_unstable_by_key(|&s| {
            let n = &self.nodes[s as usize];
            self.hits[n.hits as usize]
                .first()
                .map_or(u32::MAX, |h| h.order)
        });
        let run = ix.shorts.len() - at;
        // An unchanged run is reused rather than left behind as garbage.
        let (shorts_at, shorts_len) =
            if ix.shorts[at..] == ix.shorts[old.shorts_at as usize..][..old.shorts_len as usize] {
                ix.shorts.truncate(at);
                (old.shorts_at, old.shorts_len)
            } else {
                (
                    u32::try_from(at).unwrap_or(NONE),
                    u32::try_from(run).unwrap_or(0),
                )
            };
        ix.live += shorts_len as usize;
        ix.entries[i] = Entry {
            start,
            shorts_at,
            shorts_len,
        };
    }

    /// The first rule (policy order) whose prefix, at least `min_len` long,
    /// covers `addr` and whose ports cover the query.
    pub(crate) fn lookup(&self, addr: K, q: PortQuery, min_len: u8) -> Option<&Hit> {
        let ix = self.index.as_ref()?;
        if addr.mask(ix.base_len) != ix.base {
            return None;
        }
        let e = ix.entries[addr.field(ix.base_len, ix.bits)];
        let mut best: Option<&Hit> = None;
        let shorts = &ix.shorts[e.shorts_at as usize..][..e.shorts_len as usize];
        for &s in shorts {
            let n = &self.nodes[s as usize];
            let hits = &self.hits[n.hits as usize];
            if let (Some(b), Some(h)) = (best, hits.first())
                && b.order < h.order
            {
                break;
            }
            if n.len >= min_len {
                best = earlier(best, first(hits, q));
            }
        }
        let mut cur = e.start;
        while cur != NONE {
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
            cur = n.child[addr.bit(n.len)];
        }
        best
    }
}

#[cfg(test)]
mod tests;
