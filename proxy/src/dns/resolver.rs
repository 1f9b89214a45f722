//! The proxy's own resolver: A and AAAA for a name, asked of the configured
//! upstreams only (never the system's stub, which the kernel hooks redirect
//! to the proxy itself). Used for the name-to-IP binding check when a name
//! was not answered through the DNS server, and for CONNECT host names.
//! Positive answers are cached for their TTL (at most [`MAX_CACHE_TTL`]) so
//! a burst of connections to one name asks upstream once; with
//! [`Resolver::with_memory`] they are also remembered in the [`DnsMemory`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::DnsError;
use super::memory::{DnsMemory, normalise};
use super::message::{ascii_name, facts, learn};
use super::upstream::{DEFAULT_TIMEOUT, Upstreams};

/// The longest a lookup result is reused.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Above this many cached names, stale ones are swept on insert.
const CACHE_SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone)]
struct Cached {
    ips: Arc<[IpAddr]>,
    expires: Instant,
}

/// See the module documentation.
pub struct Resolver {
    upstreams: Upstreams,
    cache: papaya::HashMap<Arc<str>, Cached>,
    memory: Option<Arc<DnsMemory>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("upstreams", &self.upstreams)
            .field("cached", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `upstreams` in order, [`DEFAULT_TIMEOUT`] each.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Resolver::with_timeout(upstreams, DEFAULT_TIMEOUT)
    }

    /// A resolver asking `upstreams` in order, `timeout` each.
    pub fn with_timeout(upstreams: Vec<SocketAddr>, timeout: Duration) -> Self {
        Resolver {
            upstreams: Upstreams::new(upstreams, timeout),
            cache: papaya::HashMap::new(),
            memory: None,
        }
    }

    /// Mark upstream sockets with `SO_MARK` (the kernel hooks' bypass).
    pub fn with_socket_mark(mut self, mark: Option<u32>) -> Self {
        self.upstreams = self.upstreams.with_socket_mark(mark);
        self
    }

    /// Also remember every answer in `memory`.
    pub fn with_memory(mut self, memory: Arc<DnsMemory>) -> Self {
        self.memory = Some(memory);
        self
    }

    /// The upstreams (the DNS server forwards to the same ones).
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// The addresses of `name` (A and AAAA, CNAMEs followed). An IP literal
    /// is its own answer. `Ok(empty)` when the name does not exist or has no
    /// address; `Err` when no upstream gave a usable answer.
    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let key = normalise(name).ok_or_else(|| DnsError::InvalidName(name.to_owned()))?;
        let now = Instant::now();
        if let Some(hit) = self.cache.pin().get(key.as_ref())
            && hit.expires > now
        {
            return Ok(hit.ips.to_vec());
        }
        let qname = Name::from_ascii(format!("{key}."))
            .map_err(|_| DnsError::InvalidName(name.to_owned()))?;
        let (v4, v6) = tokio::join!(
            self.ask(&qname, &key, RecordType::A),
            self.ask(&qname, &key, RecordType::AAAA)
        );
        let (ips, ttl) = match (v4, v6) {
            (Ok((mut a, ta)), Ok((b, tb))) => {
                // A family without addresses says nothing about how long the
                // other's stay valid (its TTL is 0): an IPv4-only name must
                // still be cached.
                let ttl = match (a.is_empty(), b.is_empty()) {
                    (false, false) => ta.min(tb),
                    (false, true) => ta,
                    (true, _) => tb,
                };
                a.extend(b);
                (a, ttl)
            }
            (Ok(one), Err(e)) | (Err(e), Ok(one)) => {
                tracing::debug!(name = %key, error = %e, "one address family failed to resolve");
                one
            }
            (Err(e), Err(_)) => return Err(e),
        };
        if !ips.is_empty() {
            let ttl = Duration::from_secs(u64::from(ttl)).min(MAX_CACHE_TTL);
            let cache = self.cache.pin();
            if cache.len() >= CACHE_SWEEP_AT {
                cache.retain(|_, c| c.expires > now);
            }
            cache.insert(
                Arc::from(key.as_ref()),
                Cached {
                    ips: ips.clone().into(),
                    expires: now + ttl,
                },
            );
            if let Some(m) = &self.memory {
                m.remember(&key, &ips, ttl, now);
            }
        }
        Ok(ips)
    }

    /// One question; returns the chain's addresses and their smallest TTL.
    async fn ask(
        &self,
        qname: &Name,
        key: &str,
        qtype: RecordType,
    ) -> Result<(Vec<IpAddr>, u32), DnsError> {
        let mut q = Message::new();
        q.set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Question::query(qname.clone(), qtype));
        let wire = q
            .to_vec()
            .map_err(|_| DnsError::InvalidName(key.to_owned()))?;
        let x = self.upstreams.exchange(&wire, false).await?;
        let reply = Message::from_vec(&x.reply).map_err(|_| DnsError::BadReply(x.from))?;
        let matches = matches!(reply.queries(), [r] if r.query_type() == qtype && ascii_name(r.name()) == key);
        if !matches {
            return Err(DnsError::BadReply(x.from));
        }
        match reply.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            rcode => return Err(DnsError::Rcode(x.from, rcode)),
        }
        let learned = learn(key, &facts(reply.answers()));
        let wanted: Vec<IpAddr> = learned
            .addresses
            .into_iter()
            .filter(|ip| match qtype {
                RecordType::A => ip.is_ipv4(),
                _ => ip.is_ipv6(),
            })
            .collect();
        Ok((wanted, learned.ttl))
    }
}
