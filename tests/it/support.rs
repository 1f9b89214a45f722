//! support end-to-end tests (being written).
