//! The memory cap, alone in its own test binary so that the process's resident memory is not
//! disturbed by other tests: a plugin that allocates without end fails with a limit error, the
//! host's memory stays bounded across repeated runs, and the next call succeeds.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use trellis_host::{
    CallError, EngineOptions, LimitsConfig, PluginEngine, PluginRegistry, ReloadOutcome,
};

/// Resident memory of this process, from `/proc/self/statm`.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn memory_hog_hits_the_limit_host_memory_stays_bounded_next_call_succeeds() {
    let wasm =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/testing/wasm/test_memory_hog.wasm");
    assert!(
        wasm.is_file(),
        "run `scripts/build-plugins` (scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hog.wasm");
    std::fs::copy(&wasm, &file).unwrap();
    let engine = PluginEngine::new(EngineOptions::default()).unwrap();
    let registry = PluginRegistry::new(engine, dir.path(), LimitsConfig::default());
    let ReloadOutcome::Loaded(plugin) = registry.load_file(&file) else {
        panic!("the memory hog did not load: {:?}", registry.list());
    };
    let limit = plugin.limits().memory_bytes;
    assert_eq!(limit, 64 * 1024 * 1024, "the default cap");
    let hog = vec![json!({"hog": true}).to_string()];

    let before = resident_bytes();
    let err = plugin.transform(&hog, Arc::default()).unwrap_err();
    assert!(
        matches!(err, CallError::MemoryLimit { limit: l, .. } if l == limit),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("memory-hog@0.1.0"), "{message}");
    assert!(
        message.contains("exceeded its memory limit of 67108864 bytes"),
        "{message}"
    );

    for _ in 0..5 {
        let err = plugin.transform(&hog, Arc::default()).unwrap_err();
        assert!(matches!(err, CallError::MemoryLimit { .. }), "{err}");
    }
    let after = resident_bytes();
    // Six runs each touched up to 64 MiB inside the sandbox; the host must have given it back.
    eprintln!("resident memory: {before} bytes before, {after} after");
    assert!(
        after < before + 32 * 1024 * 1024,
        "resident memory grew from {before} to {after} bytes"
    );

    let ok = plugin
        .transform_values(&[json!({"hog": false})], Arc::default())
        .unwrap();
    assert_eq!(ok[0].as_ref().unwrap(), &json!({"hog": false}));
}
