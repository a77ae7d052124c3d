//! Issue 17 §5, the audit trail at production rates, against the real `trellis serve`: the file
//! rotates by size and keeps only the newest rotated files, and when records cannot be written
//! (a full disk: a 64 KiB tmpfs; the audit database refusing connections) the host refuses
//! requests by default and serves again once the records are written, or, with
//! `audit_on_failure = "serve"`, keeps serving and counts every lost record; a writer behind by
//! more than its queue holds refuses requests too, and loses nothing. The audit table
//! names each decision's run, also in a table made before it had the column, on every database.
//! Mounting the tmpfs needs root, which the test command has.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_tests::{Server, TestDb, allow_rules, custom_dir, run_workflow, unique};

const WORKFLOW: &str = "[[nodes]]\nid = \"n\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1 AS one\" }\n";

fn rules() -> String {
    json!({ "rules": allow_rules("w", &["n"]) }).to_string()
}

fn user() -> Value {
    json!({"user_id": "auditor-test"})
}

/// A tmpfs of `size` mounted at a new directory (inside a temporary one, removed after the
/// unmount); unmounted on drop.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the tests run as root through scripts/test)"
        );
        Tmpfs(at, dir)
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn metric(server: &Server, name: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", server.base_url()))
        .header("x-trellis-user", user().to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{name}` in /metrics:\n{text}"))
}

/// A PostgreSQL database of its own, so what a test does to it touches no other test: a pool on
/// the test database (to drop it after), its name and its URL. `None` without PostgreSQL.
async fn own_postgres_database(prefix: &str) -> Option<(sqlx::PgPool, String, String)> {
    let pg = TestDb::Postgres.url()?;
    let name = unique(prefix);
    let admin = sqlx::PgPool::connect(&pg).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let url = pg
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{name}"))
        .unwrap();
    Some((admin, name, url))
}

/// Drops a database [`own_postgres_database`] made, with whoever is still connected to it.
async fn drop_postgres_database(admin: &sqlx::PgPool, name: &str) {
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(admin)
    .await;
}

/// The test workflow's folder with its audit trail in the database at `url`; `database` and
/// `policy` are more lines for those sections.
fn audited_in(url: &str, database: &str, policy: &str) -> tempfile::TempDir {
    custom_dir(
        WORKFLOW,
        &rules(),
        &format!(
            "[databases.main]\nurl = \"sqlite://data/trellis.db\"\n[databases.audit]\nurl = \"{url}\"\n{database}[policy]\naudit_database = \"audit\"\n{policy}"
        ),
    )
}

/// Serves `dir` and runs its workflow once.
async fn serve_after_one_run(dir: &tempfile::TempDir) -> Server {
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &user(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    server
}

/// Runs the workflow until a run is refused (503), at most `limit` times; how many ran.
async fn run_until_refused(server: &Server, limit: usize) -> (usize, bool) {
    for i in 0..limit {
        let (status, body) = run_workflow(server, "w", &user(), json!({})).await;
        match status {
            200 => {}
            503 => {
                assert_eq!(body["error"]["kind"], "unavailable", "{body}");
                return (i, true);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    (limit, false)
}

#[tokio::test]
async fn a_full_disk_refuses_requests_until_the_records_are_written() {
    let disk = Tmpfs::mount("64k");
    let file = disk.0.join("audit.jsonl");
    let dir = custom_dir(
        WORKFLOW,
        &rules(),
        &format!("[policy]\naudit_file = \"{}\"\n", file.display()),
    );
    let server = Server::start(dir.path(), &[]);
    let (ran, refused) = run_until_refused(&server, 2000).await;
    assert!(refused, "{ran} runs and never refused on a full disk");
    assert!(ran > 10, "refused after only {ran} runs");
    assert_eq!(metric(&server, "trellis_audit_failing").await, 1.0);
    // Every refusal is a request that decided nothing; none of the records is lost.
    assert_eq!(
        metric(&server, "trellis_audit_records_dropped_total").await,
        0.0
    );

    // Space again: the kept records are written within the retry, and the host serves.
    disk.resize("4m");
    served_again(&server, Duration::from_secs(5), "space was freed").await;
    assert_eq!(metric(&server, "trellis_audit_failing").await, 0.0);
    assert_eq!(
        metric(&server, "trellis_audit_records_dropped_total").await,
        0.0
    );
    // Whole lines only: a partly written batch was cut off before the retry.
    let text = std::fs::read_to_string(&file).unwrap();
    for line in text.lines() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("a broken line ({e}): {line}"));
    }
}

#[tokio::test]
async fn serve_mode_keeps_serving_on_a_full_disk_and_counts_every_lost_record() {
    let disk = Tmpfs::mount("64k");
    let file = disk.0.join("audit.jsonl");
    let dir = custom_dir(
        WORKFLOW,
        &rules(),
        &format!(
            "[policy]\naudit_file = \"{}\"\naudit_on_failure = \"serve\"\n",
            file.display()
        ),
    );
    let server = Server::start(dir.path(), &[]);
    // How many records one run makes, while the disk has room.
    let (status, _) = run_workflow(&server, "w", &user(), json!({})).await;
    assert_eq!(status, 200);
    let per_run = settled(&server, 0.0).await;
    assert!(per_run >= 1.0);
    let (ran, refused) = run_until_refused(&server, 599).await;
    assert!(!refused, "refused in serve mode after {ran} runs");
    let total = settled(&server, per_run * 600.0).await;
    // (`trellis_audit_failing` may be 0 again here: a batch small enough for the room a cut-off
    // write left behind is written.)
    let dropped = metric(&server, "trellis_audit_records_dropped_total").await;
    assert!(dropped > 0.0, "no lost record counted");
    // Every record is either written or counted lost.
    assert_eq!(total, per_run * 600.0, "written + dropped");
}

#[test]
fn the_audit_file_rotates_by_size_and_keeps_the_newest() {
    let dir = custom_dir(
        WORKFLOW,
        &rules(),
        "[policy]\naudit_max_bytes = 2000\naudit_keep = 3\n",
    );
    let server = Server::start(dir.path(), &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for _ in 0..60 {
            let (status, body) = run_workflow(&server, "w", &user(), json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
    });
    // Stopped, not killed: a rotation is followed by its pruning before the host exits.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    server.wait(Duration::from_secs(30));
    let data = dir.path().join("data");
    let rotated: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.jsonl."))
        .collect();
    assert_eq!(rotated.len(), 3, "{rotated:?}");
    use std::os::unix::fs::PermissionsExt;
    for name in rotated
        .iter()
        .chain(std::iter::once(&"audit.jsonl".to_owned()))
    {
        let path = data.join(name);
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.len() < 2000 + 4096, "{name} is {} bytes", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
    }
}

#[tokio::test]
async fn the_audit_database_going_away_refuses_requests_until_it_is_back() {
    // A database of its own, so refusing its connections touches no other test.
    let Some((admin, name, url)) = own_postgres_database("audit_db").await else {
        return;
    };
    let dir = audited_in(&url, "min_connections = 0\n", "");
    let server = serve_after_one_run(&dir).await;

    // The database goes away: no new connection, and the open ones are cut.
    let away = |allow: bool| format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(away(false)))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    let (ran, refused) = run_until_refused(&server, 400).await;
    assert!(
        refused,
        "{ran} runs and never refused with the audit database gone"
    );

    // Back: the kept records are written and the host serves again.
    sqlx::raw_sql(sqlx::AssertSqlSafe(away(true)))
        .execute(&admin)
        .await
        .unwrap();
    served_again(&server, Duration::from_secs(10), "the database came back").await;
    assert_eq!(
        metric(&server, "trellis_audit_records_dropped_total").await,
        0.0
    );
    drop(server);
    drop_postgres_database(&admin, &name).await;
}

/// The writer falls behind: the audit table is locked, so its inserts wait (they do not fail).
/// Once more records wait than `audit_queue` holds, refuse mode refuses requests instead of
/// dropping records, and serves again once the writer has written every one of them.
#[tokio::test]
async fn a_writer_behind_refuses_requests_and_loses_no_record() {
    let Some((admin, name, url)) = own_postgres_database("audit_behind").await else {
        return;
    };
    let dir = audited_in(&url, "", "audit_queue = 4\n");
    let server = serve_after_one_run(&dir).await;
    settled(&server, 0.0).await;

    // The decisions table is locked until the transaction holding the lock ends.
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    let mut lock = db.begin().await.unwrap();
    sqlx::query("LOCK TABLE policy_audit_decisions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let (ran, refused) = run_until_refused(&server, 200).await;
    assert!(
        refused,
        "{ran} runs and never refused with the writer behind"
    );
    assert_eq!(metric(&server, "trellis_audit_behind").await, 1.0);
    assert_eq!(metric(&server, "trellis_audit_failing").await, 0.0);
    assert_eq!(
        metric(&server, "trellis_audit_records_dropped_total").await,
        0.0
    );

    // Unlocked: the writer writes what waited, and the host serves again.
    lock.rollback().await.unwrap();
    served_again(&server, Duration::from_secs(10), "the table was unlocked").await;
    let written = settled(&server, 0.0).await;
    assert_eq!(metric(&server, "trellis_audit_behind").await, 0.0);
    assert_eq!(
        metric(&server, "trellis_audit_records_dropped_total").await,
        0.0
    );
    // Every run served has its row, and every decision recorded is in the table.
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_audit_runs")
        .fetch_one(&db)
        .await
        .unwrap();
    let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_audit_decisions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        runs as usize,
        ran + 2,
        "the first run, {ran} before the refusal, the last"
    );
    assert_eq!(
        decisions as f64, written,
        "every record written is a decision of a run"
    );
    drop(server);
    db.close().await;
    drop_postgres_database(&admin, &name).await;
}

/// Waits (up to 5 s) until written + dropped reaches `expect` (or stops moving when `expect`
/// is 0), and returns it.
async fn settled(server: &Server, expect: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = -1.0;
    loop {
        let now = metric(server, "trellis_audit_records_written_total").await
            + metric(server, "trellis_audit_records_dropped_total").await;
        let done = if expect > 0.0 {
            now >= expect
        } else {
            now > 0.0 && now == last
        };
        if done || Instant::now() >= deadline {
            return now;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the workflow until it is served (200) again, for at most `within` after `what`.
async fn served_again(server: &Server, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let (status, _) = run_workflow(server, "w", &user(), json!({})).await;
        if status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still refusing {within:?} after {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The audit table as a host before `run_id` made it (SQLite's key; the other two only differ
/// in it), with one decision in it.
fn old_table(key: &str) -> [String; 2] {
    [
        format!(
            "CREATE TABLE policy_audit ({key}, time TEXT NOT NULL, user_id TEXT NOT NULL, \
             action TEXT NOT NULL, resource TEXT NOT NULL, decision TEXT NOT NULL, \
             policies TEXT NOT NULL, generation BIGINT NOT NULL, errors TEXT NOT NULL, \
             latency_us BIGINT NOT NULL, cached INTEGER NOT NULL, masks TEXT NOT NULL)"
        ),
        "INSERT INTO policy_audit (time, user_id, action, resource, decision, policies, \
         generation, errors, latency_us, cached, masks) VALUES ('2026-12-01T00:00:00Z', \
         'before-upgrade', 'node:execute', 'node:n', 'allow', '[]', 1, '[]', 3, 0, '[]')"
            .to_owned(),
    ]
}

/// What the whole-record table holds: `(user_id, run_id)` per decision, in the order written.
const AUDIT_ROWS: &str = "SELECT user_id, run_id FROM policy_audit ORDER BY id";

/// The runs table: `(user_id, run_id)` per run row.
const RUN_ROWS: &str = "SELECT user_id, run_id FROM policy_audit_runs ORDER BY run";

/// Each decision of a run with its run's row: `(user_id, run_id)`, in the order written.
const DECISION_ROWS: &str = "SELECT r.user_id, r.run_id FROM policy_audit_decisions d \
    JOIN policy_audit_runs r ON r.writer = d.writer AND r.run = d.run ORDER BY d.id";

/// Makes [`old_table`] (with the auto-numbered key `key`) through `db`, serves the workflow with
/// its audit tables in that database (`url`), runs it twice, and checks that each run has one
/// row in `policy_audit_runs`, that every decision since names its run's row (and none is written
/// whole), and that the row from before is kept.
async fn audit_table_names_the_run<DB>(backend: &str, url: &str, db: &sqlx::Pool<DB>, key: &str)
where
    DB: sqlx::Database,
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'r> (String, Option<String>): sqlx::FromRow<'r, DB::Row>,
{
    for sql in old_table(key) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(db)
            .await
            .unwrap();
    }
    let rows = |sql: &'static str| async move {
        sqlx::query_as::<DB, (String, Option<String>)>(sql)
            .fetch_all(db)
            .await
            .unwrap()
    };
    let dir = audited_in(url, "", "");
    let server = Server::start(dir.path(), &[]);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (status, body) = run_workflow(&server, "w", &user(), json!({})).await;
        assert_eq!(status, 200, "{backend}: {body}");
        runs.push(body["run_id"].as_str().unwrap().to_owned());
    }
    // The writer is a background task: wait for both runs' decisions (at least the workflow's
    // and its node's each), then for any stragglers of the last batch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rows(DECISION_ROWS).await.len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (whole, run_rows, decisions) = (
        rows(AUDIT_ROWS).await,
        rows(RUN_ROWS).await,
        rows(DECISION_ROWS).await,
    );
    drop(server);
    assert_eq!(
        whole,
        [("before-upgrade".to_owned(), None)],
        "{backend}: the row from before the split is kept, with no run, and no decision of a \
         run is written whole"
    );
    let named = |run: &String| ("auditor-test".to_owned(), Some(run.clone()));
    assert_eq!(
        run_rows,
        [named(&runs[0]), named(&runs[1])],
        "{backend}: one row per run holds its user and run id"
    );
    let of_run = |run: &String| decisions.iter().filter(|d| **d == named(run)).count();
    assert!(of_run(&runs[0]) >= 2, "{backend}: {decisions:?}");
    assert_eq!(
        of_run(&runs[0]) + of_run(&runs[1]),
        decisions.len(),
        "{backend}: every decision since names its run: {decisions:?}"
    );
    assert_eq!(
        of_run(&runs[0]),
        of_run(&runs[1]),
        "{backend}: {decisions:?}"
    );
}

#[tokio::test]
async fn the_audit_table_names_each_decisions_run_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.db");
    let url = format!("sqlite://{}", file.display());
    let db = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    audit_table_names_the_run("sqlite", &url, &db, "id INTEGER PRIMARY KEY AUTOINCREMENT").await;
}

#[tokio::test]
async fn the_audit_table_names_each_decisions_run_on_postgres() {
    let Some((admin, name, url)) = own_postgres_database("audit_runs").await else {
        return;
    };
    let db = sqlx::PgPool::connect(&url).await.unwrap();
    audit_table_names_the_run(
        "postgres",
        &url,
        &db,
        "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    )
    .await;
    db.close().await;
    drop_postgres_database(&admin, &name).await;
}

#[tokio::test]
async fn the_audit_table_names_each_decisions_run_on_mariadb() {
    let Some(my) = TestDb::Mysql.url() else {
        return;
    };
    let name = unique("audit_runs");
    let admin = sqlx::MySqlPool::connect(&my).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let (base, query) = my.split_once('?').unwrap_or((&my, ""));
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap();
    let url = if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    };
    let db = sqlx::MySqlPool::connect(&url).await.unwrap();
    audit_table_names_the_run(
        "mariadb",
        &url,
        &db,
        "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    )
    .await;
    db.close().await;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name}")))
        .execute(&admin)
        .await;
}
