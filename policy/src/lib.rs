//! The egressd org policy: the YAML file format (`schema`), validation with
//! file:line:col diagnostics, compilation into a matcher (hashed label walk for
//! names, prefix trie for CIDRs) and the decision for a DNS query or a
//! connection. Pure: no I/O, no async, no clock. Decides; never acts.

pub mod decision;

pub use decision::{AddrClass, Decision, Reason, RuleId, RuleList, Verdict};
