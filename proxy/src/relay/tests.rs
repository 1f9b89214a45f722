use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cut::CutSignal;

use super::{BUFFER_LINGER, BUFFER_SIZE, Buffer, Ending, INITIAL_BUFFER_SIZE, relay};

use crate::test_support::tcp_pair as pair;

#[tokio::test]
async fn moves_bytes_both_ways_and_passes_half_close_on() {
    let (mut client, proxy_client_side) = pair().await;
    let (proxy_upstream_side, mut server) = pair().await;
    let cut = CutSignal::new();
    let relay = tokio::spawn(async move {
        relay(
            proxy_client_side,
            proxy_upstream_side,
            Duration::from_secs(30),
            &cut,
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
            &CutSignal::new(),
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
    let cut = CutSignal::new();
    cut.raise();
    let t = relay(a, b, Duration::from_secs(30), &cut, &|_, _| {}).await;
    assert_eq!(t.ending, Ending::Shutdown);
}

/// The cut raised while the relay waits on both sockets wakes it: the relay
/// registered with the signal once, and reads only its flag after that.
#[tokio::test]
async fn a_cut_raised_while_the_relay_waits_ends_it() {
    let (mut client, a) = pair().await;
    let (b, mut server) = pair().await;
    let cut = std::sync::Arc::new(CutSignal::new());
    let relay = tokio::spawn({
        let cut = std::sync::Arc::clone(&cut);
        async move { relay(a, b, Duration::from_secs(60), &cut, &|_, _| {}).await }
    });
    // Traffic first, so the relay has been woken (and re-polled) before.
    client.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    cut.raise();
    let t = tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("a raised cut wakes a waiting relay")
        .unwrap();
    assert_eq!(t.ending, Ending::Shutdown);
    assert_eq!(t.up, 4);
}

#[tokio::test]
async fn a_client_reset_ends_the_tunnel_even_if_the_upstream_stays_silent() {
    let (client, a) = pair().await;
    let (b, _silent_server) = pair().await;
    let relay = tokio::spawn(async move {
        relay(a, b, Duration::from_secs(60), &CutSignal::new(), &|_, _| {}).await
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
    assert_eq!(b.pending_from(0), &[1u8; 100][..]);
    assert_eq!(
        b.space().capacity(),
        INITIAL_BUFFER_SIZE,
        "small rest, small buffer"
    );
    let mut b = Buffer::new();
    b.keep(&vec![2u8; 40 * 1024]);
    assert_eq!(b.pending_from(0).len(), 40 * 1024);
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
        relay(a, b, Duration::from_secs(30), &CutSignal::new(), &|_, _| {}).await
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

/// A direction whose writer fell behind takes a buffer of its own, and
/// gives it back once it has been quiet for [`super::BUFFER_LINGER`]; the
/// relay goes on relaying afterwards.
#[tokio::test]
async fn a_buffer_taken_for_a_slow_writer_is_given_back_when_the_direction_goes_quiet() {
    let (mut client, a) = pair().await;
    let (b, mut server) = pair().await;
    let cut = CutSignal::new();
    let mut relay = std::pin::pin!(relay(a, b, Duration::from_secs(60), &cut, &|_, _| {}));
    // Drive the relay for `d`, or until `until` holds.
    async fn drive(
        relay: &mut std::pin::Pin<&mut super::Relay<'_>>,
        d: Duration,
        until: impl Fn(&super::Relay<'_>) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                t = relay.as_mut() => panic!("the relay ended: {t:?}"),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            if until(relay) {
                return true;
            }
        }
        false
    }
    let data = vec![5u8; 8 * 1024 * 1024];
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&sent).await.unwrap();
        client
    });
    // The server reads nothing yet: the up direction's writer falls behind.
    assert!(
        drive(&mut relay, Duration::from_secs(10), |r| r.up.buf.held()).await,
        "no buffer taken for a writer that is behind"
    );
    // The server reads everything (the relay driven meanwhile).
    let mut got = vec![0u8; data.len()];
    tokio::select! {
        t = relay.as_mut() => panic!("the relay ended: {t:?}"),
        r = server.read_exact(&mut got) => { r.unwrap(); }
    }
    assert!(got == data, "bytes lost or reordered");
    let mut client = writer.await.unwrap();
    assert!(
        relay.up.buf.held(),
        "the buffer is kept while data may follow"
    );
    // Quiet for longer than the linger: the buffer is given back.
    assert!(
        drive(&mut relay, BUFFER_LINGER * 3, |r| !r.up.buf.held()).await,
        "a quiet direction kept its buffer"
    );
    // And the tunnel still relays.
    client.write_all(b"more").await.unwrap();
    let mut more = [0u8; 4];
    tokio::select! {
        t = relay.as_mut() => panic!("the relay ended: {t:?}"),
        r = server.read_exact(&mut more) => { r.unwrap(); }
    }
    assert_eq!(&more, b"more");
}
