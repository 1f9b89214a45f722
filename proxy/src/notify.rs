//! systemd's readiness protocol (`sd_notify(3)`): one datagram of
//! `KEY=value` lines to the socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`). Without `$NOTIFY_SOCKET` (not
//! started by systemd with `Type=notify`) every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Where systemd listens, if it does.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`. The variable is left in the
    /// environment: egressd starts no children that could misuse it except its
    /// own self-test probe, which never writes to it.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    /// Whether a service manager is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Send `state` (newline-separated `KEY=value` pairs). Nothing is sent
    /// without `$NOTIFY_SOCKET`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        if let Some(name) = socket.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), socket)?;
        }
        Ok(())
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.log_failure(self.send(&format!("READY=1\nSTATUS={}", one_line(status))));
    }

    /// `STATUS=` only.
    pub fn status(&self, status: &str) {
        self.log_failure(self.send(&format!("STATUS={}", one_line(status))));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.log_failure(self.send("STOPPING=1\nSTATUS=stopping"));
    }

    fn log_failure(&self, r: io::Result<()>) {
        if let Err(e) = r {
            tracing::warn!(socket = ?self.socket, error = %e, "cannot notify the service manager");
        }
    }
}

/// A status is one line: newlines would start new `KEY=value` pairs.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_the_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some(path.display().to_string()),
        };
        assert!(n.enabled());
        n.ready("enforcing\npolicy x");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "READY=1\nSTATUS=enforcing policy x"
        );
    }

    #[test]
    fn does_nothing_without_a_socket() {
        let n = Notifier { socket: None };
        assert!(!n.enabled());
        n.send("READY=1").unwrap();
    }
}
