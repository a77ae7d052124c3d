//! The vector operations on one pool: create a table or an index, insert, upsert, delete,
//! count and search, on PostgreSQL with pgvector or on SQLite.
//!
//! # Tables
//!
//! A vector table has `id` (a 64-bit integer key, generated when not given), `embedding`
//! (`vector(D)` on PostgreSQL; a JSON array checked to hold `D` numbers on SQLite), `metadata`
//! (JSONB; JSON text on SQLite) and `created_at`.
//!
//! # Round trips
//!
//! A batch insert or upsert is one statement whatever its size: the vectors and metadata are
//! bound as two arrays and expanded with `unnest` (PostgreSQL) or as one JSON document expanded
//! with `json_each` (SQLite), so PostgreSQL's 65535-parameter limit never applies.
//!
//! # Dimensions
//!
//! Inserted rows and search vectors are checked against the table's dimension before any
//! statement runs, so a wrong-sized vector is a [`VectorError::Dimension`] naming the table, both
//! dimensions and (in a batch) the row, not a database error. The store reads a table's dimension
//! once and keeps it (shared by clones of the store), so the check costs no round trip after the
//! first use. `create_table` replaces the kept value; a mismatch against a kept value is
//! confirmed by reading the dimension again before it is reported (the table may have been
//! recreated elsewhere), and a failed insert or search forgets the table's entry.
//!
//! # Search settings
//!
//! `ef_search` (HNSW), `probes` (IVFFlat) and, when a metadata filter is present, pgvector 0.8's
//! iterative index scans (`relaxed_order`, with the hits re-sorted by distance) are set with
//! `SET LOCAL` in a transaction around the query, so they end with it and never reach the next
//! user of the connection. The values written into `SET LOCAL` are range-checked integers and
//! fixed keywords, never request text.
//!
//! # SQLite
//!
//! The embedded backend searches exactly: it reads the table's vectors and computes every
//! distance in Rust, with pgvector's formulas, and evaluates the metadata filter in Rust with
//! the same meaning as the compiled SQL. Its top-k equals pgvector's exact search by
//! construction (tested); it costs a full read of the table per query, which suits the embedded
//! default's small tables. `sqlite-vec` 0.1.9 is not used (not clearly better): its `vec0` KNN
//! also scans every row (no ANN index), applies `k` before any metadata filter, and would add a C
//! build plus a process-wide `unsafe` `sqlite3_auto_extension` registration for a constant-factor
//! gain on parsing and distance arithmetic.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;

use super::filter::Filter;
use super::{TableName, VectorError, in_range};
use crate::config::values::DatabaseKind;
use crate::pool::{Lease, Pool};
use crate::sql::exec::{Fetch, Output};
use crate::sql::params::{Shape, Statement};

/// The largest dimension pgvector's `vector` type holds.
pub const MAX_DIMENSION: u64 = 16_000;
/// The largest `limit` of one search.
pub const MAX_LIMIT: u64 = 10_000;

/// A distance metric. The default is [`Metric::Cosine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// Cosine distance, `1 - cos(a, b)` (pgvector `<=>`).
    #[default]
    Cosine,
    /// Euclidean distance (pgvector `<->`).
    L2,
    /// Negative inner product, `-(a · b)` (pgvector `<#>`), so smaller is closer.
    Ip,
}

impl Metric {
    /// Reads `cosine`, `l2` or `ip`.
    pub fn parse(text: &str) -> Result<Metric, VectorError> {
        match text {
            "cosine" => Ok(Metric::Cosine),
            "l2" | "euclidean" => Ok(Metric::L2),
            "ip" | "inner_product" => Ok(Metric::Ip),
            other => Err(VectorError::Config(format!(
                "unknown `distance_metric` `{other}`: use `cosine`, `l2` or `ip`"
            ))),
        }
    }

    /// The name used in configs and index names.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Ip => "ip",
        }
    }

    fn operator(self) -> &'static str {
        match self {
            Metric::Cosine => "<=>",
            Metric::L2 => "<->",
            Metric::Ip => "<#>",
        }
    }

    fn opclass(self) -> &'static str {
        match self {
            Metric::Cosine => "vector_cosine_ops",
            Metric::L2 => "vector_l2_ops",
            Metric::Ip => "vector_ip_ops",
        }
    }

    /// The distance as pgvector computes it (in `f64`).
    pub fn distance(self, a: &[f32], b: &[f32]) -> f64 {
        match self {
            Metric::Cosine => {
                let (mut dot, mut na, mut nb) = (0.0_f64, 0.0_f64, 0.0_f64);
                for (x, y) in a.iter().zip(b) {
                    let (x, y) = (f64::from(*x), f64::from(*y));
                    dot += x * y;
                    na += x * x;
                    nb += y * y;
                }
                let sim = dot / (na * nb).sqrt();
                if sim.is_nan() {
                    f64::NAN
                } else {
                    1.0 - sim.clamp(-1.0, 1.0)
                }
            }
            Metric::L2 => a
                .iter()
                .zip(b)
                .map(|(x, y)| {
                    let d = f64::from(*x) - f64::from(*y);
                    d * d
                })
                .sum::<f64>()
                .sqrt(),
            Metric::Ip => -a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum::<f64>(),
        }
    }
}

/// The kind of index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexType {
    /// pgvector HNSW on `embedding` (uses `m`, `ef_construction`).
    Hnsw,
    /// pgvector IVFFlat on `embedding` (uses `lists`; build it after loading data).
    Ivfflat,
    /// GIN (`jsonb_path_ops`) on `metadata`, serving equality filters.
    Metadata,
}

impl IndexType {
    /// Reads `hnsw`, `ivfflat` or `metadata`.
    pub fn parse(text: &str) -> Result<IndexType, VectorError> {
        match text {
            "hnsw" => Ok(IndexType::Hnsw),
            "ivfflat" => Ok(IndexType::Ivfflat),
            "metadata" | "gin" => Ok(IndexType::Metadata),
            other => Err(VectorError::Config(format!(
                "unknown `index_type` `{other}`: use `hnsw`, `ivfflat` or `metadata`"
            ))),
        }
    }
}

/// What `create_index` builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// The kind of index.
    pub index_type: IndexType,
    /// The metric the index serves (searches must use the same one to use it).
    pub metric: Metric,
    /// HNSW: links per node, 2..=100 (default 24; pgvector's is 16, see [`IndexSpec::hnsw`]).
    pub m: u32,
    /// HNSW: candidate list while building, 4..=1000 and at least `2 * m` (default 128;
    /// pgvector's is 64).
    pub ef_construction: u32,
    /// IVFFlat: clusters, 1..=32768 (default 100).
    pub lists: u32,
    /// `maintenance_work_mem` for the build, in MiB (1..=65536), set with `SET LOCAL`.
    pub maintenance_work_mem_mb: Option<u32>,
}

impl IndexSpec {
    /// An HNSW index for `metric` with Trellis's defaults: `m` 24 and `ef_construction` 128,
    /// not pgvector's 16 and 64.
    ///
    /// pgvector's defaults favour build speed. On 384-dimensional clustered embeddings (the
    /// vector bench, 100k rows) they give recall@10 of about 0.90–0.93 at pgvector's default
    /// `ef_search` 40 and 0.97–0.98 at 100, below the 0.95 / 0.99 Trellis aims for; `m` 24 /
    /// `ef_construction` 128 give 0.97 and 0.996–0.999 (four builds) for an index of the same
    /// size, built 1.6–2.7× slower (31 s instead of 19 s in the bench on two cores). `m` 32 /
    /// `ef_construction` 160 reached 0.99 / 1.00 at 3.6× pgvector's build time. Pass `m` and
    /// `ef_construction` to trade differently; BENCHMARKS.md has the figures.
    pub fn hnsw(metric: Metric) -> IndexSpec {
        IndexSpec {
            index_type: IndexType::Hnsw,
            metric,
            m: 24,
            ef_construction: 128,
            lists: 100,
            maintenance_work_mem_mb: None,
        }
    }

    fn validate(&self) -> Result<(), VectorError> {
        in_range("m", self.m.into(), 2, 100)?;
        in_range("ef_construction", self.ef_construction.into(), 4, 1000)?;
        if self.index_type == IndexType::Hnsw && self.ef_construction < 2 * self.m {
            return Err(VectorError::OutOfRange {
                field: "ef_construction",
                value: self.ef_construction.to_string(),
                min: 2 * u64::from(self.m),
                max: 1000,
            });
        }
        in_range("lists", self.lists.into(), 1, 32_768)?;
        if let Some(mb) = self.maintenance_work_mem_mb {
            in_range("maintenance_work_mem_mb", mb.into(), 1, 65_536)?;
        }
        Ok(())
    }
}

/// What `create_index` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexReport {
    /// The derived index name: `{table}_embedding_{type}_{metric}_idx` or
    /// `{table}_metadata_gin_idx` (shortened with a hash past 63 bytes).
    pub name: String,
    /// `false` on SQLite, which searches exactly and has no vector index.
    pub created: bool,
}

/// One row to insert or upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVector {
    /// The id; generated when `None` (insert only).
    pub id: Option<i64>,
    /// The embedding.
    pub vector: Vec<f32>,
    /// A JSON object.
    pub metadata: Value,
}

/// A similarity search.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// The query vector.
    pub vector: Vec<f32>,
    /// The metric (default cosine).
    pub metric: Metric,
    /// How many hits, 1..=10000 (default 10).
    pub limit: u32,
    /// Only rows whose metadata passes it.
    pub filter: Option<Filter>,
    /// HNSW candidate list, 1..=1000 (pgvector's default is 40).
    pub ef_search: Option<u32>,
    /// IVFFlat lists to probe, 1..=32768 (pgvector's default is 1).
    pub probes: Option<u32>,
}

impl SearchQuery {
    /// The 10 nearest by cosine distance.
    pub fn new(vector: Vec<f32>) -> SearchQuery {
        SearchQuery {
            vector,
            metric: Metric::Cosine,
            limit: 10,
            filter: None,
            ef_search: None,
            probes: None,
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The row id.
    pub id: i64,
    /// The distance by the query's metric (smaller is closer).
    pub distance: f64,
    /// The row's metadata.
    pub metadata: Value,
}

/// The vector operations on one pool.
#[derive(Debug, Clone)]
pub struct VectorStore {
    pool: Pool,
    /// Each table's dimension (by [`TableName`] text), once read; shared by clones.
    dimensions: Arc<Mutex<HashMap<String, usize>>>,
}

type Res<T> = std::result::Result<T, VectorError>;

fn stmt(sql: String, args: Vec<Value>) -> Statement {
    Statement {
        sql: sql.into(),
        args,
        touches_session: false,
        leaves_state: false,
        statements: 1,
        outlives_transaction: false,
        shape: Shape::Other,
    }
}

fn script(sql: String) -> Statement {
    let statements = sql.split(';').filter(|s| !s.trim().is_empty()).count();
    Statement {
        sql: sql.into(),
        args: Vec::new(),
        touches_session: true,
        leaves_state: false,
        statements,
        // Its settings are `SET LOCAL`: they end with the transaction.
        outlives_transaction: false,
        shape: Shape::Other,
    }
}

/// Checks one vector's values and length.
fn check_vector(v: &[f32], row: Option<usize>, dim: usize, table: &TableName) -> Res<()> {
    if let Some(position) = v.iter().position(|x| !x.is_finite()) {
        return Err(VectorError::NotFinite { row, position });
    }
    if v.len() != dim {
        return Err(VectorError::Dimension {
            table: table.to_string(),
            row,
            expected: dim,
            found: v.len(),
        });
    }
    Ok(())
}

/// `[1,2.5,…]`, pgvector's text form (and JSON).
fn vector_text(v: &[f32]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

/// Checks a batch before it is written: object metadata, ids on every row or none (every row
/// for an upsert), no id twice.
fn check_rows(rows: &[NewVector], upsert: bool) -> Res<()> {
    let batch = rows.len() > 1;
    let row_of = |i: usize| batch.then_some(i);
    let with_ids = rows[0].id.is_some();
    let mut seen = HashSet::new();
    for (i, r) in rows.iter().enumerate() {
        if !r.metadata.is_object() {
            return Err(VectorError::Metadata { row: row_of(i) });
        }
        if upsert && r.id.is_none() {
            return Err(VectorError::MissingId { row: row_of(i) });
        }
        if r.id.is_some() != with_ids {
            return Err(VectorError::Config(format!(
                "row {i} of the batch {} an `id` but row 0 {}: give ids for every row or for none",
                if r.id.is_some() { "has" } else { "has no" },
                if with_ids { "has" } else { "has none" },
            )));
        }
        if let Some(id) = r.id
            && !seen.insert(id)
        {
            return Err(VectorError::Config(format!(
                "row {i} of the batch repeats id {id}"
            )));
        }
    }
    Ok(())
}

/// SQLite: the rows as one JSON document, inserted (or upserted) by one statement.
fn sqlite_write(t: &str, rows: &[NewVector], upsert: bool) -> Statement {
    // One JSON document; vectors keep their shortest `f32` text.
    let mut doc = String::from("[");
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str("{\"id\":");
        doc.push_str(&r.id.map_or_else(|| "null".to_owned(), |id| id.to_string()));
        doc.push_str(",\"e\":");
        doc.push_str(&vector_text(&r.vector));
        doc.push_str(",\"m\":");
        doc.push_str(&r.metadata.to_string());
        doc.push('}');
    }
    doc.push(']');
    let conflict = if upsert {
        " ON CONFLICT (id) DO UPDATE SET embedding = excluded.embedding, metadata = excluded.metadata"
    } else {
        ""
    };
    // `WHERE true` keeps `ON CONFLICT` from parsing as part of the SELECT.
    stmt(
        format!(
            "INSERT INTO {t} (id, embedding, metadata) \
             SELECT value ->> '$.id', json(value -> '$.e'), json(value -> '$.m') \
             FROM json_each(?) WHERE true{conflict} RETURNING id"
        ),
        vec![Value::String(doc)],
    )
}

/// PostgreSQL: the rows as arrays, unnested and inserted (or upserted) by one statement.
fn postgres_write(t: &str, rows: &[NewVector], upsert: bool) -> Statement {
    let with_ids = rows[0].id.is_some();
    // Bound as `vector[]`: sent in pgvector's binary form, no text parsing on the server.
    let vectors: Vec<Value> = rows
        .iter()
        .map(|r| Value::Array(r.vector.iter().map(|x| Value::from(*x)).collect()))
        .collect();
    let metadata: Vec<Value> = rows
        .iter()
        .map(|r| Value::String(r.metadata.to_string()))
        .collect();
    let conflict = if upsert {
        " ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, metadata = EXCLUDED.metadata"
    } else {
        ""
    };
    if with_ids {
        let ids: Vec<Value> = rows.iter().map(|r| r.id.into()).collect();
        stmt(
            format!(
                "INSERT INTO {t} (id, embedding, metadata) \
                 SELECT i, e, m::jsonb FROM unnest($1::int8[], $2::vector[], $3::text[]) AS u(i, e, m)\
                 {conflict} RETURNING id"
            ),
            vec![
                Value::Array(ids),
                Value::Array(vectors),
                Value::Array(metadata),
            ],
        )
    } else {
        stmt(
            format!(
                "INSERT INTO {t} (embedding, metadata) \
                 SELECT e, m::jsonb FROM unnest($1::vector[], $2::text[]) AS u(e, m) RETURNING id"
            ),
            vec![Value::Array(vectors), Value::Array(metadata)],
        )
    }
}

impl VectorStore {
    /// The operations on `pool` (PostgreSQL with pgvector, or SQLite).
    pub fn new(pool: Pool) -> VectorStore {
        VectorStore {
            pool,
            dimensions: Arc::default(),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn is_sqlite(&self) -> Res<bool> {
        match self.pool.kind() {
            DatabaseKind::Postgres => Ok(false),
            DatabaseKind::Sqlite => Ok(true),
            DatabaseKind::Mysql => Err(VectorError::Unsupported {
                operation: "vector",
                backend: "MySQL",
                why: "use PostgreSQL with pgvector, or SQLite",
            }),
        }
    }

    async fn lease(&self, operation: &'static str, table: &TableName) -> Res<Lease> {
        self.pool
            .acquire()
            .await
            .map_err(|source| VectorError::Database {
                operation,
                table: table.to_string(),
                source: Box::new(source),
            })
    }

    async fn run(
        lease: &Lease,
        operation: &'static str,
        table: &TableName,
        statement: Statement,
        fetch: Fetch,
    ) -> Res<Output> {
        lease
            .run(statement, fetch)
            .await
            .map_err(|source| VectorError::Database {
                operation,
                table: table.to_string(),
                source: Box::new(source),
            })
    }

    /// Creates the table (and, on PostgreSQL, the `vector` extension) unless it exists; an
    /// existing table must have the same dimension.
    pub async fn create_table(&self, table: &TableName, dimension: u32) -> Res<()> {
        let dim = in_range("dimension", dimension.into(), 1, MAX_DIMENSION)?;
        let sqlite = self.is_sqlite()?;
        let op = "create_table";
        let lease = self.lease(op, table).await?;
        let t = table.quoted();
        if sqlite {
            let sql = "CREATE TABLE IF NOT EXISTS trellis_vector_tables \
                       (table_name TEXT PRIMARY KEY, dimension INTEGER NOT NULL)";
            Self::run(&lease, op, table, stmt(sql.into(), vec![]), Fetch::All).await?;
            // A registered dimension outlives a dropped table: forget it before creating.
            let sql = "DELETE FROM trellis_vector_tables WHERE table_name = ? \
                       AND NOT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?)";
            Self::run(
                &lease,
                op,
                table,
                stmt(
                    sql.into(),
                    vec![table.to_string().into(), table.name().into()],
                ),
                Fetch::All,
            )
            .await?;
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY, \
                 embedding TEXT NOT NULL CHECK (json_array_length(embedding) = {dim}), \
                 metadata TEXT NOT NULL DEFAULT '{{}}' CHECK (json_valid(metadata)), \
                 created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            );
            Self::run(&lease, op, table, stmt(sql, vec![]), Fetch::All).await?;
            let sql = "INSERT INTO trellis_vector_tables (table_name, dimension) VALUES (?, ?) ON CONFLICT (table_name) DO NOTHING";
            Self::run(
                &lease,
                op,
                table,
                stmt(sql.into(), vec![table.to_string().into(), dim.into()]),
                Fetch::All,
            )
            .await?;
        } else {
            let have = Self::run(
                &lease,
                op,
                table,
                stmt(
                    "SELECT 1 AS one FROM pg_extension WHERE extname = 'vector'".into(),
                    vec![],
                ),
                Fetch::One,
            )
            .await?;
            if have.rows.is_empty() {
                let sql = "CREATE EXTENSION IF NOT EXISTS vector".to_owned();
                Self::run(&lease, op, table, stmt(sql, vec![]), Fetch::All).await?;
            }
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {t} (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
                 embedding vector({dim}) NOT NULL, metadata JSONB NOT NULL DEFAULT '{{}}'::jsonb, \
                 created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            );
            Self::run(&lease, op, table, stmt(sql, vec![]), Fetch::All).await?;
        }
        self.forget(table);
        let have = Self::dimension_on(&lease, sqlite, table).await?;
        self.remember(table, have);
        if have != dim as usize {
            return Err(VectorError::Config(format!(
                "table `{table}` already exists with dimension {have}, not {dim}"
            )));
        }
        Ok(())
    }

    /// The table's dimension.
    pub async fn dimension(&self, table: &TableName) -> Res<usize> {
        let sqlite = self.is_sqlite()?;
        let lease = self.lease("dimension", table).await?;
        let dim = Self::dimension_on(&lease, sqlite, table).await?;
        self.remember(table, dim);
        Ok(dim)
    }

    fn dimensions(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // The map stays consistent whatever a panicking holder did: take it back.
        self.dimensions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, table: &TableName, dim: usize) {
        self.dimensions().insert(table.to_string(), dim);
    }

    fn forget(&self, table: &TableName) {
        self.dimensions().remove(&table.to_string());
    }

    /// The table's dimension after `check` passed with it. A kept dimension costs no round
    /// trip; a [`VectorError::Dimension`] against it is confirmed by reading the dimension again.
    async fn checked_dimension(
        &self,
        lease: &Lease,
        sqlite: bool,
        table: &TableName,
        check: impl Fn(usize) -> Res<()>,
    ) -> Res<usize> {
        let kept = self.dimensions().get(&table.to_string()).copied();
        if let Some(dim) = kept {
            match check(dim) {
                Ok(()) => return Ok(dim),
                Err(VectorError::Dimension { .. }) => {}
                Err(other) => return Err(other),
            }
        }
        let dim = match Self::dimension_on(lease, sqlite, table).await {
            Ok(dim) => dim,
            Err(e) => {
                self.forget(table);
                return Err(e);
            }
        };
        self.remember(table, dim);
        check(dim)?;
        Ok(dim)
    }

    async fn dimension_on(lease: &Lease, sqlite: bool, table: &TableName) -> Res<usize> {
        let op = "dimension";
        let (sql, arg) = if sqlite {
            (
                "SELECT dimension AS dim FROM trellis_vector_tables WHERE table_name = ? \
                 AND EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?)",
                vec![table.to_string().into(), table.name().into()],
            )
        } else {
            (
                "SELECT a.atttypmod AS dim FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding' \
                 AND t.typname = 'vector' AND NOT a.attisdropped",
                vec![table.quoted().into()],
            )
        };
        let out = match lease.run(stmt(sql.into(), arg), Fetch::One).await {
            Ok(out) => out,
            Err(e) if sqlite && e.to_string().contains("no such table") => {
                return Err(VectorError::NoTable {
                    table: table.to_string(),
                });
            }
            Err(source) => {
                return Err(VectorError::Database {
                    operation: op,
                    table: table.to_string(),
                    source: Box::new(source),
                });
            }
        };
        out.rows
            .first()
            .and_then(|r| r.get("dim"))
            .and_then(Value::as_u64)
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| *d > 0)
            .ok_or_else(|| VectorError::NoTable {
                table: table.to_string(),
            })
    }

    /// Creates an index unless one of that name exists. On SQLite nothing is built (search is
    /// exact there); the report says so.
    pub async fn create_index(&self, table: &TableName, spec: &IndexSpec) -> Res<IndexReport> {
        spec.validate()?;
        let suffix = match spec.index_type {
            IndexType::Hnsw => format!("embedding_hnsw_{}_idx", spec.metric.as_str()),
            IndexType::Ivfflat => format!("embedding_ivfflat_{}_idx", spec.metric.as_str()),
            IndexType::Metadata => "metadata_gin_idx".to_owned(),
        };
        let (name, quoted) = table.index_name(&suffix);
        if self.is_sqlite()? {
            return Ok(IndexReport {
                name,
                created: false,
            });
        }
        let t = table.quoted();
        let body = match spec.index_type {
            IndexType::Hnsw => format!(
                "CREATE INDEX IF NOT EXISTS {quoted} ON {t} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})",
                spec.metric.opclass(),
                spec.m,
                spec.ef_construction
            ),
            IndexType::Ivfflat => format!(
                "CREATE INDEX IF NOT EXISTS {quoted} ON {t} USING ivfflat (embedding {}) WITH (lists = {})",
                spec.metric.opclass(),
                spec.lists
            ),
            IndexType::Metadata => {
                format!(
                    "CREATE INDEX IF NOT EXISTS {quoted} ON {t} USING gin (metadata jsonb_path_ops)"
                )
            }
        };
        let sql = match spec.maintenance_work_mem_mb {
            Some(mb) => {
                format!("BEGIN; SET LOCAL maintenance_work_mem = '{mb}MB'; {body}; COMMIT")
            }
            None => body,
        };
        let lease = self.lease("create_index", table).await?;
        let statement = if spec.maintenance_work_mem_mb.is_some() {
            script(sql)
        } else {
            stmt(sql, vec![])
        };
        Self::run(&lease, "create_index", table, statement, Fetch::All).await?;
        Ok(IndexReport {
            name,
            created: true,
        })
    }

    /// Inserts rows in one statement; returns their ids. Either every row has an `id` or none.
    pub async fn insert(&self, table: &TableName, rows: &[NewVector]) -> Res<Vec<i64>> {
        self.write(table, rows, false).await
    }

    /// Inserts rows, replacing the vector and metadata of rows whose `id` exists; every row
    /// needs an `id`. One statement; returns the ids.
    pub async fn upsert(&self, table: &TableName, rows: &[NewVector]) -> Res<Vec<i64>> {
        self.write(table, rows, true).await
    }

    async fn write(&self, table: &TableName, rows: &[NewVector], upsert: bool) -> Res<Vec<i64>> {
        let op = if upsert { "upsert" } else { "insert" };
        let sqlite = self.is_sqlite()?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        check_rows(rows, upsert)?;
        let batch = rows.len() > 1;
        let row_of = |i: usize| batch.then_some(i);
        let lease = self.lease(op, table).await?;
        self.checked_dimension(&lease, sqlite, table, |dim| {
            rows.iter()
                .enumerate()
                .try_for_each(|(i, r)| check_vector(&r.vector, row_of(i), dim, table))
        })
        .await?;
        let t = table.quoted();
        let statement = if sqlite {
            sqlite_write(&t, rows, upsert)
        } else {
            postgres_write(&t, rows, upsert)
        };
        let out = match Self::run(&lease, op, table, statement, Fetch::All).await {
            Ok(out) => out,
            Err(e) => {
                // Perhaps the table changed under the kept dimension: read it again next time.
                self.forget(table);
                return Err(e);
            }
        };
        Ok(out
            .rows
            .iter()
            .filter_map(|r| r.get("id").and_then(Value::as_i64))
            .collect())
    }

    /// Deletes the rows with these ids; returns how many were deleted.
    pub async fn delete(&self, table: &TableName, ids: &[i64]) -> Res<u64> {
        let sqlite = self.is_sqlite()?;
        let t = table.quoted();
        let ids = Value::Array(ids.iter().map(|i| Value::from(*i)).collect());
        let statement = if sqlite {
            stmt(
                format!("DELETE FROM {t} WHERE id IN (SELECT value FROM json_each(?))"),
                vec![Value::String(ids.to_string())],
            )
        } else {
            stmt(
                format!("DELETE FROM {t} WHERE id = ANY($1::int8[])"),
                vec![ids],
            )
        };
        let lease = self.lease("delete", table).await?;
        Ok(Self::run(&lease, "delete", table, statement, Fetch::All)
            .await?
            .row_count)
    }

    /// Counts the rows (that pass `filter`).
    pub async fn count(&self, table: &TableName, filter: Option<&Filter>) -> Res<u64> {
        let sqlite = self.is_sqlite()?;
        let t = table.quoted();
        let lease = self.lease("count", table).await?;
        if sqlite && let Some(filter) = filter {
            let out = Self::run(
                &lease,
                "count",
                table,
                stmt(format!("SELECT metadata FROM {t}"), vec![]),
                Fetch::All,
            )
            .await?;
            return Ok(out
                .rows
                .iter()
                .filter(|r| filter.matches(&parse_json_text(r.get("metadata"))))
                .count() as u64);
        }
        let mut args = Vec::new();
        let filter_sql = filter
            .map(|f| format!(" WHERE {}", f.to_postgres("metadata", 1, &mut args)))
            .unwrap_or_default();
        let out = Self::run(
            &lease,
            "count",
            table,
            stmt(format!("SELECT count(*) AS n FROM {t}{filter_sql}"), args),
            Fetch::One,
        )
        .await?;
        Ok(out
            .rows
            .first()
            .and_then(|r| r.get("n"))
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    /// The `limit` nearest rows to `query.vector` (that pass the filter), nearest first.
    pub async fn search(&self, table: &TableName, query: &SearchQuery) -> Res<Vec<Hit>> {
        let limit = in_range("limit", query.limit.into(), 1, MAX_LIMIT)?;
        if let Some(ef) = query.ef_search {
            in_range("ef_search", ef.into(), 1, 1000)?;
        }
        if let Some(p) = query.probes {
            in_range("probes", p.into(), 1, 32_768)?;
        }
        if let Some(position) = query.vector.iter().position(|x| !x.is_finite()) {
            return Err(VectorError::NotFinite {
                row: None,
                position,
            });
        }
        if query.vector.is_empty() {
            return Err(VectorError::Config("`vector` is empty".into()));
        }
        let sqlite = self.is_sqlite()?;
        let lease = self.lease("search", table).await?;
        let dim = self
            .checked_dimension(&lease, sqlite, table, |dim| {
                check_vector(&query.vector, None, dim, table)
            })
            .await?;
        let result = if sqlite {
            Self::search_exact(&lease, table, query, limit as usize, dim).await
        } else {
            Self::search_pgvector(&lease, table, query, limit).await
        };
        if result.is_err() {
            // Perhaps the table changed under the kept dimension: read it again next time.
            self.forget(table);
        }
        result
    }

    async fn search_pgvector(
        lease: &Lease,
        table: &TableName,
        query: &SearchQuery,
        limit: u32,
    ) -> Res<Vec<Hit>> {
        let t = table.quoted();
        let op = query.metric.operator();
        let mut args = vec![
            Value::Array(query.vector.iter().map(|x| Value::from(*x)).collect()),
            Value::from(limit),
        ];
        let filter_sql = query
            .filter
            .as_ref()
            .map(|f| format!(" WHERE {}", f.to_postgres("metadata", 3, &mut args)))
            .unwrap_or_default();
        let inner = format!(
            "SELECT id, embedding {op} $1 AS distance, metadata FROM {t}{filter_sql} \
             ORDER BY embedding {op} $1 LIMIT $2"
        );
        let filtered = query.filter.is_some();
        // Relaxed-order iterative scans may return hits slightly out of order: sort them again.
        let sql = if filtered {
            format!(
                "WITH hits AS MATERIALIZED ({inner}) SELECT id, distance, metadata FROM hits ORDER BY distance, id"
            )
        } else {
            inner
        };
        let mut settings = Vec::new();
        if let Some(ef) = query.ef_search {
            settings.push(format!("SET LOCAL hnsw.ef_search = {ef}"));
        }
        if let Some(p) = query.probes {
            settings.push(format!("SET LOCAL ivfflat.probes = {p}"));
        }
        if filtered {
            settings.push("SET LOCAL hnsw.iterative_scan = relaxed_order".into());
            settings.push("SET LOCAL ivfflat.iterative_scan = relaxed_order".into());
        }
        let out = if settings.is_empty() {
            Self::run(lease, "search", table, stmt(sql, args), Fetch::All).await?
        } else {
            let begin = format!("BEGIN; {}", settings.join("; "));
            Self::run(lease, "search", table, script(begin), Fetch::All).await?;
            let out = Self::run(lease, "search", table, stmt(sql, args), Fetch::All).await?;
            Self::run(lease, "search", table, script("COMMIT".into()), Fetch::All).await?;
            out
        };
        Ok(out
            .rows
            .into_iter()
            .map(|mut r| Hit {
                id: r.get("id").and_then(Value::as_i64).unwrap_or_default(),
                distance: r
                    .get("distance")
                    .and_then(Value::as_f64)
                    .unwrap_or(f64::NAN),
                metadata: r.take("metadata").unwrap_or(Value::Null),
            })
            .collect())
    }

    async fn search_exact(
        lease: &Lease,
        table: &TableName,
        query: &SearchQuery,
        limit: usize,
        dim: usize,
    ) -> Res<Vec<Hit>> {
        let out = Self::run(
            lease,
            "search",
            table,
            stmt(
                format!("SELECT id, embedding, metadata FROM {}", table.quoted()),
                vec![],
            ),
            Fetch::All,
        )
        .await?;
        // Each row's metadata is read only when a filter needs it, or when the row is among the
        // `limit` closest: reading it is most of a row's cost, and most rows are not returned.
        let mut rows = out.rows;
        let mut hits: Vec<(Hit, usize)> = Vec::new();
        let mut vector: Vec<f32> = Vec::with_capacity(dim);
        for (at, row) in rows.iter().enumerate() {
            let metadata = match &query.filter {
                Some(filter) => {
                    let metadata = parse_json_text(row.get("metadata"));
                    if !filter.matches(&metadata) {
                        continue;
                    }
                    metadata
                }
                None => Value::Null,
            };
            // Read into the one vector (a text that is not a list of numbers leaves it empty).
            vector.clear();
            if let Some(Value::String(text)) = row.get("embedding") {
                let mut reader = serde_json::Deserializer::from_str(text);
                let read = serde::Deserialize::deserialize_in_place(&mut reader, &mut vector)
                    .and_then(|()| reader.end());
                if read.is_err() {
                    vector.clear();
                }
            }
            let distance = query.metric.distance(&vector, &query.vector);
            let id = row.get("id").and_then(Value::as_i64).unwrap_or_default();
            hits.push((
                Hit {
                    id,
                    distance,
                    metadata,
                },
                at,
            ));
        }
        hits.sort_by(|(a, _), (b, _)| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
        hits.truncate(limit);
        Ok(hits
            .into_iter()
            .map(|(mut hit, at)| {
                if query.filter.is_none() {
                    hit.metadata = parse_json_text(rows[at].take("metadata").as_ref());
                }
                hit
            })
            .collect())
    }
}

/// A JSON text column read back (SQLite stores metadata as text).
fn parse_json_text(value: Option<&Value>) -> Value {
    match value {
        Some(Value::String(text)) => crate::json::parse(text).unwrap_or(Value::Null),
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_follow_pgvector() {
        let a = [1.0, 0.0];
        let b = [0.0, 2.0];
        assert!((Metric::Cosine.distance(&a, &b) - 1.0).abs() < 1e-12);
        assert!(Metric::Cosine.distance(&[1.0, 2.0], &[2.0, 4.0]).abs() < 1e-12);
        assert!((Metric::L2.distance(&a, &b) - 5.0_f64.sqrt()).abs() < 1e-12);
        assert_eq!(Metric::Ip.distance(&[1.0, 2.0], &[3.0, 4.0]), -11.0);
        assert!(Metric::Cosine.distance(&[0.0, 0.0], &a).is_nan());
    }

    #[test]
    fn index_parameters_are_range_checked() {
        let mut spec = IndexSpec::hnsw(Metric::Cosine);
        assert!(spec.validate().is_ok());
        spec.m = 101;
        assert!(spec.validate().is_err());
        spec.m = 40;
        spec.ef_construction = 64;
        let err = spec.validate().unwrap_err().to_string();
        assert_eq!(err, "`ef_construction` must be between 80 and 1000, not 64");
        spec.m = 16;
        spec.maintenance_work_mem_mb = Some(0);
        assert!(spec.validate().is_err());
    }

    #[test]
    fn vector_text_is_pgvector_input() {
        assert_eq!(vector_text(&[1.0, 0.5, -2.25]), "[1.0,0.5,-2.25]");
    }
}
