//! Pool benchmark: `SELECT 1` throughput on PostgreSQL over loopback with 32 concurrent tasks and
//! at most 8 connections, for the Trellis pool (`Pool::execute`, and a lease per statement),
//! `sqlx::PgPool` with its defaults, and `deadpool-postgres`; plus the physical ceilings (raw
//! sqlx connections behind a mutex each: 8 shared by the tasks, and one per task) and the cost
//! of acquire + release without a query. Everything runs in one process with the allocator the
//! `trellis` binary ships with (mimalloc).
//!
//! Every contender connects in plain TCP (`sslmode=disable`, sqlx's `Disable`, deadpool's
//! `NoTls`), except `trellis-tls`: the Trellis pool over TLS (`sslmode=require`; the server
//! needs TLS on, as `scripts/services` sets up), reported as a ratio to the plain Trellis pool.
//!
//! Contenders run in interleaved rounds (A B C …, B C … A, …: each round starts one contender
//! further along) so that the machine's noise hits them alike; the report gives each round's
//! figures and the median of the per-round ratios.
//! `--only NAME` runs one contender (for a profiler).
//!
//! ```console
//! $ eval "$(scripts/services)"
//! $ cargo bench -p trellis-host --bench pool -- --seconds 3 --rounds 12
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use trellis_host::{DatabaseTarget, parse_database_url};
use trellis_host::{Fetch, Params};
use trellis_host::{Pool, PoolConfig};

/// The allocator the `trellis` binary ships with.
#[global_allocator]
static GLOBAL: trellis_host::Allocator = trellis_host::Allocator;

const TASKS: usize = 32;
const CONNECTIONS: usize = 8;

struct Args {
    seconds: f64,
    rounds: usize,
    url: String,
    /// Run only this contender (trellis, sqlx, deadpool, raw), e.g. under a profiler.
    only: Option<String>,
}

impl Args {
    fn runs(&self, contender: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == contender)
    }
}

fn args() -> Args {
    let mut a = Args {
        seconds: 3.0,
        rounds: 5,
        url: std::env::var("TRELLIS_BENCH_PG_URL")
            .or_else(|_| std::env::var("TRELLIS_TEST_PG_URL"))
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds N"),
            "--rounds" => a.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--url" => a.url = it.next().expect("--url URL"),
            "--only" => {
                a.only =
                    Some(it.next().expect(
                        "--only trellis|trellis-tls|lease|sqlx|deadpool|raw8|raw32|acquire",
                    ))
            }
            _ => {} // cargo bench passes `--bench`
        }
    }
    a
}

/// Runs `TASKS` copies of `op` for `seconds`; returns operations per second.
async fn throughput<F, Fut>(seconds: f64, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    // Warm up each task's path before counting.
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let (op, stop, count) = (op.clone(), stop.clone(), count.clone());
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                op(t).await;
                count.fetch_add(1, Ordering::Relaxed);
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let a = args();
    let with_mode = |mode: &str| {
        let joiner = if a.url.contains('?') { '&' } else { '?' };
        parse_database_url(&format!("{}{joiner}sslmode={mode}", a.url)).expect("a PostgreSQL URL")
    };
    let target = with_mode("disable");
    let tls_target = with_mode("require");
    let DatabaseTarget::Server {
        host,
        port,
        database,
        user,
        ..
    } = &target
    else {
        panic!("the benchmark needs a PostgreSQL server URL");
    };
    println!(
        "# pool benchmark: SELECT 1, {TASKS} tasks, ≤{CONNECTIONS} connections, {}s × {} rounds",
        a.seconds, a.rounds
    );
    println!("# server: {target}");

    // Trellis pool, health checks on (default 30 s interval), 8 connections.
    let mut config = PoolConfig::new("bench", target.clone());
    config.min_connections = CONNECTIONS;
    config.max_connections = CONNECTIONS;
    let trellis = Pool::new(config);
    trellis.initialize().await.unwrap();
    let mut config = PoolConfig::new("bench-tls", tls_target);
    config.min_connections = CONNECTIONS;
    config.max_connections = CONNECTIONS;
    let trellis_tls = Pool::new(config);
    trellis_tls.initialize().await.unwrap();

    // sqlx::PgPool with its defaults (test_before_acquire on), capped at 8.
    let pg_options = PgConnectOptions::new()
        .host(host)
        .port(*port)
        .database(database)
        .username(user)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable);
    let sqlx_pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS as u32)
        .connect_with(pg_options.clone())
        .await
        .unwrap();

    // deadpool-postgres with its defaults (fast recycling), 8 connections, cached statement.
    let mut dp = deadpool_postgres::Config::new();
    dp.host = Some(host.clone());
    dp.port = Some(*port);
    dp.dbname = Some(database.clone());
    dp.user = Some(user.clone());
    dp.pool = Some(deadpool_postgres::PoolConfig::new(CONNECTIONS));
    let deadpool = dp
        .create_pool(
            Some(deadpool_postgres::Runtime::Tokio1),
            tokio_postgres::NoTls,
        )
        .unwrap();

    // Ceiling: raw sqlx, one connection per task, no pool at all.
    let mut raw = Vec::new();
    for _ in 0..TASKS {
        raw.push(tokio::sync::Mutex::new(
            PgConnection::connect_with(&pg_options).await.unwrap(),
        ));
    }
    let raw = Arc::new(raw);

    // Contenders; each round starts one further along this list (round 1 with trellis, round 2
    // with lease, …), so that no contender always runs first or right after the same one.
    const NAMES: [&str; 7] = [
        "trellis",
        "lease",
        "sqlx",
        "deadpool",
        "raw8",
        "raw32",
        "trellis-tls",
    ];
    const LABELS: [&str; 7] = [
        "trellis Pool::execute",
        "trellis lease per statement",
        "sqlx::PgPool",
        "deadpool-postgres",
        "raw sqlx, 8 connections (ceiling at ≤8)",
        "raw sqlx, 1 connection per task (32)",
        "trellis Pool::execute over TLS",
    ];
    let mut rows: Vec<[f64; 7]> = Vec::new();
    for round in 1..=a.rounds {
        let mut row = [f64::NAN; 7];
        for k in 0..NAMES.len() {
            let i = (round - 1 + k) % NAMES.len();
            let name = &NAMES[i];
            if !a.runs(name) {
                continue;
            }
            row[i] = match *name {
                "trellis" | "trellis-tls" => {
                    let p = if *name == "trellis" {
                        trellis.clone()
                    } else {
                        trellis_tls.clone()
                    };
                    throughput(a.seconds, move |_| {
                        let p = p.clone();
                        async move {
                            p.execute("SELECT 1", &Params::None, Fetch::One)
                                .await
                                .unwrap();
                        }
                    })
                    .await
                }
                "lease" => {
                    let p = trellis.clone();
                    throughput(a.seconds, move |_| {
                        let p = p.clone();
                        async move {
                            let lease = p.acquire().await.unwrap();
                            lease
                                .execute("SELECT 1", &Params::None, Fetch::One)
                                .await
                                .unwrap();
                        }
                    })
                    .await
                }
                "sqlx" => {
                    let p = sqlx_pool.clone();
                    throughput(a.seconds, move |_| {
                        let p = p.clone();
                        async move {
                            let mut c = p.acquire().await.unwrap();
                            let _: (i32,) =
                                sqlx::query_as("SELECT 1").fetch_one(&mut *c).await.unwrap();
                        }
                    })
                    .await
                }
                "deadpool" => {
                    let p = deadpool.clone();
                    throughput(a.seconds, move |_| {
                        let p = p.clone();
                        async move {
                            let c = p.get().await.unwrap();
                            let stmt = c.prepare_cached("SELECT 1").await.unwrap();
                            let _ = c.query_one(&stmt, &[]).await.unwrap();
                        }
                    })
                    .await
                }
                _ => {
                    // Raw connections behind a mutex each: 8 shared by the 32 tasks (the most
                    // any pool of 8 can do), or one per task (no pool limit at all).
                    let per = if *name == "raw8" { CONNECTIONS } else { TASKS };
                    let raw = raw.clone();
                    throughput(a.seconds, move |i| {
                        let raw = raw.clone();
                        async move {
                            let mut c = raw[i % per].lock().await;
                            let _: (i32,) =
                                sqlx::query_as("SELECT 1").fetch_one(&mut *c).await.unwrap();
                        }
                    })
                    .await
                }
            };
        }
        let line: Vec<String> = NAMES
            .iter()
            .zip(row)
            .map(|(n, v)| format!("{n} {v:>7.0}/s"))
            .collect();
        println!("round {round}: {}", line.join("  "));
        rows.push(row);
    }
    let col = |i: usize| -> Vec<f64> { rows.iter().map(|r| r[i]).collect() };
    for (i, label) in LABELS.iter().enumerate() {
        println!("median {label}: {:.0}/s", median(&mut col(i)));
    }
    // Ratios are taken per round (same moment, same noise), then the median of the rounds.
    let ratio = |x: usize, y: usize| -> f64 {
        median(&mut rows.iter().map(|r| r[x] / r[y]).collect::<Vec<_>>())
    };
    println!(
        "median ratios: trellis/sqlx = {:.2}x, trellis/deadpool = {:.2}x, trellis/raw8-ceiling = {:.2}x, \
         raw8-ceiling/sqlx = {:.2}x, lease/sqlx = {:.2}x, lease/deadpool = {:.2}x",
        ratio(0, 2),
        ratio(0, 3),
        ratio(0, 4),
        ratio(4, 2),
        ratio(1, 2),
        ratio(1, 3),
    );
    println!(
        "median ratio trellis over TLS / trellis over plain TCP = {:.2}x",
        ratio(6, 0)
    );
    println!(
        "per-round trellis/sqlx: {}",
        rows.iter()
            .map(|r| format!("{:.2}", r[0] / r[2]))
            .collect::<Vec<_>>()
            .join(" ")
    );

    // Acquire + release without a query, one task, connections idle.
    if !a.runs("acquire") {
        trellis.close().await;
        return;
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for _ in 0..20_000 {
        drop(trellis.acquire().await.unwrap());
    }
    for _ in 0..200_000 {
        let start = Instant::now();
        let lease = trellis.acquire().await.unwrap();
        drop(lease);
        hist.record(start.elapsed().as_nanos() as u64).unwrap();
    }
    println!(
        "acquire+release (no query, 200k): p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs",
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.max() as f64 / 1e3
    );
    trellis.close().await;
}
