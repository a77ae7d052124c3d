//! Issue 18 §4 against the real binary: every Kailash permission a rule may name is either
//! asked for by the host (`view` filters `GET /v1/workflows`, `write_input` guards what a caller
//! supplies) or refused at load (`mask_output`, `modify`, `delete`, `share`); `user.attributes`
//! with `contains` asks whether the user has an attribute; a comma-separated string given to a
//! list operator gets the split list as its hint. Each failed on `2e483a0`.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{Server, custom_dir, run_trellis, run_workflow};

fn rule(id: &str, rt: &str, resource: &str, permission: &str) -> Value {
    json!({"id": id, "resource_type": rt, "resource_id": resource, "permission": permission,
        "effect": "allow"})
}

const READS_INPUT: &str = "[inputs.n]\ntype = \"integer\"\ndefault = 1\n[[nodes]]\nid = \"q\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT :n AS n\", params = { n = \"$inputs.n\" } }\n";

#[tokio::test]
async fn listings_show_what_the_caller_may_view_and_inputs_need_write_input() {
    let rules = json!({"rules": [
        rule("run", "workflow", "w", "execute"),
        rule("q", "node", "q", "execute"),
        rule("q-read", "node", "q", "read_output"),
        rule("view-other", "workflow", "other", "view"),
        // Only the `writer` role may supply `n`.
        {"id": "q-input", "resource_type": "node", "resource_id": "q", "permission": "write_input",
         "effect": "allow", "role": "writer"},
    ]});
    let dir = custom_dir(READS_INPUT, &rules.to_string(), "");
    std::fs::write(dir.path().join("workflows/other.toml"), READS_INPUT).unwrap();
    let server = Server::start(dir.path(), &[]);
    let user = json!({"user_id": "u"});
    let writer = json!({"user_id": "w", "roles": ["writer"]});

    let listing = server.get_json("/v1/workflows", Some(&user)).await;
    let names: Vec<&str> = listing["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["other"], "{listing}");

    // The default is the workflow's own: no `write_input` needed.
    let (status, body) = run_workflow(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["q"]["result"]["data"][0]["n"], 1, "{body}");
    // A supplied value needs it.
    let (status, body) = run_workflow(&server, "w", &user, json!({"inputs": {"n": 7}})).await;
    assert_eq!(
        status, 403,
        "an input reached a node without write_input: {body}"
    );
    assert_eq!(
        body["denied"],
        json!({"resource_type": "node", "resource_id": "q", "permission": "write_input"}),
        "{body}"
    );
    let (status, body) = run_workflow(&server, "w", &writer, json!({"inputs": {"n": 7}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["q"]["result"]["data"][0]["n"], 7, "{body}");
}

#[test]
fn permissions_never_asked_for_are_refused_at_load() {
    for (rt, permission) in [
        ("workflow", "modify"),
        ("workflow", "delete"),
        ("workflow", "share"),
        ("node", "mask_output"),
    ] {
        let rules = json!({"rules": [rule("r", rt, "w", permission)]}).to_string();
        let dir = custom_dir(READS_INPUT, &rules, "");
        let (status, _, stderr) = run_trellis(
            dir.path(),
            &["serve", "--listen", "127.0.0.1:0"],
            Duration::from_secs(60),
        );
        assert_eq!(status.code(), Some(78), "{permission}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "rule `r`: `{permission}` is never asked for on a {rt}"
            )),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn contains_on_the_attribute_map_asks_whether_the_user_has_the_attribute() {
    let has_badge = json!({"type": "attribute_expression", "value": {
        "attribute_path": "user.attributes", "operator": "contains", "value": "badge"}});
    let mut node = rule("q", "node", "q", "execute");
    node["conditions"] = has_badge;
    let rules = json!({"rules": [
        rule("run", "workflow", "w", "execute"), node, rule("q-read", "node", "q", "read_output"),
    ]});
    let dir = custom_dir(READS_INPUT, &rules.to_string(), "");
    let server = Server::start(dir.path(), &[]);
    let with = json!({"user_id": "a", "attributes": {"badge": "B-7"}});
    let without = json!({"user_id": "b", "attributes": {"department": "x"}});
    let (status, body) = run_workflow(&server, "w", &with, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = run_workflow(&server, "w", &without, json!({})).await;
    assert_eq!(status, 403, "{body}");

    // Any other operator on the whole map is refused, saying what works.
    let dir = tempfile::tempdir().unwrap();
    let bad = json!({"rules": [{"id": "eq", "resource_type": "node", "resource_id": "q",
        "permission": "execute", "effect": "allow", "conditions": {"type": "attribute_expression",
        "value": {"attribute_path": "user.attributes", "operator": "equals", "value": "x"}}}]});
    std::fs::write(dir.path().join("a.rules.json"), bad.to_string()).unwrap();
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &["policy", "check", "."],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("`user.attributes` is the whole attribute map: `equals` cannot compare it"),
        "{stderr}"
    );
}

#[test]
fn a_comma_separated_string_for_a_list_operator_gets_the_split_list_as_its_hint() {
    let dir = tempfile::tempdir().unwrap();
    let rules = json!({"rules": [{"id": "in", "resource_type": "node", "resource_id": "q",
        "permission": "execute", "effect": "allow", "conditions": {"type": "attribute_expression",
        "value": {"attribute_path": "user.user_id", "operator": "in", "value": "alice, bob"}}}]});
    std::fs::write(dir.path().join("a.rules.json"), rules.to_string()).unwrap();
    let (_, _, stderr) = run_trellis(
        dir.path(),
        &["policy", "check", "."],
        Duration::from_secs(30),
    );
    assert!(
        stderr.contains(r#"help: write `"value": ["alice", "bob"]`"#),
        "{stderr}"
    );
}

/// `runtime.ip_address` was never filled in served runs, so `ip_range` conditions never held.
#[tokio::test]
async fn ip_range_reads_the_client_address_and_forwarded_for_only_through_trusted_proxies() {
    let mut node = rule("q", "node", "q", "execute");
    node["conditions"] = json!({"type": "ip_range", "value": {"cidrs": ["127.0.0.0/8"]}});
    let rules = json!({"rules": [
        rule("run", "workflow", "w", "execute"), node, rule("q-read", "node", "q", "read_output"),
    ]})
    .to_string();
    let user = json!({"user_id": "u"});
    let run_with = |server: &Server, forwarded: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(format!("{}/v1/workflows/w/run", server.base_url()))
            .header("x-trellis-user", user.to_string())
            .json(&json!({}));
        if let Some(f) = forwarded {
            request = request.header("x-forwarded-for", f);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // No trusted proxy: the peer (loopback) is the client; the header is ignored.
    let dir = custom_dir(READS_INPUT, &rules, "");
    let server = Server::start(dir.path(), &[]);
    assert_eq!(run_with(&server, None).await, 200);
    assert_eq!(run_with(&server, Some("203.0.113.9")).await, 200);
    drop(server);

    // Behind a trusted proxy (this loopback peer), the forwarded address is the client.
    let dir = custom_dir(
        READS_INPUT,
        &rules,
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let server = Server::start(dir.path(), &[]);
    assert_eq!(run_with(&server, Some("203.0.113.9")).await, 403);
    assert_eq!(run_with(&server, Some("127.0.0.7")).await, 200);
    // A forged left end does not help: the nearest untrusted hop counts.
    assert_eq!(run_with(&server, Some("127.0.0.7, 203.0.113.9")).await, 403);
    assert_eq!(run_with(&server, None).await, 200);
}
