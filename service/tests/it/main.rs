//! The service library against a real PostgreSQL (`EGRESSD_TEST_DATABASE_URL`,
//! started by `scripts/postgres-test.sh`): the HTTP API, and runners shipping
//! through service restarts. Without the variable each test prints one
//! `skipped:` line (and fails when `CI=true`).

#![expect(
    clippy::unwrap_used,
    reason = "test fixtures unwrap: a failure there is the test failing"
)]

mod support;

mod api;
mod shipping;
