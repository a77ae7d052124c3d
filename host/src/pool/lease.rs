//! Leases: a connection lent to one caller, given back when the lease is dropped.
//!
//! The pool keeps every outstanding lease's cell so that the supervisor can reclaim a lease held
//! past `lease_timeout`: the connection is rolled back and reused, and the lease answers every
//! later call with [`PoolError::Reclaimed`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::protocol::Slot;
use super::protocol::{Command, RunError};
use super::stats::CloseReason;
use super::{PoolError, QueryError, Shared};
use crate::sql::exec::{Fetch, Output};
use crate::sql::params::{self, Params, Statement};

/// The part of a lease the pool can see: its connection, until released or reclaimed.
pub(crate) struct LeaseCell {
    pub(crate) id: u64,
    pub(crate) slot: Mutex<Option<Slot>>,
    pub(crate) deadline: Instant,
}

/// A leased connection. Dropping it gives the connection back (rolled back first if a
/// transaction may be open).
pub struct Lease {
    shared: Arc<Shared>,
    cell: Arc<LeaseCell>,
    connection: u64,
    workload: Option<String>,
    acquired: Instant,
    /// A statement overran its time limit: the lease serves no more.
    stopped: AtomicBool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({})", self.id())
    }
}

impl Lease {
    pub(crate) fn new(shared: Arc<Shared>, slot: Slot, workload: Option<&str>) -> Lease {
        let id = shared.next_lease.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let connection = slot.id();
        let cell = Arc::new(LeaseCell {
            id,
            slot: Mutex::new(Some(slot)),
            deadline: now + shared.config.lease_timeout,
        });
        shared.register_lease(cell.clone());
        Lease {
            shared,
            cell,
            connection,
            workload: workload.map(str::to_owned),
            acquired: now,
            stopped: AtomicBool::new(false),
        }
    }

    /// The lease id, `POOL/N`: the `connection_id` of the JSON API.
    pub fn id(&self) -> String {
        format!("{}/{}", self.shared.config.name, self.cell.id)
    }

    /// The pool-wide number of this lease.
    pub fn number(&self) -> u64 {
        self.cell.id
    }

    /// The id of the connection behind the lease.
    pub fn connection(&self) -> u64 {
        self.connection
    }

    /// How long the lease has been held.
    pub fn held_for(&self) -> Duration {
        self.acquired.elapsed()
    }

    /// The connection's health score (0..=100), or `None` once reclaimed.
    pub fn health_score(&self) -> Option<i64> {
        self.lock_slot().as_ref().map(|s| s.health.score())
    }

    /// Translates `sql` with `params` for the pool's dialect and runs it.
    pub async fn execute(
        &self,
        sql: &str,
        params: &Params,
        fetch: Fetch,
    ) -> Result<Output, PoolError> {
        let stmt = params::prepare(sql, params, self.shared.config.target.kind())
            .map_err(QueryError::from)?;
        self.run(stmt, fetch).await
    }

    /// Runs an already translated statement.
    ///
    /// Cancellation-safe: if the future is dropped, the actor stops the statement and closes the
    /// connection (except an in-memory SQLite database's), and the lease's connection goes back
    /// through the actor, after the statement: never to another caller while it may still run.
    pub async fn run(&self, stmt: Statement, fetch: Fetch) -> Result<Output, PoolError> {
        self.run_with_timeout(stmt, fetch, None).await
    }

    /// Like [`Lease::run`], with a time limit for this statement instead of the pool's
    /// `command_timeout`. A statement that overruns it is stopped and its connection closed;
    /// the lease then answers every later call with [`PoolError::Stopped`].
    pub async fn run_with_timeout(
        &self,
        stmt: Statement,
        fetch: Fetch,
        timeout: Option<Duration>,
    ) -> Result<Output, PoolError> {
        let (reply, answer) = oneshot::channel();
        let counters = &self.shared.counters;
        {
            // Send while holding the cell: a reclaim (which takes the slot under the same lock)
            // then always queues its rollback after this statement, never before it.
            let mut slot = self.lock_slot();
            let Some(slot) = slot.as_mut() else {
                return Err(self.gone_error());
            };
            slot.record(&stmt);
            counters.queries.fetch_add(1, Ordering::Relaxed);
            if slot
                .tx
                .send(Command::Run {
                    stmt,
                    fetch,
                    timeout,
                    reply,
                })
                .is_err()
            {
                counters.query_errors.fetch_add(1, Ordering::Relaxed);
                return Err(QueryError::ConnectionGone.into());
            }
        }
        // Dropped before the answer (the caller gave up on the statement), this sends the
        // connection back through its actor, behind the statement: the actor closes it if it
        // stops the statement, and no other caller is handed it in between.
        let mut waiting = Answering {
            lease: self,
            armed: true,
        };
        let answer = answer.await;
        waiting.armed = false;
        let result = match answer {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(RunError::Timeout(limit))) => {
                // The connection is closed, or (an in-memory SQLite database's, which stays
                // open) the interrupt may have rolled back the caller's transaction: either way
                // the statements after this one must not run as if it were still open.
                self.stopped.store(true, Ordering::Relaxed);
                if let Some(mut slot) = self.lock_slot().take() {
                    slot.session_dirty = true;
                    release(&self.shared, slot);
                }
                QueryError::Timeout(limit)
            }
            Ok(Err(error)) => query_error(error),
            Err(_) => QueryError::ConnectionGone,
        };
        counters.query_errors.fetch_add(1, Ordering::Relaxed);
        Err(result.into())
    }

    fn lock_slot(&self) -> std::sync::MutexGuard<'_, Option<Slot>> {
        self.cell.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn gone_error(&self) -> PoolError {
        if self.stopped.load(Ordering::Relaxed) {
            return PoolError::Stopped { id: self.id() };
        }
        PoolError::Reclaimed {
            id: self.id(),
            timeout: self.shared.config.lease_timeout,
        }
    }
}

/// A lease's statement its caller still waits for (see [`Lease::run_with_timeout`]).
struct Answering<'a> {
    lease: &'a Lease,
    armed: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(slot) = self.lease.lock_slot().as_mut()
        {
            // Released through the actor (a rollback after the statement), never straight to
            // the idle set while the statement may still run.
            slot.session_dirty = true;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let slot = self.lock_slot().take();
        self.shared.unregister_lease(self.cell.id);
        if let Some(workload) = &self.workload {
            self.shared.workloads.end(workload);
        }
        if let Some(slot) = slot {
            release(&self.shared, slot);
        }
    }
}

/// What a caller sees of an actor's failure.
pub(crate) fn query_error(error: RunError) -> QueryError {
    match error {
        RunError::Exec { error, broken } => {
            let (message, sqlstate, transient) = match &error {
                crate::sql::exec::ExecError::Database(e) => {
                    (e.describe(), e.sqlstate(), e.is_transient())
                }
                other => (other.to_string(), None, false),
            };
            QueryError::Database {
                message,
                sqlstate,
                connection_lost: broken,
                transient,
                error,
            }
        }
        RunError::Timeout(limit) => QueryError::Timeout(limit),
        // Only queued statements are answered so; a lease always has its connection.
        RunError::Unavailable(_) | RunError::Expired => QueryError::ConnectionGone,
    }
}

/// Gives a connection back: straight to the idle set when it is clean, through its actor's
/// rollback when a transaction or session setting may be open, closed when it may hold session
/// state no reset undoes.
pub(crate) fn release(shared: &Shared, slot: Slot) {
    if slot.keeps_state {
        shared.retire(slot, CloseReason::Session);
    } else if slot.session_dirty {
        let tx = slot.tx.clone();
        // If the actor is gone the message (and the slot in it) is dropped: nothing to reuse.
        let _ = tx.send(Command::Reset { slot });
    } else {
        shared.checkin(slot);
    }
}
