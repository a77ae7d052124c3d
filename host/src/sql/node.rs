//! The AsyncSQLDatabaseNode: runs one statement with named parameters on a pool, retrying only
//! transient failures, and returns the Kailash output shape:
//!
//! ```json
//! {"result": {"data": [...], "row_count": 2, "database_type": "postgresql"}}
//! ```
//!
//! Kailash also echoes the SQL as `query`; here the SQL text leaves the host only when the node
//! asks for it (`return_query = true`): a statement can name what a caller should not learn.
//!
//! `data` is an array for `fetch_mode` `all` and `many`, and an object or `null` for `one`. For
//! a statement that returns no rows, `data` is empty (`null` for `one`) and `row_count` is the
//! number of rows affected.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::ErrorKind;
use super::Row;
use super::exec::Fetch;
use super::params::{self, ParamError, Params};
use crate::json::object;
use crate::pool::{Pool, PoolError, QueryError};

/// The keys of the node's config.
pub const SQL_KEYS: &[&str] = &[
    "query",
    "params",
    "fetch_mode",
    "fetch_size",
    "timeout",
    "max_retries",
    "retry_delay",
    "return_query",
];

/// What the node runs.
#[derive(Debug, Clone)]
pub struct SqlNodeConfig {
    /// The SQL, with `:name` (or the dialect's positional) placeholders.
    pub query: String,
    /// The parameters.
    pub params: Params,
    /// How many rows to return.
    pub fetch: Fetch,
    /// A time limit for the statement (default: the pool's `command_timeout`).
    pub timeout: Option<Duration>,
    /// Retries after a transient failure (default 3).
    pub max_retries: u32,
    /// The first retry's delay; each further retry doubles it (default 100 ms).
    pub retry_delay: Duration,
    /// Whether the output carries the SQL text as `query` (default: no).
    pub return_query: bool,
}

impl SqlNodeConfig {
    /// `query` with no parameters, fetching all rows, with default retries.
    pub fn new(query: impl Into<String>) -> SqlNodeConfig {
        SqlNodeConfig {
            query: query.into(),
            params: Params::None,
            fetch: Fetch::All,
            timeout: None,
            max_retries: 3,
            retry_delay: Duration::from_millis(100),
            return_query: false,
        }
    }

    /// Reads the node's JSON config: `query`, `params`, `fetch_mode` (`one`, `all`, `many`),
    /// `fetch_size` (for `many`, default 100), `timeout` (seconds), `max_retries`,
    /// `retry_delay` (seconds), `return_query` (a boolean).
    pub fn from_json(config: &Value) -> Result<SqlNodeConfig, SqlError> {
        let obj = config
            .as_object()
            .ok_or_else(|| SqlError::config("the node config must be a JSON object"))?;
        let unknown = crate::node_keys::unknown(obj, SQL_KEYS);
        if !unknown.is_empty() {
            return Err(SqlError::config(unknown.join("; ")));
        }
        let query = obj
            .get("query")
            .and_then(Value::as_str)
            .ok_or_else(|| SqlError::config("missing `query`"))?;
        let mut c = SqlNodeConfig::new(query);
        c.params = Params::from_json(obj.get("params")).map_err(SqlError::Params)?;
        let fetch_size = match obj.get("fetch_size") {
            None => 100,
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| SqlError::config("`fetch_size` must be a whole number above 0"))?,
        };
        c.fetch = match obj.get("fetch_mode").and_then(Value::as_str) {
            None | Some("all") => Fetch::All,
            Some("one") => Fetch::One,
            Some("many") => Fetch::Many(fetch_size),
            Some(other) => {
                return Err(SqlError::config(format!(
                    "unknown `fetch_mode` `{other}`: use `one`, `all` or `many`"
                )));
            }
        };
        let seconds = |key: &str| -> Result<Option<Duration>, SqlError> {
            obj.get(key)
                .map(|v| {
                    v.as_f64()
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map(Duration::from_secs_f64)
                        .ok_or_else(|| SqlError::config(format!("`{key}` must be seconds ≥ 0")))
                })
                .transpose()
        };
        c.timeout = seconds("timeout")?;
        if let Some(d) = seconds("retry_delay")? {
            c.retry_delay = d;
        }
        if let Some(v) = obj.get("return_query") {
            c.return_query = v
                .as_bool()
                .ok_or_else(|| SqlError::config("`return_query` must be true or false"))?;
        }
        if let Some(v) = obj.get("max_retries") {
            c.max_retries = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| SqlError::config("`max_retries` must be a whole number"))?;
        }
        Ok(c)
    }
}

/// The node bound to a pool.
#[derive(Debug, Clone)]
pub struct SqlNode {
    pool: Pool,
    config: SqlNodeConfig,
    /// The workload its statements count under for pre-warming (a served run's workflow).
    workload: Option<String>,
}

/// Why the node failed, classified by [`SqlError::kind`].
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The node config is wrong.
    #[error("invalid SQL node config: {0}")]
    Config(String),
    /// The parameters do not fit the query.
    #[error(transparent)]
    Params(ParamError),
    /// The pool or the database failed.
    #[error("{error}{retried}", retried = if *attempts > 1 { format!(" (after {attempts} attempts)") } else { String::new() })]
    Pool {
        /// What failed last (its message is this error's message).
        error: PoolError,
        /// Attempts made.
        attempts: u32,
    },
}

impl SqlError {
    fn config(message: impl Into<String>) -> SqlError {
        SqlError::Config(message.into())
    }

    /// `connection`, `timeout`, `query`, `configuration` or `pool_exhausted`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SqlError::Config(_) | SqlError::Params(_) => ErrorKind::Configuration,
            SqlError::Pool { error, .. } => error.kind(),
        }
    }

    /// The SQLSTATE (or engine error code) of a database error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SqlError::Pool {
                error: PoolError::Query(QueryError::Database { sqlstate, .. }),
                ..
            } => sqlstate.as_deref(),
            _ => None,
        }
    }

    /// The error as JSON: `{"kind", "message", "sqlstate"?}`.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!(self.kind()));
        m.insert("message".into(), json!(self.to_string()));
        if let Some(code) = self.sqlstate() {
            m.insert("sqlstate".into(), json!(code));
        }
        Value::Object(m)
    }
}

impl SqlNode {
    /// A node running `config` on `pool`.
    pub fn new(pool: Pool, config: SqlNodeConfig) -> SqlNode {
        SqlNode {
            pool,
            config,
            workload: None,
        }
    }

    /// Counts its statements under `workload` for the pool's pre-warming (see
    /// [`Pool::run_for`]).
    pub fn with_workload(mut self, workload: impl Into<String>) -> SqlNode {
        self.workload = Some(workload.into());
        self
    }

    /// The node's config.
    pub fn config(&self) -> &SqlNodeConfig {
        &self.config
    }

    /// Runs the statement with the configured parameters.
    pub async fn run(&self) -> Result<Value, SqlError> {
        self.run_with(&self.config.params).await
    }

    /// Runs the statement with `params` instead of the configured ones.
    pub async fn run_with(&self, params: &Params) -> Result<Value, SqlError> {
        run(&self.pool, &self.config, self.workload.as_deref(), params).await
    }
}

/// Runs `config`'s statement on `pool` with `params`, its statements counted under `workload`
/// (see [`Pool::run_for`]): what [`SqlNode::run_with`] does, for a caller that holds the config
/// and would otherwise copy it into a node (a workflow run's node task).
pub(crate) async fn run(
    pool: &Pool,
    config: &SqlNodeConfig,
    workload: Option<&str>,
    params: &Params,
) -> Result<Value, SqlError> {
    let stmt = params::prepare(&config.query, params, pool.kind()).map_err(SqlError::Params)?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = pool
            .run_for(workload, stmt.clone(), config.fetch, config.timeout)
            .await;
        match result {
            Ok(output) => {
                let data = match config.fetch {
                    Fetch::One => output
                        .rows
                        .into_iter()
                        .next()
                        .map_or(Value::Null, Value::from),
                    Fetch::All | Fetch::Many(_) => Value::Array(Row::into_objects(output.rows)),
                    // Not a fetch mode a node is configured with: its rows come as the JSON
                    // text the pool wrote, which always parses.
                    Fetch::Capped(_) => output
                        .text
                        .as_deref()
                        .and_then(|text| serde_json::from_str(text).ok())
                        .unwrap_or_else(|| Value::Array(Vec::new())),
                };
                let mut result = object([
                    ("data", data),
                    ("row_count", output.row_count.into()),
                    ("database_type", pool.kind().as_str().into()),
                ]);
                if config.return_query {
                    result["query"] = config.query.clone().into();
                }
                return Ok(object([("result", result)]));
            }
            Err(error) => {
                let transient = matches!(&error, PoolError::Query(q) if q.is_transient());
                if !transient || attempt > config.max_retries {
                    return Err(SqlError::Pool {
                        error,
                        attempts: attempt,
                    });
                }
                let delay = config
                    .retry_delay
                    .saturating_mul(1 << (attempt - 1).min(16));
                tracing::warn!(pool = pool.name(), attempt, ?delay, %error, "transient failure; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
