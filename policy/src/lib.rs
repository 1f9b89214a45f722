//! The egressd org policy: the YAML file format (`schema`), validation with
//! file:line:col diagnostics, compilation into a matcher (hashed label walk for
//! names, prefix trie for CIDRs) and the decision for a DNS query or a
//! connection. Pure: no I/O, no async, no clock. Decides; never acts.
//!
//! ```
//! use egressd_policy::{NoResolutions, Policy, Verdict};
//! let loaded = Policy::parse("policy.yaml", "version: 1\nallow: [github.com]\n").unwrap();
//! let rules = loaded.policy.base();
//! assert_eq!(rules.decide_dns("GitHub.com.").verdict, Verdict::Allow);
//! let d = rules.decide_connect("198.51.100.7:22".parse().unwrap(), None, &NoResolutions);
//! assert_eq!(d.verdict, Verdict::Deny);
//! ```

pub mod addr;
mod compile;
pub mod decision;
mod diagnostic;
mod hostname;
mod include;
mod matcher;
mod policy;
mod resolutions;
mod ruleset;
mod schema;
mod yaml;

pub use compile::RuleInfo;
pub use decision::{AddrClass, Decision, Reason, RuleId, RuleList, Verdict};
pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use include::IncludeSet;
pub use policy::{JobContext, Loaded, Mode, Policy};
pub use resolutions::{AssumeBound, NoResolutions, Resolutions};
pub use ruleset::{ConnectOptions, Ruleset};
