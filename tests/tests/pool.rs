//! WorkflowConnectionPool guarantees against the real servers: bounded acquire, bounded size,
//! rollback on release, lease reclaim, cancellation safety, health checks, recycling, actor
//! restart, pre-warming, and recovery after every backend is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_host::PoolOperations;
use trellis_host::{DatabaseTarget, parse_database_url};
use trellis_host::{Fetch, Output, Params};
use trellis_host::{Pool, PoolConfig, PoolError, QueryError};
use trellis_tests::{TestDb, eventually, unique};

fn target(url: &str) -> DatabaseTarget {
    parse_database_url(url).unwrap()
}

fn config(name: &str, url: &str) -> PoolConfig {
    let mut c = PoolConfig::new(name, target(url));
    c.min_connections = 1;
    c.max_connections = 4;
    c.acquire_timeout = Duration::from_secs(5);
    c
}

async fn sql(pool: &Pool, query: &str) -> Vec<trellis_host::Row> {
    let lease = pool.acquire().await.unwrap();
    lease
        .execute(query, &Params::None, Fetch::All)
        .await
        .unwrap()
        .rows
}

/// Asserts that the statement `run` stands for failed for overrunning its time limit.
async fn assert_overran(run: impl std::future::Future<Output = Result<Output, PoolError>>) {
    let err = run.await.unwrap_err();
    assert!(
        matches!(err, PoolError::Query(QueryError::Timeout(_))),
        "{err}"
    );
    assert!(
        err.to_string().contains("overran the command timeout"),
        "{err}"
    );
}

/// Runs `query` through the pool's queue with its own time limit instead of `command_timeout`.
async fn sql_within(pool: &Pool, query: &str, limit: Duration) -> Output {
    let kind = pool.config().target.kind();
    let stmt = trellis_host::prepare_statement(query, &Params::None, kind).unwrap();
    pool.run(stmt, Fetch::All, Some(limit)).await.unwrap()
}

/// The number of server connections of pool `name`, seen from PostgreSQL.
async fn pg_backends(monitor: &Pool, name: &str) -> i64 {
    let lease = monitor.acquire().await.unwrap();
    let out = lease
        .execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = :app",
            &Params::Named(
                json!({"app": format!("trellis/{name}")})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            Fetch::One,
        )
        .await
        .unwrap();
    out.rows[0]["n"].as_i64().unwrap()
}

#[tokio::test]
async fn acquire_times_out_with_pool_exhausted() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("exhaust");
    let mut c = config(&name, &url);
    c.max_connections = 2;
    c.acquire_timeout = Duration::from_millis(300);
    let pool = Pool::new(c);
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    let started = Instant::now();
    let err = pool.acquire().await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "waited past the timeout: {waited:?}"
    );
    let PoolError::Exhausted {
        pool: p,
        size,
        waited: reported,
    } = &err
    else {
        panic!("expected PoolExhausted, got {err}");
    };
    assert_eq!((p.as_str(), *size), (name.as_str(), 2));
    assert!(*reported >= Duration::from_millis(300));
    let message = err.to_string();
    assert!(
        message.contains(&format!("pool `{name}` exhausted: all 2 connections")),
        "{message}"
    );
    assert_eq!(err.kind(), trellis_host::ErrorKind::PoolExhausted);
    // A released lease serves the next caller at once.
    drop(a);
    let c = tokio::time::timeout(Duration::from_millis(200), pool.acquire()).await;
    assert!(c.is_ok_and(|r| r.is_ok()));
    drop(b);
    assert_eq!(pool.stats().acquisition.timeouts, 1);
    pool.close().await;
}

#[tokio::test]
async fn fifty_acquirers_on_five_connections_never_exceed_five() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("fifty");
    let mut c = config(&name, &url);
    c.min_connections = 0;
    c.max_connections = 5;
    c.acquire_timeout = Duration::from_millis(250);
    let pool = Pool::new(c);
    let monitor = Pool::new(config(&unique("monitor"), &url));
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (monitor, done, max_seen, name) = (
            monitor.clone(),
            done.clone(),
            max_seen.clone(),
            name.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let n = pg_backends(&monitor, &name).await as usize;
                max_seen.fetch_max(n, Ordering::Relaxed);
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..50 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            match pool.acquire().await {
                Ok(lease) => {
                    lease
                        .execute(
                            "SELECT pg_sleep(0.05), :i::int AS i",
                            &Params::Named(json!({"i": i}).as_object().unwrap().clone()),
                            Fetch::One,
                        )
                        .await
                        .unwrap();
                    (true, started.elapsed())
                }
                Err(PoolError::Exhausted { .. }) => (false, started.elapsed()),
                Err(other) => panic!("unexpected error: {other}"),
            }
        }));
    }
    let mut served = 0;
    let mut exhausted = 0;
    for t in tasks {
        let (ok, waited) = t.await.unwrap();
        if ok {
            served += 1;
        } else {
            exhausted += 1;
            assert!(
                waited < Duration::from_millis(1500),
                "acquire waited {waited:?}"
            );
        }
    }
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert_eq!(served + exhausted, 50);
    assert!(served >= 5, "served {served}");
    assert!(
        exhausted > 0,
        "a 250 ms timeout with 50 × 50 ms on 5 connections must exhaust"
    );
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max <= 5, "saw {max} server connections");
    assert!(pool.stats().connections.created <= 5);
    pool.close().await;
    monitor.close().await;
}

/// A lease that begins a transaction and is dropped must not hand it to the next lease.
async fn rollback_on_release(url: &str, create: &str, begin: &str) {
    let table = unique("rb");
    let mut c = config(&unique("rollback"), url);
    c.min_connections = 1;
    c.max_connections = 1; // the next lease gets the same connection
    let pool = Pool::new(c);
    sql(&pool, &create.replace("{t}", &table)).await;
    let first_connection;
    {
        let lease = pool.acquire().await.unwrap();
        first_connection = lease.connection();
        lease
            .execute(begin, &Params::None, Fetch::All)
            .await
            .unwrap();
        lease
            .execute(
                &format!("INSERT INTO {table} (x) VALUES (1)"),
                &Params::None,
                Fetch::All,
            )
            .await
            .unwrap();
    }
    let lease = pool.acquire().await.unwrap();
    assert_eq!(
        lease.connection(),
        first_connection,
        "same connection reused"
    );
    // Without the rollback this insert would join the open transaction and be lost with it.
    lease
        .execute(
            &format!("INSERT INTO {table} (x) VALUES (2)"),
            &Params::None,
            Fetch::All,
        )
        .await
        .unwrap();
    drop(lease);
    let rows = sql(&pool, &format!("SELECT x FROM {table} ORDER BY x")).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["x"], json!(2));
    sql(&pool, &format!("DROP TABLE {table}")).await;
    pool.close().await;
}

#[tokio::test]
async fn released_transaction_is_rolled_back_on_postgres() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    rollback_on_release(&url, "CREATE TABLE {t} (x INT)", "BEGIN").await;
}

#[tokio::test]
async fn released_transaction_is_rolled_back_on_mariadb() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    rollback_on_release(
        &url,
        "CREATE TABLE {t} (x INT) ENGINE=InnoDB",
        "START TRANSACTION",
    )
    .await;
    // `SET autocommit = 0` leaves an implicit transaction open too.
    rollback_on_release(
        &url,
        "CREATE TABLE {t} (x INT) ENGINE=InnoDB",
        "SET autocommit = 0",
    )
    .await;
}

#[tokio::test]
async fn released_transaction_is_rolled_back_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rb.db").display());
    rollback_on_release(&url, "CREATE TABLE {t} (x INTEGER)", "BEGIN").await;
}

#[tokio::test]
async fn unreleased_lease_is_reclaimed_and_its_id_refused() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("reclaim");
    let table = unique("reclaimed");
    let mut c = config(&name, &url);
    c.max_connections = 1;
    c.lease_timeout = Duration::from_millis(200);
    let ops = PoolOperations::new(Pool::new(c));
    ops.execute(&json!({"operation": "initialize"}))
        .await
        .unwrap();
    let acquired = ops.execute(&json!({"operation": "acquire"})).await.unwrap();
    let id = acquired["connection_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with(&format!("{name}/")), "{id}");
    let run = |query: &str| json!({"operation": "execute", "connection_id": id, "query": query, "fetch_mode": "all"});
    ops.execute(&run(&format!("CREATE TABLE {table} (x INT)")))
        .await
        .unwrap();
    ops.execute(&run("BEGIN")).await.unwrap();
    ops.execute(&run(&format!("INSERT INTO {table} VALUES (1)")))
        .await
        .unwrap();
    // The supervisor takes it back after 200 ms.
    let pool = ops.pool().clone();
    assert!(
        eventually(Duration::from_secs(3), || pool.stats().leases.reclaimed
            == 1)
        .await
    );
    let err = ops.execute(&run("SELECT 1")).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("connection `{id}` was reclaimed")),
        "{err}"
    );
    let err = ops
        .execute(&json!({"operation": "release", "connection_id": id}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("was reclaimed"), "{err}");
    // The reclaimed connection was rolled back and serves the next caller.
    let next = ops.execute(&json!({"operation": "acquire"})).await.unwrap();
    let next_id = next["connection_id"].as_str().unwrap().to_owned();
    let count = ops
        .execute(&json!({"operation": "execute", "connection_id": next_id,
                         "query": format!("SELECT count(*) AS n FROM {table}"), "fetch_mode": "one"}))
        .await
        .unwrap();
    assert_eq!(count["data"]["n"], json!(0));
    ops.execute(&json!({"operation": "execute", "connection_id": next_id, "query": format!("DROP TABLE {table}")}))
        .await
        .unwrap();
    let released = ops
        .execute(&json!({"operation": "release", "connection_id": next_id}))
        .await
        .unwrap();
    assert_eq!(released["status"], json!("released"));
    let err = ops
        .execute(&json!({"operation": "execute", "connection_id": next_id, "query": "SELECT 1"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("was already released"), "{err}");
    for bad in [
        format!("{name}/999999"),
        "other_pool/1".into(),
        "garbage".into(),
    ] {
        let err = ops
            .execute(&json!({"operation": "execute", "connection_id": bad, "query": "SELECT 1"}))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("unknown connection `{bad}`")),
            "{err}"
        );
    }
    ops.pool().close().await;
}

/// `owner` is empty unless a transaction that set `trellis.owner` is still open.
const CHECK_CLEAN: &str = "SELECT coalesce(current_setting('trellis.owner', true), '') AS owner";

#[tokio::test]
async fn ten_thousand_cancellations_never_leak_a_transaction() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let mut c = config(&unique("cancel"), &url);
    c.min_connections = 2;
    c.max_connections = 4;
    let pool = Pool::new(c);
    pool.initialize().await.unwrap();
    let leaks = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (pool, leaks, cancelled) = (pool.clone(), leaks.clone(), cancelled.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(worker);
            for _ in 0..1250 {
                // Cancel at a random point: in acquire, in BEGIN, in a statement inside the
                // transaction, or not at all.
                let budget = Duration::from_micros(rng.u64(0..3000));
                let step = async {
                    let lease = pool.acquire().await?;
                    // A fresh lease must never be inside someone's transaction: the
                    // transaction-local marker below vanishes when a transaction ends.
                    let out = lease
                        .execute(CHECK_CLEAN, &Params::None, Fetch::One)
                        .await?;
                    if out.rows[0]["owner"] != json!("") {
                        leaks.fetch_add(1, Ordering::Relaxed);
                    }
                    lease.execute("BEGIN", &Params::None, Fetch::All).await?;
                    lease
                        .execute(
                            "SELECT set_config('trellis.owner', :me, true)",
                            &Params::Named(
                                json!({"me": format!("{worker}")})
                                    .as_object()
                                    .unwrap()
                                    .clone(),
                            ),
                            Fetch::All,
                        )
                        .await?;
                    lease
                        .execute("SELECT pg_sleep(0.001)", &Params::None, Fetch::All)
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
    let cancelled = cancelled.load(Ordering::Relaxed);
    assert!(
        cancelled > 1000,
        "only {cancelled} of 10,000 steps were cancelled"
    );
    assert_eq!(
        leaks.load(Ordering::Relaxed),
        0,
        "a lease saw another's transaction"
    );
    // Every connection still works and none is left in a transaction.
    for _ in 0..8 {
        let rows = sql(&pool, CHECK_CLEAN).await;
        assert_eq!(rows[0]["owner"], json!(""));
    }
    let stats = pool.stats();
    assert!(stats.connections.total <= 4);
    assert_eq!(stats.leases.active, 0);
    pool.close().await;
}

#[tokio::test]
async fn killing_every_backend_fails_only_queries_in_flight_and_recovers_within_a_second() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("kill");
    let mut c = config(&name, &url);
    c.min_connections = 8;
    c.max_connections = 8;
    c.acquire_timeout = Duration::from_secs(5);
    let pool = Pool::new(c);
    pool.initialize().await.unwrap();
    let admin = Pool::new(config(&unique("admin"), &url));
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let successes = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (pool, stop, failures, successes) = (
            pool.clone(),
            stop.clone(),
            failures.clone(),
            successes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let lease = pool.acquire().await.expect("acquire never fails here");
                match lease
                    .execute("SELECT pg_sleep(0.005)", &Params::None, Fetch::All)
                    .await
                {
                    Ok(_) => successes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert_eq!(e.kind(), trellis_host::ErrorKind::Connection, "{e}");
                        failures.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    assert!(
        eventually(Duration::from_secs(5), || successes.load(Ordering::Relaxed)
            > 100)
        .await
    );
    let killed = sql(
        &admin,
        &format!("SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE application_name = 'trellis/{name}'"),
    )
    .await;
    let killed = killed[0]["n"].as_i64().unwrap() as usize;
    let killed_at = Instant::now();
    assert_eq!(killed, 8);
    // Back to full capacity: 8 healthy connections, opened after the kill, within 1 s.
    let recovered = eventually(Duration::from_secs(1), || {
        let s = pool.stats();
        s.connections.created >= 16 && s.connections.total == 8
    })
    .await;
    let recovery = killed_at.elapsed();
    let before = successes.load(Ordering::Relaxed);
    assert!(
        eventually(Duration::from_secs(5), || successes.load(Ordering::Relaxed)
            > before + 100)
        .await,
        "queries resumed"
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("nothing hangs")
            .unwrap();
    }
    assert!(
        recovered,
        "not back to 8 connections within 1 s: {:?}",
        pool.stats().connections
    );
    // At most one failure per killed connection: the statement it was running (or about to run).
    let failed = failures.load(Ordering::Relaxed);
    assert!(
        failed <= killed,
        "{failed} failures for {killed} killed connections (recovery {recovery:?})"
    );
    assert_eq!(pg_backends(&admin, &name).await, 8);
    pool.close().await;
    admin.close().await;
}

#[tokio::test]
async fn health_checks_recycling_and_dead_idle_connections() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("health");
    let mut c = config(&name, &url);
    c.min_connections = 2;
    c.max_connections = 2;
    c.health_check_interval = Duration::from_millis(50);
    c.max_lifetime = Duration::from_millis(400);
    let pool = Pool::new(c);
    pool.initialize().await.unwrap();
    // Idle connections are checked and score up to 100, never below.
    assert!(
        eventually(Duration::from_secs(3), || pool
            .stats()
            .health
            .iter()
            .all(|h| h.checks >= 2))
        .await
    );
    for h in pool.stats().health {
        assert_eq!(h.score, 100);
        assert_eq!(h.check_success_rate, 1.0);
    }
    // Old connections are recycled and replaced without failing anyone.
    assert!(
        eventually(Duration::from_secs(5), || pool.stats().connections.recycled
            >= 2)
        .await
    );
    assert!(
        eventually(Duration::from_secs(2), || pool.stats().connections.total
            == 2)
        .await
    );
    let rows = sql(&pool, "SELECT 1 AS one").await;
    assert_eq!(rows[0]["one"], json!(1));
    // A connection killed while idle is found by the health check and replaced.
    let admin = Pool::new(config(&unique("admin"), &url));
    let created = pool.stats().connections.created;
    sql(&admin, &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'trellis/{name}'")).await;
    assert!(
        eventually(Duration::from_secs(3), || {
            let s = pool.stats();
            s.connections.created >= created + 2 && s.connections.total == 2
        })
        .await,
        "{:?}",
        pool.stats().connections
    );
    assert!(pool.stats().connections.closed["broken"] >= 2);
    let rows = sql(&pool, "SELECT 2 AS two").await;
    assert_eq!(rows[0]["two"], json!(2));
    pool.close().await;
    admin.close().await;
}

#[tokio::test]
async fn failed_queries_lower_health_and_unhealthy_connections_are_recycled() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let mut c = config(&unique("score"), &url);
    c.min_connections = 1;
    c.max_connections = 1;
    c.health_threshold = 75;
    let pool = Pool::new(c);
    let lease = pool.acquire().await.unwrap();
    let first = lease.connection();
    for _ in 0..3 {
        assert!(
            lease
                .execute(
                    "SELECT * FROM no_such_table_anywhere",
                    &Params::None,
                    Fetch::All
                )
                .await
                .is_err()
        );
    }
    assert_eq!(lease.health_score(), Some(70));
    drop(lease);
    // Below the threshold: closed on release and replaced.
    let lease = pool.acquire().await.unwrap();
    assert_ne!(lease.connection(), first);
    assert_eq!(lease.health_score(), Some(100));
    drop(lease);
    let stats = pool.stats();
    assert_eq!(stats.connections.closed["health"], 1);
    assert_eq!(stats.queries.errors, 3);
    assert!(stats.queries.error_rate > 0.0);
    pool.close().await;
}

#[tokio::test]
async fn pre_warm_opens_to_the_p90_of_past_peaks() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let mut c = config(&unique("warm"), &url);
    c.min_connections = 1;
    c.max_connections = 8;
    c.idle_timeout = Duration::from_millis(100);
    let pool = Pool::new(c);
    // A burst of 6 concurrent leases for workload `report`.
    let mut leases = Vec::new();
    for _ in 0..6 {
        leases.push(pool.acquire_for("report").await.unwrap());
    }
    drop(leases);
    // Idle connections above the minimum are closed again.
    assert!(
        eventually(Duration::from_secs(3), || pool.stats().connections.total
            == 1)
        .await
    );
    // The next burst of `report` pre-warms to 6 on its first acquire: 5 more are opened. They
    // are counted as opened, not as open at once: each above the minimum closes again after
    // 100 ms idle, and on a loaded machine the last may open after the first has closed.
    let created = pool.stats().connections.created;
    let first = pool.acquire_for("report").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || pool.stats().connections.created
            >= created + 5)
        .await,
        "{:?}",
        pool.stats().connections
    );
    assert_eq!(pool.pre_warm("report"), 6);
    assert_eq!(pool.pre_warm("unknown"), 0);
    drop(first);
    pool.close().await;
}

#[tokio::test]
async fn json_operations_follow_the_guide() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let table = unique("accounts");
    let pool_name = unique("main_pool");
    let t = target(&url);
    let DatabaseTarget::Server {
        host,
        port,
        database,
        user,
        ..
    } = &t
    else {
        panic!()
    };
    let mut c = PoolConfig::from_json(&json!({
        "name": pool_name, "database_type": "postgresql", "host": host, "port": port,
        "database": database, "user": user, "password": "unused-with-trust",
        "min_connections": 2, "max_connections": 4, "health_threshold": 70, "pre_warm": true
    }))
    .unwrap();
    c.acquire_timeout = Duration::from_secs(5);
    let ops = PoolOperations::new(Pool::new(c));
    let init = ops
        .execute(&json!({"operation": "initialize"}))
        .await
        .unwrap();
    assert_eq!(init["status"], json!("initialized"));
    assert!(init["connections"].as_u64().unwrap() >= 2);
    let conn = ops.execute(&json!({"operation": "acquire"})).await.unwrap();
    let id = conn["connection_id"].clone();
    let exec = |query: String, params: Value, fetch: &str| json!({"operation": "execute", "connection_id": id, "query": query, "params": params, "fetch_mode": fetch});
    ops.execute(&exec(
        format!("CREATE TABLE {table} (id INT PRIMARY KEY, balance NUMERIC(12,2))"),
        Value::Null,
        "all",
    ))
    .await
    .unwrap();
    ops.execute(&exec(
        format!("INSERT INTO {table} VALUES (1, 100.00), (2, 50.00)"),
        Value::Null,
        "all",
    ))
    .await
    .unwrap();
    // The guide's transfer: BEGIN, two positional updates, COMMIT.
    ops.execute(&exec("BEGIN".into(), Value::Null, "one"))
        .await
        .unwrap();
    ops.execute(&exec(
        format!("UPDATE {table} SET balance = balance - $1 WHERE id = $2"),
        json!([25.5, 1]),
        "one",
    ))
    .await
    .unwrap();
    ops.execute(&exec(
        format!("UPDATE {table} SET balance = balance + $1 WHERE id = $2"),
        json!([25.5, 2]),
        "one",
    ))
    .await
    .unwrap();
    ops.execute(&exec("COMMIT".into(), Value::Null, "one"))
        .await
        .unwrap();
    let result = ops
        .execute(&exec(
            format!("SELECT id, balance FROM {table} ORDER BY id"),
            Value::Null,
            "all",
        ))
        .await
        .unwrap();
    assert_eq!(
        result["data"],
        json!([{"id": 1, "balance": "74.50"}, {"id": 2, "balance": "75.50"}])
    );
    assert_eq!(result["row_count"], json!(2));
    let one = ops
        .execute(&exec(
            format!("SELECT balance FROM {table} WHERE id = :id"),
            json!({"id": 2}),
            "one",
        ))
        .await
        .unwrap();
    assert_eq!(one["data"], json!({"balance": "75.50"}));
    let none = ops
        .execute(&exec(
            format!("SELECT balance FROM {table} WHERE id = 99"),
            Value::Null,
            "one",
        ))
        .await
        .unwrap();
    assert_eq!(none["data"], Value::Null);
    ops.execute(&exec(format!("DROP TABLE {table}"), Value::Null, "all"))
        .await
        .unwrap();
    ops.execute(&json!({"operation": "release", "connection_id": id}))
        .await
        .unwrap();
    let stats = ops.execute(&json!({"operation": "stats"})).await.unwrap();
    let efficiency = stats["queries"]["executed"].as_f64().unwrap()
        / stats["connections"]["created"].as_f64().unwrap();
    assert!(efficiency > 1.0, "{stats}");
    for key in [
        "created", "recycled", "failed", "active", "idle", "total", "closed",
    ] {
        assert!(
            stats["connections"].get(key).is_some(),
            "missing connections.{key}: {stats}"
        );
    }
    for key in ["avg_ms", "p50_ms", "p99_ms", "waiters", "timeouts"] {
        assert!(
            stats["acquisition"].get(key).is_some(),
            "missing acquisition.{key}: {stats}"
        );
    }
    assert_eq!(stats["acquisition"]["count"], json!(1));
    assert!(
        stats["health"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["score"] == json!(100))
    );
    let err = ops
        .execute(&json!({"operation": "vacuum"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown operation `vacuum`"), "{err}");
    ops.pool().close().await;
}

/// Many connections opening a new SQLite file at once all connect, and the file ends in WAL
/// mode. (Asking for WAL at connect, as sqlx's `journal_mode` option does, takes a lock SQLite's
/// busy timeout does not wait for: with writers racing the switch, this failed with "database is
/// locked" in one run of three before the fix.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_opening_a_new_sqlite_file_at_once_all_connect() {
    for round in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("new.db").display());
        let start = Arc::new(tokio::sync::Barrier::new(12));
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let mut c = config(&unique("wal"), &url);
            c.min_connections = 0;
            c.max_connections = 1;
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                let pool = Pool::new(c);
                start.wait().await;
                // Each one writes at once too, as concurrent migration runners do.
                sql(&pool, "CREATE TABLE IF NOT EXISTS t (x INTEGER)").await;
                sql(&pool, "INSERT INTO t VALUES (1)").await;
                let mode = sql(&pool, "PRAGMA journal_mode").await;
                pool.close().await;
                mode
            }));
        }
        for task in tasks {
            let rows = task.await.unwrap();
            assert_eq!(rows[0]["journal_mode"], "wal", "round {round}");
        }
    }
}

// ---- Pool::execute: statements queued for the first free connection --------------------------

#[tokio::test]
async fn execute_queues_for_the_first_free_connection_and_never_exceeds_max() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("execq");
    let mut c = config(&name, &url);
    c.min_connections = 1;
    c.max_connections = 3;
    let pool = Pool::new(c);
    let monitor = Pool::new(config(&unique("execq-mon"), &url));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (monitor, done, name) = (monitor.clone(), done.clone(), name.clone());
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(pg_backends(&monitor, &name).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let params = Params::Named(json!({"i": i}).as_object().unwrap().clone());
            pool.execute("SELECT :i::int AS i, pg_sleep(0.02)", &params, Fetch::One)
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        assert_eq!(
            out.rows[0]["i"],
            json!(i),
            "each caller gets its own answer"
        );
    }
    done.store(true, Ordering::Relaxed);
    let most = watcher.await.unwrap();
    assert!((1..=3).contains(&most), "{most} server connections");
    let stats = pool.stats();
    assert_eq!(stats.acquisition.waiters, 0);
    assert_eq!(stats.connections.active, 0);
    assert!(stats.connections.total <= 3);
    assert_eq!(stats.queries.executed, 40);
    assert_eq!(stats.acquisition.count, 40, "{:?}", stats.acquisition);
    pool.close().await;
    monitor.close().await;
}

#[tokio::test]
async fn queued_statement_times_out_with_pool_exhausted_and_never_runs() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let table = unique("exto");
    let name = unique("exec-timeout");
    let mut c = config(&name, &url);
    c.max_connections = 1;
    c.acquire_timeout = Duration::from_millis(300);
    let pool = Pool::new(c);
    pool.execute(
        &format!("CREATE TABLE {table} (x INT)"),
        &Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    let insert = format!("INSERT INTO {table} (x) VALUES (1)");
    let held = pool.acquire().await.unwrap();
    let started = Instant::now();
    let err = pool
        .execute(&insert, &Params::None, Fetch::All)
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(2)).contains(&waited),
        "{waited:?}"
    );
    assert!(
        matches!(&err, PoolError::Exhausted { pool: p, size: 1, .. } if *p == name),
        "{err}"
    );
    assert_eq!(err.kind(), trellis_host::ErrorKind::PoolExhausted);
    // Statements whose callers went away while queued are withdrawn too.
    for _ in 0..10 {
        let _ = tokio::time::timeout(
            Duration::from_millis(5),
            pool.execute(&insert, &Params::None, Fetch::All),
        )
        .await;
    }
    assert_eq!(pool.stats().acquisition.waiters, 0);
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let count = format!("SELECT count(*) AS n FROM {table}");
    let out = pool
        .execute(&count, &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["n"], json!(0), "a withdrawn statement ran");
    pool.execute(&insert, &Params::None, Fetch::All)
        .await
        .unwrap();
    let out = pool
        .execute(&count, &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["n"], json!(1));
    assert_eq!(pool.stats().acquisition.timeouts, 1);
    pool.execute(&format!("DROP TABLE {table}"), &Params::None, Fetch::All)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn leases_are_served_while_statements_keep_the_pool_busy() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let mut c = config(&unique("exec-fair"), &url);
    c.min_connections = 2;
    c.max_connections = 2;
    let pool = Pool::new(c);
    pool.initialize().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..16 {
        let (pool, stop, ran) = (pool.clone(), stop.clone(), ran.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                pool.execute("SELECT pg_sleep(0.002)", &Params::None, Fetch::All)
                    .await
                    .unwrap();
                ran.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The queue is full once statements are running (however slow this machine is).
    let busy = eventually(Duration::from_secs(10), || {
        ran.load(Ordering::Relaxed) >= 20
    })
    .await;
    assert!(busy, "the flood did not start");
    let before = ran.load(Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let lease = pool.acquire().await.unwrap();
        slowest = slowest.max(started.elapsed());
        lease
            .execute("SELECT 1", &Params::None, Fetch::All)
            .await
            .unwrap();
    }
    let during = ran.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.await.unwrap();
    }
    // The statements kept the pool busy while the leases were served.
    assert!(
        during >= 5,
        "only {during} statements ran beside the leases"
    );
    // Served in turn with the queue: a lease waits about one statement, not the whole queue.
    assert!(
        slowest < Duration::from_millis(500),
        "a lease waited {slowest:?}"
    );
    pool.close().await;
}

/// A statement run through `Pool::execute` that opens a transaction (or turns autocommit off)
/// is rolled back before the connection serves the next one.
async fn execute_leaves_no_transaction_open(url: &str, create: &str, begin: &str) {
    let table = unique("exrb");
    let mut c = config(&unique("exec-rb"), url);
    c.max_connections = 1; // every statement runs on the same connection
    let pool = Pool::new(c);
    let run = |sql: String| {
        let pool = pool.clone();
        async move { pool.execute(&sql, &Params::None, Fetch::All).await.unwrap() }
    };
    run(create.replace("{t}", &table)).await;
    run(begin.to_owned()).await;
    run(format!("INSERT INTO {table} (x) VALUES (1)")).await;
    // Another connection sees the row only if it was committed: had the transaction stayed
    // open, the insert would sit in it.
    let other = Pool::new(config(&unique("exec-rb-other"), url));
    let rows = sql(&other, &format!("SELECT x FROM {table}")).await;
    assert_eq!(rows.len(), 1, "after `{begin}`: {rows:?}");
    other.close().await;
    run(format!("DROP TABLE {table}")).await;
    pool.close().await;
}

#[tokio::test]
async fn execute_rolls_back_what_a_statement_leaves_open_on_every_database() {
    if let Some(url) = TestDb::Postgres.url() {
        execute_leaves_no_transaction_open(&url, "CREATE TABLE {t} (x INT)", "BEGIN").await;
    }
    if let Some(url) = TestDb::Mysql.url() {
        let create = "CREATE TABLE {t} (x INT) ENGINE=InnoDB";
        execute_leaves_no_transaction_open(&url, create, "START TRANSACTION").await;
        execute_leaves_no_transaction_open(&url, create, "SET autocommit = 0").await;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("exrb.db").display());
    execute_leaves_no_transaction_open(&url, "CREATE TABLE {t} (x INTEGER)", "BEGIN").await;
}

#[tokio::test]
async fn queued_statements_fail_fast_when_the_database_cannot_be_reached() {
    // Nothing listens on port 1.
    let mut c = config(&unique("exec-down"), "postgres://postgres@127.0.0.1:1/test");
    c.min_connections = 0;
    c.acquire_timeout = Duration::from_secs(20);
    let pool = Pool::new(c);
    let started = Instant::now();
    let err = pool
        .execute("SELECT 1", &Params::None, Fetch::All)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), trellis_host::ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    pool.close().await;
}

#[tokio::test]
async fn closing_the_pool_answers_queued_statements() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("exec-close");
    let mut c = config(&name, &url);
    c.max_connections = 1;
    let pool = Pool::new(c);
    let held = pool.acquire().await.unwrap();
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("SELECT 1", &Params::None, Fetch::All).await })
    };
    assert!(
        eventually(Duration::from_secs(2), || pool.stats().acquisition.waiters
            == 1)
        .await
    );
    pool.close().await;
    let err = tokio::time::timeout(Duration::from_secs(2), queued)
        .await
        .expect("a queued statement was left waiting")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&err, PoolError::Closed { pool: p } if *p == name),
        "{err}"
    );
    let err = pool
        .execute("SELECT 1", &Params::None, Fetch::All)
        .await
        .unwrap_err();
    assert!(matches!(err, PoolError::Closed { .. }), "{err}");
    drop(held);
}

#[tokio::test]
async fn session_settings_and_roles_do_not_reach_the_next_caller_on_postgres() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let role = unique("role");
    let mut c = config(&unique("reset"), &url);
    c.max_connections = 1; // every caller gets the same connection
    let pool = Pool::new(c);
    sql(&pool, &format!("CREATE ROLE {role}")).await;
    let check = "SELECT current_user AS who, current_setting('search_path') AS path, \
                 current_setting('application_name') AS app";
    let before = sql(&pool, check).await;
    {
        let lease = pool.acquire().await.unwrap();
        for set in ["SET search_path = nowhere", &format!("SET ROLE {role}")] {
            lease.execute(set, &Params::None, Fetch::All).await.unwrap();
        }
        let inside = lease
            .execute(check, &Params::None, Fetch::All)
            .await
            .unwrap();
        assert_eq!(inside.rows[0]["who"], json!(role));
    }
    assert_eq!(sql(&pool, check).await, before, "after a lease");
    // The same through Pool::execute, one statement at a time.
    pool.execute("SET search_path = nowhere", &Params::None, Fetch::All)
        .await
        .unwrap();
    pool.execute(&format!("SET ROLE {role}"), &Params::None, Fetch::All)
        .await
        .unwrap();
    let after = pool
        .execute(check, &Params::None, Fetch::All)
        .await
        .unwrap();
    assert_eq!(after.rows, before, "after Pool::execute");
    sql(&pool, &format!("DROP ROLE {role}")).await;
    pool.close().await;
}

/// Session locks (`pg_advisory_lock`, `GET_LOCK`) taken on a lease are released with it: the
/// next caller of that pooled connection does not inherit them, and nobody else waits on them.
async fn session_locks_are_released_with_the_lease(url: &str, take: &str, free: &str) {
    let mut c = config(&unique("locks"), url);
    c.max_connections = 1;
    let pool = Pool::new(c);
    let other = Pool::new(config(&unique("locks-other"), url));
    let held = |pool: Pool| async move {
        let out = sql(&pool, free).await;
        out[0]["free"] != json!(true) && out[0]["free"] != json!(1)
    };
    {
        let lease = pool.acquire().await.unwrap();
        lease
            .execute(take, &Params::None, Fetch::All)
            .await
            .unwrap();
        assert!(held(other.clone()).await, "the lock was not taken");
    }
    // The reset runs on the connection's actor after the release: the pool's one connection
    // is handed out again only once it is done.
    drop(pool.acquire().await.unwrap());
    assert!(!held(other.clone()).await, "the lock outlived its lease");
    // Through Pool::execute the lock ends with the statement.
    pool.execute(take, &Params::None, Fetch::All).await.unwrap();
    drop(pool.acquire().await.unwrap());
    assert!(
        !held(other.clone()).await,
        "the lock outlived its statement"
    );
    other.close().await;
    pool.close().await;
}

#[tokio::test]
async fn session_locks_are_released_with_the_lease_on_postgres_and_mariadb() {
    let key = fastrand::i64(1..i64::MAX);
    if let Some(url) = TestDb::Postgres.url() {
        let take = format!("SELECT pg_advisory_lock({key})");
        // Free when another session can take it (and give it back at once).
        let free =
            format!("SELECT pg_try_advisory_lock({key}) AND pg_advisory_unlock({key}) AS free");
        session_locks_are_released_with_the_lease(&url, &take, &free).await;
    }
    if let Some(url) = TestDb::Mysql.url() {
        let take = format!("SELECT GET_LOCK('trellis-test-{key}', 1)");
        let free = format!("SELECT IS_FREE_LOCK('trellis-test-{key}') AS free");
        session_locks_are_released_with_the_lease(&url, &take, &free).await;
    }
}

/// Session state a caller leaves behind never reaches the next caller: the statements in
/// `leave` run on a lease (where `present` shows their state is there), then `check` gives the
/// same answer as before they ran, on the next lease and after each of them runs through
/// `Pool::execute`. `reused`: the connection is reset and kept (PostgreSQL), or closed because no
/// reset can undo what was left (MySQL/MariaDB user variables and settings, SQLite pragmas).
async fn session_state_stays_with_its_caller(
    url: &str,
    leave: &[String],
    present: &str,
    check: &str,
    reused: bool,
) {
    let mut c = config(&unique("state"), url);
    c.min_connections = 1;
    c.max_connections = 1; // every caller gets the same connection unless it is closed
    let pool = Pool::new(c);
    let before = sql(&pool, check).await;
    let first_connection;
    {
        let lease = pool.acquire().await.unwrap();
        first_connection = lease.connection();
        for statement in leave {
            lease
                .execute(statement, &Params::None, Fetch::All)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        let inside = lease
            .execute(present, &Params::None, Fetch::One)
            .await
            .unwrap();
        let shown = &inside.rows[0]["present"];
        assert!(shown == &json!(true) || shown == &json!(1), "{inside:?}");
    }
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.connection() == first_connection, reused);
    let after = lease
        .execute(check, &Params::None, Fetch::All)
        .await
        .unwrap();
    assert_eq!(after.rows, before, "after a lease");
    drop(lease);
    for statement in leave {
        pool.execute(statement, &Params::None, Fetch::All)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        let after = pool
            .execute(check, &Params::None, Fetch::All)
            .await
            .unwrap();
        assert_eq!(after.rows, before, "after Pool::execute({statement})");
    }
    let closed = pool.stats().connections.closed["session"];
    if reused {
        assert_eq!(closed, 0);
    } else {
        assert!(
            closed > leave.len() as u64,
            "closed for session state: {closed}"
        );
    }
    pool.close().await;
}

#[tokio::test]
async fn listen_prepare_cursors_temp_tables_and_authorization_are_reset_on_postgres() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let (table, role) = (unique("tmp"), unique("auth"));
    let admin = Pool::new(config(&unique("state-admin"), &url));
    sql(&admin, &format!("CREATE ROLE {role}")).await;
    let leave = [
        "LISTEN trellis_test".to_owned(),
        "PREPARE trellis_q AS SELECT 1".to_owned(),
        format!("CREATE TEMP TABLE {table} (a int)"),
        "DECLARE trellis_c CURSOR WITH HOLD FOR SELECT 1".to_owned(),
        format!("SET SESSION AUTHORIZATION {role}"),
    ];
    let present = format!(
        "SELECT (SELECT count(*) FROM pg_listening_channels()) = 1 \
         AND (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) = 1 \
         AND (SELECT count(*) FROM pg_cursors WHERE name <> '') = 1 \
         AND to_regclass('pg_temp.{table}') IS NOT NULL AND session_user = '{role}' AS present"
    );
    // Run through the driver's cached prepared statement each time: the reset must not drop it.
    let check = format!(
        "SELECT (SELECT count(*) FROM pg_listening_channels()) AS listening, \
         (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS prepared, \
         (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors, \
         to_regclass('pg_temp.{table}') IS NULL AS no_temp, session_user AS who"
    );
    session_state_stays_with_its_caller(&url, &leave, &present, &check, true).await;
    sql(&admin, &format!("DROP ROLE {role}")).await;
    admin.close().await;
}

#[tokio::test]
async fn user_variables_settings_and_temp_tables_close_the_connection_on_mariadb() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    let table = unique("tmp");
    let leave = [
        "SET @trellis_secret = 'x'".to_owned(),
        "SET SESSION sql_mode = 'ANSI_QUOTES'".to_owned(),
        format!("CREATE TEMPORARY TABLE {table} (a INT)"),
    ];
    let present = format!(
        "SELECT @trellis_secret = 'x' AND @@session.sql_mode = 'ANSI_QUOTES' \
         AND (SELECT count(*) FROM {table}) = 0 AS present"
    );
    // Creating the temporary table again fails while it is there.
    let check = format!(
        "CREATE TEMPORARY TABLE {table} (a INT); \
         SELECT @trellis_secret IS NULL AS no_secret, @@session.sql_mode AS mode"
    );
    session_state_stays_with_its_caller(&url, &leave, &present, &check, false).await;
}

#[tokio::test]
async fn table_locks_are_released_with_the_lease_on_mariadb() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    let table = unique("locked");
    let mut c = config(&unique("lock-tables"), &url);
    c.max_connections = 1;
    let pool = Pool::new(c);
    let other = Pool::new(config(&unique("lock-tables-other"), &url));
    sql(&pool, &format!("CREATE TABLE {table} (a INT)")).await;
    let first_connection = {
        let lease = pool.acquire().await.unwrap();
        lease
            .execute(
                &format!("LOCK TABLES {table} WRITE"),
                &Params::None,
                Fetch::All,
            )
            .await
            .unwrap();
        lease.connection()
    };
    let lease = pool.acquire().await.unwrap();
    assert_eq!(lease.connection(), first_connection, "reset, not closed");
    drop(lease);
    // Blocked for a second, then an error, if the lock outlived its lease.
    let read = format!("SET STATEMENT lock_wait_timeout = 1 FOR SELECT count(*) AS n FROM {table}");
    let out = other
        .execute(&read, &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["n"], json!(0));
    sql(&pool, &format!("DROP TABLE {table}")).await;
    other.close().await;
    pool.close().await;
}

#[tokio::test]
async fn pragmas_and_temp_tables_close_the_connection_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let table = unique("tmp");
    let leave = [
        "PRAGMA foreign_keys = OFF".to_owned(),
        format!("CREATE TEMP TABLE {table} (a)"),
    ];
    let present = format!(
        "SELECT (SELECT foreign_keys FROM pragma_foreign_keys()) = 0 \
         AND (SELECT count(*) FROM temp.sqlite_master WHERE name = '{table}') = 1 AS present"
    );
    let check = format!(
        "SELECT (SELECT foreign_keys FROM pragma_foreign_keys()) AS foreign_keys, \
         (SELECT count(*) FROM temp.sqlite_master WHERE name = '{table}') AS temp_tables"
    );
    session_state_stays_with_its_caller(&url, &leave, &present, &check, false).await;
}

#[tokio::test]
async fn an_in_memory_sqlite_database_is_never_closed_under_its_data() {
    // Its one connection is the database: failed statements (health), age (lifetime) and
    // session state must not recycle it.
    let mut c = PoolConfig::new(unique("memory"), target("sqlite::memory:"));
    c.max_lifetime = Duration::from_millis(1);
    c.health_check_interval = Duration::from_millis(50);
    let pool = Pool::new(c);
    sql(&pool, "CREATE TABLE kept (x INTEGER)").await;
    sql(&pool, "INSERT INTO kept VALUES (42)").await;
    for _ in 0..8 {
        // −10 each: well below the health threshold of 50.
        pool.execute("SELECT * FROM missing", &Params::None, Fetch::All)
            .await
            .unwrap_err();
    }
    {
        let lease = pool.acquire().await.unwrap();
        lease
            .execute("PRAGMA foreign_keys = OFF", &Params::None, Fetch::All)
            .await
            .unwrap();
    }
    pool.execute("PRAGMA user_version = 5", &Params::None, Fetch::All)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // past the lifetime, checks ran
    assert_eq!(
        sql(&pool, "SELECT x FROM kept").await,
        vec![json!({"x": 42}).as_object().unwrap().clone()]
    );
    let stats = pool.stats();
    assert!(
        stats.connections.closed.values().all(|n| *n == 0),
        "{:?}",
        stats.connections.closed
    );
    assert!(
        stats.health.iter().any(|c| c.score < 50),
        "{:?}",
        stats.health
    );
    assert_eq!(stats.connections.created, 1);
    pool.close().await;
}

#[tokio::test]
async fn an_in_memory_sqlite_database_outlives_a_statement_that_overran_its_time_limit() {
    let mut c = PoolConfig::new(unique("memory-timeout"), target("sqlite::memory:"));
    c.command_timeout = Some(Duration::from_millis(50));
    let pool = Pool::new(c);
    sql(&pool, "CREATE TABLE kept (x INTEGER)").await;
    sql(&pool, "INSERT INTO kept VALUES (42)").await;
    // A billion steps: minutes, unless it is stopped.
    let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) \
                SELECT count(*) AS n FROM c";
    let started = Instant::now();
    assert_overran(pool.execute(slow, &Params::None, Fetch::One)).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    // The statement was interrupted: the next one does not wait for it to run to its end.
    let out = sql_within(&pool, "SELECT x FROM kept", Duration::from_secs(10)).await;
    assert_eq!(
        out.rows,
        vec![json!({"x": 42}).as_object().unwrap().clone()]
    );
    assert_eq!(pool.stats().connections.closed["timeout"], 0);
    assert_eq!(pool.stats().connections.created, 1);
    pool.close().await;
}

/// After a statement on a lease overran its time limit, the lease runs nothing more: on an
/// in-memory SQLite database the connection stays open, but the interrupt rolled back the
/// lease's transaction, and later statements must not run outside it unnoticed.
#[tokio::test]
async fn a_lease_whose_statement_overran_its_time_limit_runs_nothing_more() {
    let mut c = PoolConfig::new(unique("lease-stopped"), target("sqlite::memory:"));
    c.command_timeout = Some(Duration::from_millis(200));
    let pool = Pool::new(c);
    sql(&pool, "CREATE TABLE t (x INTEGER)").await;
    let lease = pool.acquire().await.unwrap();
    let run = |q: &'static str| lease.execute(q, &Params::None, Fetch::All);
    run("BEGIN").await.unwrap();
    run("INSERT INTO t VALUES (1)").await.unwrap();
    let slow = "INSERT INTO t WITH RECURSIVE c(x) AS \
                (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT x FROM c";
    assert_overran(run(slow)).await;
    let err = run("INSERT INTO t VALUES (2)").await.unwrap_err();
    assert!(matches!(err, PoolError::Stopped { .. }), "{err}");
    assert!(err.to_string().contains("rolled back"), "{err}");
    let err = run("COMMIT").await.unwrap_err();
    assert!(matches!(err, PoolError::Stopped { .. }), "{err}");
    drop(lease);
    // Nothing of the lease's transaction is left, and the database is still there.
    let rows = sql(&pool, "SELECT count(*) AS n FROM t").await;
    assert_eq!(rows[0]["n"], json!(0));
    assert_eq!(pool.stats().connections.created, 1);
    pool.close().await;
}

/// A SQLite statement that overruns `command_timeout` is interrupted: it stops writing (its
/// write lock is free for the next writer at once) and what it wrote is rolled back.
#[tokio::test]
async fn a_statement_past_its_time_limit_is_interrupted_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("interrupt.db").display());
    let mut c = config(&unique("interrupt"), &url);
    c.command_timeout = Some(Duration::from_millis(200));
    let pool = Pool::new(c);
    sql(&pool, "CREATE TABLE t (x INTEGER)").await;
    // A billion rows: minutes of writing, holding the database's one write lock, unless stopped.
    let slow = "INSERT INTO t WITH RECURSIVE c(x) AS \
                (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT x FROM c";
    assert_overran(pool.execute(slow, &Params::None, Fetch::All)).await;
    // Another connection writes at once (it would wait out its busy timeout, then fail with
    // "database is locked", if the insert still ran).
    sql_within(&pool, "INSERT INTO t VALUES (7)", Duration::from_secs(4)).await;
    let rows = sql(&pool, "SELECT count(*) AS n, max(x) AS top FROM t").await;
    assert_eq!(rows[0]["n"], json!(1), "the interrupted insert left rows");
    assert_eq!(rows[0]["top"], json!(7));
    assert_eq!(pool.stats().connections.closed["timeout"], 1);
    pool.close().await;
}

/// Each statement is stopped at its own time limit, counted from its own start. A connection
/// keeps one timer across its statements (set for an earlier statement, it is moved on when it
/// fires); a statement stopped at an earlier one's limit would fail too soon, and one whose own
/// shorter limit did not move the timer would run too long.
#[tokio::test]
async fn each_statement_is_stopped_at_its_own_time_limit() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let mut c = config(&unique("own-limit"), &url);
    c.max_connections = 1;
    c.command_timeout = Some(Duration::from_millis(800));
    let pool = Pool::new(c);
    // The connection's timer is set for 800 ms from this statement's start.
    pool.execute("SELECT 1", &Params::None, Fetch::One)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    assert_overran(pool.execute("SELECT pg_sleep(5)", &Params::None, Fetch::All)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "stopped after {took:?}, the limit is 800 ms"
    );
    // A new connection (the stopped one closed); its timer is set for the pool's limit, and a
    // statement with a shorter limit of its own comes before it.
    pool.execute("SELECT 1", &Params::None, Fetch::One)
        .await
        .unwrap();
    let stmt = trellis_host::prepare_statement(
        "SELECT pg_sleep(5)",
        &Params::None,
        pool.config().target.kind(),
    )
    .unwrap();
    let started = Instant::now();
    assert_overran(pool.run(stmt, Fetch::All, Some(Duration::from_millis(100)))).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(700),
        "stopped after {took:?}, its own limit is 100 ms"
    );
    pool.execute("SELECT 1", &Params::None, Fetch::One)
        .await
        .unwrap();
    pool.close().await;
}

/// A statement that overruns `command_timeout` is stopped on the server too: the caller was told
/// it failed, so it must not go on to commit (`insert` sleeps two seconds, then inserts a row).
async fn a_statement_past_its_time_limit_is_stopped_on_the_server(
    url: &str,
    create: &str,
    insert: &str,
) {
    let table = unique("late");
    let mut c = config(&unique("cancel"), url);
    c.command_timeout = Some(Duration::from_millis(200));
    let pool = Pool::new(c);
    sql(&pool, &create.replace("{t}", &table)).await;
    let insert = insert.replace("{t}", &table);
    assert_overran(pool.execute(&insert, &Params::None, Fetch::All)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the sleep
    let rows = sql(&pool, &format!("SELECT count(*) AS n FROM {table}")).await;
    assert_eq!(rows[0]["n"], json!(0), "the timed-out insert committed");
    sql(&pool, &format!("DROP TABLE {table}")).await;
    pool.close().await;
}

#[tokio::test]
async fn a_statement_past_its_time_limit_is_stopped_on_postgres_and_mariadb() {
    if let Some(url) = TestDb::Postgres.url() {
        a_statement_past_its_time_limit_is_stopped_on_the_server(
            &url,
            "CREATE TABLE {t} (x INT)",
            "INSERT INTO {t} SELECT 1 FROM pg_sleep(2)",
        )
        .await;
    }
    if let Some(url) = TestDb::Mysql.url() {
        a_statement_past_its_time_limit_is_stopped_on_the_server(
            &url,
            "CREATE TABLE {t} (x INT) ENGINE=InnoDB",
            "INSERT INTO {t} SELECT SLEEP(2)",
        )
        .await;
    }
}

/// A lease dropped while its statement runs does not hand the connection to the next caller
/// behind that statement's back: the abandoned statement closes the connection, and the next
/// lease gets a sound one, not `ConnectionGone` on its first statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_dropped_mid_statement_does_not_pass_on_a_closing_connection() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let mut c = config(&unique("dropped-mid"), &url);
    c.max_connections = 1;
    let pool = Pool::new(c);
    for _ in 0..3 {
        let lease = pool.acquire().await.unwrap();
        let slow = lease.execute("SELECT pg_sleep(5)", &Params::None, Fetch::All);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), slow)
                .await
                .is_err()
        );
        drop(lease);
        let next = pool.acquire().await.unwrap();
        let out = next
            .execute("SELECT 1 AS n", &Params::None, Fetch::One)
            .await
            .unwrap();
        assert_eq!(out.rows[0]["n"], json!(1));
    }
    pool.close().await;
}
