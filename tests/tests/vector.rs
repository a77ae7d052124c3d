//! AsyncPostgreSQLVectorNode against the real pgvector server and SQLite: every operation,
//! every filter operator (compiled SQL checked against the Rust evaluator), injection attempts,
//! `SET LOCAL` settings not leaking, dimension and length errors, and the SQLite backend's exact
//! search against pgvector's exact search on the same data.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use trellis_host::{DatabaseTarget, parse_database_url};
use trellis_host::{Fetch, Params};
use trellis_host::{
    IndexSpec, IndexType, Metric, NewVector, SearchQuery, TableName, VectorError,
    VectorFilter as Filter, VectorNode, VectorStore,
};
use trellis_host::{Pool, PoolConfig};
use trellis_tests::{TestDb, unique};

fn pg_store(name: &str, url: &str, max: usize) -> VectorStore {
    let mut c = PoolConfig::new(name, parse_database_url(url).unwrap());
    c.min_connections = 1;
    c.max_connections = max;
    c.acquire_timeout = Duration::from_secs(10);
    VectorStore::new(Pool::new(c))
}

fn sqlite_store(dir: &tempfile::TempDir) -> VectorStore {
    let mut c = PoolConfig::new(
        "vec_sqlite",
        DatabaseTarget::Sqlite {
            path: Some(dir.path().join("vectors.db")),
        },
    );
    c.min_connections = 1;
    c.max_connections = 2;
    VectorStore::new(Pool::new(c))
}

fn table(prefix: &str) -> TableName {
    TableName::parse(&unique(prefix)).unwrap()
}

async fn node(store: &VectorStore, config: Value) -> Result<Value, VectorError> {
    VectorNode::from_json(&config)?.run(store).await
}

fn ids(result: &Value) -> Vec<i64> {
    result["result"]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

/// Every operation through the node's JSON surface, on either backend.
async fn every_operation(store: &VectorStore, pg: bool) {
    let t = unique("vec_ops");
    let r = node(
        store,
        json!({"operation": "create_table", "table_name": t, "dimension": 3}),
    )
    .await
    .unwrap();
    assert_eq!(r["result"]["dimension"], json!(3));
    // Idempotent with the same dimension; refused with another.
    node(
        store,
        json!({"operation": "create_table", "table_name": t, "dimension": 3}),
    )
    .await
    .unwrap();
    let err = node(
        store,
        json!({"operation": "create_table", "table_name": t, "dimension": 4}),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("already exists with dimension 3"),
        "{err}"
    );

    let one = node(
        store,
        json!({"operation": "insert", "table_name": t, "vector": [1, 0, 0], "metadata": {"type": "article", "n": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(one["result"]["inserted"], json!(1));
    let batch = node(
        store,
        json!({"operation": "insert", "table_name": t,
               "vectors": [[0, 1, 0], [0, 0, 1], [1, 1, 0]],
               "metadata": [{"type": "report", "n": 2}, {"type": "article", "n": 3}, {"type": "note", "n": 4}]}),
    )
    .await
    .unwrap();
    assert_eq!(batch["result"]["inserted"], json!(3));
    let batch_ids: Vec<i64> = batch["result"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(batch_ids.len(), 3);

    let count = node(store, json!({"operation": "count", "table_name": t}))
        .await
        .unwrap();
    assert_eq!(count["result"]["count"], json!(4));

    let index = node(
        store,
        json!({"operation": "create_index", "table_name": t, "index_type": "hnsw", "distance_metric": "cosine", "m": 8, "ef_construction": 32}),
    )
    .await
    .unwrap();
    assert_eq!(
        index["result"]["index_name"],
        json!(format!("{t}_embedding_hnsw_cosine_idx"))
    );
    assert_eq!(index["result"]["created"], json!(pg));

    let found = node(
        store,
        json!({"operation": "search", "table_name": t, "vector": [0.9, 0.1, 0], "limit": 2, "ef_search": 100}),
    )
    .await
    .unwrap();
    assert_eq!(found["result"]["count"], json!(2));
    assert_eq!(found["result"]["distance_metric"], json!("cosine"));
    let first = &found["result"]["matches"][0];
    assert_eq!(first["metadata"], json!({"type": "article", "n": 1}));
    let d = first["distance"].as_f64().unwrap();
    let expected = 1.0 - 0.9 / (0.9f64 * 0.9 + 0.1 * 0.1).sqrt();
    assert!((d - expected).abs() < 1e-6, "{d} vs {expected}");

    let filtered = node(
        store,
        json!({"operation": "search", "table_name": t, "vector": [0, 1, 0], "limit": 10, "metadata_filter": {"type": "article"}}),
    )
    .await
    .unwrap();
    let got: BTreeSet<i64> = ids(&filtered).into_iter().collect();
    assert_eq!(got.len(), 2);
    for m in filtered["result"]["matches"].as_array().unwrap() {
        assert_eq!(m["metadata"]["type"], json!("article"));
    }

    // l2 and ip order.
    let l2 = node(
        store,
        json!({"operation": "search", "table_name": t, "vector": [0, 0, 2], "distance_metric": "l2", "limit": 1}),
    )
    .await
    .unwrap();
    assert_eq!(l2["result"]["matches"][0]["id"], json!(batch_ids[1]));
    assert!((l2["result"]["matches"][0]["distance"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    let ip = node(
        store,
        json!({"operation": "search", "table_name": t, "vector": [1, 1, 0], "distance_metric": "ip", "limit": 1}),
    )
    .await
    .unwrap();
    assert_eq!(ip["result"]["matches"][0]["id"], json!(batch_ids[2]));
    assert!((ip["result"]["matches"][0]["distance"].as_f64().unwrap() + 2.0).abs() < 1e-6);

    // Upsert replaces one row and adds another.
    let up = node(
        store,
        json!({"operation": "upsert", "table_name": t, "vectors": [[0, 0, 5], [5, 5, 5]],
               "metadata": [{"type": "replaced"}, {"type": "new"}], "ids": [batch_ids[0], 1000]}),
    )
    .await
    .unwrap();
    assert_eq!(up["result"]["upserted"], json!(2));
    let count = node(store, json!({"operation": "count", "table_name": t}))
        .await
        .unwrap();
    assert_eq!(count["result"]["count"], json!(5));
    let replaced = node(
        store,
        json!({"operation": "count", "table_name": t, "metadata_filter": {"type": "replaced"}}),
    )
    .await
    .unwrap();
    assert_eq!(replaced["result"]["count"], json!(1));
    let near = node(
        store,
        json!({"operation": "search", "table_name": t, "vector": [0, 0, 1], "limit": 1, "metadata_filter": {"type": "replaced"}}),
    )
    .await
    .unwrap();
    assert_eq!(near["result"]["matches"][0]["id"], json!(batch_ids[0]));
    assert!(
        near["result"]["matches"][0]["distance"]
            .as_f64()
            .unwrap()
            .abs()
            < 1e-6
    );

    let deleted = node(
        store,
        json!({"operation": "delete", "table_name": t, "ids": [batch_ids[0], 1000, 99999]}),
    )
    .await
    .unwrap();
    assert_eq!(deleted["result"]["deleted"], json!(2));
    let count = node(store, json!({"operation": "count", "table_name": t}))
        .await
        .unwrap();
    assert_eq!(count["result"]["count"], json!(3));

    // An unknown table is named, with the fix.
    let err = node(
        store,
        json!({"operation": "insert", "table_name": "vec_nowhere", "vector": [1, 2, 3]}),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, VectorError::NoTable { .. }), "{err}");
}

#[tokio::test]
async fn pgvector_every_operation() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let store = pg_store(&unique("vec_ops"), &url, 2);
    every_operation(&store, true).await;
    // IVFFlat and the metadata GIN index build too, with a maintenance_work_mem setting.
    let t = table("vec_ivf");
    store.create_table(&t, 2).await.unwrap();
    let rows: Vec<NewVector> = (0..50)
        .map(|i| NewVector {
            id: None,
            vector: vec![i as f32, 1.0],
            metadata: json!({"i": i}),
        })
        .collect();
    store.insert(&t, &rows).await.unwrap();
    let mut spec = IndexSpec::hnsw(Metric::L2);
    spec.index_type = IndexType::Ivfflat;
    spec.lists = 4;
    spec.maintenance_work_mem_mb = Some(64);
    let report = store.create_index(&t, &spec).await.unwrap();
    assert_eq!(
        report.name,
        format!("{}_embedding_ivfflat_l2_idx", t.name())
    );
    spec.index_type = IndexType::Metadata;
    let report = store.create_index(&t, &spec).await.unwrap();
    assert_eq!(report.name, format!("{}_metadata_gin_idx", t.name()));
    let lease = store.pool().acquire().await.unwrap();
    let out = lease
        .execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = :t ORDER BY indexname",
            &Params::Named(json!({"t": t.name()}).as_object().unwrap().clone()),
            Fetch::All,
        )
        .await
        .unwrap();
    let names: Vec<&str> = out
        .rows
        .iter()
        .map(|r| r["indexname"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    drop(lease);
    let mut q = SearchQuery::new(vec![10.2, 1.0]);
    q.metric = Metric::L2;
    q.limit = 1;
    q.probes = Some(4);
    let hits = store.search(&t, &q).await.unwrap();
    assert_eq!(hits[0].metadata, json!({"i": 10}));
    store.pool().close().await;
}

#[tokio::test]
async fn sqlite_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir);
    every_operation(&store, false).await;
    store.pool().close().await;
}

/// Metadata of row `i` for the filter tests: every operator has rows on both sides.
fn filter_metadata(i: usize) -> Value {
    let kinds = ["article", "report", "note"];
    let mut m = json!({
        "type": kinds[i % 3],
        "year": 2015 + (i % 10) as i64,
        "score": (i as f64) / 4.0,
        "tags": if i.is_multiple_of(2) { json!(["even", "x"]) } else { json!(["odd"]) },
        "name": format!("{}{i}", if i.is_multiple_of(4) { "B" } else { "a" }),
    });
    if i.is_multiple_of(5) {
        m["author"] = json!(null);
    }
    if i.is_multiple_of(7) {
        m["year"] = json!(format!("{}", 2015 + i % 10)); // a string year never compares with numbers
    }
    m
}

fn filters() -> Vec<Value> {
    vec![
        json!({"type": "article"}),
        json!({"type": "article", "year": 2016}),
        json!({"tags": ["even"]}),
        json!({"tags": ["even", "x"]}),
        json!({"type": {"$eq": "note"}}),
        json!({"type": {"$ne": "article"}}),
        json!({"author": {"$ne": null}}),
        json!({"type": {"$in": ["report", "note"]}}),
        json!({"year": {"$in": [2015, "2022"]}}),
        json!({"year": {"$gt": 2020}}),
        json!({"year": {"$gte": 2020, "$lt": 2023}}),
        json!({"score": {"$lte": 3.5}}),
        json!({"score": {"$lt": 2}}),
        json!({"name": {"$gt": "a2"}}),
        json!({"name": {"$lt": "a"}}),
        json!({"author": {"$exists": true}}),
        json!({"author": {"$exists": false}, "type": "note"}),
        json!({"$or": [{"type": "article"}, {"year": {"$gte": 2023}}]}),
        json!({"$and": [{"type": {"$ne": "note"}}, {"$or": [{"tags": ["odd"]}, {"score": {"$gt": 10}}]}]}),
        json!({"missing": {"$exists": false}, "year": {"$gt": "2000"}}),
    ]
}

async fn check_filters(store: &VectorStore) {
    let t = table("vec_filter");
    store.create_table(&t, 2).await.unwrap();
    let rows: Vec<NewVector> = (0..60)
        .map(|i| NewVector {
            id: Some(i as i64 + 1),
            vector: vec![1.0, i as f32],
            metadata: filter_metadata(i),
        })
        .collect();
    store.insert(&t, &rows).await.unwrap();
    for spec in filters() {
        let filter = Filter::from_json(&spec).unwrap().unwrap();
        let expected: BTreeSet<i64> = rows
            .iter()
            .filter(|r| filter.matches(&r.metadata))
            .map(|r| r.id.unwrap())
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < rows.len(),
            "filter {spec} should split the rows, matched {}",
            expected.len()
        );
        let mut q = SearchQuery::new(vec![1.0, 3.0]);
        q.limit = 100;
        q.filter = Some(filter.clone());
        let got: BTreeSet<i64> = store
            .search(&t, &q)
            .await
            .unwrap_or_else(|e| panic!("{spec}: {e}"))
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(got, expected, "search with {spec}");
        let n = store.count(&t, Some(&filter)).await.unwrap();
        assert_eq!(n as usize, expected.len(), "count with {spec}");
    }
}

#[tokio::test]
async fn pgvector_filters_match_the_rust_evaluator_for_every_operator() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let store = pg_store(&unique("vec_filter"), &url, 2);
    check_filters(&store).await;
    store.pool().close().await;
}

#[tokio::test]
async fn sqlite_filters_for_every_operator() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir);
    check_filters(&store).await;
    store.pool().close().await;
}

#[tokio::test]
async fn injection_attempts_are_refused_or_bound() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for store in [pg_store(&unique("vec_inj"), &url, 2), sqlite_store(&dir)] {
        let t = unique("vec_inj");
        node(
            &store,
            json!({"operation": "create_table", "table_name": t, "dimension": 2}),
        )
        .await
        .unwrap();
        let evil = "x'); DROP TABLE \"TABLE\"; --";
        let evil_table = format!("{t}; DROP TABLE {t}");
        node(
            &store,
            json!({"operation": "insert", "table_name": t, "vectors": [[1, 0], [0, 1]],
                   "metadata": [{"type": evil, evil: "k"}, {"type": "plain"}]}),
        )
        .await
        .unwrap();
        // Table names: refused before any SQL.
        for bad in [
            evil_table.as_str(),
            "t\"; DROP TABLE x; --",
            "pg_catalog.pg_class; --",
        ] {
            for op in [
                json!({"operation": "count", "table_name": bad}),
                json!({"operation": "create_table", "table_name": bad, "dimension": 2}),
                json!({"operation": "delete", "table_name": bad, "id": 1}),
            ] {
                let err = node(&store, op).await.unwrap_err();
                assert!(matches!(err, VectorError::Identifier { .. }), "{err}");
            }
        }
        // Filter values and keys: bound, so they match exactly what was stored and nothing else.
        let search = |filter: Value| json!({"operation": "search", "table_name": t, "vector": [1, 0], "limit": 10, "metadata_filter": filter});
        let r = node(&store, search(json!({"type": evil}))).await.unwrap();
        assert_eq!(r["result"]["count"], json!(1));
        let r = node(&store, search(json!({evil: {"$exists": true}})))
            .await
            .unwrap();
        assert_eq!(r["result"]["count"], json!(1));
        for attempt in [
            json!({"type": "plain' OR '1'='1"}),
            json!({"type') OR TRUE; --": "x"}),
            json!({"type": {"$gt": "' OR 1=1 --"}, "x": {"$in": ["') OR TRUE --"]}}),
            json!({"$or": [{"type": {"$ne": "plain"}}, {"1=1) OR (1": {"$lt": 5}}]}),
        ] {
            let r = node(&store, search(attempt.clone())).await.unwrap();
            let n = r["result"]["count"].as_u64().unwrap();
            assert!(n <= 1, "{attempt} matched {n} rows");
        }
        // SQL text filters are refused with the JSON form.
        let err = node(&store, search(json!("metadata->>'type' = 'plain' OR 1=1")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not SQL text"), "{err}");
        // The table is intact.
        let count = node(&store, json!({"operation": "count", "table_name": t}))
            .await
            .unwrap();
        assert_eq!(count["result"]["count"], json!(2));
        store.pool().close().await;
    }
}

#[tokio::test]
async fn ef_search_and_iterative_scan_do_not_leak_to_the_next_lease() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    // One connection: the next lease gets the very connection the search used.
    let store = pg_store(&unique("vec_leak"), &url, 1);
    let t = table("vec_leak");
    store.create_table(&t, 2).await.unwrap();
    let rows: Vec<NewVector> = (0..20)
        .map(|i| NewVector {
            id: None,
            vector: vec![1.0, i as f32],
            metadata: json!({"even": i % 2 == 0}),
        })
        .collect();
    store.insert(&t, &rows).await.unwrap();
    store
        .create_index(&t, &IndexSpec::hnsw(Metric::Cosine))
        .await
        .unwrap();
    let before = {
        let lease = store.pool().acquire().await.unwrap();
        // Load pgvector into this session so its settings are known.
        lease
            .execute("SELECT '[1,2]'::vector AS v", &Params::None, Fetch::One)
            .await
            .unwrap();
        lease.connection()
    };
    let mut q = SearchQuery::new(vec![1.0, 3.0]);
    q.ef_search = Some(7);
    q.probes = Some(3);
    q.filter = Filter::from_json(&json!({"even": true})).unwrap();
    let hits = store.search(&t, &q).await.unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.iter().all(|h| h.metadata["even"] == json!(true)));
    let lease = store.pool().acquire().await.unwrap();
    assert_eq!(lease.connection(), before, "not the same connection");
    let out = lease
        .execute(
            "SELECT current_setting('hnsw.ef_search') AS ef, current_setting('hnsw.iterative_scan') AS scan, current_setting('ivfflat.probes') AS probes",
            &Params::None,
            Fetch::One,
        )
        .await
        .unwrap();
    assert_eq!(out.rows[0]["ef"], json!("40"));
    assert_eq!(out.rows[0]["scan"], json!("off"));
    assert_eq!(out.rows[0]["probes"], json!("1"));
    drop(lease);
    // Out-of-range settings are refused before reaching the database.
    q.ef_search = Some(1001);
    let err = store.search(&t, &q).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "`ef_search` must be between 1 and 1000, not 1001"
    );
    store.pool().close().await;
}

#[tokio::test]
async fn dimension_and_length_mismatches_name_the_row() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for store in [pg_store(&unique("vec_dim"), &url, 2), sqlite_store(&dir)] {
        let t = unique("vec_dim");
        node(
            &store,
            json!({"operation": "create_table", "table_name": t, "dimension": 3}),
        )
        .await
        .unwrap();
        let err = node(
            &store,
            json!({"operation": "insert", "table_name": t, "vectors": [[1, 2, 3], [1, 2, 3], [1, 2]],
                   "metadata": [{}, {}, {}]}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("row 2 of the batch has 2 dimensions but table `{t}` holds vectors of 3")
        );
        let err = node(
            &store,
            json!({"operation": "insert", "table_name": t, "vector": [1, 2, 3, 4]}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the vector has 4 dimensions but table `{t}` holds vectors of 3")
        );
        let err = node(
            &store,
            json!({"operation": "insert", "table_name": t, "vectors": [[1, 2, 3], [1, 2, 3]],
                   "metadata": [{}, {}, {}]}),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                VectorError::LengthMismatch {
                    vectors: 2,
                    count: 3,
                    ..
                }
            ),
            "{err}"
        );
        let err = node(
            &store,
            json!({"operation": "upsert", "table_name": t, "vectors": [[1, 2, 3]], "metadata": [{}], "ids": [1, 2]}),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, VectorError::LengthMismatch { other: "ids", .. }),
            "{err}"
        );
        let err = node(
            &store,
            json!({"operation": "insert", "table_name": t, "vectors": [[1, 2, 3], [1, 2, 3]],
                   "metadata": [{}, [1]]}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 1 of the batch has metadata that is not a JSON object"
        );
        let err = node(
            &store,
            json!({"operation": "upsert", "table_name": t, "vector": [1, 2, 3]}),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, VectorError::MissingId { row: None }), "{err}");
        // Nothing of the refused batches was written.
        let count = node(&store, json!({"operation": "count", "table_name": t}))
            .await
            .unwrap();
        assert_eq!(count["result"]["count"], json!(0));
        store.pool().close().await;
    }
}

/// Statements the store's pool has run so far.
fn statements(store: &VectorStore) -> u64 {
    store.pool().stats().queries.executed
}

#[tokio::test]
async fn query_dimension_is_checked_against_the_table_without_a_round_trip() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (store, pg) in [
        (pg_store(&unique("vec_qdim"), &url, 2), true),
        (sqlite_store(&dir), false),
    ] {
        let t = table("vec_qdim");
        store.create_table(&t, 3).await.unwrap();
        store
            .insert(
                &t,
                &[NewVector {
                    id: Some(1),
                    vector: vec![1.0, 0.0, 0.0],
                    metadata: json!({}),
                }],
            )
            .await
            .unwrap();

        // A wrong-sized query vector is refused before the search runs: the only statement is
        // the look-up confirming the kept dimension (the table might have been recreated).
        let before = statements(&store);
        let err = store
            .search(&t, &SearchQuery::new(vec![1.0, 0.0, 0.0, 0.0]))
            .await
            .unwrap_err();
        assert_eq!(statements(&store), before + 1, "{err}");
        assert!(
            matches!(
                &err,
                VectorError::Dimension { table, row: None, expected: 3, found: 4 } if *table == t.to_string()
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("the vector has 4 dimensions but table `{t}` holds vectors of 3")
        );
        // Also with per-query settings (which open a transaction on PostgreSQL).
        let mut q = SearchQuery::new(vec![1.0, 0.0]);
        q.ef_search = Some(40);
        q.filter = Filter::from_json(&json!({"k": 1})).unwrap();
        let err = store.search(&t, &q).await.unwrap_err();
        assert!(
            matches!(
                err,
                VectorError::Dimension {
                    expected: 3,
                    found: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(statements(&store), before + 2, "no BEGIN, no SET LOCAL");

        // A right-sized search runs only its own statement (no dimension look-up), and so does
        // an insert.
        let before = statements(&store);
        let hits = store
            .search(&t, &SearchQuery::new(vec![1.0, 0.0, 0.0]))
            .await
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(statements(&store), before + 1);
        store
            .insert(
                &t,
                &[NewVector {
                    id: Some(2),
                    vector: vec![0.0, 1.0, 0.0],
                    metadata: json!({}),
                }],
            )
            .await
            .unwrap();
        assert_eq!(statements(&store), before + 2);

        // A store that has not seen the table reads the dimension once, then keeps it.
        let other = if pg {
            pg_store(&unique("vec_qdim"), &url, 1)
        } else {
            sqlite_store(&dir)
        };
        let err = other
            .search(&t, &SearchQuery::new(vec![1.0; 5]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                VectorError::Dimension {
                    expected: 3,
                    found: 5,
                    ..
                }
            ),
            "{err}"
        );
        let read = statements(&other);
        other
            .search(&t, &SearchQuery::new(vec![1.0; 3]))
            .await
            .unwrap();
        assert_eq!(statements(&other), read + 1);

        // The table recreated with another dimension through the other store: the first store's
        // kept dimension (3) is confirmed against the database before it refuses, so a vector of
        // the new size passes and the old size is refused with the new dimension.
        let lease = other.pool().acquire().await.unwrap();
        lease
            .execute(
                &format!("DROP TABLE {}", t.quoted()),
                &Params::None,
                Fetch::All,
            )
            .await
            .unwrap();
        drop(lease);
        other.create_table(&t, 4).await.unwrap();
        store
            .insert(
                &t,
                &[NewVector {
                    id: Some(7),
                    vector: vec![0.0, 0.0, 0.0, 1.0],
                    metadata: json!({}),
                }],
            )
            .await
            .unwrap();
        let hits = store
            .search(&t, &SearchQuery::new(vec![0.0, 0.0, 0.0, 1.0]))
            .await
            .unwrap();
        assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![7]);
        let err = store
            .search(&t, &SearchQuery::new(vec![1.0, 0.0, 0.0]))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the vector has 3 dimensions but table `{t}` holds vectors of 4")
        );
        // An unknown table is still named as such.
        let err = store
            .search(
                &TableName::parse("vec_nowhere").unwrap(),
                &SearchQuery::new(vec![1.0]),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VectorError::NoTable { .. }), "{err}");
        other.pool().close().await;
        store.pool().close().await;
    }
}

/// Seeded points around a few centres.
fn clustered(rng: &mut fastrand::Rng, n: usize, dim: usize) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect())
        .collect();
    (0..n)
        .map(|i| {
            centres[i % centres.len()]
                .iter()
                .map(|c| c + (rng.f32() - 0.5) * 0.6)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn sqlite_exact_top10_equals_pgvector_exact_search() {
    let Some(url) = TestDb::PgVector.url() else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(7);
    let dim = 24;
    let data = clustered(&mut rng, 600, dim);
    let rows: Vec<NewVector> = data
        .iter()
        .enumerate()
        .map(|(i, v)| NewVector {
            id: Some(i as i64 + 1),
            vector: v.clone(),
            metadata: json!({"group": i % 10}),
        })
        .collect();
    let pg = pg_store(&unique("vec_exact"), &url, 2);
    let dir = tempfile::tempdir().unwrap();
    let lite = sqlite_store(&dir);
    let t = table("vec_exact");
    for store in [&pg, &lite] {
        store.create_table(&t, dim as u32).await.unwrap();
        // Two batches, to cover more than one insert per table.
        store.insert(&t, &rows[..300]).await.unwrap();
        store.insert(&t, &rows[300..]).await.unwrap();
    }
    let queries = clustered(&mut rng, 15, dim);
    for metric in [Metric::Cosine, Metric::L2, Metric::Ip] {
        for (qi, v) in queries.iter().enumerate() {
            let mut q = SearchQuery::new(v.clone());
            q.metric = metric;
            if qi % 3 == 0 {
                q.filter = Filter::from_json(&json!({"group": {"$in": [1, 2, 3]}})).unwrap();
            }
            let a = pg.search(&t, &q).await.unwrap();
            let b = lite.search(&t, &q).await.unwrap();
            let ids_a: Vec<i64> = a.iter().map(|h| h.id).collect();
            let ids_b: Vec<i64> = b.iter().map(|h| h.id).collect();
            assert_eq!(ids_a.len(), 10);
            assert_eq!(ids_a, ids_b, "{metric:?} query {qi}");
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x.distance - y.distance).abs() < 1e-4 * (1.0 + x.distance.abs()),
                    "{metric:?} query {qi}: {} vs {}",
                    x.distance,
                    y.distance
                );
                assert_eq!(x.metadata, y.metadata);
            }
        }
    }
    pg.pool().close().await;
    lite.pool().close().await;
}

#[test]
fn cli_ingest_then_search_on_sqlite_and_pgvector() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.jsonl");
    let mut lines = String::new();
    for i in 0..2500 {
        let kind = if i % 10 == 0 { "article" } else { "note" };
        lines.push_str(
            &json!({"vector": [1.0, i as f32, 0.5], "metadata": {"type": kind, "i": i}})
                .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&file, lines).unwrap();
    let mut urls = vec![format!("sqlite://{}", dir.path().join("cli.db").display())];
    urls.extend(TestDb::PgVector.url());
    for url in urls {
        let t = unique("vec_cli");
        let (status, out, err) = trellis_tests::run_trellis(
            dir.path(),
            &[
                "vector",
                "ingest",
                "--url",
                &url,
                "--table",
                &t,
                "--batch-size",
                "1000",
                "docs.jsonl",
            ],
            Duration::from_secs(60),
        );
        assert!(status.success(), "{url}: {err}");
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["inserted"], json!(2500));
        assert!(err.contains("100% 2500 rows"), "no progress shown: {err}");
        let (status, out, err) = trellis_tests::run_trellis(
            dir.path(),
            &[
                "vector",
                "search",
                "--url",
                &url,
                "--table",
                &t,
                "--vector",
                "[1, 40.2, 0.5]",
                "--metric",
                "l2",
                "--limit",
                "2",
                "--filter",
                r#"{"type": "article"}"#,
                "--ef-search",
                "64",
            ],
            Duration::from_secs(60),
        );
        assert!(status.success(), "{url}: {err}");
        let out: Value = serde_json::from_str(&out).unwrap();
        let found: Vec<i64> = out["result"]["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["metadata"]["i"].as_i64().unwrap())
            .collect();
        assert_eq!(found, vec![40, 50], "{url}");
        // A SQL filter is refused with the JSON form, and the exit status says so.
        let (status, _, err) = trellis_tests::run_trellis(
            dir.path(),
            &[
                "vector",
                "search",
                "--url",
                &url,
                "--table",
                &t,
                "--vector",
                "[1, 2, 3]",
                "--filter",
                "metadata->>'type' = 'article'",
            ],
            Duration::from_secs(60),
        );
        assert!(!status.success());
        assert!(
            err.contains(r#"help: write it as JSON: {"type":"article"}"#),
            "{err}"
        );
    }
}
