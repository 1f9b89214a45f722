//! The loader's error type: what went wrong in the kernel or on disk, and what to do.

use std::path::PathBuf;

/// Everything the eBPF loader can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// A kernel feature egressd needs is missing or not permitted.
    #[error(
        "the kernel lacks {feature}: {detail} (egressd needs Linux 5.15 or newer with BPF, cgroup v2 and bpffs; run as root or with CAP_BPF+CAP_NET_ADMIN; see docs/kernel.md)"
    )]
    MissingFeature {
        /// The feature, named as in docs/kernel.md.
        feature: &'static str,
        /// What the kernel said.
        detail: String,
    },
    /// No cgroup v2 hierarchy is mounted.
    #[error(
        "no cgroup v2 filesystem is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    /// A path egressd was told to use is not a cgroup v2 directory.
    #[error("{0} is not a cgroup v2 directory")]
    NotACgroup(PathBuf),
    /// A file or directory could not be read or written. The cause is part of
    /// the message and not also a `source()`, so an error chain says it once.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What egressd was doing.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The embedded object could not be loaded.
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded, attached or pinned.
    #[error("eBPF program {program}: {action} failed: {cause}")]
    Program {
        /// The program's name (see `PROGRAMS`).
        program: &'static str,
        /// load, attach, pin...
        action: &'static str,
        /// What aya reported (in the message, not a `source()`).
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A map could not be opened or updated.
    #[error("eBPF map {map}: {cause}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What aya reported (in the message, not a `source()`).
        cause: aya::maps::MapError,
    },
    /// The configuration cannot be enforced.
    #[error("invalid enforcer configuration: {0}")]
    Config(String),
    /// `deny_events` was called twice, or outside a tokio runtime.
    #[error("deny events: {0}")]
    Events(String),
}

impl EbpfError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            cause: source,
        }
    }

    pub(crate) fn program(
        program: &'static str,
        action: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Program {
            program,
            action,
            cause: Box::new(source),
        }
    }
}
