//! From the wire structures of `schema` to compiled `Ruleset`s: one for the
//! base policy and one per override (base plus the override's rules), so
//! picking a job's rules at run time is a lookup, not a merge.

use std::collections::HashMap;

use ipnet::IpNet;

use crate::Mode;
use crate::decision::{RuleId, RuleList};
use crate::hostname::HostPattern;
use crate::matcher::{Hit, Ports, Table};
use crate::ruleset::Ruleset;
use crate::schema::{File, RuleSpec, Target};

/// What a rule id points at, for explanations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    /// The rule as written (normalised), ports included.
    pub text: String,
    /// Its line in the policy file; `None` for an included set's entry.
    pub line: Option<u32>,
}

/// Adds rules to a table in policy order, numbering them.
struct Builder {
    table: Table,
    next: u32,
}

impl Builder {
    fn new() -> Self {
        Builder {
            table: Table::new(),
            next: 0,
        }
    }

    fn add(&mut self, target: &Target, ports: Option<&[u16]>, id: RuleId) {
        let hit = Hit {
            order: self.next,
            ports: Ports(ports.map(Into::into)),
            id,
        };
        self.next += 1;
        match target {
            Target::Host(HostPattern::Exact(n)) => self.table.names.add_exact(n, hit),
            Target::Host(HostPattern::Below(s)) => self.table.names.add_below(s, hit),
            Target::Net(IpNet::V4(n)) => {
                self.table
                    .v4
                    .insert(u32::from(n.network()), n.prefix_len(), hit);
            }
            Target::Net(IpNet::V6(n)) => {
                self.table
                    .v6
                    .insert(u128::from(n.network()), n.prefix_len(), hit);
            }
        }
    }

    fn add_list(&mut self, rules: &[RuleSpec], id: impl Fn(u32) -> RuleId) {
        for (i, r) in (0u32..).zip(rules) {
            self.add(&r.target, r.ports.as_deref(), id(i));
        }
    }
}

/// An override, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Override {
    pub(crate) repository: Option<String>,
    pub(crate) labels: Vec<String>,
    pub(crate) ruleset: Ruleset,
}

/// The compiled parts of a policy.
pub(crate) struct Compiled {
    pub(crate) base: Ruleset,
    pub(crate) overrides: Vec<Override>,
    pub(crate) rules: HashMap<RuleId, RuleInfo>,
    pub(crate) rule_count: usize,
}

fn base_rules(file: &File, allow: &mut Builder, deny: &mut Builder) {
    allow.add_list(&file.allow, |index| RuleId::Base {
        list: RuleList::Allow,
        index,
    });
    for set in &file.include {
        for (index, pattern) in set.patterns() {
            allow.add(
                &Target::Host(pattern),
                None,
                RuleId::Include {
                    set: set.name(),
                    index,
                },
            );
        }
    }
    deny.add_list(&file.deny, |index| RuleId::Base {
        list: RuleList::Deny,
        index,
    });
}

fn include_count(file: &File) -> usize {
    file.include.iter().map(|s| s.entries().count()).sum()
}

/// Compile a file that validated without errors.
pub(crate) fn compile(file: &File) -> Compiled {
    let mode = file.mode.unwrap_or(Mode::Enforce);
    let base_count = file.allow.len() + file.deny.len() + include_count(file);
    let mut allow = Builder::new();
    let mut deny = Builder::new();
    base_rules(file, &mut allow, &mut deny);
    let mut base = Ruleset::empty(mode, file.private_ranges_allow);
    base.allow = allow.table;
    base.deny = deny.table;
    base.rule_count = base_count;

    let mut overrides = Vec::with_capacity(file.overrides.len());
    let mut total = base_count;
    for (o_index, o) in (0u32..).zip(&file.overrides) {
        let mut allow = Builder::new();
        let mut deny = Builder::new();
        base_rules(file, &mut allow, &mut deny);
        allow.add_list(&o.allow, |index| RuleId::Override {
            overr: o_index,
            list: RuleList::Allow,
            index,
        });
        deny.add_list(&o.deny, |index| RuleId::Override {
            overr: o_index,
            list: RuleList::Deny,
            index,
        });
        let mut ruleset = Ruleset::empty(o.mode.unwrap_or(mode), file.private_ranges_allow);
        ruleset.allow = allow.table;
        ruleset.deny = deny.table;
        ruleset.rule_count = base_count + o.allow.len() + o.deny.len();
        total += o.allow.len() + o.deny.len();
        overrides.push(Override {
            repository: o.repository.clone(),
            labels: o.labels.clone(),
            ruleset,
        });
    }

    Compiled {
        base,
        overrides,
        rules: describe(file),
        rule_count: total,
    }
}

fn describe(file: &File) -> HashMap<RuleId, RuleInfo> {
    let mut out = HashMap::new();
    let info = |r: &RuleSpec| RuleInfo {
        text: r.display(),
        line: Some(r.at.line),
    };
    for (index, r) in (0u32..).zip(&file.allow) {
        out.insert(
            RuleId::Base {
                list: RuleList::Allow,
                index,
            },
            info(r),
        );
    }
    for (index, r) in (0u32..).zip(&file.deny) {
        out.insert(
            RuleId::Base {
                list: RuleList::Deny,
                index,
            },
            info(r),
        );
    }
    for set in &file.include {
        for (index, entry) in (0u32..).zip(set.entries()) {
            out.insert(
                RuleId::Include {
                    set: set.name(),
                    index,
                },
                RuleInfo {
                    text: entry.to_owned(),
                    line: None,
                },
            );
        }
    }
    for (overr, o) in (0u32..).zip(&file.overrides) {
        for (index, r) in (0u32..).zip(&o.allow) {
            out.insert(
                RuleId::Override {
                    overr,
                    list: RuleList::Allow,
                    index,
                },
                info(r),
            );
        }
        for (index, r) in (0u32..).zip(&o.deny) {
            out.insert(
                RuleId::Override {
                    overr,
                    list: RuleList::Deny,
                    index,
                },
                info(r),
            );
        }
    }
    out
}
