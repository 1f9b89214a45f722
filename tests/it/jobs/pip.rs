//! `pip install` from a PEP 503 index (pypiserver behind nginx, HTTPS)
//! serving a wheel built in the setup. This machine's pip settings
//! (`PIP_*` variables, pip.conf) are not the job's: the step runs with none
//! of them and gives the test CA itself.

use egressd_e2e::corpus;

use super::rollout;
use super::world::{Backend, GREETING, PYPI, World};
use crate::runner::kit;

#[test]
fn pip_install_from_an_index_rolls_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Pypi]);
    let script = corpus::pip();
    let e = rollout::rollout(&w, "pip", &script.text, &script.env());
    assert!(e.policy.contains(PYPI.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("greeting"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, PYPI);
}
