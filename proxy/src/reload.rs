//! The policy file and its hot reload: loaded once at start (an invalid file
//! stops `egressd run` before anything is bound), then re-read on SIGHUP and
//! whenever its content changes (polled every second: size, mtime, then a
//! content hash). A new valid policy is swapped in atomically; a broken one is
//! rejected, logged and written as an `event` record
//! (`policy_reload_rejected`), and the previous policy stays active.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use egressd_audit::Kind;
use egressd_policy::{Decision, Diagnostic, Policy, Reason};

use crate::engine::Engine;

/// Why a policy file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the policy {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid policy; the text lists every problem as
    /// `file:line:col: message`.
    #[error("the policy {} is invalid:\n{diagnostics}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem, one per line.
        diagnostics: String,
    },
}

/// What identifies a version of the file cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    content: u64,
}

/// A loaded policy file.
#[derive(Debug)]
pub struct LoadedFile {
    /// The policy.
    pub policy: Policy,
    /// Warnings that did not reject it.
    pub warnings: Vec<Diagnostic>,
    /// The version that was loaded.
    pub fingerprint: Fingerprint,
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Read, validate and compile the policy at `path`.
pub fn load(path: &Path) -> Result<LoadedFile, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let bytes = std::fs::read(path).map_err(read_err)?;
    let fingerprint = Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        content: content_hash(&bytes),
    };
    let text = String::from_utf8_lossy(&bytes);
    let label = path.display().to_string();
    match Policy::parse(&label, &text) {
        Ok(loaded) => Ok(LoadedFile {
            policy: loaded.policy,
            warnings: loaded.warnings,
            fingerprint,
        }),
        Err(diagnostics) => Err(LoadError::Invalid {
            path: path.to_owned(),
            diagnostics: diagnostics.to_string(),
        }),
    }
}

/// How the reloader is told to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGHUP: reload even when the file looks unchanged.
    Signal,
    /// The periodic check: reload only when the file changed.
    Poll,
}

/// Watch `path` until the engine stops accepting: reload on SIGHUP and on
/// change. `loaded` is the fingerprint of the policy the engine started with.
pub async fn watch(engine: Arc<Engine>, path: PathBuf, loaded: Fingerprint, poll: Duration) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the policy file is still polled");
            None
        }
    };
    let mut reloader = Reloader {
        engine,
        path,
        active: loaded,
        last_seen: loaded,
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            () = reloader.engine.stop_accepting().cancelled() => return,
            _ = tick.tick() => Trigger::Poll,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => Trigger::Signal,
        };
        reloader.check(trigger).await;
    }
}

struct Reloader {
    engine: Arc<Engine>,
    path: PathBuf,
    /// The version the active policy came from.
    active: Fingerprint,
    /// The last version looked at (a rejected one is not rejected again
    /// every second).
    last_seen: Fingerprint,
}

impl Reloader {
    async fn check(&mut self, trigger: Trigger) {
        if trigger == Trigger::Poll && !self.changed() {
            return;
        }
        match load(&self.path) {
            Ok(file) => {
                self.last_seen = file.fingerprint;
                if trigger == Trigger::Poll && file.fingerprint.content == self.active.content {
                    // Touched, not changed.
                    self.active = file.fingerprint;
                    return;
                }
                for w in &file.warnings {
                    tracing::warn!("{w}");
                }
                self.engine.replace_policy(file.policy);
                self.active = file.fingerprint;
                self.engine.metrics().reload(true);
                tracing::info!(path = %self.path.display(), "policy reloaded");
            }
            Err(e) => {
                if let LoadError::Read { .. } = &e
                    && trigger == Trigger::Poll
                    && self.last_seen.len == u64::MAX
                {
                    // Still unreadable: already reported.
                    return;
                }
                let fingerprint = current_fingerprint(&self.path).unwrap_or(Fingerprint {
                    len: u64::MAX,
                    modified: None,
                    content: 0,
                });
                self.last_seen = fingerprint;
                self.engine.metrics().reload(false);
                tracing::error!("policy reload rejected, the previous policy stays active: {e}");
                let mut rec = self.engine.record(
                    Kind::Event,
                    &Decision::engine_deny(Reason::PolicyReloadRejected),
                );
                rec.detail = Some(e.to_string());
                self.engine.audit(rec).await;
                if let Err(e) = self.engine.journal().flush().await {
                    tracing::error!(error = %e, "cannot flush the audit journal");
                }
            }
        }
    }

    /// Cheap check: size or mtime differ from the last version seen, or the
    /// content does (an edit within the mtime granularity).
    fn changed(&self) -> bool {
        match current_fingerprint(&self.path) {
            Some(now) => now != self.last_seen,
            // Unreadable now: report it once.
            None => self.last_seen.len != u64::MAX,
        }
    }
}

fn current_fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        content: content_hash(&bytes),
    })
}
