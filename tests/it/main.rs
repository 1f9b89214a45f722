//! End-to-end tests: the real `egressd` binary against real clients. One
//! integration binary with a module per area.
