//! Integration tests of the policy crate through its public API: broken-file
//! fixtures, the examples, the built-in sets, and the compiled matcher against
//! a naive reference. One test binary, a module per area (style.md).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic there is a failed assertion"
)]

mod examples;
mod fixtures;
mod include;
mod reference;
mod validation;
