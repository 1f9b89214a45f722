//! The HTTP API: routes, the bearer-token gate in front of all of them
//! (`/healthz` excepted), and the mapping of failures to status codes.
//!
//! | route | what | who |
//! |---|---|---|
//! | `GET /v1/orgs/{org}/policy` | the org's policy YAML, `ETag`, `304` on `If-None-Match` | a token of `org` |
//! | `POST /v1/audit` | a JSON Lines batch of records, stored under the token's org | any token |
//! | `GET /v1/audit?since=&until=&decision=&host=&repository=&format=` | the token's org's records, streamed | any token |
//! | `GET /healthz` | `ok` | anyone |

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::auth::{Tokens, valid_org};
use crate::export::{ExportError, ExportFilter};
use crate::policies::{PolicyDir, etag_matches};
use crate::store::Store;
use crate::store::ingest::{Rejected, parse_batch};

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// Accepted tokens.
    pub tokens: Tokens,
    /// Served policies.
    pub policies: Arc<PolicyDir>,
    /// The audit store.
    pub store: Arc<Store>,
}

/// The org a request authenticated as.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Org of the presented token.
    pub org: String,
}

/// A failed request, as the client sees it: a status and a JSON
/// `{"error": "..."}` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, or an unknown one.
    #[error("a valid bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    /// A token of another org.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// Bad parameters or body.
    #[error("{0}")]
    BadRequest(String),
    /// The database is unavailable: retry later.
    #[error("the audit store is unavailable, retry later: {0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let body = serde_json::json!({ "error": self.to_string() }).to_string();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The API router over `state`; `max_body` caps an ingest batch in bytes.
pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/orgs/{org}/policy", get(policy))
        .route("/v1/audit", get(export).post(ingest))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .route("/healthz", get(health))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn require_token(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Some(org) = bearer(req.headers()).and_then(|t| st.tokens.org_of(t)) else {
        return ApiError::Unauthorized.into_response();
    };
    req.extensions_mut().insert(Caller {
        org: org.to_owned(),
    });
    next.run(req).await
}

async fn health() -> &'static str {
    "ok\n"
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn policy(
    State(st): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(org): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !valid_org(&org) {
        return Err(ApiError::NotFound(format!("{org:?} is not an org name")));
    }
    if caller.org != org {
        return Err(ApiError::Forbidden(format!(
            "this token belongs to org {:?} and cannot read the policy of {org:?}",
            caller.org
        )));
    }
    let served = st
        .policies
        .get(&org)
        .ok_or_else(|| ApiError::NotFound(format!("no policy is served for org {org:?}")))?;
    let etag =
        HeaderValue::from_str(&served.etag).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &served.etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = Body::from(served.text.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        );
        r
    };
    resp.headers_mut().insert(header::ETAG, etag);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// The reply to `POST /v1/audit`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct IngestReply {
    /// Records stored now.
    pub accepted: u64,
    /// Records already stored (a retry): not stored again.
    pub duplicate: u64,
    /// Lines that are not valid records: not stored, and never will be.
    pub rejected: Vec<Rejected>,
}

async fn ingest(
    State(st): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (records, rejected) = parse_batch(&body);
    if records.is_empty() && !rejected.is_empty() {
        let first = &rejected[0];
        return Err(ApiError::BadRequest(format!(
            "no valid record in the batch ({} line(s) rejected; line {}: {})",
            rejected.len(),
            first.line,
            first.error
        )));
    }
    for r in &rejected {
        tracing::warn!(org = %caller.org, line = r.line, error = %r.error, "batch line rejected");
    }
    let counts = st.store.ingest(&caller.org, &records).await.map_err(|e| {
        tracing::warn!(org = %caller.org, error = %e, "ingest failed");
        ApiError::Unavailable(e.to_string())
    })?;
    tracing::debug!(org = %caller.org, accepted = counts.accepted, duplicate = counts.duplicate, "batch ingested");
    Ok(axum::Json(IngestReply {
        accepted: counts.accepted,
        duplicate: counts.duplicate,
        rejected,
    })
    .into_response())
}

async fn export(
    State(st): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    filter: Result<Query<ExportFilter>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(filter) = filter.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut rx = st.store.export(&caller.org, &filter);
    // Wait for the first chunk so that a database that is down is a 503,
    // not a 200 with a cut body.
    let first = match rx.recv().await {
        Some(Ok(chunk)) => Some(chunk),
        Some(Err(e)) => return Err(ApiError::Unavailable(e.to_string())),
        None => None,
    };
    let head = futures_util::stream::iter(first.map(Ok::<_, ExportError>));
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let body = Body::from_stream(futures_util::StreamExt::chain(head, rest));
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(filter.format.content_type()),
    );
    Ok(resp)
}
