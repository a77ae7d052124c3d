//! Helpers for Trellis's end-to-end tests: the test databases' URLs, and the real `trellis`
//! binary started on a free port.
//!
//! The test command (`scripts/test`) starts the databases and exports their URLs as
//! `TRELLIS_TEST_PG_URL`, `TRELLIS_TEST_PGVECTOR_URL`, `TRELLIS_TEST_MYSQL_URL` and, for PgBouncer
//! in transaction mode, `TRELLIS_TEST_PGBOUNCER_URL` and `TRELLIS_TEST_PGBOUNCER_PGVECTOR_URL`. A test that
//! needs one fails when it is missing under `CI=true`, and is skipped (with a message) otherwise.

pub mod cpu;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The database servers the test command provides.
#[derive(Debug, Clone, Copy)]
pub enum TestDb {
    /// PostgreSQL 15 on 127.0.0.1:5432.
    Postgres,
    /// PostgreSQL 18 with pgvector, on its own port.
    PgVector,
    /// MariaDB on 127.0.0.1:3306.
    Mysql,
    /// PgBouncer in transaction mode in front of PostgreSQL 15 (`test`; any other database
    /// name reaches PostgreSQL 15's database of that name).
    PgBouncer,
    /// The same PgBouncer in front of PostgreSQL 18 + pgvector (`pgvector`).
    PgBouncerPgVector,
}

impl TestDb {
    /// The environment variable holding the URL.
    pub fn var(self) -> &'static str {
        match self {
            TestDb::Postgres => "TRELLIS_TEST_PG_URL",
            TestDb::PgVector => "TRELLIS_TEST_PGVECTOR_URL",
            TestDb::Mysql => "TRELLIS_TEST_MYSQL_URL",
            TestDb::PgBouncer => "TRELLIS_TEST_PGBOUNCER_URL",
            TestDb::PgBouncerPgVector => "TRELLIS_TEST_PGBOUNCER_PGVECTOR_URL",
        }
    }

    /// The URL, or `None` (after saying so) when it is not set outside CI.
    ///
    /// # Panics
    ///
    /// When the URL is not set and `CI=true`: a test that needs a database never passes silently.
    pub fn url(self) -> Option<String> {
        match std::env::var(self.var()) {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => panic!(
                "`{}` is not set and CI=true: run the tests through `scripts/test`",
                self.var()
            ),
            _ => {
                eprintln!(
                    "skipped: `{}` is not set (run the tests through `scripts/test`)",
                    self.var()
                );
                None
            }
        }
    }
}

/// The `trellis` binary built by `cargo build --workspace`: `$TRELLIS_BIN`, else the one beside
/// this test executable's `deps/` directory.
pub fn trellis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TRELLIS_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let bin = dir.join(format!("trellis{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "`{}` does not exist: run `cargo build -p trellis-host` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs `trellis ARGS` in `dir` to completion, with a deadline; returns status, stdout, stderr.
pub fn run_trellis(dir: &Path, args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = Command::new(trellis_bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trellis");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_with_deadline(&mut child, timeout).unwrap_or_else(|| {
        panic!(
            "`trellis {}` did not finish within {timeout:?}",
            args.join(" ")
        )
    });
    (status, join(out), join(err))
}

/// Like [`run_trellis`], with `stdin` written to the process's standard input.
pub fn run_trellis_with_stdin(
    dir: &Path,
    args: &[&str],
    stdin: &str,
    timeout: Duration,
) -> (ExitStatus, String, String) {
    let mut child = Command::new(trellis_bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start trellis");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_owned();
    let writer = thread::spawn(move || {
        use std::io::Write;
        let _ = input.write_all(text.as_bytes());
    });
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_with_deadline(&mut child, timeout).unwrap_or_else(|| {
        panic!(
            "`trellis {}` did not finish within {timeout:?}",
            args.join(" ")
        )
    });
    let _ = writer.join();
    (status, join(out), join(err))
}

/// A running `trellis serve`, killed on drop if still running.
pub struct Server {
    child: Child,
    addr: String,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Server {
    /// Starts `trellis serve --listen 127.0.0.1:0 EXTRA…` in `dir` and waits (up to 30 s) for the
    /// address line on stdout. On failure the panic shows the process's stderr.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(dir, extra, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_binary(&trellis_bin(), dir, extra, env)
    }

    /// Like [`Server::start_with_env`], with another `trellis` binary (a benchmark's baseline).
    pub fn start_binary(bin: &Path, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_within(bin, dir, extra, env, Duration::from_secs(30))
    }

    /// Like [`Server::start_binary`], waiting up to `wait` for the server to listen (a server
    /// under valgrind starts slowly).
    pub fn start_within(
        bin: &Path,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        wait: Duration,
    ) -> Server {
        let mut command = Command::new(bin);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(dir)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start trellis serve");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("trellis listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        match rx.recv_timeout(wait) {
            Ok(addr) => Server {
                child,
                addr,
                stderr: Some(stderr),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "trellis serve did not report its address within {wait:?}; its stderr:\n{}",
                    join(stderr)
                );
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET path` (e.g. `/v1/plugins`), as the dev-auth user `user` when given; the body as JSON.
    /// Panics when the server does not answer or the body is not JSON.
    pub async fn get_json(
        &self,
        path: &str,
        user: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.base_url()));
        if let Some(user) = user {
            request = request.header("x-trellis-user", user.to_string());
        }
        let response = request.send().await.expect("the server answers");
        response.json().await.expect("a JSON body")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself (after a signal), up to `timeout`; returns its
    /// status and everything it wrote to stderr.
    pub fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_with_deadline(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("trellis serve did not exit within {timeout:?}"));
        let stderr = self.stderr.take().map(join).unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn join(handle: thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_default()
}

fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for trellis") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh database on PostgreSQL 15 (`TRELLIS_TEST_POSTGRES_URL`): its name and URL; `None`
/// when PostgreSQL is not configured (outside CI).
pub async fn fresh_postgres_database(prefix: &str) -> Option<(String, String)> {
    let url = TestDb::Postgres.url()?;
    let name = unique(prefix).replace('-', "_");
    // A run that failed earlier under the same process id may have left it.
    drop_postgres_database(&name).await;
    postgres_admin(&format!("CREATE DATABASE {name}")).await;
    let base = url.rsplit_once('/').unwrap().0;
    Some((name.clone(), format!("{base}/{name}")))
}

/// Runs `sql` on PostgreSQL 15's test database (for what cannot run in a transaction).
async fn postgres_admin(sql: &str) {
    use sqlx::Connection;
    let url = TestDb::Postgres.url().unwrap();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Drops a database [`fresh_postgres_database`] made, closing its connections.
pub async fn drop_postgres_database(name: &str) {
    postgres_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}

/// A name unique to this process and call, for tables and pools (`prefix_PID_N`).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on 127.0.0.1, bound and released (for servers that cannot report a port they
/// picked themselves, or must be told one before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Waits until `condition` holds, checking every 10 ms, for at most `limit`; returns whether it
/// held. For conditions the code under test reaches on its own (a background task's work).
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Compares `actual` with the expected output stored at `expected_path` (a UI test's `.err`
/// file). With `TRELLIS_BLESS=1` it writes `actual` there instead. Returns a readable mismatch.
pub fn expect_output(name: &str, expected_path: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        std::fs::write(expected_path, actual).expect("write the expected output");
        return None;
    }
    let expected = std::fs::read_to_string(expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {}: run with TRELLIS_BLESS=1",
            expected_path.display()
        )
    });
    (actual != expected).then(|| format!("{name}:\n--- expected\n{expected}--- got\n{actual}"))
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read a directory") {
        let path = entry.expect("a directory entry").path();
        let dest = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            copy_tree(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy a file");
        }
    }
}

/// A test plugin built by `scripts/build-plugins` (`plugins/testing/wasm/NAME`).
pub fn test_plugin(name: &str) -> PathBuf {
    repo().join("plugins/testing/wasm").join(name)
}

/// Writes `bytes` beside `dest`, then renames: a watcher never sees half a file.
pub fn replace_file(dest: &Path, bytes: &[u8]) {
    let tmp = dest.with_file_name(format!(
        ".{}.tmp",
        dest.file_name().expect("a file name").to_string_lossy()
    ));
    std::fs::write(&tmp, bytes).expect("write the new content");
    std::fs::rename(&tmp, dest).expect("rename it into place");
}

/// A temporary copy of the repository's example (what `trellis serve` serves in the
/// repository): `trellis.toml`, `policies/`, `workflows/`, `migrations/` and the built example
/// plugins (`plugins/*.wasm`, from `scripts/build-plugins`).
pub fn example_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let root = repo();
    std::fs::copy(root.join("trellis.toml"), dir.path().join("trellis.toml"))
        .expect("copy trellis.toml");
    for sub in ["policies", "workflows", "migrations"] {
        copy_tree(&root.join(sub), &dir.path().join(sub));
    }
    std::fs::create_dir_all(dir.path().join("plugins")).expect("create plugins/");
    for entry in std::fs::read_dir(root.join("plugins")).expect("read plugins/") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(
                &path,
                dir.path()
                    .join("plugins")
                    .join(path.file_name().expect("name")),
            )
            .expect("copy a plugin");
        }
    }
    dir
}

/// A temporary folder to serve: `trellis.toml` with dev auth and `extra_config`, the workflow
/// `workflows/w.toml`, the rules `policies/test.rules.json` and an empty `plugins/`.
pub fn custom_dir(workflow: &str, rules: &str, extra_config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        format!("[auth]\nmode = \"dev\"\n{extra_config}"),
    )
    .unwrap();
    for sub in ["workflows", "policies", "plugins"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(dir.path().join("workflows/w.toml"), workflow).unwrap();
    std::fs::write(dir.path().join("policies/test.rules.json"), rules).unwrap();
    dir
}

/// `POST /v1/workflows/WORKFLOW/run` with `body`, as the dev-mode user `user`: the status and
/// the JSON body (`null` when the body is not JSON).
pub async fn run_workflow(
    server: &Server,
    workflow: &str,
    user: &serde_json::Value,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/workflows/{workflow}/run", server.base_url()))
        .header("x-trellis-user", user.to_string())
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Rules (`*.rules.json` entries) that let anyone run and view `workflow`, and execute, supply
/// inputs to and read the output of each of `nodes`.
pub fn allow_rules(workflow: &str, nodes: &[&str]) -> Vec<serde_json::Value> {
    let rule = |id: String, resource_type: &str, resource_id: &str, permission: &str| {
        serde_json::json!({"id": id, "resource_type": resource_type, "resource_id": resource_id,
            "permission": permission, "effect": "allow"})
    };
    let mut rules = vec![
        rule(format!("{workflow}-run"), "workflow", workflow, "execute"),
        rule(format!("{workflow}-view"), "workflow", workflow, "view"),
    ];
    for node in nodes {
        for permission in ["execute", "write_input", "read_output"] {
            rules.push(rule(
                format!("{workflow}-{node}-{permission}"),
                "node",
                node,
                permission,
            ));
        }
    }
    rules
}

/// A workflow `w` whose one node, the `stamp` test plugin, emits `{"marker": MARKER}`: an answer
/// tells which bundle's workflow ran (the fleet tests and benchmark publish one per generation).
pub fn stamp_workflow(marker: u64) -> String {
    format!(
        "[[nodes]]\nid = \"stamp\"\ntype = \"plugin:stamp\"\n[nodes.config]\nrecords = [{{ marker = {marker} }}]\n"
    )
}

/// `dir/bundle`, a bundle to publish: the `stamp` plugin, rules letting anyone run `w` (and be
/// an admin, for `GET /v1/fleet`), and `w` with `marker`.
pub fn stamp_bundle(dir: &Path, marker: u64) -> PathBuf {
    let b = dir.join("bundle");
    for sub in ["workflows", "policies", "plugins"] {
        std::fs::create_dir_all(b.join(sub)).expect("create a bundle directory");
    }
    std::fs::copy(test_plugin("test_stamp.wasm"), b.join("plugins/stamp.wasm"))
        .expect("copy the stamp plugin");
    let mut rules = allow_rules("w", &["stamp"]);
    rules.push(
        serde_json::json!({"id": "admin", "resource_type": "workflow",
        "resource_id": "trellis:api", "permission": "admin", "effect": "allow"}),
    );
    std::fs::write(
        b.join("policies/allow.rules.json"),
        serde_json::json!({ "rules": rules }).to_string(),
    )
    .expect("write the rules");
    std::fs::write(b.join("workflows/w.toml"), stamp_workflow(marker)).expect("write w");
    b
}

/// One run of [`stamp_workflow`]'s `w` on `base` as user `u`: the HTTP status (0 when the host
/// did not answer), the generation the answer names, and the marker it carries.
pub async fn run_stamp(client: &reqwest::Client, base: &str) -> (u16, Option<u64>, Option<u64>) {
    let response = client
        .post(format!("{base}/v1/workflows/w/run"))
        .header("x-trellis-user", r#"{"user_id": "u"}"#)
        .body("{}")
        .send()
        .await;
    let Ok(response) = response else {
        return (0, None, None);
    };
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (
        status,
        body["generation"].as_u64(),
        body["results"]["stamp"]["data"][0]["marker"].as_u64(),
    )
}
