//! Peek parser tests: real ClientHellos captured from openssl s_client, curl,
//! python's ssl and rustls (fixtures/), hand-built hellos for every corner,
//! HTTP heads, and property tests (no panic, prefix-monotone, bounded).

use proptest::prelude::*;

use super::clienthello::{self, EXT_ECH};
use super::http;
use super::*;
use crate::test_support::{hello_msg, records, sni_ext};

const OPENSSL: &[u8] = include_bytes!("fixtures/openssl_s_client.bin");
const CURL: &[u8] = include_bytes!("fixtures/curl.bin");
const CURL_NO_SNI: &[u8] = include_bytes!("fixtures/curl_ip_no_sni.bin");
const PYTHON: &[u8] = include_bytes!("fixtures/python_ssl.bin");
const RUSTLS: &[u8] = include_bytes!("fixtures/rustls.bin");

/// (fixture, expected SNI)
const FIXTURES: &[(&[u8], Option<&str>)] = &[
    (OPENSSL, Some("www.example.com")),
    (CURL, Some("api.example.test")),
    (CURL_NO_SNI, None),
    (PYTHON, Some("py.example.org")),
    (RUSTLS, Some("rustls.example.net")),
];

fn lim() -> PeekLimits {
    PeekLimits::default()
}

fn tls(sni: Option<&str>, ech: bool) -> Result<Peeked, PeekError> {
    Ok(Peeked::Tls {
        sni: sni.map(str::to_owned),
        ech,
    })
}

/// The handshake message inside a fixture (all our captures are one record).
fn message_of(wire: &[u8]) -> &[u8] {
    assert_eq!(wire[0], 22);
    let len = usize::from(u16::from_be_bytes([wire[3], wire[4]]));
    assert_eq!(wire.len(), 5 + len, "fixture is a single record");
    &wire[5..]
}

fn hello_with_sni(name: &[u8]) -> Vec<u8> {
    records(&hello_msg(&[0x1301], &[(0, sni_ext(&[(0, name)]))]), 16384)
}

// ---- real ClientHellos ----

#[test]
fn real_client_hellos_give_their_sni() {
    for (wire, sni) in FIXTURES {
        assert_eq!(classify(wire, &lim()), tls(*sni, false), "{sni:?}");
    }
}

#[test]
fn every_prefix_of_a_real_hello_is_incomplete() {
    for (wire, _) in FIXTURES {
        for n in 0..wire.len() {
            assert_eq!(
                classify(&wire[..n], &lim()),
                Err(PeekError::Incomplete),
                "prefix {n}"
            );
        }
    }
}

#[test]
fn hello_split_across_records_is_reassembled() {
    for (wire, sni) in FIXTURES {
        // 1 byte: even the handshake header is split; 3 and 100: odd cuts.
        for chunk in [1, 2, 3, 100, 16384] {
            let re = records(message_of(wire), chunk);
            assert_eq!(classify(&re, &lim()), tls(*sni, false), "chunk {chunk}");
            let hello = clienthello::parse(&re, 16384).unwrap();
            assert_eq!(hello.wire_len, re.len());
        }
    }
}

#[test]
fn bytes_after_the_hello_are_not_read() {
    let mut wire = CURL.to_vec();
    wire.extend_from_slice(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]);
    assert_eq!(
        classify(&wire, &lim()),
        tls(Some("api.example.test"), false)
    );
    assert_eq!(
        clienthello::parse(&wire, 16384).unwrap().wire_len,
        CURL.len()
    );
}

// ---- sizes ----

#[test]
fn oversize_hello_is_refused_from_its_header() {
    // Only the record header and handshake header: 20000 bytes announced.
    let wire = [22, 3, 1, 0x40, 0x00, 1, 0, 0x4e, 0x20];
    assert_eq!(classify(&wire, &lim()), Err(PeekError::TooLarge));
    // A real hello over a tighter cap.
    let small = PeekLimits {
        max_client_hello: 200,
        max_http_head: 200,
    };
    assert_eq!(classify(CURL, &small), Err(PeekError::TooLarge));
}

#[test]
fn fragmentation_overhead_is_capped_too() {
    let limits = PeekLimits {
        max_client_hello: 400,
        max_http_head: 400,
    };
    let msg = message_of(OPENSSL);
    assert!(msg.len() <= 400);
    // 1-byte records: 6 wire bytes per hello byte, far over 2 x 400.
    let wire = records(msg, 1);
    assert_eq!(classify(&wire, &limits), Err(PeekError::TooLarge));
    assert_eq!(
        classify(&wire[..limits.buffer_cap()], &limits),
        Err(PeekError::TooLarge)
    );
}

// ---- malformed records ----

#[test]
fn truncated_or_interrupted_records_are_malformed() {
    let msg = message_of(CURL);
    // The first record carries half the hello; an application_data record follows.
    let mut wire = records(&msg[..200], 200);
    wire.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
    assert!(matches!(
        classify(&wire, &lim()),
        Err(PeekError::Malformed(_))
    ));
    // Alert record as the second record.
    let mut wire = records(&msg[..200], 200);
    wire.push(21);
    assert!(matches!(
        classify(&wire, &lim()),
        Err(PeekError::Malformed(_))
    ));
}

#[test]
fn bad_record_headers_are_malformed() {
    let bad_version = [22, 2, 0, 0, 5];
    assert!(matches!(
        classify(&bad_version, &lim()),
        Err(PeekError::Malformed(_))
    ));
    let empty = [22, 3, 1, 0, 0];
    assert!(matches!(
        classify(&empty, &lim()),
        Err(PeekError::Malformed(_))
    ));
    let too_long = [22, 3, 1, 0x40, 0x01, 1];
    assert!(matches!(
        classify(&too_long, &lim()),
        Err(PeekError::Malformed(_))
    ));
    // A ServerHello (type 2) where a ClientHello must be.
    let server_hello = [22, 3, 3, 0, 4, 2, 0, 0, 0];
    assert!(matches!(
        classify(&server_hello, &lim()),
        Err(PeekError::Malformed(_))
    ));
}

#[test]
fn every_length_inside_the_hello_is_checked() {
    let good = hello_msg(&[0x1301], &[(0, sni_ext(&[(0, b"a.example")]))]);
    // Offsets inside `good` (after the 4-byte handshake header): version 0..2,
    // random 2..34, session id length at 34.
    let mut sid = good.clone();
    sid[4 + 34] = 33; // session id longer than 32
    let mut suites_odd = good.clone();
    suites_odd[4 + 35 + 32 + 1] = 3; // cipher_suites length 3
    let mut ext_over = good.clone();
    // The hello ends with the server_name extension: data length (2), list
    // length (2), name type (1), name length (2), "a.example" (9).
    let data_len_hi = ext_over.len() - 9 - 2 - 1 - 2 - 2;
    ext_over[data_len_hi] = 0xff; // extension data length overruns
    for (name, msg) in [("sid", sid), ("suites", suites_odd), ("ext", ext_over)] {
        let r = classify(&records(&msg, 16384), &lim());
        assert!(matches!(r, Err(PeekError::Malformed(_))), "{name}: {r:?}");
    }
    // Trailing bytes after the extensions block (message length grown to match).
    let mut trailing = good.clone();
    trailing.push(0);
    let body_len = (trailing.len() - 4) as u32;
    trailing[1..4].copy_from_slice(&body_len.to_be_bytes()[1..]);
    assert!(matches!(
        classify(&records(&trailing, 16384), &lim()),
        Err(PeekError::Malformed(_))
    ));
    // server_name_list length disagrees with the extension length.
    let mut ext = sni_ext(&[(0, b"a.example")]);
    ext.push(0);
    let msg = hello_msg(&[0x1301], &[(0, ext)]);
    assert!(matches!(
        classify(&records(&msg, 16384), &lim()),
        Err(PeekError::Malformed(_))
    ));
    // Empty server_name extension.
    let msg = hello_msg(&[0x1301], &[(0, Vec::new())]);
    assert!(matches!(
        classify(&records(&msg, 16384), &lim()),
        Err(PeekError::Malformed(_))
    ));
}

#[test]
fn hello_without_extensions_has_no_sni() {
    let mut body = vec![3, 1];
    body.extend_from_slice(&[0; 32]);
    body.extend_from_slice(&[0, 0, 2, 0, 0x2f, 1, 0]);
    let mut msg = vec![1, 0, 0, body.len() as u8];
    msg.extend_from_slice(&body);
    assert_eq!(classify(&records(&msg, 16384), &lim()), tls(None, false));
}

// ---- GREASE, ECH, server_name corners ----

#[test]
fn grease_values_are_skipped() {
    let msg = hello_msg(
        &[0x2a2a, 0x1301, 0xfafa],
        &[
            (0x0a0a, Vec::new()),
            (0, sni_ext(&[(0, b"grease.example")])),
            (0x1a1a, vec![0]),
            (0x2b, vec![2, 3, 4]),
        ],
    );
    assert_eq!(
        classify(&records(&msg, 16384), &lim()),
        tls(Some("grease.example"), false)
    );
}

#[test]
fn ech_is_recognised_and_the_outer_sni_reported() {
    // An ECH outer hello: type outer (0), kdf/aead, config id, enc, payload.
    let ech_payload = [0, 0, 1, 0, 1, 42, 0, 2, 0xaa, 0xbb, 0, 3, 1, 2, 3].to_vec();
    let msg = hello_msg(
        &[0x1301],
        &[
            (0, sni_ext(&[(0, b"public.example.net")])),
            (EXT_ECH, ech_payload.clone()),
        ],
    );
    assert_eq!(
        classify(&records(&msg, 16384), &lim()),
        tls(Some("public.example.net"), true)
    );
    // GREASE ECH without SNI.
    let msg = hello_msg(&[0x1301], &[(EXT_ECH, ech_payload.clone())]);
    assert_eq!(classify(&records(&msg, 16384), &lim()), tls(None, true));
    // Sent twice.
    let msg = hello_msg(
        &[0x1301],
        &[(EXT_ECH, ech_payload.clone()), (EXT_ECH, ech_payload)],
    );
    assert!(matches!(
        classify(&records(&msg, 16384), &lim()),
        Err(PeekError::Malformed(_))
    ));
}

#[test]
fn server_name_corners() {
    let ok = |name: &[u8], want: &str| {
        assert_eq!(
            classify(&hello_with_sni(name), &lim()),
            tls(Some(want), false)
        );
    };
    ok(b"MiXeD.Example.COM", "mixed.example.com");
    ok(b"trailing.example.", "trailing.example");
    ok(b"_srv.x-y.example", "_srv.x-y.example");
    ok(b"1.2.3.example", "1.2.3.example");
    for bad in [
        &b"192.0.2.1"[..],
        b"2001:db8::1",
        b"::1",
        b"1.2.3",
        b"",
        b".",
        b"a..example",
        b".a.example",
        b"sp ace.example",
        b"ex\xc3\xa4mple.com",
        b"nul\0.example",
    ] {
        let r = classify(&hello_with_sni(bad), &lim());
        assert!(matches!(r, Err(PeekError::Malformed(_))), "{bad:?}: {r:?}");
    }
    let long_label = vec![b'a'; 64];
    assert!(matches!(
        classify(&hello_with_sni(&long_label), &lim()),
        Err(PeekError::Malformed(_))
    ));
}

#[test]
fn server_name_with_several_entries() {
    // A host_name beside an unknown name type: the host_name is taken.
    let msg = hello_msg(
        &[0x1301],
        &[(0, sni_ext(&[(7, b"xx"), (0, b"one.example")]))],
    );
    assert_eq!(
        classify(&records(&msg, 16384), &lim()),
        tls(Some("one.example"), false)
    );
    // Two host_names: refused.
    let msg = hello_msg(
        &[0x1301],
        &[(0, sni_ext(&[(0, b"one.example"), (0, b"two.example")]))],
    );
    assert!(matches!(
        classify(&records(&msg, 16384), &lim()),
        Err(PeekError::Malformed(_))
    ));
    // Two server_name extensions: refused.
    let msg = hello_msg(
        &[0x1301],
        &[
            (0, sni_ext(&[(0, b"one.example")])),
            (0, sni_ext(&[(0, b"two.example")])),
        ],
    );
    assert!(matches!(
        classify(&records(&msg, 16384), &lim()),
        Err(PeekError::Malformed(_))
    ));
}

// ---- HTTP ----

fn http_peek(s: &str) -> Result<Peeked, PeekError> {
    classify(s.as_bytes(), &lim())
}

fn http_ok(host: Option<&str>, method: &str) -> Result<Peeked, PeekError> {
    Ok(Peeked::Http {
        host: host.map(str::to_owned),
        method: method.to_owned(),
    })
}

#[test]
fn http_host_header() {
    assert_eq!(
        http_peek("GET /x HTTP/1.1\r\nUser-Agent: t\r\nHost: Example.COM:8080\r\n\r\n"),
        http_ok(Some("example.com"), "GET")
    );
    assert_eq!(
        http_peek("POST / HTTP/1.1\r\nhOsT:\t a.example.  \r\n\r\nbody"),
        http_ok(Some("a.example"), "POST")
    );
    assert_eq!(
        http_peek("GET / HTTP/1.1\r\nHost: [2001:DB8::1]:80\r\n\r\n"),
        http_ok(Some("2001:db8::1"), "GET")
    );
    assert_eq!(
        http_peek("GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
        http_ok(None, "GET")
    );
    assert_eq!(
        http_peek("GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        http_ok(None, "GET")
    );
    assert_eq!(
        http_peek("OPTIONS * HTTP/1.1\r\nHost: o.example\r\n\r\n"),
        http_ok(Some("o.example"), "OPTIONS")
    );
}

#[test]
fn http_absolute_and_authority_form_set_the_host() {
    assert_eq!(
        http_peek("GET http://Abs.Example:81/p?q HTTP/1.1\r\n\r\n"),
        http_ok(Some("abs.example"), "GET")
    );
    assert_eq!(
        http_peek("GET http://abs.example/ HTTP/1.1\r\nHost: abs.example\r\n\r\n"),
        http_ok(Some("abs.example"), "GET")
    );
    assert!(matches!(
        http_peek("GET http://abs.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n"),
        Err(PeekError::Malformed(_))
    ));
    let wire = b"CONNECT Tunnel.Example:443 HTTP/1.1\r\nHost: tunnel.example:443\r\n\r\nXYZ";
    let head = http::parse(wire, 1024).unwrap();
    assert_eq!(head.host.as_deref(), Some("tunnel.example"));
    assert_eq!(head.port, Some(443));
    assert_eq!(head.method, "CONNECT");
    assert_eq!(head.head_len, wire.len() - 3);
    let head = http::parse(b"CONNECT [2001:db8::5]:22 HTTP/1.1\r\n\r\n", 1024).unwrap();
    assert_eq!(head.host.as_deref(), Some("2001:db8::5"));
    assert_eq!(head.port, Some(22));
}

#[test]
fn http_ambiguities_are_malformed() {
    for bad in [
        "GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\n b.example\r\n\r\n",
        "GET / HTTP/1.1\r\nX: y\r\n\tfolded\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",
        "GET / HTTP/1.1\nHost: a.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.exa\rmple\r\n\r\n",
        "GET / HTTP/2.0\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n",
        "GET http://user@a.example/ HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a..example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\x01\r\n\r\n",
        "CONNECT a.example HTTP/1.1\r\n\r\n",
        "GET a.example HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ] {
        assert!(
            matches!(http_peek(bad), Err(PeekError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn http_prefixes_are_incomplete_and_oversize_is_refused() {
    let req = "GET /x HTTP/1.1\r\nHost: p.example\r\nAccept: */*\r\n\r\n";
    for n in 0..req.len() {
        assert_eq!(http_peek(&req[..n]), Err(PeekError::Incomplete), "{n}");
    }
    let small = PeekLimits {
        max_client_hello: 64,
        max_http_head: 64,
    };
    let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
    long.resize(64, b'a');
    assert_eq!(classify(&long, &small), Err(PeekError::TooLarge));
    assert_eq!(classify(&long[..63], &small), Err(PeekError::Incomplete));
}

#[test]
fn not_tls_nor_http_is_other() {
    assert_eq!(
        classify(b"SSH-2.0-OpenSSH_9.6\r\n", &lim()),
        Ok(Peeked::Other)
    );
    assert_eq!(classify(b"\x00\x01\x02", &lim()), Ok(Peeked::Other));
    assert_eq!(
        classify(b"get / HTTP/1.1\r\n\r\n", &lim()),
        Ok(Peeked::Other)
    );
    assert_eq!(classify(b" GET", &lim()), Ok(Peeked::Other));
    assert_eq!(classify(b"\x80\x2e\x01\x03\x01", &lim()), Ok(Peeked::Other));
    assert_eq!(
        classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &lim()),
        Ok(Peeked::Other)
    );
    assert_eq!(
        classify(b"PRI * HTTP/2", &lim()),
        Err(PeekError::Incomplete)
    );
    assert_eq!(classify(b"GE", &lim()), Err(PeekError::Incomplete));
    assert_eq!(classify(b"", &lim()), Err(PeekError::Incomplete));
}

// ---- properties ----

fn small_limits() -> PeekLimits {
    PeekLimits {
        max_client_hello: 600,
        max_http_head: 256,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn classify_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = classify(&buf, &lim());
    }

    #[test]
    fn classify_never_panics_on_tls_shaped_bytes(
        len in any::<u16>(),
        body in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut buf = vec![22, 3, 1];
        buf.extend_from_slice(&len.to_be_bytes());
        buf.push(1);
        buf.extend_from_slice(&body);
        let _ = classify(&buf, &lim());
    }

    #[test]
    fn mutated_real_hellos_never_panic(
        which in 0..FIXTURES.len(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        chunk in 1usize..600,
    ) {
        let mut wire = records(message_of(FIXTURES[which].0), chunk);
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let _ = classify(&wire, &lim());
    }

}

proptest! {
    // Each case checks every prefix: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_prefix_of_a_fragmented_hello_is_incomplete(
        which in 0..FIXTURES.len(),
        chunk in 1usize..600,
    ) {
        let (fixture, sni) = FIXTURES[which];
        let wire = records(message_of(fixture), chunk);
        prop_assert_eq!(classify(&wire, &lim()), tls(sni, false));
        for n in 0..wire.len() {
            prop_assert_eq!(classify(&wire[..n], &lim()), Err(PeekError::Incomplete));
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_full_buffer_is_never_incomplete(
        first in prop::sample::select(vec![22u8, b'G', b'P']),
        rest in proptest::collection::vec(any::<u8>(), 1200..1400),
    ) {
        let limits = small_limits();
        let mut buf = vec![first];
        buf.extend_from_slice(&rest);
        prop_assert!(buf.len() >= limits.buffer_cap());
        prop_assert_ne!(classify(&buf, &limits), Err(PeekError::Incomplete));
    }

    #[test]
    fn a_full_buffer_of_tiny_records_is_never_incomplete(
        frag in proptest::collection::vec(any::<u8>(), 1200..1400),
    ) {
        // Valid-looking 1-byte records that start a large hello.
        let mut msg = vec![1, 0, 1, 0];
        msg.extend_from_slice(&frag);
        let limits = small_limits();
        let wire = records(&msg, 1);
        let r = classify(&wire[..limits.buffer_cap()], &limits);
        prop_assert_ne!(r, Err(PeekError::Incomplete));
    }
}
