//! egressd audit: the record of every decision (schema v1), the append-only
//! journal it is written to, and the ways records leave it (export, job
//! summary, policy suggestions, shipping). Knows nothing of sockets.

pub mod id;
pub mod record;
pub mod time_format;

pub use record::{HostSource, JobTags, Kind, Process, Record, SCHEMA_VERSION};
