//! Issue 20 §5: PostgreSQL behind a real PgBouncer 1.18 in transaction mode (started by
//! `scripts/services` with 4 server connections per database), with `pooler = "transaction"`.
//!
//! Many more client connections than server sessions, each statement's parameters bound and its
//! answer its own; transactions held by a lease; the release's rollback; session statements
//! refused; a time limit stopping the statement on the server without touching anyone else's;
//! health checks; migrations, two runners at once; the shipped pipeline over HTTP; the vector
//! node's `SET LOCAL` settings; a plugin's database import. Before this (b0d9292) the
//! `pooler` key did not exist, and without it sqlx's named statements failed through PgBouncer
//! ("prepared statement … does not exist").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_host::{Fetch, Params, Pool, PoolConfig, PoolError, Pooler, parse_database_url};
use trellis_tests::{
    Server, TestDb, allow_rules, custom_dir, repo, run_trellis, run_workflow, unique,
};

/// A pool of `max` connections to `url`, marked as behind a transaction-mode pooler.
fn pooled(name: &str, url: &str, max: usize) -> Pool {
    let mut c = PoolConfig::new(name, parse_database_url(url).unwrap());
    c.min_connections = 1;
    c.max_connections = max;
    c.acquire_timeout = Duration::from_secs(10);
    c.pooler = Pooler::Transaction;
    Pool::new(c)
}

fn named(v: Value) -> Params {
    Params::Named(v.as_object().unwrap().clone())
}

/// PostgreSQL 15 reached directly (not through PgBouncer), to watch the server.
async fn direct() -> sqlx::PgPool {
    let url = TestDb::Postgres.url().unwrap();
    sqlx::PgPool::connect(&url).await.unwrap()
}

/// Runs `text` on `pool` (directly on the server).
async fn admin(pool: &sqlx::PgPool, text: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(text.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_four_server_sessions_and_each_gets_its_own_answer() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let server = direct().await;
    let table = unique("bouncer_rows");
    admin(
        &server,
        &format!("CREATE TABLE {table} (task int, i int, note text)"),
    )
    .await;

    // Three hosts' pools of 8: 24 client connections over PgBouncer's 4 server sessions.
    let pools: Vec<Pool> = (0..3)
        .map(|h| pooled(&format!("{}-{h}", unique("bouncer")), &url, 8))
        .collect();
    for pool in &pools {
        pool.initialize().await.unwrap();
    }
    let pools = Arc::new(pools);
    let mut tasks = Vec::new();
    for task in 0..48i64 {
        let (pools, table) = (pools.clone(), table.clone());
        tasks.push(tokio::spawn(async move {
            let pool = &pools[task as usize % 3];
            for i in 0..40i64 {
                // Two statements of different parameter types, interleaved across tasks: an
                // answer from another client's statement or session would not match.
                let out = pool
                    .execute(
                        "SELECT :n::int8 * 2 AS twice, :s::text || '!' AS said",
                        &named(json!({"n": task * 1000 + i, "s": format!("t{task}-{i}")})),
                        Fetch::One,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("task {task}, statement {i}: {e}"));
                assert_eq!(out.rows[0]["twice"], json!((task * 1000 + i) * 2));
                assert_eq!(out.rows[0]["said"], json!(format!("t{task}-{i}!")));
                let out = pool
                    .execute(
                        &format!("INSERT INTO {table} (task, i, note) VALUES (:task, :i, :note) RETURNING i"),
                        &named(json!({"task": task, "i": i, "note": "x".repeat(i as usize)})),
                        Fetch::All,
                    )
                    .await
                    .unwrap_or_else(|e| panic!("task {task}, insert {i}: {e}"));
                assert_eq!(out.rows[0]["i"], json!(i));
                let out = pool
                    .execute(
                        &format!("SELECT count(*) AS n FROM {table} WHERE task = :task"),
                        &named(json!({"task": task})),
                        Fetch::Many(1),
                    )
                    .await
                    .unwrap();
                assert_eq!(out.rows[0]["n"], json!(i + 1));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&server)
            .await
            .unwrap();
    assert_eq!(rows, 48 * 40);
    for pool in pools.iter() {
        let stats = pool.stats();
        assert_eq!(stats.queries.errors, 0, "{:?}", stats.queries);
        pool.close().await;
    }
    admin(&server, &format!("DROP TABLE {table}")).await;
}

#[tokio::test]
async fn a_lease_holds_its_transaction_and_the_release_rolls_it_back() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let server = direct().await;
    let table = unique("bouncer_tx");
    admin(&server, &format!("CREATE TABLE {table} (id int)")).await;
    let pool = pooled(&unique("bouncer-lease"), &url, 4);
    // Other clients keep the server sessions busy meanwhile.
    let noise = pooled(&unique("bouncer-noise"), &url, 6);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (noise, stop) = (noise.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                noise
                    .execute("SELECT :n::int AS n", &named(json!({"n": 1})), Fetch::One)
                    .await
                    .unwrap();
            }
        })
    };

    let lease = pool.acquire().await.unwrap();
    lease
        .execute("BEGIN", &Params::None, Fetch::All)
        .await
        .unwrap();
    lease
        .execute(
            &format!("INSERT INTO {table} VALUES (:id)"),
            &named(json!({"id": 7})),
            Fetch::All,
        )
        .await
        .unwrap();
    // In the transaction: the row is there, and `SET LOCAL` holds.
    lease
        .execute(
            "SET LOCAL statement_timeout = '4s'",
            &Params::None,
            Fetch::All,
        )
        .await
        .unwrap();
    for _ in 0..20 {
        let out = lease
            .execute(
                &format!("SELECT count(*) AS n, current_setting('statement_timeout') AS t FROM {table} WHERE id = :id"),
                &named(json!({"id": 7})),
                Fetch::One,
            )
            .await
            .unwrap();
        assert_eq!(out.rows[0]["n"], json!(1));
        assert_eq!(out.rows[0]["t"], json!("4s"));
    }
    // Released without a commit: rolled back.
    drop(lease);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&server)
            .await
            .unwrap();
    assert_eq!(rows, 0);
    // And committed when asked.
    let lease = pool.acquire().await.unwrap();
    lease
        .execute("BEGIN", &Params::None, Fetch::All)
        .await
        .unwrap();
    lease
        .execute(
            &format!("INSERT INTO {table} VALUES (:id)"),
            &named(json!({"id": 8})),
            Fetch::All,
        )
        .await
        .unwrap();
    lease
        .execute("COMMIT", &Params::None, Fetch::All)
        .await
        .unwrap();
    drop(lease);
    let out = pool
        .execute(
            &format!("SELECT id FROM {table}"),
            &Params::None,
            Fetch::All,
        )
        .await
        .unwrap();
    assert_eq!(
        out.rows,
        vec![json!({"id": 8}).as_object().unwrap().clone()]
    );
    // The setting ended with its transaction.
    let out = pool
        .execute(
            "SELECT current_setting('statement_timeout') AS t",
            &Params::None,
            Fetch::One,
        )
        .await
        .unwrap();
    assert_eq!(out.rows[0]["t"], json!("0"));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.await.unwrap();
    pool.close().await;
    noise.close().await;
    admin(&server, &format!("DROP TABLE {table}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_another_client_left_in_the_server_sessions_do_not_collide() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    // Another application behind the same PgBouncer, with sqlx's statement cache on, leaves
    // `sqlx_s_1`, `sqlx_s_2`, … in the server sessions (its own statements fail meanwhile).
    let careless = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&format!("{url}?sslmode=disable"))
        .await
        .unwrap();
    let leaks: Vec<_> = (0..64)
        .map(|i| {
            let careless = careless.clone();
            tokio::spawn(async move {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT $1::int + {i}")))
                    .bind(i)
                    .fetch_one(&careless)
                    .await;
            })
        })
        .collect();
    for l in leaks {
        l.await.unwrap();
    }
    careless.close().await;
    // Fresh connections of a marked pool name their statements from 1 again: no collision.
    for round in 0..3 {
        let pool = pooled(&unique("bouncer-after"), &url, 8);
        let runs: Vec<_> = (0..32i64)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.execute(
                        &format!("SELECT :n::int8 + {round} AS n"),
                        &named(json!({"n": i})),
                        Fetch::One,
                    )
                    .await
                    .map(|out| out.rows[0]["n"].clone())
                })
            })
            .collect();
        for (i, r) in runs.into_iter().enumerate() {
            let n = r
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(n, json!(i as i64 + round));
        }
        pool.close().await;
    }
}

#[tokio::test]
async fn statements_that_would_leave_session_state_are_refused() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let pool = pooled(&unique("bouncer-session"), &url, 2);
    for sql in [
        "SET search_path = elsewhere",
        "SET ROLE postgres",
        "RESET ALL",
        "LISTEN trellis_channel",
        "PREPARE q AS SELECT 1",
        "SELECT pg_advisory_lock(42)",
        "CREATE TEMP TABLE t (a int)",
        "SELECT set_config('search_path', 'elsewhere', false)",
    ] {
        let err = pool
            .execute(sql, &Params::None, Fetch::All)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("transaction-mode pooler"), "{sql}: {text}");
        assert_eq!(err.kind(), trellis_host::ErrorKind::Configuration, "{sql}");
    }
    // The transaction-scoped forms run.
    let out = pool
        .execute(
            "SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(42)) l",
            &Params::None,
            Fetch::One,
        )
        .await
        .unwrap();
    assert_eq!(out.rows[0]["locked"], json!(1));
    pool.close().await;
}

#[tokio::test]
async fn a_time_limit_stops_the_statement_on_the_server_and_nobody_else_s() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let server = direct().await;
    let slow = pooled(&unique("bouncer-slow"), &url, 2);
    let other = pooled(&unique("bouncer-other"), &url, 3);
    let marker = unique("sleeper");

    // Another client's statements run meanwhile, on the same server sessions.
    let others = {
        let other = other.clone();
        tokio::spawn(async move {
            let mut done = 0;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                other
                    .execute(
                        "SELECT pg_sleep(0.2), :n::int AS n",
                        &named(json!({"n": done})),
                        Fetch::One,
                    )
                    .await
                    .expect("another client's statement is never cancelled");
                done += 1;
            }
            done
        })
    };
    let stmt = trellis_host::prepare_statement(
        &format!("SELECT pg_sleep(30) AS {marker}"),
        &Params::None,
        trellis_host::DatabaseKind::Postgres,
    )
    .unwrap();
    let started = Instant::now();
    let err = slow
        .run(stmt, Fetch::All, Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PoolError::Query(trellis_host::QueryError::Timeout(_))),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The server stopped it (`statement_timeout`): nothing left sleeping.
    let mut still = 1;
    for _ in 0..40 {
        still = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
        )
        .bind(format!("%{marker}%"))
        .fetch_one(&server)
        .await
        .unwrap();
        if still == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(still, 0, "pg_sleep(30) still runs on the server");
    assert!(others.await.unwrap() >= 5);
    // The pool goes on.
    let out = slow
        .execute("SELECT :n::int AS n", &named(json!({"n": 5})), Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["n"], json!(5));
    slow.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_steps_never_leave_a_transaction_for_the_next_caller() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let pool = pooled(&unique("bouncer-cancel"), &url, 4);
    pool.initialize().await.unwrap();
    let check = "SELECT coalesce(current_setting('trellis.owner', true), '') AS owner";
    let leaks = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (pool, leaks, cancelled) = (pool.clone(), leaks.clone(), cancelled.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(worker);
            for _ in 0..300 {
                // Cancelled at a random point: in acquire, in BEGIN, inside the transaction.
                let budget = Duration::from_micros(rng.u64(0..4000));
                let step = async {
                    let lease = pool.acquire().await?;
                    let out = lease.execute(check, &Params::None, Fetch::One).await?;
                    if out.rows[0]["owner"] != json!("") {
                        leaks.fetch_add(1, Ordering::Relaxed);
                    }
                    lease.execute("BEGIN", &Params::None, Fetch::All).await?;
                    lease
                        .execute(
                            &format!("SET LOCAL trellis.owner = 'w{worker}'"),
                            &Params::None,
                            Fetch::All,
                        )
                        .await?;
                    lease
                        .execute(
                            "SELECT pg_sleep(0.001), :w::text AS w",
                            &named(json!({"w": worker.to_string()})),
                            Fetch::All,
                        )
                        .await?;
                    Ok::<_, PoolError>(())
                };
                if tokio::time::timeout(budget, step).await.is_err() {
                    cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(cancelled.load(Ordering::Relaxed) > 200);
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "a lease saw another's transaction"
    );
    assert_eq!(pool.stats().leases.active, 0);
    for _ in 0..8 {
        let lease = pool.acquire().await.unwrap();
        let out = lease
            .execute(check, &Params::None, Fetch::One)
            .await
            .unwrap();
        assert_eq!(out.rows[0]["owner"], json!(""));
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_sessions_fail_only_statements_in_flight() {
    let Some((name, url)) = fresh_database("bouncer_kill").await else {
        return;
    };
    let pool = pooled(&unique("bouncer-kill"), &url, 8);
    pool.initialize().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (failures, successes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = Vec::new();
    for i in 0..16i64 {
        let (pool, stop, failures, successes) = (
            pool.clone(),
            stop.clone(),
            failures.clone(),
            successes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match pool
                    .execute(
                        "SELECT pg_sleep(0.005), :i::int AS i",
                        &named(json!({"i": i})),
                        Fetch::One,
                    )
                    .await
                {
                    Ok(out) => {
                        assert_eq!(out.rows[0]["i"], json!(i));
                        successes.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), trellis_host::ErrorKind::Connection, "{e}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    assert!(
        trellis_tests::eventually(Duration::from_secs(5), || successes.load(Ordering::Relaxed)
            > 100)
        .await
    );
    // Every server session PgBouncer holds for this database.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(&name)
    .fetch_one(&direct().await)
    .await
    .unwrap();
    assert!((1..=4).contains(&killed), "{killed} server sessions");
    let before = successes.load(Ordering::Relaxed);
    assert!(
        trellis_tests::eventually(Duration::from_secs(5), || successes.load(Ordering::Relaxed)
            > before + 100)
        .await,
        "statements resumed"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("nothing hangs")
            .unwrap();
    }
    // At most the statements the killed sessions were running.
    let failed = failures.load(Ordering::Relaxed) as i64;
    assert!(
        failed <= killed,
        "{failed} failures for {killed} killed sessions"
    );
    pool.close().await;
    admin(
        &direct().await,
        &format!("DROP DATABASE {name} WITH (FORCE)"),
    )
    .await;
}

#[tokio::test]
async fn health_checks_pass_through_the_pooler() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let mut c = PoolConfig::new(unique("bouncer-health"), parse_database_url(&url).unwrap());
    c.min_connections = 2;
    c.max_connections = 2;
    c.health_check_interval = Duration::from_millis(50);
    c.pooler = Pooler::Transaction;
    let pool = Pool::new(c);
    pool.initialize().await.unwrap();
    assert!(
        trellis_tests::eventually(Duration::from_secs(5), || pool
            .stats()
            .health
            .iter()
            .all(|h| h.checks >= 3))
        .await
    );
    for h in pool.stats().health {
        assert_eq!(h.score, 100);
        assert_eq!(h.check_success_rate, 1.0);
    }
    pool.close().await;
}

/// A fresh database on PostgreSQL 15, reached through PgBouncer (its `*` entry): the URL, with
/// TLS to PgBouncer checked against the test CA.
async fn fresh_database(prefix: &str) -> Option<(String, String)> {
    let bouncer = TestDb::PgBouncer.url()?;
    let name = unique(prefix).replace('-', "_");
    admin(&direct().await, &format!("CREATE DATABASE {name}")).await;
    let tls = std::env::var("TRELLIS_TEST_TLS_DIR").expect("TRELLIS_TEST_TLS_DIR");
    let port = bouncer
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap()
        .to_owned();
    Some((
        name.clone(),
        format!(
            "postgres://postgres@localhost:{port}/{name}?sslmode=verify-full&sslrootcert={tls}/ca.crt"
        ),
    ))
}

/// The shipped example, served from PostgreSQL 15 through PgBouncer: its migrations except the
/// SQLite vector seed, and its workflow without the vector step (as `tests/benches/http.rs`).
fn example_through(url: &str) -> tempfile::TempDir {
    let dir = trellis_tests::example_dir();
    let config = std::fs::read_to_string(dir.path().join("trellis.toml")).unwrap();
    let config = config.replace(
        "[databases.main]\nurl = \"sqlite://data/trellis.db\"",
        &format!(
            "[databases.main]\nurl = \"{url}\"\npooler = \"transaction\"\nmax_connections = 8"
        ),
    );
    assert!(
        config.contains("pooler"),
        "the example's [databases.main] changed"
    );
    std::fs::write(dir.path().join("trellis.toml"), config).unwrap();
    std::fs::remove_dir_all(dir.path().join("migrations/0003_transaction_embeddings")).unwrap();
    let workflow = dir.path().join("workflows/finance_report.toml");
    let text = std::fs::read_to_string(&workflow).unwrap();
    let cut = text.find("# The guide's vector step").unwrap();
    std::fs::write(&workflow, &text[..cut]).unwrap();
    dir
}

#[tokio::test]
async fn migrations_and_the_shipped_pipeline_run_through_pgbouncer() {
    let Some((name, url)) = fresh_database("bouncer_pipeline").await else {
        return;
    };
    let dir = example_through(&url);
    // Two runners at once: each migration is applied once.
    let runners: Vec<_> = (0..2)
        .map(|_| {
            let path = dir.path().to_owned();
            std::thread::spawn(move || {
                run_trellis(&path, &["migrate", "apply"], Duration::from_secs(60))
            })
        })
        .collect();
    for r in runners {
        let (status, stdout, stderr) = r.join().unwrap();
        assert!(status.success(), "{stdout}\n{stderr}");
    }
    let server_db = sqlx::PgPool::connect(&on_server(&name)).await.unwrap();
    let history: Vec<(String, bool)> =
        sqlx::query_as("SELECT id, success FROM trellis_migrations ORDER BY id")
            .fetch_all(&server_db)
            .await
            .unwrap();
    assert_eq!(
        history,
        vec![
            ("0001_expenses".into(), true),
            ("0002_seed_expenses".into(), true)
        ]
    );
    let (status, stdout, stderr) =
        run_trellis(dir.path(), &["migrate", "status"], Duration::from_secs(60));
    assert!(status.success(), "{stdout}\n{stderr}");

    // The pipeline over HTTP, many runs at once.
    let server = Server::start(dir.path(), &[]);
    let analyst = json!({"user_id": "fin001", "tenant_id": "acme",
        "attributes": {"department": "finance.analysis", "clearance": "confidential"}});
    let runs: Vec<_> = (0..24)
        .map(|_| run_workflow(&server, "finance_report", &analyst, json!({"inputs": {}})))
        .collect();
    for (status, body) in futures_util::future::join_all(runs).await {
        assert_eq!(status, 200, "{body}");
        let totals = &body["results"]["financial_query"]["result"]["data"];
        assert_eq!(totals.as_array().unwrap().len(), 3, "{body}");
        let ada = body["results"]["employee_data"]["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .find(|e| e["name"] == "Ada Byron")
            .unwrap_or_else(|| panic!("{body}"));
        assert_eq!(ada["ssn"], "[REDACTED]");
    }
    drop(server);
    server_db.close().await;
    admin(
        &direct().await,
        &format!("DROP DATABASE {name} WITH (FORCE)"),
    )
    .await;
}

/// Database `name` on PostgreSQL 15 itself (not through PgBouncer).
fn on_server(name: &str) -> String {
    let url = TestDb::Postgres.url().unwrap();
    format!("{}/{name}", url.rsplit_once('/').unwrap().0)
}

#[tokio::test]
async fn the_vector_node_s_settings_hold_through_pgbouncer() {
    let Some(url) = TestDb::PgBouncerPgVector.url() else {
        return;
    };
    let table = unique("bouncer_vectors").replace('-', "_");
    let workflow = format!(
        "database = \"vec\"\n\
         [[nodes]]\nid = \"make\"\ntype = \"AsyncPostgreSQLVectorNode\"\n\
         config = {{ operation = \"create_table\", table_name = \"{table}\", dimension = 3 }}\n\
         [[nodes]]\nid = \"put\"\ntype = \"AsyncPostgreSQLVectorNode\"\n\
         config = {{ operation = \"insert\", table_name = \"{table}\", vectors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0]], metadata = [{{ n = 1 }}, {{ n = 2 }}, {{ n = 3 }}] }}\n\
         [[nodes]]\nid = \"index\"\ntype = \"AsyncPostgreSQLVectorNode\"\n\
         config = {{ operation = \"create_index\", table_name = \"{table}\", index_type = \"hnsw\", distance_metric = \"cosine\" }}\n\
         [[nodes]]\nid = \"find\"\ntype = \"AsyncPostgreSQLVectorNode\"\n\
         config = {{ operation = \"search\", table_name = \"{table}\", vector = [1.0, 0.0, 0.0], limit = 2, distance_metric = \"cosine\", ef_search = 40 }}\n\
         [[connections]]\nfrom = \"make\"\nto = \"put\"\n\
         [[connections]]\nfrom = \"put\"\nto = \"index\"\n\
         [[connections]]\nfrom = \"index\"\nto = \"find\"\n"
    );
    let rules = json!({"rules": allow_rules("w", &["make", "put", "index", "find"])}).to_string();
    let dir = custom_dir(
        &workflow,
        &rules,
        &format!("[databases.vec]\nurl = \"{url}\"\npooler = \"transaction\"\n"),
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let found = body["results"]["find"].to_string();
    assert!(
        found.contains("\"n\":1") && found.contains("\"n\":3"),
        "{body}"
    );
    assert!(!found.contains("\"n\":2"), "{body}");
    drop(server);
    let vec_direct = TestDb::PgVector.url().unwrap();
    let admin_pool = sqlx::PgPool::connect(&vec_direct).await.unwrap();
    admin(&admin_pool, &format!("DROP TABLE IF EXISTS {table}")).await;
}

#[tokio::test]
async fn a_plugin_reads_through_pgbouncer_under_its_policy() {
    let Some(url) = TestDb::PgBouncer.url() else {
        return;
    };
    let workflow = "[[nodes]]\nid = \"q\"\ntype = \"plugin:query\"\n[nodes.config]\nrecords = [{ id = 1 }]\n\
        database = \"main\"\nstatement = \"SELECT :n::int + 1 AS m\"\nparams = { n = 41 }\nrepeat = 5\n";
    let mut rules = allow_rules("w", &["q"]);
    rules.push(
        json!({"id": "query-reads-main", "resource_type": "database",
        "resource_id": "main", "permission": "read", "effect": "allow",
        "conditions": {"type": "attribute_expression", "value": {"attribute_path": "runtime.plugin",
            "operator": "equals", "value": "query"}}}),
    );
    let dir = custom_dir(
        workflow,
        &json!({ "rules": rules }).to_string(),
        &format!("[databases.main]\nurl = \"{url}\"\npooler = \"transaction\"\n"),
    );
    std::fs::copy(
        repo().join("plugins/testing/wasm/test_query.wasm"),
        dir.path().join("plugins/test_query.wasm"),
    )
    .expect("the test plugins are built (scripts/build-plugins)");
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});
    let runs: Vec<_> = (0..8)
        .map(|_| run_workflow(&server, "w", &user, json!({})))
        .collect();
    for (status, body) in futures_util::future::join_all(runs).await {
        assert_eq!(status, 200, "{body}");
        assert!(
            body.to_string().contains("\\\"m\\\":42") || body.to_string().contains("\"m\":42"),
            "{body}"
        );
    }
}

#[test]
fn the_pooler_key_is_checked_when_the_config_loads() {
    for (config, expected) in [
        (
            "[databases.d]\nurl = \"mysql://root@127.0.0.1/test\"\npooler = \"transaction\"\n",
            "is for PostgreSQL",
        ),
        (
            "[databases.d]\nurl = \"postgres://u@h/db\"\npooler = \"transaction\"\nsearch_path = \"s\"\n",
            "`search_path` is a session setting",
        ),
        (
            "[databases.d]\nurl = \"postgres://u@h/db\"\npooler = \"statement\"\n",
            "unknown variant `statement`",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("trellis.toml"), config).unwrap();
        let (status, stdout, stderr) = run_trellis(
            dir.path(),
            &["migrate", "status", "--db", "d"],
            Duration::from_secs(30),
        );
        assert!(!status.success(), "{stdout}");
        assert!(stderr.contains(expected), "{config}\n{stderr}");
    }
}
