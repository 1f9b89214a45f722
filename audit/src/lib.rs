//! egressd audit: the record of every decision (schema v1), the append-only
//! journal it is written to, and the ways records leave it (export, job
//! summary, policy suggestions, shipping). Knows nothing of sockets.

pub mod addr_format;
pub mod export;
pub mod filter;
#[cfg(test)]
mod fixture;
pub mod id;
pub mod journal;
pub mod json_line;
pub mod reader;
pub mod record;
pub mod segment;
pub mod ship;
pub mod suggest;
pub mod summary;
pub mod time_format;

pub use journal::{Journal, JournalConfig, JournalError};
pub use reader::{Position, ReadError};
pub use record::{HostSource, JobTags, Kind, Process, Record, SCHEMA_VERSION};
