//! End-to-end tests: the real `egressd` binary against real clients. One
//! integration binary with a module per area (style.md).

mod fake_dns;
mod support;

mod audit_cli;
mod check_explain;
mod dns;
mod explicit;
mod service;
mod transparent;
mod exec;
mod runner;
