//! The plugins in service, by name, and the state of every file in the plugins directory.
//!
//! Loading (read, compile through the cache, link, instantiate, `describe`) happens before any
//! lock is taken; only the swap itself is serialized. The set of plugins is one immutable
//! snapshot behind an `ArcSwap`: a request takes an `Arc<Plugin>` from it and keeps that version
//! for its whole duration, while a reload publishes a new snapshot. An old version is freed when
//! the last request holding it ends. A file that fails to load never replaces a working version:
//! the old one keeps serving and the file's entry records the error.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::watch;

use super::cache::CacheOutcome;
use super::engine::PluginEngine;
use super::limits::LimitsConfig;
use super::plugin::{CallError, Plugin, PluginKind, ValidateError, sha256_hex};

/// Why a plugin file could not be loaded. Each names the file; the registry keeps the message.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The file could not be read.
    #[error("plugin file `{file}` cannot be read: {source}", file = file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a WebAssembly component wasmtime can compile.
    #[error("plugin file `{file}` is not a valid WebAssembly component: {reason}", file = file.display())]
    #[diagnostic(help(
        "build it with `trellis plugin build DIR` (cargo build --release --target wasm32-wasip2)"
    ))]
    Compile {
        /// The file.
        file: PathBuf,
        /// wasmtime's reason.
        reason: String,
    },
    /// The component's imports or exports do not match the plugin interface.
    #[error("plugin file `{file}` does not implement `trellis:plugin@0.2.0` or `@0.1.0`: {reason}", file = file.display())]
    #[diagnostic(help("rebuild it against the current trellis-sdk"))]
    Interface {
        /// The file.
        file: PathBuf,
        /// wasmtime's reason, naming the missing or mismatched item.
        reason: String,
    },
    /// `describe` failed.
    #[error("plugin file `{file}`: {source}", file = file.display())]
    Describe {
        /// The file.
        file: PathBuf,
        /// The call error.
        source: CallError,
    },
    /// The description is not acceptable.
    #[error("plugin file `{file}`: {reason}", file = file.display())]
    Description {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The plugin cannot start within the memory this host gives it.
    #[error("plugin file `{file}`: plugin `{name}` cannot start within this host's memory limit of {limit} bytes: {source}", file = file.display())]
    #[diagnostic(help("raise `[plugins.limits.{name}] max_memory_bytes` in trellis.toml"))]
    MemoryCap {
        /// The file.
        file: PathBuf,
        /// The plugin.
        name: String,
        /// Its cap on this host, in bytes.
        limit: usize,
        /// Why it did not start.
        source: CallError,
    },
    /// Another file already provides a plugin of this name.
    #[error("plugin file `{file}`: plugin `{name}` is already loaded from `{other}`", file = file.display(), other = other.display())]
    #[diagnostic(help("remove one of the two files, or give one plugin another name"))]
    NameTaken {
        /// The file.
        file: PathBuf,
        /// The name.
        name: String,
        /// The file that has it.
        other: PathBuf,
    },
}

/// What happened to one file on (re)load.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// A new version is serving.
    Loaded(Arc<Plugin>),
    /// The content is the same as last time: nothing was done.
    Unchanged,
    /// It failed; any previous version keeps serving.
    Failed(LoadError),
    /// The file is gone and its plugin was unloaded (or there was none).
    Unloaded,
}

/// `loaded` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadStatus {
    /// A version from this file is serving.
    Loaded,
    /// Nothing from this file is serving.
    Failed,
}

/// One file's row in `trellis plugin list` and `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginStatus {
    /// The file name in the plugins directory.
    pub file: String,
    /// The serving plugin's name, if any.
    pub name: Option<String>,
    /// Its version.
    pub version: Option<String>,
    /// Its kind.
    pub kind: Option<PluginKind>,
    /// The `trellis:plugin` interface version it was built for (`0.1.0` or `0.2.0`).
    pub interface: Option<&'static str>,
    /// The host capabilities it asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// `loaded` when a version from this file is serving.
    pub status: LoadStatus,
    /// SHA-256 of the serving version's file content (of the failed content when none serves).
    pub sha256: String,
    /// When the serving version was loaded (RFC 3339), if any.
    pub loaded_at: Option<String>,
    /// Why the latest content of the file failed to load, if it did.
    pub error: Option<String>,
}

/// The plugins in service at one moment: what a run pins (see `crate::generation`), so that a
/// plugin swapped during the run does not serve its later nodes or masks.
#[derive(Clone, Default)]
pub struct PluginSet {
    by_name: HashMap<String, Arc<Plugin>>,
    files: BTreeMap<PathBuf, FileEntry>,
}

impl PluginSet {
    /// The plugin called `name` in this set.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.by_name.get(name).cloned()
    }

    /// Every file's status, sorted by file name.
    pub fn list(&self) -> Vec<PluginStatus> {
        self.files
            .iter()
            .map(|(path, entry)| {
                let active = entry.active.as_ref();
                PluginStatus {
                    file: path.file_name().map_or_else(
                        || path.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    ),
                    name: active.map(|p| p.name().to_owned()),
                    version: active.map(|p| p.version().to_owned()),
                    kind: active.map(|p| p.kind()),
                    interface: active.map(|p| p.interface_version()),
                    capabilities: active.map(|p| p.description().capabilities.clone()),
                    status: if active.is_some() {
                        LoadStatus::Loaded
                    } else {
                        LoadStatus::Failed
                    },
                    sha256: active
                        .map_or_else(|| entry.last_sha256.clone(), |p| p.sha256().to_owned()),
                    loaded_at: active
                        .map(|p| humantime::format_rfc3339_millis(p.loaded_at()).to_string()),
                    error: entry.last_error.clone(),
                }
            })
            .collect()
    }
}

/// Where plugins are looked up: the registry (the serving version at each call), or one pinned
/// set.
#[derive(Clone)]
pub enum PluginSource {
    /// The serving version at each call.
    Registry(Arc<PluginRegistry>),
    /// The plugins of one set only.
    Pinned(Arc<PluginSet>),
}

impl PluginSource {
    /// The plugin called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        match self {
            PluginSource::Registry(registry) => registry.get(name),
            PluginSource::Pinned(set) => set.get(name),
        }
    }

    /// Every file's status.
    pub fn list(&self) -> Vec<PluginStatus> {
        match self {
            PluginSource::Registry(registry) => registry.list(),
            PluginSource::Pinned(set) => set.list(),
        }
    }
}

impl std::fmt::Debug for PluginSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

#[derive(Clone)]
struct FileEntry {
    active: Option<Arc<Plugin>>,
    /// The content last tried, loaded or not.
    last_sha256: String,
    last_error: Option<String>,
}

/// The plugins in service. Share it as `Arc<PluginRegistry>`.
pub struct PluginRegistry {
    engine: PluginEngine,
    dir: PathBuf,
    limits: LimitsConfig,
    state: ArcSwap<PluginSet>,
    swap: Mutex<()>,
    changes: watch::Sender<u64>,
    live: Arc<AtomicUsize>,
}

impl PluginRegistry {
    /// An empty registry for the plugins in `dir`.
    pub fn new(engine: PluginEngine, dir: impl Into<PathBuf>, limits: LimitsConfig) -> Self {
        PluginRegistry {
            engine,
            dir: dir.into(),
            limits,
            state: ArcSwap::from_pointee(PluginSet::default()),
            swap: Mutex::new(()),
            changes: watch::channel(0).0,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The engine plugins run on.
    pub fn engine(&self) -> &PluginEngine {
        &self.engine
    }

    /// Loads every `*.wasm` in the directory (a missing directory holds none) and unloads the
    /// plugins whose file is gone. Returns what happened per file; failures are also logged.
    pub fn load_dir(&self) -> Vec<(PathBuf, ReloadOutcome)> {
        let mut present = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if is_plugin_file(&path) && path.is_file() {
                    present.push(path);
                }
            }
        }
        present.sort();
        let mut outcomes = Vec::new();
        let known: Vec<PathBuf> = self.state.load().files.keys().cloned().collect();
        for path in known {
            if !present.contains(&path) {
                outcomes.push((path.clone(), self.unload_file(&path)));
            }
        }
        for path in present {
            let outcome = self.load_file(&path);
            outcomes.push((path, outcome));
        }
        outcomes
    }

    /// The one name a file in the plugins directory is known by: the directory as configured
    /// joined with the file name. The watcher reports absolute paths and the directory listing
    /// relative ones; without this one file would count as two (and its plugin as a duplicate).
    fn key(&self, path: &Path) -> PathBuf {
        match path.file_name() {
            Some(name) if path.parent().is_some_and(|p| same_dir(p, &self.dir)) => {
                self.dir.join(name)
            }
            _ => path.to_owned(),
        }
    }

    /// Loads (or reloads) one file; a missing file unloads its plugin. Compilation and
    /// validation run on the calling thread: call it off the request path.
    pub fn load_file(&self, path: &Path) -> ReloadOutcome {
        let path = &self.key(path);
        let wasm = match crate::served_file::read(&self.dir, path) {
            Ok(wasm) => wasm,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.unload_file(path),
            Err(source) => {
                return self.record_failure(
                    path,
                    String::new(),
                    LoadError::Read {
                        file: path.to_owned(),
                        source,
                    },
                );
            }
        };
        let sha256 = sha256_hex(&wasm);
        if self
            .state
            .load()
            .files
            .get(path)
            .is_some_and(|entry| entry.last_sha256 == sha256)
        {
            return ReloadOutcome::Unchanged;
        }
        let started = std::time::Instant::now();
        let (plugin, cache) = match self.build(path, &wasm) {
            Ok(built) => built,
            Err(error) => return self.record_failure(path, sha256, error),
        };
        if let Err(error) = self.publish(path, &sha256, &plugin) {
            return self.record_failure(path, sha256, error);
        }
        tracing::info!(
            plugin = %plugin.label(),
            file = %path.display(),
            sha256 = %plugin.sha256(),
            cache = ?cache,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        ReloadOutcome::Loaded(plugin)
    }

    /// Checks, compiles (through the cache) and validates a file's component; returns the
    /// plugin and what the cache did.
    fn build(&self, path: &Path, wasm: &[u8]) -> Result<(Arc<Plugin>, CacheOutcome), LoadError> {
        if let Err(reason) = check_header(wasm) {
            return Err(LoadError::Compile {
                file: path.to_owned(),
                reason: reason.into(),
            });
        }
        let compiled = Plugin::compile(&self.engine, wasm).map_err(|e| LoadError::Compile {
            file: path.to_owned(),
            reason: one_line(&format!("{e:#}")),
        })?;
        let cache = compiled.cache.clone();
        let validated = Plugin::validate(
            &self.engine,
            compiled,
            path,
            |name| self.limits.for_plugin(name),
            self.live.clone(),
        );
        match validated {
            Ok(plugin) => Ok((Arc::new(plugin), cache)),
            Err(e) => {
                let file = path.to_owned();
                Err(match e {
                    ValidateError::Interface(reason) => LoadError::Interface {
                        file,
                        reason: one_line(&reason),
                    },
                    ValidateError::Describe(source) => LoadError::Describe { file, source },
                    ValidateError::Description(reason) => LoadError::Description { file, reason },
                    ValidateError::MemoryCap {
                        name,
                        limit,
                        source,
                    } => LoadError::MemoryCap {
                        file,
                        name,
                        limit,
                        source,
                    },
                })
            }
        }
    }

    /// Puts `plugin` in service for `path` (replacing the file's earlier version), unless
    /// another file's plugin has its name. Only this part is serialized.
    fn publish(&self, path: &Path, sha256: &str, plugin: &Arc<Plugin>) -> Result<(), LoadError> {
        let _guard = self.swap.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = PluginSet::clone(&self.state.load());
        if let Some(other) = next.by_name.get(plugin.name())
            && other.file() != path
        {
            return Err(LoadError::NameTaken {
                file: path.to_owned(),
                name: plugin.name().to_owned(),
                other: other.file().to_owned(),
            });
        }
        let previous = next.files.insert(
            path.to_owned(),
            FileEntry {
                active: Some(plugin.clone()),
                last_sha256: sha256.to_owned(),
                last_error: None,
            },
        );
        if let Some(old) = previous.and_then(|p| p.active)
            && old.name() != plugin.name()
        {
            next.by_name.remove(old.name());
        }
        next.by_name
            .insert(plugin.name().to_owned(), plugin.clone());
        self.state.store(Arc::new(next));
        self.changes.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Unloads the plugin loaded from `path`, if any. Requests holding it finish on it.
    pub fn unload_file(&self, path: &Path) -> ReloadOutcome {
        let path = &self.key(path);
        let _guard = self.swap.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = PluginSet::clone(&self.state.load());
        let Some(entry) = next.files.remove(path) else {
            return ReloadOutcome::Unloaded;
        };
        if let Some(plugin) = entry.active {
            if next
                .by_name
                .get(plugin.name())
                .is_some_and(|p| Arc::ptr_eq(p, &plugin))
            {
                next.by_name.remove(plugin.name());
            }
            tracing::info!(plugin = %plugin.label(), file = %path.display(), "plugin unloaded");
        }
        self.state.store(Arc::new(next));
        self.changes.send_modify(|generation| *generation += 1);
        ReloadOutcome::Unloaded
    }

    fn record_failure(&self, path: &Path, sha256: String, error: LoadError) -> ReloadOutcome {
        let message = error.to_string();
        let _guard = self.swap.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = PluginSet::clone(&self.state.load());
        let entry = next.files.entry(path.to_owned()).or_insert(FileEntry {
            active: None,
            last_sha256: String::new(),
            last_error: None,
        });
        entry.last_sha256 = sha256;
        entry.last_error = Some(message.clone());
        let serving = entry.active.as_ref().map(|p| p.label().to_owned());
        self.state.store(Arc::new(next));
        self.changes.send_modify(|generation| *generation += 1);
        match serving {
            Some(plugin) => {
                tracing::error!(file = %path.display(), %plugin, error = %message, "plugin file failed to load; the loaded version keeps serving")
            }
            None => {
                tracing::error!(file = %path.display(), error = %message, "plugin file failed to load")
            }
        }
        ReloadOutcome::Failed(error)
    }

    /// Loads every plugin file in `dir` into a new set, without putting it in service (a
    /// control-plane generation being staged): a file whose content a plugin in service already
    /// has reuses that plugin. Returns the set, and a problem per file that does not load.
    pub fn prepare(&self, dir: &Path) -> (PluginSet, Vec<String>) {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_plugin_file(p) && p.is_file())
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        let serving = self.snapshot();
        let mut next = PluginSet::default();
        let mut problems = Vec::new();
        for path in files {
            let wasm = match std::fs::read(&path) {
                Ok(wasm) => wasm,
                Err(source) => {
                    problems.push(
                        LoadError::Read {
                            file: path.clone(),
                            source,
                        }
                        .to_string(),
                    );
                    continue;
                }
            };
            let sha256 = sha256_hex(&wasm);
            let reused = serving
                .by_name
                .values()
                .find(|p| p.sha256() == sha256)
                .cloned();
            let plugin = match reused {
                Some(plugin) => plugin,
                None => match self.build(&path, &wasm) {
                    Ok((plugin, _)) => plugin,
                    Err(e) => {
                        problems.push(e.to_string());
                        continue;
                    }
                },
            };
            if let Some(other) = next.by_name.get(plugin.name()) {
                problems.push(
                    LoadError::NameTaken {
                        file: path.clone(),
                        name: plugin.name().to_owned(),
                        other: other.file().to_owned(),
                    }
                    .to_string(),
                );
                continue;
            }
            next.by_name
                .insert(plugin.name().to_owned(), plugin.clone());
            next.files.insert(
                path,
                FileEntry {
                    active: Some(plugin),
                    last_sha256: sha256,
                    last_error: None,
                },
            );
        }
        (next, problems)
    }

    /// Puts `set` (from [`PluginRegistry::prepare`]) in service in place of every plugin.
    pub fn install(&self, set: Arc<PluginSet>) {
        let _guard = self.swap.lock().unwrap_or_else(PoisonError::into_inner);
        self.state.store(set);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// The plugins in service now.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.state.load_full()
    }

    /// The serving version of the plugin called `name`. Keep the `Arc` for the whole request:
    /// the version it points to stays alive until it is dropped.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.state.load().by_name.get(name).cloned()
    }

    /// Every file's status, sorted by file name.
    pub fn list(&self) -> Vec<PluginStatus> {
        self.state.load().list()
    }

    /// A receiver that sees a new generation number after every change (load, failure, unload).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many plugin versions are alive: serving, or still held by a request.
    pub fn live_versions(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Stops the engine's epoch ticker. Call when the host stops.
    pub fn shutdown(&self) {
        self.engine.shutdown();
    }
}

/// A component starts with `\0asm` and the component layer's version; a core module (built for
/// `wasm32-unknown-unknown` or `wasm32-wasip1`) has the same magic and another version.
fn check_header(wasm: &[u8]) -> Result<(), &'static str> {
    match wasm.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => Err(
            "it is a core WebAssembly module, not a component (was it built for `wasm32-wasip2`?)",
        ),
        _ => Err("it does not start with the WebAssembly header `\\0asm`"),
    }
}

/// wasmtime's multi-line messages, on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `*.wasm`, not hidden (editors and `build-plugins` write hidden temporary files beside).
pub(crate) fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && path
            .file_name()
            .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
}

const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<PluginRegistry>();
};

/// Whether `a` and `b` name the same directory (comparing canonical forms when both exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}
