//! egressd-audit integration tests: golden records, the journal (rotation,
//! back-pressure, torn lines) and the kill -9 crash test. One binary with a
//! module per area.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a panic there is a failed assertion"
)]

mod crash;
mod golden;
mod journal;
mod reader;
mod records;
