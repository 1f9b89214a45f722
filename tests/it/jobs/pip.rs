//! `pip install` from a PEP 503 index (pypiserver behind nginx, HTTPS)
//! serving a wheel built in the setup. This machine's pip settings
//! (`PIP_*` variables, pip.conf) are not the job's: the step runs with none
//! of them and gives the test CA itself.

use super::rollout;
use super::world::{self, Backend, GREETING, PACKAGE, PYPI, World};
use crate::runner::kit;

#[test]
fn pip_install_from_an_index_rolls_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Pypi]);
    let pip = world::pypi_venv().join("bin/pip");
    let script = format!(
        "{pip} install -q --no-cache-dir --disable-pip-version-check --target \"$T/site\" \
         --index-url https://{host}/simple/ --cert \"$CA\" {PACKAGE}==1.0\n\
         PYTHONPATH=\"$T/site\" /usr/bin/python3 -c 'import corpus_hello; print(corpus_hello.GREETING)' > \"$T/greeting\"\n",
        pip = pip.display(),
        host = PYPI.name,
    );
    let env = [("PIP_CONFIG_FILE", "/dev/null")];
    let e = rollout::rollout(&w, "pip", &script, &env);
    assert!(e.policy.contains(PYPI.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("greeting"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, PYPI);
}
