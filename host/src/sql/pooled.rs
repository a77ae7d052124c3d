//! Statements on PostgreSQL behind a transaction-mode pooler (`[databases.NAME] pooler =
//! "transaction"`, such as PgBouncer with `pool_mode = transaction`), where each transaction may
//! run in another server session. Nothing is left in a session:
//!
//! - sqlx sends a statement with parameters in two exchanges (Parse/Describe/Sync, then
//!   Bind/Execute/Sync). Between them the pooler may hand the connection another server
//!   session, where the unnamed statement is missing or is another client's. So a statement runs
//!   inside a transaction, its own (`BEGIN` … `COMMIT`) or the caller's when one is open: the
//!   pooler keeps a client on one server session for a whole transaction.
//! - Only unnamed statements run (the driver's statement cache is off). Learning the types
//!   PostgreSQL infers for the parameters takes a named statement: that happens once per
//!   connection and statement text, inside the transaction, followed at once by
//!   `DEALLOCATE ALL`.
//! - A time limit is the transaction's `SET LOCAL statement_timeout`, so the server stops the
//!   statement itself. Cancelling by process id would stop whatever another client now runs in
//!   that session.
//! - A statement that would leave session state ([`Statement::outlives_transaction`]) is refused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor};

use super::exec::{self, ExecError, Fetch, Output, PgMode};
use super::params::Statement;

/// At most this many statement texts' parameter types are kept per connection.
const MAX_KEPT_TYPES: usize = 256;

/// What a connection behind a pooler keeps: the parameter types of the statements it ran.
#[derive(Default)]
pub(crate) struct PooledSession {
    types: HashMap<Arc<str>, Arc<[String]>>,
}

/// `SET LOCAL statement_timeout` for `limit` (at least 1 ms: 0 would mean none).
fn timeout_setting(limit: Duration) -> String {
    let ms = limit.as_millis().clamp(1, i32::MAX as u128);
    format!("SET LOCAL statement_timeout = {ms}")
}

/// Runs `stmt` behind a transaction-mode pooler, within `limit`. `maybe_in_transaction`: a
/// session statement (`BEGIN`, …) ran on the connection since it was last reset.
pub(super) async fn run(
    conn: &mut PgConnection,
    session: &mut PooledSession,
    stmt: &Statement,
    fetch: Fetch,
    limit: Option<Duration>,
    maybe_in_transaction: bool,
) -> Result<Output, ExecError> {
    if stmt.outlives_transaction {
        return Err(ExecError::SessionState);
    }
    if stmt.args.is_empty() && (stmt.touches_session || stmt.statements > 1) {
        // A script is one message, which the pooler keeps on one server session. One that does
        // not manage transactions runs as one implicit transaction, where `SET LOCAL` holds.
        let result = match limit {
            Some(limit) if !stmt.touches_session => {
                let mut bounded = stmt.clone();
                bounded.sql = format!("{}; {}", timeout_setting(limit), stmt.sql).into();
                bounded.statements += 1;
                exec::run_pg(conn, &bounded, fetch, PgMode::Simple).await
            }
            _ => exec::run_pg(conn, stmt, fetch, PgMode::Simple).await,
        };
        return timed_out(result, limit);
    }
    let in_transaction = maybe_in_transaction && in_transaction(conn).await?;
    // Learning the parameter types prepares a named statement: first drop any that another
    // client of the pooler left in this server session, so the driver's name is free.
    let learn = !stmt.args.is_empty() && !session.types.contains_key(&stmt.sql);
    let begin: Vec<String> = [
        (!in_transaction).then(|| "BEGIN".to_owned()),
        limit.map(timeout_setting),
        learn.then(|| "DEALLOCATE ALL".to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !begin.is_empty() {
        conn.execute(sqlx::raw_sql(AssertSqlSafe(begin.join("; "))))
            .await?;
    }
    let result = match parameter_types(conn, session, stmt).await {
        Ok(types) => exec::run_pg(conn, stmt, fetch, PgMode::Unnamed(&types)).await,
        Err(error) => Err(error),
    };
    if !in_transaction {
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = conn.execute(sqlx::raw_sql(end)).await;
        if let (Ok(_), Err(error)) = (&result, ended) {
            return Err(error.into());
        }
    }
    timed_out(result, limit)
}

/// A statement cancelled (57014) under the `statement_timeout` set for `limit`: the limit
/// passed.
fn timed_out(
    result: Result<Output, ExecError>,
    limit: Option<Duration>,
) -> Result<Output, ExecError> {
    result.map_err(|error| match error {
        ExecError::Database(e) if limit.is_some() && e.sqlstate().as_deref() == Some("57014") => {
            ExecError::ServerTimeout
        }
        other => other,
    })
}

/// Whether a transaction is open: a savepoint can be taken (or the transaction is aborted).
async fn in_transaction(conn: &mut PgConnection) -> Result<bool, ExecError> {
    let probe = "SAVEPOINT trellis_probe; RELEASE SAVEPOINT trellis_probe";
    match conn.execute(sqlx::raw_sql(probe)).await {
        Ok(_) => Ok(true),
        Err(e) => match super::error::sqlstate(&e).as_deref() {
            // 25P01: no transaction is open.
            Some("25P01") => Ok(false),
            // 25P02: the caller's transaction failed; the statement will say so.
            Some("25P02") => Ok(true),
            _ => Err(e.into()),
        },
    }
}

/// The types PostgreSQL infers for `stmt`'s parameters: kept, or learnt by preparing it (a named
/// statement, dropped at once; the caller holds a transaction open, and has dropped any named
/// statement left in the session).
async fn parameter_types(
    conn: &mut PgConnection,
    session: &mut PooledSession,
    stmt: &Statement,
) -> Result<Arc<[String]>, ExecError> {
    if stmt.args.is_empty() {
        return Ok(Arc::from([]));
    }
    if let Some(types) = session.types.get(&stmt.sql) {
        return Ok(types.clone());
    }
    let prepared = exec::prepare_pg(conn, stmt).await;
    conn.execute(sqlx::raw_sql("DEALLOCATE ALL")).await?;
    let types: Arc<[String]> = prepared?.into();
    if session.types.len() >= MAX_KEPT_TYPES {
        session.types.clear();
    }
    session.types.insert(stmt.sql.clone(), types.clone());
    Ok(types)
}
