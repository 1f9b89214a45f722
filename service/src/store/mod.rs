//! The fleet audit store in PostgreSQL: a connection pool, the versioned
//! schema ([`migrations`]), batched idempotent ingest ([`ingest`]) and the
//! streaming export query ([`crate::export`] formats its rows).
//!
//! Layout and the idempotency argument:
//! - `audit` holds the records, `PARTITION BY RANGE (ts)` with one partition
//!   per UTC day, created on demand for the days a batch touches; indexes on
//!   `(org, ts)`, `(org, repository, ts)` and `(org, host, ts)`.
//! - A primary key on a partitioned table must contain the partition key, so
//!   `audit` alone could only make `(ts, id)` unique, which is not "unique
//!   `id`": a record re-sent with the same id but another `ts` (a bug, a
//!   replay, a hostile runner) would land twice. Uniqueness of `(org, id)` is
//!   instead kept in the small unpartitioned `audit_ids` table: a batch first
//!   inserts its ids there with `ON CONFLICT DO NOTHING RETURNING id` and only
//!   the ids that came back are inserted into `audit`, in the same
//!   transaction. Two concurrent batches carrying the same id serialise on
//!   that primary key, so exactly one of them stores the record.

pub mod ingest;
pub mod migrations;

use std::collections::HashSet;
use std::sync::Mutex;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

pub use ingest::IngestCounts;

/// What went wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL does not parse.
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// The pool could not be built.
    #[error("cannot build the database connection pool: {0}")]
    Pool(#[from] deadpool_postgres::BuildError),
    /// No connection could be had.
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A schema migration failed.
    #[error("schema migration {version} ({name}) failed: {source}")]
    Migration {
        /// Migration version.
        version: i32,
        /// Migration name.
        name: &'static str,
        /// The database error.
        source: tokio_postgres::Error,
    },
    /// The database has a newer schema than this binary knows.
    #[error(
        "the database schema is at version {found}, newer than this egressd knows ({known}); upgrade egressd"
    )]
    SchemaTooNew {
        /// Highest version applied in the database.
        found: i32,
        /// Highest version this binary has.
        known: i32,
    },
}

/// The audit store: a pool of connections to one PostgreSQL database whose
/// schema is up to date.
pub struct Store {
    pool: Pool,
    /// UTC days (as `YYYYMMDD`) whose partition is known to exist.
    partitions: Mutex<HashSet<u32>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    /// Connect to `url` (`postgres://user:pass@host:port/db`, or key=value
    /// form) with at most `max_connections`, and bring the schema up to date.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Store, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(StoreError::Url)?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .build()?;
        let store = Store {
            pool,
            partitions: Mutex::new(HashSet::new()),
        };
        {
            let mut client = store.pool.get().await?;
            migrations::run(&mut client).await?;
        }
        store.prepare_partitions().await?;
        Ok(store)
    }

    /// The connection pool (tests and tools query through it).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
