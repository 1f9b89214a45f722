//! Pinned links under bpffs: how egressd fails closed across a crash, and how
//! `egressd cleanup` removes what it left.

use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

use crate::raw_link::CgroupLink;
use crate::{EbpfError, PROGRAMS};

/// Where `egressd run --pin` pins its links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/egressd";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Creates the pin directory and checks that it is on a bpffs.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), EbpfError> {
    std::fs::create_dir_all(dir).map_err(|e| EbpfError::io("creating pin directory", dir, e))?;
    if crate::probe::fs_magic(dir)? != BPF_FS_MAGIC {
        return Err(EbpfError::MissingFeature {
            feature: "bpffs",
            detail: format!(
                "{} is not on a bpf filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`",
                dir.display()
            ),
        });
    }
    Ok(())
}

/// Pins every link as `dir/<program>`. A pin left by an earlier run is removed just
/// before the new one takes its place (the new link is already attached, so there is
/// no moment without enforcement). On failure the new pins are removed again.
pub(crate) fn pin_all(
    dir: &Path,
    links: Vec<(&'static str, CgroupLink)>,
) -> Result<Vec<(&'static str, PinnedLink)>, EbpfError> {
    let mut pinned: Vec<(&'static str, PinnedLink)> = Vec::with_capacity(links.len());
    for (name, link) in links {
        let path = dir.join(name);
        let result = remove_pin(&path).and_then(|_| link.pin(name, &path));
        match result {
            Ok(p) => pinned.push((name, p)),
            Err(e) => {
                for (_, p) in pinned {
                    let _ = p.unpin();
                }
                return Err(e);
            }
        }
    }
    Ok(pinned)
}

/// Removes one pin if present; returns whether there was one. A link whose
/// last reference was the pin is detached by the time this returns: the
/// link is opened first and closed after the pin is gone, so the last
/// reference goes with this process's close, which detaches at once (the
/// pin's own last reference would be freed later, by a kernel worker, and
/// the link would still show as attached for a moment).
pub(crate) fn remove_pin(path: &Path) -> Result<bool, EbpfError> {
    let link = PinnedLink::from_pin(path).ok();
    let removed = match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(EbpfError::io("removing pin", path, e)),
    };
    drop(link);
    removed
}

/// Removes every pin egressd made under `pin_dir` (and the directory if it is then
/// empty). Idempotent: a missing directory or pin is not an error. Returns what
/// was removed.
pub fn cleanup(pin_dir: &Path) -> Result<Vec<PathBuf>, EbpfError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    for name in PROGRAMS {
        let path = pin_dir.join(name);
        if remove_pin(&path)? {
            tracing::info!(pin = %path.display(), "removed pin");
            removed.push(path);
        }
    }
    for path in crate::packet_guard::remove_pins(pin_dir, |_| true)? {
        tracing::info!(pin = %path.display(), "removed pin");
        removed.push(path);
    }
    let empty = std::fs::read_dir(pin_dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty {
        std::fs::remove_dir(pin_dir)
            .map_err(|e| EbpfError::io("removing pin directory", pin_dir, e))?;
        removed.push(pin_dir.to_path_buf());
    }
    Ok(removed)
}
