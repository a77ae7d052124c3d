//! `SELECT 1` through a plugin's `database` import (issue 19), against `Pool::execute` directly:
//! 32 tasks, one pool of 8 connections to PostgreSQL (no TLS), in alternating rounds of one run.
//!
//! The plugin is `plugins/testing/test-query` (built for `trellis:plugin@0.2.0`), asked to run the
//! statement `REPEAT` times per call. Every statement takes the path a served run's does
//! ([`PluginDatabase`]): the host import on the plugin's fiber, the tokenizer, the policy
//! decision (`database:read` on `Trellis::Database::"main"`, granted by a rule on
//! `runtime.plugin`; decided once per call and database as in `serve`; the audit trail off), then
//! the pool. A call's instantiation is spread over its `REPEAT` statements.
//!
//! ```console
//! $ scripts/build-plugins && eval "$(scripts/services)"
//! $ cargo bench -p trellis-host --bench plugin_database -- --seconds 3 --rounds 6
//! ```
//!
//! The plugin reads each answer's rows typed (`rows_as = "one"`, `query_as::<One>`, the typed
//! read a Rust plugin does), and in a third side of each round as `Value`s (`rows_as =
//! "value"`); both ratios are printed.
//!
//! `--only pool|plugin|plugin-value|canned|canned-yield` runs one side (under a profiler, say; with
//! `TRELLIS_BENCH_PERF_MAP=1` `perf report` names the plugin's functions). `canned` is the plugin
//! side with no database: a gate that answers at once what PostgreSQL answers, so what is left is
//! the plugin's own cost per statement (the component-model call, the guest's JSON, the
//! instantiation spread over a call). `canned-yield` waits once before answering, as a statement
//! on the pool does: the fiber suspends and resumes once per statement.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_host::{
    CallConfig, DatabaseCaller, Databases, EngineOptions, EngineSettings, Fetch, LimitsConfig,
    Params, PluginEngine, PluginLimits, PluginRegistry, PolicyEngine, Pool, PoolConfig,
    PreparedUser, ReloadOutcome, UserContext, database_policy, parse_database_url,
};

/// The allocator the `trellis` binary ships with.
#[global_allocator]
static GLOBAL: trellis_host::Allocator = trellis_host::Allocator;

const TASKS: usize = 32;
const CONNECTIONS: usize = 8;
/// Statements per plugin call.
const REPEAT: u64 = 100;

/// Runs `TASKS` copies of `op` (each returning how many statements it ran) for `seconds`;
/// returns statements per second.
async fn throughput<F, Fut>(seconds: f64, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = op().await;
                count.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let done = count.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    done as f64 / elapsed
}

/// A gate that allows every statement and answers at once what `PluginDatabase` answers for
/// `SELECT 1 AS one` on PostgreSQL (`--only canned`). The text is written out here, so a change
/// to the answer's form must be made here too for the two sides to stay comparable.
struct Canned {
    /// Whether the answer waits once first (`--only canned-yield`: the plugin's fiber suspends
    /// and resumes once per statement, as it does while the pool runs it).
    yields: bool,
}

#[async_trait::async_trait]
impl trellis_host::DatabaseGate for Canned {
    async fn query(
        &self,
        _request: trellis_host::DatabaseRequest,
    ) -> Result<String, trellis_host::DatabaseCallError> {
        if self.yields {
            tokio::task::yield_now().await;
        }
        Ok(r#"{"data":[{"one":1}],"row_count":1,"database_type":"postgresql"}"#.to_owned())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let (mut seconds, mut rounds, mut only) = (3.0, 6, None::<String>);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            // One side only (see the module's docs).
            "--only" => {
                only = Some(
                    it.next()
                        .expect("--only pool|plugin|plugin-value|canned|canned-yield"),
                );
            }
            _ => {} // cargo bench passes `--bench`
        }
    }
    let url = std::env::var("TRELLIS_BENCH_PG_URL")
        .or_else(|_| std::env::var("TRELLIS_TEST_PG_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let joiner = if url.contains('?') { '&' } else { '?' };
    let target =
        parse_database_url(&format!("{url}{joiner}sslmode=disable")).expect("a PostgreSQL URL");
    let mut config = PoolConfig::new("main", target);
    config.min_connections = CONNECTIONS;
    config.max_connections = CONNECTIONS;
    let pool = Pool::new(config);
    pool.initialize().await.expect("the pool opens");

    // The policy: plugin `query` may read `main` for department finance.
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("bench.rules.json"),
        json!({"rules": [{"id": "query-reads-main", "resource_type": "database",
            "resource_id": "main", "permission": "read", "effect": "allow",
            "conditions": {"type": "and", "conditions": [
                {"type": "attribute_expression", "value": {"attribute_path": "runtime.plugin",
                    "operator": "equals", "value": "query"}},
                {"type": "department_hierarchy", "value": {"department": "finance",
                    "include_children": true}}]}}]})
        .to_string(),
    )
    .expect("write the rules");
    let engine = Arc::new(
        PolicyEngine::load(dir.path(), EngineSettings::default()).expect("the policies load"),
    );
    let user: UserContext = serde_json::from_value(
        json!({"user_id": "bench", "attributes": {"department": "finance.analysis"}}),
    )
    .expect("a user");
    let policy = database_policy(
        engine.clone(),
        engine.generation(),
        PreparedUser::new(user),
        json!({"workflow": "bench", "run_id": "bench"}),
        jiff::Timestamp::now(),
    );

    // The plugin, allowed enough statements per call.
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/testing/wasm/test_query.wasm");
    let mut limits = LimitsConfig::default();
    limits.by_name.insert(
        "query".into(),
        PluginLimits {
            call_timeout: Duration::from_secs(60),
            max_statements: REPEAT as u32,
            ..PluginLimits::default()
        },
    );
    let plugins = PluginRegistry::new(
        PluginEngine::new(EngineOptions {
            // `TRELLIS_BENCH_PERF_MAP=1`: name the plugin's functions in `perf report`.
            perf_map: std::env::var_os("TRELLIS_BENCH_PERF_MAP").is_some(),
            // `TRELLIS_BENCH_VALGRIND=1`: few small slots, so that valgrind can map them (it
            // cannot map wasmtime's default 4 GiB reservation per slot for 128 slots). The
            // plugin's code then checks bounds explicitly: count the host's side with it.
            ..if std::env::var_os("TRELLIS_BENCH_VALGRIND").is_some() {
                EngineOptions {
                    max_instances: TASKS as u32 + 4,
                    max_memory_bytes: 64 << 20,
                    memory_reservation: Some(64 << 20),
                    ..EngineOptions::default()
                }
            } else {
                EngineOptions::default()
            }
        })
        .expect("an engine"),
        wasm.parent().unwrap(),
        limits,
    );
    let plugin = match plugins.load_file(&wasm) {
        ReloadOutcome::Loaded(p) => p,
        other => panic!("cannot load test_query.wasm ({other:?}): run scripts/build-plugins"),
    };
    let gate = Arc::new(trellis_host::PluginDatabase::new(
        Databases::default().with_pool("main", pool.clone()),
        Arc::from(""),
        Some(policy),
        DatabaseCaller {
            plugin: "query".into(),
            plugin_version: plugin.version().into(),
            node: "q".into(),
            workflow: "bench".into(),
        },
    ));
    // The plugin reads its rows typed (`rows_as = "one"`: `query_as::<One>`), or as `Value`s.
    let call_config = |rows_as: &str| -> Arc<CallConfig> {
        Arc::new(
            json!({"database": "main", "statement": "SELECT 1 AS one", "repeat": REPEAT,
                "rows_as": rows_as})
            .as_object()
            .unwrap()
            .clone(),
        )
    };
    let (typed_config, value_config) = (call_config("one"), call_config("value"));
    // Every statement must have run and been allowed, both ways.
    for config in [&typed_config, &value_config] {
        let out = plugin
            .clone()
            .transform_for(vec!["{}".into()], config.clone(), Some(gate.clone()))
            .await
            .expect("the plugin runs");
        assert!(
            out[0]
                .as_ref()
                .is_ok_and(|r| r.contains("\"rows\":[{\"one\":1}]")),
            "{out:?}"
        );
    }

    println!(
        "# SELECT 1: plugin database import ({REPEAT} per call, Cedar decision each; rows read \
         typed, and as Values) vs Pool::execute; {TASKS} tasks, {CONNECTIONS} connections, \
         {seconds}s x {rounds} rounds"
    );
    let (mut direct, mut typed, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let run_direct = || {
            let pool = pool.clone();
            throughput(seconds, move || {
                let pool = pool.clone();
                async move {
                    pool.execute("SELECT 1 AS one", &Params::None, Fetch::All)
                        .await
                        .expect("SELECT 1");
                    1
                }
            })
        };
        // The plugin side, its statements answered by `gate`.
        let run_with = |gate: Arc<dyn trellis_host::DatabaseGate>, config: &Arc<CallConfig>| {
            let (plugin, config) = (plugin.clone(), config.clone());
            throughput(seconds, move || {
                let (plugin, gate, config) = (plugin.clone(), gate.clone(), config.clone());
                async move {
                    plugin
                        .transform_for(vec!["{}".into()], config, Some(gate))
                        .await
                        .expect("the plugin call");
                    REPEAT
                }
            })
        };
        if let Some(side) = only.as_deref() {
            let rate = match side {
                "pool" => run_direct().await,
                "canned" => run_with(Arc::new(Canned { yields: false }), &typed_config).await,
                "canned-yield" => run_with(Arc::new(Canned { yields: true }), &typed_config).await,
                "plugin-value" => run_with(gate.clone(), &value_config).await,
                _ => run_with(gate.clone(), &typed_config).await,
            };
            println!("round {round}: {side} {rate:.0}/s");
            continue;
        }
        // Rotate which goes first.
        let (mut d, mut t, mut v) = (0.0, 0.0, 0.0);
        for side in 0..3 {
            match (round + side) % 3 {
                0 => d = run_direct().await,
                1 => t = run_with(gate.clone(), &typed_config).await,
                _ => v = run_with(gate.clone(), &value_config).await,
            }
        }
        println!(
            "round {round}: Pool::execute {d:.0}/s, plugin import typed {t:.0}/s (ratio {:.3}), \
             as Values {v:.0}/s (ratio {:.3})",
            t / d,
            v / d
        );
        direct.push(d);
        typed.push(t);
        values.push(v);
    }
    if only.is_some() {
        return;
    }
    let ratios =
        |side: &[f64]| -> Vec<f64> { direct.iter().zip(side).map(|(d, p)| p / d).collect() };
    let (mut typed_ratios, mut value_ratios) = (ratios(&typed), ratios(&values));
    println!(
        "median: Pool::execute {:.0}/s; plugin import, rows typed {:.0}/s, median of ratios \
         {:.3}; rows as Values {:.0}/s, median of ratios {:.3}",
        median(&mut direct),
        median(&mut typed),
        median(&mut typed_ratios),
        median(&mut values),
        median(&mut value_ratios),
    );
}
