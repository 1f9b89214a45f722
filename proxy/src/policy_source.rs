//! Where `egressd boot` gets its policy: a file, or the policy service
//! (`--policy-url https://service/v1/orgs/ORG/policy` with a bearer token
//! from `--token-file`), with a last-known-good copy on disk. A policy fetched
//! and validated is written to the cache (atomically, with its entity tag);
//! when the service cannot be reached or serves an invalid policy, the cached
//! copy is used and the fact is reported, never hidden. No policy at all is an
//! error the caller turns into the fail-closed state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use egressd_policy::{Diagnostic, Policy};
use egressd_service::client::{Client, PolicyFetch};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the policy comes from.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// A local file.
    File(PathBuf),
    /// The policy service.
    Service(ServiceSource),
}

/// The policy service endpoint and the last-known-good cache.
#[derive(Debug, Clone)]
pub struct ServiceSource {
    /// `http(s)://host:port`.
    pub base: String,
    /// The organisation whose policy is fetched.
    pub org: String,
    /// The bearer token file.
    pub token_file: PathBuf,
    /// The last-known-good copy (`<cache>` and `<cache>.etag`).
    pub cache: PathBuf,
}

/// Why no policy could be had.
#[derive(Debug, thiserror::Error)]
pub enum PolicySourceError {
    /// `--policy-url` is not of the form the service serves.
    #[error(
        "--policy-url {0:?} is not a policy URL; write it as https://HOST[:PORT]/v1/orgs/ORG/policy"
    )]
    Url(String),
    /// The file could not be loaded.
    #[error(transparent)]
    File(#[from] crate::reload::LoadError),
    /// Neither the service nor the cache gave a valid policy.
    #[error("no policy: {fetch}; and no usable last-known-good copy at {}: {cache}", path.display())]
    Unavailable {
        /// What went wrong with the service.
        fetch: String,
        /// The cache file.
        path: PathBuf,
        /// What went wrong with it.
        cache: String,
    },
}

/// Where the policy in hand came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The file.
    File(PathBuf),
    /// Fetched from the service just now.
    Service,
    /// The last-known-good copy; the text says why the service was not used.
    Cache(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "policy file {}", p.display()),
            Origin::Service => f.write_str("policy service"),
            Origin::Cache(why) => write!(f, "last-known-good policy copy ({why})"),
        }
    }
}

/// A valid policy and where it came from.
#[derive(Debug)]
pub struct Obtained {
    /// The policy.
    pub policy: Policy,
    /// Warnings that did not reject it.
    pub warnings: Vec<Diagnostic>,
    /// Where it came from.
    pub origin: Origin,
}

impl ServiceSource {
    /// Split `https://host:port/v1/orgs/ORG/policy` into base and org.
    pub fn from_url(
        url: &str,
        token_file: PathBuf,
        cache: PathBuf,
    ) -> Result<Self, PolicySourceError> {
        let bad = || PolicySourceError::Url(url.to_owned());
        let (base, rest) = url.split_once("/v1/orgs/").ok_or_else(bad)?;
        let org = rest.strip_suffix("/policy").ok_or_else(bad)?;
        let scheme_ok = base.starts_with("http://") || base.starts_with("https://");
        if !scheme_ok || org.is_empty() || org.contains('/') || base.ends_with("//") {
            return Err(bad());
        }
        Ok(ServiceSource {
            base: base.to_owned(),
            org: org.to_owned(),
            token_file,
            cache,
        })
    }

    fn etag_path(&self) -> PathBuf {
        let mut p = self.cache.clone().into_os_string();
        p.push(".etag");
        PathBuf::from(p)
    }

    async fn fetch(&self) -> Result<Obtained, String> {
        let client = Client::with_token_file(&self.base, &self.token_file, FETCH_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let etag = std::fs::read_to_string(self.etag_path()).ok();
        let have_cache = self.cache.exists();
        let fetched = client
            .fetch_policy(
                &self.org,
                etag.as_deref().filter(|_| have_cache).map(str::trim),
            )
            .await
            .map_err(|e| e.to_string())?;
        match fetched {
            PolicyFetch::NotModified => {
                let loaded = self.load_cache()?;
                Ok(Obtained {
                    origin: Origin::Service,
                    ..loaded
                })
            }
            PolicyFetch::Fresh { text, etag } => {
                let label = format!("{}/v1/orgs/{}/policy", self.base, self.org);
                let loaded = Policy::parse(&label, &text)
                    .map_err(|d| format!("the policy service served an invalid policy:\n{d}"))?;
                if let Err(e) = write_atomic(&self.cache, text.as_bytes()) {
                    tracing::warn!(cache = %self.cache.display(), error = %e, "cannot keep the last-known-good policy copy");
                } else if let Some(tag) = etag {
                    let _ = write_atomic(&self.etag_path(), tag.as_bytes());
                } else {
                    let _ = std::fs::remove_file(self.etag_path());
                }
                Ok(Obtained {
                    policy: loaded.policy,
                    warnings: loaded.warnings,
                    origin: Origin::Service,
                })
            }
        }
    }

    fn load_cache(&self) -> Result<Obtained, String> {
        let text = std::fs::read_to_string(&self.cache).map_err(|e| e.to_string())?;
        let loaded = Policy::parse(&self.cache.display().to_string(), &text)
            .map_err(|d| format!("it is invalid:\n{d}"))?;
        Ok(Obtained {
            policy: loaded.policy,
            warnings: loaded.warnings,
            origin: Origin::Cache(String::new()),
        })
    }
}

impl PolicySource {
    /// Obtain a valid policy (see the module documentation).
    pub async fn obtain(&self) -> Result<Obtained, PolicySourceError> {
        match self {
            PolicySource::File(path) => {
                let loaded = crate::reload::load(path)?;
                Ok(Obtained {
                    policy: loaded.policy,
                    warnings: loaded.warnings,
                    origin: Origin::File(path.clone()),
                })
            }
            PolicySource::Service(svc) => match svc.fetch().await {
                Ok(o) => Ok(o),
                Err(fetch) => match svc.load_cache() {
                    Ok(mut cached) => {
                        tracing::error!(
                            "the policy service is unusable ({fetch}); enforcing the last-known-good copy {}",
                            svc.cache.display()
                        );
                        cached.origin = Origin::Cache(fetch);
                        Ok(cached)
                    }
                    Err(cache) => Err(PolicySourceError::Unavailable {
                        fetch,
                        path: svc.cache.clone(),
                        cache,
                    }),
                },
            },
        }
    }
}

/// Write `bytes` to `path` through a temporary file and a rename, so a reader
/// (or a crash) never sees half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_urls_split_into_base_and_org() {
        let s = ServiceSource::from_url(
            "https://policy.example:8443/v1/orgs/octo/policy",
            "t".into(),
            "c".into(),
        )
        .unwrap();
        assert_eq!(s.base, "https://policy.example:8443");
        assert_eq!(s.org, "octo");
        for bad in [
            "https://policy.example/octo",
            "ftp://x/v1/orgs/octo/policy",
            "https://x/v1/orgs//policy",
            "https://x/v1/orgs/a/b/policy",
        ] {
            assert!(
                ServiceSource::from_url(bad, "t".into(), "c".into()).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_service_falls_back_to_the_cache_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret\n").unwrap();
        let cache = dir.path().join("policy.lkg.yaml");
        // Nothing listens on this port (bound, then dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/v1/orgs/octo/policy");
        let src =
            PolicySource::Service(ServiceSource::from_url(&url, token, cache.clone()).unwrap());
        let err = src.obtain().await.unwrap_err();
        assert!(
            matches!(err, PolicySourceError::Unavailable { .. }),
            "{err}"
        );

        std::fs::write(&cache, "version: 1\nallow: [github.com]\n").unwrap();
        let got = src.obtain().await.unwrap();
        assert!(
            matches!(got.origin, Origin::Cache(ref why) if why.contains("cannot reach")),
            "{:?}",
            got.origin
        );
    }
}
