//! Issue 19 §4 against the real binary and the shipped components: `trellis plugin call` runs one
//! plugin file on JSON lines, with its config or params checked against the schema it declares,
//! and a masking plugin failing closed. On 86032e4 there was no such command.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{repo, run_trellis, run_trellis_with_stdin};

const T: Duration = Duration::from_secs(60);

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
        .collect()
}

#[test]
fn a_node_plugin_transforms_records_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("rows.jsonl");
    std::fs::write(
        &records,
        "{\"team\": \"a\", \"hours\": 2}\n{\"team\": \"a\", \"hours\": 3}\n\n{\"team\": \"b\", \"hours\": 7}\n",
    )
    .unwrap();
    let plugin = repo().join("plugins/sum_by_key.wasm");
    let (plugin, records) = (plugin.to_str().unwrap(), records.to_str().unwrap());
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &[
            "plugin",
            "call",
            plugin,
            "--records",
            records,
            "--config",
            "key=team",
            "--config",
            "field=hours",
            "--config",
            "as=total",
        ],
        T,
    );
    assert!(status.success(), "{stderr}");
    let out = lines(&stdout);
    assert_eq!(out.len(), 3, "{stdout}");
    assert_eq!(
        [&out[0]["total"], &out[1]["total"], &out[2]["total"]],
        [&json!(5), &json!(5), &json!(7)],
        "{stdout}"
    );

    // A key the plugin's schema does not take is refused before any call, with a did-you-mean.
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &[
            "plugin",
            "call",
            plugin,
            "--records",
            records,
            "--config",
            "feild=hours",
        ],
        T,
    );
    assert!(!status.success());
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("unknown key `feild`: did you mean `field`?"),
        "{stderr}"
    );
    assert!(stderr.contains("help: "), "{stderr}");
}

#[test]
fn a_masking_plugin_takes_params_and_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = repo().join("plugins/email_mask.wasm");
    let plugin = plugin.to_str().unwrap();
    let values = "\"alice.smith@example.com\"\n5\n";
    let (status, stdout, stderr) = run_trellis_with_stdin(
        dir.path(),
        &[
            "plugin",
            "call",
            plugin,
            "--params",
            r#"{"keep": 2, "mask": "+"}"#,
            "--field",
            "email",
        ],
        values,
        T,
    );
    // The second value is not an address: redacted, named on stderr, and the command fails.
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(
        lines(&stdout),
        [json!("al+@example.com"), json!("[REDACTED]")],
        "{stdout}"
    );
    assert!(
        stderr.contains("value 2: `email` is not a string (redacted)"),
        "{stderr}"
    );

    let (status, _, stderr) = run_trellis_with_stdin(
        dir.path(),
        &["plugin", "call", plugin, "--params", r#"{"kep": 2}"#],
        values,
        T,
    );
    assert!(!status.success());
    assert!(stderr.contains("did you mean `keep`?"), "{stderr}");
}

/// `--db NAME --user JSON`: the plugin's statements reach that database, decided by the
/// configured policies for that user, as in a served run (issue 19 §4; no such options on
/// 4e5864d). Without `--db` every statement is denied.
#[test]
fn db_and_user_let_the_policies_decide_the_plugins_statements() {
    let Some(pg) = trellis_tests::TestDb::Postgres.url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        format!("[databases.main]\nurl = \"{pg}\"\n"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    std::fs::write(
        dir.path().join("policies/db.rules.json"),
        json!({"rules": [{"id": "query-reads-main", "resource_type": "database",
            "resource_id": "main", "permission": "read", "effect": "allow",
            "conditions": {"type": "department_hierarchy",
                "value": {"department": "finance", "include_children": true}}}]})
        .to_string(),
    )
    .unwrap();
    let plugin = repo().join("plugins/testing/wasm/test_query.wasm");
    let call = |user: Option<&str>| {
        let mut args = vec![
            "plugin",
            "call",
            plugin.to_str().unwrap(),
            "--config",
            "statement=SELECT 41 + 1 AS answer",
        ];
        if let Some(user) = user {
            args.extend(["--db", "main", "--user", user]);
        }
        run_trellis_with_stdin(dir.path(), &args, "{\"id\": 1}\n", T)
    };

    let (status, stdout, stderr) = call(Some(
        r#"{"user_id": "f1", "attributes": {"department": "finance.ops"}}"#,
    ));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        lines(&stdout)[0]["rows"],
        json!([{"answer": 42}]),
        "{stdout}"
    );

    // Another department, and no `--db` at all: denied, named on stderr.
    for user in [
        Some(r#"{"user_id": "s1", "attributes": {"department": "sales"}}"#),
        None,
    ] {
        let (status, stdout, stderr) = call(user);
        assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stderr.contains("Denied"), "{stderr}");
        assert!(stderr.contains("1 of 1 records failed"), "{stderr}");
    }
}
