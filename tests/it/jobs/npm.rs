//! `npm install` from a registry (verdaccio behind nginx, HTTPS) holding a
//! package the setup published to it.

use egressd_e2e::corpus;

use super::rollout;
use super::world::{Backend, GREETING, NPM, World};
use crate::runner::kit;

#[test]
fn npm_install_from_a_registry_rolls_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Npm]);
    let script = corpus::npm();
    let e = rollout::rollout(&w, "npm", &script.text, &script.env());
    assert!(e.policy.contains(NPM.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("greeting"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, NPM);
}
