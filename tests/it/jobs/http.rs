//! The everyday HTTP clients of a job: curl (HTTP/1.1 and HTTP/2), wget,
//! python's `urllib` and `requests` (Debian's python3-requests), each
//! fetching a page over HTTPS.

use egressd_e2e::corpus;

use super::rollout;
use super::world::{WEB, WEB_BODY, World};
use crate::runner::kit;

#[test]
fn curl_wget_and_python_roll_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[]);
    let script = corpus::http();
    let e = rollout::rollout(&w, "http", &script.text, &script.env());
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
