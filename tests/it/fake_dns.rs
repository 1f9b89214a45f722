//! A small authoritative DNS server for tests (being written).
