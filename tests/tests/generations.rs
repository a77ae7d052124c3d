//! Issue 20 §1 against the real binary (`serve --watch`): a run pins one generation of policies,
//! plugins and workflows, and reports it. A plugin swapped while a run is under way serves the
//! next run, never the rest of this one; each change makes a new generation, in order.
//!
//! On 7343303 the run below got `served_by` 1.0.0 from its first `stamp` node and 2.0.0 from its
//! last (each plugin node looked the plugin up when it ran), and reported no `generation`.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{Server, replace_file, test_plugin};

/// `stamp` (which adds its version as `served_by`) at once, and again on what a 3 s `sleep`
/// passes on.
const STAMP_SLEEP_STAMP: &str = r#"
[[nodes]]
id = "before"
type = "plugin:stamp"
[nodes.config]
records = [{ id = 1 }]
[[nodes]]
id = "wait"
type = "plugin:sleep"
[nodes.config]
records = [{ how = "sleep", seconds = 3 }]
[[nodes]]
id = "after"
type = "plugin:stamp"
[[connections]]
from = "wait.data"
to = "after"
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("trellis.toml"),
        "[auth]\nmode = \"dev\"\n[server]\npublic = [\"metrics\"]\n\
         [plugins.limits.sleep]\ncall_timeout = \"10s\"\n",
    )
    .unwrap();
    for sub in ["workflows", "policies", "plugins"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let rules = trellis_tests::allow_rules("w", &["before", "wait", "after"]);
    std::fs::write(
        d.join("policies/allow.rules.json"),
        json!({ "rules": rules }).to_string(),
    )
    .unwrap();
    std::fs::write(d.join("workflows/w.toml"), STAMP_SLEEP_STAMP).unwrap();
    std::fs::copy(test_plugin("test_stamp.wasm"), d.join("plugins/stamp.wasm")).unwrap();
    std::fs::copy(test_plugin("test_sleep.wasm"), d.join("plugins/sleep.wasm")).unwrap();
    dir
}

async fn run(base: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/workflows/w/run"))
        .header("x-trellis-user", r#"{"user_id": "u"}"#)
        .body("{}")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn served_by(body: &Value, node: &str) -> String {
    body["results"][node]["data"][0]["served_by"]
        .as_str()
        .unwrap_or_else(|| panic!("no served_by from `{node}`: {body}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swapped_during_a_run_serves_the_next_run_only() {
    let dir = setup();
    let server = Server::start(dir.path(), &["--watch"]);
    let base = server.base_url();
    let user = json!({"user_id": "u"});

    let first = tokio::spawn({
        let base = base.clone();
        async move { run(&base).await }
    });
    // While it sleeps: version 2.0.0 replaces 1.0.0, and serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = std::fs::read(test_plugin("test_stamp_next.wasm")).unwrap();
    replace_file(&dir.path().join("plugins/stamp.wasm"), &v2);
    let mut swapped = false;
    for _ in 0..200 {
        let list = server.get_json("/v1/plugins", Some(&user)).await;
        let stamp = list["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "stamp")
            .cloned()
            .unwrap_or_default();
        if stamp["version"] == "2.0.0" {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(swapped, "2.0.0 never served");

    let first = first.await.unwrap();
    assert_eq!(served_by(&first, "before"), "1.0.0", "{first}");
    assert_eq!(
        served_by(&first, "after"),
        "1.0.0",
        "the run met a plugin swapped after it started: {first}"
    );
    let started_on = first["generation"].as_u64().expect("`generation` reported");
    assert!(started_on >= 1, "{first}");

    let second = run(&base).await;
    assert_eq!(served_by(&second, "before"), "2.0.0", "{second}");
    assert_eq!(served_by(&second, "after"), "2.0.0", "{second}");
    let next = second["generation"].as_u64().unwrap();
    assert!(
        next > started_on,
        "generations go forward: {started_on} then {next}"
    );
    // The policy generation is the same: only the plugins changed.
    assert_eq!(first["policy_generation"], second["policy_generation"]);
    // /metrics shows the generation in force.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trellis_generation "))
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(shown, Some(next as f64), "{metrics}");
}
