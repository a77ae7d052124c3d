//! What the `plugins` and `batch` benches share: the example plugins' files, how one is loaded,
//! and the batch of records and config `row-transform` runs on.

// Each bench uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use trellis_host::{
    CallConfig, EngineOptions, LimitsConfig, Plugin, PluginEngine, PluginRegistry, ReloadOutcome,
};

pub fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins")
}

pub fn row_file() -> PathBuf {
    plugins_dir().join("row_transform.wasm")
}

pub fn echo_file() -> PathBuf {
    plugins_dir().join("testing/wasm/test_echo.wasm")
}

/// Engine options for a bench: `TRELLIS_BENCH_PERF_MAP=1` names the plugins' functions in
/// `perf report` and callgrind; `valgrind` asks for two slots only, whose reservations (wasmtime's
/// default, 4 GiB and guard pages each) valgrind can still map. The plugins' code is then compiled
/// as `serve` compiles it, with no explicit bounds checks, so it is counted as it runs there.
pub fn engine_options(valgrind: bool) -> EngineOptions {
    let options = EngineOptions {
        perf_map: std::env::var_os("TRELLIS_BENCH_PERF_MAP").is_some(),
        ..EngineOptions::default()
    };
    if valgrind {
        EngineOptions {
            max_instances: 2,
            ..options
        }
    } else {
        options
    }
}

/// Loads one plugin file into a fresh registry on an engine with `options`.
pub fn load(file: &Path, options: EngineOptions) -> (PluginRegistry, Arc<Plugin>) {
    let engine = PluginEngine::new(options).expect("engine");
    let dir = file.parent().unwrap().to_owned();
    let registry = PluginRegistry::new(engine, dir, LimitsConfig::default());
    let plugin = match registry.load_file(file) {
        ReloadOutcome::Loaded(plugin) => plugin,
        other => panic!(
            "cannot load `{}` ({other:?}): run `scripts/build-plugins` first",
            file.display()
        ),
    };
    (registry, plugin)
}

/// `n` records of about 100 bytes.
pub fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"id":{i},"first":"Ada","last":"Lovelace","department":"engineering","salary":{},"active":true}}"#,
                100_000 + i
            )
        })
        .collect()
}

/// `row-transform`'s config: one rename, and `full_name` from two fields.
pub fn row_config() -> Arc<CallConfig> {
    let value = serde_json::json!({
        "rename": {"active": "is_active"},
        "full_name_from": ["first", "last"],
    });
    Arc::new(value.as_object().unwrap().clone())
}

/// No config (`echo`, `stamp`).
pub fn empty_config() -> Arc<CallConfig> {
    Arc::new(CallConfig::new())
}
