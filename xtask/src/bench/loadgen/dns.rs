//! DNS op (W4): one UDP query per op (70% allowed names), answer verified:
//! an allowed name must come back NOERROR with A 127.0.0.1, a denied one
//! REFUSED (or NXDOMAIN, which some resolvers use for a blocked zone).

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use super::{Op, Outcome};
use crate::bench::allowlist::dns_name;

/// W4: a query for `dns_name(i, salt)` to `server`.
pub struct DnsQuery {
    /// The resolver under test.
    pub server: SocketAddr,
    /// Keeps names unique across runs (no cache hits).
    pub salt: u64,
    /// Whether the server filters (false for the upstream itself: "direct").
    pub filters: bool,
}

impl Op for DnsQuery {
    async fn call(&self, i: u64) -> Result<Outcome, String> {
        let (name, allowed) = dns_name(i, self.salt);
        let allowed = allowed || !self.filters;
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(
            Name::from_ascii(&name).map_err(|e| e.to_string())?,
            RecordType::A,
        ));
        let bytes = q.to_vec().map_err(|e| e.to_string())?;
        let sock = UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        sock.connect(self.server)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        sock.send(&bytes).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 2048];
        loop {
            let n = sock
                .recv(&mut buf)
                .await
                .map_err(|e| format!("recv: {e}"))?;
            let Ok(reply) = Message::from_vec(&buf[..n]) else {
                return Err(format!("{name}: unparsable answer"));
            };
            if reply.metadata.id != q.metadata.id {
                continue;
            }
            let code = reply.metadata.response_code;
            let has_a = reply
                .answers
                .iter()
                .any(|r| r.data == RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::LOCALHOST)));
            return match (allowed, code) {
                (true, ResponseCode::NoError) if has_a => Ok(Outcome::Allowed {
                    bytes: 0,
                    ready: None,
                }),
                (false, ResponseCode::Refused | ResponseCode::NXDomain) => Ok(Outcome::Denied),
                (true, c) => Err(format!(
                    "allowed {name}: rcode {c}, A 127.0.0.1 present: {has_a}"
                )),
                (false, c) => Err(format!("denied {name}: rcode {c}, expected REFUSED")),
            };
        }
    }
}
