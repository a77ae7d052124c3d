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
