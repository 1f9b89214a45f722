//! A small authoritative DNS server for tests: in-process tokio tasks on
//! 127.0.0.1:0, UDP and TCP on the same port, answering from a fixed zone of
//! A / AAAA / CNAME / HTTPS records (CNAME chains inside the zone followed,
//! NXDOMAIN for names it does not hold). Per name it can drop the query
//! (an upstream that never answers), answer late, answer SERVFAIL, or set TC
//! over UDP (the full answer only over TCP). Every query is logged, with
//! its bytes as they arrived.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::svcb::{Alpn, EchConfigList, SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// TTL of records made without [`RecordSpec::ttl`].
pub const DEFAULT_TTL: u32 = 60;

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias to another name.
    Cname(String),
    /// An HTTPS record serving the name itself (`1 . alpn=h2 [ech=...]`).
    Https {
        /// The `ech` SvcParam value, if any.
        ech: Option<Vec<u8>>,
    },
}

/// One record of the zone: its data and TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpec {
    /// What it holds.
    pub data: RecordData,
    /// Its TTL in seconds.
    pub ttl: u32,
}

impl RecordSpec {
    /// An A or AAAA record.
    pub fn addr(ip: IpAddr) -> Self {
        RecordSpec::from(ip)
    }

    /// A CNAME to `target`.
    pub fn cname(target: &str) -> Self {
        RecordSpec {
            data: RecordData::Cname(target.to_owned()),
            ttl: DEFAULT_TTL,
        }
    }

    /// An HTTPS record (`alpn=h2`, plus `ech` when given).
    pub fn https(ech: Option<&[u8]>) -> Self {
        RecordSpec {
            data: RecordData::Https {
                ech: ech.map(<[u8]>::to_vec),
            },
            ttl: DEFAULT_TTL,
        }
    }

    /// The same record with another TTL.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }
}

impl From<IpAddr> for RecordSpec {
    fn from(ip: IpAddr) -> Self {
        RecordSpec {
            data: match ip {
                IpAddr::V4(v4) => RecordData::A(v4),
                IpAddr::V6(v6) => RecordData::Aaaa(v6),
            },
            ttl: DEFAULT_TTL,
        }
    }
}

/// How the server treats queries for one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Answer at once.
    #[default]
    Answer,
    /// Never answer (UDP and TCP).
    Drop,
    /// Answer after this long.
    Delay(Duration),
    /// Answer SERVFAIL.
    ServFail,
    /// Over UDP: header and question only, TC set. Over TCP: the answer.
    TruncateUdp,
}

/// A query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedQuery {
    /// The question name, lowercase, no trailing dot.
    pub name: String,
    /// The question type.
    pub qtype: RecordType,
    /// It came over TCP.
    pub tcp: bool,
    /// The message as it arrived (without the TCP length prefix).
    pub raw: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    zone: HashMap<String, Vec<RecordSpec>>,
    behaviour: HashMap<String, Behaviour>,
    log: Vec<LoggedQuery>,
}

/// A one-worker runtime for a [`FakeDns`] served beside a synchronous test
/// (the test blocks; the fake DNS answers on this runtime's thread).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the fake DNS")
}

/// The running server; its tasks stop when it is dropped.
#[derive(Debug)]
pub struct FakeDns {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl FakeDns {
    /// Serve `zone` (several records per name allowed) on 127.0.0.1:0.
    pub async fn start<R: Clone + Into<RecordSpec>>(zone: &[(&str, R)]) -> FakeDns {
        FakeDns::start_on(zone, None).await
    }

    /// Serve `zone` on `at` (UDP and TCP), or on 127.0.0.1:0 when `None`.
    pub async fn start_on<R: Clone + Into<RecordSpec>>(
        zone: &[(&str, R)],
        at: Option<SocketAddr>,
    ) -> FakeDns {
        let mut state = State::default();
        for (name, rec) in zone {
            state
                .zone
                .entry(key(name))
                .or_default()
                .push(rec.clone().into());
        }
        let state = Arc::new(Mutex::new(state));
        let (udp, tcp) = match at {
            None => bind_pair().await,
            Some(at) => bind_at(at).await,
        };
        let addr = udp.local_addr().expect("fake DNS address");
        let udp = Arc::new(udp);
        let udp_task = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65535];
                loop {
                    let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                        continue;
                    };
                    let query = buf[..n].to_vec();
                    let state = Arc::clone(&state);
                    let udp = Arc::clone(&udp);
                    tokio::spawn(async move {
                        if let Some(reply) = respond(&state, &query, false).await {
                            let _ = udp.send_to(&reply, peer).await;
                        }
                    });
                }
            })
        };
        let tcp_task = {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = tcp.accept().await else {
                        continue;
                    };
                    let state = Arc::clone(&state);
                    tokio::spawn(async move {
                        loop {
                            let Ok(len) = stream.read_u16().await else {
                                return;
                            };
                            let mut query = vec![0u8; usize::from(len)];
                            if stream.read_exact(&mut query).await.is_err() {
                                return;
                            }
                            let Some(reply) = respond(&state, &query, true).await else {
                                return;
                            };
                            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                            framed.extend_from_slice(&reply);
                            if stream.write_all(&framed).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            })
        };
        FakeDns {
            addr,
            state,
            tasks: vec![udp_task, tcp_task],
        }
    }

    /// Where it listens (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Treat queries for `name` so from now on.
    pub fn behave(&self, name: &str, behaviour: Behaviour) {
        self.lock().behaviour.insert(key(name), behaviour);
    }

    /// Every query received so far.
    pub fn queries(&self) -> Vec<LoggedQuery> {
        self.lock().log.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A UDP socket and a TCP listener on the same free loopback port (the
/// port UDP got may be taken for TCP: then try another).
async fn bind_pair() -> (UdpSocket, TcpListener) {
    let mut last = None;
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind fake DNS UDP");
        let addr = udp.local_addr().expect("fake DNS address");
        match TcpListener::bind(addr).await {
            Ok(tcp) => return (udp, tcp),
            Err(e) => last = Some(e),
        }
    }
    panic!("no loopback port free for both UDP and TCP: {last:?}");
}

/// A UDP socket and a TCP listener on `at`.
async fn bind_at(at: SocketAddr) -> (UdpSocket, TcpListener) {
    let udp = UdpSocket::bind(at)
        .await
        .unwrap_or_else(|e| panic!("cannot bind the fake DNS on {at}/udp: {e}"));
    let tcp = TcpListener::bind(at)
        .await
        .unwrap_or_else(|e| panic!("cannot bind the fake DNS on {at}/tcp: {e}"));
    (udp, tcp)
}

/// The answer to one query (`None`: stay silent).
async fn respond(state: &Mutex<State>, raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    let question = query.queries().first()?.clone();
    let name = key(&question.name().to_ascii());
    let (behaviour, records) = {
        let mut s = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.log.push(LoggedQuery {
            name: name.clone(),
            qtype: question.query_type(),
            tcp,
            raw: raw.to_vec(),
        });
        let behaviour = s.behaviour.get(&name).copied().unwrap_or_default();
        (
            behaviour,
            answer_records(&s.zone, &name, question.query_type()),
        )
    };
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_query(question);
    if let Some(edns) = query.extensions().clone() {
        reply.set_edns(edns);
    }
    match behaviour {
        Behaviour::Drop => return None,
        Behaviour::Delay(d) => tokio::time::sleep(d).await,
        Behaviour::ServFail => {
            reply.set_response_code(ResponseCode::ServFail);
            return reply.to_vec().ok();
        }
        Behaviour::TruncateUdp if !tcp => {
            reply.set_truncated(true);
            return reply.to_vec().ok();
        }
        Behaviour::TruncateUdp | Behaviour::Answer => {}
    }
    match records {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some(records) => {
            reply.add_answers(records);
        }
    }
    reply.to_vec().ok()
}

/// The records answering `qtype` for `name`, CNAMEs inside the zone
/// followed; `None` when the zone does not hold `name`.
fn answer_records(
    zone: &HashMap<String, Vec<RecordSpec>>,
    name: &str,
    qtype: RecordType,
) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let mut current = name.to_owned();
    zone.get(&current)?;
    for _ in 0..8 {
        let Some(specs) = zone.get(&current) else {
            break;
        };
        let owner = Name::from_ascii(format!("{current}.")).ok()?;
        if let Some(target) = specs.iter().find_map(|s| match &s.data {
            RecordData::Cname(t) if qtype != RecordType::CNAME => Some((t.clone(), s.ttl)),
            _ => None,
        }) {
            let t = Name::from_ascii(format!("{}.", key(&target.0))).ok()?;
            out.push(Record::from_rdata(owner, target.1, RData::CNAME(CNAME(t))));
            current = key(&target.0);
            continue;
        }
        for s in specs {
            let data = match (&s.data, qtype) {
                (RecordData::A(ip), RecordType::A) => RData::A(A(*ip)),
                (RecordData::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
                (RecordData::Cname(t), RecordType::CNAME) => {
                    RData::CNAME(CNAME(Name::from_ascii(format!("{}.", key(t))).ok()?))
                }
                (RecordData::Https { ech }, RecordType::HTTPS) => {
                    let mut params = vec![(
                        SvcParamKey::Alpn,
                        SvcParamValue::Alpn(Alpn(vec!["h2".to_owned()])),
                    )];
                    if let Some(ech) = ech {
                        params.push((
                            SvcParamKey::EchConfigList,
                            SvcParamValue::EchConfigList(EchConfigList(ech.clone())),
                        ));
                    }
                    RData::HTTPS(HTTPS(SVCB::new(1, Name::root(), params)))
                }
                _ => continue,
            };
            out.push(Record::from_rdata(owner.clone(), s.ttl, data));
        }
        break;
    }
    Some(out)
}
