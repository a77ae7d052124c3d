//! Workflows end to end, over HTTP against the real binary: the shipped secure-pipeline example
//! (allowed, masked, withheld, denied), node-level denial, skip and optional nodes, failing and
//! timed-out nodes, concurrency of independent nodes, bad requests, and the admin endpoints.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{
    Server, TestDb, custom_dir as custom, example_dir as example, run_workflow as run,
};

fn analyst() -> Value {
    json!({"user_id": "fin001", "tenant_id": "acme", "email": "finance.analyst@acme.com",
           "attributes": {"department": "finance.analysis", "clearance": "confidential"}})
}

fn hr_manager() -> Value {
    json!({"user_id": "hr001", "tenant_id": "acme", "roles": ["hr_manager"],
           "attributes": {"department": "hr", "is_manager": true}})
}

fn engineer() -> Value {
    json!({"user_id": "eng001", "tenant_id": "acme",
           "attributes": {"department": "engineering.backend"}})
}

fn admin() -> Value {
    json!({"user_id": "root", "roles": ["admin"]})
}

fn employee<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name} in {rows}"))
}

#[tokio::test]
async fn shipped_example_masks_for_the_analyst_and_not_for_hr_and_refuses_engineering() {
    let dir = example();
    let server = Server::start(dir.path(), &[]);

    // The analyst: allowed; SSN redacted, salary partially masked, intermediate rows withheld.
    let (status, body) = run(&server, "finance_report", &analyst(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["run_id"].as_str().unwrap().len() == 36, "{body}");
    let by_department = &body["results"]["financial_query"]["result"]["data"];
    let finance = by_department
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["department"] == "finance")
        .unwrap();
    // 2024 only: six expenses (the 2023 dinner is before start_date).
    assert!(
        (finance["total_expenses"].as_f64().unwrap() - 2575.65).abs() < 1e-9,
        "{finance}"
    );
    assert_eq!(finance["transaction_count"], 6);
    let rows = &body["results"]["employee_data"]["data"];
    let ada = employee(rows, "Ada Byron");
    assert_eq!(ada["ssn"], "[REDACTED]");
    assert_eq!(ada["salary"], "98*00");
    assert_eq!(ada["email"], "ada.byron@acme.example");
    // Added by the sum-by-key plugin.
    assert_eq!(ada["department_employees"], 1);
    assert_eq!(body["withheld"], json!(["employee_expenses"]));
    assert!(body["results"].get("employee_expenses").is_none());
    assert_eq!(
        body["masked"],
        json!([{"node": "employee_data", "fields": ["ssn:redact", "salary:partial"]}])
    );
    assert_eq!(body["skipped"], json!([]));
    // The guide's vector step, on the embedded SQLite backend: the expenses most like a
    // conference trip (the default `like`), closest first.
    let similar = |body: &Value| -> Vec<String> {
        body["results"]["similar_transactions"]["result"]["matches"]
            .as_array()
            .unwrap_or_else(|| panic!("no similar_transactions: {body}"))
            .iter()
            .map(|m| m["metadata"]["description"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        similar(&body),
        [
            "conference: FinOps Summit",
            "conference: RustConf",
            "training: forecasting"
        ]
    );
    let (status, equipment) = run(
        &server,
        "finance_report",
        &analyst(),
        json!({"inputs": {"like": [0.0, 0.0, 0.0, 1.0]}}),
    )
    .await;
    assert_eq!(status, 200, "{equipment}");
    assert_eq!(
        similar(&equipment),
        ["office supplies", "cables", "keyboard and monitor arm"]
    );

    // HR manager: allowed, everything in clear.
    let (status, body) = run(&server, "finance_report", &hr_manager(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let ada = employee(&body["results"]["employee_data"]["data"], "Ada Byron");
    assert_eq!(ada["ssn"], "123-45-6789");
    assert_eq!(ada["salary"], 98000);
    assert_eq!(body["masked"], json!([]));

    // Engineering: refused before anything runs, without policy detail.
    let (status, body) = run(&server, "finance_report", &engineer(), json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["denied"],
        json!({"resource_type": "workflow", "resource_id": "finance_report", "permission": "execute"})
    );
    assert!(body.get("policies").is_none(), "{body}");
    assert_eq!(body["error"]["kind"], "forbidden");

    // Inputs are typed and checked.
    let (status, body) = run(
        &server,
        "finance_report",
        &analyst(),
        json!({"inputs": {"start_date": 2024, "region": "eu"}}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["problems"],
        json!([
            "unknown input `region`; this workflow takes `like`, `start_date`",
            "input `start_date` must be a string, not a number"
        ])
    );
    // An input changes the result.
    let (status, body) = run(
        &server,
        "finance_report",
        &analyst(),
        json!({"inputs": {"start_date": "2023-01-01"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let finance = body["results"]["financial_query"]["result"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["department"] == "finance")
        .unwrap()
        .clone();
    assert_eq!(finance["transaction_count"], 7);
}

#[tokio::test]
async fn bad_requests_are_400_401_404_with_the_reason() {
    let dir = example();
    std::fs::write(
        dir.path().join("workflows/nope.toml"),
        "[[nodes]]\nid = \"x\"\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/workflows/finance_report/run", server.base_url());

    let r = http
        .post(&url)
        .header("x-trellis-user", analyst().to_string())
        .body("{\"inputs\": {\"start_date\": }")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("invalid request body: expected value at line 1 column 27"),
        "{message}"
    );

    let r = http
        .post(&url)
        .header("x-trellis-user", analyst().to_string())
        .body("{\"input\": {}}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `input`"),
        "{body}"
    );

    let r = http.post(&url).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);

    let r = http
        .post(format!("{}/v1/workflows/nope/run", server.base_url()))
        .header("x-trellis-user", analyst().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["message"], "unknown workflow `nope`");
    assert_eq!(body["workflows"], json!(["finance_report"]));
    assert_eq!(
        body["hint"],
        "1 workflow file(s) failed to load: GET /v1/workflows lists their errors"
    );
    // The names offered are only those the caller may `view`.
    let r = http
        .post(format!("{}/v1/workflows/nope/run", server.base_url()))
        .header("x-trellis-user", engineer().to_string())
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["workflows"], json!([]), "{body}");

    // Over the body limit.
    // Over the body limit (1 MiB in the example): refused from the declared length, before any
    // of the body is sent (a raw request: the client is not still writing when the answer comes).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server.base_url().trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/workflows/finance_report/run HTTP/1.1\r\nhost: {addr}\r\nx-trellis-user: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            analyst(),
            2 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    let list = server.get_json("/v1/workflows", Some(&analyst())).await;
    assert_eq!(list["generation"], 1);
    assert_eq!(list["workflows"][0]["name"], "finance_report");
    assert_eq!(
        list["workflows"][0]["inputs"]["start_date"]["required"],
        false
    );
    let error = list["errors"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("nope.toml:1: missing field `type`"),
        "{list}"
    );
}

#[tokio::test]
async fn admin_endpoints_are_for_admins_only() {
    let dir = example();
    let server = Server::start(dir.path(), &[]);
    let http = reqwest::Client::new();
    let (status, _) = run(&server, "finance_report", &analyst(), json!({})).await;
    assert_eq!(status, 200);

    let authorize = |caller: Value, body: Value| {
        http.post(format!("{}/v1/authorize", server.base_url()))
            .header("x-trellis-user", caller.to_string())
            .json(&body)
            .send()
    };
    let question = json!({"user": engineer(), "resource_type": "workflow",
                          "resource_id": "finance_report", "permission": "execute"});
    let r = authorize(analyst(), question.clone()).await.unwrap();
    assert_eq!(r.status(), 403);
    let r = authorize(admin(), question.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["decision"]["allowed"], false);
    assert_eq!(body["decision"]["reason"], "no rule granted access");
    let mut explain = question.clone();
    explain["user"] = analyst();
    explain["explain"] = json!(true);
    let body: Value = authorize(admin(), explain)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["decision"]["allowed"], true);
    assert_eq!(body["deciding"][0]["id"], "finance-workflow-access");
    let r = authorize(
        admin(),
        json!({"resource_type": "table", "resource_id": "x", "permission": "execute"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);

    let audit = |caller: Value| {
        http.get(format!("{}/v1/audit?limit=50", server.base_url()))
            .header("x-trellis-user", caller.to_string())
            .send()
    };
    assert_eq!(audit(analyst()).await.unwrap().status(), 403);
    let body: Value = audit(admin()).await.unwrap().json().await.unwrap();
    let records = body["records"].as_array().unwrap();
    for expected in [
        ("workflow:execute", "workflow:finance_report", "allow"),
        ("node:execute", "node:employee_data", "allow"),
        ("node:read_output", "node:employee_expenses", "deny"),
    ] {
        assert!(
            records.iter().any(|r| r["user_id"] == "fin001"
                && r["action"] == expected.0
                && r["resource"] == expected.1
                && r["decision"] == expected.2),
            "no audit record {expected:?} in {body}"
        );
    }
    // The same trail is on disk, where what a run's decisions share is written once per run:
    // a run line (`run`, `run_id`, `time`, `user_id`, `generation`), then decision lines that
    // name its `run` and carry no user, time or generation of their own.
    // The writer appends in the background: read until the file ends on a whole line and has
    // as many decision lines as the API lists decisions of runs (a read can land mid-write).
    let of_runs = records.iter().filter(|r| r["run_id"].is_string()).count();
    let path = dir.path().join("data/audit.jsonl");
    let mut on_disk = String::new();
    trellis_tests::eventually(std::time::Duration::from_secs(10), || {
        on_disk = std::fs::read_to_string(&path).unwrap();
        let decisions = on_disk
            .lines()
            .filter(|l| l.contains("\"run\":") && !l.contains("\"run_id\""))
            .count();
        on_disk.ends_with('\n') && decisions >= of_runs
    })
    .await;
    assert!(on_disk.contains("\"resource\":\"node:employee_expenses\""));
    let mut runs: std::collections::HashMap<u64, Value> = Default::default();
    let mut whole = Vec::new();
    for line in on_disk.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        match (line.get("run_id"), line.get("run").and_then(Value::as_u64)) {
            (Some(_), Some(n)) => {
                runs.insert(n, line);
            }
            (None, Some(n)) => {
                assert!(
                    line.get("user_id").is_none() && line.get("time").is_none(),
                    "{line}"
                );
                let run = &runs[&n];
                whole.push(json!({"run_id": run["run_id"], "user_id": run["user_id"],
                    "generation": run["generation"], "action": line["action"],
                    "resource": line["resource"], "decision": line["decision"],
                    "policies": line["policies"]}));
            }
            _ => assert!(line.get("user_id").is_some(), "{line}"),
        }
    }
    let run_lines = on_disk.lines().filter(|l| l.contains("\"run_id\"")).count();
    let run_ids: std::collections::HashSet<_> = runs.values().map(|r| &r["run_id"]).collect();
    assert_eq!(run_lines, run_ids.len(), "one run line per run:\n{on_disk}");
    let of_runs: Vec<&Value> = records.iter().filter(|r| r["run_id"].is_string()).collect();
    assert!(!of_runs.is_empty(), "{body}");
    for r in of_runs {
        let expected = json!({"run_id": r["run_id"], "user_id": r["user_id"],
            "generation": r["generation"], "action": r["action"], "resource": r["resource"],
            "decision": r["decision"], "policies": r["policies"]});
        assert!(
            whole.contains(&expected),
            "{expected} is not in the file:\n{on_disk}"
        );
    }

    let policies = server.get_json("/v1/policies", Some(&admin())).await;
    assert_eq!(policies["last_error"], Value::Null);
}

const OPEN_POLICY: &str = r#"{"rules": [
  {"id": "run", "resource_type": "workflow", "resource_id": "w", "permission": "execute", "effect": "allow"},
  {"id": "a", "resource_type": "node", "resource_id": "a", "permission": "execute", "effect": "allow"},
  {"id": "c", "resource_type": "node", "resource_id": "c", "permission": "execute", "effect": "allow"},
  {"id": "s", "resource_type": "node", "resource_id": "a", "permission": "skip", "effect": "allow",
   "conditions": {"type": "attribute_expression", "value": {"attribute_path": "user.attributes.level", "operator": "equals", "value": "intern"}}},
  {"id": "ra", "resource_type": "node", "resource_id": "a", "permission": "read_output", "effect": "allow"},
  {"id": "rc", "resource_type": "node", "resource_id": "c", "permission": "read_output", "effect": "allow"}
]}"#;

#[tokio::test]
async fn denied_node_optional_node_and_skip() {
    let workflow = r#"
[[nodes]]
id = "a"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1 AS one" }
[[nodes]]
id = "b"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 2 AS two" }
[[nodes]]
id = "c"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 3 AS three" }
"#;
    let dir = custom(workflow, OPEN_POLICY, "");
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});
    // `b` has no execute rule: the run is refused, naming the node.
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["node"], "b");
    assert_eq!(body["denied"]["permission"], "execute");
    assert_eq!(
        body["error"]["message"],
        "access denied: no policy grants you `execute` on node `b`"
    );

    // Optional `b` (and `d`, downstream of it) are skipped instead.
    let optional = workflow.replace(
        "config = { query = \"SELECT 2 AS two\" }\n",
        "config = { query = \"SELECT 2 AS two\" }\noptional = true\n",
    ) + r#"
[[nodes]]
id = "d"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT :x AS x" }
[[connections]]
from = "b.result.data"
to = "d.params.x"
"#;
    std::fs::write(dir.path().join("workflows/w.toml"), optional).unwrap();
    drop(server);
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["skipped"],
        json!([
            {"node": "b", "reason": "execute denied (optional node)"},
            {"node": "d", "reason": "upstream node `b` was skipped"}
        ]),
        "{body}"
    );
    assert_eq!(body["results"]["a"]["result"]["data"], json!([{"one": 1}]));
    assert_eq!(
        body["results"]["c"]["result"]["data"],
        json!([{"three": 3}])
    );

    // An intern is skipped past `a` by policy.
    let intern = json!({"user_id": "i", "attributes": {"level": "intern"}});
    let (status, body) = run(&server, "w", &intern, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["skipped"][0],
        json!({"node": "a", "reason": "policy skips this node for you"})
    );
    assert!(body["results"].get("a").is_none());
}

#[tokio::test]
async fn failing_and_slow_nodes_fail_the_run_naming_the_node() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let workflow = r#"
database = "pg"
node_timeout = "300ms"

[[nodes]]
id = "a"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT pid, (SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%trellis-overlap-marker%' AND state = 'active') AS active FROM (SELECT pg_backend_pid() AS pid, pg_sleep(0.2)) s -- trellis-overlap-marker" }
timeout = "5s"
[[nodes]]
id = "c"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT pid, (SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%trellis-overlap-marker%' AND state = 'active') AS active FROM (SELECT pg_sleep(0.1), pg_backend_pid() AS pid) s -- trellis-overlap-marker" }
timeout = "5s"
"#;
    let config = format!("[databases.pg]\nurl = \"{pg}\"\n");
    let dir = custom(workflow, OPEN_POLICY, &config);
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});
    // `a` and `c` are independent: they run at the same time, on two connections.
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let a = &body["results"]["a"]["result"]["data"][0];
    let c = &body["results"]["c"]["result"]["data"][0];
    assert_ne!(a["pid"], c["pid"]);
    assert!(
        a["active"].as_i64().unwrap() >= 2 || c["active"].as_i64().unwrap() >= 2,
        "{body}"
    );

    // A failing statement fails the run with the node and the database's reason.
    std::fs::write(
        dir.path().join("workflows/w.toml"),
        workflow.replace(
            "SELECT pg_sleep(0.1), pg_backend_pid() AS pid",
            "SELEC oops",
        ),
    )
    .unwrap();
    drop(server);
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["node"], "c");
    // The caller gets the kind and the SQLSTATE; the database's message stays in the log.
    assert_eq!(body["error"]["kind"], "query", "{body}");
    assert_eq!(body["error"]["code"], "42601", "{body}");

    // A node past its limit: 504 naming it.
    std::fs::write(
        dir.path().join("workflows/w.toml"),
        workflow
            .replace("pg_sleep(0.2)", "pg_sleep(3)")
            .replace("timeout = \"5s\"\n[[nodes]]", "[[nodes]]"),
    )
    .unwrap();
    drop(server);
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["node"], "a");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not finish within its time limit of 300ms"),
        "{body}"
    );
    // The cancelled statement did not leave the pool broken: the next run works.
    std::fs::write(dir.path().join("workflows/w.toml"), workflow).unwrap();
    drop(server);
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
}

#[test]
fn trellis_run_prints_the_report_and_refuses_denied_users() {
    let dir = example();
    let (status, stdout, stderr) = trellis_tests::run_trellis(
        dir.path(),
        &["run", "finance_report", "--user", &analyst().to_string()],
        std::time::Duration::from_secs(60),
    );
    assert!(status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let ada = employee(&report["results"]["employee_data"]["data"], "Ada Byron");
    assert_eq!(ada["ssn"], "[REDACTED]");

    let (status, _, stderr) = trellis_tests::run_trellis(
        dir.path(),
        &["run", "finance_report", "--user", &engineer().to_string()],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(
            "access denied: `execute` on workflow `finance_report`: no rule granted access"
        ),
        "{stderr}"
    );
}

/// `WorkflowConnectionPool` nodes: the guide's JSON operations in a workflow file, chained by
/// `connection_id` (acquire → execute → release, then stats), on the real binary; a statement on
/// a released connection fails the run naming its node.
#[tokio::test]
async fn pool_operation_nodes_run_in_workflows() {
    let workflow = r#"
[[nodes]]
id = "acquire"
type = "WorkflowConnectionPool"
config = { operation = "acquire" }
[[nodes]]
id = "query"
type = "WorkflowConnectionPool"
config = { operation = "execute", query = "SELECT :n + 1 AS answer", params = { n = 41 }, fetch_mode = "one" }
[[nodes]]
id = "release"
type = "WorkflowConnectionPool"
config = { operation = "release" }
[[nodes]]
id = "stats"
type = "WorkflowConnectionPool"
config = { operation = "stats" }
[[connections]]
from = "acquire.connection_id"
to = "query.connection_id"
[[connections]]
from = "query.connection_id"
to = "release.connection_id"
# Only to order `stats` after `release`: a connection that fills no key.
[[connections]]
from = "release"
to = "stats"
"#;
    let late = r#"
[[nodes]]
id = "acquire"
type = "WorkflowConnectionPool"
config = { operation = "acquire" }
[[nodes]]
id = "release"
type = "WorkflowConnectionPool"
config = { operation = "release" }
[[nodes]]
id = "late"
type = "WorkflowConnectionPool"
config = { operation = "execute", query = "SELECT 1" }
[[connections]]
from = "acquire.connection_id"
to = "release.connection_id"
[[connections]]
from = "release.connection_id"
to = "late.connection_id"
"#;
    let allow = |workflow: &str, nodes: &[&str]| {
        let mut rules = vec![
            json!({"id": format!("{workflow}-run"), "resource_type": "workflow", "resource_id": workflow, "permission": "execute", "effect": "allow"}),
        ];
        for node in nodes {
            for permission in ["execute", "read_output"] {
                rules.push(json!({"id": format!("{workflow}-{node}-{permission}"), "resource_type": "node", "resource_id": node, "permission": permission, "effect": "allow"}));
            }
        }
        rules
    };
    let mut rules = allow("w", &["acquire", "query", "release", "stats"]);
    rules.extend(allow("late", &["late"]));
    let dir = custom(workflow, &json!({"rules": rules}).to_string(), "");
    std::fs::write(dir.path().join("workflows/late.toml"), late).unwrap();
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});

    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let results = &body["results"];
    let id = results["acquire"]["connection_id"].as_str().expect("an id");
    assert_eq!(results["query"]["connection_id"], id, "{body}");
    assert_eq!(results["query"]["data"], json!({"answer": 42}), "{body}");
    assert_eq!(
        results["release"],
        json!({"connection_id": id, "status": "released"})
    );
    let stats = &results["stats"];
    assert_eq!(stats["database_type"], "sqlite", "{body}");
    assert_eq!(stats["leases"]["active"], 0, "{body}");
    assert!(
        stats["queries"]["executed"].as_u64().unwrap() >= 1,
        "{body}"
    );

    let (status, body) = run(&server, "late", &user, json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["node"], "late", "{body}");
    // A lease used after its release: a configuration error (the detail is in the log).
    assert_eq!(body["error"]["kind"], "configuration", "{body}");
}

#[tokio::test]
async fn vector_nodes_run_in_workflows_and_masks_can_reach_downstream_nodes() {
    let workflow = r#"
[[nodes]]
id = "create"
type = "AsyncPostgreSQLVectorNode"
config = { operation = "create_table", table_name = "docs", dimension = 3 }
[[nodes]]
id = "insert"
type = "AsyncPostgreSQLVectorNode"
config = { operation = "insert", vectors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.9, 0.1, 0.0]], metadata = [{ title = "a" }, { title = "b" }, { title = "c" }] }
[[nodes]]
id = "search"
type = "AsyncPostgreSQLVectorNode"
config = { operation = "search", vector = "$inputs.query", limit = 2 }
[[connections]]
from = "create.result.table"
to = "insert.table_name"
[[connections]]
from = "create.result.table"
to = "search.table_name"
# Only to run `search` after `insert`: a connection that fills no key.
[[connections]]
from = "insert"
to = "search"

[inputs.query]
type = "array"
"#;
    let rules = r#"{"rules": [
      {"id": "run", "resource_type": "workflow", "resource_id": "w", "permission": "execute", "effect": "allow"},
      {"id": "c", "resource_type": "node", "resource_id": "create", "permission": "execute", "effect": "allow"},
      {"id": "i", "resource_type": "node", "resource_id": "insert", "permission": "execute", "effect": "allow"},
      {"id": "s", "resource_type": "node", "resource_id": "search", "permission": "execute", "effect": "allow"},
      {"id": "q", "resource_type": "node", "resource_id": "search", "permission": "write_input", "effect": "allow"},
      {"id": "r", "resource_type": "node", "resource_id": "search", "permission": "read_output", "effect": "allow"}
    ], "masking": [
      {"resource_id": "search", "field_path": "metadata.title", "mask_type": "replace", "mask_value": "hidden"}
    ]}"#;
    let dir = custom(workflow, rules, "");
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});
    let (status, body) = run(
        &server,
        "w",
        &user,
        json!({"inputs": {"query": [1.0, 0.0, 0.0]}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let matches = &body["results"]["search"]["result"]["matches"];
    assert_eq!(matches.as_array().unwrap().len(), 2, "{body}");
    assert_eq!(matches[0]["distance"], 0.0);
    // Masks apply to the search's rows; only `search` may be read.
    assert_eq!(matches[0]["metadata"]["title"], "hidden");
    assert_eq!(body["withheld"], json!(["create", "insert"]));
    assert_eq!(
        body["masked"],
        json!([{"node": "search", "fields": ["metadata.title:replace"]}])
    );
    // A wrong query dimension is the node's error, named.
    let (status, body) = run(
        &server,
        "w",
        &user,
        json!({"inputs": {"query": [1.0, 0.0]}}),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["node"], "search");

    // Downstream nodes see clear values unless the node says `mask_downstream`.
    let chain = |mask_downstream: bool| {
        format!(
            r#"
[[nodes]]
id = "a"
type = "AsyncSQLDatabaseNode"
config = {{ query = "SELECT 'secret' AS v" }}
mask_downstream = {mask_downstream}
[[nodes]]
id = "b"
type = "AsyncSQLDatabaseNode"
config = {{ query = "SELECT :v AS seen" }}
[[connections]]
from = "a.result.data.0.v"
to = "b.params.v"
"#
        )
    };
    let rules = r#"{"rules": [
      {"id": "run", "resource_type": "workflow", "resource_id": "w", "permission": "execute", "effect": "allow"},
      {"id": "a", "resource_type": "node", "resource_id": "a", "permission": "execute", "effect": "allow"},
      {"id": "b", "resource_type": "node", "resource_id": "b", "permission": "execute", "effect": "allow"},
      {"id": "rb", "resource_type": "node", "resource_id": "b", "permission": "read_output", "effect": "allow"}
    ], "masking": [
      {"resource_id": "a", "field_path": "v", "mask_type": "redact"}
    ]}"#;
    for (flag, seen) in [(false, "secret"), (true, "[REDACTED]")] {
        let dir = custom(&chain(flag), rules, "");
        let server = Server::start(dir.path(), &[]);
        let (status, body) = run(&server, "w", &user, json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["results"]["b"]["result"]["data"][0]["seen"], seen,
            "{body}"
        );
    }
}

#[tokio::test]
async fn metrics_cover_runs_policy_workflows_and_plugins() {
    let dir = example();
    let server = Server::start(dir.path(), &[]);
    let (status, _) = run(&server, "finance_report", &analyst(), json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = run(&server, "finance_report", &engineer(), json!({})).await;
    assert_eq!(status, 403);
    let text = reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "trellis_workflow_runs_total{workflow=\"finance_report\",outcome=\"ok\"} 1",
        "trellis_workflow_runs_total{workflow=\"finance_report\",outcome=\"denied\"} 1",
        "trellis_generation 1",
        "trellis_policy_generation 1",
        "trellis_workflows_loaded 1",
        "trellis_plugin_files{status=\"loaded\"}",
        "trellis_http_requests_total{method=\"POST\",route=\"/v1/workflows/{name}/run\",status=\"403\"} 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in /metrics:\n{text}");
    }
}

/// Issue 18 §6: `pre_warm` never fired for served workflows (no node named a workload). Each
/// workflow's runs are its workload now: after one burst, the next run of that workflow opens
/// connections up to the burst's peak before they are needed. On `2e483a0` the lone run opened
/// nothing.
#[tokio::test]
async fn a_workflows_runs_are_its_workload_and_pre_warm_learns_their_bursts() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let workflow = "database = \"pg\"\n[[nodes]]\nid = \"slow\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT pg_sleep(0.5) AS slept\" }\n";
    let rules = json!({"rules": trellis_tests::allow_rules("w", &["slow"])}).to_string();
    let dir = custom(
        workflow,
        &rules,
        &format!(
            "[server]\npublic = [\"pools\"]\n[databases.pg]\nurl = \"{pg}\"\nmin_connections = 1\nmax_connections = 8\nidle_timeout = \"1s\"\npre_warm = true\n"
        ),
    );
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});
    let stats =
        || async { server.get_json("/v1/pools/pg/stats", None).await["connections"].clone() };

    // A burst of six concurrent runs: the workload's peak is six.
    let burst: Vec<_> = (0..6)
        .map(|_| run(&server, "w", &user, json!({})))
        .collect();
    for (status, body) in futures_util::future::join_all(burst).await {
        assert_eq!(status, 200, "{body}");
    }
    // The pool shrinks back to its minimum once the connections idle past `idle_timeout`.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let created = loop {
        let c = stats().await;
        if c["total"].as_u64() == Some(1) && c["opening"] == 0 {
            break c["created"].as_u64().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never shrank: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // One run starts the next burst: the pool opens up to the learnt peak at once.
    let (status, body) = run(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = stats().await;
        let opened = c["created"].as_u64().unwrap() - created;
        if opened >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a lone run pre-warmed {opened} connection(s), not the burst's 5 more: {c}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
