//! Names: a hashed label walk. Every distinct exact name and wildcard suffix
//! (`*.example.com` is stored as `example.com`) is one entry of a single
//! open-addressing table, keyed by a hash built label by label from the
//! right. A lookup walks the name's labels once, from the right: after each
//! label the running hash is the hash of that suffix, so each proper suffix
//! at a depth some wildcard has is probed without hashing it again, and the
//! hash of the whole name (for the exact rules) comes last. The apex never
//! matches its own wildcard because only proper suffixes probe `below`.

use super::{Hit, PortQuery, earlier, first};

/// The rules of one distinct name or suffix.
#[derive(Debug, Clone)]
struct Entry {
    hash: u64,
    name: Box<str>,
    /// Rules for exactly this name, in policy order.
    exact: Vec<Hit>,
    /// Rules for `*.name`, in policy order.
    below: Vec<Hit>,
}

/// Compiled host name rules of one list.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameTable {
    entries: Vec<Entry>,
    /// Linear probing; `entries` index + 1, 0 for an empty slot. A power of
    /// two long and at most half full, so every probe meets an empty slot.
    slots: Vec<u32>,
    /// True once some exact rule exists (the walk must then reach the apex).
    has_exact: bool,
    /// Bit `n` is set when some wildcard suffix has `n` labels (63 = "63 or more").
    below_depths: u64,
}

fn depth_bit(labels: usize) -> u64 {
    1u64 << labels.min(63)
}

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const WORD: u64 = 0x9e37_79b9_7f4a_7c15;
const LABEL: u64 = 0xa076_1d64_78bd_642f;

/// Multiply and fold the halves: one well-mixed step.
fn fold(a: u64, k: u64) -> u64 {
    let m = u128::from(a) * u128::from(k);
    (m as u64) ^ ((m >> 64) as u64)
}

/// The hash of a suffix extended by one more label on the left. Labels are
/// read a word at a time; the length tells "ab" from "ab\0".
fn push_label(h: u64, label: &[u8]) -> u64 {
    let mut h = h;
    let mut words = label.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = fold(h ^ u64::from_le_bytes(b), WORD);
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = fold(h ^ u64::from_le_bytes(b), WORD);
    }
    fold(h ^ label.len() as u64, LABEL)
}

/// Where the last label of `bytes[..end]` starts.
fn label_start(bytes: &[u8], end: usize) -> usize {
    bytes[..end]
        .iter()
        .rposition(|&b| b == b'.')
        .map_or(0, |dot| dot + 1)
}

/// The hash of a whole name (or suffix), as the walk computes it.
fn hash(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut h = SEED;
    let mut end = bytes.len();
    loop {
        let start = label_start(bytes, end);
        h = push_label(h, &bytes[start..end]);
        if start == 0 {
            return h;
        }
        end = start - 1;
    }
}

impl NameTable {
    /// Add an exact-name rule. Rules must be added in policy order.
    pub(crate) fn add_exact(&mut self, name: &str, hit: Hit) {
        self.has_exact = true;
        self.entry(name).exact.push(hit);
    }

    /// Add a wildcard rule for `*.suffix`. Rules must be added in policy order.
    pub(crate) fn add_below(&mut self, suffix: &str, hit: Hit) {
        self.below_depths |= depth_bit(suffix.split('.').count());
        self.entry(suffix).below.push(hit);
    }

    fn entry(&mut self, name: &str) -> &mut Entry {
        let h = hash(name);
        let index = match self.find(h, name) {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    hash: h,
                    name: name.into(),
                    exact: Vec::new(),
                    below: Vec::new(),
                });
                if self.entries.len() * 2 > self.slots.len() {
                    self.grow();
                } else {
                    self.place(self.entries.len() - 1);
                }
                self.entries.len() - 1
            }
        };
        &mut self.entries[index]
    }

    fn grow(&mut self) {
        let len = (self.entries.len() * 4).next_power_of_two().max(8);
        self.slots = vec![0; len];
        for i in 0..self.entries.len() {
            self.place(i);
        }
    }

    fn place(&mut self, i: usize) {
        let mask = self.slots.len() - 1;
        let mut s = self.entries[i].hash as usize & mask;
        while self.slots[s] != 0 {
            s = (s + 1) & mask;
        }
        self.slots[s] = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }

    /// The entry for `name`, whose hash is `h`.
    fn find(&self, h: u64, name: &str) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut s = h as usize & mask;
        loop {
            let slot = self.slots[s] as usize;
            let e = self.entries.get(slot.checked_sub(1)?)?;
            if e.hash == h && *e.name == *name {
                return Some(slot - 1);
            }
            s = (s + 1) & mask;
        }
    }

    /// The first rule matching a normalised name under the port query.
    pub(crate) fn lookup(&self, name: &str, q: PortQuery) -> Option<&Hit> {
        if self.entries.is_empty() {
            return None;
        }
        // Past the deepest wildcard suffix only the whole name can still
        // match, and only if there are exact rules.
        let deepest = 63usize.saturating_sub(self.below_depths.leading_zeros() as usize);
        let bytes = name.as_bytes();
        let mut best = None;
        let mut h = SEED;
        let mut end = bytes.len();
        let mut labels = 0usize;
        loop {
            let start = label_start(bytes, end);
            h = push_label(h, &bytes[start..end]);
            if start == 0 {
                if self.has_exact
                    && let Some(i) = self.find(h, name)
                {
                    best = earlier(best, first(&self.entries[i].exact, q));
                }
                return best;
            }
            labels += 1;
            if self.below_depths & depth_bit(labels) != 0
                && let Some(i) = self.find(h, &name[start..])
            {
                best = earlier(best, first(&self.entries[i].below, q));
            }
            if !self.has_exact && labels >= deepest && deepest < 63 {
                return best;
            }
            end = start - 1;
        }
    }
}
