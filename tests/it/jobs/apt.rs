//! `apt-get update` and `apt-get install` from a Debian repository built in
//! the setup and served over plain HTTP (the Host header names the server),
//! with apt using only that source and its own lists and archives; the
//! package is removed after each install, and by a guard.

use egressd_e2e::corpus::{self, Installed};

use super::rollout;
use super::world::{Backend, DEB, GREETING, World};
use crate::runner::kit;

#[test]
fn apt_update_and_install_roll_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Deb]);
    let _installed = Installed::guard();
    let script = corpus::apt();
    let e = rollout::rollout(&w, "apt", &script.text, &script.env());
    assert!(e.policy.contains(DEB.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("greeting"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, DEB);
}
