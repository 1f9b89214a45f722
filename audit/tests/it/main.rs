//! egressd-audit integration tests: golden records, the journal (rotation,
//! back-pressure, torn lines) and the kill -9 crash test. One binary with a
//! module per area.

mod crash;
mod golden;
mod journal;
mod reader;
mod records;
