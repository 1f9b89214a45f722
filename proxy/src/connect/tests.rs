use std::net::IpAddr;

use super::{ConnectTarget, HeadError, Target, parse_head};

fn name(n: &str, port: u16) -> ConnectTarget {
    ConnectTarget {
        host: Target::Name(n.into()),
        port,
    }
}

fn ip(i: &str, port: u16) -> ConnectTarget {
    ConnectTarget {
        host: Target::Ip(i.parse::<IpAddr>().unwrap()),
        port,
    }
}

#[test]
fn connect_targets_parse() {
    let table: &[(&str, ConnectTarget)] = &[
        (
            "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            name("a.test", 443),
        ),
        (
            "CONNECT API.Example.COM.:8443 HTTP/1.1\r\n\r\n",
            name("api.example.com", 8443),
        ),
        (
            "CONNECT 198.51.100.7:22 HTTP/1.1\r\n\r\n",
            ip("198.51.100.7", 22),
        ),
        (
            "CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n",
            ip("2001:db8::1", 443),
        ),
        (
            "CONNECT [::ffff:198.51.100.7]:443 HTTP/1.1\r\n\r\n",
            ip("198.51.100.7", 443),
        ),
        ("connect a.test:1 HTTP/1.0\r\n\r\n", name("a.test", 1)),
    ];
    for (head, want) in table {
        assert_eq!(parse_head(head.as_bytes()).as_ref(), Ok(want), "{head:?}");
    }
}

#[test]
fn bad_targets_and_methods_are_refused() {
    let bad_target = [
        "CONNECT a.test HTTP/1.1\r\n\r\n",
        "CONNECT a.test:0 HTTP/1.1\r\n\r\n",
        "CONNECT a.test:99999 HTTP/1.1\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\n\r\n",
        "CONNECT a..test:443 HTTP/1.1\r\n\r\n",
        "CONNECT [nonsense]:443 HTTP/1.1\r\n\r\n",
        "CONNECT a test:443 HTTP/1.1\r\n\r\n",
        "CONNECT user@a.test:443 HTTP/1.1\r\n\r\n",
    ];
    for head in bad_target {
        assert!(
            matches!(
                parse_head(head.as_bytes()),
                Err(HeadError::BadTarget(_) | HeadError::Malformed(_))
            ),
            "{head:?}"
        );
    }
    assert!(matches!(
        parse_head(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"),
        Err(HeadError::NotConnect(m)) if m == "GET"
    ));
    assert!(matches!(
        parse_head(b"\x16\x03\x01\x00\x05hello\r\n\r\n"),
        Err(HeadError::Malformed(_))
    ));
}

/// What an open tunnel's task holds inline, measured on the real futures:
/// the per-connection task must stay small, because 10,000 idle tunnels are
/// 10,000 of them (performance.md, W6).
#[tokio::test]
async fn an_idle_tunnels_task_stays_small() {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::{TcpListener, TcpStream};

    use crate::limits::Limits;
    use crate::test_support::TestEngine;

    let test = TestEngine::new("version: 1\n", Limits::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let a = TcpStream::connect(addr).await.unwrap();
    let (b, peer) = l.accept().await.unwrap();
    let c = TcpStream::connect(addr).await.unwrap();
    let handle = super::handle(Arc::clone(&test.engine), a, peer);
    let relay = crate::relay::relay(
        b,
        c,
        Duration::from_secs(1),
        test.engine.cut_tunnels(),
        &|_, _| {},
    );
    let (task, relay) = (
        std::mem::size_of_val(&handle),
        std::mem::size_of_val(&relay),
    );
    eprintln!("connect::handle future: {task} bytes; relay future: {relay} bytes");
    // The setup (head, resolution, peek), the rare denies and the closing
    // record's queueing are boxed; what stays is the relay (a hand-written
    // future of a few hundred bytes) plus the tunnel's own few fields.
    assert!(relay <= 640, "the relay future grew to {relay} bytes");
    assert!(
        task <= relay + 640,
        "the task of an open tunnel holds {task} bytes, the relay only {relay}: \
         is the setup future still inline?"
    );
}
