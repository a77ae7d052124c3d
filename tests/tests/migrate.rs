//! Migrations against the real servers: the guide's `user_profiles` up and down; up → down → up
//! leaves an identical catalog; ten concurrent runners apply each migration exactly once; a
//! failing migration leaves the catalog as it was (PostgreSQL, SQLite); the MariaDB dirty marker
//! and `resolve`; cycles, missing dependencies and drift by name; the lock dies with its
//! connection; and `trellis migrate` through the real binary.
//!
//! Every test runs in its own database (PostgreSQL, MariaDB) or SQLite file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use trellis_host::{DatabaseKind, parse_database_url};
use trellis_host::{DbLock, LockError};
use trellis_host::{Fetch, Params};
use trellis_host::{
    MigrateError, MigrationRunner as Runner, MigrationSet, PlanError, RollbackTarget, StatusState,
};
use trellis_host::{Pool, PoolConfig};
use trellis_tests::{TestDb, run_trellis, unique};

/// A database of its own for one test.
struct Fresh {
    kind: DatabaseKind,
    url: String,
    name: String,
    admin: Option<Pool>,
    _dir: tempfile::TempDir,
}

fn pool_for(url: &str, max: usize) -> Pool {
    let mut c = PoolConfig::new(unique("migrate"), parse_database_url(url).unwrap());
    c.min_connections = 1;
    c.max_connections = max;
    c.acquire_timeout = Duration::from_secs(30);
    Pool::new(c)
}

async fn exec(pool: &Pool, sql: &str) -> Vec<trellis_host::Row> {
    let lease = pool.acquire().await.unwrap();
    lease
        .execute(sql, &Params::None, Fetch::All)
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"))
        .rows
}

impl Fresh {
    async fn new(kind: DatabaseKind) -> Option<Fresh> {
        let dir = tempfile::tempdir().unwrap();
        let name = unique("migrate");
        let (url, admin) = match kind {
            DatabaseKind::Sqlite => (
                format!("sqlite://{}", dir.path().join("test.db").display()),
                None,
            ),
            DatabaseKind::Postgres | DatabaseKind::Mysql => {
                let base = if kind == DatabaseKind::Postgres {
                    TestDb::Postgres.url()?
                } else {
                    TestDb::Mysql.url()?
                };
                let admin = pool_for(&base, 2);
                exec(&admin, &format!("CREATE DATABASE {name}")).await;
                let (server, _) = base.rsplit_once('/').unwrap();
                (format!("{server}/{name}"), Some(admin))
            }
        };
        Some(Fresh {
            kind,
            url,
            name,
            admin,
            _dir: dir,
        })
    }

    fn pool(&self) -> Pool {
        pool_for(&self.url, 4)
    }

    async fn drop_db(self) {
        if let Some(admin) = &self.admin {
            let sql = match self.kind {
                DatabaseKind::Postgres => {
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)
                }
                _ => format!("DROP DATABASE IF EXISTS {}", self.name),
            };
            exec(admin, &sql).await;
            admin.close().await;
        }
    }
}

/// Writes `dir/<id>/` with its manifest, up.sql and (when given) down.sql.
fn write(dir: &Path, id: &str, deps: &[&str], up: &str, down: Option<&str>, transaction: bool) {
    let m = dir.join(id);
    std::fs::create_dir_all(&m).unwrap();
    let deps = deps
        .iter()
        .map(|d| format!("\"{d}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        m.join("migration.toml"),
        format!("description = \"{id}\"\ndependencies = [{deps}]\ntransaction = {transaction}\n"),
    )
    .unwrap();
    std::fs::write(m.join("up.sql"), up).unwrap();
    let down_path = m.join("down.sql");
    match down {
        Some(sql) => std::fs::write(down_path, sql).unwrap(),
        None => {
            let _ = std::fs::remove_file(down_path);
        }
    }
}

fn runner(pool: &Pool, dir: &Path) -> Runner {
    Runner::new(pool.clone(), MigrationSet::from_dir(dir).unwrap()).by("tester")
}

/// The schema as text: tables, columns, defaults, indexes and constraints (not the data).
async fn catalog(pool: &Pool, kind: DatabaseKind) -> Vec<String> {
    let queries: &[&str] = match kind {
        DatabaseKind::Postgres => &[
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '') || ' ' || is_nullable AS x FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY 1",
            "SELECT indexname || ' ' || indexdef AS x FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1",
            "SELECT conname || ' ' || pg_get_constraintdef(oid) AS x FROM pg_constraint WHERE connamespace = current_schema()::regnamespace ORDER BY 1",
            "SELECT sequence_name AS x FROM information_schema.sequences WHERE sequence_schema = current_schema() ORDER BY 1",
        ],
        DatabaseKind::Mysql => &[
            "SELECT CONCAT(table_name, '.', column_name, ' ', column_type, ' ', COALESCE(column_default, ''), ' ', is_nullable, ' ', extra) AS x FROM information_schema.columns WHERE table_schema = DATABASE() ORDER BY 1",
            "SELECT CONCAT(table_name, ' ', index_name, ' ', column_name, ' ', seq_in_index, ' ', non_unique) AS x FROM information_schema.statistics WHERE table_schema = DATABASE() ORDER BY 1",
        ],
        DatabaseKind::Sqlite => &[
            "SELECT type || ' ' || name || ' ' || coalesce(sql, '') AS x FROM sqlite_master ORDER BY name",
        ],
    };
    let mut out = Vec::new();
    for q in queries {
        for row in exec(pool, q).await {
            out.push(row["x"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

fn has_table(catalog: &[String], table: &str) -> bool {
    catalog
        .iter()
        .any(|l| l.starts_with(&format!("{table}.")) || l.starts_with(&format!("table {table} ")))
}

/// The guide's migration, per dialect (the PostgreSQL form is the guide's own SQL).
fn user_profiles(kind: DatabaseKind) -> (&'static str, &'static str) {
    match kind {
        DatabaseKind::Postgres => (
            "CREATE TABLE user_profiles (
    id SERIAL PRIMARY KEY,
    user_id INTEGER UNIQUE NOT NULL,
    bio TEXT,
    avatar_url VARCHAR(500),
    preferences JSONB DEFAULT '{}',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX idx_profile_user ON user_profiles(user_id);
",
            "DROP TABLE IF EXISTS user_profiles CASCADE;\n",
        ),
        DatabaseKind::Mysql => (
            "CREATE TABLE user_profiles (
    id INT AUTO_INCREMENT PRIMARY KEY,
    user_id INTEGER UNIQUE NOT NULL,
    bio TEXT,
    avatar_url VARCHAR(500),
    preferences JSON DEFAULT '{}',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_profile_user ON user_profiles(user_id);
",
            "DROP TABLE IF EXISTS user_profiles CASCADE;\n",
        ),
        DatabaseKind::Sqlite => (
            "CREATE TABLE user_profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER UNIQUE NOT NULL,
    bio TEXT,
    avatar_url VARCHAR(500),
    preferences TEXT DEFAULT '{}',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX idx_profile_user ON user_profiles(user_id);
",
            "DROP TABLE IF EXISTS user_profiles;\n",
        ),
    }
}

/// The guide's `user_profiles` plus a dependent `user_settings`: up, rollback to the first
/// (only the dependent goes), rollback of everything, and up again with an identical catalog.
async fn up_down_up(kind: DatabaseKind) {
    let Some(db) = Fresh::new(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (up, down) = user_profiles(kind);
    write(
        dir.path(),
        "001_create_user_profile",
        &[],
        up,
        Some(down),
        true,
    );
    write(
        dir.path(),
        "002_add_user_settings",
        &["001_create_user_profile"],
        "CREATE TABLE user_settings (user_id INTEGER NOT NULL, name VARCHAR(100) NOT NULL, value TEXT);\nCREATE UNIQUE INDEX idx_settings ON user_settings(user_id, name);",
        Some("DROP TABLE user_settings;"),
        true,
    );
    let pool = db.pool();
    let runner = runner(&pool, dir.path());
    runner.init().await.unwrap();
    runner.init().await.unwrap(); // idempotent
    let before = catalog(&pool, kind).await;
    assert!(has_table(&before, "trellis_migrations"), "{before:#?}");

    let applied = runner.apply(None, &mut ()).await.unwrap();
    let ids: Vec<&str> = applied.ran.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["001_create_user_profile", "002_add_user_settings"]);
    exec(
        &pool,
        "INSERT INTO user_profiles (user_id, bio) VALUES (42, 'hello')",
    )
    .await;
    let first = catalog(&pool, kind).await;
    assert!(has_table(&first, "user_profiles") && has_table(&first, "user_settings"));
    let status = runner.status().await.unwrap();
    assert!(status.initialized);
    assert!(
        status
            .entries
            .iter()
            .all(|e| e.state == StatusState::Applied),
        "{status:#?}"
    );
    let row = status.entries[0].history.as_ref().unwrap();
    assert_eq!(row.applied_by.as_deref(), Some("tester"));
    assert_eq!(row.checksum.len(), 64);
    assert!(row.applied_at.is_some() && row.execution_ms.is_some());

    // Nothing left to do: a second apply is a no-op.
    assert_eq!(runner.apply(None, &mut ()).await.unwrap().ran.len(), 0);

    // Rolling back to 001 removes only what depends on it.
    let back = runner
        .rollback(
            RollbackTarget::To("001_create_user_profile".into()),
            &mut (),
        )
        .await
        .unwrap();
    assert_eq!(back.ran.len(), 1);
    assert_eq!(back.ran[0].0, "002_add_user_settings");
    let mid = catalog(&pool, kind).await;
    assert!(has_table(&mid, "user_profiles") && !has_table(&mid, "user_settings"));

    let back = runner.rollback(RollbackTarget::All, &mut ()).await.unwrap();
    assert_eq!(back.ran[0].0, "001_create_user_profile");
    let after_down = catalog(&pool, kind).await;
    assert!(!has_table(&after_down, "user_profiles"), "{after_down:#?}");
    let status = runner.status().await.unwrap();
    let row = status.entries[0].history.as_ref().unwrap();
    assert_eq!(status.entries[0].state, StatusState::Pending);
    assert!(row.rolled_back_at.is_some());
    assert_eq!(row.rolled_back_by.as_deref(), Some("tester"));

    // Rolled-back migrations apply again, to the same schema.
    let again = runner.apply(None, &mut ()).await.unwrap();
    assert_eq!(again.ran.len(), 2);
    let second = catalog(&pool, kind).await;
    assert_eq!(first, second, "up → down → up changed the schema");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn user_profiles_up_down_up_postgres() {
    up_down_up(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn user_profiles_up_down_up_mariadb() {
    up_down_up(DatabaseKind::Mysql).await;
}

#[tokio::test]
async fn user_profiles_up_down_up_sqlite() {
    up_down_up(DatabaseKind::Sqlite).await;
}

/// Ten runners, each with its own pool, start at once; every migration runs exactly once (each
/// one inserts its id into `migrate_runs`, whose primary key would also reject a second run).
async fn concurrent_runners(kind: DatabaseKind) {
    let Some(db) = Fresh::new(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_runs",
        &[],
        "CREATE TABLE migrate_runs (id VARCHAR(50) NOT NULL, n INTEGER NOT NULL);\nINSERT INTO migrate_runs (id, n) VALUES ('001_runs', 1);",
        None,
        true,
    );
    for i in 2..=6 {
        let id = format!("00{i}_step");
        let prev = if i == 2 {
            "001_runs".to_owned()
        } else {
            format!("00{}_step", i - 1)
        };
        write(
            dir.path(),
            &id,
            &[&prev],
            &format!(
                "CREATE TABLE migrate_t{i} (x INTEGER);\nINSERT INTO migrate_runs (id, n) VALUES ('{id}', 1);"
            ),
            None,
            true,
        );
    }
    let set = MigrationSet::from_dir(dir.path()).unwrap();
    let mut tasks = Vec::new();
    let start = Arc::new(tokio::sync::Barrier::new(10));
    for _ in 0..10 {
        let pool = pool_for(&db.url, 2);
        let set = set.clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let result = Runner::new(pool.clone(), set).apply(None, &mut ()).await;
            pool.close().await;
            result
        }));
    }
    let mut ran = Vec::new();
    for t in tasks {
        let applied = t.await.unwrap().unwrap_or_else(|e| {
            // The whole chain: "cannot connect" alone does not say why.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            panic!("a runner failed: {message}")
        });
        ran.extend(applied.ran.into_iter().map(|(id, _)| id));
    }
    ran.sort();
    assert_eq!(
        ran,
        [
            "001_runs", "002_step", "003_step", "004_step", "005_step", "006_step"
        ],
        "each migration must run exactly once across the runners"
    );
    let pool = db.pool();
    let rows = exec(
        &pool,
        "SELECT id, COUNT(*) AS n FROM migrate_runs GROUP BY id ORDER BY id",
    )
    .await;
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["n"] == json!(1)), "{rows:?}");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn ten_concurrent_runners_apply_each_migration_once_postgres() {
    concurrent_runners(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn ten_concurrent_runners_apply_each_migration_once_mariadb() {
    concurrent_runners(DatabaseKind::Mysql).await;
}

#[tokio::test]
async fn ten_concurrent_runners_apply_each_migration_once_sqlite() {
    concurrent_runners(DatabaseKind::Sqlite).await;
}

/// A script that creates a table, adds a column and an index, then fails: the catalog is as
/// before, the failure is recorded (not dirty), and the fixed migration applies.
async fn failing_migration(kind: DatabaseKind) {
    let Some(db) = Fresh::new(kind).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_base",
        &[],
        "CREATE TABLE base (id INTEGER PRIMARY KEY);",
        Some("DROP TABLE base;"),
        true,
    );
    let pool = db.pool();
    runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    let before = catalog(&pool, kind).await;
    write(
        dir.path(),
        "002_broken",
        &["001_base"],
        "CREATE TABLE extra (id INTEGER);\nALTER TABLE base ADD COLUMN note TEXT;\nCREATE INDEX idx_extra ON extra(id);\nINSERT INTO no_such_table VALUES (1);",
        None,
        true,
    );
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    let MigrateError::Failed { id, dirty, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(id, "002_broken");
    assert!(!dirty);
    let text = trellis_host::plain_error(&err);
    assert!(text.contains("no_such_table"), "{text}");
    assert!(text.contains("schema is unchanged"), "{text}");
    assert_eq!(
        catalog(&pool, kind).await,
        before,
        "the failure changed the schema"
    );
    let status = runner(&pool, dir.path()).status().await.unwrap();
    let broken = &status.entries[1];
    assert_eq!(broken.state, StatusState::Pending);
    let row = broken.history.as_ref().unwrap();
    assert!(!row.success && !row.dirty);
    assert!(row.error.as_deref().unwrap().contains("no_such_table"));

    // Fixed, it applies (a failed migration is not drift).
    write(
        dir.path(),
        "002_broken",
        &["001_base"],
        "CREATE TABLE extra (id INTEGER);\nALTER TABLE base ADD COLUMN note TEXT;",
        None,
        true,
    );
    let applied = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    assert_eq!(applied.ran[0].0, "002_broken");
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn failing_migration_leaves_catalog_unchanged_postgres() {
    failing_migration(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn failing_migration_leaves_catalog_unchanged_sqlite() {
    failing_migration(DatabaseKind::Sqlite).await;
}

/// On MariaDB DDL commits implicitly: a failure leaves a dirty marker that blocks apply and
/// rollback until `resolve`; resolved as not applied it runs again, resolved as applied it
/// counts as done.
#[tokio::test]
async fn mariadb_dirty_marker_blocks_until_resolved() {
    let Some(db) = Fresh::new(DatabaseKind::Mysql).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_base",
        &[],
        "CREATE TABLE base (id INTEGER PRIMARY KEY);",
        Some("DROP TABLE base;"),
        true,
    );
    write(
        dir.path(),
        "002_half",
        &["001_base"],
        "CREATE TABLE half (id INTEGER);\nINSERT INTO no_such_table VALUES (1);",
        Some("DROP TABLE half;"),
        true,
    );
    let pool = db.pool();
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::Failed { id, dirty: true, .. } if id == "002_half"),
        "{err}"
    );
    assert!(trellis_host::plain_error(&err).contains("trellis migrate resolve 002_half"));
    // The implicit commit kept the first statement's table.
    assert!(has_table(
        &catalog(&pool, DatabaseKind::Mysql).await,
        "half"
    ));

    // Dirty blocks everything, by name.
    for err in [
        runner(&pool, dir.path())
            .apply(None, &mut ())
            .await
            .unwrap_err(),
        runner(&pool, dir.path())
            .rollback(RollbackTarget::All, &mut ())
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(&err, MigrateError::Dirty { id, .. } if id == "002_half"),
            "{err}"
        );
    }
    let status = runner(&pool, dir.path()).status().await.unwrap();
    assert_eq!(status.entries[1].state, StatusState::Dirty);
    let err = runner(&pool, dir.path())
        .resolve("001_base", false)
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::NotDirty { .. }), "{err}");

    // Repair by hand, fix the file, resolve as not applied: the next apply runs it.
    exec(&pool, "DROP TABLE half").await;
    write(
        dir.path(),
        "002_half",
        &["001_base"],
        "CREATE TABLE half (id INTEGER);",
        Some("DROP TABLE half;"),
        true,
    );
    runner(&pool, dir.path())
        .resolve("002_half", false)
        .await
        .unwrap();
    let applied = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    assert_eq!(applied.ran[0].0, "002_half");

    // A failure repaired by completing it by hand: resolve as applied.
    write(
        dir.path(),
        "003_more",
        &["002_half"],
        "CREATE TABLE more_a (id INTEGER);\nCREATE TABLE more_b (id INTEGER) ENGINE = NoSuchEngine;",
        None,
        true,
    );
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::Failed { dirty: true, .. }),
        "{err}"
    );
    exec(&pool, "CREATE TABLE more_b (id INTEGER)").await;
    runner(&pool, dir.path())
        .resolve("003_more", true)
        .await
        .unwrap();
    let status = runner(&pool, dir.path()).status().await.unwrap();
    assert!(
        status
            .entries
            .iter()
            .all(|e| e.state == StatusState::Applied),
        "{status:#?}"
    );
    assert!(
        runner(&pool, dir.path())
            .apply(None, &mut ())
            .await
            .unwrap()
            .ran
            .is_empty()
    );
    pool.close().await;
    db.drop_db().await;
}

/// Cycles and missing dependencies are named before anything touches the database; drift names
/// the migration, and line endings alone are not drift.
async fn named_errors(kind: DatabaseKind) {
    let Some(db) = Fresh::new(kind).await else {
        return;
    };
    let pool = db.pool();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a", &["003_c"], "SELECT 1;", None, true);
    write(dir.path(), "002_b", &["001_a"], "SELECT 1;", None, true);
    write(dir.path(), "003_c", &["002_b"], "SELECT 1;", None, true);
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::Plan(PlanError::Cycle { cycle }) if cycle == &["001_a", "003_c", "002_b", "001_a"]),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("`001_a` → `003_c` → `002_b` → `001_a`"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "001_a", &["000_gone"], "SELECT 1;", None, true);
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("migration `001_a` depends on `000_gone`, which does not exist"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_table",
        &[],
        "CREATE TABLE drift_t (id INTEGER);\n",
        None,
        true,
    );
    runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    // CRLF instead of LF: the same content.
    write(
        dir.path(),
        "001_table",
        &[],
        "CREATE TABLE drift_t (id INTEGER);\r\n",
        None,
        true,
    );
    runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    write(
        dir.path(),
        "001_table",
        &[],
        "CREATE TABLE drift_t (id INTEGER, name TEXT);\n",
        None,
        true,
    );
    write(
        dir.path(),
        "002_next",
        &["001_table"],
        "SELECT 1;",
        None,
        true,
    );
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::Drift { id, .. } if id == "001_table"),
        "{err}"
    );
    assert!(err.to_string().contains("(drift)"), "{err}");
    let status = runner(&pool, dir.path()).status().await.unwrap();
    assert_eq!(status.entries[0].state, StatusState::Drifted);
    assert_eq!(status.entries[1].state, StatusState::Pending);
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn cycles_missing_dependencies_and_drift_are_named_postgres() {
    named_errors(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn cycles_missing_dependencies_and_drift_are_named_mariadb() {
    named_errors(DatabaseKind::Mysql).await;
}

#[tokio::test]
async fn cycles_missing_dependencies_and_drift_are_named_sqlite() {
    named_errors(DatabaseKind::Sqlite).await;
}

/// A rollback that reaches a migration without a down step stops before doing anything.
#[tokio::test]
async fn rollback_without_down_step_is_refused_sqlite() {
    let db = Fresh::new(DatabaseKind::Sqlite).await.unwrap();
    let pool = db.pool();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_a",
        &[],
        "CREATE TABLE a (x INTEGER);",
        None,
        true,
    );
    write(
        dir.path(),
        "002_b",
        &["001_a"],
        "CREATE TABLE b (x INTEGER);",
        Some("DROP TABLE b;"),
        true,
    );
    runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    let err = runner(&pool, dir.path())
        .rollback(RollbackTarget::All, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::NoDown { id } if id == "001_a"),
        "{err}"
    );
    assert!(
        has_table(&catalog(&pool, DatabaseKind::Sqlite).await, "b"),
        "nothing may be rolled back when a down step is missing"
    );
    pool.close().await;
}

/// `transaction = false` runs outside a transaction: `CREATE INDEX CONCURRENTLY` works on
/// PostgreSQL; a multi-statement non-transactional script is refused up front.
#[tokio::test]
async fn non_transactional_migration_postgres() {
    let Some(db) = Fresh::new(DatabaseKind::Postgres).await else {
        return;
    };
    let pool = db.pool();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_t",
        &[],
        "CREATE TABLE t (x INTEGER);",
        None,
        true,
    );
    write(
        dir.path(),
        "002_idx",
        &["001_t"],
        "CREATE INDEX CONCURRENTLY idx_t_x ON t (x);",
        Some("DROP INDEX CONCURRENTLY idx_t_x;"),
        false,
    );
    runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap();
    assert!(
        catalog(&pool, DatabaseKind::Postgres)
            .await
            .iter()
            .any(|l| l.starts_with("idx_t_x "))
    );
    runner(&pool, dir.path())
        .rollback(RollbackTarget::To("001_t".into()), &mut ())
        .await
        .unwrap();
    assert!(
        !catalog(&pool, DatabaseKind::Postgres)
            .await
            .iter()
            .any(|l| l.starts_with("idx_t_x "))
    );
    write(
        dir.path(),
        "002_idx",
        &["001_t"],
        "CREATE INDEX CONCURRENTLY idx_t_x ON t (x);\nCREATE INDEX CONCURRENTLY idx_t_x2 ON t (x);",
        None,
        false,
    );
    // Rolled back, so the changed file is not drift; but two statements cannot run this way.
    let err = runner(&pool, dir.path())
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrateError::NonTransactionalScript { id, statements: 2 } if id == "002_idx"),
        "{err}"
    );
    pool.close().await;
    db.drop_db().await;
}

/// The session lock keeps a second runner out, and dies with the connection that holds it.
async fn lock_dies_with_connection(kind: DatabaseKind) {
    let Some(db) = Fresh::new(kind).await else {
        return;
    };
    let holder = db.pool();
    let lease = holder.acquire().await.unwrap();
    let who = match kind {
        DatabaseKind::Postgres => "SELECT pg_backend_pid() AS id",
        _ => "SELECT CONNECTION_ID() AS id",
    };
    let id = lease
        .execute(who, &Params::None, Fetch::One)
        .await
        .unwrap()
        .rows[0]["id"]
        .as_i64()
        .unwrap();
    let lock = DbLock::acquire(lease, kind, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lock.is_session_lock());

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_t",
        &[],
        "CREATE TABLE locked_t (x INTEGER);",
        None,
        true,
    );
    let other = db.pool();
    let err = runner(&other, dir.path())
        .lock_wait(Duration::from_secs(1))
        .apply(None, &mut ())
        .await
        .unwrap_err();
    assert!(
        matches!(err, MigrateError::Lock(LockError::Timeout(_))),
        "{err}"
    );

    // The holder "dies": its connection is killed from outside.
    let kill = match kind {
        DatabaseKind::Postgres => format!("SELECT pg_terminate_backend({id}) AS killed"),
        _ => format!("KILL {id}"),
    };
    exec(&other, &kill).await;
    let applied = runner(&other, dir.path())
        .lock_wait(Duration::from_secs(20))
        .apply(None, &mut ())
        .await
        .unwrap();
    assert_eq!(applied.ran.len(), 1);
    drop(lock);
    holder.close().await;
    other.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn lock_dies_with_its_connection_postgres() {
    lock_dies_with_connection(DatabaseKind::Postgres).await;
}

#[tokio::test]
async fn lock_dies_with_its_connection_mariadb() {
    lock_dies_with_connection(DatabaseKind::Mysql).await;
}

/// `trellis migrate` through the real binary on SQLite: new, dry run, apply --to, apply with
/// progress, status, rollback, drift, resolve.
#[test]
fn cli_new_plan_apply_status_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("sqlite://{}", db.display());
    let t = Duration::from_secs(60);
    let trellis = |args: &[&str]| {
        let mut all: Vec<&str> = vec!["migrate"];
        all.extend_from_slice(args);
        if !matches!(args.first(), Some(&"new")) {
            all.extend_from_slice(&["--url", &url]);
        }
        let (status, out, err) = run_trellis(dir.path(), &all, t);
        (status.success(), out, err)
    };

    let (ok, out, err) = trellis(&["new", "create notes"]);
    assert!(ok, "{err}");
    assert!(out.contains("001_create_notes"), "{out}");
    let first = dir.path().join("migrations/001_create_notes");
    std::fs::write(
        first.join("up.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);\n",
    )
    .unwrap();
    std::fs::write(first.join("down.sql"), "DROP TABLE notes;\n").unwrap();
    let (ok, out, err) = trellis(&["new", "Add tags", "--depends-on", "001_create_notes"]);
    assert!(ok, "{err}");
    assert!(out.contains("002_add_tags"), "{out}");
    let second = dir.path().join("migrations/002_add_tags");
    assert!(
        std::fs::read_to_string(second.join("migration.toml"))
            .unwrap()
            .contains("dependencies = [\"001_create_notes\"]")
    );
    std::fs::write(
        second.join("up.sql"),
        "CREATE TABLE tags (note_id INTEGER, tag TEXT);\nCREATE INDEX idx_tags ON tags(tag);\n",
    )
    .unwrap();
    std::fs::write(second.join("down.sql"), "DROP TABLE tags;\n").unwrap();

    let (ok, out, err) = trellis(&["apply", "--dry-run"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("1. 001_create_notes") && out.contains("2. 002_add_tags"),
        "{out}"
    );
    assert!(out.contains("CREATE INDEX idx_tags ON tags(tag);"), "{out}");
    let (ok, out, _) = trellis(&["status"]);
    assert!(ok);
    assert!(
        out.contains("not initialized"),
        "the dry run changed the database: {out}"
    );

    let (ok, out, err) = trellis(&["apply", "--to", "001_create_notes"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("applied  001_create_notes") && !out.contains("002_add_tags"),
        "{out}"
    );
    let (ok, out, err) = trellis(&["plan"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1. 002_add_tags  add tags");

    let (ok, out, err) = trellis(&["apply"]);
    assert!(ok, "{err}");
    assert!(out.contains("applied  002_add_tags"), "{out}");
    assert!(
        err.contains("[1/1] applying 002_add_tags"),
        "progress: {err}"
    );
    let (ok, out, _) = trellis(&["status"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("applied  001_create_notes")
            && lines[1].starts_with("applied  002_add_tags"),
        "{out}"
    );

    let (ok, out, err) = trellis(&["rollback", "--to", "001_create_notes"]);
    assert!(ok, "{err}");
    assert!(out.contains("rolled back 002_add_tags"), "{out}");
    let (_, out, _) = trellis(&["status"]);
    assert!(out.contains("pending  002_add_tags"), "{out}");

    std::fs::write(
        first.join("up.sql"),
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, extra TEXT);\n",
    )
    .unwrap();
    let (ok, _, err) = trellis(&["apply"]);
    assert!(!ok);
    assert!(
        err.contains("error: migration `001_create_notes` was applied with checksum"),
        "{err}"
    );
    assert!(err.contains("help: restore `001_create_notes`"), "{err}");

    let (ok, _, err) = trellis(&["resolve", "001_create_notes"]);
    assert!(!ok);
    assert!(
        err.contains("migration `001_create_notes` is not dirty"),
        "{err}"
    );
}

/// The guide's `CreateUserProfileTable` as a Rust migration registered with the runner, next to
/// a directory migration that depends on it.
struct CreateUserProfileTable;

impl trellis_host::Migration for CreateUserProfileTable {
    fn id(&self) -> &str {
        "001_create_user_profile"
    }

    fn description(&self) -> &str {
        "Create user profile table"
    }

    fn dependencies(&self) -> Vec<String> {
        Vec::new()
    }

    fn reversible(&self) -> bool {
        true
    }

    fn up<'a>(
        &'a self,
        db: &'a trellis_host::MigrationStep<'a>,
    ) -> trellis_host::MigrationStepFuture<'a> {
        Box::pin(async move {
            let (up, _) = user_profiles(db.kind());
            db.script(up).await?;
            let seed = json!({"user_id": 1, "bio": "seeded by code"});
            db.query(
                "INSERT INTO user_profiles (user_id, bio) VALUES (:user_id, :bio)",
                &Params::Named(seed.as_object().unwrap().clone()),
                Fetch::All,
            )
            .await?;
            Ok(())
        })
    }

    fn down<'a>(
        &'a self,
        db: &'a trellis_host::MigrationStep<'a>,
    ) -> trellis_host::MigrationStepFuture<'a> {
        Box::pin(async move {
            let (_, down) = user_profiles(db.kind());
            db.script(down).await?;
            Ok(())
        })
    }
}

async fn rust_migration(kind: DatabaseKind) {
    let Some(db) = Fresh::new(kind).await else {
        return;
    };
    let pool = db.pool();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "002_avatar_index",
        &["001_create_user_profile"],
        "CREATE INDEX idx_profile_avatar ON user_profiles(avatar_url);",
        Some(if kind == DatabaseKind::Mysql {
            "DROP INDEX idx_profile_avatar ON user_profiles;"
        } else {
            "DROP INDEX idx_profile_avatar;"
        }),
        true,
    );
    let set = || {
        let mut set = MigrationSet::from_dir(dir.path()).unwrap();
        set.register(Arc::new(CreateUserProfileTable)).unwrap();
        set
    };
    let runner = Runner::new(pool.clone(), set());
    let applied = runner.apply(None, &mut ()).await.unwrap();
    let ids: Vec<&str> = applied.ran.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["001_create_user_profile", "002_avatar_index"]);
    let rows = exec(&pool, "SELECT bio FROM user_profiles").await;
    assert_eq!(rows[0]["bio"], json!("seeded by code"));
    let back = runner.rollback(RollbackTarget::All, &mut ()).await.unwrap();
    let ids: Vec<&str> = back.ran.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["002_avatar_index", "001_create_user_profile"]);
    assert!(!has_table(&catalog(&pool, kind).await, "user_profiles"));
    // Registering the same id twice is refused.
    let mut twice = set();
    assert!(twice.register(Arc::new(CreateUserProfileTable)).is_err());
    pool.close().await;
    db.drop_db().await;
}

#[tokio::test]
async fn rust_migration_registered_with_the_runner_mariadb() {
    rust_migration(DatabaseKind::Mysql).await;
}

#[tokio::test]
async fn rust_migration_registered_with_the_runner_sqlite() {
    rust_migration(DatabaseKind::Sqlite).await;
}

/// A run cancelled in the middle of a step (its future dropped) rolls the step back and gives
/// the lock up, so the next runner applies the migration.
#[tokio::test]
async fn cancelled_run_rolls_back_and_releases_the_lock_postgres() {
    let Some(db) = Fresh::new(DatabaseKind::Postgres).await else {
        return;
    };
    let pool = db.pool();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "001_slow",
        &[],
        "CREATE TABLE slow_t (x INTEGER);\nSELECT pg_sleep(1);",
        None,
        true,
    );
    let first = runner(&pool, dir.path());
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), first.apply(None, &mut ())).await;
    assert!(cancelled.is_err(), "the step should still be running");
    let other = db.pool();
    let applied = runner(&other, dir.path())
        .lock_wait(Duration::from_secs(20))
        .apply(None, &mut ())
        .await
        .unwrap();
    assert_eq!(applied.ran.len(), 1, "{applied:?}");
    let rows = exec(
        &other,
        "SELECT COUNT(*) AS n FROM trellis_migrations WHERE success",
    )
    .await;
    assert_eq!(rows[0]["n"], json!(1));
    pool.close().await;
    other.close().await;
    db.drop_db().await;
}
