//! AsyncSQLDatabaseNode against the real servers: named parameters on every dialect, the row
//! mapping, fetch modes, error classes, and retries only on transient failures; and
//! `trellis query` through the real binary.

use std::time::Duration;

use serde_json::{Value, json};
use trellis_host::parse_database_url;
use trellis_host::{ErrorKind, Fetch, Params, SqlNode, SqlNodeConfig};
use trellis_host::{Pool, PoolConfig};
use trellis_tests::{TestDb, run_trellis, unique};

fn pool(url: &str) -> Pool {
    let mut c = PoolConfig::new(unique("sql"), parse_database_url(url).unwrap());
    c.min_connections = 1;
    c.max_connections = 2;
    Pool::new(c)
}

fn named(v: Value) -> Params {
    Params::Named(v.as_object().unwrap().clone())
}

async fn run(
    pool: &Pool,
    query: &str,
    params: Params,
    fetch: Fetch,
) -> Result<Value, trellis_host::SqlError> {
    let mut c = SqlNodeConfig::new(query);
    c.params = params;
    c.fetch = fetch;
    SqlNode::new(pool.clone(), c).run().await
}

/// The same statements with named parameters (`:id` next to `:id_type`) on each dialect.
async fn named_parameters(url: &str, create: &str) {
    let pool = pool(url);
    let table = unique("people");
    run(
        &pool,
        &create.replace("{t}", &table),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    let insert =
        format!("INSERT INTO {table} (id, id_type, note) VALUES (:id, :id_type, ':id stays')");
    for (id, kind) in [(1, "staff"), (2, "contractor"), (3, "staff")] {
        let out = run(
            &pool,
            &insert,
            named(json!({"id": id, "id_type": kind})),
            Fetch::All,
        )
        .await
        .unwrap();
        assert_eq!(out["result"]["row_count"], json!(1));
    }
    let out = run(
        &pool,
        &format!("SELECT id, id_type, note FROM {table} WHERE id_type = :id_type AND id >= :id ORDER BY id"),
        named(json!({"id": 2, "id_type": "staff"})),
        Fetch::All,
    )
    .await
    .unwrap();
    assert_eq!(
        out["result"]["data"],
        json!([{"id": 3, "id_type": "staff", "note": ":id stays"}])
    );
    // A missing or unused parameter is named.
    let err = run(
        &pool,
        &format!("SELECT * FROM {table} WHERE id = :id"),
        named(json!({"idd": 1})),
        Fetch::All,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.to_string().contains("`:id`"), "{err}");
    run(
        &pool,
        &format!("DROP TABLE {table}"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn named_parameters_on_postgres() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    named_parameters(&url, "CREATE TABLE {t} (id INT, id_type TEXT, note TEXT)").await;
}

#[tokio::test]
async fn named_parameters_on_mariadb() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    named_parameters(
        &url,
        "CREATE TABLE {t} (id INT, id_type VARCHAR(20), note TEXT)",
    )
    .await;
}

#[tokio::test]
async fn named_parameters_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    named_parameters(
        &format!("sqlite://{}", dir.path().join("p.db").display()),
        "CREATE TABLE {t} (id INTEGER, id_type TEXT, note TEXT)",
    )
    .await;
}

#[tokio::test]
async fn postgres_rows_map_to_json() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let table = unique("types");
    run(
        &pool,
        &format!(
            "CREATE TABLE {table} (i2 SMALLINT, i4 INT, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION, n NUMERIC(30,10), \
             b BOOLEAN, t TEXT, vc VARCHAR(10), u UUID, j JSON, jb JSONB, by BYTEA, d DATE, tm TIME, \
             ts TIMESTAMP, tstz TIMESTAMPTZ, ai INT[], at TEXT[], nul TEXT)"
        ),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    // Every value bound from JSON to the column's own type.
    let values = json!({
        "i2": 7, "i4": -42, "i8": 9007199254740993i64, "f4": 1.5, "f8": 2.25,
        "n": "12345678901234567890.0123456789", "b": true, "t": "text", "vc": "short",
        "u": "8d6f6c2e-0c6b-4a53-9a8e-3f3f8c1e2d4b", "j": {"a": [1, 2]}, "jb": {"k": "v"},
        "by": "AAEC/w==", "d": "2024-05-01", "tm": "09:30:15", "ts": "2024-05-01T09:30:00.5",
        "tstz": "2024-05-01T09:30:00+02:00", "ai": [1, 2, 3], "at": ["x", "y"], "nul": null
    });
    let columns: Vec<&str> = values
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let insert = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        columns.join(", "),
        columns
            .iter()
            .map(|c| format!(":{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    run(&pool, &insert, named(values.clone()), Fetch::All)
        .await
        .unwrap();
    let out = run(
        &pool,
        &format!("SELECT * FROM {table}"),
        Params::None,
        Fetch::One,
    )
    .await
    .unwrap();
    let row = &out["result"]["data"];
    let expected = json!({
        "i2": 7, "i4": -42, "i8": 9007199254740993i64, "f4": 1.5, "f8": 2.25,
        "n": "12345678901234567890.0123456789", "b": true, "t": "text", "vc": "short",
        "u": "8d6f6c2e-0c6b-4a53-9a8e-3f3f8c1e2d4b", "j": {"a": [1, 2]}, "jb": {"k": "v"},
        "by": "AAEC/w==", "d": "2024-05-01", "tm": "09:30:15", "ts": "2024-05-01T09:30:00.500",
        "tstz": "2024-05-01T07:30:00Z", "ai": [1, 2, 3], "at": ["x", "y"], "nul": null
    });
    assert_eq!(row, &expected);
    assert_eq!(out["result"]["database_type"], json!("postgresql"));
    // A value that does not fit its column's type says which parameter and why.
    let err = run(
        &pool,
        &format!("INSERT INTO {table} (u) VALUES (:u)"),
        named(json!({"u": "not-a-uuid"})),
        Fetch::All,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("parameter 1 cannot be bound as `UUID`: `not-a-uuid` is not a UUID"),
        "{err}"
    );
    // A type with no mapping names the column and the fix.
    let err = run(
        &pool,
        "SELECT '1 day'::interval AS span",
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("column `span` has type `INTERVAL`"),
        "{err}"
    );
    let ok = run(
        &pool,
        "SELECT '1 day'::interval::text AS span",
        Params::None,
        Fetch::One,
    )
    .await
    .unwrap();
    assert_eq!(ok["result"]["data"]["span"], json!("1 day"));
    run(
        &pool,
        &format!("DROP TABLE {table}"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    pool.close().await;
}

/// A NULL element of an array is `null` in its place. The mapper read arrays as `Vec<T>`, and
/// sqlx refused the first NULL element ("unexpected null"), failing the whole statement.
#[tokio::test]
async fn postgres_array_elements_may_be_null() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let out = run(
        &pool,
        "SELECT ARRAY[true, NULL] AS b, ARRAY[1::int2, NULL] AS i2, ARRAY[NULL, 1] AS i4, \
         ARRAY[1::int8, NULL] AS i8, ARRAY[1.5::float4, NULL] AS f4, ARRAY[2.25::float8, NULL] AS f8, \
         ARRAY[2::numeric, NULL] AS n, ARRAY['a', NULL] AS t, ARRAY['v'::varchar, NULL] AS vc, \
         ARRAY['8d6f6c2e-0c6b-4a53-9a8e-3f3f8c1e2d4b'::uuid, NULL] AS u, \
         ARRAY['{\"k\": 1}'::jsonb, NULL] AS jb, \
         ARRAY[timestamptz '2024-05-01 09:30:00+00', NULL] AS tstz, \
         ARRAY[date '2024-05-01', NULL] AS d, ARRAY[NULL::text, NULL] AS only_nulls",
        Params::None,
        Fetch::One,
    )
    .await
    .unwrap();
    assert_eq!(
        out["result"]["data"],
        json!({
            "b": [true, null], "i2": [1, null], "i4": [null, 1], "i8": [1, null],
            "f4": [1.5, null], "f8": [2.25, null], "n": ["2", null], "t": ["a", null],
            "vc": ["v", null], "u": ["8d6f6c2e-0c6b-4a53-9a8e-3f3f8c1e2d4b", null],
            "jb": [{"k": 1}, null], "tstz": ["2024-05-01T09:30:00Z", null],
            "d": ["2024-05-01", null], "only_nulls": [null, null]
        })
    );
    pool.close().await;
}

/// The elements of a `NUMERIC[]` read as a single `NUMERIC` does: with PostgreSQL's display
/// scale, and `NaN` and the infinities as PostgreSQL prints them. They were read through sqlx's
/// `BigDecimal`, which gave `1.5000` for `1.50` and refused `NaN`, failing the whole statement.
#[tokio::test]
async fn postgres_numeric_array_elements_read_as_a_numeric_does() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let out = run(
        &pool,
        "SELECT ARRAY[1.50, NULL, -0.001, 12345678901234567890.1, 0]::numeric[] AS n, \
         1.50::numeric AS one, ARRAY['NaN', 'Infinity', '-Infinity', '2.0']::numeric[] AS special",
        Params::None,
        Fetch::One,
    )
    .await
    .unwrap();
    assert_eq!(
        out["result"]["data"],
        json!({
            "n": ["1.50", null, "-0.001", "12345678901234567890.1", "0"],
            "one": "1.50",
            "special": ["NaN", "Infinity", "-Infinity", "2.0"]
        })
    );
    pool.close().await;
}

/// A `null` element of a JSON array bound to a PostgreSQL array parameter is a NULL element, so
/// an array read from a row (where a NULL element is `null`) binds back as it was. It was
/// refused ("element 1: expected an integer, got `null`").
#[tokio::test]
async fn postgres_array_parameters_may_hold_null() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let arrays = json!({
        "b": [null, true], "i2": [1, null], "i4": [1, null, 3], "i8": [null],
        "f4": [1.5, null], "f8": [null, 2.25], "n": ["1.50", null], "t": ["a", null],
        "u": [null, "8d6f6c2e-0c6b-4a53-9a8e-3f3f8c1e2d4b"]
    });
    let out = run(
        &pool,
        "SELECT CAST(:b AS bool[]) AS b, CAST(:i2 AS int2[]) AS i2, CAST(:i4 AS int4[]) AS i4, \
         CAST(:i8 AS int8[]) AS i8, CAST(:f4 AS float4[]) AS f4, CAST(:f8 AS float8[]) AS f8, \
         CAST(:n AS numeric[]) AS n, CAST(:t AS text[]) AS t, CAST(:u AS uuid[]) AS u",
        named(arrays.clone()),
        Fetch::One,
    )
    .await
    .unwrap();
    assert_eq!(out["result"]["data"], arrays);
    pool.close().await;
}

#[tokio::test]
async fn mariadb_rows_map_to_json() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    let pool = pool(&url);
    let out = run(
        &pool,
        "SELECT CAST(7 AS SIGNED) AS i, CAST(18446744073709551615 AS UNSIGNED) AS u, 2.5e0 AS f, \
         CAST(1234567890.123456789 AS DECIMAL(20,9)) AS d, 'txt' AS t, TRUE AS b, \
         DATE '2024-05-01' AS dt, TIMESTAMP '2024-05-01 09:30:00' AS ts, X'0001' AS bin, NULL AS n, \
         :obj AS obj",
        named(json!({"obj": {"a": 1}})),
        Fetch::One,
    )
    .await
    .unwrap();
    let row = &out["result"]["data"];
    assert_eq!(row["i"], json!(7));
    assert_eq!(row["u"], json!(18446744073709551615u64));
    assert_eq!(row["f"], json!(2.5));
    assert_eq!(row["d"], json!("1234567890.123456789"));
    assert_eq!(row["t"], json!("txt"));
    assert_eq!(row["dt"], json!("2024-05-01"));
    assert_eq!(row["ts"], json!("2024-05-01T09:30:00"));
    assert_eq!(row["bin"], json!("AAE="));
    assert_eq!(row["n"], Value::Null);
    assert_eq!(row["obj"], json!("{\"a\":1}"), "objects bind as JSON text");
    pool.close().await;
}

#[tokio::test]
async fn sqlite_rows_map_to_json() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&format!("sqlite://{}", dir.path().join("t.db").display()));
    run(
        &pool,
        "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, flag BOOLEAN)",
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    run(
        &pool,
        "INSERT INTO t VALUES (:i, :r, :s, X'0001', :flag)",
        named(json!({"i": 5, "r": 0.25, "s": "x", "flag": true})),
        Fetch::All,
    )
    .await
    .unwrap();
    let out = run(&pool, "SELECT * FROM t", Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(
        out["result"]["data"],
        json!({"i": 5, "r": 0.25, "s": "x", "b": "AAE=", "flag": true})
    );
    pool.close().await;
}

#[tokio::test]
async fn fetch_modes_one_all_many() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let q = "SELECT g AS n FROM generate_series(1, 5) AS g";
    let all = run(&pool, q, Params::None, Fetch::All).await.unwrap();
    assert_eq!(all["result"]["data"].as_array().unwrap().len(), 5);
    assert_eq!(all["result"]["row_count"], json!(5));
    let one = run(&pool, q, Params::None, Fetch::One).await.unwrap();
    assert_eq!(one["result"]["data"], json!({"n": 1}));
    let none = run(&pool, "SELECT 1 AS n WHERE false", Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(none["result"]["data"], Value::Null);
    let many = run(&pool, q, Params::None, Fetch::Many(2)).await.unwrap();
    assert_eq!(many["result"]["data"], json!([{"n": 1}, {"n": 2}]));
    assert_eq!(many["result"]["row_count"], json!(2));
    // `many` stops decoding after fetch_size rows of a large result, and the connection is
    // usable right after.
    let big = run(
        &pool,
        "SELECT g AS n FROM generate_series(1, 200000) AS g",
        Params::None,
        Fetch::Many(3),
    )
    .await
    .unwrap();
    assert_eq!(big["result"]["data"], json!([{"n": 1}, {"n": 2}, {"n": 3}]));
    let after = run(&pool, "SELECT 42 AS n", Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(after["result"]["data"], json!({"n": 42}));
    pool.close().await;
}

#[tokio::test]
async fn fetch_one_gives_rows_affected_or_the_first_returned_row() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let t = unique("one");
    let one = |sql: String, params: Params| {
        let pool = pool.clone();
        async move { run(&pool, &sql, params, Fetch::One).await.unwrap() }
    };
    one(format!("CREATE TABLE {t} (id INT, v TEXT)"), Params::None).await;
    let insert = one(
        format!("INSERT INTO {t} SELECT g, 'x' FROM generate_series(1, 3) AS g"),
        Params::None,
    )
    .await;
    assert_eq!(insert["result"]["data"], Value::Null);
    assert_eq!(insert["result"]["row_count"], json!(3), "rows affected");
    let update = one(
        format!("UPDATE {t} SET v = :v WHERE id >= :from RETURNING id"),
        named(json!({"v": "y", "from": 2})),
    )
    .await;
    assert_eq!(update["result"]["row_count"], json!(1));
    assert!(
        [json!({"id": 2}), json!({"id": 3})].contains(&update["result"]["data"]),
        "{update}"
    );
    let changed = one(
        format!("SELECT count(*) AS n FROM {t} WHERE v = 'y'"),
        Params::None,
    )
    .await;
    assert_eq!(
        changed["result"]["data"],
        json!({"n": 2}),
        "every row updated"
    );
    let none = one(format!("SELECT id FROM {t} WHERE id > 10"), Params::None).await;
    assert_eq!(
        (&none["result"]["data"], &none["result"]["row_count"]),
        (&Value::Null, &json!(0))
    );
    one(format!("DROP TABLE {t}"), Params::None).await;
    pool.close().await;
}

#[tokio::test]
async fn syntax_and_constraint_errors_are_not_retried() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let err = run(&pool, "SELEC 1", Params::None, Fetch::All)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Query);
    assert_eq!(err.sqlstate(), Some("42601"));
    assert!(!err.to_string().contains("attempts"), "{err}");
    assert_eq!(pool.stats().queries.executed, 1, "a syntax error ran once");
    let table = unique("uniq");
    run(
        &pool,
        &format!("CREATE TABLE {table} (id INT PRIMARY KEY)"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    run(
        &pool,
        &format!("INSERT INTO {table} VALUES (1)"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    let before = pool.stats().queries.executed;
    let err = run(
        &pool,
        &format!("INSERT INTO {table} VALUES (1)"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap_err();
    assert_eq!(err.sqlstate(), Some("23505"));
    assert_eq!(
        pool.stats().queries.executed,
        before + 1,
        "a constraint error ran once"
    );
    let json = err.to_json();
    assert_eq!(json["kind"], json!("query"));
    run(
        &pool,
        &format!("DROP TABLE {table}"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn lost_connections_are_retried() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("retry");
    let mut c = PoolConfig::new(&name, parse_database_url(&url).unwrap());
    c.min_connections = 1;
    c.max_connections = 1;
    let pool = Pool::new(c);
    pool.initialize().await.unwrap();
    let admin = self::pool(&url);
    run(
        &admin,
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'trellis/{name}'"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    // The only connection is dead; the node's first attempt may hit it, and the retry succeeds.
    let mut config = SqlNodeConfig::new("SELECT 7 AS n");
    config.retry_delay = Duration::from_millis(10);
    let out = SqlNode::new(pool.clone(), config).run().await.unwrap();
    assert_eq!(out["result"]["data"], json!([{"n": 7}]));
    pool.close().await;
    admin.close().await;
}

#[tokio::test]
async fn statement_timeout_is_a_timeout_error() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let mut c = SqlNodeConfig::new("SELECT pg_sleep(5)");
    c.timeout = Some(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let err = SqlNode::new(pool.clone(), c).run().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    // The pool replaces the abandoned connection.
    let out = run(&pool, "SELECT 1 AS n", Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(out["result"]["data"], json!({"n": 1}));
    assert_eq!(pool.stats().connections.closed["timeout"], 1);
    pool.close().await;
}

#[test]
fn node_config_from_json_names_what_is_wrong() {
    let c = SqlNodeConfig::from_json(
        &json!({"query": "SELECT 1", "fetch_mode": "many", "fetch_size": 3, "timeout": 1.5}),
    )
    .unwrap();
    assert_eq!(c.fetch, Fetch::Many(3));
    assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
    for (config, wanted) in [
        (json!({}), "missing `query`"),
        (
            json!({"query": "x", "fetch_mode": "some"}),
            "unknown `fetch_mode` `some`",
        ),
        (
            json!({"query": "x", "fetch_size": 0}),
            "`fetch_size` must be",
        ),
        (
            json!({"query": "x", "params": "id=1"}),
            "`params` must be an array",
        ),
    ] {
        let err = SqlNodeConfig::from_json(&config).unwrap_err().to_string();
        assert!(err.contains(wanted), "{config}: {err}");
    }
}

#[test]
fn trellis_query_prints_the_node_output() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &[
            "query",
            "--url",
            &url,
            "SELECT :id::int AS id, :tags::text[] AS tags, :name AS name",
            "--param",
            "id=42",
            "--param",
            r#"tags=["a","b"]"#,
            "--param",
            "name=plain text",
            "--fetch",
            "one",
        ],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        out["result"]["data"],
        json!({"id": 42, "tags": ["a", "b"], "name": "plain text"})
    );
    // On the embedded default (SQLite in ./data).
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["query", "SELECT 1 + 1 AS two"],
        Duration::from_secs(30),
    );
    assert!(status.success(), "{stderr}");
    assert!(dir.path().join("data/trellis.db").is_file());
    let out: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["result"]["data"], json!([{"two": 2}]));
    // Errors go to stderr with exit 1.
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["query", "--url", &url, "SELEC 1"],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1));
    assert_eq!(stdout, "");
    assert!(
        stderr
            .contains("error: syntax error at or near \"SELEC\" (SQLSTATE 42601, at character 1)"),
        "{stderr}"
    );
    let (status, _, stderr) = run_trellis(
        dir.path(),
        &["query", "--db", "nope", "SELECT 1"],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("no database named `nope` in embedded default; configured: main"),
        "{stderr}"
    );
}

/// `fetch_mode = "many"` makes the server produce only `fetch_size` rows: the side effect
/// counted per produced row (a sequence, a user variable) stops at `fetch_size`.
#[tokio::test]
async fn fetch_many_never_produces_the_rest_on_postgres() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let pool = pool(&url);
    let seq = unique("many_seq");
    let t = unique("many_t");
    let lease = pool.acquire().await.unwrap();
    let exec = |sql: String, params: Params, fetch: Fetch| {
        let lease = &lease;
        async move { lease.execute(&sql, &params, fetch).await }
    };
    exec(format!("CREATE SEQUENCE {seq}"), Params::None, Fetch::All)
        .await
        .unwrap();
    exec(
        format!("CREATE TABLE {t} (x INT)"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    let produced = format!("SELECT last_value FROM {seq}");
    let last = |out: trellis_host::Output| out.rows[0]["last_value"].clone();
    let query = format!(
        "SELECT g, nextval('{seq}') AS s FROM generate_series(1, :upto) AS g WHERE g > :above ORDER BY g"
    );
    let params = named(json!({"upto": 100000, "above": 10}));
    // Outside a transaction.
    let out = exec(query.clone(), params.clone(), Fetch::Many(3))
        .await
        .unwrap();
    let gs: Vec<Value> = out.rows.iter().map(|r| r["g"].clone()).collect();
    assert_eq!(gs, [json!(11), json!(12), json!(13)]);
    assert_eq!(out.row_count, 3);
    let n = last(
        exec(produced.clone(), Params::None, Fetch::One)
            .await
            .unwrap(),
    );
    assert_eq!(n, json!(3), "the server produced more rows than asked for");
    // Inside the caller's transaction: the transaction stays the caller's.
    exec("BEGIN".into(), Params::None, Fetch::All)
        .await
        .unwrap();
    exec(
        format!("INSERT INTO {t} VALUES (1)"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    let out = exec(query.clone(), params.clone(), Fetch::Many(2))
        .await
        .unwrap();
    assert_eq!(out.rows.len(), 2);
    let n = last(
        exec(produced.clone(), Params::None, Fetch::One)
            .await
            .unwrap(),
    );
    assert_eq!(n, json!(5));
    let seen = exec(
        format!("SELECT count(*) AS n FROM {t}"),
        Params::None,
        Fetch::One,
    )
    .await
    .unwrap();
    assert_eq!(seen.rows[0]["n"], json!(1));
    exec("ROLLBACK".into(), Params::None, Fetch::All)
        .await
        .unwrap();
    let kept = exec(
        format!("SELECT count(*) AS n FROM {t}"),
        Params::None,
        Fetch::One,
    )
    .await
    .unwrap();
    assert_eq!(
        kept.rows[0]["n"],
        json!(0),
        "fetch many committed the caller's transaction"
    );
    // What a cursor cannot run still runs: a data-modifying WITH, a bad column's own error.
    exec(
        format!("INSERT INTO {t} VALUES (1), (2), (3)"),
        Params::None,
        Fetch::All,
    )
    .await
    .unwrap();
    let deleted = exec(
        format!("WITH d AS (DELETE FROM {t} RETURNING x) SELECT x FROM d ORDER BY x"),
        Params::None,
        Fetch::Many(2),
    )
    .await
    .unwrap();
    assert_eq!(deleted.rows.len(), 2);
    let err = exec(
        format!("SELECT nope FROM {t}"),
        Params::None,
        Fetch::Many(2),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("42703"), "{err}");
    let after = exec("SELECT 7 AS n".into(), Params::None, Fetch::Many(5))
        .await
        .unwrap();
    assert_eq!(after.rows[0]["n"], json!(7));
    exec(format!("DROP TABLE {t}"), Params::None, Fetch::All)
        .await
        .unwrap();
    exec(format!("DROP SEQUENCE {seq}"), Params::None, Fetch::All)
        .await
        .unwrap();
    drop(lease);
    pool.close().await;
}

#[tokio::test]
async fn fetch_many_never_produces_the_rest_on_mariadb() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    let pool = pool(&url);
    let lease = pool.acquire().await.unwrap();
    lease
        .execute("SET @n = 0", &Params::None, Fetch::All)
        .await
        .unwrap();
    let out = lease
        .execute(
            "SELECT seq, (@n := @n + 1) AS k FROM seq_1_to_100000 WHERE seq > :above",
            &named(json!({"above": 10})),
            Fetch::Many(3),
        )
        .await
        .unwrap();
    let seqs: Vec<Value> = out.rows.iter().map(|r| r["seq"].clone()).collect();
    assert_eq!(seqs, [json!(11), json!(12), json!(13)]);
    let n = lease
        .execute("SELECT @n AS n", &Params::None, Fetch::One)
        .await
        .unwrap();
    assert_eq!(
        n.rows[0]["n"],
        json!(3),
        "the server produced more rows than asked for"
    );
    // The limit is for that statement only.
    let all = lease
        .execute("SELECT seq FROM seq_1_to_10", &Params::None, Fetch::All)
        .await
        .unwrap();
    assert_eq!(all.rows.len(), 10);
    drop(lease);
    pool.close().await;
}

/// Rows read through the cursor map like any other rows (binary, extension types included), a
/// fetch size beyond what `FETCH` takes still works, and neither an error while fetching nor a
/// success leaves a transaction, a cursor or a savepoint behind.
#[tokio::test]
async fn fetch_many_maps_every_type_and_leaves_nothing_open() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    let name = unique("many-open");
    let mut c = PoolConfig::new(&name, parse_database_url(&url).unwrap());
    c.min_connections = 1;
    c.max_connections = 1;
    let monitor = pool(&url);
    let pool = Pool::new(c);
    // What the server says of the pool's one connection, seen from another connection.
    let state = || {
        let (monitor, name) = (monitor.clone(), name.clone());
        async move {
            let out = run(
                &monitor,
                "SELECT state FROM pg_stat_activity WHERE application_name = :app",
                named(json!({"app": format!("trellis/{name}")})),
                Fetch::All,
            )
            .await
            .unwrap();
            out["result"]["data"].clone()
        }
    };
    let idle = json!([{"state": "idle"}]);
    let lease = pool.acquire().await.unwrap();
    let run = |sql: &'static str, fetch: Fetch| {
        let lease = &lease;
        async move { lease.execute(sql, &Params::None, fetch).await }
    };
    let typed = "SELECT timestamptz '2024-05-01 09:30:00+00' AS at, '\\x0102'::bytea AS b, \
                 '{\"k\": [1]}'::jsonb AS j, 12345.6789::numeric AS n, ARRAY[1, 2] AS a \
                 FROM generate_series(1, 5)";
    let all = run(typed, Fetch::All).await.unwrap();
    let many = run(typed, Fetch::Many(2)).await.unwrap();
    assert_eq!(many.rows, all.rows[..2].to_vec());
    assert_eq!(
        Value::from(many.rows[0].clone()),
        json!({"at": "2024-05-01T09:30:00Z", "b": "AQI=", "j": {"k": [1]}, "n": "12345.6789", "a": [1, 2]})
    );
    assert_eq!(state().await, idle);
    // Larger than FETCH takes: read the plain way.
    let huge = run(
        "SELECT g FROM generate_series(1, 3) AS g",
        Fetch::Many(usize::MAX),
    )
    .await
    .unwrap();
    assert_eq!(huge.rows.len(), 3);
    // The query fails at the fourth row: three asked for, no error; five asked for, the error.
    let failing = "SELECT 1 / (4 - g) AS x FROM generate_series(1, 10) AS g";
    assert_eq!(run(failing, Fetch::Many(3)).await.unwrap().rows.len(), 3);
    let err = run(failing, Fetch::Many(5)).await.unwrap_err();
    assert!(err.to_string().contains("22012"), "{err}");
    assert_eq!(state().await, idle);
    // Inside the caller's transaction: no cursor left, and the transaction is still theirs.
    run("BEGIN", Fetch::All).await.unwrap();
    assert_eq!(run(typed, Fetch::Many(1)).await.unwrap().rows.len(), 1);
    let cursors = "SELECT count(*) AS n FROM pg_cursors WHERE name = 'trellis_fetch_many'";
    assert_eq!(
        run(cursors, Fetch::One).await.unwrap().rows[0]["n"],
        json!(0)
    );
    assert_eq!(state().await, json!([{"state": "idle in transaction"}]));
    let err = run(failing, Fetch::Many(5)).await.unwrap_err();
    assert!(err.to_string().contains("22012"), "{err}");
    // As after any failed statement, the transaction is aborted until the caller ends it.
    let aborted = run("SELECT 1", Fetch::All).await.unwrap_err();
    assert!(aborted.to_string().contains("25P02"), "{aborted}");
    run("ROLLBACK", Fetch::All).await.unwrap();
    assert_eq!(state().await, idle);
    drop(lease);
    pool.close().await;
    monitor.close().await;
}

#[tokio::test]
async fn fetch_many_reads_pgvector_columns() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let pool = pool(&url);
    let lease = pool.acquire().await.unwrap();
    lease
        .execute(
            "CREATE EXTENSION IF NOT EXISTS vector",
            &Params::None,
            Fetch::All,
        )
        .await
        .unwrap();
    let q = "SELECT g, ARRAY[g, 0.5]::vector AS v FROM generate_series(1, 4) AS g";
    let many = lease
        .execute(q, &Params::None, Fetch::Many(2))
        .await
        .unwrap();
    let vs: Vec<Value> = many.rows.iter().map(|r| r["v"].clone()).collect();
    assert_eq!(vs, [json!([1.0, 0.5]), json!([2.0, 0.5])]);
    drop(lease);
    pool.close().await;
}

/// `Fetch::Capped` (what a plugin's statement runs with) writes the rows as JSON text straight
/// from the driver's row: the text must be exactly what the rows of `Fetch::All` serialize to,
/// on every dialect, with escaping, nulls, two columns of one name, no rows and the cap.
async fn capped_rows_are_the_text_of_the_rows(url: &str, typed: &str, series: &str) {
    let pool = pool(url);
    let exec = |sql: String, fetch: Fetch| {
        let pool = pool.clone();
        async move { pool.execute(&sql, &Params::None, fetch).await.unwrap() }
    };
    for sql in [
        typed.to_owned(),
        // A row with two columns of one name keeps the last value, in the first one's place.
        "SELECT 1 AS a, 'x' AS b, 2 AS a".to_owned(),
        // A script: each result set's columns are its own.
        "SELECT 1 AS a, 2 AS b; SELECT 3 AS b, 4 AS b".to_owned(),
        format!("{series} LIMIT 0"),
    ] {
        let all = exec(sql.clone(), Fetch::All).await;
        let capped = exec(sql.clone(), Fetch::Capped(100)).await;
        // No rows at all reads as a statement without rows: no text, as no `rows`.
        let text = capped.text.as_deref().unwrap_or("[]");
        assert_eq!(text, serde_json::to_string(&all.rows).unwrap(), "{sql}");
        assert_eq!(capped.text.is_some(), !all.rows.is_empty(), "{sql}");
        assert!(capped.rows.is_empty());
        assert_eq!(capped.row_count, all.row_count, "{sql}");
        assert_eq!(capped.returns_rows, all.returns_rows, "{sql}");
    }
    // The cap: the first rows only, counted.
    let capped = exec(series.to_owned(), Fetch::Capped(2)).await;
    assert_eq!(capped.text.as_deref(), Some(r#"[{"g":1},{"g":2}]"#));
    assert_eq!(capped.row_count, 2);
    // A statement without rows: rows affected, no text.
    let table = unique("capped");
    exec(format!("CREATE TABLE {table} (a INT)"), Fetch::All).await;
    let insert = exec(
        format!("INSERT INTO {table} (a) VALUES (1), (2)"),
        Fetch::Capped(1),
    )
    .await;
    assert_eq!(
        (insert.text, insert.row_count, insert.returns_rows),
        (None, 2, false)
    );
    exec(format!("DROP TABLE {table}"), Fetch::All).await;
    pool.close().await;
}

#[tokio::test]
async fn capped_rows_are_json_text_on_postgres() {
    let Some(url) = TestDb::Postgres.url() else {
        return;
    };
    capped_rows_are_the_text_of_the_rows(
        &url,
        "SELECT g AS \"we\"\"ird \\ name\", E'he said \"hi\"\\n\\t\\u00e9 \u{1F600}' AS s, \
         NULL::text AS n, 1.5::float8 AS f, 'NaN'::float8 AS nan, 12345.6789::numeric AS d, \
         '{\"k\": [1, null]}'::jsonb AS j, '\\x00ff'::bytea AS b, ARRAY['a', 'b'] AS arr, \
         timestamptz '2024-05-01 09:30:00+02' AS at, g % 2 = 0 AS even \
         FROM generate_series(1, 3) AS g",
        "SELECT g FROM generate_series(1, 5) AS g",
    )
    .await;
}

#[tokio::test]
async fn capped_rows_are_json_text_on_mariadb() {
    let Some(url) = TestDb::Mysql.url() else {
        return;
    };
    capped_rows_are_the_text_of_the_rows(
        &url,
        "SELECT 7 AS `we\"ird \\\\ name`, 'he said \"hi\"\\n\\t\u{e9} \u{1F600}' AS s, NULL AS n, \
         2.5e0 AS f, CAST(1234567890.123456789 AS DECIMAL(20,9)) AS d, X'00ff' AS b, \
         TIMESTAMP '2024-05-01 09:30:00' AS ts, TRUE AS yes \
         UNION ALL SELECT 8, '', NULL, -0.5e0, 0, X'', TIMESTAMP '2024-05-02 00:00:00', FALSE",
        "WITH RECURSIVE s (g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 5) \
         SELECT g FROM s",
    )
    .await;
}

#[tokio::test]
async fn capped_rows_are_json_text_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    capped_rows_are_the_text_of_the_rows(
        &url,
        "SELECT 7 AS \"we\"\"ird \\ name\", 'he said \"hi\"' || char(10, 9) || '\u{e9} \u{1F600}' AS s, \
         NULL AS n, 0.25 AS f, X'00ff' AS b \
         UNION ALL SELECT 8, '', NULL, -1.5, X''",
        "WITH RECURSIVE s (g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 5) \
         SELECT g FROM s",
    )
    .await;
}
