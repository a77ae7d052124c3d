//! Hot reload: watches the plugins directory and reloads a file once its events settle.
//!
//! Events are debounced per path (a file is reloaded `debounce` after its last event), loads run
//! one at a time on a blocking thread (never on a request's thread), unchanged content is skipped
//! by the registry, and a deleted file unloads its plugin. The watcher is owned by whoever
//! started it and stops with [`PluginWatcher::stop`] (the server's shutdown path calls it) or when
//! dropped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::registry::{PluginRegistry, ReloadOutcome, is_plugin_file};

/// The default quiet time after a file's last event before it is reloaded.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

/// Why the directory could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The directory could not be created or watched.
    #[error("cannot watch the plugins directory `{dir}`: {reason}", dir = dir.display())]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A running watcher. Stop it with [`PluginWatcher::stop`]; dropping it stops it too, without
/// waiting.
pub struct PluginWatcher {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PluginWatcher {
    /// Starts watching `registry`'s directory (creating it if missing). Must be called inside a
    /// tokio runtime.
    pub fn start(
        registry: Arc<PluginRegistry>,
        debounce: Duration,
    ) -> Result<PluginWatcher, WatchError> {
        let dir = registry.dir().to_owned();
        let watch_error = |reason: String| WatchError::Watch {
            dir: dir.clone(),
            reason,
        };
        std::fs::create_dir_all(&dir).map_err(|e| watch_error(e.to_string()))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the watcher is stopping.
            let _ = events_tx.send(event);
        })
        .map_err(|e| watch_error(e.to_string()))?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|e| watch_error(e.to_string()))?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(watcher, registry, events, stopped, debounce));
        tracing::info!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64, "watching plugins");
        Ok(PluginWatcher {
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops watching and waits for a reload in progress to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PluginWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn run(
    watcher: notify::RecommendedWatcher,
    registry: Arc<PluginRegistry>,
    mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    mut stopped: oneshot::Receiver<()>,
    debounce: Duration,
) {
    // Kept alive for as long as this task runs; dropping it ends the OS watch.
    let _watcher = watcher;
    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    let mut rescan = false;
    loop {
        let next_due = pending.values().min().copied();
        tokio::select! {
            _ = &mut stopped => break,
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    if event.need_rescan() {
                        rescan = true;
                    }
                    let due = Instant::now() + debounce;
                    for path in event.paths {
                        if is_plugin_file(&path) {
                            pending.insert(path, due);
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "plugin watcher error; rescanning the directory");
                    rescan = true;
                }
                None => break,
            },
            () = sleep_until(next_due), if next_due.is_some() => {
                let now = Instant::now();
                let mut due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(path, _)| path.clone())
                    .collect();
                due.sort();
                for path in &due {
                    pending.remove(path);
                }
                let registry = registry.clone();
                let reloaded = tokio::task::spawn_blocking(move || {
                    for path in due {
                        // Loaded, failed and unloaded are logged by the registry.
                        if let ReloadOutcome::Unchanged = registry.load_file(&path) {
                            tracing::debug!(file = %path.display(), "plugin file unchanged; skipped");
                        }
                    }
                })
                .await;
                if let Err(e) = reloaded {
                    tracing::error!(error = %e, "plugin reload task failed");
                }
            }
        }
        if rescan {
            rescan = false;
            let registry = registry.clone();
            let _ = tokio::task::spawn_blocking(move || registry.load_dir()).await;
        }
    }
    tracing::info!("plugin watcher stopped");
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
