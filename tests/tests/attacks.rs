//! Issue 17's attacks, each performed against the real `trellis serve` over HTTP: a request past
//! its deadline, DNS rebinding into a dev-mode server, a forged log line through a user id, a
//! JWT with a `crit` header, and the modes of the files that hold the data and the audit trail.
//! Each test failed on the code before its fix (`faabd26`).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sha2::Sha256;
use trellis_tests::{Server, TestDb, allow_rules, custom_dir, example_dir, run_workflow};

fn admin() -> Value {
    json!({"user_id": "root", "roles": ["admin"]})
}

/// Stops `server` with SIGTERM and returns everything it logged.
fn stop(server: Server) -> String {
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGTERM).unwrap();
    server.wait(Duration::from_secs(30)).1
}

#[tokio::test]
async fn a_request_past_request_timeout_answers_504_with_a_json_body() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let workflow = r#"
database = "pg"
[[nodes]]
id = "slow"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT pg_sleep(3) AS slept" }
timeout = "20s"
"#;
    let rules = r#"{"rules": [
  {"id": "run", "resource_type": "workflow", "resource_id": "w", "permission": "execute", "effect": "allow"},
  {"id": "node", "resource_type": "node", "resource_id": "slow", "permission": "execute", "effect": "allow"}
]}"#;
    let dir = custom_dir(
        workflow,
        rules,
        &format!("[server]\nrequest_timeout = \"1s\"\n[databases.pg]\nurl = \"{pg}\"\n"),
    );
    let server = Server::start(dir.path(), &[]);
    let started = std::time::Instant::now();
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    // 408 would say the client was slow; the server was.
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["kind"], "timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request_timeout"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "waited for the statement"
    );
}

#[tokio::test]
async fn dev_mode_refuses_a_foreign_host_or_origin() {
    let dir = example_dir();
    let server = Server::start(dir.path(), &[]);
    let url = format!("{}/v1/audit?limit=1", server.base_url());
    let client = reqwest::Client::new();
    let get = |headers: Vec<(&'static str, &'static str)>| {
        let mut request = client
            .get(&url)
            .header("x-trellis-user", admin().to_string());
        for (k, v) in headers {
            request = request.header(k, v);
        }
        request.send()
    };
    // A page at attacker.example whose name now resolves to 127.0.0.1 (DNS rebinding).
    let response = get(vec![
        ("host", "attacker.example"),
        ("origin", "http://attacker.example"),
    ])
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "forbidden", "{body}");
    assert!(body.get("records").is_none(), "{body}");
    // A loopback Host, but a request made by a foreign page (CORS simple request).
    let response = get(vec![("origin", "http://attacker.example")])
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let response = get(vec![("origin", "null")]).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    // The server's own clients still work.
    for headers in [
        vec![],
        vec![("host", "localhost:8700")],
        vec![("origin", "http://127.0.0.1:3000")],
    ] {
        let response = get(headers).await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}

#[tokio::test]
async fn a_newline_in_a_user_id_is_refused_and_forges_no_log_line() {
    let dir = example_dir();
    let server = Server::start(dir.path(), &[]);
    let forged = "2031-01-01T00:00:00.000000Z  INFO trellis_host::server: admin access granted";
    let user = json!({"user_id": format!("eng001\n{forged}"),
                      "attributes": {"department": "engineering"}});
    let (status, body) = run_workflow(&server, "finance_report", &user, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control character"),
        "{body}"
    );
    let log = stop(server);
    assert!(
        !log.lines().any(|l| l.starts_with("2031-01-01")),
        "a forged line reached the log:\n{log}"
    );
}

#[tokio::test]
async fn a_jwt_with_a_crit_header_is_refused() {
    const KEY: &str = "e2e-hs256-key-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        format!(
            "[auth]\nmode = \"jwt\"\nalgorithm = \"HS256\"\nkey = \"{KEY}\"\naudience = \"e2e\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = |header: Value| {
        let signing_input = format!(
            "{}.{}",
            b64(&header),
            b64(&json!({"sub": "alice", "aud": "e2e", "exp": exp}))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{sig}")
    };
    let whoami = |token: String| {
        reqwest::Client::new()
            .get(format!("{}/v1/whoami", server.base_url()))
            .bearer_auth(token)
            .send()
    };
    // The same token without `crit` is good: only the header differs.
    let plain = whoami(token(json!({"alg": "HS256", "typ": "JWT"})))
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 200);
    let critical = whoami(token(
        json!({"alg": "HS256", "typ": "JWT", "crit": ["x-must-check"], "x-must-check": true}),
    ))
    .await
    .unwrap();
    assert_eq!(critical.status().as_u16(), 401);
    let body: Value = critical.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`crit`"),
        "{body}"
    );
}

#[tokio::test]
async fn the_database_and_audit_files_are_the_host_users_alone() {
    let dir = example_dir();
    let server = Server::start(dir.path(), &[]);
    // One run, so the audit trail has records.
    let user = json!({"user_id": "hr001", "roles": ["hr_manager"],
                      "attributes": {"department": "hr", "is_manager": true}});
    let (status, body) = run_workflow(&server, "finance_report", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    stop(server);
    let mode = |p: &str| {
        std::fs::metadata(dir.path().join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data"), 0o700, "data/");
    assert_eq!(
        mode("data/trellis.db"),
        0o600,
        "data/trellis.db holds the SSNs"
    );
    assert_eq!(mode("data/audit.jsonl"), 0o600, "data/audit.jsonl");
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("trellis.db") {
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o077,
                0,
                "{name} is readable by others"
            );
        }
    }
}

/// Issue 17 §3: a node timeout answered 504 but left its statement running on the server; ten
/// such runs held every connection, and an unrelated query waited for one. Now the statement is
/// stopped on the server when its node times out (or its run is dropped).
#[tokio::test]
async fn timed_out_nodes_leave_nothing_running_on_the_server() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let marker = trellis_tests::unique("abandoned_marker");
    let workflows = [
        (
            "slow",
            format!(
                "database = \"pg\"\n[[nodes]]\nid = \"nap\"\ntype = \"AsyncSQLDatabaseNode\"\n\
                 config = {{ query = \"SELECT pg_sleep(5) AS slept -- {marker}\" }}\ntimeout = \"200ms\"\n"
            ),
            "nap",
        ),
        (
            "quick",
            "database = \"pg\"\n[[nodes]]\nid = \"one\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1 AS one\" }\n"
                .to_owned(),
            "one",
        ),
    ];
    let mut rules = Vec::new();
    for (name, _, node) in &workflows {
        rules.push(
            json!({"id": format!("{name}-run"), "resource_type": "workflow", "resource_id": name,
            "permission": "execute", "effect": "allow"}),
        );
        for permission in ["execute", "read_output"] {
            rules.push(
                json!({"id": format!("{node}-{permission}"), "resource_type": "node",
                "resource_id": node, "permission": permission, "effect": "allow"}),
            );
        }
    }
    let dir = custom_dir(
        &workflows[0].1,
        &json!({ "rules": rules }).to_string(),
        &format!(
            "[databases.pg]\nurl = \"{pg}\"\nmax_connections = 10\nacquire_timeout = \"10s\"\n"
        ),
    );
    std::fs::write(dir.path().join("workflows/slow.toml"), &workflows[0].1).unwrap();
    std::fs::write(dir.path().join("workflows/quick.toml"), &workflows[1].1).unwrap();
    std::fs::remove_file(dir.path().join("workflows/w.toml")).unwrap();
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});

    // 50 timed-out runs, ten at a time.
    for _ in 0..5 {
        let runs: Vec<_> = (0..10)
            .map(|_| run_workflow(&server, "slow", &user, json!({})))
            .collect();
        for (status, body) in futures_util::future::join_all(runs).await {
            assert_eq!(status, 504, "{body}");
        }
    }
    // The pool serves at once: an unrelated query does not wait for a connection.
    let started = std::time::Instant::now();
    let (status, body) = run_workflow(&server, "quick", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?} for a connection",
        started.elapsed()
    );
    // And nothing is left running on the server (the cancels land within moments).
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    let count = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
        )
        .bind(&marker)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut left = count().await;
    while left > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = count().await;
    }
    assert_eq!(
        left, 0,
        "statements still running on the server after their nodes timed out"
    );
}

/// A folder serving nothing but `/health`, with `server` as its `[server]` table.
fn bare_server(server: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        format!("[server]\n{server}"),
    )
    .unwrap();
    let running = Server::start(dir.path(), &[]);
    (dir, running)
}

fn connect(server: &Server) -> std::net::TcpStream {
    let addr = server.base_url().trim_start_matches("http://").to_owned();
    std::net::TcpStream::connect(addr).unwrap()
}

/// Reads until the server closes the connection or `limit` passes; whether it closed, and after
/// how long.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> (bool, Duration) {
    use std::io::Read;
    let started = std::time::Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, started.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, started.elapsed());
            }
            Err(_) => return (true, started.elapsed()),
        }
    }
}

/// Reads one whole `/health` response (its body is one JSON object).
fn read_response(stream: &mut std::net::TcpStream, limit: Duration) -> Option<String> {
    use std::io::Read;
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with(b"}") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&text).into_owned())
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n";

#[test]
fn a_client_that_sends_half_a_request_head_is_disconnected() {
    use std::io::Write;
    let (_dir, server) = bare_server("header_read_timeout = \"1s\"\n");
    let mut slow = connect(&server);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let (closed, after) = closed_within(&mut slow, Duration::from_secs(6));
    assert!(
        closed,
        "a half-sent request head kept its connection open for {after:?}"
    );
    assert!(
        after >= Duration::from_millis(900),
        "closed too early: {after:?}"
    );
    // A client that completes its head in time is served.
    let mut good = connect(&server);
    good.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    good.write_all(b"Host: localhost\r\n\r\n").unwrap();
    let response = read_response(&mut good, Duration::from_secs(5)).expect("an answer");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed() {
    use std::io::Write;
    let (_dir, server) = bare_server("keep_alive_timeout = \"1s\"\n");
    let mut client = connect(&server);
    client.write_all(HEALTH).unwrap();
    read_response(&mut client, Duration::from_secs(5)).expect("an answer");
    let (closed, after) = closed_within(&mut client, Duration::from_secs(6));
    assert!(closed, "an idle connection stayed open for {after:?}");
}

#[test]
fn connections_past_the_limit_wait_until_one_closes() {
    use std::io::Write;
    let (_dir, server) = bare_server("max_connections = 2\nheader_read_timeout = \"30s\"\n");
    // Two clients hold both places (each mid-way through a request head).
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = connect(&server);
            c.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect(&server);
    third.write_all(HEALTH).unwrap();
    assert!(
        read_response(&mut third, Duration::from_millis(800)).is_none(),
        "a third connection was served past `max_connections = 2`"
    );
    held.pop();
    let response =
        read_response(&mut third, Duration::from_secs(5)).expect("served once a place was free");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

/// Issue 17 §3: a looping masking plugin over 16 values held a request for 16.2 s against a
/// 5 s `request_timeout`: one call per value, each up to `call_timeout`, on an async worker.
/// Now one call masks the field's values, within the request's budget, and what it did not
/// mask is redacted.
#[tokio::test]
async fn a_looping_masking_plugin_is_bounded_by_one_call_and_the_request_budget() {
    let workflow = "[[nodes]]\nid = \"people\"\ntype = \"AsyncSQLDatabaseNode\"\n\
        config = { query = \"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 16) SELECT i, 'secret-' || i AS f FROM n\" }\n";
    let rules = json!({"rules": allow_rules("w", &["people"]), "masking": [
        {"resource_id": "people", "field_path": "f", "mask_type": "plugin:mask-loop"}
    ]});
    for (config, limit) in [
        // The plugin's own deadline (1 s) comes first: one call, not sixteen.
        (
            "[server]\nrequest_timeout = \"5s\"\n[plugins]\ncall_timeout = \"1s\"\n",
            Duration::from_millis(2500),
        ),
        // The request's budget comes first.
        (
            "[server]\nrequest_timeout = \"1s\"\n[plugins]\ncall_timeout = \"30s\"\n",
            Duration::from_millis(1500),
        ),
    ] {
        let dir = custom_dir(workflow, &rules.to_string(), config);
        std::fs::copy(
            trellis_tests::repo().join("plugins/testing/wasm/test_mask_loop.wasm"),
            dir.path().join("plugins/test_mask_loop.wasm"),
        )
        .unwrap();
        let server = Server::start(dir.path(), &[]);
        let started = std::time::Instant::now();
        let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{config}: {body}");
        assert!(took < limit, "{config}: the request took {took:?}");
        let rows = body["results"]["people"]["result"]["data"]
            .as_array()
            .unwrap();
        assert_eq!(rows.len(), 16);
        assert!(rows.iter().all(|r| r["f"] == "[REDACTED]"), "{body}");
        assert!(!body.to_string().contains("secret-"), "{body}");
    }
}

/// Issue 17 §5: the `hash` mask was an unkeyed SHA-256 prefix, so a masked SSN could be
/// recovered by hashing every SSN. It is keyed now, a keyed rule without a key does not load,
/// and the plain form must be asked for (`"unkeyed": true`).
#[tokio::test]
async fn the_hash_mask_cannot_be_reversed_by_enumeration() {
    use sha2::Digest;
    let ssn = "123-45-6789";
    let plain = hex_prefix(&sha2::Sha256::digest(ssn.as_bytes()));
    let workflow = format!(
        "[[nodes]]\nid = \"people\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = {{ query = \"SELECT '{ssn}' AS ssn\" }}\n"
    );
    let rules = |unkeyed: bool| {
        let mut mask = json!({"resource_id": "people", "field_path": "ssn", "mask_type": "hash"});
        if unkeyed {
            mask["unkeyed"] = json!(true);
        }
        json!({"rules": allow_rules("w", &["people"]), "masking": [mask]}).to_string()
    };
    // No key: the host refuses to start, naming the rule and what to set.
    let dir = custom_dir(&workflow, &rules(false), "");
    let (status, _, err) = trellis_tests::run_trellis(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "served a keyed hash mask without a key");
    assert!(
        err.contains("a `hash` mask is keyed, and no key is set"),
        "{err}"
    );
    assert!(err.contains("test.rules.json"), "{err}");

    // With a key: the masked value is not the SHA-256 an attacker can compute.
    let dir = custom_dir(
        &workflow,
        &rules(false),
        "[policy]\nhmac_key = \"k-0123456789abcdef\"\n",
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let masked = body["results"]["people"]["result"]["data"][0]["ssn"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(masked.len(), 16);
    assert_ne!(masked, plain, "the keyed hash is the plain SHA-256");
    drop(server);

    // Asked for in so many words, the plain form is the Python SDK's.
    let dir = custom_dir(&workflow, &rules(true), "");
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"]["people"]["result"]["data"][0]["ssn"],
        plain.as_str()
    );
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..16].to_owned()
}

/// Issue 17 §5: a workflow with `query = "$inputs.q"` loaded and ran the caller's SQL. Such a
/// workflow (and a connection into a `query`) is refused at load now.
#[tokio::test]
async fn an_input_never_becomes_sql() {
    let rules = json!({ "rules": allow_rules("w", &["q"]) }).to_string();
    let from_input = "[inputs.q]\ntype = \"string\"\n[[nodes]]\nid = \"q\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"$inputs.q\" }\n";
    let dir = custom_dir(from_input, &rules, "");
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(
        &server,
        "w",
        &json!({"user_id": "u"}),
        json!({"inputs": {"q": "SELECT name FROM sqlite_master"}}),
    )
    .await;
    assert_eq!(status, 404, "the caller's SQL ran: {body}");
    let listing = server
        .get_json("/v1/workflows", Some(&json!({"user_id": "u"})))
        .await;
    let errors = listing.to_string();
    assert!(errors.contains("an input can never become SQL"), "{errors}");

    // Nor through a connection from another node's output.
    let via_connection = "[[nodes]]\nid = \"src\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 'SELECT 1' AS sql\" }\n\
        [[nodes]]\nid = \"q\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 2\" }\n\
        [[connections]]\nfrom = \"src.result.data\"\nto = \"q.query\"\n";
    std::fs::write(dir.path().join("workflows/w.toml"), via_connection).unwrap();
    drop(server);
    let server = Server::start(dir.path(), &[]);
    let listing = server
        .get_json("/v1/workflows", Some(&json!({"user_id": "u"})))
        .await
        .to_string();
    assert!(listing.contains("can never become SQL"), "{listing}");
}

/// Issue 17 §4: in jwt mode the listings answered without a token, showing database user@host,
/// absolute paths, plugin hashes and load errors. They need a caller now (unless `[server]
/// public` names them), and show paths relative to the served folder.
#[tokio::test]
async fn listings_need_a_caller_and_show_no_server_paths() {
    const KEY: &str = "e2e-hs256-key-0123456789abcdef0123456789";
    let dir = tempfile::tempdir().unwrap();
    for sub in ["workflows", "policies", "plugins"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    std::fs::write(
        dir.path().join("workflows/broken.toml"),
        "this is not toml = [",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        format!(
            "[auth]\nmode = \"jwt\"\nalgorithm = \"HS256\"\nkey = \"{KEY}\"\naudience = \"e2e\"\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("trellis.toml");
    let elsewhere = tempfile::tempdir().unwrap();
    // Served from another folder, by absolute path: what a caller sees must not tell where.
    let server = Server::start(elsewhere.path(), &["--config", config.to_str().unwrap()]);
    let http = reqwest::Client::new();
    let paths = [
        "/metrics",
        "/v1/pools",
        "/v1/pools/main/stats",
        "/v1/plugins",
        "/v1/workflows",
    ];
    for path in paths {
        let response = http
            .get(format!("{}{path}", server.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            401,
            "{path} answered without a token"
        );
    }
    let claims = json!({"sub": "alice", "aud": "e2e", "exp": std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let root = dir.path().display().to_string();
    for path in paths {
        let response = http
            .get(format!("{}{path}", server.base_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let text = response.text().await.unwrap();
        if path != "/v1/pools" && !path.starts_with("/v1/pools/") {
            assert!(!text.contains(&root), "{path} shows a server path: {text}");
        }
    }
    let workflows = http
        .get(format!("{}/v1/workflows", server.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(workflows["dir"], "workflows", "{workflows}");
    assert_eq!(
        workflows["errors"][0]["file"], "workflows/broken.toml",
        "{workflows}"
    );
}

/// Issue 17 §5: links in the served directories were followed anywhere. The decision: a link
/// is followed only to a file inside its own directory (Kubernetes' ConfigMap layout), and one
/// pointing outside is refused: for policies the host does not start, for a plugin the file
/// fails to load and is listed with the reason.
#[tokio::test]
async fn links_are_followed_only_within_their_directory() {
    use std::os::unix::fs::symlink;
    let outside = tempfile::tempdir().unwrap();
    let workflow = "[[nodes]]\nid = \"n\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1 AS one\" }\n";
    let rules = r#"{"rules": [{"id": "run", "resource_type": "workflow", "resource_id": "w", "permission": "execute", "effect": "allow"}]}"#;

    // A policy linked from outside: refused, and nothing is served.
    std::fs::write(
        outside.path().join("open.cedar"),
        "permit (principal, action, resource);\n",
    )
    .unwrap();
    let dir = custom_dir(workflow, rules, "");
    symlink(
        outside.path().join("open.cedar"),
        dir.path().join("policies/open.cedar"),
    )
    .unwrap();
    let (status, _, err) = trellis_tests::run_trellis(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    );
    assert!(!status.success(), "served a policy linked from outside");
    assert!(
        err.contains("open.cedar") && err.contains("outside its directory"),
        "{err}"
    );

    // Links within the directory (`x -> ..data/x`, as a ConfigMap volume lays them out) work.
    let dir = custom_dir(workflow, rules, "");
    let data = dir.path().join("policies/..data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("open.cedar"),
        "permit (principal, action, resource);\n",
    )
    .unwrap();
    symlink("..data/open.cedar", dir.path().join("policies/open.cedar")).unwrap();
    let wasm = trellis_tests::repo().join("plugins/row_transform.wasm");
    std::fs::copy(&wasm, outside.path().join("row_transform.wasm")).unwrap();
    symlink(
        outside.path().join("row_transform.wasm"),
        dir.path().join("plugins/row_transform.wasm"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &json!({"user_id": "u"}), json!({})).await;
    assert_eq!(
        status, 200,
        "the policy linked within its directory did not load: {body}"
    );
    // The plugin linked from outside is not loaded, and says why.
    let plugins = server
        .get_json("/v1/plugins", Some(&json!({"user_id": "u"})))
        .await;
    assert_eq!(plugins["plugins"][0]["status"], "failed", "{plugins}");
    assert!(
        plugins["plugins"][0]["error"]
            .as_str()
            .unwrap()
            .contains("outside its directory"),
        "{plugins}"
    );
}

/// Issue 17 §5: node ids are global policy resources, so a new workflow that reuses a node id
/// inherited the grants and masks written for another workflow's node. A rule (or masking rule)
/// with `"workflow"` names one workflow's node now; the host warns when a rule without it names
/// a node id that workflows share. On `faabd26` the policy directory did not load (`workflow` was
/// an unknown field), and nothing was scoped or warned.
#[tokio::test]
async fn a_new_workflow_reusing_a_node_id_inherits_no_grant_or_mask() {
    let node = "[[nodes]]\nid = \"people\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 'Ann' AS name, '123-45-6789' AS ssn\" }\n";
    let scoped = |id: &str, workflow: &str, permission: &str| {
        json!({"id": id, "resource_type": "node", "resource_id": "people", "workflow": workflow,
            "permission": permission, "effect": "allow"})
    };
    let run = |w: &str| {
        json!({"id": format!("run-{w}"), "resource_type": "workflow", "resource_id": w,
            "permission": "execute", "effect": "allow"})
    };
    let rules = json!({
        "rules": [
            run("w"), run("copy"),
            scoped("w-people", "w", "execute"), scoped("w-people-read", "w", "read_output"),
            // Unscoped: names `people` in every workflow (warned about below).
            {"id": "auditors", "resource_type": "node", "resource_id": "people",
             "permission": "execute", "effect": "allow", "role": "auditor"},
            // A typo'd workflow name applies to nothing (warned about below).
            scoped("typo", "cpoy", "execute"),
        ],
        "masking": [
            {"resource_id": "people", "workflow": "w", "field_path": "ssn", "mask_type": "redact"}
        ]
    });
    let dir = custom_dir(node, &rules.to_string(), "");
    std::fs::write(dir.path().join("workflows/copy.toml"), node).unwrap();
    std::fs::copy(
        trellis_tests::repo().join("policies/admin.cedar"),
        dir.path().join("policies/admin.cedar"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--watch"]);
    let user = json!({"user_id": "u"});
    let data = |body: &Value| body["results"]["people"]["result"]["data"][0].clone();

    let (status, body) = run_workflow(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body), json!({"name": "Ann", "ssn": "[REDACTED]"}));

    // The attack: `copy` reuses the node id `people` and gets none of `w`'s grants.
    let (status, body) = run_workflow(&server, "copy", &user, json!({})).await;
    assert_eq!(status, 403, "copy inherited w's grant: {body}");
    assert_eq!(body["denied"]["resource_id"], "people", "{body}");
    // The unscoped rule still names `people` in every workflow.
    let auditor = json!({"user_id": "a", "roles": ["auditor"]});
    let (status, body) = run_workflow(&server, "copy", &auditor, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["withheld"], json!(["people"]), "{body}");

    // Outside a run, an admin asks about one workflow's node with `workflow`.
    let ask = |workflow: &str| {
        reqwest::Client::new()
            .post(format!("{}/v1/authorize", server.base_url()))
            .header("x-trellis-user", admin().to_string())
            .json(
                &json!({"user": user, "resource_type": "node", "resource_id": "people",
                "workflow": workflow, "permission": "execute"}),
            )
            .send()
    };
    let answer: Value = ask("w").await.unwrap().json().await.unwrap();
    assert_eq!(answer["decision"]["allowed"], true, "{answer}");
    let answer: Value = ask("copy").await.unwrap().json().await.unwrap();
    assert_eq!(answer["decision"]["allowed"], false, "{answer}");

    // Each workflow's masks are its own: `copy` gets a grant and a different mask.
    let mut rules = rules;
    let more = [
        scoped("copy-people", "copy", "execute"),
        scoped("copy-people-read", "copy", "read_output"),
        json!({"id": "view-third", "resource_type": "workflow", "resource_id": "third",
            "permission": "view", "effect": "allow"}),
    ];
    rules["rules"].as_array_mut().unwrap().extend(more);
    rules["masking"].as_array_mut().unwrap().push(
        json!({"resource_id": "people", "workflow": "copy", "field_path": "ssn", "mask_type": "last4"}),
    );
    let tmp = dir.path().join("policies/.next");
    std::fs::write(&tmp, rules.to_string()).unwrap();
    std::fs::rename(&tmp, dir.path().join("policies/test.rules.json")).unwrap();
    // A third workflow with the same node id arrives while serving.
    std::fs::write(dir.path().join("workflows/third.toml"), node).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let copy = loop {
        let (status, body) = run_workflow(&server, "copy", &user, json!({})).await;
        if status == 200 || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        data(&copy),
        json!({"name": "Ann", "ssn": "*******6789"}),
        "{copy}"
    );
    let (_, body) = run_workflow(&server, "w", &user, json!({})).await;
    assert_eq!(data(&body), json!({"name": "Ann", "ssn": "[REDACTED]"}));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !server
        .get_json("/v1/workflows", Some(&user))
        .await
        .to_string()
        .contains("third")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "third.toml was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The scope check runs on the change; give it a moment before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = stop(server);
    assert!(
        log.contains("`auditors` names node `people` of every workflow, and workflows `copy`, `w` each have a node `people`"),
        "{log}"
    );
    assert!(
        log.contains("workflows `copy`, `third`, `w` each have a node `people`"),
        "no warning after the reload: {log}"
    );
    assert!(
        log.contains("`typo` names node `people` of workflow `cpoy`, which is not loaded"),
        "{log}"
    );

    // `trellis policy check --workflows` says the same.
    let (status, _, stderr) = trellis_tests::run_trellis(
        dir.path(),
        &["policy", "check", "policies", "--workflows", "workflows"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("workflows `copy`, `third`, `w` each have a node `people`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: to name one workflow's node, add `\"workflow\": \"copy\"`"),
        "{stderr}"
    );
}
