//! Each supported database, reached through the host's pool: PostgreSQL, PostgreSQL with
//! pgvector, MariaDB and SQLite; and the errors when one cannot be reached.

use serde_json::json;
use trellis_host::open_database;
use trellis_host::{DatabaseConfig, DatabaseKind, DatabaseTarget, parse_database_url};
use trellis_host::{Fetch, Params};
use trellis_tests::TestDb;

fn config(name: &str, url: &str) -> DatabaseConfig {
    DatabaseConfig::new(name, parse_database_url(url).expect("test URL parses"))
}

#[tokio::test]
async fn postgres_answers_through_the_host() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = open_database(&config("pg", &url))
        .await
        .expect("open PostgreSQL");
    assert_eq!(pool.kind(), DatabaseKind::Postgres);
    let lease = pool.acquire().await.unwrap();
    let out = lease
        .execute(
            "SELECT current_database() AS db, 40 + 2 AS answer",
            &Params::None,
            Fetch::One,
        )
        .await
        .unwrap();
    assert_eq!(out.rows[0]["db"], json!("test"));
    assert_eq!(out.rows[0]["answer"], json!(42));
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn pgvector_extension_and_cosine_distance() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let pool = open_database(&config("vectors", &url))
        .await
        .expect("open pgvector");
    let lease = pool.acquire().await.unwrap();
    lease
        .execute(
            "CREATE EXTENSION IF NOT EXISTS vector",
            &Params::None,
            Fetch::All,
        )
        .await
        .unwrap();
    let out = lease
        .execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'",
            &Params::None,
            Fetch::One,
        )
        .await
        .unwrap();
    let version = out.rows[0]["extversion"].as_str().unwrap().to_owned();
    assert!(version.starts_with("0.8"), "pgvector {version}");
    // Orthogonal vectors have cosine distance 1, parallel ones 0; vectors bind from JSON arrays.
    let out = lease
        .execute(
            "SELECT '[1,0,0]'::vector <=> :b AS orthogonal, '[1,2,3]'::vector <=> '[2,4,6]'::vector AS parallel, :b AS b",
            &Params::Named(json!({"b": [0, 1, 0]}).as_object().unwrap().clone()),
            Fetch::One,
        )
        .await
        .unwrap();
    let row = &out.rows[0];
    assert!(
        (row["orthogonal"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{row:?}"
    );
    assert!(row["parallel"].as_f64().unwrap().abs() < 1e-6, "{row:?}");
    assert_eq!(row["b"], json!([0.0, 1.0, 0.0]));
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn mariadb_answers_through_the_host() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    let pool = open_database(&config("maria", &url))
        .await
        .expect("open MariaDB");
    assert_eq!(pool.kind(), DatabaseKind::Mysql);
    let lease = pool.acquire().await.unwrap();
    let out = lease
        .execute(
            "SELECT DATABASE() AS db, VERSION() AS version",
            &Params::None,
            Fetch::One,
        )
        .await
        .unwrap();
    assert_eq!(out.rows[0]["db"], json!("test"));
    assert!(out.rows[0]["version"].as_str().unwrap().contains("MariaDB"));
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn sqlite_file_and_directory_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/app.db");
    let pool = open_database(&DatabaseConfig::new(
        "main",
        DatabaseTarget::Sqlite {
            path: Some(path.clone()),
        },
    ))
    .await
    .expect("open SQLite");
    assert!(path.is_file(), "{} was not created", path.display());
    let lease = pool.acquire().await.unwrap();
    for sql in [
        "CREATE TABLE t (x INTEGER)",
        "INSERT INTO t VALUES (1), (2)",
    ] {
        lease.execute(sql, &Params::None, Fetch::All).await.unwrap();
    }
    let out = lease
        .execute("SELECT SUM(x) AS s FROM t", &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["s"], json!(3));
    let out = lease
        .execute("PRAGMA journal_mode", &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out.rows[0]["journal_mode"], json!("wal"));
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn unreachable_server_error_names_target_without_password() {
    // Nothing listens on port 1: the error comes at once, not after the acquire timeout.
    let started = std::time::Instant::now();
    let err = open_database(&config("down", "postgres://app:hunter2@127.0.0.1:1/sales"))
        .await
        .expect_err("port 1 is closed");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let mut shown = format!("{err} {err:?}");
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        shown.push_str(&format!(" / {s}"));
        source = s.source();
    }
    assert!(shown.contains("`down`"), "{shown}");
    assert!(
        shown.contains("postgresql://app@127.0.0.1:1/sales"),
        "{shown}"
    );
    assert!(shown.contains("Connection refused"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}
