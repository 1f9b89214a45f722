//! The everyday HTTP clients of a job: curl (HTTP/1.1 and HTTP/2), wget,
//! python's `urllib` and `requests` (Debian's python3-requests), each
//! fetching a page over HTTPS.

use super::rollout;
use super::world::{WEB, WEB_BODY, World};
use crate::runner::kit;

#[test]
fn curl_wget_and_python_roll_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[]);
    let url = format!("https://{}/", WEB.name);
    let script = format!(
        "curl -sS --max-time 20 --cacert \"$CA\" --http1.1 -w '%{{http_version}}' -o \"$T/curl1\" {url} > \"$T/curl1.version\"\n\
         curl -sS --max-time 20 --cacert \"$CA\" --http2 -w '%{{http_version}}' -o \"$T/curl2\" {url} > \"$T/curl2.version\"\n\
         wget -q -T 20 --ca-certificate=\"$CA\" -O \"$T/wget\" {url}\n\
         /usr/bin/python3 -c 'import ssl, sys, urllib.request; \
         sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20, \
         context=ssl.create_default_context(cafile=sys.argv[2])).read().decode())' {url} \"$CA\" > \"$T/urllib\"\n\
         /usr/bin/python3 -c 'import sys, requests; \
         sys.stdout.write(requests.get(sys.argv[1], timeout=20, verify=sys.argv[2]).text)' {url} \"$CA\" > \"$T/requests\"\n"
    );
    let e = rollout::rollout(&w, "http", &script, &[]);
    assert!(e.policy.contains(WEB.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        for f in ["curl1", "curl2", "wget", "urllib", "requests"] {
            assert_eq!(e.step.read(f), WEB_BODY, "{f}: {}", e.step.output());
        }
        assert_eq!(e.step.read("curl1.version"), "1.1");
        assert_eq!(e.step.read("curl2.version"), "2");
    }
    e.poison_and_finish(&w, WEB);
}
