//! Plugin runtime benchmarks: a nop call on a warm instance, instantiation from a pre-instantiated
//! component, a batch transform of 1,000 records of ~100 bytes, and reload latency (last write to
//! serving) with a cold compile and from the precompiled cache.
//!
//! The batch runs three plugins: `row-transform` (the example: parse, rename, derive, serialize),
//! `stamp` (parse, add one field, serialize) and `echo` (no JSON work: what the runtime itself
//! costs per record: instantiation, copying strings in and out, the host's JSON check), on a
//! fresh instance per call (the production path) and, for `row-transform` and `echo`, on a warm
//! one. `TRELLIS_BENCH_PERF_MAP=1` names the plugins' functions in `perf report`.
//!
//! Needs the example plugins built (`scripts/build-plugins`). Run:
//!
//! ```console
//! $ scripts/build-plugins && cargo bench -p trellis-host --bench plugins
//! $ cargo bench -p trellis-host --bench plugins --features wasm-concurrency   # concurrency on vs off
//! ```
//!
//! With the `wasm-concurrency` feature, the nop call and instantiation run twice: with wasmtime's
//! `concurrency_support` off and on. The medians of the criterion estimates are the p50 figures
//! in `BENCHMARKS.md`.

#[path = "support/batch.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::{
    echo_file, empty_config, engine_options, plugins_dir, records, row_config, row_file,
};
use trellis_host::{
    EngineOptions, LimitsConfig, Plugin, PluginEngine, PluginRegistry, PluginWatcher,
};

/// The allocator the `trellis` binary ships with: the host's side of every call (lowering the
/// records, lifting and checking the results) allocates as it does in `serve`.
#[global_allocator]
static GLOBAL: trellis_host::Allocator = trellis_host::Allocator;

fn wasm(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read `{}` ({e}): run `scripts/build-plugins` first",
            path.display()
        )
    })
}

/// Loads one plugin file on an engine with `concurrency_support` as given.
fn load(file: &Path, concurrency: bool) -> (PluginRegistry, Arc<Plugin>) {
    support::load(
        file,
        EngineOptions {
            concurrency_support: concurrency,
            ..engine_options(false)
        },
    )
}

fn modes() -> Vec<bool> {
    if cfg!(feature = "wasm-concurrency") {
        vec![false, true]
    } else {
        vec![false]
    }
}

fn mode_name(concurrency: bool) -> &'static str {
    if concurrency {
        "concurrency_on"
    } else {
        "concurrency_off"
    }
}

fn calls(c: &mut Criterion) {
    let file = row_file();
    for concurrency in modes() {
        let (_registry, plugin) = load(&file, concurrency);
        let mut group = c.benchmark_group("plugin_call");
        let mut warm = plugin.warm_instance(Arc::default()).expect("instantiate");
        group.bench_function(
            BenchmarkId::new("nop_warm_instance", mode_name(concurrency)),
            |b| b.iter(|| warm.transform(&[]).expect("nop call")),
        );
        group.bench_function(
            BenchmarkId::new("instantiate", mode_name(concurrency)),
            |b| b.iter(|| plugin.warm_instance(Arc::default()).expect("instantiate")),
        );
        group.finish();
    }

    let (_registry, plugin) = load(&file, false);
    let batch = records(1_000);
    let bytes: usize = batch.iter().map(String::len).sum();
    eprintln!("batch: 1000 records, {} bytes on average", bytes / 1_000);
    let config = row_config();
    let mut group = c.benchmark_group("plugin_batch");
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("row_transform_1000_new_instance", |b| {
        b.iter(|| {
            let out = plugin.transform(&batch, config.clone()).expect("transform");
            assert_eq!(out.len(), 1_000);
        })
    });
    let mut warm = plugin.warm_instance(config.clone()).expect("instantiate");
    group.bench_function("row_transform_1000_warm_instance", |b| {
        b.iter(|| {
            let out = warm.transform(&batch).expect("transform");
            assert_eq!(out.len(), 1_000);
        })
    });
    let empty = empty_config();
    group.bench_function("stamp_1000_new_instance", |b| {
        let stamp = plugins_dir().join("testing/wasm/test_stamp.wasm");
        let (_registry, stamp) = load(&stamp, false);
        b.iter(|| stamp.transform(&batch, empty.clone()).expect("transform"))
    });
    group.bench_function("echo_1000_new_instance", |b| {
        let echo = echo_file();
        let (_registry, echo) = load(&echo, false);
        b.iter(|| echo.transform(&batch, empty.clone()).expect("transform"))
    });
    group.bench_function("echo_1000_warm_instance", |b| {
        let echo = echo_file();
        let (_registry, echo) = load(&echo, false);
        let mut warm = echo.warm_instance(empty.clone()).expect("instantiate");
        b.iter(|| warm.transform(&batch).expect("transform"))
    });
    group.finish();
}

/// Last write to serving, through the watcher: `cached` reuses the precompiled cache, otherwise
/// the cache is emptied before each write so every reload compiles.
fn reload(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let versions = [
        wasm(&plugins_dir().join("testing/wasm/test_stamp.wasm")),
        wasm(&plugins_dir().join("testing/wasm/test_stamp_next.wasm")),
    ];
    let mut group = c.benchmark_group("plugin_reload");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    for cached in [false, true] {
        let name = if cached { "cached" } else { "cold_compile" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let cache = dir.path().join("cache");
                    let plugins = dir.path().join("plugins");
                    std::fs::create_dir_all(&plugins).unwrap();
                    let engine = PluginEngine::new(EngineOptions {
                        cache_dir: Some(cache.clone()),
                        ..EngineOptions::default()
                    })
                    .expect("engine");
                    let registry = Arc::new(PluginRegistry::new(
                        engine,
                        plugins.clone(),
                        LimitsConfig::default(),
                    ));
                    let file = plugins.join("stamp.wasm");
                    if cached {
                        // Warm the cache with both versions.
                        for v in &versions {
                            std::fs::write(&file, v).unwrap();
                            registry.load_file(&file);
                        }
                    }
                    let watcher =
                        PluginWatcher::start(registry.clone(), trellis_host::DEFAULT_DEBOUNCE)
                            .expect("watch");
                    let mut changes = registry.changes();
                    let mut total = Duration::ZERO;
                    // Each write alternates the version, so it is always a change.
                    for i in 0..iters {
                        let content = &versions[(i % 2) as usize];
                        let want = if (i % 2) == 0 { "1.0.0" } else { "2.0.0" };
                        if !cached {
                            let _ = std::fs::remove_dir_all(&cache);
                        }
                        changes.borrow_and_update();
                        std::fs::write(&file, content).unwrap();
                        let start = Instant::now();
                        tokio::time::timeout(Duration::from_secs(30), async {
                            loop {
                                if registry.get("stamp").is_some_and(|p| p.version() == want) {
                                    break;
                                }
                                changes.changed().await.expect("registry alive");
                            }
                        })
                        .await
                        .expect("reload within 30 s");
                        total += start.elapsed();
                    }
                    watcher.stop().await;
                    registry.shutdown();
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, calls, reload);
criterion_main!(benches);
