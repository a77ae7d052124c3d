//! The plugin runtime as the server runs it: engine, registry loaded from the configured
//! directory, the watcher when `--watch` is on, and stopping all of it on shutdown.

use std::sync::{Arc, Mutex, PoisonError};

use super::engine::{EngineError, EngineOptions, PluginEngine};
use super::registry::{PluginRegistry, ReloadOutcome};
use super::watcher::{DEFAULT_DEBOUNCE, PluginWatcher, WatchError};
use crate::config::Config;

/// Why the plugin runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum PluginStartError {
    /// The engine could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The directory could not be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
}

/// The engine options for `config`: the pool fits the largest configured memory cap, and the
/// precompiled cache lives in `<data>/plugin-cache`.
///
/// With `TRELLIS_VALGRIND=1` in the environment (profiling the server under valgrind, as the
/// `http` bench's `--profile` does) each of at most 32 slots reserves only its memory cap:
/// valgrind cannot map wasmtime's default 4 GiB per slot. Compiled plugins then check bounds
/// explicitly, so they run a little slower. The engine also writes `/tmp/perf-PID.map`, which
/// names the plugins' compiled functions at their addresses (the bench's `--profile` reads it:
/// callgrind has no names for code made at run time).
pub fn engine_options(config: &Config) -> EngineOptions {
    let limits = &config.plugins.limits;
    let largest = limits
        .by_name
        .values()
        .map(|l| l.memory_bytes)
        .chain([limits.default.memory_bytes])
        .max()
        .unwrap_or(limits.default.memory_bytes);
    let options = EngineOptions {
        max_memory_bytes: largest,
        cache_dir: Some(config.paths.data.join("plugin-cache")),
        ..EngineOptions::default()
    };
    if std::env::var_os("TRELLIS_VALGRIND").is_some_and(|v| v == "1") {
        return EngineOptions {
            max_instances: 32,
            memory_reservation: Some(largest as u64),
            perf_map: true,
            ..options
        };
    }
    options
}

/// The registry and, in watch mode, its watcher.
pub struct PluginService {
    registry: Arc<PluginRegistry>,
    watcher: Mutex<Option<PluginWatcher>>,
}

impl PluginService {
    /// Creates the engine (precompiled cache under `<data>/plugin-cache`), loads every plugin in
    /// `paths.plugins` (a file that fails is logged and listed, and does not stop the host), and
    /// starts watching when `watch` is set.
    pub async fn start(config: &Config, watch: bool) -> Result<PluginService, PluginStartError> {
        let engine = PluginEngine::new(engine_options(config))?;
        let registry = Arc::new(PluginRegistry::new(
            engine,
            config.paths.plugins.clone(),
            config.plugins.limits.clone(),
        ));
        let loading = registry.clone();
        let outcomes = tokio::task::spawn_blocking(move || loading.load_dir())
            .await
            .unwrap_or_default();
        let loaded = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, ReloadOutcome::Loaded(_)))
            .count();
        tracing::info!(
            dir = %config.paths.plugins.display(),
            loaded,
            failed = outcomes.len() - loaded,
            "plugins loaded"
        );
        let watcher = if watch {
            Some(PluginWatcher::start(registry.clone(), DEFAULT_DEBOUNCE)?)
        } else {
            None
        };
        Ok(PluginService {
            registry,
            watcher: Mutex::new(watcher),
        })
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// Stops the watcher (waiting for a reload in progress) and the engine's ticker.
    pub async fn stop(&self) {
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(watcher) = watcher {
            watcher.stop().await;
        }
        self.registry.shutdown();
    }
}
