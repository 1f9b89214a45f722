//! dns end-to-end tests (being written).
