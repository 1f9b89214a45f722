//! `dst` and `src` (`ip:port`) as the standard library writes them: IPv4
//! addresses digit by digit into a stack buffer (two per record, and the
//! formatting machinery cost more than the rest of a record's JSON), IPv6
//! through `Display`. Reading back is serde's own.

use std::net::{SocketAddr, SocketAddrV4};

use serde::Serializer;

/// `a.b.c.d:port`: at most 21 bytes.
const V4_MAX: usize = 21;

/// Serialise an address field (the caller skips `None`, but it is written
/// as JSON `null` if it comes).
pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(SocketAddr::V4(a)) => {
            let mut buf = [0u8; V4_MAX];
            let n = write_v4(a, &mut buf);
            // Digits, dots and a colon only.
            match std::str::from_utf8(&buf[..n]) {
                Ok(text) => s.serialize_str(text),
                Err(_) => s.collect_str(a),
            }
        }
        Some(a) => s.collect_str(a),
        None => s.serialize_none(),
    }
}

/// Append `a` (`a.b.c.d:port`) to `out`.
pub fn append_v4(a: &SocketAddrV4, out: &mut Vec<u8>) {
    let mut buf = [0u8; V4_MAX];
    let n = write_v4(a, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

/// Write `a` into `buf`; returns the length.
fn write_v4(a: &SocketAddrV4, buf: &mut [u8; V4_MAX]) -> usize {
    let mut n = 0;
    let mut put = |bytes: &[u8]| {
        buf[n..n + bytes.len()].copy_from_slice(bytes);
        n += bytes.len();
    };
    let mut digits = itoa::Buffer::new();
    for (i, octet) in a.ip().octets().into_iter().enumerate() {
        if i > 0 {
            put(b".");
        }
        put(digits.format(octet).as_bytes());
    }
    put(b":");
    put(digits.format(a.port()).as_bytes());
    n
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    use proptest::prelude::*;

    use super::*;

    #[derive(serde::Serialize)]
    struct Ours(#[serde(serialize_with = "serialize")] Option<SocketAddr>);

    #[derive(serde::Serialize)]
    struct Serdes(Option<SocketAddr>);

    proptest! {
        /// Byte for byte what serde writes (the `Display` form).
        #[test]
        fn same_as_serde(v4 in any::<u32>(), v6 in any::<u128>(), port in any::<u16>(), scope in prop_oneof![Just(0u32), any::<u32>()]) {
            for a in [
                SocketAddr::new(Ipv4Addr::from(v4).into(), port),
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(v6), port, 0, scope)),
                SocketAddr::new(Ipv6Addr::from(v6).into(), port),
            ] {
                prop_assert_eq!(
                    serde_json::to_string(&Ours(Some(a))).unwrap(),
                    serde_json::to_string(&Serdes(Some(a))).unwrap()
                );
            }
        }
    }

    #[test]
    fn edges() {
        for (a, text) in [
            ("0.0.0.0:0", "\"0.0.0.0:0\""),
            ("255.255.255.255:65535", "\"255.255.255.255:65535\""),
            ("10.0.0.1:443", "\"10.0.0.1:443\""),
            ("[::1]:53", "\"[::1]:53\""),
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(serde_json::to_string(&Ours(Some(a))).unwrap(), text);
        }
        assert_eq!(serde_json::to_string(&Ours(None)).unwrap(), "null");
    }
}
