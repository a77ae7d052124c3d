//! The HTTP API: the application state, the router, and serving until the stop signal.

pub mod auth;
mod health;
mod metrics;
mod plugins;
mod pools;
mod router;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::Config;
use crate::database::{DatabaseError, Databases};
use crate::plugins::{PluginService, PluginStartError};

pub use metrics::Metrics;
pub use router::router;

/// Everything a request handler may use. Cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppInner>,
}

struct AppInner {
    config: Config,
    databases: Databases,
    metrics: Metrics,
    plugins: PluginService,
    started: Instant,
    watch: bool,
    auth: Authenticator,
}

impl App {
    /// Opens the databases and sets up metrics. Fails if a configured database cannot be opened.
    pub async fn start(config: Config, watch: bool) -> Result<App, StartError> {
        // First: a refused auth mode (dev mode off loopback, a bad key) opens nothing.
        let auth = Authenticator::new(&config.auth, config.server.listen)?;
        let databases = Databases::open_all(config.databases.values()).await?;
        let metrics = Metrics::new(databases.clone());
        let plugins = PluginService::start(&config, watch).await?;
        if watch {
            tracing::info!(
                plugins = %config.paths.plugins.display(),
                policies = %config.paths.policies.display(),
                "watch mode on"
            );
        }
        Ok(App {
            inner: Arc::new(AppInner {
                config,
                databases,
                metrics,
                plugins,
                started: Instant::now(),
                watch,
                auth,
            }),
        })
    }

    /// The configuration the host runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The open databases.
    pub fn databases(&self) -> &Databases {
        &self.inner.databases
    }

    /// The Prometheus registry and the HTTP counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The plugin registry (and watcher).
    pub fn plugins(&self) -> &PluginService {
        &self.inner.plugins
    }

    /// When the host started serving.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// Whether `--watch` was given.
    pub fn watching(&self) -> bool {
        self.inner.watch
    }

    /// Who is calling: the configured auth mode.
    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configured database could not be opened.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Plugins(#[from] PluginStartError),
    /// The configured auth mode cannot start.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Accepting connections failed.
    #[error("the HTTP server failed")]
    Io(#[from] std::io::Error),
}

/// Serves until `stop` resolves, then drains in-flight requests (bounded by
/// `server.shutdown_timeout`), stops the plugin watcher and closes the databases.
pub async fn serve(
    app: App,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, version = crate::VERSION, "serving");
    let drain_limit = app.config().server.shutdown_timeout;
    let stopping = Arc::new(tokio::sync::Notify::new());
    let stopping_tx = stopping.clone();
    let server = axum::serve(listener, router(app.clone())).with_graceful_shutdown(async move {
        stop.await;
        tracing::info!("draining in-flight requests");
        stopping_tx.notify_one();
    });
    let drain_deadline = async {
        stopping.notified().await;
        tokio::time::sleep(drain_limit).await;
    };
    tokio::select! {
        result = server => result?,
        () = drain_deadline => {
            tracing::warn!(limit = ?drain_limit, "requests still running after the shutdown timeout; stopping anyway");
        }
    }
    app.plugins().stop().await;
    app.databases().close().await;
    tracing::info!("stopped");
    Ok(())
}
