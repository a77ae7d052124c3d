//! Issue 18 §2 against the real binary: no connection is accepted before start-up has finished;
//! `/ready` says whether every pool answers and lists the files that failed to load; every
//! answer carries an `X-Request-Id` (the caller's, when well formed) and the log lines of a
//! request carry it with the user, workflow and run id; exit codes tell a configuration error
//! (78) from a runtime failure (1).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use trellis_tests::{Server, TestDb, custom_dir, free_port, run_trellis, trellis_bin};

/// A start-up that takes a while: a migration that counts to 30 million in SQLite.
#[test]
fn no_connection_is_accepted_before_start_up_finishes() {
    let dir = custom_dir("", "{}", "[migrations]\ndir = \"migrations\"\n");
    std::fs::remove_file(dir.path().join("workflows/w.toml")).unwrap();
    let m = dir.path().join("migrations/001_slow");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("migration.toml"), "description = \"slow\"\n").unwrap();
    std::fs::write(
        m.join("up.sql"),
        "CREATE TABLE counted AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000000) SELECT count(*) AS n FROM c;\n",
    )
    .unwrap();
    std::fs::write(m.join("down.sql"), "DROP TABLE counted;\n").unwrap();
    let port = free_port();
    let mut child = Command::new(trellis_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let announced = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().unwrap();
    let flag = announced.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("trellis listening on") {
                flag.store(true, Ordering::SeqCst);
            }
        }
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused_while_starting = 0;
    let accepted_early = loop {
        // Read the flag first: a connection accepted before the line is printed is early.
        let started = announced.load(Ordering::SeqCst);
        let connected = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        if started {
            break false;
        }
        if connected {
            // The host binds, then prints the line at once, and the reader thread may not
            // have seen it yet: a connection in that instant is not early. One accepted before
            // start-up finished would come seconds before the line (the migration above).
            let grace = Instant::now() + Duration::from_millis(500);
            while !announced.load(Ordering::SeqCst) && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(5));
            }
            break !announced.load(Ordering::SeqCst);
        }
        refused_while_starting += 1;
        assert!(Instant::now() < deadline, "the host never started");
        assert!(child.try_wait().unwrap().is_none(), "the host exited");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !accepted_early,
        "a connection was accepted before start-up finished"
    );
    // The start-up took long enough to be probed: this test cannot pass vacuously.
    assert!(
        refused_while_starting >= 3,
        "start-up too fast to test: {refused_while_starting}"
    );
}

/// A byte relay to PostgreSQL that the test can cut: the database itself stays up for the other
/// tests, while this host loses it.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = cut.clone();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((mut client, _)) = accepted else { return };
                        if flag.load(Ordering::SeqCst) {
                            let _ = client.shutdown().await;
                            continue;
                        }
                        links.spawn(async move {
                            if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                        });
                    }
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if flag.load(Ordering::SeqCst) {
                            // Cut: every relayed connection is dropped.
                            links.abort_all();
                        }
                    }
                }
            }
        });
        Relay { addr, cut, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn get(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", server.base_url()));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

// Multi-threaded: the relay runs while `Server::start` blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_whether_every_pool_answers_and_lists_what_failed_to_load() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    // postgres://USER@HOST:PORT/DB: the relay stands between the host and HOST:PORT.
    let (head, rest) = pg.split_once('@').unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let upstream: SocketAddr = authority.replace("localhost", "127.0.0.1").parse().unwrap();
    let relay = Relay::start(upstream).await;
    let path = path.split('?').next().unwrap();
    let through = format!(
        "{head}@127.0.0.1:{}/{path}?sslmode=disable",
        relay.addr.port()
    );
    let dir = custom_dir(
        "this is not a workflow = [",
        "{}",
        &format!("[databases.pg]\nurl = \"{through}\"\nacquire_timeout = \"1s\"\n"),
    );
    let server = Server::start(dir.path(), &[]);

    let (status, _, body) = get(&server, "/ready", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["pools"], json!({"pg": "ok"}), "{body}");
    // A broken file is listed, without its error for an anonymous caller ...
    assert_eq!(
        body["not_loaded"],
        json!([{"file": "workflows/w.toml", "error": null}]),
        "{body}"
    );
    // ... and with it for an authenticated one.
    let user = json!({"user_id": "ops"}).to_string();
    let (_, _, body) = get(&server, "/ready", &[("x-trellis-user", &user)]).await;
    assert!(
        body["not_loaded"][0]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{body}"
    );

    relay.cut.store(true, Ordering::SeqCst);
    // The relay drops its connections within 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let (status, _, body) = get(&server, "/ready", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["pools"]["pg"], "down", "{body}");
    let reason = body["reasons"][0].as_str().unwrap_or_default();
    assert!(reason.starts_with("pool `pg` "), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/ready waited {:?}",
        started.elapsed()
    );
    // Liveness is another question: the process is alive.
    let (status, _, _) = get(&server, "/health", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_the_log_lines_of_a_request_carry_it() {
    let workflow = "[[nodes]]\nid = \"n\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1 AS one\" }\n";
    // Nobody may run `w`: a denied run is logged at `info`, inside the request's span.
    let dir = custom_dir(workflow, "{}", "");
    let server = Server::start(dir.path(), &[]);
    let id_of = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (_, headers, _) = get(&server, "/health", &[("x-request-id", "probe-42")]).await;
    assert_eq!(id_of(&headers).as_deref(), Some("probe-42"));
    let (_, headers, _) = get(&server, "/health", &[]).await;
    let generated = id_of(&headers).expect("a generated id");
    assert_eq!(generated.len(), 36, "{generated}");
    // An id that is not plain is replaced, never echoed or logged.
    let (_, headers, _) = get(&server, "/health", &[("x-request-id", "a\"b{c}")]).await;
    assert_ne!(id_of(&headers).as_deref(), Some("a\"b{c}"));
    // Errors carry one too.
    let (status, headers, _) = get(&server, "/no/such/route", &[]).await;
    assert_eq!(status, 404);
    assert!(id_of(&headers).is_some());

    let response = reqwest::Client::new()
        .post(format!("{}/v1/workflows/w/run", server.base_url()))
        .header(
            "x-trellis-user",
            json!({"user_id": "ann \"the\" analyst"}).to_string(),
        )
        .header("x-request-id", "run-7")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(id_of(response.headers()).as_deref(), Some("run-7"));
    let body: Value = response.json().await.unwrap();
    let run_id = body["run_id"].as_str().unwrap().to_owned();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let (_, log) = server.wait(Duration::from_secs(30));
    let line = log
        .lines()
        .find(|l| l.contains("run denied"))
        .unwrap_or_else(|| panic!("no `run denied` line:\n{log}"));
    for field in [
        "request_id=run-7".to_owned(),
        "route=/v1/workflows/{name}/run".to_owned(),
        // Escaped: the quotes in the user id cannot end the field.
        r#"user_id="ann \"the\" analyst""#.to_owned(),
        r#"workflow="w""#.to_owned(),
        format!("run_id={run_id}"),
    ] {
        assert!(line.contains(&field), "no `{field}` in: {line}");
    }
    assert!(!log.contains("a\"b{c}"), "{log}");
}

#[test]
fn exit_codes_tell_a_configuration_error_from_a_runtime_failure() {
    let dir = tempfile::tempdir().unwrap();
    let t = Duration::from_secs(60);
    // A typo in trellis.toml: 78.
    std::fs::write(
        dir.path().join("typo.toml"),
        "[server]\nlissen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (status, _, stderr) = run_trellis(dir.path(), &["serve", "--config", "typo.toml"], t);
    assert_eq!(status.code(), Some(78), "{stderr}");
    // A policy that does not load: 78.
    std::fs::create_dir_all(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/bad.cedar"),
        "permit (principal, action, resource",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (status, _, stderr) = run_trellis(dir.path(), &["serve", "--config", "policy.toml"], t);
    assert_eq!(status.code(), Some(78), "{stderr}");
    std::fs::remove_file(dir.path().join("policies/bad.cedar")).unwrap();
    // A database that does not answer: 1.
    std::fs::write(
        dir.path().join("down.toml"),
        "[databases.main]\nurl = \"postgres://app@127.0.0.1:1/test\"\nacquire_timeout = \"1s\"\n",
    )
    .unwrap();
    let (status, _, stderr) = run_trellis(dir.path(), &["serve", "--config", "down.toml"], t);
    assert_eq!(status.code(), Some(1), "{stderr}");
    // A port in use: 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    std::fs::write(dir.path().join("ok.toml"), "").unwrap();
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &[
            "serve",
            "--config",
            "ok.toml",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        t,
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    // Bad arguments: 2 (clap's).
    let (status, _, _) = run_trellis(dir.path(), &["serve", "--no-such-flag"], t);
    assert_eq!(status.code(), Some(2));
    let (_, help, _) = run_trellis(dir.path(), &["--help"], t);
    assert!(help.contains("78  a configuration error"), "{help}");
}
