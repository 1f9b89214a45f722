//! egressd: the data plane (transparent TCP, DNS, explicit HTTP CONNECT), the
//! runner integration (`boot`, job hooks) and the command line. The binary in
//! `main.rs` only calls [`cmd::main`].

pub mod cmd;
pub mod logging;
pub mod peek;
pub mod dns;
pub mod connect;
pub mod decide;
pub mod engine;
pub mod limits;
pub mod metrics;
pub mod origin;
pub mod relay;
pub mod reload;
pub mod transparent;
pub mod tunnel;
