//! The TLS ClientHello parser on arbitrary bytes: never panics, never reads
//! past the buffer (the sanitizer checks), and a result other than
//! `Incomplete` never turns into `Incomplete` when bytes are appended.
#![no_main]

// The parsers are pure modules: compiled alone, so this build does not pull
// in the eBPF loader and the async runtime of the `egressd` crate.
#[path = "../../proxy/src/peek/mod.rs"]
#[allow(dead_code, missing_docs)]
mod peek;

use libfuzzer_sys::fuzz_target;
use peek::{PeekError, PeekLimits, clienthello};

fuzz_target!(|data: &[u8]| {
    let limits = PeekLimits {
        max_client_hello: 4096,
        max_http_head: 4096,
    };
    let mut buf = vec![22u8];
    buf.extend_from_slice(data);
    let whole = peek::classify(&buf, &limits);
    if buf.len() >= limits.buffer_cap() {
        assert_ne!(whole, Err(PeekError::Incomplete));
    }
    if let Ok(hello) = clienthello::parse(&buf, limits.max_client_hello) {
        assert!(hello.wire_len <= buf.len());
        // Appending bytes after a complete hello changes nothing.
        let mut more = buf.clone();
        more.extend_from_slice(b"\x17\x03\x03\x00\x01\x00");
        assert_eq!(clienthello::parse(&more, limits.max_client_hello), Ok(hello));
    }
});
