//! The `database` import (`trellis:plugin@0.2.0`): a plugin's statement, counted and bounded
//! here, then decided and run by the [`DatabaseGate`] of the call (the workflow runtime's, which
//! knows the run's user and asks the policy engine first).
//!
//! A call without a gate (a plugin that did not ask for the `database` capability, a masking
//! call, `describe`) is denied. The wait counts against the call's deadline: when it passes, the
//! plugin gets a `timeout` error, and the epoch deadline stops it at its next step.

use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::CallState;
use crate::plugins::bindings::v2::{self, DatabaseError, ErrorKind};

/// The default most rows one statement may return to a plugin.
pub const DEFAULT_MAX_ROWS: usize = 1_000;
/// The default most statements one plugin call may run.
pub const DEFAULT_MAX_STATEMENTS: u32 = 16;

/// One statement a plugin asks for.
#[derive(Debug)]
pub struct DatabaseRequest {
    /// The database's name (`[databases.NAME]`).
    pub database: String,
    /// The SQL, with `:name` parameters.
    pub statement: String,
    /// The named parameters' values.
    pub params: Map<String, Value>,
    /// The most rows the answer may hold: more is a [`DatabaseErrorKind::Limit`] error.
    pub max_rows: usize,
    /// When the plugin's call must be over.
    pub deadline: tokio::time::Instant,
}

/// Why a statement did not run, or did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseErrorKind {
    /// The policy engine refused it.
    Denied,
    /// The database refused it, or its parameters do not fit it.
    Query,
    /// The deadline passed.
    Timeout,
    /// A row or statement limit was hit.
    Limit,
}

/// A failed statement, as the plugin sees it: fixed text and identifiers, never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseCallError {
    /// What kind of failure.
    pub kind: DatabaseErrorKind,
    /// What the plugin is told.
    pub message: String,
}

impl DatabaseCallError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: DatabaseErrorKind, message: impl Into<String>) -> DatabaseCallError {
        DatabaseCallError {
            kind,
            message: message.into(),
        }
    }
}

/// Decides and runs a plugin's statements for one call: the layer that knows the run's user,
/// node and workflow implements it.
#[async_trait::async_trait]
pub trait DatabaseGate: Send + Sync {
    /// Decides `request` and, when allowed, runs it: the SQL node's `result` object
    /// (`{"data", "row_count", "database_type"}`), as the JSON text the plugin is given.
    async fn query(&self, request: DatabaseRequest) -> Result<String, DatabaseCallError>;
}

/// What one call may do with the database: its gate and what is left of its limits.
pub(crate) struct DatabaseGrant {
    pub(crate) gate: Arc<dyn DatabaseGate>,
    pub(crate) statements_left: u32,
    pub(crate) max_statements: u32,
    pub(crate) max_rows: usize,
    /// The call's deadline as one timer, set at the first statement and shared by all of them:
    /// a timer per statement would be registered with tokio's timer wheel and removed again on
    /// every wait (a lock both workers take), which cost more than the rest of the wait.
    pub(crate) timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

fn error(kind: DatabaseErrorKind, message: impl Into<String>) -> DatabaseError {
    DatabaseError {
        kind: match kind {
            DatabaseErrorKind::Denied => ErrorKind::Denied,
            DatabaseErrorKind::Query => ErrorKind::Query,
            DatabaseErrorKind::Timeout => ErrorKind::Timeout,
            DatabaseErrorKind::Limit => ErrorKind::Limit,
        },
        message: message.into(),
    }
}

impl v2::trellis::plugin::database::Host for CallState {
    async fn query(
        &mut self,
        name: String,
        statement: String,
        params: String,
    ) -> Result<String, DatabaseError> {
        let Some(grant) = self.database.as_mut() else {
            tracing::info!(plugin = %self.label, database = %name, "plugin database call denied: no database access in this call");
            return Err(error(
                DatabaseErrorKind::Denied,
                "this call has no database access: the plugin must list `database` in its \
                 capabilities, and only node plugins in a workflow run get it",
            ));
        };
        if grant.statements_left == 0 {
            return Err(error(
                DatabaseErrorKind::Limit,
                format!(
                    "more than {} statements in one call (`max_statements`)",
                    grant.max_statements
                ),
            ));
        }
        grant.statements_left -= 1;
        // `null` (no parameters, what the SDK sends for none) without the parser.
        let parsed = match params.as_str() {
            "null" => Ok(Value::Null),
            text => serde_json::from_str::<Value>(text),
        };
        let params = match parsed {
            Ok(Value::Object(map)) => map,
            Ok(Value::Null) => Map::new(),
            _ => {
                return Err(error(
                    DatabaseErrorKind::Query,
                    "`params` must be a JSON object of named parameters, or null",
                ));
            }
        };
        let gate = grant.gate.clone();
        let request = DatabaseRequest {
            database: name,
            statement,
            params,
            max_rows: grant.max_rows,
            deadline: self.deadline,
        };
        let deadline = self.deadline;
        let timer = grant
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Decided and run here, on the plugin's fiber: waiting suspends the fiber and frees the
        // worker. When the call's deadline passes first, the statement's future is dropped (the
        // pool stops the statement on the server: it runs under the time that was left).
        tokio::select! {
            biased;
            answer = gate.query(request) => answer.map_err(|e| error(e.kind, e.message)),
            () = timer.as_mut() => Err(error(
                DatabaseErrorKind::Timeout,
                "the call's deadline passed while waiting for the database",
            )),
        }
    }
}
