//! Config errors as the real binary shows them: the file and line, the lines themselves with the
//! place marked, and one `help:` line, for trellis.toml, rules files and workflow files alike.
//! On 518306a each was one line of text with `hint:` split back out of the message, and no
//! lines of the file.

use std::time::Duration;

use trellis_tests::run_trellis;

const LIMIT: Duration = Duration::from_secs(60);

/// The output has `line` of the file, drawn under its `file:line` header, and exactly one
/// `help:` line containing `help`, and no `hint:` left in a message.
fn assert_drawn(stderr: &str, header: &str, line: &str, help: &str) {
    assert!(
        stderr.contains(&format!("[{header}")),
        "no header {header}:\n{stderr}"
    );
    let drawn = stderr
        .lines()
        .find(|l| l.contains('│') && l.contains(line))
        .unwrap_or_else(|| panic!("the line `{line}` is not drawn:\n{stderr}"));
    assert!(drawn.trim_start().starts_with(char::is_numeric), "{drawn}");
    let helps: Vec<&str> = stderr.lines().filter(|l| l.contains("help:")).collect();
    assert_eq!(helps.len(), 1, "one help line:\n{stderr}");
    assert!(helps[0].contains(help), "{stderr}");
    assert!(!stderr.contains("hint:"), "{stderr}");
}

#[test]
fn a_typo_in_trellis_toml_is_drawn_with_its_line_and_help() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[databases.main]\nurl = \"sqlite://data/x.db\"\nmax_conections = 3\n",
    )
    .unwrap();
    let (status, _, stderr) = run_trellis(dir.path(), &["serve"], LIMIT);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("trellis.toml:6:1: key `databases.main.max_conections`"),
        "{stderr}"
    );
    assert_drawn(
        &stderr,
        "trellis.toml:6:1]",
        "max_conections = 3",
        "check the spelling",
    );
    // The marker sits under the key.
    assert!(
        stderr.contains("╰── `databases.main.max_conections`"),
        "{stderr}"
    );
}

#[test]
fn every_problem_in_the_rules_is_drawn_with_its_line_and_its_own_help() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("a.rules.json"),
        "{\"rules\": [\n  {\"id\": \"r1\", \"resource_type\": \"node\", \"resource_id\": \"n\", \"permission\": \"execute\", \"effect\": \"allow\",\n   \"conditions\": {\"type\": \"attribute_check\", \"value\": {}}}\n]}\n",
    )
    .unwrap();
    std::fs::write(
        policies.join("b.rules.json"),
        "{\"rules\": [\n  {\"id\": \"r2\", \"resource_type\": \"node\", \"resource_id\": \"n\", \"permission\": \"exceute\", \"effect\": \"allow\"}\n]}\n",
    )
    .unwrap();
    let (status, _, stderr) = run_trellis(dir.path(), &["policy", "check", "policies"], LIMIT);
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("2 problems in the policy directory"),
        "{stderr}"
    );
    for (header, line, help) in [
        (
            "policies/a.rules.json:3",
            "\"attribute_check\"",
            "did you mean `attribute_expression`?",
        ),
        (
            "policies/b.rules.json:2",
            "\"exceute\"",
            "did you mean `execute`?",
        ),
    ] {
        assert!(
            stderr.contains(&format!("[{header}")),
            "{header}:\n{stderr}"
        );
        assert!(
            stderr.lines().any(|l| l.contains('│') && l.contains(line)),
            "{line}:\n{stderr}"
        );
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.contains(&format!("help: {help}")))
                .count(),
            1,
            "{help}:\n{stderr}"
        );
    }
    assert!(!stderr.contains("hint:"), "{stderr}");
}

#[test]
fn a_bad_workflow_file_is_drawn_when_it_is_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trellis.toml"),
        "[databases.main]\nurl = \"sqlite://data/x.db\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
    std::fs::write(
        dir.path().join("workflows/w.toml"),
        "[[nodes]]\nid = \"n\"\ntype = \"AsyncSQLDatabaseNode\"\nconfig = { query = \"SELECT 1\" }\n\n[[connections]]\nfrom = \"n.result\"\nto = \"nope.x\"\n",
    )
    .unwrap();
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &["run", "w", "--user", "{\"user_id\": \"a\"}"],
        LIMIT,
    );
    assert_ne!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("workflows/w.toml:6"), "{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains('│') && l.contains("[[connections]]")),
        "{stderr}"
    );
    assert!(!stderr.contains("hint:"), "{stderr}");
}
