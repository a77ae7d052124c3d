//! Hot reload: watches the plugins directory (with [`crate::watch::DirWatcher`]) and reloads a
//! file once it is stable (unchanged for `debounce`).
//!
//! Loads run one at a time on a blocking thread (never on a request's thread), unchanged content
//! is skipped by the registry, and a deleted file unloads its plugin. The watcher is owned by
//! whoever started it and stops with [`PluginWatcher::stop`] (the server's shutdown path calls
//! it) or when dropped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::registry::{PluginRegistry, ReloadOutcome, is_plugin_file};
use crate::watch::{Change, DirWatcher, Reads};

/// The default time a changed plugin file must stay unchanged before it is reloaded. (A
/// half-written component fails validation and never replaces a working one, so plugins settle
/// faster than policies.)
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

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
    inner: DirWatcher,
}

impl PluginWatcher {
    /// Starts watching `registry`'s directory (creating it if missing); a file is reloaded once
    /// it has been unchanged for `debounce`. Must be called inside a tokio runtime.
    pub fn start(
        registry: Arc<PluginRegistry>,
        debounce: Duration,
    ) -> Result<PluginWatcher, WatchError> {
        let dir = registry.dir().to_owned();
        let inner = DirWatcher::start(
            &dir,
            is_plugin_file,
            Reads::EachFile,
            debounce,
            None,
            move |change| match change {
                Change::Files(paths) => {
                    for path in paths {
                        // Loaded, failed and unloaded are logged by the registry.
                        if let ReloadOutcome::Unchanged = registry.load_file(&path) {
                            tracing::debug!(file = %path.display(), "plugin file unchanged; skipped");
                        }
                    }
                }
                Change::Everything => {
                    registry.load_dir();
                }
            },
        )
        .map_err(|e| WatchError::Watch {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        tracing::info!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64, "watching plugins");
        Ok(PluginWatcher { inner })
    }

    /// Stops watching and waits for a reload in progress to finish.
    pub async fn stop(self) {
        self.inner.stop().await;
        tracing::info!("plugin watcher stopped");
    }
}
