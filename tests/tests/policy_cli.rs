//! `trellis policy …` through the real binary: `check` prints exactly the expected problems for
//! each case in `tests/ui/policy/` (a directory per case, paired with `CASE.err`; run with
//! `TRELLIS_BLESS=1` to rewrite them), and `decide`, `explain`, `mask` and `compile` work on the
//! shipped example policies.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use trellis_tests::{expect_output, run_trellis, run_trellis_with_stdin};

const T: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn bad_policy_directories_print_the_expected_problems() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/policy");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 7,
        "expected the policy UI cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let (status, stdout, stderr) = run_trellis(&dir, &["policy", "check", name], T);
        // 78: a configuration error (see `trellis --help`).
        assert_eq!(status.code(), Some(78), "{name}: {stderr}");
        assert_eq!(stdout, "", "{name}");
        failures.extend(expect_output(
            name,
            &dir.join(format!("{name}.err")),
            &stderr,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_shipped_policies_check_clean() {
    let (status, stdout, stderr) = run_trellis(&repo(), &["policy", "check", "policies"], T);
    assert!(status.success(), "{stderr}");
    assert!(stdout.starts_with("policies: ok"), "{stdout}");
}

fn request(user: Value, rt: &str, id: &str, permission: &str, now: Option<&str>) -> String {
    let mut r =
        json!({"user": user, "resource_type": rt, "resource_id": id, "permission": permission});
    if let Some(now) = now {
        r["now"] = json!(now);
    }
    r.to_string()
}

#[test]
fn decide_answers_one_json_line_per_request() {
    let analyst = json!({"user_id": "fin001", "tenant_id": "acme", "attributes": {"department": "finance.analysis", "security_clearance": "secret"}});
    let engineer = json!({"user_id": "eng1", "attributes": {"department": "engineering"}});
    let suspended = json!({"user_id": "fin002", "roles": ["suspended"], "attributes": {"department": "finance"}});
    let input = [
        request(
            analyst.clone(),
            "workflow",
            "finance_report",
            "execute",
            None,
        ),
        request(engineer, "workflow", "finance_report", "execute", None),
        request(suspended, "workflow", "finance_report", "execute", None),
        request(
            analyst.clone(),
            "node",
            "sensitive_data",
            "execute",
            Some("2026-01-05T09:00:00Z"),
        ),
        request(
            analyst,
            "node",
            "sensitive_data",
            "execute",
            Some("2026-01-05T20:00:00Z"),
        ),
    ]
    .join("\n");
    let (status, stdout, stderr) = run_trellis_with_stdin(
        &repo(),
        &["policy", "decide", "--policies", "policies"],
        &input,
        T,
    );
    assert!(status.success(), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"allowed": true, "reason": "rule `finance-workflow-access` granted access", "policies": ["finance-workflow-access"]}),
            json!({"allowed": false, "reason": "no rule granted access", "policies": []}),
            json!({"allowed": false, "reason": "policy `suspended-users` forbids access", "policies": ["suspended-users"]}),
            json!({"allowed": true, "reason": "rule `sensitive-access` granted access", "policies": ["sensitive-access"]}),
            json!({"allowed": false, "reason": "no rule granted access", "policies": []}),
        ]
    );
}

#[test]
fn decide_reads_time_of_day_in_the_given_zone() {
    let analyst = json!({"user_id": "fin001", "attributes": {"department": "finance", "security_clearance": "secret"}});
    // 17:30 UTC is 18:30 in Berlin in winter: inside the window in UTC, outside in Berlin.
    let input = request(
        analyst,
        "node",
        "sensitive_data",
        "execute",
        Some("2026-01-05T17:30:00Z"),
    );
    let utc = run_trellis_with_stdin(
        &repo(),
        &["policy", "decide", "--policies", "policies"],
        &input,
        T,
    );
    let berlin = run_trellis_with_stdin(
        &repo(),
        &[
            "policy",
            "decide",
            "--policies",
            "policies",
            "--timezone",
            "Europe/Berlin",
        ],
        &input,
        T,
    );
    assert!(utc.1.contains("\"allowed\":true"), "{:?}", utc);
    assert!(berlin.1.contains("\"allowed\":false"), "{:?}", berlin);
}

#[test]
fn a_bad_request_line_is_an_error_with_its_line_number() {
    let input = "{\"user\": {\"user_id\": \"u\"}, \"resource_type\": \"nod\", \"resource_id\": \"n\", \"permission\": \"execute\"}";
    let (status, _, stderr) = run_trellis_with_stdin(
        &repo(),
        &["policy", "decide", "--policies", "policies"],
        input,
        T,
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("stdin line 1: unknown resource_type `nod`"),
        "{stderr}"
    );
}

#[test]
fn explain_names_the_deciding_rule_with_its_source_and_each_rule_considered() {
    let analyst = json!({"user_id": "fin001", "attributes": {"department": "finance.analysis", "security_clearance": "secret"}});
    let input = request(
        analyst,
        "node",
        "sensitive_data",
        "execute",
        Some("2026-01-05T09:00:00Z"),
    );
    let (status, stdout, stderr) = run_trellis_with_stdin(
        &repo(),
        &["policy", "explain", "--policies", "policies"],
        &input,
        T,
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "decision: allow (rule `sensitive-access` granted access)\n\
         deciding: sensitive-access (allow rule) at policies/finance.rules.json:25\n\
         considered: sensitive-access (allow rule) at policies/finance.rules.json:25: held\n\
         considered: suspended-users (native forbid) at policies/guardrails.cedar:5: did not hold\n"
    );
}

#[test]
fn mask_applies_the_guide_masks_for_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let analyst = tmp.path().join("analyst.json");
    std::fs::write(
        &analyst,
        json!({"user_id": "fin001", "attributes": {"department": "finance"}}).to_string(),
    )
    .unwrap();
    let hr = tmp.path().join("hr.json");
    std::fs::write(
        &hr,
        json!({"user_id": "hr1", "attributes": {"department": "hr", "is_manager": true}})
            .to_string(),
    )
    .unwrap();
    let rows = json!([{"name": "Jane", "ssn": "123-45-6789", "salary": 85000}, {"name": "Raj", "ssn": "987-65-4321", "salary": 120000}]).to_string();
    let run = |user: &Path| {
        let user = user.to_str().unwrap();
        let (status, stdout, stderr) = run_trellis_with_stdin(
            &repo(),
            &[
                "policy",
                "mask",
                "--policies",
                "policies",
                "--resource",
                "employee_data",
                "--user",
                user,
            ],
            &rows,
            T,
        );
        assert!(status.success(), "{stderr}");
        serde_json::from_str::<Value>(&stdout).unwrap()
    };
    assert_eq!(
        run(&analyst),
        json!([{"name": "Jane", "ssn": "[REDACTED]", "salary": "85*00"}, {"name": "Raj", "ssn": "[REDACTED]", "salary": "12**00"}])
    );
    assert_eq!(run(&hr), serde_json::from_str::<Value>(&rows).unwrap());
}

/// `policy mask --runtime` feeds mask conditions on `runtime.…`; `--plugins` runs `plugin:`
/// masks with the real `email-mask` component; without `--plugins` such a mask fails closed.
#[test]
fn mask_takes_the_runtime_context_and_masking_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let policies = tmp.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("masks.rules.json"),
        json!({"rules": [], "masking": [
            {"resource_id": "n", "field_path": "email", "mask_type": "plugin:email-mask"},
            {"resource_id": "n", "field_path": "ssn", "mask_type": "redact",
             "condition": {"type": "attribute_expression", "value": {"attribute_path": "runtime.channel", "operator": "equals", "value": "external"}}}
        ]})
        .to_string(),
    )
    .unwrap();
    let user = tmp.path().join("user.json");
    std::fs::write(&user, json!({"user_id": "u1"}).to_string()).unwrap();
    let row = json!({"email": "alice.smith@example.com", "ssn": "123-45-6789"}).to_string();
    let plugins = repo().join("plugins");
    let mask = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "mask",
            "--policies",
            policies.to_str().unwrap(),
            "--resource",
            "n",
            "--user",
            user.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_trellis_with_stdin(tmp.path(), &args, &row, T)
    };

    let plugins_arg = ["--plugins", plugins.to_str().unwrap()];
    let (status, stdout, stderr) = mask(&plugins_arg);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"email": "a***@example.com", "ssn": "123-45-6789"})
    );

    let external = [
        &plugins_arg[..],
        &["--runtime", r#"{"channel": "external"}"#],
    ]
    .concat();
    let (status, stdout, stderr) = mask(&external);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"email": "a***@example.com", "ssn": "[REDACTED]"})
    );

    // No plugins: the plugin mask redacts, with a warning naming it.
    let (status, stdout, stderr) = mask(&[]);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap(),
        json!({"email": "[REDACTED]", "ssn": "123-45-6789"})
    );
    assert!(stderr.contains("email-mask"), "{stderr}");

    let (status, _, stderr) = mask(&["--runtime", "[1]"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("--runtime must be a JSON object"),
        "{stderr}"
    );
}

#[test]
fn compile_prints_the_cedar_policies() {
    let (status, stdout, stderr) = run_trellis(
        &repo(),
        &["policy", "compile", "policies/finance.rules.json"],
        T,
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("@id(\"finance-workflow-access\")\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("when { (principal in Trellis::Department::\"finance\") };"),
        "{stdout}"
    );
    assert!(
        stdout.contains("@id(\"mask:finance.rules.json:0\")"),
        "{stdout}"
    );
}
