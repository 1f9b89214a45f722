//! `egressd serve`: the policy service. Loads and validates the tokens, the
//! policy directory and the database schema, then binds and serves until
//! SIGTERM/SIGINT (in-flight requests finish first).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use egressd_service::{Service, ServiceConfig};

use crate::cmd::UsageError;

/// Options of `egressd serve`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  egressd serve --listen 0.0.0.0:8443 --policies /etc/egressd/orgs \\\n    --database postgres://egressd@db/egressd --tokens /etc/egressd/tokens \\\n    --tls-cert /etc/egressd/tls.crt --tls-key /etc/egressd/tls.key"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Directory of org policies, one `ORG.yaml` per org; re-read while serving.
    #[arg(long, value_name = "DIR")]
    pub policies: PathBuf,
    /// PostgreSQL URL of the audit store (migrated at start).
    #[arg(long, value_name = "URL", env = "EGRESSD_DATABASE_URL")]
    pub database: String,
    /// Tokens file: one `ORG TOKEN` pair per line, `#` comments.
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// TLS certificate chain (PEM); serve HTTPS. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM). Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How often the policy directory is re-read, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub poll_ms: u64,
    /// Largest number of database connections.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub db_connections: usize,
}

/// Entry point.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(egressd_service::tls::acceptor(cert, key).map_err(|e| UsageError(e.to_string()))?)
        }
        _ => None,
    };
    if args.poll_ms == 0 {
        return Err(UsageError("--poll-ms must be at least 1".into()).into());
    }
    let mut config = ServiceConfig::new(args.policies, args.database, args.tokens);
    config.poll_interval = Duration::from_millis(args.poll_ms);
    config.max_db_connections = args.db_connections;
    let rt = crate::cmd::runtime()?;
    rt.block_on(async move {
        let service = match Service::start(&config).await {
            Ok(s) => s,
            Err(e) if e.is_usage() => return Err(UsageError(e.to_string()).into()),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot start the policy service")),
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().unwrap_or(args.listen);
        tracing::info!(
            listen = %local,
            tls = tls.is_some(),
            orgs = ?service.policies().orgs(),
            "policy service ready"
        );
        service
            .run(listener, tls, shutdown_signal())
            .await
            .context("the policy service failed")?;
        tracing::info!("policy service stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the service");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
