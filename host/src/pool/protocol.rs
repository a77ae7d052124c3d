//! The pool's protocol: the messages a connection actor serves ([`Command`]), the handle they
//! go through ([`Slot`]), how a statement fails ([`RunError`]), and a statement queued on the
//! pool ([`Job`]). The pool, its leases,
//! its queued statements and the actors all speak it; none of them needs another's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::health::ConnHealth;
use super::stats::CloseReason;
use crate::sql::exec::{ExecError, Fetch, Output};
use crate::sql::params::Statement;

/// What an actor can be asked to do.
pub(crate) enum Command {
    /// Run a statement and reply with its output.
    Run {
        stmt: Statement,
        fetch: Fetch,
        /// Overrides the pool's `command_timeout` for this statement.
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<Output, RunError>>,
    },
    /// Round trip to the server; reply whether it answered.
    Ping { reply: oneshot::Sender<bool> },
    /// Undo any transaction or session state, then hand the slot back to the pool.
    Reset { slot: Slot },
    /// Run a statement queued on the pool (not on a lease), reply, and hand the slot back
    /// (rolled back first if the statement may have left a transaction or session setting).
    Job {
        job: Job,
        slot: Slot,
        /// Counts the statement as running until it is done (or dropped with the actor).
        running: Running,
    },
}

/// Why a `Run` failed.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The statement failed; the connection is fine (or broken, see `broken`).
    Exec { error: ExecError, broken: bool },
    /// The statement overran `command_timeout`; it was stopped (cancelled on the server, or
    /// interrupted on SQLite) and the connection closed (except an in-memory SQLite database's).
    Timeout(Duration),
    /// No connection could be opened for a queued statement.
    Unavailable(String),
    /// A queued statement waited `acquire_timeout` for a connection.
    Expired,
}

/// A statement waiting for (or running on) a connection.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) stmt: Statement,
    pub(crate) fetch: Fetch,
    /// Overrides the pool's `command_timeout` for this statement.
    pub(crate) timeout: Option<Duration>,
    pub(crate) reply: oneshot::Sender<Result<Output, RunError>>,
    pub(crate) queued_at: Instant,
}

/// Counts a dispatched statement as running (an active connection) until dropped.
pub(crate) struct Running(pub(crate) Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pool's handle on one connection actor. Dropping the last handle ends the actor, which
/// closes the connection.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) health: Arc<ConnHealth>,
    /// After this instant the connection is recycled instead of reused (lifetime with jitter).
    pub(crate) retire_at: Instant,
    /// When it was last handed back.
    pub(crate) idle_since: Instant,
    /// When a queued statement last succeeded on it (see `ConnHealth::last_ok` for the rest).
    pub(crate) proven_at: Instant,
    /// Something run on it may have left a transaction or session setting behind.
    pub(crate) session_dirty: bool,
    /// Something run on it may have left session state the reset cannot undo (a MySQL user
    /// variable, a SQLite pragma, …): it is closed on release instead of reused.
    pub(crate) keeps_state: bool,
    /// `false` for the one connection of an in-memory SQLite database, which is the database
    /// itself: closing it would lose the data, so it is never recycled for its age, its health
    /// or session state (only when it breaks or the pool closes).
    pub(crate) replaceable: bool,
}

impl Slot {
    pub(crate) fn id(&self) -> u64 {
        self.health.id
    }

    /// When the connection last answered correctly: a statement, or a health check.
    pub(crate) fn last_ok(&self) -> Instant {
        self.proven_at.max(self.health.last_ok())
    }

    /// Notes what `stmt`, run on this connection, may leave behind: a reset on release
    /// (`session_dirty`), or closing the connection instead (`keeps_state`, never for an
    /// in-memory SQLite database's, see `replaceable`).
    pub(crate) fn record(&mut self, stmt: &Statement) {
        self.session_dirty |= stmt.needs_reset();
        self.keeps_state |= stmt.leaves_state && self.replaceable;
    }

    /// Why the connection should be replaced rather than reused at `now`: past its lifetime, or
    /// its health score below `threshold`.
    pub(crate) fn worn_out(&self, now: Instant, threshold: i64) -> Option<CloseReason> {
        if !self.replaceable {
            None
        } else if now >= self.retire_at {
            Some(CloseReason::Lifetime)
        } else if self.health.score() < threshold {
            Some(CloseReason::Health)
        } else {
            None
        }
    }
}
