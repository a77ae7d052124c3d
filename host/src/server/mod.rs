//! The HTTP API: the application state, the router, and serving until the stop signal.

mod admin;
pub(crate) mod auth;
mod client_ip;
mod error;
mod exposition;
mod guard;
mod health;
mod host_metrics;
pub(crate) mod listener;
mod metrics;
mod plugins;
mod pools;
mod router;
pub(crate) mod settings;
mod trace;
mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::auth::{AuthSetupError, Authenticator};
use crate::config::{AuditTarget, Config};
use crate::database::{DatabaseError, Databases};
use crate::generation::Generations;
use crate::plugins::{PluginService, PluginStartError, RegistryMasker};
use crate::policy::{AuditLog, EngineSettings, Masker, PolicyEngine, PolicyWatcher};
use crate::workflow::{AccessControlledRuntime, HostNames, Runtime, WorkflowSet, WorkflowWatcher};

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
    policy: Arc<PolicyEngine>,
    workflows: Arc<WorkflowSet>,
    /// Policies, plugins and workflows as one numbered generation, which each run pins.
    generations: Arc<Generations>,
    runtime: AccessControlledRuntime,
    watchers: std::sync::Mutex<Watchers>,
    started: Instant,
    auth: Authenticator,
    /// The control plane this host follows (`serve --control`), if any.
    follower: Option<crate::fleet::follow::Follower>,
}

/// The policy and workflow watchers of `--watch` (the plugin watcher lives in [`PluginService`]), and
/// the node-scope check that follows both.
#[derive(Default)]
struct Watchers {
    policy: Option<PolicyWatcher>,
    workflows: Option<WorkflowWatcher>,
    /// Logs node-scope warnings on every change (see [`crate::workflow::scope`]).
    scope: Option<tokio::task::JoinHandle<()>>,
    /// Makes a new generation on every change (see [`crate::generation`]).
    generations: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Opens the databases (applying `[migrations]`), starts the plugin runtime, loads the
    /// policies (a broken policy directory stops the start: the host never serves without
    /// policy) and the workflows, and in watch mode starts their watchers.
    ///
    /// With `control`, the host follows that control plane instead of its directories: it
    /// starts with nothing (every access denied), then puts the active generation in service
    /// before this returns.
    pub async fn start(
        mut config: Config,
        watch: bool,
        control: Option<crate::config::database::DatabaseConfig>,
    ) -> Result<App, StartError> {
        // First: a refused auth mode (dev mode off loopback, a bad key) opens nothing.
        let auth = Authenticator::new(&config.auth, config.server.listen)?;
        if control.is_some() {
            // Nothing from the directories: what serves comes from the control plane.
            let none = config.paths.data.join("control").join("none");
            config.paths.policies = none.join("policies");
            config.paths.plugins = none.join("plugins");
            config.paths.workflows = none.join("workflows");
        }
        let databases = Databases::open_all(config.databases.values()).await?;
        migrate_on_start(&config, &databases).await?;
        let plugins = PluginService::start(&config, watch).await?;
        let policy = Arc::new(start_policy(&config, &databases, &plugins, watch).await?);
        let known = Arc::new(HostNames {
            plugins: crate::plugins::PluginSource::Registry(plugins.registry().clone()),
            databases: databases.names().map(str::to_owned).collect(),
        });
        let dir = config.paths.workflows.clone();
        let workflows = Arc::new(
            tokio::task::spawn_blocking(move || WorkflowSet::load(dir, known))
                .await
                .map_err(|e| StartError::Workflows(e.to_string()))?,
        );
        let generations = Arc::new(Generations::numbered(
            policy.clone(),
            plugins.registry().clone(),
            workflows.clone(),
            if control.is_some() { 0 } else { 1 },
        ));
        let mut watchers = Watchers {
            scope: Some(crate::workflow::scope::watch(
                policy.clone(),
                workflows.clone(),
            )),
            // A control-plane host swaps whole generations; its parts never change alone.
            generations: control.is_none().then(|| generations.follow()),
            ..Watchers::default()
        };
        if watch {
            watchers.policy = Some(policy.watch().map_err(|e| StartError::Watch {
                what: "policies",
                dir: config.paths.policies.clone(),
                reason: e.to_string(),
            })?);
            watchers.workflows = Some(
                WorkflowWatcher::start(workflows.clone(), plugins.registry().changes()).map_err(
                    |e| StartError::Watch {
                        what: "workflows",
                        dir: config.paths.workflows.clone(),
                        reason: e.to_string(),
                    },
                )?,
            );
            tracing::info!(
                plugins = %config.paths.plugins.display(),
                policies = %config.paths.policies.display(),
                workflows = %config.paths.workflows.display(),
                "watch mode on"
            );
        }
        let metrics = Metrics::new(
            databases.clone(),
            Some(host_metrics::HostCollector {
                policy: policy.clone(),
                workflows: workflows.clone(),
                plugins: plugins.registry().clone(),
                generations: generations.clone(),
            }),
        );
        // A run's masking plugins must be done a little before the request's deadline, so the
        // masked (or redacted) answer can still be sent.
        let request_timeout = config.server.request_timeout;
        let budget = request_timeout
            .saturating_sub((request_timeout / 10).min(std::time::Duration::from_millis(250)));
        let runtime = AccessControlledRuntime::new(
            Runtime::new(databases.clone(), plugins.registry().clone()),
            policy.clone(),
        )
        .with_budget(budget);
        let follower = match control {
            Some(control) => {
                let started = crate::fleet::follow::Follower::start(
                    control,
                    config.control.clone(),
                    generations.clone(),
                    databases.names().map(str::to_owned).collect(),
                    &config.paths.data,
                )
                .await;
                match started {
                    Ok(follower) => Some(follower),
                    Err(e) => {
                        // What started is stopped as `shutdown` stops it.
                        if let Some(scope) = watchers.scope.take() {
                            scope.abort();
                        }
                        plugins.stop().await;
                        if let Some(audit) = policy.audit() {
                            audit.flush();
                        }
                        databases.close().await;
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        Ok(App {
            inner: Arc::new(AppInner {
                config,
                databases,
                metrics,
                plugins,
                policy,
                workflows,
                generations,
                runtime,
                watchers: std::sync::Mutex::new(watchers),
                started: Instant::now(),
                auth,
                follower,
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

    /// The policy engine.
    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.inner.policy
    }

    /// The loaded workflows.
    pub fn workflows(&self) -> &Arc<WorkflowSet> {
        &self.inner.workflows
    }

    /// The generation in force, and the ones to come: pin [`Generations::current`] per run.
    pub fn generations(&self) -> &Arc<Generations> {
        &self.inner.generations
    }

    /// The access-controlled workflow runtime.
    pub fn runtime(&self) -> &AccessControlledRuntime {
        &self.inner.runtime
    }

    /// The control plane this host follows, if any.
    pub fn follower(&self) -> Option<&crate::fleet::follow::Follower> {
        self.inner.follower.as_ref()
    }

    /// Stops the watchers and the plugin runtime, writes out the audit trail and closes the
    /// databases (what `serve` does after draining; for embedders and `trellis run`).
    pub async fn shutdown(&self) {
        if let Some(follower) = self.follower() {
            follower.stop().await;
        }
        self.stop_watchers().await;
        self.plugins().stop().await;
        if let Some(audit) = self.policy().audit() {
            audit.flush();
        }
        self.databases().close().await;
    }

    /// Stops the policy and workflow watchers.
    async fn stop_watchers(&self) {
        let (policy, workflows) = {
            let mut w = self
                .inner
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(scope) = w.scope.take() {
                scope.abort();
            }
            if let Some(generations) = w.generations.take() {
                generations.abort();
            }
            (w.policy.take(), w.workflows.take())
        };
        drop(policy);
        if let Some(workflows) = workflows {
            workflows.stop().await;
        }
    }

    /// When the host started serving.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// How a path the host serves from is shown to callers: relative to the config file's
    /// folder (`plugins/x.wasm`), never the server's absolute layout; a path outside that folder
    /// shows as its file name.
    pub fn shown_path(&self, path: &std::path::Path) -> String {
        let base = match &self.config().source {
            crate::config::ConfigSource::File(file) => {
                file.parent().map(std::path::Path::to_path_buf)
            }
            crate::config::ConfigSource::Embedded => None,
        }
        .unwrap_or_default();
        let relative = if base.as_os_str().is_empty() {
            path
        } else {
            path.strip_prefix(&base).unwrap_or(path)
        };
        let relative = relative.strip_prefix(".").unwrap_or(relative);
        if relative.is_absolute() {
            return relative
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        relative.display().to_string()
    }

    /// `text` (a load error) with the config file's folder taken out of the paths it names.
    pub fn shown_text(&self, text: &str) -> String {
        match &self.config().source {
            crate::config::ConfigSource::File(file) => match file.parent() {
                Some(base) if !base.as_os_str().is_empty() => {
                    text.replace(&format!("{}/", base.display()), "")
                }
                _ => text.to_owned(),
            },
            crate::config::ConfigSource::Embedded => text.to_owned(),
        }
    }

    /// Who is calling: the configured auth mode.
    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }
}

/// Why the host could not start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum StartError {
    /// A configured database could not be opened.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Database(#[from] DatabaseError),
    /// The plugin runtime could not start.
    #[error(transparent)]
    Plugins(#[from] PluginStartError),
    /// The configured auth mode cannot start.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Auth(#[from] AuthSetupError),
    /// The policies could not be loaded.
    #[error("cannot load the policies\n{0}")]
    #[diagnostic(help(
        "`trellis policy check` shows every problem; the host does not start without valid policies"
    ))]
    Policy(String),
    /// The policy directory has problems.
    #[error("cannot load the policies")]
    #[diagnostic(forward(0))]
    PolicyFiles(#[from] crate::policy::LoadError),
    /// The audit trail could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::policy::audit::AuditError),
    /// The migrations could not be applied.
    #[error("cannot apply the migrations in `{dir}` to database `{database}`: {reason}", dir = dir.display())]
    #[diagnostic(help("`trellis migrate status --dir {dir}` shows where it stopped", dir = dir.display()))]
    Migrations {
        /// The directory.
        dir: std::path::PathBuf,
        /// The database.
        database: String,
        /// Why.
        reason: String,
    },
    /// The workflows could not be loaded.
    #[error("cannot load the workflows: {0}")]
    Workflows(String),
    /// The control plane could not be followed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Control(#[from] crate::fleet::FleetError),
    /// A watcher could not start.
    #[error("cannot watch the {what} directory `{dir}`: {reason}", dir = dir.display())]
    Watch {
        /// What is watched.
        what: &'static str,
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// Applies `[migrations]`, if configured, before anything serves.
async fn migrate_on_start(config: &Config, databases: &Databases) -> Result<(), StartError> {
    let Some(dir) = &config.migrations.dir else {
        return Ok(());
    };
    let database = config.migrations.database.clone();
    let fail = |reason: String| StartError::Migrations {
        dir: dir.clone(),
        database: database.clone(),
        reason,
    };
    let pool = databases
        .get(&database)
        .ok_or_else(|| fail("the database is not configured".into()))?;
    let set = crate::migrate::MigrationSet::from_dir(dir).map_err(|e| fail(e.to_string()))?;
    let runner = crate::migrate::Runner::new(pool.clone(), set).by("trellis serve");
    runner.init().await.map_err(|e| fail(e.to_string()))?;
    struct Quiet;
    impl crate::migrate::Progress for Quiet {}
    let applied = runner
        .apply(None, &mut Quiet)
        .await
        .map_err(|e| fail(e.to_string()))?;
    for (id, took) in &applied.ran {
        tracing::info!(migration = %id, database = %database, took_ms = took.as_millis() as u64, "migration applied");
    }
    Ok(())
}

/// Loads the policy directory with `[policy]`'s settings and audit trail; masking plugins serve
/// `plugin:<name>` masks.
async fn start_policy(
    config: &Config,
    databases: &Databases,
    plugins: &PluginService,
    watch: bool,
) -> Result<PolicyEngine, StartError> {
    let p = &config.policy;
    let timezone = jiff::tz::TimeZone::get(&p.timezone)
        .map_err(|e| StartError::Policy(format!("time zone `{}`: {e}", p.timezone)))?;
    let masker = match &p.hmac_key {
        Some(key) => Masker::new(Some(key.clone())),
        None => Masker::from_env(),
    }
    .with_external(Arc::new(RegistryMasker::new(plugins.registry().clone())));
    let settings = EngineSettings {
        timezone,
        cache_capacity: p.cache_capacity,
        masker,
    };
    let dir = config.paths.policies.clone();
    let watching = watch;
    let engine = tokio::task::spawn_blocking(move || {
        if !dir.exists() {
            if watching {
                let _ = std::fs::create_dir_all(&dir);
            }
            tracing::warn!(dir = %dir.display(), "no policies directory: every access is denied until policies are added");
            if !dir.exists() {
                return crate::policy::PolicyGeneration::from_sources(&dir, &[])
                    .map(|g| PolicyEngine::new(g, settings));
            }
        }
        PolicyEngine::load(&dir, settings)
    })
        .await
        .map_err(|e| StartError::Policy(e.to_string()))??;
    let audit = match &p.audit {
        AuditTarget::Off => AuditLog::memory_only(p.audit_recent),
        AuditTarget::File(path) => {
            AuditLog::open_file(path, p.audit_queue, p.audit_rotation, p.audit_on_failure)?
                .with_recent(p.audit_recent)
        }
        AuditTarget::Database(name) => {
            let pool = databases.get(name).ok_or_else(|| {
                StartError::Policy(format!("audit database `{name}` is not configured"))
            })?;
            AuditLog::open_table(pool, p.audit_queue, p.audit_on_failure)
                .await?
                .with_recent(p.audit_recent)
        }
    };
    tracing::info!(
        dir = %config.paths.policies.display(),
        generation = engine.generation().id(),
        policies = engine.generation().policy_count(),
        "policies loaded"
    );
    Ok(engine.with_audit(audit))
}

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Accepting connections failed.
    #[error("the HTTP server failed")]
    Io(#[from] std::io::Error),
}

/// Serves until `stop` resolves, then drains in-flight requests (bounded by
/// `server.shutdown_timeout`), stops the plugin watcher and closes the databases. Connections
/// are held to `[server]`'s limits (see [`listener`]).
pub async fn serve(
    app: App,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, version = crate::VERSION, "serving");
    let server = &app.config().server;
    let limits = listener::ConnectionLimits {
        max_connections: server.max_connections,
        header_read_timeout: server.header_read_timeout,
        keep_alive_timeout: server.keep_alive_timeout,
    };
    let stop = async move {
        stop.await;
        tracing::info!("draining in-flight requests");
    };
    listener::serve_connections(
        listener,
        router(app.clone()),
        limits,
        stop,
        server.shutdown_timeout,
    )
    .await;
    app.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
