//! egressd policy service (control plane): serves org policies to runners,
//! ingests their audit records into PostgreSQL, exports them.
//!
//! The server takes an already-bound listener and a shutdown future
//! ([`server::run`]), so tests bind port 0 and run it in-process; the
//! `egressd serve` command only parses flags, loads and validates everything,
//! binds, and calls it. [`client`] is the runner's side of the same HTTP API.

pub mod auth;
pub mod client;
pub mod export;
pub mod policies;
pub mod routes;
pub mod server;
pub mod store;
pub mod tls;

pub use auth::Tokens;
pub use client::Client;
pub use export::{ExportFilter, ExportFormat};
pub use policies::PolicyDir;
pub use server::{Service, ServiceConfig};
pub use store::{IngestCounts, Store};
