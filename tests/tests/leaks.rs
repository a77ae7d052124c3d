//! Issue 17 §2: nothing that masking or withholding protects reaches a caller through error text.
//! One `trellis serve` on PostgreSQL with the real plugins; each workflow makes one of the leaks
//! found against `faabd26` happen with the value `123-45-6789`, which must then appear nowhere in
//! the response, nor in the audit trail (only in the server's own log). Every case leaked before.

use serde_json::json;
use trellis_tests::{Server, TestDb, allow_rules, repo, run_workflow, unique};

const SECRET: &str = "123-45-6789";

/// Copies a built component into `dir/plugins`.
fn install(dir: &std::path::Path, from: &str) {
    let source = repo().join(from);
    assert!(
        source.is_file(),
        "`{}` is missing: run `scripts/build-plugins`",
        source.display()
    );
    std::fs::copy(
        &source,
        dir.join("plugins").join(source.file_name().unwrap()),
    )
    .unwrap();
}

#[tokio::test]
async fn no_protected_value_reaches_a_caller_or_the_audit_trail_through_an_error() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let table = unique("leak_people");
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (ssn text PRIMARY KEY); INSERT INTO {table} VALUES ('{SECRET}')"
    )))
    .execute(&pool)
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["workflows", "policies", "plugins"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(
        root.join("trellis.toml"),
        format!("[auth]\nmode = \"dev\"\n[databases.pg]\nurl = \"{pg}\"\n"),
    )
    .unwrap();
    install(root, "plugins/sum_by_key.wasm");
    install(root, "plugins/testing/wasm/test_panic.wasm");
    install(root, "plugins/testing/wasm/test_mask_trap.wasm");
    let person = format!("SELECT 'eng' AS department, '{SECRET}' AS ssn");
    let workflows = [
        // A plugin's error quoting the record: "record 0: `ssn` is \"…\", not a number".
        (
            "sum",
            format!(
                "database = \"pg\"\n[[nodes]]\nid = \"src\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = {{ query = \"{person}\" }}\n\
                 [[nodes]]\nid = \"total\"\ntype = \"plugin:sum-by-key\"\nconfig = {{ key = \"department\", field = \"ssn\" }}\n\
                 [[connections]]\nfrom = \"src.result.data\"\nto = \"total.records\"\n"
            ),
            vec!["src", "total"],
        ),
        // A plugin's panic quoting the whole record.
        (
            "panic",
            format!(
                "database = \"pg\"\n[[nodes]]\nid = \"src\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = {{ query = \"{person}\" }}\n\
                 [[nodes]]\nid = \"boom\"\ntype = \"plugin:panic\"\nconfig = {{}}\n\
                 [[connections]]\nfrom = \"src.result.data\"\nto = \"boom.records\"\n"
            ),
            vec!["src", "boom"],
        ),
        // A parameter that cannot be bound, quoting the input.
        (
            "bind",
            "database = \"pg\"\n[inputs.v]\ntype = \"string\"\n[[nodes]]\nid = \"q\"\ntype = \"AsyncSQLDatabaseNode\"\n\
             config = { query = \"SELECT :v::int + 1 AS n\", params = { v = \"$inputs.v\" } }\n"
                .to_owned(),
            vec!["q"],
        ),
        // PostgreSQL's detail: `Key (ssn)=(…) already exists`.
        (
            "detail",
            format!(
                "database = \"pg\"\n[[nodes]]\nid = \"ins\"\ntype = \"AsyncSQLDatabaseNode\"\n\
                 config = {{ query = \"INSERT INTO {table} SELECT ssn FROM {table}\" }}\n"
            ),
            vec!["ins"],
        ),
        // A masking plugin's error quoting the value, in `mask_errors` of a 200.
        (
            "masked",
            format!(
                "database = \"pg\"\n[[nodes]]\nid = \"people\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = {{ query = \"{person}\" }}\n"
            ),
            vec!["people"],
        ),
        // The SQL text echoed in every SQL node's result.
        (
            "echo",
            format!(
                "database = \"pg\"\n[[nodes]]\nid = \"e\"\ntype = \"AsyncSQLDatabaseNode\"\n\
                 config = {{ query = \"SELECT count(*) AS n FROM {table} WHERE ssn <> '{SECRET}'\" }}\n"
            ),
            vec!["e"],
        ),
    ];
    let mut rules = Vec::new();
    for (name, text, nodes) in &workflows {
        std::fs::write(root.join(format!("workflows/{name}.toml")), text).unwrap();
        rules.extend(allow_rules(name, nodes));
    }
    let rules = json!({"rules": rules, "masking": [
        {"resource_id": "people", "field_path": "ssn", "mask_type": "plugin:mask-trap"}
    ]});
    std::fs::write(root.join("policies/test.rules.json"), rules.to_string()).unwrap();

    let server = Server::start(root, &[]);
    let user = json!({"user_id": "u"});
    let root_text = root.display().to_string();
    let mut answers = Vec::new();
    let mut leaks = Vec::new();
    for (name, expected, kind) in [
        ("sum", 500, Some("plugin")),
        ("panic", 500, Some("plugin")),
        ("bind", 500, None),
        ("detail", 500, Some("query")),
        ("masked", 200, None),
        ("echo", 200, None),
    ] {
        let inputs = if name == "bind" {
            json!({"inputs": {"v": SECRET}})
        } else {
            json!({})
        };
        let (status, body) = run_workflow(&server, name, &user, inputs).await;
        assert_eq!(status, expected, "{name}: {body}");
        let text = body.to_string();
        if text.contains(SECRET) || text.contains(&root_text) {
            leaks.push(format!("{name}: {text}"));
            continue;
        }
        if let Some(kind) = kind {
            assert_eq!(body["error"]["kind"], kind, "{name}: {body}");
        }
        answers.push((name, body));
    }
    assert!(leaks.is_empty(), "leaked:\n{}", leaks.join("\n"));
    let by = |n: &str| &answers.iter().find(|(name, _)| *name == n).unwrap().1;
    // What the caller does get: the node, the plugin and its version, the SQLSTATE, the run.
    assert_eq!(by("sum")["node"], "total");
    assert!(
        by("sum")["error"]["plugin"]
            .as_str()
            .unwrap()
            .starts_with("sum-by-key@")
    );
    assert!(
        by("panic")["error"]["plugin"]
            .as_str()
            .unwrap()
            .starts_with("panic@")
    );
    assert_eq!(by("detail")["error"]["code"], "23505");
    assert!(
        by("detail")["hint"]
            .as_str()
            .unwrap()
            .contains(by("detail")["run_id"].as_str().unwrap())
    );
    assert_eq!(
        by("masked")["results"]["people"]["result"]["data"][0]["ssn"],
        "[REDACTED]"
    );
    assert!(
        by("masked")["mask_errors"][0]
            .as_str()
            .unwrap()
            .contains("mask `plugin:mask-trap` failed"),
        "{}",
        by("masked")
    );
    assert!(by("echo")["results"]["e"]["result"].get("query").is_none());

    let log = {
        use nix::sys::signal::{Signal, kill};
        kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            Signal::SIGTERM,
        )
        .unwrap();
        server.wait(std::time::Duration::from_secs(30)).1
    };
    let audit = std::fs::read_to_string(root.join("data/audit.jsonl")).unwrap();
    assert!(!audit.is_empty());
    assert!(
        !audit.contains(SECRET),
        "the audit trail holds the value:\n{audit}"
    );
    // The detail is kept for the operator, in the server log, marked sensitive.
    assert!(log.contains("sensitive=true"), "{log}");
    assert!(log.contains(SECRET), "the log lost the detail");

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {table}")))
        .execute(&pool)
        .await
        .unwrap();
}
