//! explicit end-to-end tests (being written).
