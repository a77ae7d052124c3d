//! WebAssembly plugins: the engine, the registry of loaded versions, and hot reload.
//!
//! A plugin is a component built for `trellis:plugin@0.2.0` (`sdk/wit/`) or `@0.1.0`
//! (`sdk/wit-0.1.0/`, still loaded unchanged). Each call gets a new
//! instance in its own store with a memory cap and a deadline ([`Limits`]), under a locked-down
//! WASI (no filesystem, network or environment; stdout and stderr captured, capped and logged).
//! The [`PluginRegistry`] loads the plugins directory, validates each file off the request path
//! and swaps versions atomically; the [`PluginWatcher`] reloads files as they change.
//!
//! - `bindings`: `bindgen!` over the WIT, once.
//! - [`engine`]: the one engine, the linker, the epoch ticker (and why calls are synchronous).
//! - `cache`: precompiled components on disk, keyed by content and engine.
//! - [`limits`]: memory cap and deadline per plugin.
//! - `plugin`: one loaded version, and calls into it (one store per call, fail-closed masking).
//! - `registry`: the versions in service, swapped atomically; the status of every file.
//! - `watcher`: hot reload (debounced, off the request path).
//! - `masker`: masking plugins as the policy engine's `plugin:<name>` mask type.
//! - `service`: the runtime as `trellis serve` runs it, stopped on shutdown.
//! - `host/`: the imports a plugin sees (`log`, `config`, `database`) and its captured
//!   stdout/stderr.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use trellis_host::{EngineOptions, LimitsConfig, PluginEngine, PluginRegistry};
//!
//! let engine = PluginEngine::new(EngineOptions::default())?;
//! let registry = PluginRegistry::new(engine, "plugins", LimitsConfig::default());
//! registry.load_dir();
//! if let Some(plugin) = registry.get("row-transform") {
//!     let out = plugin.transform(&[r#"{"first":"Ada","last":"Lovelace"}"#.into()], Arc::default())?;
//!     println!("{out:?}");
//! }
//! # Ok(()) }
//! ```

mod bindings;
mod cache;
pub(crate) mod engine;
mod host;
pub(crate) mod limits;
mod masker;
pub(crate) mod plugin;
mod registry;
mod service;
pub(crate) mod settings;
mod watcher;

pub use cache::CacheOutcome;
pub use engine::{EngineOptions, PluginEngine};
pub use host::CallConfig;
pub use host::database::{DatabaseCallError, DatabaseErrorKind, DatabaseGate, DatabaseRequest};
pub use limits::{Limits, LimitsConfig};
pub use masker::RegistryMasker;
pub use plugin::{CallError, MaskInput, Plugin, PluginKind, REDACTED};
pub use registry::{
    LoadError, LoadStatus, PluginRegistry, PluginSet, PluginSource, PluginStatus, ReloadOutcome,
};
pub use service::{PluginService, PluginStartError, engine_options};
pub use watcher::{DEFAULT_DEBOUNCE, PluginWatcher};
