//! The policy directory: `ORG.yaml` files, each validated with the policy
//! crate before it is served, re-read by polling. A file that fails
//! validation is refused (its diagnostics logged once) and the last good
//! version of that org's policy keeps being served; the served set is one
//! snapshot swapped atomically, so a request never sees a half-done reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::auth::valid_org;

/// One org's policy as served: the exact file text and its entity tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedPolicy {
    /// The YAML text, byte for byte as in the file.
    pub text: Arc<str>,
    /// Strong entity tag, quoted (`"…"`): a digest of the text.
    pub etag: String,
}

impl ServedPolicy {
    fn new(text: String) -> Self {
        let digest = Sha256::digest(text.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        ServedPolicy {
            text: text.into(),
            etag: format!("\"{hex}\""),
        }
    }
}

/// What cannot be done with the policy directory.
#[derive(Debug, thiserror::Error)]
pub enum PolicyDirError {
    /// The directory could not be listed.
    #[error("cannot read the policy directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What one reload did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Orgs whose policy was (re)loaded.
    pub loaded: Vec<String>,
    /// Orgs whose file was refused, with the diagnostics.
    pub refused: Vec<(String, String)>,
    /// Orgs whose file disappeared.
    pub removed: Vec<String>,
}

type Snapshot = HashMap<String, Arc<ServedPolicy>>;

/// The served policies of every org, kept in step with a directory.
#[derive(Debug)]
pub struct PolicyDir {
    dir: PathBuf,
    served: ArcSwap<Snapshot>,
    /// Digest of the last refused text per org: a broken file is reported
    /// once, not on every poll.
    refused: Mutex<HashMap<String, [u8; 32]>>,
}

/// Validate one policy file with the policy crate; the diagnostics, one per
/// line, when it is refused.
pub fn validate(file: &str, text: &str) -> Result<(), String> {
    egressd_policy::Policy::parse(file, text)
        .map(|_| ())
        .map_err(|d| d.to_string())
}

impl PolicyDir {
    /// Load every `ORG.yaml` in `dir`. Files that fail validation are
    /// refused and logged; the directory itself must be readable.
    pub fn load(dir: &Path) -> Result<(PolicyDir, ReloadReport), PolicyDirError> {
        let pd = PolicyDir {
            dir: dir.to_owned(),
            served: ArcSwap::from_pointee(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
        };
        let report = pd.reload()?;
        Ok((pd, report))
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policy served for `org`, if any.
    pub fn get(&self, org: &str) -> Option<Arc<ServedPolicy>> {
        self.served.load().get(org).cloned()
    }

    /// The orgs with a served policy, sorted.
    pub fn orgs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.served.load().keys().cloned().collect();
        v.sort();
        v
    }

    /// Re-read the directory once (blocking file I/O): load new and changed
    /// files that validate, keep the last good policy for files that do not,
    /// drop orgs whose file is gone.
    pub fn reload(&self) -> Result<ReloadReport, PolicyDirError> {
        let read_dir = |source| PolicyDirError::ReadDir {
            path: self.dir.clone(),
            source,
        };
        let current = self.served.load_full();
        let mut next: Snapshot = HashMap::new();
        let mut report = ReloadReport::default();
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for entry in std::fs::read_dir(&self.dir).map_err(read_dir)? {
            let entry = entry.map_err(read_dir)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(org) = name.strip_suffix(".yaml") else {
                continue;
            };
            if !valid_org(org) {
                continue;
            }
            let text = match std::fs::read_to_string(entry.path()) {
                Ok(t) => t,
                Err(e) => {
                    // Mid-write or unreadable: keep what is served.
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot read policy file; keeping the last good one");
                    if let Some(old) = current.get(org) {
                        next.insert(org.to_owned(), old.clone());
                    }
                    continue;
                }
            };
            let fresh = ServedPolicy::new(text);
            if let Some(old) = current.get(org)
                && old.etag == fresh.etag
            {
                next.insert(org.to_owned(), old.clone());
                continue;
            }
            let digest: [u8; 32] = Sha256::digest(fresh.text.as_bytes()).into();
            match validate(name, &fresh.text) {
                Ok(()) => {
                    refused.remove(org);
                    tracing::info!(org, etag = %fresh.etag, "policy loaded");
                    report.loaded.push(org.to_owned());
                    next.insert(org.to_owned(), Arc::new(fresh));
                }
                Err(diagnostics) => {
                    if refused.get(org) != Some(&digest) {
                        tracing::error!(
                            org,
                            file = %entry.path().display(),
                            kept_last_good = current.contains_key(org),
                            "policy file refused:\n{diagnostics}"
                        );
                        refused.insert(org.to_owned(), digest);
                        report.refused.push((org.to_owned(), diagnostics));
                    }
                    if let Some(old) = current.get(org) {
                        next.insert(org.to_owned(), old.clone());
                    }
                }
            }
        }
        for org in current.keys() {
            if !next.contains_key(org) {
                tracing::info!(org, "policy file removed; no longer served");
                report.removed.push(org.clone());
            }
        }
        refused.retain(|org, _| self.dir.join(format!("{org}.yaml")).exists());
        report.loaded.sort();
        report.removed.sort();
        self.served.store(Arc::new(next));
        Ok(report)
    }

    /// Poll the directory every `every` until the returned task is aborted.
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let pd = Arc::clone(&me);
                match tokio::task::spawn_blocking(move || pd.reload()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "policy reload failed; serving the last good policies")
                    }
                    Err(e) => tracing::warn!(error = %e, "policy reload task failed"),
                }
            }
        })
    }
}

/// True when an `If-None-Match` header value matches `etag` (weak comparison,
/// as RFC 9110 asks for `If-None-Match`).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let want = strip(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || strip(t) == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etag_matching() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("W/\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", \"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }

    const GOOD: &str = "version: 1\nallow:\n  - github.com\n";
    const BROKEN: &str = "version: 1\nallow:\n  - \"*example.com\"\n";

    #[test]
    fn broken_files_are_refused_and_the_last_good_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("acme.yaml"), GOOD).unwrap();
        std::fs::write(dir.path().join("initech.yaml"), BROKEN).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (pd, report) = PolicyDir::load(dir.path()).unwrap();
        assert_eq!(report.loaded, vec!["acme".to_owned()]);
        assert_eq!(report.refused.len(), 1);
        assert_eq!(report.refused[0].0, "initech");
        assert!(
            report.refused[0].1.starts_with("initech.yaml:3:"),
            "{}",
            report.refused[0].1
        );
        assert_eq!(pd.orgs(), vec!["acme".to_owned()]);
        let before = pd.get("acme").unwrap();

        std::fs::write(dir.path().join("acme.yaml"), BROKEN).unwrap();
        let report = pd.reload().unwrap();
        assert_eq!(report.refused.len(), 1, "reported once: {report:?}");
        assert_eq!(pd.get("acme").unwrap(), before, "last good kept");
        let report = pd.reload().unwrap();
        assert!(report.refused.is_empty(), "not reported again: {report:?}");

        std::fs::write(dir.path().join("acme.yaml"), format!("{GOOD}# v2\n")).unwrap();
        let report = pd.reload().unwrap();
        assert_eq!(report.loaded, vec!["acme".to_owned()]);
        assert_ne!(pd.get("acme").unwrap().etag, before.etag);

        std::fs::remove_file(dir.path().join("acme.yaml")).unwrap();
        let report = pd.reload().unwrap();
        assert_eq!(report.removed, vec!["acme".to_owned()]);
        assert!(pd.get("acme").is_none());
    }

    #[test]
    fn etag_is_stable_and_content_derived() {
        let a = ServedPolicy::new("x".into());
        let b = ServedPolicy::new("x".into());
        let c = ServedPolicy::new("y".into());
        assert_eq!(a.etag, b.etag);
        assert_ne!(a.etag, c.etag);
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
    }
}
