use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{Upstreams, is_reply_to, question};
use crate::dns::DnsError;

/// A query (or, with `response`, its answer header) for `name` (wire labels).
fn message(id: u16, name: &[u8], response: bool) -> Vec<u8> {
    let flags: [u8; 2] = if response { [0x81, 0x80] } else { [0x01, 0x00] };
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&flags);
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

const EXAMPLE: &[u8] = b"\x07example\x03com\x00";
const OTHER: &[u8] = b"\x05other\x03com\x00";

#[test]
fn a_reply_needs_the_id_and_the_question() {
    let q = message(0x1234, EXAMPLE, false);
    assert!(is_reply_to(&message(0x1234, EXAMPLE, true), &q));
    assert!(is_reply_to(
        &message(0x1234, b"\x07ExAmPlE\x03COM\x00", true),
        &q
    ));
    assert!(!is_reply_to(&message(0x1235, EXAMPLE, true), &q));
    assert!(!is_reply_to(&message(0x1234, OTHER, true), &q));
    assert!(
        !is_reply_to(&message(0x1234, EXAMPLE, false), &q),
        "QR unset"
    );
    let mut aaaa = message(0x1234, EXAMPLE, true);
    let at = aaaa.len() - 3;
    aaaa[at] = 28;
    assert!(!is_reply_to(&aaaa, &q), "another type");
    // A reply without the question section does not answer a question,
    // unless it is truncated (it only leads to a TCP retry).
    let mut bare = message(0x1234, EXAMPLE, true)[..12].to_vec();
    assert!(!is_reply_to(&bare, &q));
    bare[2] |= 0x02;
    assert!(is_reply_to(&bare, &q));
}

#[test]
fn the_question_section_is_found_or_refused() {
    let m = message(1, EXAMPLE, false);
    assert_eq!(question(&m), Some(&m[12..]));
    assert_eq!(question(&m[..m.len() - 1]), None, "cut short");
    let mut two = m.clone();
    two[5] = 2;
    assert_eq!(question(&two), None, "two questions");
    let mut compressed = m[..12].to_vec();
    compressed.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    assert_eq!(question(&compressed), None);
}

/// A loopback upstream that answers by hand.
async fn fake_upstream() -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    (sock, addr)
}

#[tokio::test]
async fn strays_are_skipped_and_a_clean_socket_is_reused() {
    let (server, addr) = fake_upstream().await;
    let upstreams = Upstreams::new(vec![addr], Duration::from_secs(5));

    let q1 = message(0x1111, EXAMPLE, false);
    let ask = {
        let (u, q) = (upstreams.clone(), q1.clone());
        tokio::spawn(async move { u.exchange(&q, false).await })
    };
    let mut buf = [0u8; 512];
    let (n, first_port) = server.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], &q1[..]);
    // Another question under the right id, then the wrong id: both skipped.
    server
        .send_to(&message(0x1111, OTHER, true), first_port)
        .await
        .unwrap();
    server
        .send_to(&message(0x2222, EXAMPLE, true), first_port)
        .await
        .unwrap();
    server
        .send_to(&message(0x1111, EXAMPLE, true), first_port)
        .await
        .unwrap();
    let x = ask.await.unwrap().unwrap();
    assert_eq!(x.reply, message(0x1111, EXAMPLE, true));
    assert_eq!(x.from, addr);
    assert!(!x.tcp);

    // A late duplicate of the first answer waits on the pooled socket; the
    // next query on that socket skips it.
    server
        .send_to(&message(0x1111, EXAMPLE, true), first_port)
        .await
        .unwrap();
    let q2 = message(0x3333, EXAMPLE, false);
    let ask = {
        let (u, q) = (upstreams.clone(), q2.clone());
        tokio::spawn(async move { u.exchange(&q, false).await })
    };
    let (n, second_port) = server.recv_from(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], &q2[..]);
    assert_eq!(second_port, first_port, "the pooled socket is reused");
    server
        .send_to(&message(0x3333, EXAMPLE, true), second_port)
        .await
        .unwrap();
    let x = ask.await.unwrap().unwrap();
    assert_eq!(x.reply, message(0x3333, EXAMPLE, true));
}

#[tokio::test]
async fn a_socket_that_timed_out_is_not_reused() {
    let (server, addr) = fake_upstream().await;
    let upstreams = Upstreams::new(vec![addr], Duration::from_millis(200));

    let ask = {
        let u = upstreams.clone();
        tokio::spawn(async move { u.exchange(&message(0x4444, EXAMPLE, false), false).await })
    };
    let mut buf = [0u8; 512];
    server.recv_from(&mut buf).await.unwrap();
    let err = ask.await.unwrap().unwrap_err();
    assert!(matches!(err, DnsError::Timeout(a, _) if a == addr));
    assert_eq!(pooled(&upstreams), 0, "a socket that timed out is closed");

    let ask = {
        let u = upstreams.clone();
        tokio::spawn(async move { u.exchange(&message(0x5555, EXAMPLE, false), false).await })
    };
    let (_, port) = server.recv_from(&mut buf).await.unwrap();
    server
        .send_to(&message(0x5555, EXAMPLE, true), port)
        .await
        .unwrap();
    assert!(ask.await.unwrap().is_ok());
    assert_eq!(pooled(&upstreams), 1, "a clean exchange keeps its socket");
}

fn pooled(upstreams: &Upstreams) -> usize {
    upstreams.pools[0].len()
}
