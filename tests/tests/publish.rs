//! Issue 20 §2 against the real binary and PostgreSQL 15: `trellis publish DIR --to DATABASE`.
//!
//! The shipped example published to a fresh control database: the control schema made by its own
//! migrations, every file stored once by SHA-256, the manifest as generation 1, active, and the
//! fleet told by NOTIFY. Published again unchanged: nothing uploaded. One workflow changed: one
//! file uploaded. A bundle that does not load (a broken policy, a workflow naming a missing plugin,
//! a plugin that does not load) is refused and nothing is written. `--activate N` rolls back, and
//! refuses a generation never published. On 7343303 there was no `publish` command.

use std::path::Path;
use std::time::Duration;

use sqlx::Connection;
use trellis_tests::{drop_postgres_database, example_dir, fresh_postgres_database, run_trellis};

async fn control_database() -> Option<(String, String)> {
    fresh_postgres_database("control").await
}

async fn drop_database(name: &str) {
    drop_postgres_database(name).await
}

fn publish(dir: &Path, bundle: &Path, to: &str) -> (bool, String, String) {
    let (status, stdout, stderr) = run_trellis(
        dir,
        &["publish", bundle.to_str().unwrap(), "--to", to],
        Duration::from_secs(120),
    );
    (status.success(), stdout, stderr)
}

async fn count(control: &mut sqlx::PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM trellis_control.{table}"
    )))
    .fetch_one(control)
    .await
    .unwrap()
}

async fn active(control: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT generation FROM trellis_control.active")
        .fetch_one(control)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bundle_is_published_once_per_content_and_told_to_the_fleet() {
    let Some((name, url)) = control_database().await else {
        return;
    };
    let bundle = example_dir();
    let files = ["policies", "plugins", "workflows"]
        .iter()
        .map(|p| std::fs::read_dir(bundle.path().join(p)).unwrap().count())
        .sum::<usize>();
    let mut listener = sqlx::postgres::PgListener::connect(&url).await.unwrap();
    listener.listen("trellis_generations").await.unwrap();

    let (ok, stdout, stderr) = publish(bundle.path(), bundle.path(), &url);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "published generation 1 ({files} files: {files} uploaded, 0 unchanged)"
        )),
        "{stdout}"
    );
    let notice = tokio::time::timeout(Duration::from_secs(5), listener.recv())
        .await
        .expect("a notice")
        .unwrap();
    assert_eq!(notice.payload(), r#"{"active":1}"#);

    let mut control = sqlx::PgConnection::connect(&url).await.unwrap();
    assert_eq!(count(&mut control, "generations").await, 1);
    assert_eq!(count(&mut control, "blobs").await, files as i64);
    assert_eq!(active(&mut control).await, 1);
    // The manifest names every file by content; the stored bytes hash to their names.
    let (path, sha): (String, String) = sqlx::query_as(
        "SELECT key, value->>'sha256' FROM trellis_control.generations, \
         jsonb_each(manifest->'files') WHERE id = 1 AND key = 'workflows/finance_report.toml'",
    )
    .fetch_one(&mut control)
    .await
    .unwrap();
    assert_eq!(path, "workflows/finance_report.toml");
    let verified: bool = sqlx::query_scalar(
        "SELECT encode(sha256(content), 'hex') = sha256 FROM trellis_control.blobs WHERE sha256 = $1",
    )
    .bind(&sha)
    .fetch_one(&mut control)
    .await
    .unwrap();
    assert!(verified);
    // The control schema's own migration history.
    let migrations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM trellis_control.trellis_migrations")
            .fetch_one(&mut control)
            .await
            .unwrap();
    assert_eq!(migrations, 2);

    // Unchanged: a new generation, nothing uploaded.
    let (ok, stdout, stderr) = publish(bundle.path(), bundle.path(), &url);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("published generation 2"), "{stdout}");
    assert!(
        stdout.contains(&format!("0 uploaded, {files} unchanged")),
        "{stdout}"
    );
    // One workflow changed: one file uploaded.
    let workflow = bundle.path().join("workflows/finance_report.toml");
    let text = std::fs::read_to_string(&workflow).unwrap();
    std::fs::write(
        &workflow,
        text.replace("Expenses by department", "Expenses per department"),
    )
    .unwrap();
    let (ok, stdout, stderr) = publish(bundle.path(), bundle.path(), &url);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("published generation 3"), "{stdout}");
    assert!(stdout.contains("1 uploaded"), "{stdout}");
    assert_eq!(count(&mut control, "blobs").await, files as i64 + 1);
    assert_eq!(active(&mut control).await, 3);

    // Back to generation 1, told to the fleet; a generation never published is refused.
    let (status, stdout, stderr) = run_trellis(
        bundle.path(),
        &["publish", "--to", &url, "--activate", "1"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{stdout}\n{stderr}");
    assert_eq!(active(&mut control).await, 1);
    let mut payloads = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await {
        payloads.push(n.payload().to_owned());
    }
    assert_eq!(
        payloads.last().map(String::as_str),
        Some(r#"{"active":1}"#),
        "{payloads:?}"
    );
    let (status, _, stderr) = run_trellis(
        bundle.path(),
        &["publish", "--to", &url, "--activate", "9"],
        Duration::from_secs(60),
    );
    assert!(!status.success());
    assert!(
        stderr.contains("no generation 9 was ever published"),
        "{stderr}"
    );
    assert_eq!(active(&mut control).await, 1);

    control.close().await.unwrap();
    drop(listener);
    drop_database(&name).await;
}

/// Breaks a copy of the example.
type Spoil = fn(&Path);

#[tokio::test]
async fn a_bundle_that_does_not_load_is_refused_and_nothing_is_written() {
    let Some((name, url)) = control_database().await else {
        return;
    };
    let good = example_dir();
    let (ok, stdout, stderr) = publish(good.path(), good.path(), &url);
    assert!(ok, "{stdout}\n{stderr}");

    let broken: [(&str, Spoil); 3] = [
        ("a broken .cedar file", |d| {
            std::fs::write(
                d.join("policies/broken.cedar"),
                "permit (principal, action, resource) when {",
            )
            .unwrap()
        }),
        ("a workflow naming a missing plugin", |d| {
            std::fs::remove_file(d.join("plugins/sum_by_key.wasm")).unwrap()
        }),
        ("a plugin that does not load", |d| {
            std::fs::write(d.join("plugins/garbage.wasm"), b"\0asm not really").unwrap()
        }),
    ];
    for (what, spoil) in broken {
        let bundle = example_dir();
        spoil(bundle.path());
        let (ok, stdout, stderr) = publish(good.path(), bundle.path(), &url);
        assert!(!ok, "{what}: published\n{stdout}");
        assert!(
            stderr.contains("the bundle does not load, nothing was published"),
            "{what}: {stderr}"
        );
    }
    let mut control = sqlx::PgConnection::connect(&url).await.unwrap();
    assert_eq!(count(&mut control, "generations").await, 1);
    assert_eq!(active(&mut control).await, 1);
    control.close().await.unwrap();
    drop_database(&name).await;
}
