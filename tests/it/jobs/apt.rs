//! `apt-get update` and `apt-get install` from a Debian repository built in
//! the setup and served over plain HTTP (the Host header names the server),
//! with apt using only that source and its own lists and archives; the
//! package is removed after each install, and by a guard.

use super::rollout;
use super::world::{Backend, DEB, DEB_PACKAGE, GREETING, World};
use crate::runner::kit::{self, sh};

/// Purges the package on drop (also when a run before this one was killed).
struct Installed;

impl Installed {
    fn purge() {
        let _ = sh(&["dpkg", "--purge", "--force-remove-reinstreq", DEB_PACKAGE]);
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        Installed::purge();
    }
}

#[test]
fn apt_update_and_install_roll_out_without_false_denies() {
    if !kit::privileged() {
        return;
    }
    let w = World::up(&[Backend::Deb]);
    Installed::purge();
    let _installed = Installed;
    let apt = "apt-get -q -o Dir::Etc::SourceList=\"$T/sources.list\" -o Dir::Etc::SourceParts=- \
               -o Dir::State::Lists=\"$T/lists\" -o Dir::Cache::Archives=\"$T/archives\" \
               -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o DPkg::Lock::Timeout=120";
    let script = format!(
        "mkdir -p \"$T/lists/partial\" \"$T/archives/partial\"\n\
         echo 'deb [trusted=yes] http://{host}/ ./' > \"$T/sources.list\"\n\
         {apt} update\n\
         DEBIAN_FRONTEND=noninteractive {apt} install -y --no-install-recommends {DEB_PACKAGE}\n\
         cp /usr/share/{DEB_PACKAGE}/greeting \"$T/greeting\"\n\
         DEBIAN_FRONTEND=noninteractive {apt} purge -y {DEB_PACKAGE}\n",
        host = DEB.name,
    );
    let e = rollout::rollout(&w, "apt", &script, &[]);
    assert!(e.policy.contains(DEB.name), "{}", e.policy);
    if e.step.code() == Some(0) {
        assert_eq!(e.step.read("greeting"), GREETING, "{}", e.step.output());
    }
    e.poison_and_finish(&w, DEB);
}
