//! Names: a hashed label walk. Exact names sit in one hash map; wildcard
//! suffixes (`*.example.com` is stored as `example.com`) in another. A lookup
//! hashes the whole name, then each proper suffix (so the apex never matches a
//! wildcard), skipping suffix depths no wildcard has.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::{Hit, PortQuery, earlier, first};

/// Compiled host name rules of one list.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameTable {
    exact: HashMap<Box<str>, Vec<Hit>, RandomState>,
    below: HashMap<Box<str>, Vec<Hit>, RandomState>,
    /// Bit `n` is set when some wildcard suffix has `n` labels (63 = "63 or more").
    below_depths: u64,
}

fn depth_bit(labels: usize) -> u64 {
    1u64 << labels.min(63)
}

impl NameTable {
    /// Add an exact-name rule. Rules must be added in policy order.
    pub(crate) fn add_exact(&mut self, name: &str, hit: Hit) {
        self.exact.entry(name.into()).or_default().push(hit);
    }

    /// Add a wildcard rule for `*.suffix`. Rules must be added in policy order.
    pub(crate) fn add_below(&mut self, suffix: &str, hit: Hit) {
        self.below_depths |= depth_bit(suffix.split('.').count());
        self.below.entry(suffix.into()).or_default().push(hit);
    }

    /// The first rule matching a normalised name under the port query.
    pub(crate) fn lookup(&self, name: &str, q: PortQuery) -> Option<&Hit> {
        let mut best = if self.exact.is_empty() {
            None
        } else {
            self.exact.get(name).and_then(|h| first(h, q))
        };
        if self.below_depths == 0 {
            return best;
        }
        // Walk the proper suffixes from the right: after the last dot one
        // label, then two, ... and stop past the deepest wildcard suffix.
        let deepest = 63 - self.below_depths.leading_zeros() as usize;
        let bytes = name.as_bytes();
        let mut labels = 0usize;
        for i in (0..bytes.len()).rev() {
            if bytes[i] != b'.' {
                continue;
            }
            labels += 1;
            if labels > deepest && deepest < 63 {
                break;
            }
            if self.below_depths & depth_bit(labels) == 0 {
                continue;
            }
            if let Some(hits) = self.below.get(&name[i + 1..]) {
                best = earlier(best, first(hits, q));
            }
        }
        best
    }
}
