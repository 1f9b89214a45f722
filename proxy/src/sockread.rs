//! Reads from a TCP socket that save the read which would only say "nothing
//! more": TCP's `recv` returns less than asked only when its receive queue
//! is empty, so after a short read the socket's read readiness is cleared
//! at once, as a `WouldBlock` would clear it, instead of being discovered
//! by one more `recv` per burst (nginx does the same under edge-triggered
//! epoll). Nothing is lost: data or a FIN arriving meanwhile raises a newer
//! readiness, which tokio does not clear, and a seen end of stream is never
//! cleared.

use std::io;

use bytes::BufMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Read what `stream` has into `buf`'s spare capacity, at most `max` bytes,
/// without waiting: `WouldBlock` when nothing is there. A short read
/// clears the read readiness (see the module documentation).
pub fn try_read(stream: &TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    let mut short = None;
    let r = stream.try_io(Interest::READABLE, || {
        let mut limited = (&mut *buf).limit(max);
        let asked = limited.chunk_mut().len();
        let n = stream.try_read_buf(&mut limited)?;
        if n > 0 && n < asked {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (_, Some(n)) => Ok(n),
        (r, None) => r,
    }
}

/// Wait until `stream` has something to read, then [`try_read`] it.
pub async fn read(stream: &TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match try_read(stream, buf, max) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::test_support::tcp_pair as pair;

    /// After a short read the next bytes, and then the end of stream, are
    /// still seen: a cleared readiness never hides what came after it.
    #[tokio::test]
    async fn nothing_is_missed_after_a_short_read() {
        let (mut tx, rx) = pair().await;
        let mut buf = Vec::with_capacity(64);
        for round in 0..50u8 {
            tx.write_all(&[round; 10]).await.unwrap();
            buf.clear();
            let n = tokio::time::timeout(Duration::from_secs(5), read(&rx, &mut buf, 64))
                .await
                .expect("data after a short read is seen")
                .unwrap();
            assert_eq!(n, 10);
            assert_eq!(buf, [round; 10]);
        }
        // Data and FIN together: the data, then the end.
        tx.write_all(b"last").await.unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        buf.clear();
        assert_eq!(read(&rx, &mut buf, 64).await.unwrap(), 4);
        let end = tokio::time::timeout(Duration::from_secs(5), read(&rx, &mut buf, 64))
            .await
            .expect("the end of stream after a short read is seen");
        assert_eq!(end.unwrap(), 0);
    }

    /// A read is bounded by `max`, and a full read leaves the rest readable.
    #[tokio::test]
    async fn reads_stop_at_max() {
        let (mut tx, rx) = pair().await;
        tx.write_all(&[7; 100]).await.unwrap();
        let mut buf = Vec::with_capacity(1024);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(read(&rx, &mut buf, 30).await.unwrap(), 30);
        assert_eq!(try_read(&rx, &mut buf, 1000).unwrap(), 70);
        assert_eq!(buf.len(), 100);
        assert_eq!(
            try_read(&rx, &mut buf, 1000).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }
}
