//! The job commands' side of the control socket: connect, send one request
//! line, read one response line. Blocking: the job commands are short-lived
//! processes with nothing else to do.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Request, Response};

/// What can go wrong asking the service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error(
        "cannot connect to the egressd control socket {}: {source}; is `egressd boot` running (systemctl status egressd)? Is this user root or in the --control-group?",
        path.display()
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The exchange broke off or timed out.
    #[error("the egressd control socket {} did not answer: {source}", path.display())]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The answer was not a response.
    #[error(
        "the egressd control socket answered something unexpected ({0}); are `egressd job` and the service the same version?"
    )]
    Decode(String),
}

/// A connection to the control socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
    timeout: Duration,
}

impl ControlClient {
    /// A client of the socket at `path`; each request waits at most `timeout`
    /// for its answer (job end reads the journal: allow some seconds).
    pub fn new(path: &Path, timeout: Duration) -> ControlClient {
        ControlClient {
            path: path.to_owned(),
            timeout,
        }
    }

    /// Send `req`, return the response.
    pub fn request(&self, req: &Request) -> Result<Response, ClientError> {
        let stream = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        let exchange = |source| ClientError::Exchange {
            path: self.path.clone(),
            source,
        };
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(exchange)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(exchange)?;
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        line.push('\n');
        (&stream).write_all(line.as_bytes()).map_err(exchange)?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .read_line(&mut answer)
            .map_err(exchange)?;
        if answer.is_empty() {
            return Err(exchange(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the service closed the connection",
            )));
        }
        serde_json::from_str(answer.trim_end()).map_err(|e| ClientError::Decode(e.to_string()))
    }
}
