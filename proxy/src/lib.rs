//! egressd: the data plane (transparent TCP, DNS, explicit HTTP CONNECT, SNI
//! routing), the runner integration (`boot`, job hooks) and the command line.
//! The binary in `main.rs` only calls [`cmd::main`].

pub mod cgroup_child;
pub mod cmd;
pub mod coalesce;
pub mod connect;
pub mod control;
pub mod cut;
pub mod daemon;
pub mod decide;
pub mod dial;
pub mod dns;
pub mod engine;
pub mod guardian;
pub mod kernel;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod peek;
pub mod policy_source;
pub mod relay;
pub mod reload;
pub mod selftest;
pub mod sni_listen;
pub mod sockread;
pub mod sudo;
pub mod tamper;
#[cfg(test)]
mod test_support;
pub mod transparent;
pub mod tunnel;
