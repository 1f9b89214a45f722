//! `egressd boot --remove-sudo USER`: take the runner user's sudo rights
//! away, so a job step cannot become root and detach the filter. Every
//! sudoers file (`/etc/sudoers`, `/etc/sudoers.d/*`) with a rule line for the
//! user is backed up (once: an existing backup is never overwritten) and
//! rewritten with those lines commented out. Group rules (`%sudo ...`) are
//! left alone: remove the user from such groups in the image instead (the
//! docs say so).

use std::path::{Path, PathBuf};

/// What was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The file.
    pub file: PathBuf,
    /// Its backup.
    pub backup: PathBuf,
    /// Lines commented out.
    pub lines: usize,
}

/// Comment out `user`'s rule lines in the sudoers files under `etc` (normally
/// `/etc`), backing each changed file up into `backup_dir`.
pub fn remove_sudo(etc: &Path, user: &str, backup_dir: &Path) -> std::io::Result<Vec<Removed>> {
    let mut files = vec![etc.join("sudoers")];
    if let Ok(entries) = std::fs::read_dir(etc.join("sudoers.d")) {
        let mut more: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let (rewritten, lines) = comment_out(&text, user);
        if lines == 0 {
            continue;
        }
        std::fs::create_dir_all(backup_dir)?;
        let name = file
            .strip_prefix(etc)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('/', "_");
        let backup = backup_dir.join(name);
        if !backup.exists() {
            std::fs::copy(&file, &backup)?;
        }
        let tmp = file.with_extension("egressd-tmp");
        std::fs::write(&tmp, rewritten)?;
        std::fs::set_permissions(&tmp, std::fs::metadata(&file)?.permissions())?;
        std::fs::rename(&tmp, &file)?;
        out.push(Removed {
            file,
            backup,
            lines,
        });
    }
    Ok(out)
}

/// `text` with every rule line whose first word is `user` commented out.
fn comment_out(text: &str, user: &str) -> (String, usize) {
    let mut n = 0;
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        if line.split_whitespace().next() == Some(user) {
            out.push_str("# removed by egressd boot --remove-sudo: ");
            n += 1;
        }
        out.push_str(line);
    }
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_out_the_users_rules_and_keeps_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(etc.join("sudoers.d")).unwrap();
        std::fs::write(
            etc.join("sudoers"),
            "root ALL=(ALL) ALL\n%sudo ALL=(ALL) ALL\n",
        )
        .unwrap();
        std::fs::write(
            etc.join("sudoers.d/runner"),
            "runner ALL=(ALL) NOPASSWD:ALL\n# runner note\n",
        )
        .unwrap();
        let backups = dir.path().join("backup");
        let removed = remove_sudo(&etc, "runner", &backups).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].lines, 1);
        let now = std::fs::read_to_string(etc.join("sudoers.d/runner")).unwrap();
        assert!(now.starts_with("# removed by egressd boot --remove-sudo: runner ALL"));
        assert_eq!(
            std::fs::read_to_string(&removed[0].backup).unwrap(),
            "runner ALL=(ALL) NOPASSWD:ALL\n# runner note\n"
        );
        // Idempotent: nothing left to remove, the backup stays the original.
        assert!(remove_sudo(&etc, "runner", &backups).unwrap().is_empty());
    }
}
