use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{BUFFER_SIZE, Buffer, Ending, INITIAL_BUFFER_SIZE, relay};

use crate::test_support::tcp_pair as pair;

#[tokio::test]
async fn moves_bytes_both_ways_and_passes_half_close_on() {
    let (mut client, proxy_client_side) = pair().await;
    let (proxy_upstream_side, mut server) = pair().await;
    let token = CancellationToken::new();
    let relay = tokio::spawn(async move {
        relay(
            proxy_client_side,
            proxy_upstream_side,
            Duration::from_secs(30),
            token,
            &|_, _| {},
        )
        .await
    });
    let big = vec![7u8; 3 * 1024 * 1024];
    client.write_all(&big).await.unwrap();
    // Half-close: the server sees EOF after the data but can still answer.
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), big.len());
    server
        .write_all(b"answer after the client's FIN")
        .await
        .unwrap();
    server.shutdown().await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer after the client's FIN");
    let t = tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.up, big.len() as u64);
    assert_eq!(t.down, answer.len() as u64);
    assert_eq!(t.ending, Ending::Closed);
}

#[tokio::test]
async fn an_idle_tunnel_is_cut() {
    let (_client, a) = pair().await;
    let (b, _server) = pair().await;
    let t = tokio::time::timeout(
        Duration::from_secs(10),
        relay(
            a,
            b,
            Duration::from_millis(100),
            CancellationToken::new(),
            &|_, _| {},
        ),
    )
    .await
    .unwrap();
    assert_eq!(t.ending, Ending::Idle);
}

#[tokio::test]
async fn shutdown_cuts_the_tunnel() {
    let (_client, a) = pair().await;
    let (b, _server) = pair().await;
    let token = CancellationToken::new();
    token.cancel();
    let t = relay(a, b, Duration::from_secs(30), token, &|_, _| {}).await;
    assert_eq!(t.ending, Ending::Shutdown);
}

#[tokio::test]
async fn a_client_reset_ends_the_tunnel_even_if_the_upstream_stays_silent() {
    let (client, a) = pair().await;
    let (b, _silent_server) = pair().await;
    let relay = tokio::spawn(async move {
        relay(
            a,
            b,
            Duration::from_secs(60),
            CancellationToken::new(),
            &|_, _| {},
        )
        .await
    });
    // Give the relay a moment to start reading, then reset the client side.
    tokio::time::sleep(Duration::from_millis(50)).await;
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client);
    let t = tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("a reset ends the relay, no idle wait")
        .unwrap();
    assert_eq!(t.ending, Ending::ClientError);
}

#[test]
fn a_buffer_starts_small_doubles_when_filled_and_restarts_small_when_released() {
    let mut b = Buffer::new();
    assert!(!b.held(), "nothing allocated before data arrives");
    assert_eq!(b.space().capacity(), INITIAL_BUFFER_SIZE);
    b.consumed(100);
    assert_eq!(b.space().capacity(), INITIAL_BUFFER_SIZE, "a short read");
    let mut sizes = Vec::new();
    for _ in 0..8 {
        let cap = b.space().capacity();
        sizes.push(cap / 1024);
        b.consumed(cap);
    }
    assert_eq!(sizes, [16, 32, 64, 128, 256, 256, 256, 256]);
    assert!(b.space().capacity() <= BUFFER_SIZE);
    b.release();
    assert!(!b.held());
    assert_eq!(b.space().capacity(), INITIAL_BUFFER_SIZE);
}

#[test]
fn bytes_the_writer_could_not_take_get_a_buffer_sized_for_them() {
    let mut b = Buffer::new();
    b.keep(&[1u8; 100]);
    assert!(b.held());
    assert_eq!(b.pending(), &[1u8; 100][..]);
    assert_eq!(
        b.space().capacity(),
        INITIAL_BUFFER_SIZE,
        "small rest, small buffer"
    );
    let mut b = Buffer::new();
    b.keep(&vec![2u8; 40 * 1024]);
    assert_eq!(b.pending().len(), 40 * 1024);
    assert_eq!(b.space().capacity(), 64 * 1024, "the next power of two");
    let mut b = Buffer::new();
    b.keep(&vec![3u8; BUFFER_SIZE]);
    assert_eq!(b.space().capacity(), BUFFER_SIZE, "never above the cap");
    b.release();
    assert!(!b.held(), "a quiet direction holds nothing");
}

/// A reader that stops reading makes the relay keep what the socket would
/// not take, and every byte still arrives, in order, once it reads again.
#[tokio::test]
async fn a_slow_reader_gets_every_byte_in_order() {
    let (mut client, a) = pair().await;
    let (b, mut server) = pair().await;
    let relay = tokio::spawn(async move {
        relay(
            a,
            b,
            Duration::from_secs(30),
            CancellationToken::new(),
            &|_, _| {},
        )
        .await
    });
    let data: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client.shutdown().await.unwrap();
        client
    });
    // Let the relay fill every socket buffer before the server reads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert!(got == data, "bytes lost or reordered");
    drop(server);
    drop(writer.await.unwrap());
    let t = tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.up, data.len() as u64);
}
