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
//!
//! After the table, each point's CPU time per request is split between the server (user and
//! system), PostgreSQL's processes, this process (the load generator, which shares the machine)
//! and the rest, from `/proc`. The last column is the ceiling the database server and the load
//! generator leave on this machine: the rate its cores would allow if the server took no CPU
//! time at all, as a ratio to `/health`.
//!
//! `--baseline BIN` also serves the same example from another build (an earlier commit's
//! release binary) and, per concurrency, alternates `--rounds` rounds between the two,
//! reporting the median of the per-round throughput ratios (this build / baseline).
//! `--pg-params sslmode=disable` appends a query to the PostgreSQL URL (a build that predates
//! TLS ignores it, and connects in plain TCP anyway).
//!
//! `--backend pgbouncer` serves the PostgreSQL pipeline twice from this build, once straight to
//! PostgreSQL 15 and once through PgBouncer in transaction mode (`pooler = "transaction"`, the
//! PgBouncer `scripts/services` starts, same database), and alternates `--rounds` rounds between
//! the two: the median of the per-round ratios (through PgBouncer / direct).
//!
//! ```console
//! $ cargo bench -p trellis-tests --bench http -- --backend pgbouncer --seconds 3 --concurrency 4 --rounds 6 --pg-params sslmode=disable
//! ```
//!
//! `--audit-table` (PostgreSQL) writes the audit trail into the bench database's tables
//! (`[policy] audit_database = "main"`) instead of the file, and reports their bytes per run
//! (`pg_column_size` of every row, tuple headers included), beside what the same decisions would
//! take as whole rows (one row per decision with its run's id, user, time and generation, as
//! `policy_audit` holds a decision).
//!
//! ```console
//! $ cargo bench -p trellis-tests --bench http -- --backend postgres --audit-table --seconds 3 --concurrency 4 --pg-params sslmode=disable
//! ```
//!
//! `--profile N` counts where a request's instructions go instead: it serves the example under
//! callgrind (valgrind; `TRELLIS_VALGRIND=1` gives the plugins slots valgrind can map), sends
//! `N` runs one after another (after 20 to warm up), then `N` requests to `/health`, and prints
//! the user-space instructions per request by part (HTTP, authentication, policy, SQL, plugin,
//! masking, audit, serialization, …), every thread of the server counted (the audit writer's
//! too). The kernel's share (sockets, the disk) is not in these counts. The plugins' compiled
//! functions, which callgrind has no names for, are named from the engine's perf map (`??? NAME`).
//!
//! ```console
//! $ cargo bench -p trellis-tests --bench http -- --profile 200 --pg-params sslmode=disable
//! ```

use std::time::{Duration, Instant};

use sqlx::Connection;
use trellis_tests::cpu::{Snapshot, Split};
use trellis_tests::{Server, TestDb, example_dir, trellis_bin};

struct Args {
    seconds: f64,
    concurrency: Vec<usize>,
    backends: Vec<String>,
    baseline: Option<std::path::PathBuf>,
    rounds: usize,
    /// Appended to the PostgreSQL URL as its query, e.g. `sslmode=disable`.
    pg_params: Option<String>,
    /// `--profile N`: instructions per request by part, over `N` requests under callgrind.
    profile: Option<usize>,
    /// `--audit-table`: the audit trail in the PostgreSQL bench database's tables.
    audit_table: bool,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 5.0,
        concurrency: vec![1, 4, 8, 16],
        backends: vec!["sqlite".into(), "postgres".into()],
        baseline: None,
        rounds: 4,
        pg_params: None,
        profile: None,
        audit_table: false,
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
            "--backend" => {
                a.backends = vec![it.next().expect("--backend sqlite|postgres|pgbouncer")]
            }
            "--baseline" => a.baseline = Some(it.next().expect("--baseline BIN").into()),
            "--rounds" => a.rounds = it.next().and_then(|s| s.parse().ok()).expect("--rounds N"),
            "--pg-params" => a.pg_params = Some(it.next().expect("--pg-params sslmode=disable")),
            "--audit-table" => a.audit_table = true,
            "--profile" => {
                a.profile = Some(it.next().and_then(|s| s.parse().ok()).expect("--profile N"))
            }
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
        if backend == "pgbouncer" {
            bouncer_vs_direct(&args).await;
            continue;
        }
        let dir = example_dir();
        // The bench database's URL, on PostgreSQL.
        let mut pg_url = None;
        if backend == "postgres" {
            let Some(mut url) = postgres_database().await else {
                println!("postgres: skipped (TRELLIS_TEST_PG_URL not set)");
                continue;
            };
            if let Some(params) = &args.pg_params {
                url = format!("{url}?{params}");
            }
            let config = std::fs::read_to_string(dir.path().join("trellis.toml")).unwrap();
            let mut config = config.replace(
                "[databases.main]\nurl = \"sqlite://data/trellis.db\"",
                &format!("[databases.main]\nurl = \"{url}\"\nmax_connections = 16"),
            );
            if args.audit_table {
                config = config.replace("[policy]\n", "[policy]\naudit_database = \"main\"\n");
            }
            std::fs::write(dir.path().join("trellis.toml"), config).unwrap();
            without_vector_step(dir.path());
            pg_url = Some(url);
        }
        if let Some(baseline) = &args.baseline {
            compare(&args, backend, dir.path(), baseline).await;
            continue;
        }
        if let Some(requests) = args.profile {
            profile(backend, dir.path(), requests).await;
            continue;
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
        let mut runs = warm.requests;
        let mut failed = 0;
        let mut splits = Vec::new();
        for &c in &args.concurrency {
            let (run, run_split) = load_split(&run_url, true, c, args.seconds, &server).await;
            runs += run.requests;
            failed += run.errors;
            let (health, health_split) =
                load_split(&health_url, false, c, args.seconds, &server).await;
            splits.push((c, run_split, health_split, health.per_second));
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
        cpu_table(&splits);
        // What the audit trail takes per run (issue 21): the records every run of this backend
        // left, once the background writer has caught up.
        if args.audit_table
            && let Some(url) = &pg_url
        {
            audit_tables(url, runs, failed).await;
            drop(server);
            continue;
        }
        let (bytes, records) = audit_written(&dir.path().join("data")).await;
        println!(
            "audit: {records} decisions, {bytes} bytes for {runs} runs ({failed} failed): \
             {:.1} decisions, {:.0} bytes per run, {:.0} bytes per decision",
            records as f64 / runs as f64,
            bytes as f64 / runs as f64,
            bytes as f64 / records.max(1) as f64,
        );
        drop(server);
    }
}

/// The command name of PostgreSQL's processes, whose CPU time is the database server's. On the
/// embedded SQLite the engine runs inside the server, so nothing has this name's time but the
/// other databases' idle processes.
const DATABASE_PROCESS: &str = "postgres";

/// [`load`], with where the machine's CPU time went meanwhile.
async fn load_split(
    url: &str,
    post: bool,
    concurrency: usize,
    seconds: f64,
    server: &Server,
) -> (Figures, Split) {
    let before = Snapshot::take();
    let figures = load(url, post, concurrency, seconds).await;
    let split = Split::between(
        &before,
        &Snapshot::take(),
        server.pid(),
        DATABASE_PROCESS,
        figures.requests,
    );
    (figures, split)
}

/// Where each point's CPU time went, per request: the server (user and system), PostgreSQL's
/// processes, this process (the load generator) and the rest of the machine. The last column
/// is the ceiling the database server and load generator leave: the requests per second the
/// machine's cores allow if the server took no CPU time at all, as a ratio to `/health`.
fn cpu_table(splits: &[(usize, Split, Split, f64)]) {
    println!(
        "\nCPU µs per request | {:>6} {:>6} {:>8} {:>6} {:>6} {:>5} | ceiling without the server",
        "user", "system", "database", "client", "other", "idle"
    );
    for (c, run, health, health_rate) in splits {
        for (what, split) in [("run", run), ("health", health)] {
            let ceiling = split.ceiling_without_server();
            println!(
                "{:>11} {:>6} | {:>6.0} {:>6.0} {:>8.0} {:>6.0} {:>6.0} {:>4.0}% | {}",
                c,
                what,
                split.server_user,
                split.server_system,
                split.database,
                split.client,
                split.other,
                split.idle_share * 100.0,
                if what == "run" {
                    format!("{ceiling:.0} req/s, {:.2}× /health", ceiling / health_rate)
                } else {
                    String::new()
                }
            );
        }
    }
}

/// The bytes and decisions of the audit files in `data` (`audit.jsonl` and its rotated files),
/// once they stop growing: the writer works in the background. A decision is a line with an
/// `action` (a run's line, which its decisions share, is not one).
async fn audit_written(data: &std::path::Path) -> (u64, u64) {
    let read = || {
        let mut total = (0, 0);
        for entry in std::fs::read_dir(data).expect("the data directory") {
            let entry = entry.expect("a directory entry");
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("audit.jsonl")
            {
                let text = std::fs::read_to_string(entry.path()).expect("an audit file");
                total.0 += text.len() as u64;
                total.1 += text
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .is_ok_and(|v| v.get("action").is_some())
                    })
                    .count() as u64;
            }
        }
        total
    };
    let mut last = read();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// What the audit tables of the PostgreSQL bench database (`url`) hold for `runs` runs, once
/// they stop growing: the bytes of their rows, and what the same decisions would take as whole
/// rows. A build before the runs table (`TRELLIS_BIN`) wrote its decisions whole, into
/// `policy_audit`: those are counted as they are.
async fn audit_tables(url: &str, runs: usize, failed: usize) {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the bench database");
    // Decisions of a run written whole, and their bytes.
    const WHOLE: &str = "SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0)::bigint \
        FROM policy_audit t WHERE run_id IS NOT NULL";
    // Rows and bytes: the runs table, the decisions table, and the same decisions as whole
    // rows (the run's fields beside each decision, `time` as long as the run's).
    const SIZES: &str = "SELECT \
        (SELECT count(*) FROM policy_audit_runs), \
        (SELECT coalesce(sum(pg_column_size(r.*)), 0) FROM policy_audit_runs r)::bigint, \
        (SELECT count(*) FROM policy_audit_decisions), \
        (SELECT coalesce(sum(pg_column_size(d.*)), 0) FROM policy_audit_decisions d)::bigint, \
        (SELECT coalesce(sum(pg_column_size(ROW(d.id, r.time, r.user_id, d.action, d.resource, \
            d.decision, d.policies, r.generation, d.errors, d.latency_us, d.cached, d.masks, \
            r.run_id))), 0) FROM policy_audit_decisions d JOIN policy_audit_runs r \
            ON r.writer = d.writer AND r.run = d.run)::bigint";
    let split: bool = sqlx::query_scalar("SELECT to_regclass('policy_audit_runs') IS NOT NULL")
        .fetch_one(&mut conn)
        .await
        .expect("the catalog");
    let mut last = None;
    let ((whole_rows, whole_bytes), (run_rows, run_bytes, decisions, decision_bytes, as_whole)) = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let whole: (i64, i64) = sqlx::query_as(WHOLE)
            .fetch_one(&mut conn)
            .await
            .expect("the audit table");
        let split: (i64, i64, i64, i64, i64) = if split {
            sqlx::query_as(SIZES)
                .fetch_one(&mut conn)
                .await
                .expect("the audit tables")
        } else {
            (0, 0, 0, 0, 0)
        };
        if last == Some((whole, split)) {
            break (whole, split);
        }
        last = Some((whole, split));
    };
    let per_run = |v: i64| v as f64 / runs as f64;
    println!(
        "audit tables: {runs} runs ({failed} failed), {:.1} decisions per run, {:.0} bytes per \
         run: {decisions} decisions and {run_rows} runs rows ({:.0} bytes per run in runs rows, \
         {:.0} in decisions rows, {:.0} bytes per decision; {:.0} bytes per run as whole rows, \
         {:.2}x), {whole_rows} decisions of runs as whole rows ({:.0} bytes per run)",
        per_run(decisions + whole_rows),
        per_run(run_bytes + decision_bytes + whole_bytes),
        per_run(run_bytes),
        per_run(decision_bytes),
        decision_bytes as f64 / decisions.max(1) as f64,
        per_run(as_whole),
        (run_bytes + decision_bytes) as f64 / as_whole.max(1) as f64,
        per_run(whole_bytes),
    );
}

/// The example's vector step runs on the embedded SQLite backend (its embeddings are seeded in
/// SQLite's vector layout; the PostgreSQL here has no pgvector): on PostgreSQL the pipeline is the
/// other three nodes.
fn without_vector_step(dir: &std::path::Path) {
    std::fs::remove_dir_all(dir.join("migrations/0003_transaction_embeddings")).unwrap();
    let workflow = dir.join("workflows/finance_report.toml");
    let text = std::fs::read_to_string(&workflow).unwrap();
    let cut = text
        .find("# The guide's vector step")
        .expect("the example's vector step");
    std::fs::write(&workflow, &text[..cut]).unwrap();
}

/// The PostgreSQL pipeline through PgBouncer (transaction mode) against the same pipeline
/// straight to PostgreSQL, on one database, in alternating rounds.
async fn bouncer_vs_direct(args: &Args) {
    let (Some(mut direct), Ok(bouncer)) = (
        postgres_database().await,
        std::env::var("TRELLIS_TEST_PGBOUNCER_URL"),
    ) else {
        println!("pgbouncer: skipped (TRELLIS_TEST_PG_URL or TRELLIS_TEST_PGBOUNCER_URL not set)");
        return;
    };
    // PgBouncer's `*` entry reaches PostgreSQL 15's database of the same name.
    let mut bouncer = format!(
        "{}/trellis_http_bench",
        bouncer.rsplit_once('/').expect("a database URL").0
    );
    if let Some(params) = &args.pg_params {
        direct = format!("{direct}?{params}");
        bouncer = format!("{bouncer}?{params}");
    }
    let dirs = [
        (direct.as_str(), ""),
        (bouncer.as_str(), "pooler = \"transaction\"\n"),
    ]
    .map(|(url, pooler)| {
        let dir = example_dir();
        let config = std::fs::read_to_string(dir.path().join("trellis.toml")).unwrap();
        let config = config.replace(
            "[databases.main]\nurl = \"sqlite://data/trellis.db\"",
            &format!("[databases.main]\nurl = \"{url}\"\nmax_connections = 16\n{pooler}"),
        );
        std::fs::write(dir.path().join("trellis.toml"), config).unwrap();
        without_vector_step(dir.path());
        dir
    });
    let env = [("RUST_LOG", "warn")];
    // One at a time: the second finds the migrations applied.
    let direct_server = Server::start_with_env(dirs[0].path(), &[], &env);
    let bouncer_server = Server::start_with_env(dirs[1].path(), &[], &env);
    let urls = [&direct_server, &bouncer_server]
        .map(|s| format!("{}/v1/workflows/finance_report/run", s.base_url()));
    for url in &urls {
        let warm = load(url, true, 4, 1.0).await;
        assert_eq!(warm.errors, 0, "the workflow fails on {url}");
    }
    println!("\npostgres: through PgBouncer (transaction mode) vs direct, this build");
    alternate(args, [&urls[1], &urls[0]], ["bouncer", "direct"]).await;
}

/// Per concurrency, `args.rounds` rounds of `urls[0]` and `urls[1]` (which goes first
/// alternates): the median throughputs and p99s, and the median of the per-round ratios
/// `urls[0] / urls[1]`.
async fn alternate(args: &Args, urls: [&str; 2], names: [&str; 2]) {
    println!(
        "{:>11} | {:>10} {:>9} | {:>10} {:>9} | {:>14}",
        "concurrency",
        format!("{} r/s", names[0]),
        "p99 ms",
        format!("{} r/s", names[1]),
        "p99 ms",
        format!("{}/{}", names[0], names[1])
    );
    for &c in &args.concurrency {
        let (mut ratios, mut a_rps, mut b_rps, mut a_p99, mut b_p99) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut figures = [None, None];
            for i in order {
                figures[i] = Some(load(urls[i], true, c, args.seconds).await);
            }
            let [Some(a), Some(b)] = figures else {
                unreachable!()
            };
            assert_eq!(a.errors + b.errors, 0, "errors under load");
            ratios.push(a.per_second / b.per_second);
            a_rps.push(a.per_second);
            b_rps.push(b.per_second);
            a_p99.push(a.p99_ms);
            b_p99.push(b.p99_ms);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{:>11} | {:>10.0} {:>9.2} | {:>10.0} {:>9.2} | {:>13.3}x  (per round: {})",
            c,
            median(&mut a_rps),
            median(&mut a_p99),
            median(&mut b_rps),
            median(&mut b_p99),
            median(&mut ratios.clone()),
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

/// This build against `baseline` on the same example folder's copy: per concurrency,
/// `args.rounds` alternating rounds (which of the two goes first alternates too).
async fn compare(args: &Args, backend: &str, dir: &std::path::Path, baseline: &std::path::Path) {
    // The baseline gets its own copy of the folder (its own database file and audit trail);
    // settings it does not know yet are taken out.
    let base_dir = tempfile::tempdir().unwrap();
    copy(dir, base_dir.path());
    let config = std::fs::read_to_string(base_dir.path().join("trellis.toml")).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("public ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(base_dir.path().join("trellis.toml"), config).unwrap();
    let env = [("RUST_LOG", "warn")];
    let current = Server::start_with_env(dir, &[], &env);
    let base = Server::start_binary(baseline, base_dir.path(), &[], &env);
    let urls =
        [&current, &base].map(|s| format!("{}/v1/workflows/finance_report/run", s.base_url()));
    for url in &urls {
        let warm = load(url, true, 4, 1.0).await;
        assert_eq!(warm.errors, 0, "the workflow fails on {url}");
    }
    println!("\n{backend}: this build vs {}", baseline.display());
    alternate(args, [&urls[0], &urls[1]], ["this", "base"]).await;
}

fn copy(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "data") {
                continue;
            }
            std::fs::create_dir_all(&dest).unwrap();
            copy(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

// ---- --profile: instructions per request by part, under callgrind -------------------------------

/// The parts of a request, each a list of patterns on a function's name (a pattern ending in
/// `*` is a prefix, any other is a substring), tried in order: the first that matches names the
/// function's part. `???` is code callgrind has no name for: the plugins' compiled code.
const PARTS: &[(&str, &[&str])] = &[
    (
        "plugin (wasmtime, the plugin's code)",
        &["???*", "wasmtime", "trellis_host::plugins", "cranelift"],
    ),
    ("masking", &["trellis_host::policy::mask"]),
    ("audit", &["trellis_host::policy::audit"]),
    ("policy (Cedar)", &["cedar_policy", "trellis_host::policy"]),
    ("authentication", &["trellis_host::auth", "jsonwebtoken"]),
    (
        "SQL (pool, sqlx, the database's client)",
        &[
            "sqlx",
            "trellis_host::pool",
            "trellis_host::sql",
            "sqlite3*",
            "trellis_host::vector",
        ],
    ),
    (
        "HTTP (hyper, axum)",
        &["hyper", "axum", "tower", "http::", "httparse"],
    ),
    (
        "JSON: values, their maps, serialization",
        &[
            "serde",
            "indexmap",
            "itoa",
            "ryu",
            "zmij",
            "trellis_host::json",
        ],
    ),
    (
        "workflow runtime",
        &["trellis_host::workflow", "trellis_host::server"],
    ),
    ("async runtime (tokio)", &["tokio", "futures", "mio"]),
    (
        "allocation",
        &[
            "mi_*",
            "_mi_*",
            "mimalloc",
            "malloc*",
            "free*",
            "__rust_alloc",
            "__rust_dealloc",
        ],
    ),
    ("memcpy, memset", &["__mem*"]),
    ("tracing", &["tracing"]),
    ("hashing (SipHash, SHA-256)", &["hash", "sip::", "sha2"]),
];

fn part_of(function: &str) -> &'static str {
    for (part, patterns) in PARTS {
        let hit = patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => function.starts_with(prefix),
            None => function.contains(p),
        });
        if hit {
            return part;
        }
    }
    "other"
}

/// The instructions of a callgrind dump: in all, and by function (exclusive), from
/// `callgrind_annotate`.
fn annotate(file: &std::path::Path) -> (u64, Vec<(String, u64)>) {
    let out = std::process::Command::new("callgrind_annotate")
        .args(["--auto=no", "--threshold=100"])
        .arg(file)
        .output()
        .expect("callgrind_annotate (apt-get install valgrind)");
    assert!(out.status.success(), "callgrind_annotate failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let jit = JitNames::read(&file.with_extension("perfmap"));
    let (mut total, mut functions): (u64, Vec<(String, u64)>) = (0, Vec::new());
    for line in text.lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        // `(12.34%)  file:function [object]`, or `PROGRAM TOTALS`.
        let Some((_, name)) = rest.split_once(')') else {
            continue;
        };
        let name = name.trim();
        if name.starts_with("PROGRAM TOTALS") {
            total = count;
            continue;
        }
        let name = name.rsplit_once(" [").map_or(name, |(n, _)| n);
        // Drop the source file before the function's name (`/path/x.rs:tokio::…`).
        let name = if name.starts_with("???") {
            name
        } else {
            name.char_indices()
                .find(|&(i, c)| {
                    c == ':'
                        && name[i + 1..]
                            .chars()
                            .next()
                            .is_some_and(|n| n.is_alphabetic() || n == '_' || n == '<')
                })
                .map_or(name, |(i, _)| &name[i + 1..])
        };
        let name = match name.strip_prefix("???:0x") {
            Some(address) => jit.name(address).unwrap_or_else(|| name.to_owned()),
            None => name.to_owned(),
        };
        match functions.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += count,
            None => functions.push((name, count)),
        }
    }
    (total, functions)
}

/// The plugins' compiled functions, from the engine's perf map (`START SIZE NAME` per line,
/// hexadecimal): callgrind only has their addresses.
struct JitNames(Vec<(u64, u64, String)>);

impl JitNames {
    fn read(path: &std::path::Path) -> JitNames {
        let mut functions: Vec<(u64, u64, String)> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(parts.next()?, 16).ok()?;
                Some((start, size, parts.next()?.to_owned()))
            })
            .collect();
        // A function named in the module is listed twice at one address: by its name, and
        // cut short after `wasm[0]::function[N]::`. The first is kept.
        functions.sort_by_key(|f| (f.0, f.2.starts_with("wasm[")));
        functions.dedup_by_key(|f| f.0);
        JitNames(functions)
    }

    /// `??? NAME` for the function at `address` (hexadecimal), its Rust name demangled; `None`
    /// when the map does not hold it.
    fn name(&self, address: &str) -> Option<String> {
        let address = u64::from_str_radix(address, 16).ok()?;
        let at = self.0.partition_point(|f| f.0 <= address).checked_sub(1)?;
        let (start, size, name) = &self.0[at];
        if address >= start + size {
            return None;
        }
        // `wasm[0]::function[12]::MANGLED`: the guest's own name, demangled when it is Rust's.
        // A plugin built without its names (`scripts/build-plugins` strips them; build with
        // `CARGO_PROFILE_RELEASE_STRIP=false` to keep them) has only its function's index, which
        // another plugin's may share: the address tells them apart.
        let short = name.rsplit_once("]::").map_or(name.as_str(), |(_, n)| n);
        Some(
            if short.starts_with("function[") || short.starts_with("wasm[") {
                format!("??? {name} at {start:#x}")
            } else {
                format!("??? {:#}", rustc_demangle::demangle(short))
            },
        )
    }
}

/// Sends `n` requests one after another; each must succeed.
async fn sequential(client: &reqwest::Client, url: &str, post: bool, n: usize) {
    for _ in 0..n {
        let request = if post {
            client
                .post(url)
                .header("x-trellis-user", ANALYST)
                .body(r#"{"inputs": {"start_date": "2024-01-01"}}"#)
        } else {
            client.get(url)
        };
        let response = request.send().await.expect("a response");
        assert_eq!(response.status(), 200, "{url}");
        let _ = response.bytes().await;
    }
}

/// Asks the callgrind of process `pid` to `command` (`--zero`, `--dump`).
fn callgrind_control(pid: u32, command: &str) {
    let status = std::process::Command::new("callgrind_control")
        .arg(command)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control (apt-get install valgrind)");
    assert!(status.success(), "callgrind_control {command} {pid} failed");
}

/// What a server under callgrind counts while it serves one window: `window` runs against its
/// base URL with instrumentation on (after warm-up runs with it off), then the server stops and
/// callgrind writes its counts. A dump taken while the server runs would be wrong: callgrind's
/// call stack does not follow a plugin's fiber switching stacks, and a running dump charges the
/// frames still open with everything below them. The counts go to `out`; returns how long the
/// window ran.
async fn window<F, Fut>(dir: &std::path::Path, out: &std::path::Path, window: F) -> Duration
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let wrapper = dir.join("trellis-under-callgrind");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no \
             --callgrind-out-file={} {} \"$@\"\n",
            out.display(),
            trellis_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = Server::start_within(
        &wrapper,
        dir,
        &[],
        &[("RUST_LOG", "warn"), ("TRELLIS_VALGRIND", "1")],
        Duration::from_secs(600),
    );
    let client = reqwest::Client::new();
    let base = server.base_url();
    sequential(
        &client,
        &format!("{base}/v1/workflows/finance_report/run"),
        true,
        20,
    )
    .await;
    sequential(&client, &format!("{base}/health"), false, 20).await;
    callgrind_control(server.pid(), "--instr=on");
    let started = Instant::now();
    window(base).await;
    // The audit writer works in the background: let it write the last records first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    callgrind_control(server.pid(), "--instr=off");
    let elapsed = started.elapsed();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop the server");
    let pid = server.pid();
    server.wait(Duration::from_secs(300));
    // The engine's names for the plugins' compiled code (`TRELLIS_VALGRIND=1` writes them),
    // kept beside the dump for `annotate`.
    let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
    if std::fs::copy(&map, out.with_extension("perfmap")).is_ok() {
        let _ = std::fs::remove_file(&map);
    }
    elapsed
}

/// `--profile N` for one backend (see the module's docs).
async fn profile(backend: &str, dir: &std::path::Path, requests: usize) {
    // A plain start first: the migrations run and the plugin cache fills, so the server under
    // callgrind loads compiled plugins instead of compiling them at valgrind's pace.
    {
        let server = Server::start_with_env(dir, &[], &[("RUST_LOG", "warn")]);
        let url = format!("{}/v1/workflows/finance_report/run", server.base_url());
        let warm = load(&url, true, 1, 0.5).await;
        assert_eq!(warm.errors, 0, "the workflow fails: check the example");
    }
    // Kept for a closer look (`callgrind_annotate --inclusive=yes FILE`).
    let kept = std::env::temp_dir().join(format!("trellis-http-profile-{backend}"));
    std::fs::create_dir_all(&kept).unwrap();
    // What the server does with no request (the plugin engine's epoch ticker, timers, the
    // pools' upkeep) runs through the windows too: counted alone for 5 s, its rate is taken
    // out of each window's counts.
    let (idle_file, run_file, health_file) = (
        kept.join("idle.callgrind"),
        kept.join("run.callgrind"),
        kept.join("health.callgrind"),
    );
    let idle_window = window(dir, &idle_file, |_| {
        tokio::time::sleep(Duration::from_secs(5))
    })
    .await;
    let run_window = window(dir, &run_file, |base| async move {
        let url = format!("{base}/v1/workflows/finance_report/run");
        sequential(&reqwest::Client::new(), &url, true, requests).await;
    })
    .await;
    let health_window = window(dir, &health_file, |base| async move {
        let url = format!("{base}/health");
        sequential(&reqwest::Client::new(), &url, false, requests).await;
    })
    .await;
    let idle = annotate(&idle_file);
    let less_idle = |(total, functions): (u64, Vec<(String, u64)>), window: Duration| {
        let scale = window.as_secs_f64() / idle_window.as_secs_f64();
        let background = |count: u64| (count as f64 * scale) as i64;
        let functions: Vec<(String, i64)> = functions
            .into_iter()
            .map(|(name, count)| {
                let quiet = idle.1.iter().find(|(n, _)| *n == name).map_or(0, |f| f.1);
                (name, count as i64 - background(quiet))
            })
            .collect();
        (total as i64 - background(idle.0), functions)
    };
    let run = less_idle(annotate(&run_file), run_window);
    let health = less_idle(annotate(&health_file), health_window);
    println!(
        "\n{backend}: callgrind dumps in {} (idle {idle_window:.1?}, runs {run_window:.1?}, \
         /health {health_window:.1?})",
        kept.display()
    );

    let by_part = |functions: &[(String, i64)]| {
        let mut parts: Vec<(&'static str, i64)> = Vec::new();
        for (name, count) in functions {
            let part = part_of(name);
            match parts.iter_mut().find(|(p, _)| *p == part) {
                Some((_, total)) => *total += count,
                None => parts.push((part, *count)),
            }
        }
        parts
    };
    let (run_parts, health_parts) = (by_part(&run.1), by_part(&health.1));
    let per = |count: i64| count as f64 / requests as f64;
    println!(
        "\n{backend}: user-space instructions per request, {requests} requests one after \
         another, under callgrind"
    );
    println!("{:<40} {:>14} {:>10}", "part", "workflow run", "/health");
    let mut order: Vec<&str> = PARTS.iter().map(|(p, _)| *p).collect();
    order.push("other");
    for part in order {
        let get = |parts: &[(&str, i64)]| parts.iter().find(|(p, _)| *p == part).map_or(0, |p| p.1);
        println!(
            "{part:<40} {:>14.0} {:>10.0}",
            per(get(&run_parts)),
            per(get(&health_parts))
        );
    }
    println!(
        "{:<40} {:>14.0} {:>10.0}",
        "in all",
        per(run.0),
        per(health.0)
    );
    let mut top = run.1.clone();
    top.sort_by_key(|f| std::cmp::Reverse(f.1));
    println!("\nthe run's functions that take most (exclusive, per request):");
    for (name, count) in top.iter().take(25) {
        let name: String = name.chars().take(110).collect();
        println!("{:>10.0}  {name}  [{}]", per(*count), part_of(&name));
    }
}
