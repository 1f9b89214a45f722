//! Any bytes as a policy: parsing never panics, every diagnostic has a
//! position inside the input, and a policy that loads answers decisions for
//! names and addresses taken from the same bytes without panicking.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use egressd_policy::{AssumeBound, JobContext, NoResolutions, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // YAML breaks lines at "\n", "\r\n" and a lone "\r".
    let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() as u32 + 1;
    let loaded = match Policy::parse("fuzz.yaml", text) {
        Ok(l) => l,
        Err(d) => {
            assert!(!d.0.is_empty());
            for e in &d.0 {
                assert!(e.line >= 1 && e.line <= lines && e.col >= 1, "{e}");
            }
            return;
        }
    };
    let labels: Vec<String> = text.split_whitespace().take(3).map(str::to_owned).collect();
    let job = JobContext {
        repository: text.lines().next(),
        labels: &labels,
    };
    let rules = loaded.policy.ruleset(&job);
    let mut raw = [0u8; 16];
    for (d, s) in raw.iter_mut().zip(data.iter().rev()) {
        *d = *s;
    }
    let v6 = Ipv6Addr::from(raw);
    for ip in [
        IpAddr::V6(v6),
        IpAddr::V4(
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        ),
    ] {
        let dst = SocketAddr::new(ip, u16::from_be_bytes([raw[4], raw[5]]));
        for word in text
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .take(16)
        {
            let _ = rules.decide_dns(word);
            let _ = rules.decide_name(word, dst.port());
            let _ = rules.decide_connect(dst, Some(word), &AssumeBound);
        }
        let _ = rules.decide_connect(dst, None, &NoResolutions);
    }
});
