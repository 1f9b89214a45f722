//! audit_cli end-to-end tests (being written).
