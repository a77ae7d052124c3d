//! The Kailash WorkflowConnectionPool operation API over a [`Pool`]: JSON requests
//! `{"operation": "initialize" | "acquire" | "execute" | "release" | "stats", …}` and the
//! guide's result shapes.
//!
//! ```json
//! {"operation": "acquire"}
//!   → {"connection_id": "main_pool/7", "connection": 3, "health_score": 100}
//! {"operation": "execute", "connection_id": "main_pool/7", "query": "SELECT $1::int AS n",
//!  "params": [5], "fetch_mode": "one"}
//!   → {"connection_id": "main_pool/7", "data": {"n": 5}, "row_count": 1}
//! {"operation": "release", "connection_id": "main_pool/7"}
//!   → {"connection_id": "main_pool/7", "status": "released"}
//! ```
//!
//! `params` is an array for the dialect's positional placeholders or an object for `:name`
//! placeholders. A lease not released within `lease_timeout` is reclaimed; using its id
//! afterwards, or an id that was released or never issued, is an error that says which.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{Lease, Pool, PoolError};
use crate::sql::exec::Fetch;
use crate::sql::params::Params;
use crate::sql::{ErrorKind, Row};

/// The operation API of one pool.
pub struct PoolOperations {
    pool: Pool,
    leases: Mutex<HashMap<u64, Arc<Lease>>>,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is malformed.
    #[error("{0}")]
    Request(String),
    /// The pool or the statement failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl OpError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            OpError::Request(_) => ErrorKind::Configuration,
            OpError::Pool(e) => e.kind(),
        }
    }

    /// The pool's error, when the pool or the statement failed.
    pub fn pool_error(&self) -> Option<&PoolError> {
        match self {
            OpError::Request(_) => None,
            OpError::Pool(e) => Some(e),
        }
    }

    /// `{"error": {"kind", "message"}}`.
    pub fn to_json(&self) -> Value {
        json!({"error": {"kind": self.kind(), "message": self.to_string()}})
    }
}

impl PoolOperations {
    /// The operation API over `pool`.
    pub fn new(pool: Pool) -> PoolOperations {
        PoolOperations {
            pool,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs one JSON operation (parsed first with [`PoolRequest::from_json`]).
    pub async fn execute(&self, request: &Value) -> Result<Value, OpError> {
        self.run(&PoolRequest::from_json(request)?, None).await
    }

    /// Runs one operation; an `acquire` without its own `workload` counts under `workload`.
    pub async fn run(
        &self,
        request: &PoolRequest,
        workload: Option<&str>,
    ) -> Result<Value, OpError> {
        match request {
            PoolRequest::Initialize => {
                self.pool.initialize().await?;
                let stats = self.pool.stats();
                Ok(json!({
                    "status": "initialized",
                    "pool": self.pool.name(),
                    "min_connections": self.pool.config().min_connections,
                    "max_connections": self.pool.config().max_connections,
                    "connections": stats.connections.total,
                }))
            }
            PoolRequest::Acquire { workload: own } => {
                let lease = match own.as_deref().or(workload) {
                    Some(workload) => self.pool.acquire_for(workload).await?,
                    None => self.pool.acquire().await?,
                };
                let reply = json!({
                    "connection_id": lease.id(),
                    "connection": lease.connection(),
                    "health_score": lease.health_score(),
                });
                let mut leases = self.lock();
                // Forget leases the pool reclaimed meanwhile.
                leases.retain(|_, l| l.health_score().is_some());
                leases.insert(lease.number(), Arc::new(lease));
                Ok(reply)
            }
            PoolRequest::Execute {
                connection_id,
                query,
                params,
                fetch,
            } => self.execute_on(connection_id, query, params, *fetch).await,
            PoolRequest::Release { connection_id } => {
                let (number, id) = self.connection_id(connection_id)?;
                let lease = self.lock().remove(&number);
                match lease {
                    Some(lease) if lease.health_score().is_none() => Err(PoolError::Reclaimed {
                        id,
                        timeout: self.pool.config().lease_timeout,
                    }
                    .into()),
                    // Dropping the last handle gives the connection back (an `execute` still
                    // running holds another handle and releases when it finishes).
                    Some(_) => Ok(json!({"connection_id": id, "status": "released"})),
                    None => Err(self.missing(number, id).into()),
                }
            }
            PoolRequest::Stats => {
                Ok(serde_json::to_value(self.pool.stats()).unwrap_or(Value::Null))
            }
        }
    }

    /// `execute`: one statement on an acquired lease.
    async fn execute_on(
        &self,
        connection_id: &str,
        query: &str,
        params: &Params,
        fetch: Fetch,
    ) -> Result<Value, OpError> {
        let (number, id) = self.connection_id(connection_id)?;
        let lease = self.lookup(number, &id)?;
        match lease.execute(query, params, fetch).await {
            Ok(output) => {
                let data = match fetch {
                    Fetch::One => output
                        .rows
                        .into_iter()
                        .next()
                        .map_or(Value::Null, Value::from),
                    _ => Value::Array(Row::into_objects(output.rows)),
                };
                Ok(json!({"connection_id": id, "data": data, "row_count": output.row_count}))
            }
            Err(error @ PoolError::Reclaimed { .. }) => {
                self.lock().remove(&number);
                Err(error.into())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Lease>>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connection_id(&self, id: &str) -> Result<(u64, String), OpError> {
        let number = id
            .rsplit_once('/')
            .filter(|(pool, _)| *pool == self.pool.name())
            .and_then(|(_, n)| n.parse().ok())
            .ok_or_else(|| PoolError::Unknown {
                pool: self.pool.name().to_owned(),
                id: id.to_owned(),
            })?;
        Ok((number, id.to_owned()))
    }

    fn lookup(&self, number: u64, id: &str) -> Result<Arc<Lease>, OpError> {
        match self.lock().get(&number) {
            Some(lease) => Ok(lease.clone()),
            None => Err(self.missing(number, id.to_owned()).into()),
        }
    }

    fn missing(&self, number: u64, id: String) -> PoolError {
        let shared = self.pool.shared();
        if shared.was_reclaimed(number) {
            PoolError::Reclaimed {
                id,
                timeout: self.pool.config().lease_timeout,
            }
        } else if shared.lease_issued(number) {
            PoolError::Released { id }
        } else {
            PoolError::Unknown {
                pool: self.pool.name().to_owned(),
                id,
            }
        }
    }
}

/// The operations and the keys each takes (besides `operation`).
const OPERATIONS: &[(&str, &[&str])] = &[
    ("initialize", &[]),
    ("acquire", &["workload"]),
    (
        "execute",
        &[
            "connection_id",
            "query",
            "params",
            "fetch_mode",
            "fetch_size",
        ],
    ),
    ("release", &["connection_id"]),
    ("stats", &[]),
];

/// One operation, parsed and checked.
#[derive(Debug, Clone)]
pub enum PoolRequest {
    /// Opens the pool's `min_connections`.
    Initialize,
    /// Takes a lease; `workload` names what the pool's pre-warming counts it under.
    Acquire {
        /// Its workload.
        workload: Option<String>,
    },
    /// Runs one statement on a lease.
    Execute {
        /// The lease (from `acquire`).
        connection_id: String,
        /// The statement.
        query: String,
        /// Its parameters.
        params: Params,
        /// How many rows to return.
        fetch: Fetch,
    },
    /// Gives a lease back.
    Release {
        /// The lease.
        connection_id: String,
    },
    /// The pool's statistics.
    Stats,
}

impl PoolRequest {
    /// Reads a JSON request: a known `operation`, only its keys (a typo gets a did-you-mean),
    /// and well-typed values. A workflow's pool-operation node is read with this when the
    /// workflow loads.
    pub fn from_json(request: &Value) -> Result<PoolRequest, OpError> {
        check(request)?;
        let text = |key: &str| request.get(key).and_then(Value::as_str).map(str::to_owned);
        let connection_id = || {
            text("connection_id")
                .ok_or_else(|| OpError::Request("missing `connection_id` (from `acquire`)".into()))
        };
        Ok(match request.get("operation").and_then(Value::as_str) {
            Some("initialize") => PoolRequest::Initialize,
            Some("acquire") => PoolRequest::Acquire {
                workload: text("workload"),
            },
            Some("execute") => PoolRequest::Execute {
                connection_id: connection_id()?,
                query: text("query").ok_or_else(|| OpError::Request("missing `query`".into()))?,
                params: Params::from_json(request.get("params"))
                    .map_err(|e| OpError::Pool(PoolError::Query(e.into())))?,
                fetch: fetch_of(request)?,
            },
            Some("release") => PoolRequest::Release {
                connection_id: connection_id()?,
            },
            // `check` let through only the five operations.
            _ => PoolRequest::Stats,
        })
    }
}

/// Checks a request's operation, keys and value types.
fn check(request: &Value) -> Result<(), OpError> {
    let map = request
        .as_object()
        .ok_or_else(|| OpError::Request("the operation must be a JSON object".into()))?;
    let names: Vec<&str> = OPERATIONS.iter().map(|(n, _)| *n).collect();
    let operation = match map.get("operation") {
        None => {
            return Err(OpError::Request(format!(
                "missing `operation`: one of `{}`",
                names.join("`, `")
            )));
        }
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return Err(OpError::Request("`operation` must be a string".into())),
    };
    let Some((_, keys)) = OPERATIONS.iter().find(|(n, _)| *n == operation) else {
        let hint = crate::suggest::did_you_mean(operation, &names)
            .map(|m| format!("did you mean `{m}`?"))
            .unwrap_or_else(|| format!("use one of `{}`", names.join("`, `")));
        return Err(OpError::Request(format!(
            "unknown operation `{operation}`: {hint}"
        )));
    };
    let mut known = vec!["operation"];
    known.extend_from_slice(keys);
    let unknown = crate::node_keys::unknown(map, &known);
    if !unknown.is_empty() {
        return Err(OpError::Request(format!(
            "`{operation}`: {}",
            unknown.join("; ")
        )));
    }
    for key in ["workload", "connection_id", "query"] {
        if map.get(key).is_some_and(|v| !v.is_string()) {
            return Err(OpError::Request(format!("`{key}` must be a string")));
        }
    }
    if operation == "execute" {
        if !map.contains_key("query") {
            return Err(OpError::Request("`execute` needs `query`".into()));
        }
        Params::from_json(map.get("params"))
            .map_err(|e| OpError::Pool(PoolError::Query(e.into())))?;
        fetch_of(request)?;
    }
    Ok(())
}

fn fetch_of(request: &Value) -> Result<Fetch, OpError> {
    let size = match request.get("fetch_size") {
        None => 100,
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                OpError::Request("`fetch_size` must be a whole number above 0".into())
            })?,
    };
    match request.get("fetch_mode").and_then(Value::as_str) {
        None | Some("all") => Ok(Fetch::All),
        Some("one") => Ok(Fetch::One),
        Some("many") => Ok(Fetch::Many(size)),
        Some(other) => Err(OpError::Request(format!(
            "unknown `fetch_mode` `{other}`: use `one`, `all` or `many`"
        ))),
    }
}
