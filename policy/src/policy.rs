//! The loaded policy: the base rule set and the override rule sets, each
//! precompiled, and the choice of rule set for a job (repository glob and
//! runner labels). `Send + Sync`, immutable: share it in an `Arc`.

use std::collections::HashMap;

use crate::compile::{self, Override, RuleInfo};
use crate::decision::RuleId;
use crate::diagnostic::{Diagnostic, Diagnostics, Sink};
use crate::ruleset::Ruleset;
use crate::{schema, yaml};

/// Enforce (deny what no rule allows) or audit (let everything through and
/// record what enforce would have decided).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Deny what the policy does not allow.
    Enforce,
    /// Allow everything; decisions carry `enforce_would`.
    Audit,
}

impl Mode {
    /// The stable string (`enforce` / `audit`), as written in the policy.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

/// Who is running: picks the override.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobContext<'a> {
    /// `owner/name` of the repository the job runs for, when known.
    pub repository: Option<&'a str>,
    /// The runner's labels.
    pub labels: &'a [String],
}

/// A parsed, validated, compiled org policy.
#[derive(Debug, Clone)]
pub struct Policy {
    base: Ruleset,
    overrides: Vec<Override>,
    rules: HashMap<RuleId, RuleInfo>,
    rule_count: usize,
}

/// A policy that loaded, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The policy.
    pub policy: Policy,
    /// Problems that do not reject the policy (duplicate rules, ...).
    pub warnings: Vec<Diagnostic>,
}

impl Policy {
    /// Parse, validate and compile a policy. `file_name` only labels the
    /// diagnostics. On failure every problem of the file is returned at
    /// once, in file order (the warnings among them have
    /// `Severity::Warning`).
    pub fn parse(file_name: &str, text: &str) -> Result<Loaded, Diagnostics> {
        let mut sink = Sink::new(file_name);
        let root = yaml::load(text, &mut sink);
        let file = if root.is_some() || !sink.has_errors() {
            Some(schema::read(root.as_ref(), &mut sink))
        } else {
            None
        };
        let failed = sink.has_errors();
        let (errors, warnings) = sink.finish();
        match file {
            Some(file) if !failed => {
                let c = compile::compile(&file);
                Ok(Loaded {
                    policy: Policy {
                        base: c.base,
                        overrides: c.overrides,
                        rules: c.rules,
                        rule_count: c.rule_count,
                    },
                    warnings,
                })
            }
            _ => {
                let mut all = errors;
                all.extend(warnings);
                all.sort_by_key(|d| (d.line, d.col));
                Err(Diagnostics(all))
            }
        }
    }

    /// The base rule set (no override).
    pub fn base(&self) -> &Ruleset {
        &self.base
    }

    /// The rule set for a job: the first override whose `when` matches, else
    /// the base.
    pub fn ruleset(&self, job: &JobContext<'_>) -> &Ruleset {
        self.matching_override(job)
            .map_or(&self.base, |i| &self.overrides[i].ruleset)
    }

    /// The index of the first override matching the job, if any.
    pub fn matching_override(&self, job: &JobContext<'_>) -> Option<usize> {
        self.overrides.iter().position(|o| {
            let repo_ok = match (&o.repository, job.repository) {
                (None, _) => true,
                (Some(glob), Some(repo)) => glob_matches(glob, repo),
                (Some(_), None) => false,
            };
            repo_ok
                && o.labels.iter().all(|want| {
                    job.labels
                        .iter()
                        .any(|have| have.eq_ignore_ascii_case(want))
                })
        })
    }

    /// Every rule of the file, included sets and overrides counted.
    pub fn rule_count(&self) -> usize {
        self.rule_count
    }

    /// How many overrides the policy has.
    pub fn override_count(&self) -> usize {
        self.overrides.len()
    }

    /// What a rule id points at (text and line), for explanations. `None`
    /// for built-in classes, `default` and `engine`.
    pub fn rule(&self, id: RuleId) -> Option<&RuleInfo> {
        self.rules.get(&id)
    }
}

/// `*` matches any run of characters (including `/`), `?` one character;
/// ASCII case is ignored (GitHub repository names are case-insensitive).
pub(crate) fn glob_matches(glob: &str, text: &str) -> bool {
    let g = glob.as_bytes();
    let t = text.as_bytes();
    let (mut gi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && (g[gi] == b'?' || g[gi].eq_ignore_ascii_case(&t[ti])) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == b'*' {
            star = Some((gi, ti));
            gi += 1;
        } else if let Some((sg, st)) = star {
            gi = sg + 1;
            ti = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests;
