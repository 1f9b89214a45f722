//! The runner's (and `egressd audit export --server`'s) side of the service
//! API: fetch an org policy with `If-None-Match`, post audit batches (this is
//! the shipper's [`Sink`]), stream an export.

use std::path::Path;
use std::time::Duration;

use egressd_audit::ship::{Ack, Batch, Sink, SinkError};
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::export::ExportFilter;
use crate::routes::IngestReply;

/// What can go wrong talking to the service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is unusable.
    #[error("invalid service URL {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// Why.
        why: String,
    },
    /// The token file could not be read or is empty.
    #[error("cannot read the token file {path}: {why}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The HTTP client could not be built (TLS backend).
    #[error("cannot build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The request did not complete (connection refused, timeout, reset).
    #[error("cannot reach the policy service at {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The service answered with an error status.
    #[error("the policy service answered {status} for {url}: {message}")]
    Status {
        /// The URL requested.
        url: String,
        /// The status.
        status: StatusCode,
        /// The service's `error` message, or the body.
        message: String,
    },
    /// Writing the export failed.
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
}

impl ClientError {
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A fetched policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyFetch {
    /// The policy has not changed since the given entity tag.
    NotModified,
    /// The current policy.
    Fresh {
        /// The YAML text.
        text: String,
        /// Its entity tag, for the next `If-None-Match`.
        etag: Option<String>,
    },
}

/// A client of one policy service with one token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish()
    }
}

impl Client {
    /// A client of the service at `base_url` (`http://host:port` or
    /// `https://…`, without a path) authenticating with `token`. Requests
    /// time out after `timeout` (exports are not bounded by it once they
    /// started streaming).
    pub fn new(base_url: &str, token: &str, timeout: Duration) -> Result<Client, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Url {
                url: base_url.to_owned(),
                why: "it must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .read_timeout(timeout)
            .build()
            .map_err(ClientError::Build)?;
        Ok(Client {
            http,
            base,
            token: token.to_owned(),
        })
    }

    /// [`Client::new`] with the token read from `token_file` (surrounding
    /// whitespace ignored).
    pub fn with_token_file(
        base_url: &str,
        token_file: &Path,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let bad = |why: String| ClientError::TokenFile {
            path: token_file.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(token_file).map_err(|e| bad(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(bad("it is empty".into()));
        }
        Client::new(base_url, token, timeout)
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn fail(url: String, resp: reqwest::Response) -> ClientError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        ClientError::Status {
            url,
            status,
            message,
        }
    }

    /// `GET /v1/orgs/{org}/policy`, conditional on `etag` when given.
    pub async fn fetch_policy(
        &self,
        org: &str,
        etag: Option<&str>,
    ) -> Result<PolicyFetch, ClientError> {
        self.get_policy(self.url(&format!("/v1/orgs/{org}/policy")), etag)
            .await
    }

    async fn get_policy(
        &self,
        url: String,
        etag: Option<&str>,
    ) -> Result<PolicyFetch, ClientError> {
        let mut req = self.http.get(&url).bearer_auth(&self.token);
        if let Some(tag) = etag {
            req = req.header(IF_NONE_MATCH, tag);
        }
        let resp = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(PolicyFetch::NotModified),
            StatusCode::OK => {
                let etag = resp
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let text = resp.text().await.map_err(|source| ClientError::Transport {
                    url: url.clone(),
                    source,
                })?;
                Ok(PolicyFetch::Fresh { text, etag })
            }
            _ => Err(Self::fail(url, resp).await),
        }
    }

    /// `POST /v1/audit` with a JSON Lines body.
    pub async fn post_batch(&self, body: String) -> Result<IngestReply, ClientError> {
        let url = self.url("/v1/audit");
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/jsonl")
            .body(body)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(Self::fail(url, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Status {
            url,
            status: StatusCode::OK,
            message: format!("unexpected reply: {e}"),
        })
    }

    /// `GET /v1/audit` with `filter`, streamed into `out`. Returns the bytes
    /// written.
    pub async fn export(
        &self,
        filter: &ExportFilter,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<u64, ClientError> {
        let url = self.url("/v1/audit");
        let mut resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .query(filter)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        if !resp.status().is_success() {
            return Err(Self::fail(url, resp).await);
        }
        let mut written = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?
        {
            out.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        out.flush().await?;
        Ok(written)
    }
}

impl Sink for Client {
    async fn send(&self, batch: &Batch) -> Result<Ack, SinkError> {
        match self.post_batch(batch.body.clone()).await {
            Ok(reply) => Ok(Ack {
                accepted: reply.accepted,
                duplicate: reply.duplicate,
                rejected: reply.rejected.len() as u64,
            }),
            // The service found no valid record in the batch: sending it
            // again cannot help.
            Err(e @ ClientError::Status { status, .. }) if status == StatusCode::BAD_REQUEST => {
                Err(SinkError::Refused(e.to_string()))
            }
            // Everything else (down, 5xx, 401/403 from a token not yet
            // deployed, 413) keeps the records in the journal and retries.
            Err(e) => Err(SinkError::Retry(e.to_string())),
        }
    }
}

/// `egressd boot --policy-url URL --token-file FILE`: fetch the policy at the
/// full `policy_url` (`https://host/v1/orgs/ORG/policy`), conditional on
/// `etag` when given, with the token read from `token_file`.
pub async fn fetch_policy_url(
    policy_url: &str,
    token_file: &Path,
    etag: Option<&str>,
    timeout: Duration,
) -> Result<PolicyFetch, ClientError> {
    let client = Client::with_token_file(policy_url, token_file, timeout)?;
    client.get_policy(client.base.clone(), etag).await
}
