//! End-to-end tests: the real `egressd` binary against real clients. One
//! integration binary with a module per area (style.md).
//!
//! `cargo test --workspace` does not build another package's binary for these
//! tests: run `cargo build -p egressd` first (scripts/test.sh does).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed assertion, and its helpers are not #[test] fns"
)]

use egressd_e2e::fake_dns;

mod support;

mod audit_cli;
mod check_explain;
mod container;
mod crash;
mod dns;
mod docker;
mod exec;
mod explicit;
mod jobs;
mod runner;
mod service;
mod sni_listen;
mod transparent;
