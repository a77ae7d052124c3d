//! The real `trellis serve` over HTTP: health, metrics, the embedded default, configuration
//! errors, secrets kept out of output, and a clean exit on SIGTERM and SIGINT.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use trellis_tests::{Server, TestDb, run_trellis};

fn signal(server: &Server, sig: Signal) {
    kill(Pid::from_raw(server.pid() as i32), sig).expect("send signal");
}

#[tokio::test]
async fn serve_in_empty_folder_health_metrics_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();

    // The embedded default created its SQLite database.
    assert!(dir.path().join("data/trellis.db").is_file());

    let health = http
        .get(format!("{}/health", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    // Without a caller (auth mode `none` here) the listings answer 401: they show database
    // users and hosts. `[server] public` opens them.
    for path in ["/v1/pools", "/metrics", "/v1/plugins", "/v1/workflows"] {
        let response = http
            .get(format!("{}{path}", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    drop(server);
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[server]\npublic = [\"metrics\", \"pools\"]\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let get = |path: &str| http.get(format!("{}{path}", server.base_url())).send();
    assert_eq!(get("/health").await.unwrap().status(), 200);
    let pools: Value = get("/v1/pools").await.unwrap().json().await.unwrap();
    assert_eq!(pools["pools"][0]["name"], "main");
    assert_eq!(pools["pools"][0]["database_type"], "sqlite");
    assert_eq!(pools["pools"][0]["connections"]["total"], 2);
    let stats = get("/v1/pools/main/stats").await.unwrap();
    assert_eq!(stats.status(), 200);
    let stats: Value = stats.json().await.unwrap();
    assert_eq!(stats["connections"]["created"], 2);
    let unknown = get("/v1/pools/nope/stats").await.unwrap();
    assert_eq!(unknown.status(), 404);
    let body: Value = unknown.json().await.unwrap();
    assert_eq!(
        body["error"]["message"],
        "no pool named `nope`; configured: main"
    );

    let missing = http
        .get(format!("{}/no/such/route", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let metrics = http
        .get(format!("{}/metrics", server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.contains(&format!("trellis_build_info{{version=\"{version}\"}} 1")),
        "{text}"
    );
    let uptime: f64 = metric_value(&text, "trellis_uptime_seconds ").expect("uptime");
    assert!(uptime > 0.0, "{text}");
    assert_eq!(
        metric_value(
            &text,
            "trellis_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} "
        ),
        Some(1.0),
        "{text}"
    );
    // Unknown paths are counted under one label, not one series per path.
    assert_eq!(
        metric_value(
            &text,
            "trellis_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} "
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("/no/such/route"), "{text}");
    assert_eq!(
        metric_value(
            &text,
            "trellis_pool_connections{pool=\"main\",state=\"idle\"} "
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "trellis_pool_connections_created_total{pool=\"main\"} "
        ),
        Some(2.0),
        "{text}"
    );

    signal(&server, Signal::SIGTERM);
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
    assert!(stderr.contains("signal=\"SIGTERM\""), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
fn sigint_stops_cleanly_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    signal(&server, Signal::SIGINT);
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert!(status.success(), "exit {status:?}; stderr:\n{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--log-format", "json"]);
    signal(&server, Signal::SIGTERM);
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{stderr}");
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

#[test]
fn config_file_in_current_directory_is_used() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[paths]\ndata = \"state\"\n[databases.local]\ntype = \"sqlite\"\npath = \"state/local.db\"\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    assert!(dir.path().join("state/local.db").is_file());
    assert!(!dir.path().join("data").exists());
    signal(&server, Signal::SIGTERM);
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("config=trellis.toml"), "{stderr}");
}

#[test]
fn broken_config_names_file_line_and_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[databases.main]\ntype = \"sqlite\"\npaht = \"x.db\"\n",
    )
    .unwrap();
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["serve", "--config", "broken.toml"],
        Duration::from_secs(30),
    );
    // 78: a configuration error, not a runtime failure (see `trellis --help`).
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("error: broken.toml:6:1: key `databases.main.paht`: unknown field `paht`"),
        "{stderr}"
    );
    assert!(stderr.contains("help:"), "{stderr}");
    // Nothing was created for a configuration that was refused.
    assert!(!dir.path().join("data").exists());
}

#[tokio::test]
async fn password_never_appears_in_logs_or_metrics() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    // The test server trusts loopback, so any password logs in: the point is where it shows up.
    let secret = "pa55-w0rd-never-shown";
    let with_password = url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{secret}@"),
        1,
    );
    assert_ne!(with_password, url, "unexpected test URL shape: {url}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[server]\npublic = [\"metrics\"]\n[databases.warehouse]\nurl = \"${WAREHOUSE_URL}\"\n",
    )
    .unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &[],
        &[("WAREHOUSE_URL", &with_password), ("RUST_LOG", "trace")],
    );
    let metrics = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(secret));
    signal(&server, Signal::SIGTERM);
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("database=warehouse"), "{stderr}");
    assert!(!stderr.contains(secret), "password in logs:\n{stderr}");

    // And not in the error when the server is unreachable.
    std::fs::write(
        dir.path().join("down.toml"),
        format!("[databases.warehouse]\nurl = \"postgres://app:{secret}@127.0.0.1:1/test\"\n"),
    )
    .unwrap();
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["serve", "--config", "down.toml"],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("cannot open database `warehouse` (postgresql://app@127.0.0.1:1/test)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "{stderr}"
    );
}

/// The value of the first sample line starting with `prefix`.
fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_request_in_flight_at_sigterm_is_answered_before_exit() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let addr = server.base_url().trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // Half a request: the server has started reading it when the stop signal arrives.
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: trellis\r\n")
        .unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let the server read the partial head
    signal(&server, Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200)); // the server is now draining
    conn.write_all(b"Connection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
    let (status, stderr) = server.wait(Duration::from_secs(15));
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("draining in-flight requests"), "{stderr}");
}
