//! Plugins written in Python (issue 19 §5) against the real binary: `trellis plugin new --lang
//! python` writes a project that `trellis plugin build` turns into a component with
//! componentize-py (installed into `~/.cache/trellis/` the first time, as `scripts/build-plugins`
//! does before the tests), and the shipped example `enrich` reads the host's database through the
//! `database` import of `trellis:plugin@0.2.0`, over HTTP in a workflow, allowed by a rule or
//! denied without one.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use trellis_tests::{
    Server, allow_rules, custom_dir, repo, run_trellis, run_workflow, trellis_bin,
};

/// The first build may install componentize-py (a virtual environment and a pip install).
const BUILD: Duration = Duration::from_secs(600);

/// The preamble of a WebAssembly component (magic, version 13, layer 1), not a core module.
const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

/// Whether `name` (an import or export name) is in the component `wasm`.
fn names(wasm: &[u8], name: &str) -> bool {
    wasm.windows(name.len()).any(|w| w == name.as_bytes())
}

#[test]
fn plugin_new_lang_python_builds_into_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["plugin", "new", "--lang", "python", "hello-py"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("created node plugin `hello-py` (Python)"),
        "{stdout}"
    );
    let project = dir.path().join("hello-py");
    for file in [
        "app.py",
        "trellis.py",
        "wit/plugin.wit",
        "pyproject.toml",
        "README.md",
        ".gitignore",
    ] {
        assert!(project.join(file).is_file(), "no {file}");
    }
    assert_eq!(
        std::fs::read_to_string(project.join("wit/plugin.wit")).unwrap(),
        std::fs::read_to_string(repo().join("sdk/wit/plugin.wit")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(project.join("trellis.py")).unwrap(),
        std::fs::read_to_string(repo().join("sdk/python/trellis.py")).unwrap()
    );
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &[
            "plugin",
            "new",
            "--lang",
            "python",
            "hello-mask",
            "--masking",
        ],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    let app = std::fs::read_to_string(dir.path().join("hello-mask/app.py")).unwrap();
    assert!(app.contains("kind=\"masking\""), "{app}");
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &["plugin", "new", "--lang", "python", "x", "--sdk", "sdk"],
        Duration::from_secs(30),
    );
    assert!(!status.success());
    assert!(stderr.contains("`--sdk` is for Rust plugins"), "{stderr}");

    let (status, stdout, stderr) = run_trellis(dir.path(), &["plugin", "build", "hello-py"], BUILD);
    assert!(status.success(), "{stderr}");
    let wasm_path = dir.path().join("plugins/hello_py.wasm");
    assert!(stdout.trim().ends_with("hello_py.wasm"), "{stdout}");
    assert!(stderr.contains("with componentize-py 0.25.1"), "{stderr}");
    let wasm = std::fs::read(&wasm_path).unwrap();
    assert_eq!(wasm[..8], COMPONENT_PREAMBLE, "not a component");
    for name in [
        "trellis:plugin/meta@0.2.0",
        "trellis:plugin/transform@0.2.0",
        "trellis:plugin/mask@0.2.0",
        "trellis:plugin/database@0.2.0",
    ] {
        assert!(names(&wasm, name), "the component does not name `{name}`");
    }
    assert!(
        !dir.path().join("plugins/.hello_py.wasm.tmp").exists(),
        "the temporary file is renamed"
    );
}

/// A Python error while componentize-py imports `app.py` is shown, and named as the build's.
#[test]
fn a_python_error_fails_the_build_with_its_traceback() {
    let dir = tempfile::tempdir().unwrap();
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &["plugin", "new", "--lang", "python", "broken"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    let app = dir.path().join("broken/app.py");
    let text = std::fs::read_to_string(&app).unwrap();
    std::fs::write(&app, format!("import no_such_module\n{text}")).unwrap();
    let (status, _, stderr) = run_trellis(dir.path(), &["plugin", "build", "broken"], BUILD);
    assert!(!status.success());
    assert!(
        stderr.contains("No module named 'no_such_module'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("componentize-py could not build `broken`"),
        "{stderr}"
    );
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
    assert!(!dir.path().join("plugins/broken.wasm").exists());
}

// ---- the example `enrich` on the 0.2.0 host ------------------------------------------------

/// Expenses that name an employee, and the employees.
const MIGRATION: &str = "
CREATE TABLE employees (id INTEGER PRIMARY KEY, name TEXT NOT NULL, department TEXT NOT NULL);
CREATE TABLE expenses (id INTEGER PRIMARY KEY, employee_id INTEGER, amount DOUBLE PRECISION);
INSERT INTO employees VALUES (1, 'Ada', 'eng'), (2, 'Alan', 'math');
INSERT INTO expenses VALUES (1, 1, 12.5), (2, 2, 7.0), (3, 1, 3.0), (4, 9, 1.0);
";

const WORKFLOW: &str = r#"
[[nodes]]
id = "expenses"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT id, employee_id, amount FROM expenses ORDER BY id" }

[[nodes]]
id = "enriched"
type = "plugin:enrich"
[nodes.config]
table = "employees"
key = "employee_id"
fields = ["name", "department"]
prefix = "employee_"

[[connections]]
from = "expenses.result.data"
to = "enriched.records"
"#;

/// A folder serving `WORKFLOW` with the built `enrich` and the tables above; `database_read`
/// adds the rule that lets the plugin read `main`.
fn enrich_dir(database_read: bool) -> tempfile::TempDir {
    let mut rules = allow_rules("w", &["expenses", "enriched"]);
    if database_read {
        rules.push(
            json!({"id": "enrich-reads-main", "resource_type": "database",
            "resource_id": "main", "permission": "read", "effect": "allow"}),
        );
    }
    let dir = custom_dir(
        WORKFLOW,
        &json!({ "rules": rules }).to_string(),
        "[migrations]\ndir = \"migrations\"\n\n[plugins.limits.enrich]\ncall_timeout = \"5s\"\n",
    );
    let migration = dir.path().join("migrations/0001_people");
    std::fs::create_dir_all(&migration).unwrap();
    std::fs::write(migration.join("up.sql"), MIGRATION).unwrap();
    std::fs::write(
        migration.join("down.sql"),
        "DROP TABLE expenses;\nDROP TABLE employees;\n",
    )
    .unwrap();
    std::fs::write(
        migration.join("migration.toml"),
        "description = \"employees and expenses\"\n",
    )
    .unwrap();
    std::fs::copy(
        repo().join("plugins/python/wasm/enrich.wasm"),
        dir.path().join("plugins/enrich.wasm"),
    )
    .expect("the example plugins are built (scripts/build-plugins)");
    dir
}

/// Serves `dir`, whose `enrich.wasm` (18 MB: CPython in a component) `serve` compiles before it
/// listens. With this file's other tests building Python projects at the same time on two
/// cores, the debug build's compile has taken over the 30 s [`Server::start`] waits.
fn serve_enrich(dir: &std::path::Path) -> Server {
    Server::start_within(&trellis_bin(), dir, &[], &[], Duration::from_secs(180))
}

#[tokio::test]
async fn enrich_adds_the_employee_read_through_the_database_import() {
    let dir = enrich_dir(true);
    let server = serve_enrich(dir.path());
    let user = json!({"user_id": "u"});
    let (status, body) = run_workflow(&server, "w", &user, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let data = &body["results"]["enriched"]["data"];
    assert_eq!(
        data[0],
        json!({"id": 1, "employee_id": 1, "amount": 12.5,
               "employee_name": "Ada", "employee_department": "eng"}),
        "{body}"
    );
    assert_eq!(data[1]["employee_name"], "Alan", "{body}");
    assert_eq!(data[2]["employee_name"], "Ada", "{body}");
    // No employee 9: the record passes unchanged (`on_missing` is `keep` by default).
    assert_eq!(
        data[3],
        json!({"id": 4, "employee_id": 9, "amount": 1.0}),
        "{body}"
    );
}

/// The response names the node and the plugin; the record's error (the kind `denied`) is in the
/// server's log, under the run id (checked with the 0.1.0 host and a build of `enrich` without
/// the `database` import, whose helper answers `denied` the same way).
#[tokio::test]
async fn enrich_without_a_database_rule_fails_its_records_as_denied() {
    let dir = enrich_dir(false);
    let server = serve_enrich(dir.path());
    let user = json!({"user_id": "u"});
    let (status, body): (u16, Value) = run_workflow(&server, "w", &user, json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["node"], "enriched", "{body}");
    assert_eq!(body["error"]["kind"], "plugin", "{body}");
    assert!(!body.to_string().contains("Ada"), "no row leaks: {body}");
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGTERM).unwrap();
    let (_, log) = server.wait(Duration::from_secs(30));
    assert!(
        log.contains("plugin `enrich@0.1.0` failed on record 0: database denied: "),
        "{log}"
    );
}
