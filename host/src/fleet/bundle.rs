//! A bundle: the `policies/`, `plugins/` and `workflows/` of a directory laid out as a served one,
//! read file by file (each named by its SHA-256) and checked exactly as a host loads them, with
//! the publishing machine's `trellis.toml` (its databases, plugin limits and policy settings).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::FleetError;
use crate::config::Config;
use crate::plugins::{LoadStatus, PluginService, RegistryMasker};
use crate::policy::{EngineSettings, Masker, PolicyEngine};
use crate::workflow::{HostNames, WorkflowSet};

/// The directories a bundle holds.
pub const PARTS: [&str; 3] = ["policies", "plugins", "workflows"];

/// One bundle's files, by path (`policies/finance.rules.json`).
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// Path to file.
    pub files: BTreeMap<String, BundleFile>,
}

/// One file of a bundle.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// Its content's SHA-256, in hex: the name it is stored under.
    pub sha256: String,
    /// Its content.
    pub bytes: Vec<u8>,
}

/// The SHA-256 of `bytes`, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Bundle {
    /// Reads the regular files directly in `dir`'s `policies/`, `plugins/` and `workflows/`
    /// (hidden files and subdirectories are not part of a bundle; a missing part is empty).
    pub fn read(dir: &Path) -> Result<Bundle, FleetError> {
        let mut files = BTreeMap::new();
        for part in PARTS {
            let sub = dir.join(part);
            let entries = match std::fs::read_dir(&sub) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(FleetError::Read {
                        path: sub.display().to_string(),
                        reason: e.to_string(),
                    });
                }
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || !path.is_file() {
                    continue;
                }
                let bytes = std::fs::read(&path).map_err(|e| FleetError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let sha256 = sha256(&bytes);
                files.insert(format!("{part}/{name}"), BundleFile { sha256, bytes });
            }
        }
        Ok(Bundle { files })
    }

    /// The manifest: every file's SHA-256 and size, by path.
    pub fn manifest(&self) -> Value {
        let files: serde_json::Map<String, Value> = self
            .files
            .iter()
            .map(|(path, file)| {
                (
                    path.clone(),
                    json!({"sha256": file.sha256, "size": file.bytes.len()}),
                )
            })
            .collect();
        json!({ "files": files })
    }
}

/// Loads `dir` as a host started with `config` would (policies, then the plugins they mask
/// with, then the workflows against those plugins and the configured databases); every problem
/// found, or nothing. A plugin file that does not load is a problem here, where a serving host
/// would log it and go on.
pub async fn check(dir: &Path, config: &Config) -> Result<(), FleetError> {
    let mut config = config.clone();
    config.paths.policies = dir.join("policies");
    config.paths.plugins = dir.join("plugins");
    config.paths.workflows = dir.join("workflows");
    let mut problems = Vec::new();
    let plugins = PluginService::start(&config, false)
        .await
        .map_err(|e| FleetError::Invalid(vec![format!("plugins: {e}")]))?;
    for status in plugins.registry().list() {
        if status.status != LoadStatus::Loaded || status.error.is_some() {
            problems.push(format!(
                "plugins/{}: {}",
                status.file,
                status.error.unwrap_or_else(|| "does not load".into())
            ));
        }
    }
    let masker = match &config.policy.hmac_key {
        Some(key) => Masker::new(Some(key.clone())),
        None => Masker::from_env(),
    }
    .with_external(Arc::new(RegistryMasker::new(plugins.registry().clone())));
    let timezone = jiff::tz::TimeZone::get(&config.policy.timezone).map_err(|e| {
        FleetError::Invalid(vec![format!("time zone `{}`: {e}", config.policy.timezone)])
    })?;
    let settings = EngineSettings {
        timezone,
        cache_capacity: config.policy.cache_capacity,
        masker,
    };
    let policies = config.paths.policies.clone();
    match tokio::task::spawn_blocking(move || PolicyEngine::load(&policies, settings)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.extend(crate::diagnostic::problems(&e)),
        Err(e) => problems.push(format!("policies: {e}")),
    }
    let known = Arc::new(HostNames {
        plugins: crate::plugins::PluginSource::Registry(plugins.registry().clone()),
        databases: config.databases.keys().cloned().collect(),
    });
    let workflows = config.paths.workflows.clone();
    let loaded = tokio::task::spawn_blocking(move || WorkflowSet::load(workflows, known).current())
        .await
        .map_err(|e| FleetError::Invalid(vec![format!("workflows: {e}")]))?;
    // Each error names its file and line.
    problems.extend(loaded.errors.values().map(|e| crate::diagnostic::plain(e)));
    plugins.stop().await;
    plugins.registry().shutdown();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(FleetError::Invalid(problems))
    }
}
