//! The `AsyncPostgreSQLVectorNode` node: its JSON config (the Kailash fields) and its JSON output.
//!
//! ```json
//! {"operation": "search", "table_name": "docs", "vector": [0.1, 0.2, 0.3],
//!  "distance_metric": "cosine", "limit": 5, "metadata_filter": {"type": "article"}, "ef_search": 100}
//! ```
//!
//! | `operation` | fields | output `result` |
//! | --- | --- | --- |
//! | `create_table` | `dimension` | `{table, dimension}` |
//! | `create_index` | `index_type` (`hnsw` default, `ivfflat`, `metadata`), `distance_metric`, `m` (default 24), `ef_construction` (default 128; both above pgvector's defaults for recall, see `IndexSpec::hnsw`), `lists`, `maintenance_work_mem_mb` | `{index_name, created}` |
//! | `insert` | `vector` + `metadata` (object) [+ `id`], or `vectors` + `metadata` (list) [+ `ids`] | `{inserted, ids}` |
//! | `upsert` | as `insert`, ids required | `{upserted, ids}` |
//! | `search` | `vector`, `distance_metric` (default `cosine`), `limit` (default 10), `metadata_filter`, `ef_search`, `probes` | `{matches: [{id, distance, metadata}], count, distance_metric}` |
//! | `delete` | `id` or `ids` | `{deleted}` |
//! | `count` | `metadata_filter` | `{count}` |
//!
//! Every config also has `table_name`, and may have `name` and `database` (read by the workflow
//! runtime, which picks the pool). Any other field is an error naming it.

use serde_json::{Map, Value, json};

use super::filter::Filter;
use super::store::{IndexSpec, IndexType, Metric, NewVector, SearchQuery, VectorStore};
use super::{TableName, VectorError};
use crate::json::object;

/// A configured vector node: one operation on one table.
#[derive(Debug, Clone)]
pub struct VectorNode {
    table: TableName,
    database: Option<String>,
    operation: Operation,
}

#[derive(Debug, Clone)]
enum Operation {
    CreateTable(u32),
    CreateIndex(IndexSpec),
    Insert(Vec<NewVector>),
    Upsert(Vec<NewVector>),
    Search(SearchQuery),
    Delete(Vec<i64>),
    Count(Option<Filter>),
}

fn config_err(message: impl Into<String>) -> VectorError {
    VectorError::Config(message.into())
}

/// The config object, with each field taken once and the leftovers reported.
struct Fields(Map<String, Value>);

impl Fields {
    fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key).filter(|v| !v.is_null())
    }

    fn str(&mut self, key: &str) -> Result<Option<String>, VectorError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(config_err(format!("`{key}` must be a string"))),
        }
    }

    fn uint(&mut self, key: &'static str) -> Result<Option<u32>, VectorError> {
        match self.take(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => Ok(Some(u32::try_from(n).map_err(|_| {
                    VectorError::OutOfRange {
                        field: key,
                        value: n.to_string(),
                        min: 0,
                        max: u64::from(u32::MAX),
                    }
                })?)),
                None => Err(config_err(format!(
                    "`{key}` must be a whole number, not `{v}`"
                ))),
            },
        }
    }

    fn metric(&mut self) -> Result<Metric, VectorError> {
        Ok(match self.str("distance_metric")? {
            Some(m) => Metric::parse(&m)?,
            None => Metric::default(),
        })
    }

    fn filter(&mut self) -> Result<Option<Filter>, VectorError> {
        match self.0.remove("metadata_filter") {
            None => Ok(None),
            Some(v) => Ok(Filter::from_json(&v)?),
        }
    }

    fn finish(self, operation: &str, allowed: &[&str]) -> Result<(), VectorError> {
        let mut known = vec!["table_name"];
        known.extend_from_slice(allowed);
        let unknown = crate::node_keys::unknown(&self.0, &known);
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(config_err(format!(
                "operation `{operation}`: {}",
                unknown.join("; ")
            )))
        }
    }
}

fn vector_of(value: &Value, what: &str) -> Result<Vec<f32>, VectorError> {
    let items = value
        .as_array()
        .ok_or_else(|| config_err(format!("{what} must be an array of numbers")))?;
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64().map(|f| f as f32).ok_or_else(|| {
                config_err(format!("{what} has `{v}` at position {i}, not a number"))
            })
        })
        .collect()
}

fn id_of(value: &Value, what: &str) -> Result<i64, VectorError> {
    value
        .as_i64()
        .ok_or_else(|| config_err(format!("{what} must be an integer, not `{value}`")))
}

fn rows_of(f: &mut Fields) -> Result<Vec<NewVector>, VectorError> {
    match (f.take("vector"), f.take("vectors")) {
        (Some(_), Some(_)) => Err(config_err(
            "give `vector` (one row) or `vectors` (a batch), not both",
        )),
        (Some(v), None) => {
            let id = f.take("id").map(|v| id_of(&v, "`id`")).transpose()?;
            if f.0.contains_key("ids") {
                return Err(config_err(
                    "`ids` goes with `vectors`; use `id` with `vector`",
                ));
            }
            Ok(vec![NewVector {
                id,
                vector: vector_of(&v, "`vector`")?,
                metadata: f.take("metadata").unwrap_or_else(|| json!({})),
            }])
        }
        (None, Some(Value::Array(vectors))) => {
            let metadata = match f.take("metadata") {
                None => vec![json!({}); vectors.len()],
                Some(Value::Array(m)) => m,
                Some(_) => {
                    return Err(config_err(
                        "with `vectors`, `metadata` must be a list with one object per vector",
                    ));
                }
            };
            if metadata.len() != vectors.len() {
                return Err(VectorError::LengthMismatch {
                    vectors: vectors.len(),
                    other: "metadata",
                    count: metadata.len(),
                });
            }
            let ids = match f.take("ids") {
                None => None,
                Some(Value::Array(ids)) if ids.len() == vectors.len() => Some(
                    ids.iter()
                        .enumerate()
                        .map(|(i, v)| id_of(v, &format!("`ids[{i}]`")))
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                Some(Value::Array(ids)) => {
                    return Err(VectorError::LengthMismatch {
                        vectors: vectors.len(),
                        other: "ids",
                        count: ids.len(),
                    });
                }
                Some(_) => return Err(config_err("`ids` must be a list of integers")),
            };
            vectors
                .iter()
                .zip(metadata)
                .enumerate()
                .map(|(i, (v, m))| {
                    Ok(NewVector {
                        id: ids.as_ref().map(|ids| ids[i]),
                        vector: vector_of(v, &format!("row {i} of `vectors`"))?,
                        metadata: m,
                    })
                })
                .collect()
        }
        (None, Some(_)) => Err(config_err("`vectors` must be a list of vectors")),
        (None, None) => Err(config_err("give `vector` (one row) or `vectors` (a batch)")),
    }
}

/// A `create_index` node's index: `distance_metric`, `index_type` and the build parameters.
fn index_spec_of(f: &mut Fields) -> Result<IndexSpec, VectorError> {
    let mut spec = IndexSpec::hnsw(f.metric()?);
    if let Some(t) = f.str("index_type")? {
        spec.index_type = IndexType::parse(&t)?;
    }
    if let Some(m) = f.uint("m")? {
        spec.m = m;
    }
    if let Some(ef) = f.uint("ef_construction")? {
        spec.ef_construction = ef;
    }
    if let Some(l) = f.uint("lists")? {
        spec.lists = l;
    }
    spec.maintenance_work_mem_mb = f.uint("maintenance_work_mem_mb")?;
    Ok(spec)
}

/// A `search` node's query: `vector`, `distance_metric`, `limit`, `metadata_filter` and the
/// index's search parameters.
fn search_of(f: &mut Fields) -> Result<SearchQuery, VectorError> {
    let vector = f
        .take("vector")
        .ok_or_else(|| config_err("`search` needs `vector`"))?;
    let mut q = SearchQuery::new(vector_of(&vector, "`vector`")?);
    q.metric = f.metric()?;
    if let Some(limit) = f.uint("limit")? {
        q.limit = limit;
    }
    q.filter = f.filter()?;
    q.ef_search = f.uint("ef_search")?;
    q.probes = f.uint("probes")?;
    Ok(q)
}

/// A `delete` node's ids: one `id` or a list `ids`.
fn delete_ids_of(f: &mut Fields) -> Result<Vec<i64>, VectorError> {
    match (f.take("id"), f.take("ids")) {
        (Some(id), None) => Ok(vec![id_of(&id, "`id`")?]),
        (None, Some(Value::Array(ids))) => ids
            .iter()
            .enumerate()
            .map(|(i, v)| id_of(v, &format!("`ids[{i}]`")))
            .collect(),
        _ => Err(config_err("`delete` needs `id` or a list `ids`")),
    }
}

impl VectorNode {
    /// Reads and validates the node's JSON config (see the module docs for the fields).
    pub fn from_json(config: &Value) -> Result<VectorNode, VectorError> {
        let map = config
            .as_object()
            .ok_or_else(|| config_err("the node config must be a JSON object"))?;
        let mut f = Fields(map.clone());
        f.take("name");
        let database = f.str("database")?;
        let operation_name = f
            .str("operation")?
            .ok_or_else(|| config_err("missing `operation`"))?;
        let table = TableName::parse(
            &f.str("table_name")?
                .ok_or_else(|| config_err("missing `table_name`"))?,
        )?;
        let (operation, allowed): (Operation, &[&str]) = match operation_name.as_str() {
            "create_table" => (
                Operation::CreateTable(
                    f.uint("dimension")?
                        .ok_or_else(|| config_err("`create_table` needs `dimension`"))?,
                ),
                &["dimension"],
            ),
            "create_index" => (
                Operation::CreateIndex(index_spec_of(&mut f)?),
                &[
                    "index_type",
                    "distance_metric",
                    "m",
                    "ef_construction",
                    "lists",
                    "maintenance_work_mem_mb",
                ],
            ),
            "insert" | "upsert" => {
                let rows = rows_of(&mut f)?;
                let op = if operation_name == "insert" {
                    Operation::Insert(rows)
                } else {
                    Operation::Upsert(rows)
                };
                (op, &["vector", "metadata", "id", "vectors", "ids"])
            }
            "search" => (
                Operation::Search(search_of(&mut f)?),
                &[
                    "vector",
                    "distance_metric",
                    "limit",
                    "metadata_filter",
                    "ef_search",
                    "probes",
                ],
            ),
            "delete" => (Operation::Delete(delete_ids_of(&mut f)?), &["id", "ids"]),
            "count" => (Operation::Count(f.filter()?), &["metadata_filter"]),
            other => {
                return Err(config_err(format!(
                    "unknown `operation` `{other}`: use `create_table`, `create_index`, `insert`, `upsert`, `search`, `delete` or `count`"
                )));
            }
        };
        f.finish(&operation_name, allowed)?;
        Ok(VectorNode {
            table,
            database,
            operation,
        })
    }

    /// The table the node works on.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// The `database` field, when given: the configured database to run on.
    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The operation's name.
    pub fn operation(&self) -> &'static str {
        match self.operation {
            Operation::CreateTable(_) => "create_table",
            Operation::CreateIndex(_) => "create_index",
            Operation::Insert(_) => "insert",
            Operation::Upsert(_) => "upsert",
            Operation::Search(_) => "search",
            Operation::Delete(_) => "delete",
            Operation::Count(_) => "count",
        }
    }

    /// Runs the operation on `store`; returns `{"result": {…}}`.
    pub async fn run(&self, store: &VectorStore) -> Result<Value, VectorError> {
        let t = &self.table;
        let result = match &self.operation {
            Operation::CreateTable(dimension) => {
                store.create_table(t, *dimension).await?;
                json!({"table": t.to_string(), "dimension": dimension})
            }
            Operation::CreateIndex(spec) => {
                let report = store.create_index(t, spec).await?;
                json!({"index_name": report.name, "created": report.created})
            }
            Operation::Insert(rows) => {
                let ids = store.insert(t, rows).await?;
                json!({"inserted": ids.len(), "ids": ids})
            }
            Operation::Upsert(rows) => {
                let ids = store.upsert(t, rows).await?;
                json!({"upserted": ids.len(), "ids": ids})
            }
            Operation::Search(q) => {
                let hits = store.search(t, q).await?;
                let matches: Vec<Value> = hits
                    .into_iter()
                    .map(|h| {
                        object([
                            ("id", h.id.into()),
                            ("distance", h.distance.into()),
                            ("metadata", h.metadata),
                        ])
                    })
                    .collect();
                object([
                    ("count", matches.len().into()),
                    ("matches", Value::Array(matches)),
                    ("distance_metric", q.metric.as_str().into()),
                ])
            }
            Operation::Delete(ids) => json!({"deleted": store.delete(t, ids).await?}),
            Operation::Count(filter) => json!({"count": store.count(t, filter.as_ref()).await?}),
        };
        Ok(object([("result", result)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let err = |v: Value| crate::diagnostic::plain(&VectorNode::from_json(&v).unwrap_err());
        assert_eq!(
            err(json!({"operation": "search", "table_name": "t", "vector": [1], "ef_serch": 4})),
            "invalid vector node config: operation `search`: unknown key `ef_serch`: did you mean `ef_search`?"
        );
        assert_eq!(
            err(
                json!({"operation": "insert", "table_name": "t", "vectors": [[1], [2]], "metadata": [{}]})
            ),
            "`vectors` has 2 rows but `metadata` has 1\nhelp: give one metadata entry per vector, in the same order"
        );
        assert!(
            err(json!({"operation": "search", "table_name": "t; DROP TABLE t", "vector": [1]}))
                .starts_with("invalid table name")
        );
        assert!(
            err(json!({"operation": "search", "table_name": "t", "vector": [1, "x"]}))
                .contains("position 1")
        );
        assert!(err(json!({"operation": "search", "table_name": "t", "vector": [1], "metadata_filter": "a = 1"})).contains("not SQL text"));
        assert!(
            err(json!({"operation": "x", "table_name": "t"})).contains("unknown `operation` `x`")
        );
    }

    #[test]
    fn search_config_reads_every_field() {
        let node = VectorNode::from_json(&json!({
            "name": "find", "database": "vectors", "operation": "search", "table_name": "docs",
            "vector": [0.5, 1], "distance_metric": "l2", "limit": 3, "ef_search": 80, "probes": 4,
            "metadata_filter": {"type": "article"}
        }))
        .unwrap();
        assert_eq!(node.database(), Some("vectors"));
        let Operation::Search(q) = &node.operation else {
            panic!("not a search")
        };
        assert_eq!(q.vector, vec![0.5, 1.0]);
        assert_eq!(
            (q.metric, q.limit, q.ef_search, q.probes),
            (Metric::L2, 3, Some(80), Some(4))
        );
        assert!(q.filter.is_some());
    }
}
