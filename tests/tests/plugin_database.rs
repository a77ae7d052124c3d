//! Issue 19 §1–§2 against the real binary, real PostgreSQL 15 and a real component
//! (`plugins/testing/test-query`, built for `trellis:plugin@0.2.0`): a plugin's statements through
//! the `database` import, each decided by Cedar for the user the run is for.
//!
//! Allowed and denied by a Kailash-style rule and by a native Cedar policy (the plugin sees the
//! denial and fails the run, or carries on, as it chooses); a write refused where only read is
//! allowed (the table unchanged); values always bound; rows and statements capped; the call
//! deadline covering a `pg_sleep` (the statement cancelled on the server); every decision
//! audited. On d603aff there was no `database` import: the component did not load.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_tests::{
    Server, TestDb, allow_rules, custom_dir, eventually, repo, run_workflow, unique,
};

/// The workflow: one `plugin:query` node running `statement` with `params` (`extra`: more
/// config keys, TOML).
fn workflow(statement: &str, params: Value, extra: &str) -> String {
    format!(
        "[[nodes]]\nid = \"q\"\ntype = \"plugin:query\"\n[nodes.config]\nrecords = [{{ id = 1 }}]\n\
         database = \"main\"\nstatement = {statement:?}\nparams = {params}\n{extra}\n",
        params = toml_inline(&params),
    )
}

/// `value` (a JSON object of scalars) as a TOML inline table.
fn toml_inline(value: &Value) -> String {
    let fields: Vec<String> = value
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k} = {v}")).collect())
        .unwrap_or_default();
    format!("{{ {} }}", fields.join(", "))
}

/// The Kailash-style rule letting plugin `query` do `permission` on `main` for department
/// `finance`.
fn database_rule(permission: &str) -> Value {
    json!({"id": format!("query-{permission}s-main"), "resource_type": "database",
    "resource_id": "main", "permission": permission, "effect": "allow",
    "conditions": {"type": "and", "conditions": [
        {"type": "attribute_expression", "value": {"attribute_path": "runtime.plugin",
            "operator": "equals", "value": "query"}},
        {"type": "department_hierarchy", "value": {"department": "finance",
            "include_children": true}}
    ]}})
}

/// A served folder on PostgreSQL `pg` with the test-query plugin, `rules` besides the run
/// rules, and `[plugins.limits.query]` set to `limits`.
fn served(pg: &str, workflow: &str, rules: Vec<Value>, limits: &str) -> tempfile::TempDir {
    let mut all = allow_rules("w", &["q"]);
    all.extend(rules);
    let dir = custom_dir(
        workflow,
        &json!({ "rules": all }).to_string(),
        &format!("[databases.main]\nurl = \"{pg}\"\n[plugins.limits.query]\n{limits}\n"),
    );
    std::fs::copy(
        repo().join("plugins/testing/wasm/test_query.wasm"),
        dir.path().join("plugins/test_query.wasm"),
    )
    .expect("the test plugins are built (scripts/build-plugins)");
    dir
}

fn finance() -> Value {
    json!({"user_id": "fin1", "attributes": {"department": "finance.analysis"}})
}

fn sales() -> Value {
    json!({"user_id": "sales1", "attributes": {"department": "sales"}})
}

/// A table of `n` rows (`id`, `secret`), dropped with the guard.
struct Table {
    name: String,
    url: String,
    admin: sqlx::PgPool,
}

impl Table {
    async fn create(pg: &str, n: i32) -> Table {
        let admin = sqlx::PgPool::connect(pg).await.unwrap();
        let name = unique("plugin_db");
        sql(
            &admin,
            &format!(
                "CREATE TABLE {name} (id int PRIMARY KEY, secret text);\
                 INSERT INTO {name} SELECT g, 'secret-' || g FROM generate_series(1, {n}) g"
            ),
        )
        .await;
        Table {
            name,
            url: pg.to_owned(),
            admin,
        }
    }

    async fn count(&self) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            self.name
        )))
        .fetch_one(&self.admin)
        .await
        .unwrap()
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        // On a runtime of its own, with a connection of its own: the test's may be gone.
        let url = self.url.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let admin = sqlx::PgPool::connect(&url).await.unwrap();
                    sql(&admin, &format!("DROP TABLE IF EXISTS {name}")).await
                })
        })
        .join()
        .ok();
    }
}

async fn sql(pool: &sqlx::PgPool, text: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(text.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// The audit records of `dir` for `action` on `resource`: whether each allowed.
fn audited(dir: &Path, action: &str, resource: &str) -> Vec<bool> {
    let text = std::fs::read_to_string(dir.join("data/audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["action"] == action && r["resource"] == resource)
        .filter_map(|r| r["decision"].as_str().map(|d| d == "allow"))
        .collect()
}

#[tokio::test]
async fn a_rule_lets_the_plugin_read_for_finance_and_denies_everyone_else() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let table = Table::create(&pg, 3).await;
    let statement = format!("SELECT id, secret FROM {} WHERE id = :id", table.name);
    let dir = served(
        &pg,
        &workflow(&statement, json!({"id": 2}), ""),
        vec![database_rule("read")],
        "",
    );
    let server = Server::start(dir.path(), &[]);

    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let record = &body["results"]["q"]["data"][0];
    assert_eq!(
        record["rows"],
        json!([{"id": 2, "secret": "secret-2"}]),
        "{body}"
    );

    // Another department: the default deny. The plugin fails the record, so the run fails
    // (the caller sees which plugin refused which record, never a value).
    let (status, body) = run_workflow(&server, "w", &sales(), json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["kind"], "plugin", "{body}");
    assert!(!body.to_string().contains("secret-"), "{body}");

    // Both decisions are in the audit trail.
    assert!(
        eventually(Duration::from_secs(10), || {
            let seen = audited(dir.path(), "database:read", "database:main");
            seen.contains(&true) && seen.contains(&false)
        })
        .await,
        "audit: {:?}",
        audited(dir.path(), "database:read", "database:main")
    );
}

#[tokio::test]
async fn a_native_cedar_policy_names_the_plugin_in_its_context() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let table = Table::create(&pg, 3).await;
    let statement = format!("SELECT count(*) AS n FROM {}", table.name);
    let dir = served(&pg, &workflow(&statement, json!({}), ""), vec![], "");
    std::fs::write(
        dir.path().join("policies/plugins.cedar"),
        "@id(\"query-reads-main\")\npermit (\n  principal in Trellis::Department::\"finance\",\n  \
         action == Trellis::Action::\"database:read\",\n  resource == Trellis::Database::\"main\"\n)\n\
         when { context.plugin == \"query\" && context.node == \"q\" && context.workflow == \"w\" };\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let finance_dept = json!({"user_id": "fin2", "attributes": {"department": "finance"}});
    let (status, body) = run_workflow(&server, "w", &finance_dept, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["q"]["data"][0]["rows"][0]["n"], 3, "{body}");
    let (status, body) = run_workflow(&server, "w", &sales(), json!({})).await;
    assert_ne!(status, 200, "{body}");
}

#[tokio::test]
async fn a_denied_plugin_may_carry_on() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let dir = served(
        &pg,
        &workflow("SELECT 1 AS one", json!({}), "on_error = \"carry\""),
        vec![database_rule("read")],
        "",
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &sales(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let record = &body["results"]["q"]["data"][0];
    assert_eq!(record["db_error"]["kind"], "denied", "{body}");
    assert_eq!(record["rows"], Value::Null, "{body}");
}

#[tokio::test]
async fn a_write_is_refused_where_only_read_is_allowed() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let table = Table::create(&pg, 3).await;
    for statement in [
        format!("DELETE FROM {} WHERE id > :n", table.name),
        format!("UPDATE {} SET secret = 'x' WHERE id > :n", table.name),
        // Not plainly a read: a data-modifying WITH, and two statements.
        format!(
            "WITH d AS (DELETE FROM {} WHERE id > :n RETURNING id) SELECT count(*) FROM d",
            table.name
        ),
        format!("SELECT :n AS n; DELETE FROM {}", table.name),
    ] {
        let dir = served(
            &pg,
            &workflow(&statement, json!({"n": 0}), "on_error = \"carry\""),
            vec![database_rule("read")],
            "",
        );
        let server = Server::start(dir.path(), &[]);
        let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
        assert_eq!(status, 200, "{statement}: {body}");
        let error = &body["results"]["q"]["data"][0]["db_error"];
        assert_eq!(error["kind"], "denied", "{statement}: {body}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("database:write"),
            "{body}"
        );
        assert_eq!(table.count().await, 3, "{statement} changed the table");
    }

    // With `write` allowed too, the same delete runs.
    let statement = format!("DELETE FROM {} WHERE id > :n", table.name);
    let dir = served(
        &pg,
        &workflow(&statement, json!({"n": 2}), ""),
        vec![database_rule("read"), database_rule("write")],
        "",
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"]["q"]["data"][0]["row_count"], 1, "{body}");
    assert_eq!(table.count().await, 2);
}

#[tokio::test]
async fn values_are_bound_never_spliced() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let table = Table::create(&pg, 3).await;
    let attack = format!("x'; DROP TABLE {}; --", table.name);
    let dir = served(
        &pg,
        &workflow("SELECT :v AS v", json!({"v": attack}), ""),
        vec![database_rule("read")],
        "",
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"]["q"]["data"][0]["rows"][0]["v"],
        attack.as_str()
    );
    assert_eq!(table.count().await, 3);
}

#[tokio::test]
async fn rows_and_statements_are_capped() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let table = Table::create(&pg, 10).await;
    let limits = "max_rows = 5\nmax_statements = 3";
    let all = format!("SELECT id FROM {} ORDER BY id", table.name);
    let dir = served(
        &pg,
        &workflow(&all, json!({}), "on_error = \"carry\""),
        vec![database_rule("read")],
        limits,
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let error = &body["results"]["q"]["data"][0]["db_error"];
    assert_eq!(error["kind"], "limit", "{body}");
    assert!(
        error["message"].as_str().unwrap().contains("max_rows"),
        "{body}"
    );

    // Five rows fit.
    let five = format!("{all} LIMIT 5");
    let dir = served(
        &pg,
        &workflow(&five, json!({}), ""),
        vec![database_rule("read")],
        limits,
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"]["q"]["data"][0]["rows"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // A fourth statement in one call is refused; three run.
    for (repeat, kind) in [(3, Value::Null), (4, json!("limit"))] {
        let dir = served(
            &pg,
            &workflow(
                &five,
                json!({}),
                &format!("on_error = \"carry\"\nrepeat = {repeat}"),
            ),
            vec![database_rule("read")],
            limits,
        );
        let server = Server::start(dir.path(), &[]);
        let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["results"]["q"]["data"][0]["db_error"]["kind"], kind,
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_call_deadline_covers_the_wait_on_pg_sleep() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let marker = unique("sleeper");
    let statement = format!("SELECT pg_sleep(30) AS {marker}");
    let dir = served(
        &pg,
        &workflow(&statement, json!({}), ""),
        vec![database_rule("read")],
        "call_timeout = \"1s\"",
    );
    let server = Server::start(dir.path(), &[]);
    let started = Instant::now();
    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    let took = started.elapsed();
    assert_ne!(status, 200, "{body}");
    assert!(
        took < Duration::from_secs(10),
        "the run took {took:?}: {body}"
    );
    assert_eq!(body["error"]["kind"], "plugin", "{body}");

    // The statement does not go on sleeping on the server.
    let admin = sqlx::PgPool::connect(&pg).await.unwrap();
    let mut still = 1;
    for _ in 0..50 {
        still = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE $1",
        )
        .bind(format!("%{marker}%"))
        .fetch_one(&admin)
        .await
        .unwrap();
        if still == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (The marker is bound, so this probe's own text does not match.)
    assert_eq!(still, 0, "pg_sleep still running on the server");
}

/// A call's repeated statements are decided once (the request is the same each time) and
/// audited every time.
#[tokio::test]
async fn every_statement_of_a_call_is_audited() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let dir = served(
        &pg,
        &workflow("SELECT :n::int AS n", json!({"n": 1}), "repeat = 5"),
        vec![database_rule("read")],
        "",
    );
    let server = Server::start(dir.path(), &[]);
    let (status, body) = run_workflow(&server, "w", &finance(), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(10), || audited(
            dir.path(),
            "database:read",
            "database:main"
        )
        .len()
            >= 5)
        .await,
        "audit: {:?}",
        audited(dir.path(), "database:read", "database:main")
    );
    assert_eq!(
        audited(dir.path(), "database:read", "database:main"),
        vec![true; 5]
    );
}
