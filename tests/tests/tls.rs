//! TLS to the database servers, through the real binary (`trellis query`, `trellis serve`):
//! each `sslmode` met or refused against PostgreSQL 15 and MariaDB serving the test CA's
//! certificate (`scripts/services` makes it, for the name `localhost` only), and PostgreSQL 18
//! with TLS off. Issue 17 §1: before it, the URL's `sslmode` was dropped and no connection used
//! TLS.

use std::path::PathBuf;
use std::time::Duration;

use trellis_tests::{Server, TestDb, run_trellis};

/// The test CA's directory, or `None` (after saying so) outside `scripts/test`.
fn tls_dir() -> Option<PathBuf> {
    // The URL check panics under CI when the test command did not run.
    TestDb::Postgres.url()?;
    match std::env::var("TRELLIS_TEST_TLS_DIR") {
        Ok(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "`TRELLIS_TEST_TLS_DIR` is not set and CI=true: run the tests through `scripts/test`"
            )
        }
        _ => {
            eprintln!(
                "skipped: `TRELLIS_TEST_TLS_DIR` is not set (run the tests through `scripts/test`)"
            );
            None
        }
    }
}

/// `trellis query --url URL SQL` in a temporary directory: (succeeded, stdout, stderr).
fn query(url: &str, sql: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (status, out, err) = run_trellis(
        dir.path(),
        &["query", "--url", url, sql, "--fetch", "one"],
        Duration::from_secs(60),
    );
    (status.success(), out, err)
}

const PG_SSL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
const MY_SSL: &str = "SELECT VARIABLE_VALUE AS cipher FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'";

#[test]
fn verify_full_connects_to_postgres_over_tls() {
    let Some(tls) = tls_dir() else { return };
    let ca = tls.join("ca.crt");
    let url = format!(
        "postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={}",
        ca.display()
    );
    let (ok, out, err) = query(&url, PG_SSL);
    assert!(ok, "{err}");
    assert!(
        out.contains("\"ssl\": true") || out.contains("\"ssl\":true"),
        "{out}"
    );
}

#[test]
fn the_loopback_default_prefers_tls_and_require_gets_it() {
    let Some(_) = tls_dir() else { return };
    for url in [
        "postgres://postgres@127.0.0.1:5432/test",
        "postgres://postgres@127.0.0.1:5432/test?sslmode=require",
    ] {
        let (ok, out, err) = query(url, PG_SSL);
        assert!(ok, "{url}: {err}");
        assert!(out.contains("true"), "{url}: {out}");
    }
    let (ok, out, err) = query(
        "postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
        PG_SSL,
    );
    assert!(ok, "{err}");
    assert!(out.contains("false"), "disable must not use TLS: {out}");
}

#[test]
fn verify_full_connects_to_mariadb_over_tls() {
    let Some(tls) = tls_dir() else { return };
    TestDb::Mysql.url().expect("the MariaDB URL");
    let ca = tls.join("ca.crt");
    let url = format!(
        "mysql://root@localhost:3306/test?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        ca.display()
    );
    let (ok, out, err) = query(&url, MY_SSL);
    assert!(ok, "{err}");
    assert!(
        out.contains("TLS") || out.contains("AES") || out.contains("CHACHA"),
        "no cipher: {out}"
    );
    let (ok, out, err) = query("mysql://root@127.0.0.1:3306/test?ssl-mode=REQUIRED", MY_SSL);
    assert!(ok, "{err}");
    assert!(
        !out.contains("\"cipher\": \"\""),
        "REQUIRED without TLS: {out}"
    );
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let Some(tls) = tls_dir() else { return };
    let other = tls.join("other-ca.crt");
    for url in [
        format!(
            "postgres://postgres:pg-secret-pw@localhost:5432/test?sslmode=verify-ca&sslrootcert={}",
            other.display()
        ),
        format!(
            "mysql://root:my-secret-pw@localhost:3306/test?ssl-mode=VERIFY_CA&ssl-ca={}",
            other.display()
        ),
    ] {
        let (ok, out, err) = query(&url, "SELECT 1 AS one");
        assert!(!ok, "{url} connected: {out}");
        assert!(err.contains("TLS with `sslmode=verify-ca` failed"), "{err}");
        assert!(
            err.contains("sslrootcert"),
            "the hint names the setting: {err}"
        );
        assert!(!err.contains("secret-pw"), "the password leaked: {err}");
    }
}

#[test]
fn a_host_name_the_certificate_does_not_name_is_refused() {
    let Some(tls) = tls_dir() else { return };
    let ca = tls.join("ca.crt");
    // The certificate names `localhost`, not `127.0.0.1`.
    for url in [
        format!(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=verify-full&sslrootcert={}",
            ca.display()
        ),
        format!(
            "mysql://root@127.0.0.1:3306/test?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
            ca.display()
        ),
    ] {
        let (ok, out, err) = query(&url, "SELECT 1 AS one");
        assert!(!ok, "{url} connected: {out}");
        assert!(
            err.contains("TLS with `sslmode=verify-full` failed"),
            "{err}"
        );
        // verify-ca with the same CA passes: only the name was wrong.
        let (ok, _, err) = query(
            &url.replace("verify-full", "verify-ca")
                .replace("VERIFY_IDENTITY", "VERIFY_CA"),
            "SELECT 1 AS one",
        );
        assert!(ok, "{err}");
    }
}

#[test]
fn require_against_a_server_without_tls_is_refused() {
    let Some(_) = tls_dir() else { return };
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let (ok, out, err) = query(&format!("{url}?sslmode=require"), "SELECT 1 AS one");
    assert!(!ok, "connected without TLS: {out}");
    assert!(err.contains("TLS with `sslmode=require` failed"), "{err}");
    assert!(err.contains("does not support TLS"), "{err}");
    // The loopback default (`prefer`) still connects in the clear.
    let (ok, _, err) = query(&url, "SELECT 1 AS one");
    assert!(ok, "{err}");
}

#[test]
fn secrets_in_key_paths_and_passwords_never_appear_in_errors() {
    let Some(tls) = tls_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key-of-the-kingdom.pem");
    std::fs::write(&key, "not a key").unwrap();
    let url = format!(
        "postgres://postgres:pw-do-not-print@localhost:5432/test?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        tls.join("ca.crt").display(),
        tls.join("server.crt").display(),
        key.display()
    );
    let (ok, out, err) = query(&url, "SELECT 1 AS one");
    assert!(!ok, "connected with a broken key: {out}");
    assert!(!err.contains("kingdom"), "the key's path leaked: {err}");
    assert!(
        !err.contains("pw-do-not-print"),
        "the password leaked: {err}"
    );
}

#[test]
fn an_unknown_url_parameter_is_refused_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, err) = run_trellis(
        dir.path(),
        &[
            "query",
            "--url",
            "postgres://app@db.example:5432/x?sslmdoe=require",
            "SELECT 1",
        ],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(err.contains("unknown URL parameter `sslmdoe`"), "{err}");
    assert!(err.contains("did you mean `sslmode`?"), "{err}");
    // In a config file too, before anything is served.
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[databases.main]\nurl = \"mysql://root@127.0.0.1:3306/test?sslmode=require\"\n",
    )
    .unwrap();
    let (status, _, err) = run_trellis(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "served with an unknown parameter");
    assert!(err.contains("did you mean `ssl-mode`?"), "{err}");
}

#[test]
fn discrete_config_keys_demand_tls_of_a_served_database() {
    let Some(tls) = tls_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A server that is not loopback defaults to verify-full: `localhost` is loopback, so the
    // mode is written here, with the CA beside the config.
    std::fs::copy(tls.join("ca.crt"), dir.path().join("ca.crt")).unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[databases.main]\ntype = \"postgres\"\nhost = \"localhost\"\ndatabase = \"test\"\nuser = \"postgres\"\n\
         sslmode = \"verify-full\"\nsslrootcert = \"ca.crt\"\n",
    )
    .unwrap();
    let (status, out, err) = run_trellis(
        dir.path(),
        &["query", "--db", "main", PG_SSL, "--fetch", "one"],
        Duration::from_secs(60),
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("true"), "{out}");
    // The same served: the pool opens over TLS at start, and a wrong CA stops start-up.
    let server = Server::start(dir.path(), &[]);
    drop(server);
    std::fs::copy(tls.join("other-ca.crt"), dir.path().join("ca.crt")).unwrap();
    let (status, _, err) = run_trellis(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        Duration::from_secs(60),
    );
    assert!(!status.success(), "served with a CA that signed nothing");
    assert!(
        err.contains("TLS with `sslmode=verify-full` failed"),
        "{err}"
    );
}
