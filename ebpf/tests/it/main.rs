//! Privileged tests of the kernel programs: a real child cgroup, a real network
//! namespace holding the "outside world", real clients (python3, kdig) inside the
//! cgroup. Not root: one `skipped: needs root and bpf()` line (a failure when CI=true).
#![expect(
    clippy::unwrap_used,
    reason = "test code, helpers included: a failed step is a failed test"
)]

mod support;

mod container;
mod dns;
mod lifecycle;
mod packet;
mod sockets;
mod tcp;
