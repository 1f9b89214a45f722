//! What the listeners' in-process tests share (transparent, CONNECT, SNI,
//! and the ClientHello parser): an engine over a throwaway journal whose
//! resolver's upstream refuses at once, one exchange with a listener, the
//! decision record read back, ClientHellos built byte by byte, and a
//! connected pair of loopback sockets (the relay and socket-read tests).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use egressd_audit::{Journal, JournalConfig, Kind, Record};
use egressd_policy::Policy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::dns::{DnsMemory, Resolver};
use crate::engine::{Engine, EngineParts};
use crate::limits::Limits;

/// A connected pair of loopback sockets.
pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    (a, b)
}

/// The real engine and its journal in a temporary directory.
pub(crate) struct TestEngine {
    pub engine: Arc<Engine>,
    pub journal: Journal,
    pub dir: tempfile::TempDir,
}

impl TestEngine {
    /// `policy` (YAML) with `limits`; DNS lookups fail at once (port 9 refuses).
    pub fn new(policy: &str, limits: Limits) -> TestEngine {
        TestEngine::with_upstreams(
            policy,
            limits,
            vec!["127.0.0.1:9".parse().unwrap()],
            Duration::from_millis(300),
        )
    }

    /// [`TestEngine::new`] asking `upstreams` in turn, each for `timeout`.
    pub fn with_upstreams(
        policy: &str,
        limits: Limits,
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
    ) -> TestEngine {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
        let memory = Arc::new(DnsMemory::new());
        let resolver = Resolver::with_timeout(upstreams, timeout).with_memory(Arc::clone(&memory));
        let engine = Engine::new(EngineParts {
            policy: Policy::parse("p.yaml", policy).unwrap().policy,
            journal: journal.clone(),
            dns_memory: memory,
            resolver,
            runner: "unit".into(),
            limits,
            upstream_mark: None,
            filter_loopback: true,
        });
        TestEngine {
            engine,
            journal,
            dir,
        }
    }

    /// The first TCP decision record (not a closing one), waiting for it.
    pub async fn decision(&self) -> Record {
        for _ in 0..100 {
            self.journal.flush().await.unwrap();
            let recs: Vec<Record> = egressd_audit::reader::read_dir(self.dir.path())
                .unwrap()
                .filter_map(Result::ok)
                .collect();
            if let Some(r) = recs
                .into_iter()
                .find(|r| r.kind == Kind::Tcp && !r.is_closing())
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no decision record");
    }
}

/// Limits that give up on a silent client quickly.
pub(crate) fn quick_limits() -> Limits {
    Limits {
        first_byte_wait: Duration::from_millis(200),
        peek_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

/// Connect to `listen`, send `first` (if any), read everything back.
pub(crate) async fn exchange(listen: SocketAddr, first: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(listen).await.unwrap();
    if !first.is_empty() {
        c.write_all(first).await.unwrap();
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got))
        .await
        .expect("no hang");
    got
}

/// Wrap a handshake message into handshake records of at most `chunk` bytes.
pub(crate) fn records(msg: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in msg.chunks(chunk) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// `body` behind its 16-bit length.
pub(crate) fn u16_vec(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A server_name extension body from (name_type, name) entries.
pub(crate) fn sni_ext(names: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (t, n) in names {
        list.push(*t);
        list.extend_from_slice(&u16_vec(n));
    }
    u16_vec(&list)
}

/// A ClientHello handshake message with the given suites and extensions.
pub(crate) fn hello_msg(suites: &[u16], exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.push(32);
    body.extend_from_slice(&[9; 32]);
    let s: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    body.extend_from_slice(&u16_vec(&s));
    body.extend_from_slice(&[1, 0]);
    let mut e = Vec::new();
    for (t, d) in exts {
        e.extend_from_slice(&t.to_be_bytes());
        e.extend_from_slice(&u16_vec(d));
    }
    body.extend_from_slice(&u16_vec(&e));
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    msg
}
