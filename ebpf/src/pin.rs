//! Pinned links under bpffs: how egressd fails closed across a crash, and how
//! `egressd cleanup` removes what it left.

use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

use crate::raw_link::CgroupLink;
use crate::{EbpfError, PROGRAMS};

/// Where `egressd run --pin` pins its links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/egressd";

/// Where bpffs is conventionally mounted; egressd mounts one there itself when
/// a pin directory below it needs one and none is (as Cilium does).
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Creates the pin directory, first mounting bpffs at `/sys/fs/bpf` when the
/// directory is below it and nothing is mounted there. Fails with one sentence
/// saying what to run when the directory is on any other filesystem.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), EbpfError> {
    if !on_bpffs(dir)? {
        let mount_point = Path::new(BPFFS_MOUNT_POINT);
        if !dir.starts_with(mount_point) {
            return Err(not_bpffs(dir));
        }
        mount_bpffs(mount_point)?;
    }
    std::fs::create_dir_all(dir).map_err(|e| EbpfError::io("creating pin directory", dir, e))?;
    Ok(())
}

/// Whether the nearest existing ancestor of `dir` (or `dir`) is on a bpffs.
fn on_bpffs(dir: &Path) -> Result<bool, EbpfError> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    Ok(crate::probe::fs_magic(existing)? == BPF_FS_MAGIC)
}

fn not_bpffs(dir: &Path) -> EbpfError {
    EbpfError::MissingFeature {
        feature: "bpffs",
        detail: format!(
            "{} is not on a bpf filesystem; mount one with `mount -t bpf bpf DIR` or give a --pin-dir below {BPFFS_MOUNT_POINT}",
            dir.display()
        ),
    }
}

/// Mounts bpffs at `mount_point` unless one is there already. Two egressd
/// starting at once must not stack two mounts (the second would hide the
/// first one's pins): the check and the mount happen under an exclusive lock
/// on the directory as it was before any mount.
fn mount_bpffs(mount_point: &Path) -> Result<(), EbpfError> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let under = rustix::fs::open(
        mount_point,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .map_err(|e| EbpfError::io("opening", mount_point, e.into()))?;
    rustix::fs::flock(&under, FlockOperation::LockExclusive)
        .map_err(|e| EbpfError::io("locking", mount_point, e.into()))?;
    if on_bpffs(mount_point)? {
        return Ok(());
    }
    rustix::mount::mount(
        "bpf",
        mount_point,
        "bpf",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        c"mode=0700",
    )
    .map_err(|e| EbpfError::MissingFeature {
        feature: "bpffs",
        detail: format!(
            "no bpf filesystem is mounted at {} and mounting one failed ({e}); mount it with `mount -t bpf bpf {}`",
            mount_point.display(),
            mount_point.display()
        ),
    })?;
    tracing::info!(
        mount_point = %mount_point.display(),
        "mounted a bpf filesystem for the pins (none was mounted)"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_dir_outside_bpffs_and_sys_fs_bpf_is_refused_in_one_sentence() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pins");
        let err = prepare_dir(&dir).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("is not on a bpf filesystem; mount one with `mount -t bpf bpf DIR`"),
            "{text}"
        );
        assert_eq!(text.matches(&*dir.to_string_lossy()).count(), 1, "{text}");
        assert!(!dir.exists(), "nothing is created where pins cannot live");
        assert!(std::error::Error::source(&err).is_none());
    }

    #[test]
    fn an_io_error_says_its_cause_once_in_a_chain() {
        let err = EbpfError::io(
            "creating pin directory",
            "/nowhere",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(std::error::Error::source(&err).is_none());
        assert_eq!(
            err.to_string(),
            "creating pin directory /nowhere: entity not found"
        );
    }
}
