//! End-to-end tests of the real `egressd` binary live in `it/`; this library
//! is intentionally empty.
