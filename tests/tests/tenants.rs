//! A database per tenant in served runs, against real PostgreSQL and the real binary: each
//! tenant reaches only its own database (or schema), a tenant id cannot steer the connection, a
//! saturated tenant does not hold up another, the circuit opens and closes per tenant, and the
//! metrics carry at most `max_tenants` tenant labels.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use trellis_tests::{Server, TestDb, allow_rules, custom_dir, run_workflow, unique};

/// A PostgreSQL database of the test's own per tenant (`PREFIX_TENANT`), dropped at the end.
struct TenantDbs {
    admin: sqlx::PgPool,
    base: String,
    prefix: String,
    made: Vec<String>,
}

impl TenantDbs {
    async fn new(pg: &str) -> TenantDbs {
        let admin = sqlx::PgPool::connect(pg).await.unwrap();
        let base = pg.rsplit_once('/').unwrap().0.to_owned();
        TenantDbs {
            admin,
            base,
            prefix: unique("tn"),
            made: Vec::new(),
        }
    }

    /// `postgres://…/PREFIX_${tenant}`.
    fn template(&self) -> String {
        format!("{}/{}_${{tenant}}", self.base, self.prefix)
    }

    /// Makes `PREFIX_tenant` with a table `items` holding `rows`.
    async fn make(&mut self, tenant: &str, rows: &[&str]) {
        let name = format!("{}_{tenant}", self.prefix);
        sql(&self.admin, &format!("CREATE DATABASE {name}")).await;
        self.made.push(name.clone());
        let db = sqlx::PgPool::connect(&format!("{}/{name}", self.base))
            .await
            .unwrap();
        sql(&db, "CREATE TABLE items (name text)").await;
        for row in rows {
            sqlx::query("INSERT INTO items VALUES ($1)")
                .bind(row)
                .execute(&db)
                .await
                .unwrap();
        }
        db.close().await;
    }

    async fn drop_all(self) {
        for name in &self.made {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&self.admin)
            .await;
        }
    }
}

async fn sql(pool: &sqlx::PgPool, text: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(text.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// trellis.toml: `/metrics` and `/v1/pools` open, SQLite `main`, and `[databases.tenant]`
/// with `tenant` (its keys).
fn config(tenant: &str) -> String {
    format!(
        "[server]\npublic = [\"metrics\", \"pools\"]\n[databases.main]\n\
         url = \"sqlite://data/trellis.db\"\n[databases.tenant]\n{tenant}"
    )
}

fn workflow(query: &str) -> String {
    format!(
        "database = \"tenant\"\n[[nodes]]\nid = \"n\"\ntype = \"AsyncSQLDatabaseNode\"\n\
         config = {{ query = \"{query}\", fetch_mode = \"all\" }}\n"
    )
}

fn rules(workflows: &[&str]) -> String {
    let rules: Vec<Value> = workflows
        .iter()
        .flat_map(|w| allow_rules(w, &["n"]))
        .collect();
    json!({ "rules": rules }).to_string()
}

fn user(tenant: &str) -> Value {
    json!({"user_id": format!("u-{tenant}"), "tenant_id": tenant})
}

fn names(body: &Value) -> Vec<String> {
    body["results"]["n"]["result"]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows in {body}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `tenant` label values of `trellis_pool_queries_total` for pool `tenant`.
fn tenant_labels(metrics: &str) -> Vec<String> {
    let mut tenants: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("trellis_pool_queries_total{") && l.contains("pool=\"tenant\""))
        .filter_map(|l| l.split("tenant=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_owned)
        .collect();
    tenants.sort();
    tenants.dedup();
    tenants
}

#[tokio::test]
async fn two_tenants_in_two_databases_see_only_their_own_rows() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let mut dbs = TenantDbs::new(&pg).await;
    dbs.make("acme", &["acme-1", "acme-2"]).await;
    dbs.make("globex", &["globex-1"]).await;
    let dir = custom_dir(
        &workflow("SELECT name FROM items ORDER BY name"),
        &rules(&["w"]),
        &config(&format!(
            "url = \"{}\"\nmin_connections = 0\nmax_connections = 2\nacquire_timeout = \"2s\"\n\
             max_tenants = 2\n",
            dbs.template()
        )),
    );
    let server = Server::start(dir.path(), &[]);

    for _ in 0..2 {
        let (status, body) = run_workflow(&server, "w", &user("acme"), json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(names(&body), ["acme-1", "acme-2"]);
        let (status, body) = run_workflow(&server, "w", &user("globex"), json!({})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(names(&body), ["globex-1"]);
    }

    // No tenant, or a tenant id that would steer the connection elsewhere: refused, and the
    // refusal names neither rows nor the id.
    let no_tenant = json!({"user_id": "nobody"});
    for (who, tenant) in [
        (no_tenant, ""),
        (user("acme@127.0.0.1:5432/postgres"), "acme@"),
        (user("x/../globex"), "x/../"),
        (user("acme' OR '1'='1"), "OR"),
        (user("globex?sslmode=disable"), "sslmode"),
    ] {
        let (status, body) = run_workflow(&server, "w", &who, json!({})).await;
        assert_eq!(status, 403, "{who}: {body}");
        assert_eq!(body["error"]["kind"], "tenant", "{body}");
        let text = body.to_string();
        assert!(
            !text.contains("acme-1") && !text.contains("globex-1"),
            "{text}"
        );
        if !tenant.is_empty() {
            assert!(!text.contains(tenant), "the id is echoed: {text}");
        }
    }

    // A third tenant (no database of its own) at max_tenants = 2: the least recently used idle
    // pool makes room; the metrics never carry more than two tenants.
    let (status, body) = run_workflow(&server, "w", &user("initech"), json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["kind"], "connection", "{body}");
    let m = metrics(&server).await;
    let labels = tenant_labels(&m);
    assert!(labels.len() <= 2, "{labels:?}");
    assert!(labels.contains(&"initech".to_owned()), "{labels:?}\n{m}");
    let pools = server.get_json("/v1/pools", None).await;
    let tenant = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tenant")
        .unwrap_or_else(|| panic!("{pools}"));
    assert_eq!(tenant["per_tenant"], true);
    assert!(tenant["tenants"].as_array().unwrap().len() <= 2, "{tenant}");
    assert!(!pools.to_string().contains("password"));

    // Acme comes back: its pool is opened again, on its own database.
    let (status, body) = run_workflow(&server, "w", &user("acme"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body), ["acme-1", "acme-2"]);
    drop(server);
    dbs.drop_all().await;
}

#[tokio::test]
async fn a_schema_per_tenant_through_search_path() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let mut dbs = TenantDbs::new(&pg).await;
    dbs.make("shared", &[]).await;
    let shared = format!("{}/{}_shared", dbs.base, dbs.prefix);
    let db = sqlx::PgPool::connect(&shared).await.unwrap();
    for tenant in ["acme", "globex"] {
        sql(&db, &format!("CREATE SCHEMA s_{tenant}")).await;
        sql(&db, &format!("CREATE TABLE s_{tenant}.items (name text)")).await;
        sql(
            &db,
            &format!("INSERT INTO s_{tenant}.items VALUES ('{tenant}-row')"),
        )
        .await;
    }
    db.close().await;
    let dir = custom_dir(
        // Set on the session and reset on release: the tenant's schema must survive the reset.
        &workflow("SELECT name FROM items"),
        &rules(&["w"]),
        &config(&format!(
            "url = \"{shared}\"\nsearch_path = \"s_${{tenant}}\"\nmin_connections = 0\n\
             max_connections = 1\n"
        )),
    );
    let server = Server::start(dir.path(), &[]);
    for _ in 0..3 {
        for tenant in ["acme", "globex"] {
            let (status, body) = run_workflow(&server, "w", &user(tenant), json!({})).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(names(&body), [format!("{tenant}-row")]);
        }
    }
    drop(server);
    dbs.drop_all().await;
}

#[tokio::test]
async fn a_saturated_tenant_does_not_hold_up_another_over_http() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let mut dbs = TenantDbs::new(&pg).await;
    dbs.make("acme", &["acme-1"]).await;
    dbs.make("globex", &["globex-1"]).await;
    let dir = custom_dir(
        &workflow("SELECT name FROM items, pg_sleep(1.5)"),
        &rules(&["w", "fast"]),
        &config(&format!(
            "url = \"{}\"\nmin_connections = 0\nmax_connections = 1\n",
            dbs.template()
        )),
    );
    std::fs::write(
        dir.path().join("workflows/fast.toml"),
        workflow("SELECT name FROM items"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);
    let url = server.base_url();
    let run = |workflow: &'static str, tenant: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(format!("{url}/v1/workflows/{workflow}/run"))
                .header("x-trellis-user", user(tenant).to_string())
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, Instant::now())
        })
    };
    // Warm both tenants' pools, so opening a connection is not what is measured.
    for tenant in ["acme", "globex"] {
        let (status, body) = run_workflow(&server, "fast", &user(tenant), json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    // Acme's one connection is busy for 3 × 1.5 s.
    let slow: Vec<_> = (0..3).map(|_| run("w", "acme")).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acme_fast = run("fast", "acme");
    let globex_fast = run("fast", "globex");
    let (status, globex_done) = globex_fast.await.unwrap();
    assert_eq!(status, 200);
    let (status, acme_fast_done) = acme_fast.await.unwrap();
    assert_eq!(status, 200);
    let mut slow_done = Vec::new();
    for s in slow {
        let (status, done) = s.await.unwrap();
        assert_eq!(status, 200);
        slow_done.push(done);
    }
    let first_slow = *slow_done.iter().min().unwrap();
    assert!(
        globex_done < first_slow,
        "globex waited for acme's connection"
    );
    assert!(
        acme_fast_done > first_slow,
        "acme's own fast run did not wait: the pool was not saturated, and the test shows nothing"
    );
    drop(server);
    dbs.drop_all().await;
}

#[tokio::test]
async fn the_circuit_opens_and_closes_per_tenant() {
    let Some(pg) = TestDb::Postgres.url() else {
        return;
    };
    let mut dbs = TenantDbs::new(&pg).await;
    dbs.make("acme", &["acme-1"]).await;
    let dir = custom_dir(
        &workflow("SELECT name FROM items"),
        &rules(&["w"]),
        &config(&format!(
            "url = \"{}\"\nmin_connections = 0\nmax_connections = 2\nacquire_timeout = \"2s\"\n",
            dbs.template()
        )),
    );
    let server = Server::start(dir.path(), &[]);
    // Ghost's database does not exist yet: its connects fail until its circuit opens.
    let mut failures = 0;
    let opened = loop {
        let (status, body) = run_workflow(&server, "w", &user("ghost"), json!({})).await;
        if status == 503 {
            assert_eq!(body["error"]["kind"], "unavailable", "{body}");
            break true;
        }
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["error"]["kind"], "connection", "{body}");
        failures += 1;
        if failures > 10 {
            break false;
        }
    };
    assert!(opened, "the circuit never opened");
    assert!(failures >= 3, "opened after {failures} failures");
    let m = metrics(&server).await;
    assert!(
        m.contains("trellis_pool_circuit_open{pool=\"tenant\",tenant=\"ghost\"} 1"),
        "{m}"
    );
    // Acme is not affected.
    let (status, body) = run_workflow(&server, "w", &user("acme"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(names(&body), ["acme-1"]);
    assert!(
        metrics(&server)
            .await
            .contains("trellis_pool_circuit_open{pool=\"tenant\",tenant=\"acme\"} 0")
    );

    // Ghost's database appears: after the cool-down one trial goes through and the circuit
    // closes.
    dbs.make("ghost", &["ghost-1"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let (status, body) = run_workflow(&server, "w", &user("ghost"), json!({})).await;
        if status == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "never closed: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(names(&body), ["ghost-1"]);
    assert!(
        metrics(&server)
            .await
            .contains("trellis_pool_circuit_open{pool=\"tenant\",tenant=\"ghost\"} 0")
    );
    drop(server);
    dbs.drop_all().await;
}
