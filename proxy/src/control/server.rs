//! Serving the control socket: binding it with the right owner and mode,
//! then one task per connection answering request lines until the peer
//! closes or the service stops.

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::jobs::JobService;
use super::protocol::{Request, Response};

/// A request line longer than this is refused (a real one is well under 4 KiB).
const MAX_LINE: u64 = 64 * 1024;
/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// What can go wrong setting the socket up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another egressd answers on the socket already.
    #[error("another egressd is already serving the control socket {}; stop it first", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The group named by `--control-group` does not exist.
    #[error("--control-group {0:?}: no such group in /etc/group; create it or give a numeric gid")]
    NoSuchGroup(String),
    /// A filesystem step failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What egressd was doing.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Bind the control socket at `path`: create its directory (0755), replace a
/// stale socket left by a killed run, bind, then set mode 0660 and group
/// `group` (a name from /etc/group or a numeric gid), owner unchanged (root
/// in production). Until the chmod the socket has the umask's mode, which
/// never grants others write (connect) permission with the default umask.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, BindError> {
    let io_err = |action: &'static str, p: &Path| {
        let path = p.to_owned();
        move |source| BindError::Io {
            action,
            path,
            source,
        }
    };
    let gid = group.map(group_id).transpose()?;
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(io_err("create the directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("set the mode of", dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse {
                path: path.to_owned(),
            });
        }
        std::fs::remove_file(path).map_err(io_err("remove the stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_err("listen on", path))?;
    if let Some(gid) = gid {
        chown_group(path, gid).map_err(io_err("change the group of", path))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io_err("set the mode of", path))?;
    Ok(listener)
}

/// A group name from /etc/group, or a numeric gid.
fn group_id(group: &str) -> Result<u32, BindError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    gid_in(&text, group).ok_or_else(|| BindError::NoSuchGroup(group.to_owned()))
}

/// The gid of `name` in an /etc/group text.
fn gid_in(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

fn chown_group(path: &Path, gid: u32) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated path; uid -1 leaves the owner.
    let rc = unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Serve `listener` until `stop` is cancelled. The socket file is removed
/// when serving ends.
pub async fn serve(listener: UnixListener, service: Arc<JobService>, stop: CancellationToken) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let service = Arc::clone(&service);
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = connection(stream, &service) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the control socket");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

async fn connection(stream: UnixStream, service: &JobService) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_LINE * 16));
    let mut line = String::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(IDLE, lines.read_line(&mut line)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "control connection failed");
                return;
            }
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let response = if n as u64 > MAX_LINE {
            Response::Error {
                message: "request line too long".into(),
            }
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(req) => service.handle(req).await,
                Err(e) => Response::Error {
                    message: format!(
                        "not a control request ({e}); is the client a different egressd version?"
                    ),
                },
            }
        };
        let mut out = match serde_json::to_string(&response) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a control response");
                return;
            }
        };
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_groups_by_name() {
        let text = "root:x:0:\nrunner:x:1001:alice,bob\negressd:x:998:\n";
        assert_eq!(gid_in(text, "egressd"), Some(998));
        assert_eq!(gid_in(text, "runner"), Some(1001));
        assert_eq!(gid_in(text, "nobody"), None);
        assert_eq!(group_id("1234").unwrap(), 1234);
    }

    #[tokio::test]
    async fn socket_is_group_only_and_a_live_one_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.sock");
        let listener = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        assert!(matches!(bind(&path, None), Err(BindError::InUse { .. })));
        drop(listener);
        // The file is left by a dead listener: replaced.
        bind(&path, None).unwrap();
    }
}
