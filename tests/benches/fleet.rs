//! Fleet benchmark (issue 20): three release hosts following one control plane on PostgreSQL 15
//! (loopback), each publish changing one workflow file.
//!
//! - **Publish → every host serving:** for each of `--publishes` plain publishes, from the
//!   publish transaction's start (`generations.published_at`) to the last host's switch
//!   (`hosts.activated_at_us`, written by each host when it swaps the generation in).
//! - **Activation skew with `--wait`:** for each of `--waits` publishes with `--wait`, the spread
//!   of the hosts' switch times (last − first).
//! - **The floor, in the same run:** a bare `NOTIFY` to three `LISTEN` connections in this
//!   process: publish → serving can be no faster than its delivery to the last listener, and the
//!   skew no smaller than the spread of its delivery.
//!
//! All clocks are this machine's. The hosts run from the release binary.
//!
//! ```console
//! $ eval "$(scripts/services)"
//! $ cargo build --release -p trellis-host
//! $ cargo bench -p trellis-tests --bench fleet -- --publishes 50 --waits 50
//! ```

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use trellis_tests::{
    Server, drop_postgres_database, fresh_postgres_database, run_trellis, stamp_bundle,
    stamp_workflow,
};

struct Args {
    publishes: usize,
    waits: usize,
    hosts: usize,
}

fn args() -> Args {
    let mut a = Args {
        publishes: 50,
        waits: 50,
        hosts: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut number = || {
            it.next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{arg} N"))
        };
        match arg.as_str() {
            "--publishes" => a.publishes = number(),
            "--waits" => a.waits = number(),
            "--hosts" => a.hosts = number(),
            "--bench" => {}
            other => panic!("unknown argument `{other}`"),
        }
    }
    a
}

fn setup(dir: &Path) {
    std::fs::write(
        dir.join("trellis.toml"),
        "[auth]\nmode = \"dev\"\n[control]\nheartbeat_interval = \"200ms\"\n",
    )
    .unwrap();
    stamp_bundle(dir, 0);
}

fn publish(dir: &Path, url: &str, marker: u64, wait: bool) {
    std::fs::write(dir.join("bundle/workflows/w.toml"), stamp_workflow(marker)).unwrap();
    let mut args = vec!["publish", "bundle", "--to", url];
    if wait {
        args.extend(["--wait", "--timeout", "30s"]);
    }
    let (status, out, err) = run_trellis(dir, &args, Duration::from_secs(120));
    assert!(status.success(), "{out}\n{err}");
}

/// Waits until `hosts` hosts serve `generation`; returns (published_at µs, every switch µs).
async fn switched(url: &str, generation: i64, hosts: usize) -> (i64, Vec<i64>) {
    let mut db = sqlx::PgConnection::connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(
            "SELECT activated_at_us FROM trellis_control.hosts WHERE active = $1",
        )
        .bind(generation)
        .fetch_all(&mut db)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
        if at.len() == hosts {
            let published: i64 = sqlx::query_scalar(
                "SELECT (extract(epoch FROM published_at) * 1e6)::bigint \
                 FROM trellis_control.generations WHERE id = $1",
            )
            .bind(generation)
            .fetch_one(&mut db)
            .await
            .unwrap();
            db.close().await.unwrap();
            return (published, at);
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} did not reach every host"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A bare NOTIFY delivered to `listeners` LISTEN connections, `rounds` times: per round the
/// delivery to the last listener and the spread between the first and the last (ms).
async fn notify_floor(url: &str, listeners: usize, rounds: usize) -> (Vec<f64>, Vec<f64>) {
    let mut ls = Vec::new();
    for _ in 0..listeners {
        let mut l = sqlx::postgres::PgListener::connect(url).await.unwrap();
        l.listen("bench_floor").await.unwrap();
        ls.push(l);
    }
    let mut sender = sqlx::PgConnection::connect(url).await.unwrap();
    let (mut last, mut spread) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let sent = now_us();
        sqlx::query("SELECT pg_notify('bench_floor', 'x')")
            .execute(&mut sender)
            .await
            .unwrap();
        let arrivals = futures_util::future::join_all(ls.iter_mut().map(|l| async move {
            l.recv().await.unwrap();
            now_us()
        }))
        .await;
        let (min, max) = (
            *arrivals.iter().min().unwrap(),
            *arrivals.iter().max().unwrap(),
        );
        last.push((max - sent) as f64 / 1e3);
        spread.push((max - min) as f64 / 1e3);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (last, spread)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[rank.min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let Some((name, url)) = fresh_postgres_database("fleet_bench").await else {
        eprintln!("TRELLIS_TEST_POSTGRES_URL is not set: run `eval \"$(scripts/services)\"`");
        std::process::exit(2);
    };
    eprintln!("hosts: {}", trellis_tests::trellis_bin().display());
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    publish(dir.path(), &url, 0, false);
    let control = ["--control", url.as_str()];
    let env = [("RUST_LOG", "warn")];
    let hosts: Vec<Server> = (0..a.hosts)
        .map(|_| Server::start_with_env(dir.path(), &control, &env))
        .collect();
    switched(&url, 1, a.hosts).await;

    let mut generation = 1;
    let (mut latency, mut spread_plain) = (Vec::new(), Vec::new());
    for i in 0..a.publishes {
        publish(dir.path(), &url, generation as u64 + 1, false);
        generation += 1;
        let (published, at) = switched(&url, generation, a.hosts).await;
        let (min, max) = (*at.iter().min().unwrap(), *at.iter().max().unwrap());
        latency.push((max - published) as f64 / 1e3);
        spread_plain.push((max - min) as f64 / 1e3);
        if i % 10 == 9 {
            eprintln!("{} publishes", i + 1);
        }
    }
    let mut skew = Vec::new();
    for i in 0..a.waits {
        publish(dir.path(), &url, generation as u64 + 1, true);
        generation += 1;
        let (_, at) = switched(&url, generation, a.hosts).await;
        let (min, max) = (*at.iter().min().unwrap(), *at.iter().max().unwrap());
        skew.push((max - min) as f64 / 1e3);
        if i % 10 == 9 {
            eprintln!("{} publishes with --wait", i + 1);
        }
    }
    let (floor_last, floor_spread) = notify_floor(&url, a.hosts, a.publishes.max(20)).await;
    drop(hosts);
    drop_postgres_database(&name).await;

    println!(
        "\n{} hosts, loopback PostgreSQL 15; {} publishes, {} with --wait (ms)\n",
        a.hosts, a.publishes, a.waits
    );
    println!("| measure | p50 | p99 | max |");
    println!("| --- | --- | --- | --- |");
    let row = |label: &str, v: &[f64]| {
        if !v.is_empty() {
            println!(
                "| {label} | {:.1} | {:.1} | {:.1} |",
                percentile(v, 50.0),
                percentile(v, 99.0),
                percentile(v, 100.0)
            );
        }
    };
    row("publish → every host serving", &latency);
    row("switch spread without --wait", &spread_plain);
    row("activation skew with --wait", &skew);
    row("floor: bare NOTIFY to the last listener", &floor_last);
    row("floor: bare NOTIFY spread across listeners", &floor_spread);
}
