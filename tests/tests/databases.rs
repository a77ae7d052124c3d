//! Each supported database, reached through sqlx and through the host's own `Database::open`:
//! PostgreSQL, PostgreSQL with pgvector, MariaDB and SQLite.

use sqlx::Row;
use trellis_host::config::{DatabaseConfig, DatabaseKind, DatabaseTarget, parse_database_url};
use trellis_host::database::{Database, DriverPool};
use trellis_tests::TestDb;

fn config(name: &str, url: &str) -> DatabaseConfig {
    DatabaseConfig {
        name: name.into(),
        target: parse_database_url(url).expect("test URL parses"),
    }
}

#[tokio::test]
async fn postgres_answers_through_the_host() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let db = Database::open(&config("pg", &url))
        .await
        .expect("open PostgreSQL");
    assert_eq!(db.kind(), DatabaseKind::Postgres);
    let DriverPool::Postgres(pool) = db.pool() else {
        panic!("not a PostgreSQL pool")
    };
    let row = sqlx::query("SELECT current_database() AS db, 40 + 2 AS answer")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("db"), "test");
    assert_eq!(row.get::<i32, _>("answer"), 42);
    db.close().await;
}

#[tokio::test]
async fn pgvector_extension_and_cosine_distance() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let db = Database::open(&config("vectors", &url))
        .await
        .expect("open pgvector");
    let DriverPool::Postgres(pool) = db.pool() else {
        panic!("not a PostgreSQL pool")
    };
    sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
        .execute(pool)
        .await
        .unwrap();
    let version: String =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert!(version.starts_with("0.8"), "pgvector {version}");
    // Orthogonal vectors have cosine distance 1; parallel ones 0.
    let row = sqlx::query(
        "SELECT '[1,0,0]'::vector <=> '[0,1,0]'::vector AS orthogonal, \
                '[1,2,3]'::vector <=> '[2,4,6]'::vector AS parallel",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!((row.get::<f64, _>("orthogonal") - 1.0).abs() < 1e-9);
    assert!(row.get::<f64, _>("parallel").abs() < 1e-6);
    db.close().await;
}

#[tokio::test]
async fn mariadb_answers_through_the_host() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    let db = Database::open(&config("maria", &url))
        .await
        .expect("open MariaDB");
    assert_eq!(db.kind(), DatabaseKind::Mysql);
    let DriverPool::Mysql(pool) = db.pool() else {
        panic!("not a MySQL pool")
    };
    let row = sqlx::query("SELECT DATABASE() AS db, VERSION() AS version")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("db"), "test");
    assert!(row.get::<String, _>("version").contains("MariaDB"));
    db.close().await;
}

#[tokio::test]
async fn sqlite_file_and_directory_are_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/app.db");
    let db = Database::open(&DatabaseConfig {
        name: "main".into(),
        target: DatabaseTarget::Sqlite {
            path: Some(path.clone()),
        },
    })
    .await
    .expect("open SQLite");
    assert!(path.is_file(), "{} was not created", path.display());
    let DriverPool::Sqlite(pool) = db.pool() else {
        panic!("not a SQLite pool")
    };
    sqlx::query("CREATE TABLE t (x INTEGER)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1), (2)")
        .execute(pool)
        .await
        .unwrap();
    let sum: i64 = sqlx::query_scalar("SELECT SUM(x) FROM t")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(sum, 3);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    db.close().await;
}

#[tokio::test]
async fn unreachable_server_error_names_target_without_password() {
    // Nothing listens on port 1.
    let err = Database::open(&config("down", "postgres://app:hunter2@127.0.0.1:1/sales"))
        .await
        .expect_err("port 1 is closed");
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("`down`"), "{shown}");
    assert!(
        shown.contains("postgresql://app@127.0.0.1:1/sales"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
}
