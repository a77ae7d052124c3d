//! Issue 19 §1: components built for `trellis:plugin@0.1.0` keep loading and running unchanged
//! beside `@0.2.0`. `tests/fixtures/plugins-0.1.0/` holds the shipped examples as they were built
//! for 0.1.0 (at d603aff, before the SDK moved to 0.2.0); `plugins/` holds them built for 0.2.0
//! now. The real binary serves the shipped pipeline with each set and answers the same, and
//! `trellis plugin call` gives the same records and masks for both builds of each example.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{Server, example_dir, repo, run_trellis_with_stdin, run_workflow};

const EXAMPLES: [&str; 3] = ["email_mask.wasm", "row_transform.wasm", "sum_by_key.wasm"];

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/plugins-0.1.0")
}

fn analyst() -> Value {
    json!({"user_id": "fin001", "tenant_id": "acme",
           "attributes": {"department": "finance.analysis"}})
}

/// The shipped example, with its plugins taken from `from`.
fn example_with_plugins(from: &Path) -> tempfile::TempDir {
    let dir = example_dir();
    for name in EXAMPLES {
        std::fs::copy(from.join(name), dir.path().join("plugins").join(name))
            .expect("the example plugins are built (scripts/build-plugins)");
    }
    dir
}

/// The shipped pipeline's answer for the analyst, without its run id; and each plugin's
/// interface version as `GET /v1/plugins` reports it.
async fn serve_pipeline(plugins: &Path) -> (Value, Vec<(String, String)>) {
    let dir = example_with_plugins(plugins);
    let server = Server::start(dir.path(), &[]);
    let (status, mut body) = run_workflow(&server, "finance_report", &analyst(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    body.as_object_mut().unwrap().remove("run_id");
    let listed = server
        .get_json(
            "/v1/plugins",
            Some(&json!({"user_id": "root", "roles": ["admin"]})),
        )
        .await;
    let rows = listed["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"));
    let interfaces = rows
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "loaded", "{r}");
            (
                r["file"].as_str().unwrap().to_owned(),
                r["interface"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    (body, interfaces)
}

#[tokio::test]
async fn the_shipped_pipeline_answers_the_same_with_0_1_0_components() {
    let (old, old_interfaces) = serve_pipeline(&fixtures()).await;
    let (new, new_interfaces) = serve_pipeline(&repo().join("plugins")).await;
    assert_eq!(old, new);
    assert!(
        old["results"]["employee_data"]["data"][0]
            .get("department_employees")
            .is_some(),
        "{old}"
    );
    for name in EXAMPLES {
        let interface = |list: &[(String, String)]| {
            list.iter()
                .find(|(file, _)| file == name)
                .map(|(_, i)| i.clone())
                .unwrap_or_else(|| panic!("{name} not listed"))
        };
        assert_eq!(interface(&old_interfaces), "0.1.0");
        assert_eq!(interface(&new_interfaces), "0.2.0");
    }
}

/// `trellis plugin call FILE ARGS` on `stdin`: its stdout, after checking it succeeded.
fn call(file: &Path, args: &[&str], stdin: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec!["plugin", "call", file.to_str().unwrap()];
    all.extend_from_slice(args);
    let (status, stdout, stderr) =
        run_trellis_with_stdin(dir.path(), &all, stdin, Duration::from_secs(60));
    assert!(status.success(), "{file:?} {args:?}: {stderr}");
    stdout
}

#[test]
fn each_example_gives_the_same_answers_built_for_either_version() {
    let records = [
        r#"{"first": "Ada", "last": "Lovelace", "department": "math", "salary": 10}"#,
        r#"{"first": "Alan", "last": "Turing", "department": "math", "salary": 32}"#,
        r#"{"first": "Grace", "last": "Hopper", "department": "navy", "salary": 5}"#,
    ]
    .join("\n");
    let cases: [(&str, Vec<&str>, String); 4] = [
        (
            "row_transform.wasm",
            vec!["--records", "-"],
            records.clone(),
        ),
        (
            "sum_by_key.wasm",
            vec![
                "--records",
                "-",
                "--config",
                "key=department",
                "--config",
                "field=salary",
            ],
            records,
        ),
        (
            "email_mask.wasm",
            vec!["--records", "-"],
            "\"alice.smith@example.com\"\n\"bob@example.org\"".into(),
        ),
        (
            "email_mask.wasm",
            vec![
                "--records",
                "-",
                "--params",
                "{\"keep\": 3, \"mask\": \"###\"}",
            ],
            "\"alice.smith@example.com\"".into(),
        ),
    ];
    for (name, args, input) in cases {
        let old = call(&fixtures().join(name), &args, &input);
        let new = call(&repo().join("plugins").join(name), &args, &input);
        assert!(!old.trim().is_empty(), "{name}: no output");
        // The same JSON answers: an object's keys may come in another order (the 0.1.0 build
        // of `sum-by-key` wrote every record again, sorted; its 0.2.0 build keeps the record's
        // own order and appends the two fields it adds).
        let answers = |out: &str| -> Vec<serde_json::Value> {
            out.lines()
                .map(|line| serde_json::from_str(line).expect("each answer is JSON"))
                .collect()
        };
        assert_eq!(answers(&old), answers(&new), "{name} {args:?}");
    }
}
