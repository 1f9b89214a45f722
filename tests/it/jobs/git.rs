//! `git clone` over HTTPS (smart HTTP: `git http-backend` behind nginx and
//! fcgiwrap), the CA given the way CI jobs give it (`GIT_SSL_CAINFO`).

use egressd_e2e::corpus;

use super::rollout;
use super::world::{Backend, GIT, GREETING, World};
use crate::runner::kit;

#[test]
fn git_clone_over_https_rolls_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Git]);
    let script = corpus::git(w.ca());
    let e = rollout::rollout(&w, "git", &script.text, &script.env());
    assert!(e.policy.contains(GIT.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("readme"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, GIT);
}
