//! `trellis serve --watch` under load, over HTTP against the real binary: a plugin swapped 20
//! times while 20 clients run a workflow (no request fails), policies changed 20 times while
//! requests run (each run sees exactly one policy generation), and broken plugin, policy and
//! workflow files (the last good version keeps serving; the error shows in the API).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{Server, replace_file, repo, test_plugin};

/// Everyone may run everything and read every output (but `skip` stays denied).
const ALLOW_ALL: &str = r#"@id("allow-all")
permit (
    principal,
    action in [
        Trellis::Action::"workflow:execute",
        Trellis::Action::"workflow:view",
        Trellis::Action::"workflow:admin",
        Trellis::Action::"node:execute",
        Trellis::Action::"node:read_output"
    ],
    resource
);
"#;

fn setup(workflow: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("trellis.toml"), "[auth]\nmode = \"dev\"\n").unwrap();
    for sub in ["workflows", "policies", "plugins"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::copy(
        repo().join("policies/schema.cedarschema"),
        d.join("policies/schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(d.join("policies/allow.cedar"), ALLOW_ALL).unwrap();
    std::fs::write(d.join("workflows/w.toml"), workflow).unwrap();
    dir
}

async fn run(http: &reqwest::Client, base: &str) -> Result<Value, String> {
    let response = http
        .post(format!("{base}/v1/workflows/w/run"))
        .header("x-trellis-user", r#"{"user_id": "u"}"#)
        .body("{}")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// Runs `clients` loops of requests until `stop`; returns every result.
fn load(
    base: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Result<Value, String>>>> {
    (0..clients)
        .map(|_| {
            let base = base.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    results.push(run(&http, &base).await);
                }
                results
            })
        })
        .collect()
}

const STAMP_WORKFLOW: &str = r#"
[[nodes]]
id = "rows"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1 AS n UNION ALL SELECT 2" }
[[nodes]]
id = "stamp"
type = "plugin:stamp"
[[connections]]
from = "rows.result.data"
to = "stamp"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugin_swapped_20_times_under_20_clients_fails_no_request() {
    let dir = setup(STAMP_WORKFLOW);
    let v1 = std::fs::read(test_plugin("test_stamp.wasm")).unwrap();
    let v2 = std::fs::read(test_plugin("test_stamp_next.wasm")).unwrap();
    let target = dir.path().join("plugins/stamp.wasm");
    replace_file(&target, &v1);
    let server = Server::start(dir.path(), &["--watch"]);
    let http = reqwest::Client::new();
    let first = run(&http, &server.base_url()).await.unwrap();
    assert_eq!(first["results"]["stamp"]["data"][0]["served_by"], "1.0.0");

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(server.base_url(), 20, stop.clone());
    for i in 0..20 {
        let (bytes, version) = if i % 2 == 0 {
            (&v2, "2.0.0")
        } else {
            (&v1, "1.0.0")
        };
        replace_file(&target, bytes);
        // Wait until the new version serves before the next swap. Compiling it takes longer
        // while 20 clients load the machine (and longer still beside the rest of the suite),
        // so the bound is generous: what this test checks is that no request fails.
        let mut served = false;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let list = server
                .get_json("/v1/plugins", Some(&serde_json::json!({"user_id": "u"})))
                .await;
            if list["plugins"][0]["version"] == version {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served, "swap {i} to {version} never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    let mut versions = std::collections::BTreeSet::new();
    for client in clients {
        for result in client.await.unwrap() {
            let body = result.unwrap_or_else(|e| panic!("a request failed during the swaps: {e}"));
            for row in body["results"]["stamp"]["data"].as_array().unwrap() {
                versions.insert(row["served_by"].as_str().unwrap().to_owned());
            }
            ok += 1;
        }
    }
    assert!(ok > 20, "only {ok} requests ran");
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["1.0.0", "2.0.0"],
        "both versions served"
    );
}

const THREE_NODES: &str = r#"
[[nodes]]
id = "x"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 'clear' AS v" }
[[nodes]]
id = "y"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 'clear' AS v" }
[[nodes]]
id = "z"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 'clear' AS v, :n AS n" }
[[connections]]
from = "x.result.row_count"
to = "z.params.n"
"#;

fn masks(letter: &str) -> String {
    let rule = |node: &str| {
        format!(
            r#"{{"resource_id": "{node}", "field_path": "v", "mask_type": "replace", "mask_value": "{letter}"}}"#
        )
    };
    format!(
        r#"{{"rules": [], "masking": [{}, {}, {}]}}"#,
        rule("x"),
        rule("y"),
        rule("z")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_changed_20_times_each_run_sees_one_generation() {
    let dir = setup(THREE_NODES);
    let rules = dir.path().join("policies/masks.rules.json");
    replace_file(&rules, masks("A").as_bytes());
    let server = Server::start(dir.path(), &["--watch"]);
    let http = reqwest::Client::new();
    let first = run(&http, &server.base_url()).await.unwrap();
    assert_eq!(first["results"]["x"]["result"]["data"][0]["v"], "A");

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(server.base_url(), 20, stop.clone());
    for i in 0..20 {
        let letter = if i % 2 == 0 { "B" } else { "A" };
        replace_file(&rules, masks(letter).as_bytes());
        let base = server.base_url();
        let http = http.clone();
        // Wait until runs see the new policy.
        let mut seen = false;
        for _ in 0..500 {
            let body = run(&http, &base).await.unwrap();
            if body["results"]["y"]["result"]["data"][0]["v"] == letter {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen, "reload {i} to {letter} never seen");
    }
    stop.store(true, Ordering::Relaxed);
    let mut by_generation: std::collections::BTreeMap<u64, String> = Default::default();
    let mut runs = 0;
    for client in clients {
        for result in client.await.unwrap() {
            let body =
                result.unwrap_or_else(|e| panic!("a request failed during the reloads: {e}"));
            let letters: Vec<&str> = ["x", "y", "z"]
                .iter()
                .map(|n| {
                    body["results"][n]["result"]["data"][0]["v"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            assert!(
                letters.iter().all(|l| *l == letters[0]),
                "one run saw two policy generations: {letters:?} in {body}"
            );
            let generation = body["policy_generation"].as_u64().unwrap();
            let previous = by_generation.insert(generation, letters[0].to_owned());
            assert!(
                previous.is_none_or(|p| p == letters[0]),
                "generation {generation} masked differently in two runs"
            );
            runs += 1;
        }
    }
    assert!(runs > 20, "only {runs} runs");
    assert!(by_generation.len() > 2, "{by_generation:?}");
}

#[tokio::test]
async fn broken_files_keep_the_last_good_version_and_show_the_error() {
    let dir = setup(STAMP_WORKFLOW);
    let d = dir.path();
    replace_file(
        &d.join("plugins/stamp.wasm"),
        &std::fs::read(test_plugin("test_stamp.wasm")).unwrap(),
    );
    let server = Server::start(d, &["--watch"]);
    let base = server.base_url();
    let http = reqwest::Client::new();
    let root = json!({"user_id": "root", "roles": ["admin"]});
    let get = |path: &'static str| server.get_json(path, Some(&root));
    assert!(run(&http, &base).await.is_ok());

    // A broken plugin file: the loaded version keeps serving; the error is listed.
    replace_file(&d.join("plugins/stamp.wasm"), b"\0asm not really");
    let mut listed = Value::Null;
    for _ in 0..500 {
        listed = get("/v1/plugins").await;
        if listed["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["error"].is_string())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The file's row: the version that keeps serving, and the error of its latest content.
    let rows = listed["plugins"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert!(
        rows.iter().any(|r| r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not a valid WebAssembly component")),
        "{listed}"
    );
    assert!(
        rows.iter()
            .any(|r| r["status"] == "loaded" && r["version"] == "1.0.0"),
        "{listed}"
    );
    let body = run(&http, &base).await.unwrap();
    assert_eq!(body["results"]["stamp"]["data"][0]["served_by"], "1.0.0");

    // A broken policy file: the generation in force stays; the error is shown to admins.
    let generation = get("/v1/policies").await["generation"].clone();
    std::fs::write(
        d.join("policies/broken.rules.json"),
        "{\"rules\": [{\"id\": 1}]}",
    )
    .unwrap();
    let mut policies = Value::Null;
    for _ in 0..500 {
        policies = get("/v1/policies").await;
        if policies["last_error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        policies["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("broken.rules.json"),
        "{policies}"
    );
    assert_eq!(policies["generation"], generation);
    assert!(run(&http, &base).await.is_ok());

    // A broken workflow file: the last good version serves; the error is listed.
    std::fs::write(
        d.join("workflows/w.toml"),
        STAMP_WORKFLOW.replace("plugin:stamp", "plugin:stmp"),
    )
    .unwrap();
    let mut workflows = Value::Null;
    for _ in 0..500 {
        workflows = get("/v1/workflows").await;
        if !workflows["errors"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = workflows["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("w.toml:6: node `stamp`: unknown plugin `stmp`"),
        "{workflows}"
    );
    assert_eq!(workflows["workflows"][0]["name"], "w");
    let body = run(&http, &base).await.unwrap();
    assert_eq!(body["results"]["stamp"]["data"][0]["served_by"], "1.0.0");

    // Fixed: the error goes away and the new version serves.
    std::fs::write(
        d.join("workflows/w.toml"),
        STAMP_WORKFLOW.replace("SELECT 1 AS n UNION ALL SELECT 2", "SELECT 7 AS n"),
    )
    .unwrap();
    let mut fixed = false;
    for _ in 0..500 {
        if let Ok(body) = run(&http, &base).await
            && body["results"]["stamp"]["data"][0]["n"] == 7
        {
            fixed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(fixed);
    assert_eq!(get("/v1/workflows").await["errors"], json!([]));
}

/// Issue 17 §4: truncating `guardrails.cedar` in place for 0.7 s let a suspended user through:
/// the watcher read the empty file, a valid policy set. Files are read now only once stable, so
/// in-place rewrites of the policy and the workflow, under load, open no window: the suspended
/// user is refused every time, and the allowed user is never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_place_rewrites_open_no_window() {
    const GUARD: &str = "@id(\"suspended-users\")\nforbid (principal in Trellis::Role::\"suspended\", action, resource);\n";
    const WORKFLOW: &str = "[[nodes]]\nid = \"rows\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1 AS n\" }\n";
    let dir = setup(WORKFLOW);
    let guard = dir.path().join("policies/guardrails.cedar");
    std::fs::write(&guard, GUARD).unwrap();
    let server = Server::start(dir.path(), &["--watch"]);
    let base = server.base_url();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = [
        r#"{"user_id": "mallory", "roles": ["suspended"]}"#,
        r#"{"user_id": "u"}"#,
    ]
    .into_iter()
    .flat_map(|user| std::iter::repeat_n(user, 4))
    .map(|user| {
        let (base, stop) = (base.clone(), stop.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = http
                    .post(format!("{base}/v1/workflows/w/run"))
                    .header("x-trellis-user", user)
                    .body("{}")
                    .send()
                    .await
                    .unwrap();
                statuses.push(response.status().as_u16());
            }
            (user, statuses)
        })
    })
    .collect();

    // Rewrite each file in place, as an editor or `cat >` does: truncate, a pause, then the
    // content in two parts.
    let in_place = |path: &Path, text: &str, pause: Duration| {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)
            .unwrap();
        std::thread::sleep(pause);
        let (a, b) = text.split_at(text.len() / 2);
        file.write_all(a.as_bytes()).unwrap();
        file.flush().unwrap();
        std::thread::sleep(pause / 4);
        file.write_all(b.as_bytes()).unwrap();
    };
    let workflow = dir.path().join("workflows/w.toml");
    for round in 0..4 {
        let pause = Duration::from_millis(if round % 2 == 0 { 700 } else { 150 });
        let (g, w) = (guard.clone(), workflow.clone());
        tokio::task::spawn_blocking(move || {
            in_place(&g, GUARD, pause);
            in_place(&w, WORKFLOW, pause);
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut counted = 0;
    for client in clients {
        let (user, statuses) = client.await.unwrap();
        counted += statuses.len();
        if user.contains("mallory") {
            assert!(
                statuses.iter().all(|s| *s == 403),
                "the suspended user got through: {:?}",
                statuses.iter().filter(|s| **s != 403).collect::<Vec<_>>()
            );
        } else {
            assert!(
                statuses.iter().all(|s| *s == 200),
                "an allowed run failed while the workflow was rewritten: {:?}",
                statuses.iter().filter(|s| **s != 200).collect::<Vec<_>>()
            );
        }
    }
    assert!(
        counted > 100,
        "too little load to mean anything: {counted} requests"
    );
}
