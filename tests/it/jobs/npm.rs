//! `npm install` from a registry (verdaccio behind nginx, HTTPS) holding a
//! package the setup published to it.

use super::rollout;
use super::world::{Backend, GREETING, NPM, PACKAGE, World};
use crate::runner::kit;

#[test]
fn npm_install_from_a_registry_rolls_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Npm]);
    let script = format!(
        "mkdir \"$T/app\" && cd \"$T/app\"\n\
         echo '{{\"name\":\"app\",\"version\":\"1.0.0\",\"private\":true}}' > package.json\n\
         : > \"$T/npmrc\"\n\
         npm install --no-audit --no-fund --no-update-notifier --userconfig \"$T/npmrc\" \
         --cache \"$T/npm-cache\" --registry https://{host}/ --cafile \"$CA\" {PACKAGE}@1.0.0\n\
         node -e 'console.log(require(\"{PACKAGE}\"))' > \"$T/greeting\"\n",
        host = NPM.name,
    );
    let e = rollout::rollout(&w, "npm", &script, &[]);
    assert!(e.policy.contains(NPM.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("greeting"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, NPM);
}
