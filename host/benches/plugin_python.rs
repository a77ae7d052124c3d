//! A Python plugin against the same transform in Rust (issue 19), in alternating rounds of one
//! run: instantiation, a nop call, and a batch of 1,000 records of ~100 bytes.
//!
//! The pairs, each built for `trellis:plugin@0.2.0` (so both sides are called on the same async
//! path):
//!
//! - `stamp` (Rust, `plugins/testing/test-stamp`) and `py-stamp` (Python, componentize-py,
//!   `plugins/python/testing/py-stamp`): parse each record, add `"served_by": "1.0.0"`,
//!   serialize it. The bench first checks the two give the same records.
//! - `echo` (`plugins/testing/test-echo`) and `py-echo`: each record's text back, unparsed. What
//!   a call costs per record apart from JSON work: lifting the strings into the guest, its loop,
//!   lowering them back, and (on a fresh instance) the host's check that each result is JSON.
//!
//! What is measured, for each plugin:
//!
//! - `load`: reading, compiling (or loading from the component cache) and describing the
//!   component, once, before the rounds (`--cold` empties the cache first).
//! - `instantiate`: `Plugin::warm_instance` then drop: a store and an instance from the
//!   pre-instantiated component, and the slot's reset when it is dropped. For a 0.2.0 component
//!   this includes building the current-thread tokio runtime the instance is driven by; that
//!   alone is measured as `tokio runtime`.
//! - `empty call`: `Plugin::transform_for` of an empty batch on this thread's runtime, the path
//!   a served run takes: instantiation, the call, the drop, no runtime built.
//! - `nop`: `WarmInstance::transform` of an empty batch on one instance kept across calls (after
//!   one call not measured).
//! - `1000 warm`: the 1,000 records on such an instance, without the host's output check.
//! - `1000 new`: the 1,000 records through `Plugin::transform_for`, a fresh instance and the
//!   output checked, as served (the batch is cloned outside the timing).
//!
//! Each measurement runs for `--seconds` and reports the time per call; a round measures every
//! plugin once, the order reversed every other round. Printed: per-round figures, the medians,
//! the Python/Rust ratios (median of the per-round ratios), records/s, the per-record cost
//! (`(1000 warm − nop) / 1000`) and the minor page faults per call (from `/proc/self/stat`).
//!
//! Then where `py-stamp`'s time per record goes inside Python: `py-stamp-parts`
//! (`plugins/python/testing/py-stamp-parts`) does the same work in phases timed with the
//! guest's monotonic clock (`json.loads`, adding the field, `json.dumps`, wrapping in `Ok`, and
//! the whole through the SDK helper), on a warm instance; the medians of `PARTS_CALLS` calls.
//!
//! ```console
//! $ scripts/build-plugins
//! $ cargo bench -p trellis-host --bench plugin_python -- --seconds 1 --rounds 5
//! $ cargo bench -p trellis-host --bench plugin_python -- --only py-stamp --measure instantiate   # one figure, for a profiler
//! ```

#[path = "support/batch.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{plugins_dir, records};
use trellis_host::{
    CacheOutcome, CallConfig, EngineOptions, LimitsConfig, Plugin, PluginEngine, PluginRegistry,
    ReloadOutcome,
};

const BATCH: usize = 1_000;

/// The plugins by the names they describe themselves with, Rust then Python, by pairs.
const PLUGINS: [(&str, &str); 4] = [
    ("stamp", "testing/wasm/test_stamp.wasm"),
    ("py-stamp", "python/wasm/py_stamp.wasm"),
    ("echo", "testing/wasm/test_echo.wasm"),
    ("py-echo", "python/wasm/py_echo.wasm"),
];

/// `py-stamp`'s work timed in parts inside the guest.
const PARTS: (&str, &str) = ("py-stamp-parts", "python/wasm/py_stamp_parts.wasm");
/// Calls of `PARTS` measured (after one to warm up).
const PARTS_CALLS: usize = 21;

/// The Python/Rust pairs the ratios are taken of.
const PAIRS: [(&str, &str); 2] = [("py-stamp", "stamp"), ("py-echo", "echo")];

const MEASURES: [&str; 6] = [
    "tokio runtime",
    "instantiate",
    "empty call",
    "nop",
    "1000 warm",
    "1000 new",
];

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after it are plain.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One measurement: seconds per call and minor page faults per call.
#[derive(Clone, Copy, Default)]
struct Sample {
    seconds: f64,
    faults: f64,
}

/// Runs `op` for `budget` (at least 3 calls), each call given an input from `setup` made outside
/// the timing, `chunk` at a time.
fn measure<I>(
    budget: Duration,
    chunk: usize,
    mut setup: impl FnMut() -> I,
    mut op: impl FnMut(I),
) -> Sample {
    let (mut calls, mut spent, mut faults) = (0u64, Duration::ZERO, 0u64);
    while spent < budget || calls < 3 {
        let inputs: Vec<I> = (0..chunk).map(|_| setup()).collect();
        let before = minor_faults();
        let start = Instant::now();
        for input in inputs {
            op(input);
        }
        spent += start.elapsed();
        faults += minor_faults() - before;
        calls += chunk as u64;
    }
    Sample {
        seconds: spent.as_secs_f64() / calls as f64,
        faults: faults as f64 / calls as f64,
    }
}

struct Bench {
    budget: Duration,
    batch: Vec<String>,
    config: Arc<CallConfig>,
    runtime: tokio::runtime::Runtime,
}

impl Bench {
    fn run(&self, plugin: &Arc<Plugin>, what: &str) -> Sample {
        let (budget, batch, config) = (self.budget, &self.batch, &self.config);
        let call = |records: Vec<String>| {
            let out = self
                .runtime
                .block_on(plugin.clone().transform_for(records, config.clone(), None))
                .expect("the call");
            std::hint::black_box(out);
        };
        match what {
            "tokio runtime" => measure(
                budget,
                16,
                || (),
                |()| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime");
                    drop(std::hint::black_box(runtime));
                },
            ),
            "instantiate" => measure(
                budget,
                16,
                || (),
                |()| drop(plugin.warm_instance(config.clone()).expect("instantiate")),
            ),
            "empty call" => measure(budget, 16, Vec::new, call),
            "nop" => {
                let mut warm = plugin.warm_instance(config.clone()).expect("instantiate");
                warm.transform(&[]).expect("nop call");
                measure(
                    budget,
                    16,
                    || (),
                    |()| {
                        std::hint::black_box(warm.transform(&[]).expect("nop call"));
                    },
                )
            }
            "1000 warm" => {
                let mut warm = plugin.warm_instance(config.clone()).expect("instantiate");
                warm.transform(batch).expect("transform");
                measure(
                    budget,
                    1,
                    || (),
                    |()| {
                        let out = warm.transform(batch).expect("transform");
                        assert_eq!(out.len(), BATCH);
                    },
                )
            }
            "1000 new" => measure(budget, 4, || batch.clone(), call),
            other => panic!("no measure `{other}`: one of {MEASURES:?}"),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A duration in the unit that suits it.
fn time(seconds: f64) -> String {
    if seconds >= 1e-3 {
        format!("{:.2} ms", seconds * 1e3)
    } else if seconds >= 1e-6 {
        format!("{:.1} µs", seconds * 1e6)
    } else {
        format!("{:.0} ns", seconds * 1e9)
    }
}

fn main() {
    let (mut seconds, mut rounds, mut cold) = (1.0, 5, false);
    let (mut only, mut measure_only) = (None::<String>, None::<String>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--only" => only = Some(it.next().expect("--only PLUGIN")),
            "--measure" => measure_only = Some(it.next().expect("--measure WHAT")),
            "--cold" => cold = true,
            _ => {} // cargo bench passes `--bench`
        }
    }

    // The component cache, as `trellis serve` keeps one: a Python component takes seconds to
    // compile, and loads from the cache in tens of milliseconds.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-python-cache");
    if cold {
        let _ = std::fs::remove_dir_all(&cache);
    }
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: Some(cache),
        ..EngineOptions::default()
    })
    .expect("an engine");
    // Every plugin gets the default limits (64 MiB, 1 s): 1,000 records fit a Python plugin's.
    let registry = PluginRegistry::new(engine, plugins_dir(), LimitsConfig::default());
    let mut plugins = Vec::new();
    for (name, file) in PLUGINS.into_iter().chain([PARTS]) {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let path = plugins_dir().join(file);
        let start = Instant::now();
        let plugin = match registry.load_file(&path) {
            ReloadOutcome::Loaded(plugin) => plugin,
            other => panic!(
                "cannot load `{}` ({other:?}): run `scripts/build-plugins` first",
                path.display()
            ),
        };
        let cache = match plugin.cache_outcome() {
            CacheOutcome::Hit => "from the cache",
            CacheOutcome::Disabled | CacheOutcome::Miss | CacheOutcome::Rebuilt(_) => "compiled",
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "load {name}: {} ({cache}), {:.2} MB, interface {}",
            time(start.elapsed().as_secs_f64()),
            size as f64 / 1e6,
            plugin.interface_version()
        );
        assert_eq!(plugin.name(), name);
        plugins.push((name, plugin));
    }

    let bench = Bench {
        budget: Duration::from_secs_f64(seconds),
        batch: records(BATCH),
        config: Arc::new(CallConfig::new()),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime"),
    };
    let bytes: usize = bench.batch.iter().map(String::len).sum();
    let parts = plugins
        .iter()
        .position(|(name, _)| *name == PARTS.0)
        .map(|i| plugins.remove(i).1);

    // The two stamps must give the same records (as JSON values: Python writes `", "`).
    let outputs: Vec<(&str, Vec<serde_json::Value>)> = plugins
        .iter()
        .filter(|(name, _)| name.ends_with("stamp"))
        .map(|(name, plugin)| {
            let out = bench
                .runtime
                .block_on(plugin.clone().transform_for(
                    bench.batch.clone(),
                    bench.config.clone(),
                    None,
                ))
                .expect("the stamp call");
            let values = out
                .into_iter()
                .map(|r| serde_json::from_str(&r.expect("a record")).expect("JSON"))
                .collect();
            (*name, values)
        })
        .collect();
    if let [(a, x), (b, y)] = &outputs[..] {
        assert!(x == y, "`{a}` and `{b}` give different records");
        assert_eq!(x[0]["served_by"], "1.0.0");
    }

    if let Some(what) = &measure_only {
        for (name, plugin) in &plugins {
            let s = bench.run(plugin, what);
            println!(
                "{name} {what}: {} per call, {:.1} minor faults per call",
                time(s.seconds),
                s.faults
            );
        }
        return;
    }

    println!(
        "# Python vs Rust plugins: {BATCH} records of {} bytes on average; {seconds}s per \
         measurement, {rounds} rounds",
        bytes / BATCH
    );
    // samples[plugin][measure][round]
    let mut samples = vec![vec![Vec::<Sample>::new(); MEASURES.len()]; plugins.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..plugins.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for &p in &order {
            let (name, plugin) = &plugins[p];
            let mut line = format!("round {round}: {name:<10}");
            for (m, what) in MEASURES.iter().enumerate() {
                let s = bench.run(plugin, what);
                line += &format!(" | {what} {}", time(s.seconds));
                samples[p][m].push(s);
            }
            println!("{line}");
        }
    }

    let index = |name: &str| plugins.iter().position(|(n, _)| *n == name);
    let med = |p: usize, m: usize| {
        median(&mut samples[p][m].iter().map(|s| s.seconds).collect::<Vec<_>>())
    };
    println!("\nmedians (time per call; minor page faults per call):");
    for (p, (name, _)) in plugins.iter().enumerate() {
        let mut line = format!("{name:<10}");
        for (m, what) in MEASURES.iter().enumerate() {
            let faults = median(&mut samples[p][m].iter().map(|s| s.faults).collect::<Vec<_>>());
            line += &format!(" | {what} {} ({faults:.0} pf)", time(med(p, m)));
        }
        println!("{line}");
        let (nop, warm, new) = (med(p, 3), med(p, 4), med(p, 5));
        println!(
            "{:<10} records/s: warm {:.0}, new instance {:.0}; per record (1000 warm − nop) / \
             1000: {}",
            "",
            BATCH as f64 / warm,
            BATCH as f64 / new,
            time((warm - nop) / BATCH as f64)
        );
    }
    println!(
        "\nPython / Rust, median of the per-round ratios of time per call (> 1: Python slower):"
    );
    for (python, rust) in PAIRS {
        let (Some(py), Some(rs)) = (index(python), index(rust)) else {
            continue;
        };
        let mut line = format!("{python} / {rust}:");
        for (m, what) in MEASURES.iter().enumerate().skip(1) {
            let mut ratios: Vec<f64> = samples[py][m]
                .iter()
                .zip(&samples[rs][m])
                .map(|(p, r)| p.seconds / r.seconds)
                .collect();
            line += &format!(" {what} {:.1}x,", median(&mut ratios));
        }
        println!("{}", line.trim_end_matches(','));
    }

    if let Some(parts) = parts {
        print_parts(&parts, &bench.batch);
    }
}

/// Where `py-stamp`'s time per record goes inside the guest: `py-stamp-parts`'s timings.
fn print_parts(plugin: &Plugin, batch: &[String]) {
    const KEYS: [&str; 5] = ["loads", "stamp", "dumps", "wrap", "helper"];
    let mut warm = plugin
        .warm_instance(Arc::new(CallConfig::new()))
        .expect("instantiate");
    let mut timings = vec![Vec::new(); KEYS.len()];
    for call in 0..=PARTS_CALLS {
        let out = warm.transform(batch).expect("transform");
        let parts: serde_json::Value =
            serde_json::from_str(out[0].as_ref().expect("the timings")).expect("JSON");
        if call == 0 {
            continue;
        }
        for (k, key) in KEYS.iter().enumerate() {
            timings[k].push(parts[key].as_f64().expect("nanoseconds") * 1e-9);
        }
    }
    let per_record: Vec<f64> = timings
        .iter_mut()
        .map(|t| median(t) / batch.len() as f64)
        .collect();
    println!(
        "\npy-stamp inside the guest (py-stamp-parts, warm instance, median of {PARTS_CALLS} \
         calls), per record:"
    );
    let phases = KEYS[..4]
        .iter()
        .zip(&per_record)
        .map(|(key, t)| format!("{key} {}", time(*t)))
        .collect::<Vec<_>>()
        .join(", ");
    let sum: f64 = per_record[..4].iter().sum();
    println!(
        "phases: {phases} (sum {}); through trellis.transform_each: {}",
        time(sum),
        time(per_record[4])
    );
}
