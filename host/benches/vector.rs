//! Vector benchmark on pgvector: batch ingest with JSONB metadata, HNSW (cosine) build with
//! Trellis's default `m` / `ef_construction`, recall@10 at `ef_search` 40 and 100, filtered
//! recall (a filter matching 10% of rows), and queries per second through the vector store
//! against hand-written SQL through sqlx in the same run. Data: seeded synthetic clustered
//! vectors; ground truth by exact search in Rust.
//!
//! ```console
//! $ eval "$(scripts/services)"
//! $ cargo bench -p trellis-host --bench vector -- --rows 100000 --dim 384 --queries 200
//! ```

use std::time::Instant;

use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use trellis_host::parse_database_url;
use trellis_host::{Fetch, Params};
use trellis_host::{
    IndexSpec, Metric, NewVector, SearchQuery, TableName, VectorFilter as Filter, VectorStore,
};
use trellis_host::{Pool, PoolConfig};

struct Args {
    rows: usize,
    dim: usize,
    queries: usize,
    batch: usize,
    url: String,
}

fn args() -> Args {
    let mut a = Args {
        rows: 100_000,
        dim: 384,
        queries: 200,
        batch: 1000,
        url: std::env::var("TRELLIS_TEST_PGVECTOR_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5433/test".into()),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--rows" => a.rows = value.parse().expect("--rows N"),
            "--dim" => a.dim = value.parse().expect("--dim N"),
            "--queries" => a.queries = value.parse().expect("--queries N"),
            "--batch" => a.batch = value.parse().expect("--batch N"),
            "--url" => a.url = value,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

/// Points around 100 seeded centres, unit-normalised (as embeddings usually are).
fn clustered(rng: &mut fastrand::Rng, centres: &[Vec<f32>], n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| {
            let c = &centres[rng.usize(..centres.len())];
            let mut v: Vec<f32> = c.iter().map(|x| x + (rng.f32() - 0.5) * 0.5).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn exact_top10(data: &[Vec<f32>], q: &[f32], keep: impl Fn(usize) -> bool) -> Vec<i64> {
    let mut d: Vec<(f64, i64)> = data
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, v)| (Metric::Cosine.distance(v, q), i as i64 + 1))
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    d.truncate(10);
    d.into_iter().map(|(_, id)| id).collect()
}

fn recall(truth: &[Vec<i64>], got: &[Vec<i64>]) -> f64 {
    let hits: usize = truth
        .iter()
        .zip(got)
        .map(|(t, g)| g.iter().filter(|id| t.contains(id)).count())
        .sum();
    hits as f64 / (truth.len() * 10) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    println!(
        "vector bench: {} rows x {} dims, {} queries, batches of {}",
        a.rows, a.dim, a.queries, a.batch
    );
    let mut rng = fastrand::Rng::with_seed(42);
    let centres: Vec<Vec<f32>> = (0..100)
        .map(|_| (0..a.dim).map(|_| rng.f32() * 2.0 - 1.0).collect())
        .collect();
    let data = clustered(&mut rng, &centres, a.rows);
    let queries = clustered(&mut rng, &centres, a.queries);

    let mut config = PoolConfig::new("bench_vector", parse_database_url(&a.url).unwrap());
    config.min_connections = 1;
    config.max_connections = 2;
    config.command_timeout = None;
    config.lease_timeout = std::time::Duration::from_secs(3600);
    let store = VectorStore::new(Pool::new(config));
    let table = TableName::parse(&format!("vec_bench_{}", std::process::id())).unwrap();
    store.create_table(&table, a.dim as u32).await.unwrap();

    // Ingest: one statement per batch, JSONB metadata on every row.
    let started = Instant::now();
    for (b, chunk) in data.chunks(a.batch).enumerate() {
        let rows: Vec<NewVector> = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = b * a.batch + j;
                NewVector {
                    id: Some(i as i64 + 1),
                    vector: v.clone(),
                    metadata: json!({"bucket": i % 10, "title": format!("document {i}"), "lang": "en"}),
                }
            })
            .collect();
        store.insert(&table, &rows).await.unwrap();
    }
    let ingest = started.elapsed();
    println!(
        "ingest: {} rows in {:.2?} = {:.0} rows/s",
        a.rows,
        ingest,
        a.rows as f64 / ingest.as_secs_f64()
    );

    // Trellis's defaults (`IndexSpec::hnsw`), as a workflow's `create_index` gets them.
    let mut spec = IndexSpec::hnsw(Metric::Cosine);
    spec.maintenance_work_mem_mb = Some(1024);
    let started = Instant::now();
    let report = store.create_index(&table, &spec).await.unwrap();
    println!(
        "hnsw build (defaults: m {}, ef_construction {}; maintenance_work_mem 1024MB): {} in {:.2?}",
        spec.m,
        spec.ef_construction,
        report.name,
        started.elapsed()
    );

    let truth: Vec<Vec<i64>> = queries
        .iter()
        .map(|q| exact_top10(&data, q, |_| true))
        .collect();
    let truth_filtered: Vec<Vec<i64>> = queries
        .iter()
        .map(|q| exact_top10(&data, q, |i| i % 10 == 3))
        .collect();

    let run = |ef: u32, filter: Option<Filter>| {
        let store = store.clone();
        let table = table.clone();
        let queries = queries.clone();
        async move {
            let started = Instant::now();
            let mut got = Vec::new();
            for v in &queries {
                let mut q = SearchQuery::new(v.clone());
                q.ef_search = Some(ef);
                q.filter = filter.clone();
                let hits = store.search(&table, &q).await.unwrap();
                got.push(hits.iter().map(|h| h.id).collect::<Vec<i64>>());
            }
            (got, queries.len() as f64 / started.elapsed().as_secs_f64())
        }
    };
    // Hand-written: the same transaction, SET LOCAL and query, straight through sqlx.
    let mut conn = PgConnection::connect(&a.url).await.unwrap();
    let handwritten = async |conn: &mut PgConnection, ef: u32| {
        let sql = format!(
            "SELECT id, embedding <=> $1 AS distance, metadata FROM {} ORDER BY embedding <=> $1 LIMIT 10",
            table.quoted()
        );
        let set = format!("SET LOCAL hnsw.ef_search = {ef}");
        let started = Instant::now();
        let mut got = Vec::new();
        for v in &queries {
            let mut tx = conn.begin().await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(set.clone()))
                .execute(&mut *tx)
                .await
                .unwrap();
            let rows: Vec<(i64, f64, sqlx::types::Json<serde_json::Value>)> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(pgvector::Vector::from(v.clone()))
                    .fetch_all(&mut *tx)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            got.push(rows.into_iter().map(|r| r.0).collect::<Vec<i64>>());
        }
        (got, queries.len() as f64 / started.elapsed().as_secs_f64())
    };

    // Warm the index into shared buffers once.
    let _ = run(40, None).await;
    for ef in [40, 100] {
        let mut trellis_qps = Vec::new();
        let mut sqlx_qps = Vec::new();
        let mut r_trellis = 0.0;
        let mut r_sqlx = 0.0;
        for _round in 0..3 {
            let (got, qps) = run(ef, None).await;
            r_trellis = recall(&truth, &got);
            trellis_qps.push(qps);
            let (got, qps) = handwritten(&mut conn, ef).await;
            r_sqlx = recall(&truth, &got);
            sqlx_qps.push(qps);
        }
        trellis_qps.sort_by(f64::total_cmp);
        sqlx_qps.sort_by(f64::total_cmp);
        println!(
            "ef_search {ef}: recall@10 {r_trellis:.4} (hand-written {r_sqlx:.4}); QPS median of 3 rounds: trellis {:.0}, hand-written sqlx {:.0}, ratio {:.2}",
            trellis_qps[1],
            sqlx_qps[1],
            trellis_qps[1] / sqlx_qps[1]
        );
    }
    let filter = Filter::from_json(&json!({"bucket": 3})).unwrap();
    for ef in [40, 100] {
        let (got, qps) = run(ef, filter.clone()).await;
        println!(
            "filtered (bucket = 3, 10% of rows, iterative scan) ef_search {ef}: recall@10 {:.4}, QPS {qps:.0}",
            recall(&truth_filtered, &got)
        );
    }

    let lease = store.pool().acquire().await.unwrap();
    lease
        .execute(
            &format!("DROP TABLE {}", table.quoted()),
            &Params::None,
            Fetch::All,
        )
        .await
        .unwrap();
}
