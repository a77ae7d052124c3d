//! Issue 19 §3 against the real binary and the real `email-mask` component: a masking rule's
//! `params` reach the plugin, and a rule whose params the plugin's declared schema refuses is
//! refused when the policies load. On 86032e4 the params were parsed and dropped (the plugin
//! always got `{}`), and any params loaded.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{Server, allow_rules, custom_dir, repo, run_trellis, run_workflow};

const WORKFLOW: &str = r#"
[[nodes]]
id = "people"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 'alice.smith@example.com' AS email", fetch_mode = "one" }
"#;

/// A served folder whose one masking rule masks `people.email` with `plugin:email-mask`.
fn served_dir(mask: Value) -> tempfile::TempDir {
    let mut rule = json!({"resource_id": "people", "field_path": "email",
        "mask_type": "plugin:email-mask"});
    if let Some(extra) = mask.as_object() {
        for (k, v) in extra {
            rule[k] = v.clone();
        }
    }
    let rules = json!({"rules": allow_rules("w", &["people"]), "masking": [rule]}).to_string();
    let dir = custom_dir(WORKFLOW, &rules, "");
    std::fs::copy(
        repo().join("plugins/email_mask.wasm"),
        dir.path().join("plugins/email_mask.wasm"),
    )
    .expect("the example plugins are built (scripts/build-plugins)");
    dir
}

#[tokio::test]
async fn a_masking_rules_params_reach_the_plugin() {
    let user = json!({"user_id": "u"});
    for (params, expected) in [
        (json!({}), "a***@example.com"),
        (
            json!({"params": {"keep": 3, "mask": "###"}}),
            "ali###@example.com",
        ),
    ] {
        let dir = served_dir(params);
        let server = Server::start(dir.path(), &[]);
        let (status, body) = run_workflow(&server, "w", &user, json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["results"]["people"]["result"]["data"]["email"], expected,
            "{body}"
        );
    }
}

#[test]
fn params_the_plugin_refuses_stop_the_policies_from_loading() {
    let dir = served_dir(json!({"params": {"kepp": 2, "mask": 5}}));
    let (status, _, stderr) = run_trellis(dir.path(), &["serve"], Duration::from_secs(30));
    assert_eq!(status.code(), Some(78), "{stderr}");
    for expected in [
        "`params` for `plugin:email-mask`: unknown key `kepp`: did you mean `keep`?",
        "`params` for `plugin:email-mask`: value is not of type \"string\" (at `/mask`)",
    ] {
        assert!(stderr.contains(expected), "no `{expected}` in:\n{stderr}");
    }

    // Params on a built-in mask, or params that are not an object, are refused too.
    for rule in [
        json!({"mask_type": "redact", "params": {"keep": 1}}),
        json!({"params": [1]}),
    ] {
        let dir = served_dir(rule);
        let (status, _, stderr) = run_trellis(dir.path(), &["serve"], Duration::from_secs(30));
        assert_eq!(status.code(), Some(78), "{stderr}");
        assert!(stderr.contains("`params`"), "{stderr}");
    }
}
