//! HTTP benchmark of the shipped example pipeline (`finance_report`: two SQL nodes, the
//! `sum-by-key` plugin, policy checks, masking, audit) through the real release binary, on the
//! embedded SQLite and on PostgreSQL, with a closed-loop load generator in this process (the
//! client shares the 2-core machine with the server, as the issue asks). `GET /health` at the
//! same concurrency is measured in the same run as the ceiling of the HTTP stack itself.
//!
//! ```console
//! $ eval "$(scripts/services)"
//! $ cargo build --release -p trellis-host
//! $ cargo bench -p trellis-tests --bench http -- --seconds 5 --concurrency 1,4,8,16
//! ```

use std::time::{Duration, Instant};

use sqlx::Connection;
use trellis_tests::{Server, TestDb, example_dir, trellis_bin};

struct Args {
    seconds: f64,
    concurrency: Vec<usize>,
    backends: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        concurrency: vec![1, 4, 8, 16],
        backends: vec!["sqlite".into(), "postgres".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--concurrency" => {
                a.concurrency = it
                    .next()
                    .expect("--concurrency 1,4,8")
                    .split(',')
                    .map(|n| n.parse().expect("a number"))
                    .collect()
            }
            "--backend" => a.backends = vec![it.next().expect("--backend sqlite|postgres")],
            // cargo bench passes --bench.
            _ => {}
        }
    }
    a
}

const ANALYST: &str = r#"{"user_id": "fin001", "tenant_id": "acme", "attributes": {"department": "finance.analysis", "clearance": "confidential"}}"#;

struct Figures {
    requests: usize,
    errors: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `concurrency` clients, each with its own keep-alive connection, send requests back to back
/// for `seconds`.
async fn load(url: &str, post: bool, concurrency: usize, seconds: f64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("a client");
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let request = if post {
                        http.post(&url)
                            .header("x-trellis-user", ANALYST)
                            .body(r#"{"inputs": {"start_date": "2024-01-01"}}"#)
                    } else {
                        http.get(&url)
                    };
                    match request.send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("a client task");
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Figures {
        requests: all.len(),
        errors,
        per_second: all.len() as f64 / elapsed,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
    }
}

async fn postgres_database() -> Option<String> {
    let url = TestDb::Postgres.url()?;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::raw_sql("DROP DATABASE IF EXISTS trellis_http_bench WITH (FORCE)")
        .execute(&mut conn)
        .await
        .expect("drop the bench database");
    sqlx::raw_sql("CREATE DATABASE trellis_http_bench")
        .execute(&mut conn)
        .await
        .expect("create the bench database");
    let base = url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .expect("a database URL");
    Some(format!("{base}/trellis_http_bench"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = args();
    println!(
        "http bench: example pipeline `finance_report` via {}, {} s per point",
        trellis_bin().display(),
        args.seconds
    );
    for backend in &args.backends {
        let dir = example_dir();
        if backend == "postgres" {
            let Some(url) = postgres_database().await else {
                println!("postgres: skipped (TRELLIS_TEST_PG_URL not set)");
                continue;
            };
            let config = std::fs::read_to_string(dir.path().join("trellis.toml")).unwrap();
            let config = config.replace(
                "[databases.main]\nurl = \"sqlite://data/trellis.db\"",
                &format!("[databases.main]\nurl = \"{url}\"\nmax_connections = 16"),
            );
            std::fs::write(dir.path().join("trellis.toml"), config).unwrap();
        }
        let server = Server::start_with_env(dir.path(), &[], &[("RUST_LOG", "warn")]);
        let run_url = format!("{}/v1/workflows/finance_report/run", server.base_url());
        let health_url = format!("{}/health", server.base_url());
        // Warm up: plugin instances, statement caches, the decision cache.
        let warm = load(&run_url, true, 4, 1.0).await;
        assert_eq!(warm.errors, 0, "the workflow fails: check the example");
        println!("\n{backend}:");
        println!(
            "{:>11} | {:>10} {:>9} {:>9} {:>6} | {:>10} {:>9} | {:>8}",
            "concurrency",
            "run req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "health r/s",
            "p50 ms",
            "run/health"
        );
        for &c in &args.concurrency {
            let run = load(&run_url, true, c, args.seconds).await;
            let health = load(&health_url, false, c, args.seconds).await;
            println!(
                "{:>11} | {:>10.0} {:>9.2} {:>9.2} {:>6} | {:>10.0} {:>9.2} | {:>8.2}",
                c,
                run.per_second,
                run.p50_ms,
                run.p99_ms,
                run.errors,
                health.per_second,
                health.p50_ms,
                run.per_second / health.per_second
            );
            assert!(run.requests > 0);
        }
        drop(server);
    }
}
