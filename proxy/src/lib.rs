//! egressd: the data plane (transparent TCP, DNS, explicit HTTP CONNECT), the
//! runner integration (`boot`, job hooks) and the command line. The binary in
//! `main.rs` only calls [`cmd::main`].

pub mod cmd;
pub mod logging;
pub mod peek;
