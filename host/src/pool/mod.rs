//! WorkflowConnectionPool: an actor per connection, a supervisor, and leases.
//!
//! Each connection is owned by an actor task ([`actor`]) that runs one command at a time to
//! completion. Callers [`Pool::acquire`] a [`Lease`], run statements on it, and drop it; a lease
//! that may have left a transaction or session state behind is reset by its actor before the
//! connection is reused, or closed when no reset can undo that state (a MySQL user variable, a
//! SQLite pragma: see [`Statement::leaves_state`](crate::sql::params::Statement::leaves_state)).
//! [`Pool::execute`] runs a single statement without a lease: it waits in the pool's
//! queue, and an actor that finishes a statement takes the next queued one straight away (see
//! [`job`]), so a busy pool never idles a connection between statements. The supervisor
//! ([`supervisor`]) keeps between `min_connections` and `max_connections` open, opens new ones
//! in the background when demand rises (callers only ever wait on the pool), health-checks idle
//! connections, recycles old or unhealthy ones, replaces actors that died, reclaims leases held
//! past `lease_timeout`, and pre-warms for known workloads.
//!
//! Guarantees: `acquire` and `execute` never wait past `acquire_timeout`
//! ([`PoolError::Exhausted`] names the pool, its size and the wait); at most `max_connections`
//! connections are ever open; no lease sees another's transaction, also when acquires,
//! statements or `BEGIN`s are cancelled.
//!
//! [`ops`] is the Kailash JSON operation API over the same pool; [`manager`] keeps pools per
//! tenant and database.

mod actor;
pub(crate) mod breaker;
mod config;
mod health;
mod job;
mod lease;
pub mod manager;
pub mod ops;
mod protocol;
mod stats;
mod supervisor;
mod workload;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

pub use config::{PoolConfig, PoolConfigError};
pub use lease::Lease;
pub use stats::{ACQUIRE_BUCKETS, CloseReason, PoolStats};

use crate::config::values::DatabaseKind;
use crate::sql::driver::DriverConnection;
use health::ConnHealth;
use lease::LeaseCell;
use protocol::Slot;
use stats::Counters;

/// A pool of connections to one database. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pool({} {})",
            self.shared.config.name, self.shared.config.target
        )
    }
}

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum PoolError {
    /// No connection was free within `acquire_timeout`.
    #[error("pool `{pool}` exhausted: all {size} connections stayed busy for {waited:.1?}")]
    #[diagnostic(help("release leases sooner, or raise `max_connections` or `acquire_timeout`"))]
    Exhausted {
        /// The pool.
        pool: String,
        /// Its `max_connections`.
        size: usize,
        /// How long the caller waited.
        waited: Duration,
    },
    /// The database could not be reached.
    #[error("pool `{pool}` cannot connect to {target}: {cause}")]
    Connect {
        /// The pool.
        pool: String,
        /// `user@host:port/db` or the SQLite path.
        target: String,
        /// The driver's message.
        cause: String,
    },
    /// The pool was closed.
    #[error("pool `{pool}` is closed")]
    Closed {
        /// The pool.
        pool: String,
    },
    /// The lease was taken back after `lease_timeout`.
    #[error(
        "connection `{id}` was reclaimed: it was held longer than the lease timeout of {timeout:?}"
    )]
    #[diagnostic(help("acquire a new connection; release leases within `lease_timeout`"))]
    Reclaimed {
        /// The lease id.
        id: String,
        /// The pool's `lease_timeout`.
        timeout: Duration,
    },
    /// A statement on the lease overran its time limit: it was stopped, and the lease's
    /// connection closed (an in-memory SQLite database's given back to the pool), with any
    /// transaction open on it rolled back.
    #[error(
        "connection `{id}` runs no more statements: one on it overran its time limit, and a transaction open on it was rolled back"
    )]
    #[diagnostic(help("acquire a new connection and start the transaction again"))]
    Stopped {
        /// The lease id.
        id: String,
    },
    /// The lease was already released.
    #[error("connection `{id}` was already released")]
    #[diagnostic(help("acquire a new connection"))]
    Released {
        /// The lease id.
        id: String,
    },
    /// No such lease.
    #[error("unknown connection `{id}` in pool `{pool}`")]
    #[diagnostic(help("use the `connection_id` returned by `acquire`"))]
    Unknown {
        /// The pool.
        pool: String,
        /// What the caller sent.
        id: String,
    },
    /// The statement failed.
    #[error(transparent)]
    Query(#[from] QueryError),
}

/// A statement's failure, classified.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The parameters do not fit the SQL.
    #[error(transparent)]
    Params(#[from] crate::sql::params::ParamError),
    /// The database rejected or failed the statement.
    #[error("{message}")]
    Database {
        /// The server's message with its SQLSTATE (and position, on PostgreSQL).
        message: String,
        /// The SQLSTATE (or engine error code), when there is one.
        sqlstate: Option<String>,
        /// The connection broke.
        connection_lost: bool,
        /// Running it again may succeed.
        transient: bool,
        /// The full error (kept for callers; `message` already says what it says).
        error: crate::sql::exec::ExecError,
    },
    /// The statement overran `command_timeout`. It is stopped (PostgreSQL and MySQL/MariaDB
    /// are told to cancel it from a connection of its own, SQLite is interrupted) and its
    /// changes are rolled back; one that finished before the cancel arrived stays done. Its
    /// connection is closed, except an in-memory SQLite database's one connection.
    #[error(
        "statement overran the command timeout of {0:?}: stopped and its changes rolled back; \
         raise `command_timeout` or the statement's own timeout if it needs longer"
    )]
    Timeout(Duration),
    /// The connection's actor is gone (it broke before the statement reached it).
    #[error("the connection was lost before the statement ran")]
    ConnectionGone,
}

impl QueryError {
    /// The error's class.
    pub fn kind(&self) -> crate::sql::ErrorKind {
        use crate::sql::ErrorKind;
        match self {
            QueryError::Params(_) => ErrorKind::Configuration,
            QueryError::Database {
                connection_lost: true,
                ..
            }
            | QueryError::ConnectionGone => ErrorKind::Connection,
            QueryError::Database { error, .. } => match error {
                crate::sql::exec::ExecError::Database(_) => ErrorKind::Query,
                _ => ErrorKind::Configuration,
            },
            QueryError::Timeout(_) => ErrorKind::Timeout,
        }
    }

    /// Whether running the statement again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            QueryError::Database { transient, .. } => *transient,
            QueryError::ConnectionGone => true,
            QueryError::Params(_) | QueryError::Timeout(_) => false,
        }
    }
}

impl PoolError {
    /// The error's class.
    pub fn kind(&self) -> crate::sql::ErrorKind {
        use crate::sql::ErrorKind;
        match self {
            PoolError::Exhausted { .. } => ErrorKind::PoolExhausted,
            PoolError::Connect { .. } | PoolError::Closed { .. } | PoolError::Stopped { .. } => {
                ErrorKind::Connection
            }
            PoolError::Reclaimed { .. }
            | PoolError::Released { .. }
            | PoolError::Unknown { .. } => ErrorKind::Configuration,
            PoolError::Query(q) => q.kind(),
        }
    }
}

/// State shared by the pool handles, leases, actors and the supervisor.
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    state: Mutex<State>,
    /// Woken when a connection becomes idle, capacity frees up, or a connect fails.
    available: Notify,
    /// Woken when the supervisor has work: demand, a lost connection, a closed actor.
    wake_supervisor: Arc<Notify>,
    /// Woken when a statement is queued into an empty queue: the supervisor arms its expiry.
    queue_armed: Arc<Notify>,
    pub(crate) counters: Counters,
    /// Outstanding leases, for the reaper and the JSON API.
    leases: Mutex<HashMap<u64, Arc<LeaseCell>>>,
    /// Recently reclaimed lease ids (bounded), to tell "reclaimed" from "released".
    reclaimed_ids: Mutex<VecDeque<u64>>,
    next_lease: AtomicU64,
    next_connection: AtomicU64,
    next_job: AtomicU64,
    /// Statements from [`Pool::execute`] handed to an actor and not finished yet.
    running: Arc<AtomicUsize>,
    /// Health records of open connections.
    connections: Mutex<HashMap<u64, Arc<ConnHealth>>>,
    closed: AtomicBool,
    pub(crate) workloads: workload::Workloads,
    /// SQLite connects one at a time: concurrent opens of a new file race on the WAL switch.
    sqlite_connect: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Idle connections, most recently used first.
    idle: VecDeque<Slot>,
    /// Live actors (idle, leased, or being checked).
    open: usize,
    /// Connects in progress.
    opening: usize,
    /// Callers waiting in `acquire`.
    waiters: usize,
    /// Statements from [`Pool::execute`] waiting for a connection, oldest first.
    jobs: VecDeque<protocol::Job>,
    /// The last connection handed back went to a queued statement: the next goes to a waiting
    /// `acquire`, if there is one.
    last_to_job: bool,
    /// Connections open before this instant must be checked before use (one broke).
    suspect_since: Option<Instant>,
    /// The last failed connect, for callers waiting on a pool that cannot connect.
    last_connect_error: Option<(Instant, String)>,
    /// Connections the supervisor wants open (pre-warm), beyond `min_connections`.
    warm_target: usize,
}

const RECLAIMED_MEMORY: usize = 4096;

impl Pool {
    /// Creates the pool and starts its supervisor, which opens `min_connections` in the
    /// background. Use [`Pool::initialize`] to wait for them.
    pub fn new(config: PoolConfig) -> Pool {
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            available: Notify::new(),
            wake_supervisor: Arc::new(Notify::new()),
            queue_armed: Arc::new(Notify::new()),
            counters: Counters::new(),
            leases: Mutex::new(HashMap::new()),
            reclaimed_ids: Mutex::new(VecDeque::new()),
            next_lease: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            next_job: AtomicU64::new(1),
            running: Arc::new(AtomicUsize::new(0)),
            connections: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            workloads: workload::Workloads::default(),
            sqlite_connect: tokio::sync::Mutex::new(()),
        });
        supervisor::spawn(Arc::downgrade(&shared));
        Pool { shared }
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.shared.config
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// The database kind (and SQL dialect).
    pub fn kind(&self) -> DatabaseKind {
        self.shared.config.target.kind()
    }

    /// Whether the pool connects through a transaction-mode pooler (`pooler = "transaction"`).
    pub(crate) fn behind_pooler(&self) -> bool {
        self.shared.config.pooler == crate::config::database::Pooler::Transaction
    }

    /// Opens connections until `min_connections` are open; fails if the database cannot be
    /// reached within `acquire_timeout`.
    pub async fn initialize(&self) -> Result<(), PoolError> {
        let deadline = Instant::now() + self.shared.config.acquire_timeout;
        loop {
            let notified = self.shared.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.shared.lock_state();
                if state.open >= self.shared.config.min_connections {
                    return Ok(());
                }
                if let Some((_, cause)) = &state.last_connect_error
                    && state.open == 0
                    && state.opening == 0
                {
                    let cause = cause.clone();
                    state.last_connect_error = None;
                    return Err(self.shared.connect_error(cause));
                }
            }
            self.shared.wake_supervisor.notify_one();
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                let state = self.shared.lock_state();
                return Err(match &state.last_connect_error {
                    Some((_, cause)) => self.shared.connect_error(cause.clone()),
                    None => PoolError::Exhausted {
                        pool: self.shared.config.name.clone(),
                        size: self.shared.config.max_connections,
                        waited: self.shared.config.acquire_timeout,
                    },
                });
            }
        }
    }

    /// Leases a connection, waiting at most `acquire_timeout`.
    ///
    /// Cancellation-safe: dropping the future loses no connection and no wake-up.
    pub async fn acquire(&self) -> Result<Lease, PoolError> {
        self.acquire_inner(None).await
    }

    /// Like [`Pool::acquire`], recording the lease under `workload` for pre-warming: when a
    /// burst of that workload starts, the pool opens connections up to the 90th percentile of
    /// the workload's past peaks (capped at `max_connections`).
    pub async fn acquire_for(&self, workload: &str) -> Result<Lease, PoolError> {
        self.acquire_inner(Some(workload)).await
    }

    async fn acquire_inner(&self, workload: Option<&str>) -> Result<Lease, PoolError> {
        let shared = &self.shared;
        if let Some(workload) = workload
            && shared.config.pre_warm
        {
            let target = shared.workloads.begin(workload);
            if let Some(target) = target {
                shared.request_warm(target);
            }
        }
        let start = Instant::now();
        // Fast path: an idle connection that needs no check, without registering as a waiter.
        if !shared.closed.load(Ordering::Acquire)
            && let Some(slot) = take_unsuspected_idle(shared)
        {
            shared.counters.acquired(start.elapsed());
            return Ok(Lease::new(shared.clone(), slot, workload));
        }
        let result = self.wait_for_slot(start, workload).await;
        if result.is_err()
            && let Some(workload) = workload
        {
            shared.workloads.end(workload);
        }
        result
    }

    /// The slow path of `acquire`: waits (as a counted waiter) until an idle connection is free
    /// and answers a check if it is suspect, opening connections as waiters need them, until
    /// `acquire_timeout` after `start`.
    async fn wait_for_slot(
        &self,
        start: Instant,
        workload: Option<&str>,
    ) -> Result<Lease, PoolError> {
        let shared = &self.shared;
        let deadline = start + shared.config.acquire_timeout;
        let mut waiting = WaiterGuard {
            shared,
            counted: false,
        };
        loop {
            if shared.closed.load(Ordering::Acquire) {
                return Err(PoolError::Closed {
                    pool: shared.config.name.clone(),
                });
            }
            let notified = shared.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (slot, verify) = take_idle_or_open(shared, start, &mut waiting)?;
            if let Some(slot) = slot {
                if verify && !ping(&slot).await {
                    // It broke while idle: its actor is ending; try the next one.
                    drop(slot);
                    continue;
                }
                shared.counters.acquired(start.elapsed());
                return Ok(Lease::new(shared.clone(), slot, workload));
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Exhausted {
                    pool: shared.config.name.clone(),
                    size: shared.config.max_connections,
                    waited: start.elapsed(),
                });
            }
        }
    }

    /// Opens connections for `workload` up to the 90th percentile of its past peak concurrent
    /// use (capped at `max_connections`); returns that target.
    pub fn pre_warm(&self, workload: &str) -> usize {
        let target = self.shared.workloads.target(workload).unwrap_or(0);
        self.shared.request_warm(target);
        target
    }

    /// The pool's figures now.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// The state behind the pool (for the JSON API's lease lookups).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Closes the pool: new acquires fail, idle connections close now, leased ones when
    /// released.
    pub async fn close(&self) {
        let shared = &self.shared;
        shared.closed.store(true, Ordering::Release);
        let (idle, jobs): (Vec<Slot>, Vec<protocol::Job>) = {
            let mut state = shared.lock_state();
            (
                state.idle.drain(..).collect(),
                state.jobs.drain(..).collect(),
            )
        };
        drop(jobs); // their callers are told the pool closed
        for _ in &idle {
            shared.counters.closed(CloseReason::Shutdown);
        }
        drop(idle); // their actors close the connections
        shared.available.notify_waiters();
        shared.wake_supervisor.notify_one();
        // Wait (bounded) until only leased connections remain open.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let notified = shared.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open = shared.lock_state().open;
            let leased = shared.leases.lock().map(|l| l.len()).unwrap_or(0)
                + shared.running.load(Ordering::Relaxed);
            if open <= leased || tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
    }
}

/// Decrements the waiter count however `acquire` ends (also when its future is dropped).
struct WaiterGuard<'a> {
    shared: &'a Arc<Shared>,
    counted: bool,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if self.counted {
            self.shared.lock_state().waiters -= 1;
            // Idle connections kept for waiting acquires may now serve queued statements.
            self.shared.pump();
        }
    }
}

/// An idle connection that needs no check (proven good since one broke), or `None`, leaving the
/// idle list as it was.
fn take_unsuspected_idle(shared: &Shared) -> Option<Slot> {
    let mut state = shared.lock_state();
    match state.take_idle() {
        Some(slot)
            if state
                .suspect_since
                .is_none_or(|since| slot.last_ok() >= since) =>
        {
            Some(slot)
        }
        Some(slot) => {
            state.idle.push_front(slot);
            None
        }
        None => None,
    }
}

/// Under the lock: an idle connection and whether it must be checked first; or, with none
/// idle, opens one in the background if the waiters need it and counts this acquire as a
/// waiter. Fails when connecting has failed since `start` and no connection is open.
fn take_idle_or_open(
    shared: &Arc<Shared>,
    start: Instant,
    waiting: &mut WaiterGuard<'_>,
) -> Result<(Option<Slot>, bool), PoolError> {
    let mut state = shared.lock_state();
    match state.take_idle() {
        Some(slot) => {
            let verify = state
                .suspect_since
                .is_some_and(|since| slot.last_ok() < since);
            Ok((Some(slot), verify))
        }
        None => {
            if let Some((at, cause)) = &state.last_connect_error
                && *at >= start
                && state.open == 0
                && state.opening == 0
            {
                return Err(shared.connect_error(cause.clone()));
            }
            if state.open + state.opening < shared.config.max_connections
                && state.opening < state.waiters + 1
            {
                state.opening += 1;
                supervisor::open_in_background(shared.clone());
            }
            if !waiting.counted {
                state.waiters += 1;
                waiting.counted = true;
            }
            Ok((None, false))
        }
    }
}

/// Asks the actor behind `slot` for a round trip.
async fn ping(slot: &Slot) -> bool {
    let (reply, answer) = oneshot::channel();
    if slot.tx.send(protocol::Command::Ping { reply }).is_err() {
        return false;
    }
    answer.await.unwrap_or(false)
}

impl State {
    fn take_idle(&mut self) -> Option<Slot> {
        while let Some(slot) = self.idle.pop_front() {
            if slot.health.is_alive() {
                return Some(slot);
            }
        }
        None
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave it inconsistent in a way that matters
        // more than stopping the pool would; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connect_error(&self, cause: String) -> PoolError {
        PoolError::Connect {
            pool: self.config.name.clone(),
            target: self.config.target.to_string(),
            cause,
        }
    }

    /// Closes the connection behind `slot` instead of reusing it (its actor closes it once the
    /// last handle is gone); the supervisor opens a replacement if the pool needs one.
    pub(crate) fn retire(&self, slot: Slot, reason: CloseReason) {
        self.counters.closed(reason);
        drop(slot);
        self.wake_supervisor.notify_one();
    }

    /// Takes a slot back from a lease or a reset: idle again, or closed if it is too old,
    /// unhealthy, dead, or the pool is closing.
    pub(crate) fn checkin(&self, slot: Slot) {
        if let Some((slot, job)) = self.checkin_or_next(slot, Instant::now()) {
            self.dispatch(slot, job);
        }
    }

    /// Like [`Shared::checkin`], but when a queued statement should run on the slot, returns
    /// the pair instead of sending it to the slot's actor (the actor checking its own slot in
    /// runs it straight away). `now` is the time of the check-in (the caller has read the clock).
    pub(crate) fn checkin_or_next(
        &self,
        mut slot: Slot,
        now: Instant,
    ) -> Option<(Slot, protocol::Job)> {
        if !slot.health.is_alive() {
            return None;
        }
        let reason = if self.closed.load(Ordering::Acquire) {
            Some(CloseReason::Shutdown)
        } else {
            slot.worn_out(now, self.config.health_threshold)
        };
        if let Some(reason) = reason {
            self.retire(slot, reason);
            return None;
        }
        slot.idle_since = now;
        let mut state = self.lock_state();
        let proven = state
            .suspect_since
            .is_none_or(|since| slot.last_ok() >= since);
        if proven
            && (state.waiters == 0 || !state.last_to_job)
            && let Some(job) = state.jobs.pop_front()
        {
            state.last_to_job = true;
            return Some((slot, job));
        }
        state.last_to_job = false;
        state.idle.push_front(slot);
        // An unproven connection serves no queued statement until the supervisor checks it.
        let check_now = !proven && !state.jobs.is_empty();
        drop(state);
        if check_now {
            self.wake_supervisor.notify_one();
        }
        self.available.notify_one();
        None
    }

    /// An actor ended: one connection fewer.
    pub(crate) fn actor_ended(self: &Arc<Self>, connection: u64, reason: Option<CloseReason>) {
        if let Some(reason) = reason {
            self.counters.closed(reason);
        }
        self.forget_connection(connection);
        let replace = {
            let mut state = self.lock_state();
            state.open = state.open.saturating_sub(1);
            // Queued statements have no caller of their own to open a replacement.
            let replace = !self.closed.load(Ordering::Acquire)
                && state.jobs.len() > state.opening
                && state.open + state.opening < self.config.max_connections;
            if replace {
                state.opening += 1;
            }
            replace
        };
        if replace {
            supervisor::open_in_background(self.clone());
        }
        // Capacity freed: a waiter may now open a new connection.
        self.available.notify_one();
        self.wake_supervisor.notify_one();
    }

    /// A connection broke: connections idle since before now are checked before use.
    pub(crate) fn connection_lost(&self) {
        self.lock_state().suspect_since = Some(Instant::now());
        self.wake_supervisor.notify_one();
    }

    pub(crate) fn request_warm(&self, target: usize) {
        let target = target.min(self.config.max_connections);
        let mut state = self.lock_state();
        // The pool has (or is opening) that many already: nothing for the supervisor to do, and
        // no wake-up (a burst of a known workload starts on almost every statement).
        if target <= state.open + state.opening {
            return;
        }
        if target > state.warm_target {
            state.warm_target = target;
        }
        drop(state);
        self.wake_supervisor.notify_one();
    }

    /// Opens one connection and starts its actor; on success the slot goes idle.
    /// The caller has already counted it in `opening`.
    async fn open_one(self: &Arc<Self>) {
        let serialize = self.config.target.kind() == DatabaseKind::Sqlite;
        let guard = if serialize {
            Some(self.sqlite_connect.lock().await)
        } else {
            None
        };
        let connect = DriverConnection::connect(
            &self.config.target,
            &self.config.name,
            self.config.search_path.as_deref(),
            self.config.pooler,
            self.config.connect_timeout,
        )
        .await;
        drop(guard);
        match connect {
            Ok(conn) => {
                let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
                let health = Arc::new(ConnHealth::new(id));
                let (tx, rx) = mpsc::unbounded_channel();
                let slot = Slot {
                    tx,
                    health: health.clone(),
                    retire_at: Instant::now() + self.config.jittered_lifetime(),
                    idle_since: Instant::now(),
                    proven_at: health.created,
                    session_dirty: false,
                    keeps_state: false,
                    replaceable: !self.config.in_memory(),
                };
                if let Ok(mut conns) = self.connections.lock() {
                    conns.insert(id, health.clone());
                }
                {
                    let mut state = self.lock_state();
                    state.opening -= 1;
                    state.open += 1;
                    state.last_connect_error = None;
                }
                self.counters.created.fetch_add(1, Ordering::Relaxed);
                actor::spawn(
                    conn,
                    health,
                    Arc::downgrade(self),
                    rx,
                    self.config.command_timeout,
                );
                tracing::debug!(pool = %self.config.name, connection = id, "connection opened");
                self.checkin(slot);
            }
            Err(error) => {
                let cause = error.to_string();
                tracing::warn!(pool = %self.config.name, target = %self.config.target, %cause, "cannot open a connection");
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                let failed: Vec<protocol::Job> = {
                    let mut state = self.lock_state();
                    state.opening -= 1;
                    state.last_connect_error = Some((Instant::now(), cause.clone()));
                    if state.open == 0 && state.opening == 0 {
                        state.jobs.drain(..).collect()
                    } else {
                        Vec::new()
                    }
                };
                Self::fail_queued(failed, &cause);
                self.available.notify_waiters();
            }
        }
    }

    fn forget_connection(&self, id: u64) {
        if let Ok(mut conns) = self.connections.lock() {
            conns.remove(&id);
        }
    }

    fn register_lease(&self, cell: Arc<LeaseCell>) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.insert(cell.id, cell);
        }
    }

    fn unregister_lease(&self, id: u64) {
        if let Ok(mut leases) = self.leases.lock() {
            leases.remove(&id);
        }
    }

    fn remember_reclaimed(&self, id: u64) {
        if let Ok(mut ids) = self.reclaimed_ids.lock() {
            if ids.len() == RECLAIMED_MEMORY {
                ids.pop_front();
            }
            ids.push_back(id);
        }
    }

    pub(crate) fn was_reclaimed(&self, id: u64) -> bool {
        self.reclaimed_ids.lock().is_ok_and(|ids| ids.contains(&id))
    }

    pub(crate) fn lease_issued(&self, id: u64) -> bool {
        id > 0 && id < self.next_lease.load(Ordering::Relaxed)
    }

    fn stats(&self) -> PoolStats {
        let (idle, open, opening, waiters) = {
            let state = self.lock_state();
            (
                state.idle.len(),
                state.open,
                state.opening,
                state.waiters + state.jobs.len(),
            )
        };
        let leased = self.leases.lock().map(|l| l.len()).unwrap_or(0);
        let active = leased + self.running.load(Ordering::Relaxed);
        let queries = self.counters.queries.load(Ordering::Relaxed);
        let errors = self.counters.query_errors.load(Ordering::Relaxed);
        let mut health: Vec<stats::ConnectionHealth> = self
            .connections
            .lock()
            .map(|conns| {
                conns
                    .values()
                    .filter(|h| h.is_alive())
                    .map(|h| {
                        let checks = h.checks.load(Ordering::Relaxed);
                        let passed = h.checks_passed.load(Ordering::Relaxed);
                        stats::ConnectionHealth {
                            connection_id: h.id,
                            score: h.score(),
                            checks,
                            check_success_rate: if checks == 0 {
                                1.0
                            } else {
                                passed as f64 / checks as f64
                            },
                            queries: h.queries.load(Ordering::Relaxed),
                            age_s: h.created.elapsed().as_secs_f64(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        health.sort_by_key(|h| h.connection_id);
        PoolStats {
            pool: self.config.name.clone(),
            database_type: self.config.target.kind().as_str(),
            target: self.config.target.to_string(),
            connections: stats::ConnectionStats {
                created: self.counters.created.load(Ordering::Relaxed),
                recycled: self.counters.recycled.load(Ordering::Relaxed),
                failed: self.counters.failed.load(Ordering::Relaxed),
                active,
                idle,
                total: open,
                opening,
                closed: self
                    .counters
                    .closed_snapshot()
                    .into_iter()
                    .map(|(r, n)| (r.as_str(), n))
                    .collect(),
            },
            queries: stats::QueryStats {
                executed: queries,
                errors,
                error_rate: if queries == 0 {
                    0.0
                } else {
                    errors as f64 / queries as f64
                },
            },
            acquisition: self.counters.acquisition_snapshot(waiters),
            leases: stats::LeaseStats {
                active: leased,
                reclaimed: self.counters.reclaimed.load(Ordering::Relaxed),
            },
            health,
        }
    }
}
