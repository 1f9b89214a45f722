//! Built-in endpoint sets for `include:`. Each set is a data file in
//! `policy/sets/`, compiled into the binary, versioned with the code and
//! pinned by a test: never a hidden allowance.

use crate::hostname::{self, HostPattern};

/// A built-in set a policy can `include`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncludeSet {
    /// The endpoints a GitHub Actions runner needs to talk to GitHub.
    GithubActions,
}

const GITHUB_ACTIONS: &str = include_str!("../sets/github-actions.txt");

impl IncludeSet {
    /// Every set, in documentation order.
    pub const ALL: &'static [IncludeSet] = &[IncludeSet::GithubActions];

    /// The name used in `include:` and in rule ids.
    pub const fn name(self) -> &'static str {
        match self {
            IncludeSet::GithubActions => "github-actions",
        }
    }

    /// The set with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| s.name() == name)
    }

    fn source(self) -> &'static str {
        match self {
            IncludeSet::GithubActions => GITHUB_ACTIONS,
        }
    }

    /// The host patterns of the set, in order (position = rule id index), as
    /// written in the data file.
    pub fn entries(self) -> impl Iterator<Item = &'static str> {
        self.source()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
    }

    /// The entries parsed, with their index. An entry that does not parse is
    /// skipped here (its index stays reserved) and caught by the test that
    /// loads every set.
    pub(crate) fn patterns(self) -> impl Iterator<Item = (u32, HostPattern)> {
        self.entries()
            .zip(0u32..)
            .filter_map(|(e, i)| hostname::parse_pattern(e).ok().map(|p| (i, p)))
    }
}
