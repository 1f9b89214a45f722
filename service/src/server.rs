//! The service's life: [`Service::start`] loads and validates everything
//! (tokens, policies, database schema) before any socket exists;
//! [`Service::run`] serves an already-bound listener, plain or TLS, until the
//! shutdown future completes, then lets in-flight requests finish.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth::{Tokens, TokensError};
use crate::policies::{PolicyDir, PolicyDirError};
use crate::routes::{self, AppState};
use crate::store::{Store, StoreError};

/// What `egressd serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Directory of `ORG.yaml` policy files.
    pub policies: PathBuf,
    /// PostgreSQL URL.
    pub database_url: String,
    /// Tokens file (`ORG TOKEN` lines).
    pub tokens: PathBuf,
    /// How often the policy directory is re-read.
    pub poll_interval: Duration,
    /// Largest database connection pool.
    pub max_db_connections: usize,
    /// Largest accepted ingest batch, in bytes.
    pub max_batch_bytes: usize,
}

impl ServiceConfig {
    /// A configuration with the default poll interval (2 s), pool size (16)
    /// and batch limit (16 MiB).
    pub fn new(policies: PathBuf, database_url: String, tokens: PathBuf) -> Self {
        ServiceConfig {
            policies,
            database_url,
            tokens,
            poll_interval: Duration::from_secs(2),
            max_db_connections: 16,
            max_batch_bytes: 16 << 20,
        }
    }
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tokens file is unusable (the operator's to fix).
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The policy directory is unreadable (the operator's to fix).
    #[error(transparent)]
    Policies(#[from] PolicyDirError),
    /// The database is unreachable or its schema cannot be brought up to date.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StartError {
    /// True when the cause is the operator's input (exit code 2), not the
    /// environment.
    pub fn is_usage(&self) -> bool {
        matches!(self, StartError::Tokens(_) | StartError::Policies(_))
    }
}

/// A started service: validated configuration, live database, policy watch.
#[derive(Debug)]
pub struct Service {
    state: Arc<AppState>,
    max_batch_bytes: usize,
    /// Background tasks (policy watch, partition upkeep), aborted on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Keep the next days' partitions created ahead of need.
async fn prepare_partitions_hourly(store: Arc<Store>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = store.prepare_partitions().await {
            tracing::warn!(error = %e, "cannot create the coming days' audit partitions; ingest creates them on demand");
        }
    }
}

impl Service {
    /// Load tokens and policies, connect to the database and migrate it,
    /// start watching the policy directory. Binds nothing.
    pub async fn start(config: &ServiceConfig) -> Result<Service, StartError> {
        let tokens = Tokens::load(&config.tokens)?;
        let (policies, report) = PolicyDir::load(&config.policies)?;
        tracing::info!(
            tokens = tokens.len(),
            policies = report.loaded.len(),
            refused = report.refused.len(),
            "configuration loaded"
        );
        let store =
            Arc::new(Store::connect(&config.database_url, config.max_db_connections).await?);
        let policies = Arc::new(policies);
        let watcher = policies.watch(config.poll_interval);
        let partitions = tokio::spawn(prepare_partitions_hourly(Arc::clone(&store)));
        Ok(Service {
            state: Arc::new(AppState {
                tokens,
                policies,
                store,
            }),
            max_batch_bytes: config.max_batch_bytes,
            tasks: vec![watcher, partitions],
        })
    }

    /// The served policies.
    pub fn policies(&self) -> &Arc<PolicyDir> {
        &self.state.policies
    }

    /// The audit store.
    pub fn store(&self) -> &Arc<Store> {
        &self.state.store
    }

    /// The HTTP router (for in-process tests with a custom transport).
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.state), self.max_batch_bytes)
    }

    /// Serve `listener` (TLS when `tls` is given) until `shutdown` completes;
    /// then stop accepting and wait for open requests to finish.
    pub async fn run(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router();
        match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Some(acceptor) => serve_tls(listener, acceptor, router, shutdown).await,
        }
    }
}

async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
