//! The steps of the job corpus, one per tool: the script and environment
//! each runs with (see [`crate::step`]), against the servers of
//! [`crate::world`]. A script writes what a check reads into `$T`; each
//! stops at its first failing command when run under `set -e`.

use std::path::Path;

use crate::cmd::sh;
use crate::world::{self, DEB, DEB_PACKAGE, GIT, NPM, PACKAGE, PYPI, WEB};

/// A step's script and the environment it is given.
pub struct Script {
    /// The shell script.
    pub text: String,
    /// Variables added to the step's environment.
    pub env: Vec<(&'static str, String)>,
}

impl Script {
    fn new(text: String) -> Self {
        Script {
            text,
            env: Vec::new(),
        }
    }

    /// [`Script::env`] as the step runner takes it.
    pub fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// `git clone` over HTTPS, the CA given the way CI jobs give it
/// (`GIT_SSL_CAINFO`); the clone's README lands in `$T/readme`.
pub fn git(ca: &Path) -> Script {
    Script {
        text: format!(
            "git clone -q https://{}/demo.git \"$T/demo\"\n\
             cp \"$T/demo/README\" \"$T/readme\"\n",
            GIT.name
        ),
        env: vec![
            ("GIT_SSL_CAINFO", ca.display().to_string()),
            ("GIT_TERMINAL_PROMPT", "0".to_owned()),
        ],
    }
}

/// `pip install` of the package into `$T/site`, without this machine's pip
/// settings; its greeting lands in `$T/greeting`.
pub fn pip() -> Script {
    let pip = world::pypi_venv().join("bin/pip");
    Script {
        text: format!(
            "{pip} install -q --no-cache-dir --disable-pip-version-check --target \"$T/site\" \
             --index-url https://{host}/simple/ --cert \"$CA\" {PACKAGE}==1.0\n\
             PYTHONPATH=\"$T/site\" /usr/bin/python3 -c 'import corpus_hello; print(corpus_hello.GREETING)' > \"$T/greeting\"\n",
            pip = pip.display(),
            host = PYPI.name,
        ),
        env: vec![("PIP_CONFIG_FILE", "/dev/null".to_owned())],
    }
}

/// `npm install` of the package into a fresh app; its greeting lands in
/// `$T/greeting`.
pub fn npm() -> Script {
    Script::new(format!(
        "mkdir \"$T/app\" && cd \"$T/app\"\n\
         echo '{{\"name\":\"app\",\"version\":\"1.0.0\",\"private\":true}}' > package.json\n\
         : > \"$T/npmrc\"\n\
         npm install --no-audit --no-fund --no-update-notifier --userconfig \"$T/npmrc\" \
         --cache \"$T/npm-cache\" --registry https://{host}/ --cafile \"$CA\" {PACKAGE}@1.0.0\n\
         node -e 'console.log(require(\"{PACKAGE}\"))' > \"$T/greeting\"\n",
        host = NPM.name,
    ))
}

/// `apt-get update`, `install` and `purge` of the Debian package, apt using
/// only the world's source and its own lists and archives; the installed
/// greeting lands in `$T/greeting`. Hold a [`Installed`] around it.
pub fn apt() -> Script {
    let apt = "apt-get -q -o Dir::Etc::SourceList=\"$T/sources.list\" -o Dir::Etc::SourceParts=- \
               -o Dir::State::Lists=\"$T/lists\" -o Dir::Cache::Archives=\"$T/archives\" \
               -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o DPkg::Lock::Timeout=120";
    Script::new(format!(
        "mkdir -p \"$T/lists/partial\" \"$T/archives/partial\"\n\
         echo 'deb [trusted=yes] http://{host}/ ./' > \"$T/sources.list\"\n\
         {apt} update\n\
         DEBIAN_FRONTEND=noninteractive {apt} install -y --no-install-recommends {DEB_PACKAGE}\n\
         cp /usr/share/{DEB_PACKAGE}/greeting \"$T/greeting\"\n\
         DEBIAN_FRONTEND=noninteractive {apt} purge -y {DEB_PACKAGE}\n",
        host = DEB.name,
    ))
}

/// curl (HTTP/1.1 and HTTP/2), wget, python's `urllib` and `requests`, each
/// fetching the web server's page into `$T/<client>` (and curl's HTTP
/// version into `$T/curl1.version`, `$T/curl2.version`).
pub fn http() -> Script {
    let url = format!("https://{}/", WEB.name);
    Script::new(format!(
        "curl -sS --max-time 20 --cacert \"$CA\" --http1.1 -w '%{{http_version}}' -o \"$T/curl1\" {url} > \"$T/curl1.version\"\n\
         curl -sS --max-time 20 --cacert \"$CA\" --http2 -w '%{{http_version}}' -o \"$T/curl2\" {url} > \"$T/curl2.version\"\n\
         wget -q -T 20 --ca-certificate=\"$CA\" -O \"$T/wget\" {url}\n\
         /usr/bin/python3 -c 'import ssl, sys, urllib.request; \
         sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=20, \
         context=ssl.create_default_context(cafile=sys.argv[2])).read().decode())' {url} \"$CA\" > \"$T/urllib\"\n\
         /usr/bin/python3 -c 'import sys, requests; \
         sys.stdout.write(requests.get(sys.argv[1], timeout=20, verify=sys.argv[2]).text)' {url} \"$CA\" > \"$T/requests\"\n"
    ))
}

/// Every step of the corpus (the job a benchmark runs), named.
pub fn all(ca: &Path) -> Vec<(&'static str, Script)> {
    vec![
        ("git", git(ca)),
        ("pip", pip()),
        ("npm", npm()),
        ("apt", apt()),
        ("http", http()),
    ]
}

/// The apt step's package, purged on creation (a run before this one may
/// have been killed between install and purge) and on drop.
pub struct Installed(());

impl Installed {
    /// Purge the package now and when dropped.
    pub fn guard() -> Installed {
        Installed::purge();
        Installed(())
    }

    fn purge() {
        let _ = sh(&["dpkg", "--purge", "--force-remove-reinstreq", DEB_PACKAGE]);
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        Installed::purge();
    }
}
