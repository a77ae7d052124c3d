//! Issue 18 §3 against the real binary: every node config is checked when its workflow loads,
//! with every problem of every node at once (file:line, node id, did-you-mean, where a seed key
//! goes), a plugin node's config against the plugin's `config_schema`; a config that only a run
//! can complete is checked again when it runs. On `2e483a0` the typos were ignored and the bad
//! values surfaced as 500s at request time.

use serde_json::{Value, json};
use trellis_tests::{Server, allow_rules, custom_dir, repo, run_workflow};

const BROKEN: &str = r#"
[[nodes]]
id = "typo"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1 AS one", fetchmode = "one" }
[[nodes]]
id = "seed"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1 AS one", connection_string = "sqlite::memory:", pool_size = 5 }
[[nodes]]
id = "value"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1 AS one", fetch_mode = "sometimes" }
[[nodes]]
id = "group"
type = "plugin:sum-by-key"
config = { keey = "department", field = 5 }
[[nodes]]
id = "pool"
type = "WorkflowConnectionPool"
config = { operation = "acquire", workfload = "w" }
[[connections]]
from = "typo.result.data"
to = "group"
"#;

fn served(workflow: &str, nodes: &[&str]) -> (tempfile::TempDir, Server) {
    let rules = json!({"rules": allow_rules("w", nodes)}).to_string();
    let dir = custom_dir(workflow, &rules, "");
    std::fs::copy(
        repo().join("plugins/sum_by_key.wasm"),
        dir.path().join("plugins/sum_by_key.wasm"),
    )
    .expect("the example plugins are built (scripts/build-plugins)");
    let server = Server::start(dir.path(), &[]);
    (dir, server)
}

/// The workflow `w` was not served: its load error, as `GET /v1/workflows` lists it.
async fn load_error(server: &Server) -> String {
    let user = json!({"user_id": "u"});
    let (status, body) = run_workflow(server, "w", &user, json!({})).await;
    assert_eq!(status, 404, "the workflow was served: {body}");
    let listing = server.get_json("/v1/workflows", Some(&user)).await;
    listing["errors"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn every_problem_of_every_node_config_is_reported_when_the_workflow_loads() {
    let (_dir, server) = served(BROKEN, &["typo", "seed", "value", "group", "pool"]);
    let error = load_error(&server).await;
    for expected in [
        "workflows/w.toml: 6 problems in node configs",
        "workflows/w.toml:2: node `typo`: invalid SQL node config: unknown key `fetchmode`: did you mean `fetch_mode`?",
        "workflows/w.toml:6: node `seed`: invalid SQL node config: `connection_string` is not a node setting: connections are configured once, in `[databases.NAME]`",
        "`pool_size` is not a node setting: pool sizes are `min_connections` / `max_connections` in `[databases.NAME]`",
        "workflows/w.toml:10: node `value`: invalid SQL node config: unknown `fetch_mode` `sometimes`: use `one`, `all` or `many`",
        "workflows/w.toml:14: node `group`: unknown key `keey`: did you mean `key`?",
        "workflows/w.toml:14: node `group`: value is not of type \"string\" (at `/field`)",
        "workflows/w.toml:18: node `pool`: `acquire`: unknown key `workfload`: did you mean `workload`?",
    ] {
        assert!(error.contains(expected), "no `{expected}` in:\n{error}");
    }
    // The schema's messages never quote a value: masked.
    assert!(!error.contains("\"department\""), "{error}");
}

#[tokio::test]
async fn a_config_completed_at_run_time_is_checked_when_the_node_runs() {
    // `field` comes from an input: it can only be checked with its value.
    let workflow = r#"
[inputs.field]
type = "any"
[[nodes]]
id = "rows"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 'a' AS department, 2 AS salary" }
[[nodes]]
id = "group"
type = "plugin:sum-by-key"
config = { key = "department", field = "$inputs.field" }
[[connections]]
from = "rows.result.data"
to = "group"
"#;
    let (_dir, server) = served(workflow, &["rows", "group"]);
    let user = json!({"user_id": "u"});
    let (status, body) =
        run_workflow(&server, "w", &user, json!({"inputs": {"field": "salary"}})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body): (u16, Value) =
        run_workflow(&server, "w", &user, json!({"inputs": {"field": 7}})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["node"], "group", "{body}");
    assert_eq!(body["error"]["kind"], "configuration", "{body}");
}

/// Configs are typed when the workflow loads: what only the typed form could tell (a plugin
/// node's `records` that are not records, a pool `execute` with no lease to run on) is refused
/// then, not at the first request. On 99878c6 both loaded and failed at request time.
#[tokio::test]
async fn what_only_the_typed_config_can_tell_is_refused_when_the_workflow_loads() {
    let workflow = r#"
[[nodes]]
id = "group"
type = "plugin:sum-by-key"
config = { key = "department", field = "salary", records = 5 }
[[nodes]]
id = "pool"
type = "WorkflowConnectionPool"
config = { operation = "execute", query = "SELECT 1" }
"#;
    let (_dir, server) = served(workflow, &["group", "pool"]);
    let error = load_error(&server).await;
    for expected in [
        "workflows/w.toml: 2 problems in node configs",
        "workflows/w.toml:2: node `group`: `records` must be an array of records, not a number",
        "workflows/w.toml:6: node `pool`: missing `connection_id` (from `acquire`)",
    ] {
        assert!(error.contains(expected), "no `{expected}` in:\n{error}");
    }
}

/// A run fills in and parses only what it supplies: an SQL node's `params` (from an input and
/// from a connection into a key the file leaves out) and a plugin node's `records`; a value of
/// the wrong shape there is the node's configuration error.
#[tokio::test]
async fn a_run_fills_in_only_the_parts_it_supplies() {
    let workflow = r#"
[inputs.salary]
type = "any"
[[nodes]]
id = "rows"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 'a' AS department, :salary AS salary", params = { salary = "$inputs.salary" } }
[[nodes]]
id = "echo"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT :d AS d", fetch_mode = "one" }
[[nodes]]
id = "group"
type = "plugin:sum-by-key"
config = { key = "department", field = "salary" }
[[connections]]
from = "rows.result.data"
to = "group"
[[connections]]
from = "rows.result.data.0.department"
to = "echo.params.d"
"#;
    let (_dir, server) = served(workflow, &["rows", "echo", "group"]);
    let user = json!({"user_id": "u"});
    let (status, body) = run_workflow(&server, "w", &user, json!({"inputs": {"salary": 3}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"]["echo"]["result"]["data"]["d"], "a",
        "{body}"
    );
    assert_eq!(
        body["results"]["group"]["data"][0]["salary_total"], 3,
        "{body}"
    );
}
