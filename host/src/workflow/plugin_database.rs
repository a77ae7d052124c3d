//! A plugin node's database access in a run: each statement it sends through the `database`
//! import is decided by the policy engine for the run's user (`database:read` or
//! `database:write`, by the statement's shape as the tokenizer sees it, on
//! `Trellis::Database::"NAME"`, with the plugin, its version, the node and the workflow in the
//! context), then run through the database's pool (the tenant's, for a database per tenant).
//!
//! The runtime itself does not know the user: [`super::AccessControlledRuntime`] puts a
//! [`DatabasePolicy`] in the run's [`super::Plan`]. A run without one denies every statement.

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};

use jiff::Timestamp;

use crate::database::Databases;
use crate::plugins::{DatabaseCallError, DatabaseErrorKind, DatabaseGate, DatabaseRequest};
use crate::policy::{
    AccessRequest, Decision, PolicyEngine, PolicyGeneration, PreparedUser, ResourceType,
};
use crate::pool::Pool;
use crate::pool::breaker::Outcome;
use crate::sql::params::{self, Params, Shape, Statement};
use crate::sql::{ErrorKind, Fetch};

/// Who asks for a database, from where: the decision's context besides the run's.
#[derive(Debug, Clone)]
pub struct DatabaseCaller {
    /// The plugin's name.
    pub plugin: String,
    /// Its version.
    pub plugin_version: String,
    /// The node it runs as.
    pub node: String,
    /// The workflow.
    pub workflow: String,
}

/// How a run's plugin statements are decided: `database:read`/`database:write` on
/// `Trellis::Database::"NAME"` for the run's user, on the run's pinned generation, at the run's
/// instant, with the run's context plus who asks. Each decision is audited by the engine.
///
/// Cheap to clone: every node task of a run gets a copy, and the run's context is shared, not
/// copied.
#[derive(Clone)]
pub struct DatabasePolicy {
    policy: Arc<PolicyEngine>,
    generation: Arc<PolicyGeneration>,
    user: PreparedUser,
    /// The run's context (`runtime.…`).
    ctx: Arc<Value>,
    now: Timestamp,
}

impl DatabasePolicy {
    /// The decision context for `caller`: the run's, plus `plugin`, `plugin_version`, `node`
    /// and `workflow`. Built once per plugin call.
    fn context_for(&self, caller: &DatabaseCaller) -> Value {
        let mut runtime = Value::clone(&self.ctx);
        runtime["plugin"] = json!(caller.plugin);
        runtime["plugin_version"] = json!(caller.plugin_version);
        runtime["node"] = json!(caller.node);
        runtime["workflow"] = json!(caller.workflow);
        runtime
    }

    /// Whether `permission` (`read` or `write`) on database `name` is allowed in `runtime`
    /// (from [`DatabasePolicy::context_for`]). Decided once per gate, database and permission
    /// (everything else the decision reads is fixed for the gate), and audited every time.
    fn allows(
        &self,
        name: &str,
        permission: &'static str,
        runtime: &Value,
        decided: &Decided,
    ) -> bool {
        let req = AccessRequest {
            user: &self.user,
            resource_type: ResourceType::Database,
            resource_id: name,
            permission,
            now: self.now,
            runtime,
        };
        let known = decided
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(n, p, _)| &**n == name && *p == permission)
            .map(|(_, _, d)| Arc::clone(d));
        if let Some(decision) = known {
            self.policy.decided_again(&req, &decision);
            return decision.allowed;
        }
        let decision = self.policy.decide_in(&self.generation, &req);
        let allowed = decision.allowed;
        decided
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.into(), permission, Arc::new(decision)));
        allowed
    }
}

/// The decisions a call has made, by database and permission.
type Decided = Mutex<Vec<(Box<str>, &'static str, Arc<Decision>)>>;

/// The policy deciding a run's plugin statements (see [`DatabasePolicy`]): for `user`, on
/// `generation`, at `now`, in the run's context `ctx` (a `Value`, or one the run shares).
pub fn decided_by(
    policy: Arc<PolicyEngine>,
    generation: Arc<PolicyGeneration>,
    user: PreparedUser,
    ctx: impl Into<Arc<Value>>,
    now: Timestamp,
) -> DatabasePolicy {
    DatabasePolicy {
        policy,
        generation,
        user,
        ctx: ctx.into(),
        now,
    }
}

/// The permission a statement needs: `read` for one plain query that leaves nothing behind
/// (`SELECT`, `VALUES`, `TABLE`); `write` for anything else.
pub(crate) fn permission_for(stmt: &Statement) -> &'static str {
    let plain_read = stmt.shape == Shape::Query
        && stmt.statements <= 1
        && !stmt.touches_session
        && !stmt.leaves_state;
    if plain_read { "read" } else { "write" }
}

/// One plugin call's database access: what a served run gives a plugin node that asks for
/// `database` (and what the benchmark measures).
pub struct PluginDatabase {
    databases: Databases,
    tenant: Arc<str>,
    /// The policy, with the decision context for this caller.
    policy: Option<(DatabasePolicy, Value)>,
    caller: DatabaseCaller,
    /// The decisions made so far, by database and permission.
    decided: Decided,
}

impl PluginDatabase {
    /// `caller`'s access to `databases` (for a database per tenant, `tenant`'s pool), each
    /// statement decided by `policy` (`None`: all denied).
    pub fn new(
        databases: Databases,
        tenant: Arc<str>,
        policy: Option<DatabasePolicy>,
        caller: DatabaseCaller,
    ) -> PluginDatabase {
        PluginDatabase {
            databases,
            tenant,
            policy: policy.map(|p| {
                let runtime = p.context_for(&caller);
                (p, runtime)
            }),
            caller,
            decided: Mutex::new(Vec::new()),
        }
    }
}

fn fail(kind: DatabaseErrorKind, message: impl Into<String>) -> DatabaseCallError {
    DatabaseCallError::new(kind, message)
}

#[async_trait::async_trait]
impl DatabaseGate for PluginDatabase {
    async fn query(&self, request: DatabaseRequest) -> Result<String, DatabaseCallError> {
        let DatabaseRequest {
            database,
            statement,
            params,
            max_rows,
            deadline,
        } = request;
        let name = database.as_str();
        let (pool, checkout) = if let Some(pool) = self.databases.get(name) {
            (pool.clone(), None)
        } else if let Some(tenants) = self.databases.per_tenant(name) {
            let checkout = tenants.checkout(&self.tenant).map_err(|e| {
                tracing::warn!(database = name, error = %e, "plugin statement: tenant pool unavailable");
                fail(
                    DatabaseErrorKind::Query,
                    format!("database `{name}` is not available for this tenant"),
                )
            })?;
            (checkout.pool().clone(), Some(checkout))
        } else {
            return Err(fail(
                DatabaseErrorKind::Query,
                format!("no database `{name}` is configured"),
            ));
        };
        let stmt = params::prepare(&statement, &Params::Named(params), pool.kind())
            .map_err(|e| fail(DatabaseErrorKind::Query, e.to_string()))?;
        let permission = permission_for(&stmt);
        let allowed = self.policy.as_ref().is_some_and(|(policy, runtime)| {
            policy.allows(name, permission, runtime, &self.decided)
        });
        if !allowed {
            tracing::info!(
                plugin = %self.caller.plugin,
                node = %self.caller.node,
                workflow = %self.caller.workflow,
                database = name,
                permission,
                "plugin statement denied by policy"
            );
            return Err(fail(
                DatabaseErrorKind::Denied,
                format!("`database:{permission}` on `{name}` is denied for this user"),
            ));
        }
        let bounds = Bounds {
            database: name,
            max_rows,
            deadline,
        };
        let result = run(&pool, &self.caller.workflow, stmt, &bounds).await;
        if let Some(checkout) = checkout {
            checkout.finish(match &result {
                Ok(_) => Outcome::Reached,
                Err((kind, _)) => match kind {
                    ErrorKind::Connection => Outcome::Unreachable,
                    ErrorKind::Query | ErrorKind::Timeout => Outcome::Reached,
                    _ => Outcome::Inconclusive,
                },
            });
        }
        result.map_err(|(_, e)| e)
    }
}

/// The SQL node's `result` object (`{"data", "row_count", "database_type"}`) as JSON text,
/// around `rows`, the rows' JSON text as the pool wrote it ([`Fetch::Capped`]): the frame is
/// fixed text, nothing is parsed or serialized again. The SDK reads this exact frame by hand
/// (`trellis_sdk::database`'s `framed`) and parses only the rows; any other text it parses whole,
/// so a change here stays correct but makes every plugin statement dearer: change both.
fn answer_text(rows: &str, row_count: u64, database_type: &str) -> String {
    debug_assert!(
        database_type.bytes().all(|b| b.is_ascii_lowercase()),
        "a database type is a plain identifier: no JSON escaping needed"
    );
    let mut count = itoa::Buffer::new();
    let count = count.format(row_count);
    let mut out = String::with_capacity(rows.len() + count.len() + database_type.len() + 48);
    out.push_str(r#"{"data":"#);
    out.push_str(rows);
    out.push_str(r#","row_count":"#);
    out.push_str(count);
    out.push_str(r#","database_type":""#);
    out.push_str(database_type);
    out.push_str(r#""}"#);
    out
}

/// Where a statement runs, and its limits.
struct Bounds<'a> {
    database: &'a str,
    max_rows: usize,
    deadline: tokio::time::Instant,
}

/// Runs `stmt` on `pool` within the request's deadline and row cap.
async fn run(
    pool: &Pool,
    workflow: &str,
    stmt: Statement,
    request: &Bounds<'_>,
) -> Result<String, (ErrorKind, DatabaseCallError)> {
    let name = request.database;
    let left = request
        .deadline
        .saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return Err((
            ErrorKind::Timeout,
            fail(DatabaseErrorKind::Timeout, "the call's deadline has passed"),
        ));
    }
    // One row past the cap tells a capped answer from one that fits. In one round trip (no
    // cursor): the rows past it are read and dropped, never decoded or kept.
    let fetch = Fetch::Capped(request.max_rows.saturating_add(1));
    match pool.run_for(Some(workflow), stmt, fetch, Some(left)).await {
        Ok(output) => {
            if output.returns_rows && output.row_count > request.max_rows as u64 {
                return Err((
                    ErrorKind::Query,
                    fail(
                        DatabaseErrorKind::Limit,
                        format!(
                            "the statement returns more than {} rows (`max_rows`)",
                            request.max_rows
                        ),
                    ),
                ));
            }
            Ok(answer_text(
                output.text.as_deref().unwrap_or("[]"),
                output.row_count,
                pool.kind().as_str(),
            ))
        }
        Err(error) => {
            let kind = error.kind();
            tracing::warn!(database = name, %error, "plugin statement failed");
            let e = match kind {
                ErrorKind::Timeout | ErrorKind::PoolExhausted => fail(
                    DatabaseErrorKind::Timeout,
                    "the call's deadline passed while the statement waited or ran",
                ),
                ErrorKind::Connection => fail(
                    DatabaseErrorKind::Query,
                    format!("database `{name}` could not be reached"),
                ),
                _ => {
                    let code = match &error {
                        crate::pool::PoolError::Query(crate::pool::QueryError::Database {
                            sqlstate: Some(code),
                            ..
                        }) => format!(" (SQLSTATE {code})"),
                        _ => String::new(),
                    };
                    fail(
                        DatabaseErrorKind::Query,
                        format!("database `{name}` refused the statement{code}"),
                    )
                }
            };
            Err((kind, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::DatabaseKind;

    fn permission(sql: &str) -> &'static str {
        permission_for(&params::prepare(sql, &Params::None, DatabaseKind::Postgres).unwrap())
    }

    #[test]
    fn the_answer_is_the_sql_nodes_result_object() {
        let rows = json!([{"one": 1, "name": "A \"quoted\"\n name"}]).to_string();
        let text = answer_text(&rows, 1, "postgresql");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"data": [{"one": 1, "name": "A \"quoted\"\n name"}], "row_count": 1,
                "database_type": "postgresql"})
        );
        assert_eq!(
            answer_text("[]", 12_345_678_901, "mysql"),
            r#"{"data":[],"row_count":12345678901,"database_type":"mysql"}"#
        );
    }

    #[test]
    fn only_a_plain_query_reads() {
        assert_eq!(permission("SELECT 1"), "read");
        assert_eq!(permission("  (SELECT 1)"), "read");
        assert_eq!(permission("VALUES (1)"), "read");
        assert_eq!(permission("/* x */ select * from t"), "read");
        assert_eq!(permission("SELECT 1 INTO t"), "write");
        assert_eq!(
            permission("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
            "write"
        );
        assert_eq!(permission("SELECT 1; DELETE FROM t"), "write");
        assert_eq!(permission("DELETE FROM t"), "write");
        assert_eq!(permission("UPDATE t SET a = 1"), "write");
        assert_eq!(permission("SET search_path = x"), "write");
        assert_eq!(permission("BEGIN"), "write");
    }
}
