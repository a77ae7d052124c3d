//! One loaded, validated plugin version, and calls into it: a new instance in its own `Store` per
//! call, with a memory cap and a deadline, dropped when the call returns (after an error too: a
//! trapped instance is never entered again).
//!
//! A component built for `trellis:plugin@0.1.0` is called synchronously (from async code prefer
//! the `*_async` forms, which run on tokio's blocking pool). One built for `@0.2.0` is called with
//! `call_async` on a fiber ([`Plugin::transform_for`] runs it on the caller's task; the
//! synchronous forms block on it), and may reach the host's databases through a
//! [`DatabaseGate`] the caller passes.

use super::host::clock::WaitPastDeadline;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Map, Value};
use wasmtime::Store;
use wasmtime::component::Component;

use super::bindings::{v1, v2};
use super::cache::CacheOutcome;
use super::engine::{PluginEngine, hex};
use super::host::database::{DatabaseGate, DatabaseGrant};
use super::host::output::panic_message;
use super::host::{CallConfig, CallState};
use super::limits::{Limits, MemoryLimitHit, deadline_ticks};

/// What a plugin is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A node: transforms batches of records.
    Node,
    /// A masking transform: masks field values.
    Masking,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Node => "node",
            PluginKind::Masking => "masking",
        })
    }
}

/// What a plugin said about itself at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Description {
    /// Unique name.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// Node or masking.
    pub kind: PluginKind,
    /// Host capabilities it asks for.
    pub capabilities: Vec<String>,
    /// A JSON Schema for its node config, if it gave one.
    pub config_schema: Option<serde_json::Value>,
}

/// The export a call went to, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// `meta.describe`.
    Describe,
    /// `transform.transform`.
    Transform,
    /// `mask.mask`.
    Mask,
}

impl fmt::Display for Export {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Export::Describe => "describe",
            Export::Transform => "transform",
            Export::Mask => "mask",
        })
    }
}

/// Why a call into a plugin failed. The instance it ran in has been dropped.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CallError {
    /// The call ran past its deadline and was stopped.
    #[error(
        "plugin `{plugin}` export `{export}` ran past its deadline of {limit:?} and was stopped"
    )]
    #[diagnostic(help("raise `call_timeout` for this plugin, or make it do less per batch"))]
    Deadline {
        /// `name@version`.
        plugin: String,
        /// The export called.
        export: Export,
        /// The deadline.
        limit: Duration,
    },
    /// The instance tried to grow its memory past its cap.
    #[error("plugin `{plugin}` export `{export}` exceeded its memory limit of {limit} bytes")]
    #[diagnostic(help("raise `max_memory_bytes` for this plugin, or send smaller batches"))]
    MemoryLimit {
        /// `name@version`.
        plugin: String,
        /// The export called.
        export: Export,
        /// The cap in bytes.
        limit: usize,
    },
    /// The plugin trapped (a Rust panic is one); `message` is the panic message when there was one.
    #[error("plugin `{plugin}` export `{export}` trapped: {message}")]
    Trap {
        /// `name@version`.
        plugin: String,
        /// The export called.
        export: Export,
        /// The panic message, or wasmtime's trap description.
        message: String,
    },
    /// The plugin returned something that breaks the interface's contract.
    #[error("plugin `{plugin}` export `{export}` returned malformed output: {reason}")]
    Malformed {
        /// `name@version`.
        plugin: String,
        /// The export called.
        export: Export,
        /// What was wrong.
        reason: String,
    },
    /// The export does not fit the plugin's kind (a transform on a masking plugin).
    #[error("plugin `{plugin}` is a {kind} plugin; it has no `{export}`")]
    WrongKind {
        /// `name@version`.
        plugin: String,
        /// What the plugin is.
        kind: PluginKind,
        /// The export asked for.
        export: Export,
    },
    /// The instance could not be created (e.g. every pooled instance slot is in use).
    #[error("plugin `{plugin}` could not be instantiated: {reason}")]
    Instantiate {
        /// `name@version`.
        plugin: String,
        /// wasmtime's reason.
        reason: String,
    },
}

/// One value for a masking plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskInput {
    /// Where the value sits, e.g. `employees[].email`.
    pub field_path: String,
    /// The value.
    pub value: serde_json::Value,
    /// The masking rule's `params` object.
    pub params: serde_json::Value,
}

/// The text masking plugins' failures are replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// A compiled component before validation: what the registry hands to [`Plugin::validate`].
pub(crate) struct Compiled {
    pub(crate) component: Component,
    pub(crate) sha256: String,
    pub(crate) cache: CacheOutcome,
}

/// One loaded plugin version. Requests hold an `Arc<Plugin>` for their whole duration, so a
/// version stays alive until its last request ends, even after a newer one replaced it.
pub struct Plugin {
    engine: PluginEngine,
    pre: Pre,
    description: Description,
    label: Arc<str>,
    file: PathBuf,
    sha256: String,
    loaded_at: SystemTime,
    limits: Limits,
    cache: CacheOutcome,
    live: Arc<AtomicUsize>,
    /// Its `config_schema`, compiled at load.
    config: Option<Arc<jsonschema::Validator>>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("plugin", &self.label)
            .field("file", &self.file)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// A component linked against the host's imports, ready to instantiate: by the interface version
/// it was built for.
#[derive(Clone)]
enum Pre {
    /// `trellis:plugin@0.1.0`: synchronous calls.
    V1(v1::PluginPre<CallState>),
    /// `trellis:plugin@0.2.0`: async calls.
    V2(v2::PluginPre<CallState>),
}

/// The interface version a component exports, by the name of its `meta` export.
fn exports_v2(engine: &wasmtime::Engine, component: &Component) -> bool {
    component
        .component_type()
        .exports(engine)
        .any(|(name, _)| name == "trellis:plugin/meta@0.2.0")
}

/// Why a component could not become a plugin (the registry adds the file).
#[derive(Debug)]
pub(crate) enum ValidateError {
    /// An import or export does not match the interface; the reason names the item.
    Interface(String),
    /// `describe` trapped or misbehaved.
    Describe(CallError),
    /// The description is not acceptable.
    Description(String),
    /// It cannot start within the memory this host gives it.
    MemoryCap {
        /// The plugin.
        name: String,
        /// Its memory cap on this host, in bytes.
        limit: usize,
        /// Why it did not start.
        source: CallError,
    },
}

impl Plugin {
    /// Compiles `wasm` (through the cache when there is one).
    pub(crate) fn compile(engine: &PluginEngine, wasm: &[u8]) -> wasmtime::Result<Compiled> {
        let sha256 = sha256_hex(wasm);
        let inner = engine.inner();
        let (component, cache) = match &inner.cache {
            Some(cache) => cache.load_or_compile(&inner.engine, wasm, &sha256)?,
            None => (Component::new(&inner.engine, wasm)?, CacheOutcome::Disabled),
        };
        Ok(Compiled {
            component,
            sha256,
            cache,
        })
    }

    /// Links the component against the host's imports, instantiates it and asks it to describe
    /// itself. `limits` picks the limits from the described name.
    pub(crate) fn validate(
        engine: &PluginEngine,
        compiled: Compiled,
        file: &Path,
        limits: impl Fn(&str) -> Limits,
        live: Arc<AtomicUsize>,
    ) -> Result<Plugin, ValidateError> {
        let inner = engine.inner();
        let interface = |e: wasmtime::Error| ValidateError::Interface(format!("{e:#}"));
        let pre = if exports_v2(&inner.engine, &compiled.component) {
            let instance_pre = inner
                .linker_v2
                .instantiate_pre(&compiled.component)
                .map_err(interface)?;
            Pre::V2(v2::PluginPre::new(instance_pre).map_err(interface)?)
        } else {
            let instance_pre = inner
                .linker
                .instantiate_pre(&compiled.component)
                .map_err(interface)?;
            Pre::V1(v1::PluginPre::new(instance_pre).map_err(interface)?)
        };
        let file_label: Arc<str> = Arc::from(
            file.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.display().to_string()),
        );
        let describe = |limits: Limits| match &pre {
            Pre::V1(pre) => call(
                engine,
                pre,
                &file_label,
                limits,
                Arc::default(),
                Export::Describe,
                |plugin, store| plugin.trellis_plugin_meta().call_describe(store),
            )
            .map(RawDescription::from),
            Pre::V2(pre) => call_v2_blocking(
                engine,
                pre,
                &file_label,
                limits,
                Arc::default(),
                V2Call::Describe,
            )
            .and_then(|answer| answer.description(&file_label)),
        };
        let describe_limits = Limits::default();
        let raw = describe(describe_limits).map_err(ValidateError::Describe)?;
        // Its name is known now: a plugin this host caps below the default must start within
        // its own cap, or it is refused here rather than failing every call.
        let own = limits(&raw.name);
        if own.memory_bytes < describe_limits.memory_bytes
            && let Err(e) = describe(own)
        {
            return Err(ValidateError::MemoryCap {
                name: raw.name,
                limit: own.memory_bytes,
                source: e,
            });
        }
        let known: &[&str] = match &pre {
            Pre::V1(_) => &KNOWN_CAPABILITIES_V1,
            Pre::V2(_) => &KNOWN_CAPABILITIES_V2,
        };
        let description = check_description(raw, known).map_err(ValidateError::Description)?;
        let config = match &description.config_schema {
            None => None,
            Some(schema) => Some(Arc::new(jsonschema::validator_for(schema).map_err(
                |e| {
                    ValidateError::Description(format!(
                        "plugin `{}` config schema is not a valid JSON Schema: {e}",
                        description.name
                    ))
                },
            )?)),
        };
        let label: Arc<str> = Arc::from(format!("{}@{}", description.name, description.version));
        live.fetch_add(1, Ordering::SeqCst);
        Ok(Plugin {
            engine: engine.clone(),
            pre,
            limits: limits(&description.name),
            description,
            label,
            file: file.to_owned(),
            sha256: compiled.sha256,
            loaded_at: SystemTime::now(),
            cache: compiled.cache,
            live,
            config,
        })
    }

    /// What is wrong with a node's `config` for this plugin, by its `config_schema` (nothing
    /// when it has none). `later`: top-level keys filled only at run time (connections,
    /// `$inputs.…`), which are not checked and may be missing. A key the schema's `properties`
    /// do not name is refused (with a did-you-mean) unless the schema sets
    /// `additionalProperties`. Messages never quote the values.
    pub fn config_problems(&self, config: &Map<String, Value>, later: &[&str]) -> Vec<String> {
        let (Some(validator), Some(schema)) = (&self.config, &self.description.config_schema)
        else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        if let Some(properties) = schema.get("properties").and_then(Value::as_object)
            && schema.get("additionalProperties").is_none()
        {
            let names: Vec<&str> = properties.keys().map(String::as_str).collect();
            for key in config.keys() {
                if !names.contains(&key.as_str()) && !later.contains(&key.as_str()) {
                    problems.push(match crate::suggest::did_you_mean(key, &names) {
                        Some(m) => format!("unknown key `{key}`: did you mean `{m}`?"),
                        None if names.is_empty() => {
                            format!("unknown key `{key}`: `{}` takes no config", self.label)
                        }
                        None => format!(
                            "unknown key `{key}`: `{}` takes `{}`",
                            self.label,
                            names.join("`, `")
                        ),
                    });
                }
            }
        }
        let probe: Map<String, Value> = config
            .iter()
            .filter(|(k, _)| !later.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let probe = Value::Object(probe);
        for e in validator.iter_errors(&probe) {
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
                && property.as_str().is_some_and(|p| later.contains(&p))
            {
                continue;
            }
            let path = e.instance_path().to_string();
            let at = if path.is_empty() {
                String::new()
            } else {
                format!(" (at `{path}`)")
            };
            problems.push(format!("{}{at}", e.masked()));
        }
        problems
    }

    /// What the plugin said about itself.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.description.name
    }

    /// Its own version.
    pub fn version(&self) -> &str {
        &self.description.version
    }

    /// Node or masking.
    pub fn kind(&self) -> PluginKind {
        self.description.kind
    }

    /// `name@version`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file it was loaded from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// SHA-256 of the file's content, hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// When it was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Its memory cap and deadline.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }

    /// Transforms a batch of JSON records (as text), one result per record in order: the output
    /// record as JSON text, or that record's error. `config` is what the `config` import reads.
    /// Blocks until done; a 0.2.0 component's statements are all denied (see
    /// [`Plugin::transform_for`]).
    pub fn transform(
        &self,
        records: &[String],
        config: Arc<CallConfig>,
    ) -> Result<Vec<Result<String, String>>, CallError> {
        self.expect_kind(PluginKind::Node, Export::Transform)?;
        let results = match &self.pre {
            Pre::V1(pre) => call(
                &self.engine,
                pre,
                &self.label,
                self.limits,
                config,
                Export::Transform,
                |plugin, store| {
                    plugin
                        .trellis_plugin_transform()
                        .call_transform(store, records)
                },
            )?,
            Pre::V2(pre) => call_v2_blocking(
                &self.engine,
                pre,
                &self.label,
                self.limits,
                config,
                V2Call::Transform(records),
            )?
            .batch(&self.label, Export::Transform)?,
        };
        self.check_batch(records.len(), results, Export::Transform)
    }

    /// [`Plugin::transform`] from async code, with `database` deciding and running the
    /// statements a 0.2.0 component sends through its `database` import (`None`: all denied;
    /// a 0.1.0 component has no such import). A 0.2.0 component runs on this task, suspending
    /// while it waits on the database; a 0.1.0 one runs on tokio's blocking pool.
    pub async fn transform_for(
        self: Arc<Self>,
        records: Vec<String>,
        config: Arc<CallConfig>,
        database: Option<Arc<dyn DatabaseGate>>,
    ) -> Result<Vec<Result<String, String>>, CallError> {
        self.expect_kind(PluginKind::Node, Export::Transform)?;
        let Pre::V2(pre) = &self.pre else {
            return self.transform_async(records, config).await;
        };
        let results = self.transform_v2(pre, &records, config, database).await?;
        self.check_batch(records.len(), results, Export::Transform)
    }

    /// [`Plugin::transform_for`], each record's result parsed: what a workflow's plugin node
    /// keeps. A result that is not JSON fails the call as there ([`CallError::Malformed`]); a
    /// 0.2.0 component's results are read once, not checked and then parsed.
    pub async fn transform_values_for(
        self: Arc<Self>,
        records: Vec<String>,
        config: Arc<CallConfig>,
        database: Option<Arc<dyn DatabaseGate>>,
    ) -> Result<Vec<Result<Value, String>>, CallError> {
        self.expect_kind(PluginKind::Node, Export::Transform)?;
        let expected = records.len();
        let results = match &self.pre {
            Pre::V2(pre) => self.transform_v2(pre, &records, config, database).await?,
            // Checked on the blocking pool already; parsed here.
            Pre::V1(_) => self.clone().transform_async(records, config).await?,
        };
        self.check_count(expected, results.len(), Export::Transform)?;
        let mut batch = crate::json::Batch::default();
        results
            .into_iter()
            .enumerate()
            .map(|(i, result)| match result {
                Ok(text) => batch.parse(&text).map(Ok).map_err(|e| {
                    self.malformed(Export::Transform, format!("result {i} is not JSON: {e}"))
                }),
                Err(message) => Ok(Err(message)),
            })
            .collect()
    }

    /// A 0.2.0 component's transform of `records` on this task, its results as they came.
    async fn transform_v2(
        &self,
        pre: &v2::PluginPre<CallState>,
        records: &[String],
        config: Arc<CallConfig>,
        database: Option<Arc<dyn DatabaseGate>>,
    ) -> Result<Vec<Result<String, String>>, CallError> {
        let grant = database.map(|gate| DatabaseGrant {
            gate,
            statements_left: self.limits.max_statements,
            max_statements: self.limits.max_statements,
            max_rows: self.limits.max_rows,
            timer: None,
        });
        call_v2(
            &self.engine,
            pre,
            &self.label,
            self.limits,
            config,
            grant,
            V2Call::Transform(records),
        )
        .await?
        .batch(&self.label, Export::Transform)
    }

    /// Whether the plugin can reach the database: built for 0.2.0 and asking for `database`.
    pub fn uses_database(&self) -> bool {
        matches!(self.pre, Pre::V2(_))
            && self
                .description
                .capabilities
                .iter()
                .any(|c| c == "database")
    }

    /// The interface version the component was built for: `0.1.0` or `0.2.0`.
    pub fn interface_version(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
        }
    }

    /// Transforms JSON values; see [`Plugin::transform`].
    pub fn transform_values(
        &self,
        records: &[serde_json::Value],
        config: Arc<CallConfig>,
    ) -> Result<Vec<Result<serde_json::Value, String>>, CallError> {
        let texts: Vec<String> = records.iter().map(crate::json::to_string).collect();
        let results = self.transform(&texts, config)?;
        Ok(results
            .into_iter()
            .map(|r| r.map(|text| crate::json::parse(&text).unwrap_or_default()))
            .collect())
    }

    /// Masks a batch of values, one result per value in order: the masked value, or that value's
    /// error. Callers that show the result should use [`Plugin::mask_or_redact`].
    pub fn mask(
        &self,
        inputs: &[MaskInput],
    ) -> Result<Vec<Result<serde_json::Value, String>>, CallError> {
        self.mask_until(inputs, None)
    }

    /// [`Plugin::mask`], its call ending by `deadline` (a request's budget) when that comes
    /// before the plugin's own `call_timeout`.
    pub fn mask_until(
        &self,
        inputs: &[MaskInput],
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<Result<serde_json::Value, String>>, CallError> {
        self.expect_kind(PluginKind::Masking, Export::Mask)?;
        let mut limits = self.limits;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            limits.call_timeout = limits.call_timeout.min(left);
        }
        let results = match &self.pre {
            Pre::V1(pre) => {
                let requests: Vec<v1::MaskRequest> = inputs
                    .iter()
                    .map(|i| v1::MaskRequest {
                        field_path: i.field_path.clone(),
                        value: crate::json::to_string(&i.value),
                        params: crate::json::to_string(&i.params),
                    })
                    .collect();
                call(
                    &self.engine,
                    pre,
                    &self.label,
                    limits,
                    Arc::default(),
                    Export::Mask,
                    |plugin, store| plugin.trellis_plugin_mask().call_mask(store, &requests),
                )?
            }
            Pre::V2(pre) => {
                let requests: Vec<v2::MaskRequest> = inputs
                    .iter()
                    .map(|i| v2::MaskRequest {
                        field_path: i.field_path.clone(),
                        value: crate::json::to_string(&i.value),
                        params: crate::json::to_string(&i.params),
                    })
                    .collect();
                call_v2_blocking(
                    &self.engine,
                    pre,
                    &self.label,
                    limits,
                    Arc::default(),
                    V2Call::Mask(&requests),
                )?
                .batch(&self.label, Export::Mask)?
            }
        };
        let results = self.check_batch(inputs.len(), results, Export::Mask)?;
        Ok(results
            .into_iter()
            .map(|r| r.map(|text| crate::json::parse(&text).unwrap_or_default()))
            .collect())
    }

    /// Masks a batch, failing closed: every value whose masking failed (and every value, when the
    /// call itself failed: trap, deadline, memory limit, malformed output) becomes
    /// [`REDACTED`]. The input is never passed through. Failures are logged.
    pub fn mask_or_redact(&self, inputs: &[MaskInput]) -> Vec<serde_json::Value> {
        let redacted = || serde_json::Value::String(REDACTED.to_owned());
        match self.mask(inputs) {
            Ok(results) => results
                .into_iter()
                .zip(inputs)
                .map(|(result, input)| {
                    result.unwrap_or_else(|error| {
                        tracing::warn!(plugin = %self.label, field = %input.field_path, %error, "masking failed; value redacted");
                        redacted()
                    })
                })
                .collect(),
            Err(error) => {
                tracing::warn!(plugin = %self.label, error = %error, values = inputs.len(), "masking call failed; values redacted");
                inputs.iter().map(|_| redacted()).collect()
            }
        }
    }

    /// [`Plugin::transform`] from async code: runs on tokio's blocking pool, so no worker thread
    /// is held up for the call (a 0.2.0 component, whose statements are then all denied, runs
    /// there too; [`Plugin::transform_for`] runs it on the caller's task).
    pub async fn transform_async(
        self: Arc<Self>,
        records: Vec<String>,
        config: Arc<CallConfig>,
    ) -> Result<Vec<Result<String, String>>, CallError> {
        let label = self.label.to_string();
        tokio::task::spawn_blocking(move || self.transform(&records, config))
            .await
            .unwrap_or_else(|e| {
                Err(CallError::Instantiate {
                    plugin: label,
                    reason: format!("the call's thread failed: {e}"),
                })
            })
    }

    /// [`Plugin::mask_or_redact`] from async code: runs on tokio's blocking pool. Fails closed
    /// here too: if the blocking task itself fails, every value is redacted.
    pub async fn mask_or_redact_async(
        self: Arc<Self>,
        inputs: Vec<MaskInput>,
    ) -> Vec<serde_json::Value> {
        let count = inputs.len();
        tokio::task::spawn_blocking(move || self.mask_or_redact(&inputs))
            .await
            .unwrap_or_else(|_| vec![serde_json::Value::String(REDACTED.to_owned()); count])
    }

    fn expect_kind(&self, kind: PluginKind, export: Export) -> Result<(), CallError> {
        if self.description.kind == kind {
            Ok(())
        } else {
            Err(CallError::WrongKind {
                plugin: self.label.to_string(),
                kind: self.description.kind,
                export,
            })
        }
    }

    /// One result per input, each `Ok` valid JSON.
    fn check_batch(
        &self,
        expected: usize,
        results: Vec<Result<String, String>>,
        export: Export,
    ) -> Result<Vec<Result<String, String>>, CallError> {
        self.check_count(expected, results.len(), export)?;
        for (i, result) in results.iter().enumerate() {
            if let Ok(text) = result
                && let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text)
            {
                return Err(self.malformed(export, format!("result {i} is not JSON: {e}")));
            }
        }
        Ok(results)
    }

    /// One result per input.
    fn check_count(&self, expected: usize, got: usize, export: Export) -> Result<(), CallError> {
        if got == expected {
            return Ok(());
        }
        Err(self.malformed(export, format!("{got} results for {expected} inputs")))
    }

    fn malformed(&self, export: Export, reason: String) -> CallError {
        CallError::Malformed {
            plugin: self.label.to_string(),
            export,
            reason,
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!(plugin = %self.label, "plugin version freed");
    }
}

/// One call into a 0.1.0 component: a fresh store and instance, the export, then everything
/// dropped.
fn call<R: Send>(
    engine: &PluginEngine,
    pre: &v1::PluginPre<CallState>,
    label: &Arc<str>,
    limits: Limits,
    config: Arc<CallConfig>,
    export: Export,
    f: impl FnOnce(&v1::Plugin, &mut Store<CallState>) -> wasmtime::Result<R> + Send,
) -> Result<R, CallError> {
    off_the_runtime(move || {
        let inner = engine.inner();
        let state = CallState::new(
            label.clone(),
            config,
            limits.memory_bytes,
            limits.call_timeout,
        );
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout, inner.tick));
        let result = match pre.instantiate(&mut store) {
            Ok(plugin) => {
                f(&plugin, &mut store).map_err(|e| classify(e, &store, label, export, limits))
            }
            Err(e) => Err(instantiate_failed(e, &store, label, export, limits)),
        };
        store.data().log_output();
        result
    })
}

/// Runs `f` where WASI's synchronous host functions may block on tokio: WASI's stdio is async
/// inside, and its sync bindings `block_on` the ambient runtime, which panics on an async worker
/// thread. On a multi-thread runtime's worker this hands the worker's queue off for the call
/// (`block_in_place`); on a current-thread runtime the call runs on a scoped thread; elsewhere
/// (a blocking-pool thread, a plain thread) it runs as is. Prefer the `*_async` methods, which
/// run on the blocking pool and never hold up a worker.
fn off_the_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Err(_) => f(),
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|scope| match scope.spawn(f).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

/// What a call into a 0.2.0 component asks for.
enum V2Call<'a> {
    Describe,
    Transform(&'a [String]),
    Mask(&'a [v2::MaskRequest]),
}

impl V2Call<'_> {
    fn export(&self) -> Export {
        match self {
            V2Call::Describe => Export::Describe,
            V2Call::Transform(_) => Export::Transform,
            V2Call::Mask(_) => Export::Mask,
        }
    }
}

/// What it answered.
enum V2Answer {
    Describe(v2::Description),
    Batch(Vec<Result<String, String>>),
}

impl V2Answer {
    fn batch(
        self,
        label: &Arc<str>,
        export: Export,
    ) -> Result<Vec<Result<String, String>>, CallError> {
        match self {
            V2Answer::Batch(results) => Ok(results),
            V2Answer::Describe(_) => Err(CallError::Malformed {
                plugin: label.to_string(),
                export,
                reason: "answered with a description".into(),
            }),
        }
    }

    fn description(self, label: &Arc<str>) -> Result<RawDescription, CallError> {
        match self {
            V2Answer::Describe(d) => Ok(RawDescription::from(d)),
            V2Answer::Batch(_) => Err(CallError::Malformed {
                plugin: label.to_string(),
                export: Export::Describe,
                reason: "answered with a batch".into(),
            }),
        }
    }
}

/// One call into a 0.2.0 component, on a fiber: a fresh store and instance, the export, then
/// everything dropped. Until its deadline the plugin yields to the executor every epoch tick;
/// at the deadline it traps.
async fn call_v2(
    engine: &PluginEngine,
    pre: &v2::PluginPre<CallState>,
    label: &Arc<str>,
    limits: Limits,
    config: Arc<CallConfig>,
    database: Option<DatabaseGrant>,
    what: V2Call<'_>,
) -> Result<V2Answer, CallError> {
    let inner = engine.inner();
    let export = what.export();
    let mut state = CallState::new(
        label.clone(),
        config,
        limits.memory_bytes,
        limits.call_timeout,
    );
    state.database = database;
    let deadline = state.deadline.into_std();
    let mut store = Store::new(&inner.engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if std::time::Instant::now() >= deadline {
            wasmtime::UpdateDeadline::Interrupt
        } else {
            wasmtime::UpdateDeadline::Yield(1)
        })
    });
    let result = match pre.instantiate_async(&mut store).await {
        Ok(plugin) => {
            let answer = match what {
                V2Call::Describe => plugin
                    .trellis_plugin_meta()
                    .call_describe(&mut store)
                    .await
                    .map(V2Answer::Describe),
                V2Call::Transform(records) => plugin
                    .trellis_plugin_transform()
                    .call_transform(&mut store, records)
                    .await
                    .map(V2Answer::Batch),
                V2Call::Mask(requests) => plugin
                    .trellis_plugin_mask()
                    .call_mask(&mut store, requests)
                    .await
                    .map(V2Answer::Batch),
            };
            answer.map_err(|e| classify(e, &store, label, export, limits))
        }
        Err(e) => Err(instantiate_failed(e, &store, label, export, limits)),
    };
    store.data().log_output();
    result
}

/// Runs `future` to completion from synchronous code. On a multi-thread runtime (a worker, or
/// its blocking pool) it blocks this thread on that runtime, handing a worker's queue off first.
/// Outside any runtime (the CLI, benchmarks) it runs on this thread, on a runtime shared by such
/// calls and started by the first one: starting one per call (a thread, an epoll instance, an
/// eventfd) cost more than a whole 1,000-record batch of `echo` (BENCHMARKS.md, issue 21). On a
/// current-thread runtime, which this thread may be driving, it runs on a scoped thread with a
/// runtime of its own. An error when a runtime cannot be started.
fn block_on<F>(future: F) -> std::io::Result<F::Output>
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};
    static SHARED: std::sync::OnceLock<Runtime> = std::sync::OnceLock::new();
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| handle.block_on(future)))
        }
        Err(_) => {
            let runtime = match SHARED.get() {
                Some(runtime) => runtime,
                None => {
                    let runtime = Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("trellis-plugin-calls")
                        .enable_all()
                        .build()?;
                    SHARED.get_or_init(|| runtime)
                }
            };
            Ok(runtime.block_on(future))
        }
        Ok(_) => std::thread::scope(|scope| {
            // The plugin's log lines go to this thread's subscriber, as a 0.1.0 call's do.
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let run = scope.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map(|runtime| runtime.block_on(future))
                })
            });
            match run.join() {
                Ok(output) => output,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }),
    }
}

/// [`call_v2`] from synchronous code (see [`block_on`]).
fn call_v2_blocking(
    engine: &PluginEngine,
    pre: &v2::PluginPre<CallState>,
    label: &Arc<str>,
    limits: Limits,
    config: Arc<CallConfig>,
    what: V2Call<'_>,
) -> Result<V2Answer, CallError> {
    block_on(call_v2(engine, pre, label, limits, config, None, what)).unwrap_or_else(|e| {
        Err(CallError::Instantiate {
            plugin: label.to_string(),
            reason: format!("cannot start a runtime for the call: {e}"),
        })
    })
}

/// Why instantiating failed: a trap, deadline or memory limit during start-up, classified like a
/// call's; anything else (no free instance slot) as [`CallError::Instantiate`].
fn instantiate_failed(
    e: wasmtime::Error,
    store: &Store<CallState>,
    label: &Arc<str>,
    export: Export,
    limits: Limits,
) -> CallError {
    if is_runtime_failure(&e) {
        classify(e, store, label, export, limits)
    } else {
        CallError::Instantiate {
            plugin: label.to_string(),
            reason: format!("{e:#}"),
        }
    }
}

fn is_runtime_failure(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<wasmtime::Trap>().is_some()
        || e.downcast_ref::<MemoryLimitHit>().is_some()
        || e.downcast_ref::<WaitPastDeadline>().is_some()
}

fn classify(
    e: wasmtime::Error,
    store: &Store<CallState>,
    label: &Arc<str>,
    export: Export,
    limits: Limits,
) -> CallError {
    let plugin = label.to_string();
    if e.downcast_ref::<MemoryLimitHit>().is_some() {
        return CallError::MemoryLimit {
            plugin,
            export,
            limit: limits.memory_bytes,
        };
    }
    if matches!(
        e.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) || e.downcast_ref::<WaitPastDeadline>().is_some()
    {
        return CallError::Deadline {
            plugin,
            export,
            limit: limits.call_timeout,
        };
    }
    let (stderr, _) = store.data().stderr.text();
    let message =
        panic_message(&stderr).unwrap_or_else(|| match e.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => format!("{trap}"),
            None => format!("{e:#}"),
        });
    CallError::Trap {
        plugin,
        export,
        message,
    }
}

/// The capabilities a 0.1.0 plugin may ask for: every plugin has them.
const KNOWN_CAPABILITIES_V1: [&str; 2] = ["log", "config"];
/// The capabilities a 0.2.0 plugin may ask for: `database` too.
const KNOWN_CAPABILITIES_V2: [&str; 3] = ["log", "config", "database"];

/// A description as either interface version gives it.
struct RawDescription {
    name: String,
    version: String,
    kind: PluginKind,
    capabilities: Vec<String>,
    config_schema: Option<String>,
}

impl From<v1::Description> for RawDescription {
    fn from(d: v1::Description) -> Self {
        RawDescription {
            name: d.name,
            version: d.version,
            kind: match d.kind {
                v1::Kind::Node => PluginKind::Node,
                v1::Kind::Masking => PluginKind::Masking,
            },
            capabilities: d.capabilities,
            config_schema: d.config_schema,
        }
    }
}

impl From<v2::Description> for RawDescription {
    fn from(d: v2::Description) -> Self {
        RawDescription {
            name: d.name,
            version: d.version,
            kind: match d.kind {
                v2::Kind::Node => PluginKind::Node,
                v2::Kind::Masking => PluginKind::Masking,
            },
            capabilities: d.capabilities,
            config_schema: d.config_schema,
        }
    }
}

fn check_description(raw: RawDescription, known: &[&str]) -> Result<Description, String> {
    let name_ok = !raw.name.is_empty()
        && raw
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "plugin name `{}` must be non-empty ASCII letters, digits, `-` or `_`",
            raw.name
        ));
    }
    if raw.version.trim().is_empty() {
        return Err(format!("plugin `{}` gave an empty version", raw.name));
    }
    if let Some(unknown) = raw
        .capabilities
        .iter()
        .find(|c| !known.contains(&c.as_str()))
    {
        return Err(format!(
            "plugin `{}` asks for the unknown capability `{unknown}` (this host grants {} to \
             its interface version)",
            raw.name,
            known
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let config_schema = match raw.config_schema {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| format!("plugin `{}` config schema is not JSON: {e}", raw.name))?,
        ),
    };
    Ok(Description {
        name: raw.name,
        version: raw.version,
        kind: raw.kind,
        capabilities: raw.capabilities,
        config_schema,
    })
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(bytes))
}

/// An instance kept across calls, for benchmarks and tools only: requests always get a fresh
/// instance per call, because a trapped instance must never be entered again. A call that fails
/// here consumes it.
#[doc(hidden)]
pub struct WarmInstance {
    store: Store<CallState>,
    instance: WarmPlugin,
    ticks: u64,
    label: Arc<str>,
    limits: Limits,
    poisoned: bool,
}

/// The instance, by interface version; a 0.2.0 one with the runtime its calls are driven on.
enum WarmPlugin {
    V1(v1::Plugin),
    V2(v2::Plugin, tokio::runtime::Runtime),
}

impl Plugin {
    /// Instantiates the plugin once, for repeated calls ([`WarmInstance`]). Call it outside any
    /// tokio runtime: a 0.2.0 instance is driven by a runtime of its own.
    #[doc(hidden)]
    pub fn warm_instance(&self, config: Arc<CallConfig>) -> Result<WarmInstance, CallError> {
        let inner = self.engine.inner();
        let state = CallState::new(
            self.label.clone(),
            config,
            self.limits.memory_bytes,
            self.limits.call_timeout,
        );
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        let ticks = deadline_ticks(self.limits.call_timeout, inner.tick);
        store.set_epoch_deadline(ticks);
        let failed = |e, store: &Store<CallState>| {
            classify(e, store, &self.label, Export::Transform, self.limits)
        };
        let instance = match &self.pre {
            Pre::V1(pre) => {
                WarmPlugin::V1(pre.instantiate(&mut store).map_err(|e| failed(e, &store))?)
            }
            Pre::V2(pre) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| CallError::Instantiate {
                        plugin: self.label.to_string(),
                        reason: format!("cannot start a runtime for the instance: {e}"),
                    })?;
                let plugin = runtime
                    .block_on(pre.instantiate_async(&mut store))
                    .map_err(|e| failed(e, &store))?;
                WarmPlugin::V2(plugin, runtime)
            }
        };
        Ok(WarmInstance {
            store,
            instance,
            ticks,
            label: self.label.clone(),
            limits: self.limits,
            poisoned: false,
        })
    }
}

impl WarmInstance {
    /// Calls `transform` on this instance, without the output checks of [`Plugin::transform`].
    /// After an error the instance refuses further calls.
    pub fn transform(
        &mut self,
        records: &[String],
    ) -> Result<Vec<Result<String, String>>, CallError> {
        if self.poisoned {
            return Err(CallError::Instantiate {
                plugin: self.label.to_string(),
                reason: "this instance failed earlier and cannot be entered again".into(),
            });
        }
        self.store.set_epoch_deadline(self.ticks);
        let result = match &self.instance {
            WarmPlugin::V1(plugin) => plugin
                .trellis_plugin_transform()
                .call_transform(&mut self.store, records),
            WarmPlugin::V2(plugin, runtime) => runtime.block_on(
                plugin
                    .trellis_plugin_transform()
                    .call_transform(&mut self.store, records),
            ),
        };
        result.map_err(|e| {
            self.poisoned = true;
            classify(e, &self.store, &self.label, Export::Transform, self.limits)
        })
    }
}
