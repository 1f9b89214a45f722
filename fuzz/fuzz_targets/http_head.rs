//! The HTTP/1 request-head parser on arbitrary bytes: never panics, and a
//! parsed head's length lies inside the buffer and ends with CRLFCRLF.
#![no_main]

#[path = "../../proxy/src/peek/mod.rs"]
#[allow(dead_code, missing_docs)]
mod peek;

use libfuzzer_sys::fuzz_target;
use peek::{PeekLimits, http};

fuzz_target!(|data: &[u8]| {
    let limits = PeekLimits::default();
    let _ = peek::classify(data, &limits);
    if let Ok(head) = http::parse(data, limits.max_http_head) {
        assert!(head.head_len <= data.len());
        assert!(data[..head.head_len].ends_with(b"\r\n\r\n"));
        if let Some(host) = &head.host {
            assert!(!host.is_empty());
            assert_eq!(host, &host.to_ascii_lowercase());
        }
    }
});
