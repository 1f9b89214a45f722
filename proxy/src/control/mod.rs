//! The control socket: how `egressd job start` / `egressd job end` (separate,
//! short-lived processes run by the runner's job hooks) talk to the running
//! `egressd boot`. A Unix stream socket, mode 0660, owned by root and the
//! `--control-group` when given, so only root and that group can connect.
//!
//! The protocol ([`protocol`]) is one JSON object per line: the client sends
//! one request line, the server answers one response line, then either side
//! may close. [`server`] serves it on top of the [`jobs::JobService`] that
//! owns the job lifecycle; [`client`] is the job commands' side.

pub mod client;
pub mod jobs;
pub mod protocol;
pub mod server;

pub use client::ControlClient;
pub use jobs::{Health, JobService};
pub use protocol::{JobReport, Request, Response, StatusReport};

/// Where `egressd boot` listens and the job commands connect by default.
pub const DEFAULT_SOCKET: &str = "/run/egressd/control.sock";
