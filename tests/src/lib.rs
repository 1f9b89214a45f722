//! What the end-to-end tests (`it/`) and the benchmark harness (`cargo
//! xtask bench`, workload J1) share: the real `egressd` binary, a running
//! `egressd boot` with its job cgroup, the job corpus' world (a network
//! namespace of real servers, a fake DNS, a test PKI) and its steps. Set-up
//! failures panic with what went wrong; what a caller measures or checks
//! comes back as values and typed errors, never as assertions.

pub mod bin;
pub mod blocks;
pub mod boot;
pub mod cgroup;
pub mod cmd;
pub mod corpus;
pub mod fake_dns;
pub mod netns;
pub mod pki;
pub mod step;
pub mod world;
