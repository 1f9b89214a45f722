//! Versioned schema migrations, applied in order at start. Applied versions
//! are recorded in `schema_migrations`; each migration runs in its own
//! transaction under an advisory lock, so two services starting against the
//! same database at once apply each migration exactly once. A migration, once
//! released, is never edited: changes are new versions.

use tokio_postgres::Client;

use super::StoreError;

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    /// Strictly increasing version.
    pub version: i32,
    /// Short name, recorded with the version.
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "audit",
    sql: r#"
CREATE TABLE audit_ids (
    org text NOT NULL,
    id text NOT NULL,
    ts timestamptz NOT NULL,
    PRIMARY KEY (org, id)
);

CREATE TABLE audit (
    org text NOT NULL,
    id text NOT NULL,
    ts timestamptz NOT NULL,
    runner text NOT NULL,
    repository text,
    kind text NOT NULL,
    decision text NOT NULL,
    reason text NOT NULL,
    host text,
    record jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (ts);

CREATE INDEX audit_org_ts ON audit (org, ts);
CREATE INDEX audit_org_repository_ts ON audit (org, repository, ts);
CREATE INDEX audit_org_host_ts ON audit (org, host, ts);
"#,
}];

/// Key of the advisory lock that serialises migrations (any constant that no
/// other user of the database picks; "egressd" in ASCII).
const LOCK_KEY: i64 = 0x0065_6772_6573_7364;

/// Apply every migration the database does not have yet.
pub async fn run(client: &mut Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    for m in MIGRATIONS {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await?;
        let found: Option<i32> = tx
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .await?
            .get(0);
        if let Some(found) = found
            && found > known
        {
            return Err(StoreError::SchemaTooNew { found, known });
        }
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&m.version],
            )
            .await?
            .is_some();
        if applied {
            tx.commit().await?;
            continue;
        }
        tx.batch_execute(m.sql)
            .await
            .map_err(|source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "schema migration applied"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "migration {} out of order", m.version);
            last = m.version;
        }
    }
}
