//! The connection actor: a task that owns one driver connection and serves commands from a
//! channel, one at a time, to completion.
//!
//! A caller that gives up on a running statement (a dropped future: a node timeout, a request
//! that ended) is noticed at once, and the statement is stopped on the server through the same
//! path as one that overran `command_timeout`: nothing the caller no longer waits for keeps a
//! connection or a server backend busy. The actor ends when its last
//! [`Slot`](super::protocol::Slot) handle is dropped, when the connection breaks, or when a
//! statement overran its limit or was abandoned; its guard then tells the pool, so the
//! supervisor can replace it.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::health::ConnHealth;
use super::protocol::Slot;
use super::protocol::{Command, Job, RunError, Running};
use super::stats::CloseReason;
use crate::sql::driver::{Canceller, DriverConnection};
use crate::sql::exec::{ExecError, Fetch, Output};
use crate::sql::params::Statement;

/// How long a health check may take.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the actor for `conn`.
pub(crate) fn spawn(
    conn: DriverConnection,
    health: Arc<ConnHealth>,
    shared: Weak<Shared>,
    rx: mpsc::UnboundedReceiver<Command>,
    command_timeout: Option<Duration>,
) {
    let ctx = Ctx { health, shared };
    tokio::spawn(run(conn, ctx, rx, command_timeout));
}

/// What the actor's statements need besides the connection.
struct Ctx {
    health: Arc<ConnHealth>,
    shared: Weak<Shared>,
}

/// Tells the pool the actor is gone, however it ended (also on panic).
struct ActorGuard {
    shared: Weak<Shared>,
    health: Arc<ConnHealth>,
    reason: Option<CloseReason>,
}

impl Drop for ActorGuard {
    fn drop(&mut self) {
        self.health.mark_dead();
        if let Some(shared) = self.shared.upgrade() {
            shared.actor_ended(self.health.id, self.reason);
        }
    }
}

/// Serves `rx`'s commands on `conn` until the last handle is gone or the connection must end.
async fn run(
    mut conn: DriverConnection,
    ctx: Ctx,
    mut rx: mpsc::UnboundedReceiver<Command>,
    command_timeout: Option<Duration>,
) {
    let (health, shared) = (&ctx.health, &ctx.shared);
    let mut guard = ActorGuard {
        shared: shared.clone(),
        health: health.clone(),
        // A panic below leaves this set: the supervisor then counts the actor as died.
        reason: Some(CloseReason::Died),
    };
    let mut healthy = true;
    let mut deadline = Deadline::default();
    while let Some(command) = rx.recv().await {
        match command {
            Command::Run {
                stmt,
                fetch,
                timeout,
                mut reply,
            } => {
                let (result, stop, ended) = execute(
                    &mut conn,
                    &ctx,
                    &mut deadline,
                    &stmt,
                    fetch,
                    timeout.or(command_timeout),
                    Instant::now(),
                    &mut reply,
                )
                .await;
                if result.is_ok() {
                    // The lease holds the slot: the proof goes to the record they share.
                    health.proved_ok(ended);
                }
                let _ = reply.send(result);
                if let Some(reason) = stop {
                    guard.reason = Some(reason);
                    healthy = false;
                    break;
                }
            }
            Command::Job { job, slot, running } => {
                if let Some(reason) = run_jobs(
                    &mut conn,
                    &ctx,
                    &mut deadline,
                    (job, slot, running),
                    command_timeout,
                )
                .await
                {
                    guard.reason = Some(reason);
                    healthy = false;
                    break;
                }
            }
            Command::Ping { reply } => {
                let ok = matches!(
                    tokio::time::timeout(PING_TIMEOUT, conn.ping()).await,
                    Ok(Ok(()))
                );
                health.check_done(ok);
                let _ = reply.send(ok);
                if !ok {
                    guard.reason = Some(CloseReason::Broken);
                    healthy = false;
                    break;
                }
            }
            Command::Reset { slot } => {
                if !reset_and_checkin(&mut conn, shared, slot).await {
                    guard.reason = Some(CloseReason::Broken);
                    healthy = false;
                    break;
                }
            }
        }
    }
    if healthy {
        // Every handle is gone: the pool closed this connection on purpose and counted why.
        guard.reason = None;
        conn.close().await;
    }
}

/// Runs a job, then the queued statements this connection takes on check-in, without going
/// back through the channel. Returns why the actor must end, if it must.
async fn run_jobs(
    conn: &mut DriverConnection,
    ctx: &Ctx,
    deadline: &mut Deadline,
    first: (Job, Slot, Running),
    command_timeout: Option<Duration>,
) -> Option<CloseReason> {
    let shared = &ctx.shared;
    // The next statement is taken into these same variables, so a job and its slot are moved
    // once per hand-over (each further move is a `memcpy` of both, per statement).
    let (mut job, mut slot, mut running) = first;
    // One clock reading per statement: when it ended is when the next one starts.
    let mut started = Instant::now();
    loop {
        let (result, stop, ended_at) = execute(
            conn,
            ctx,
            deadline,
            &job.stmt,
            job.fetch,
            job.timeout.or(command_timeout),
            started,
            &mut job.reply,
        )
        .await;
        started = ended_at;
        if result.is_ok() {
            slot.proven_at = ended_at;
        }
        drop(running);
        let _ = job.reply.send(result);
        if let Some(reason) = stop {
            drop(slot);
            return Some(reason);
        }
        slot.record(&job.stmt);
        if slot.keeps_state {
            if let Some(shared) = shared.upgrade() {
                shared.retire(slot, CloseReason::Session);
            }
            return None;
        }
        if slot.session_dirty {
            let checked_in = reset_and_checkin(conn, shared, slot).await;
            return (!checked_in).then_some(CloseReason::Broken);
        }
        let Some(shared) = shared.upgrade() else {
            return Some(CloseReason::Broken);
        };
        let (next_slot, next_job) = shared.checkin_or_next(slot, started)?;
        running = shared.start(&next_job, started);
        slot = next_slot;
        job = next_job;
    }
}

/// The actor's one timer for its statements' time limits.
///
/// Setting a timer is a trip through tokio's timer wheel, as is taking it out again, and most
/// statements end long before their limit. So the timer is moved only when the running
/// statement's limit comes before it; when it fires first (it was set for an earlier
/// statement), it is moved on to the running statement's limit then.
#[derive(Default)]
struct Deadline {
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    /// Makes the timer fire at `due` or before it.
    fn arm(&mut self, due: Instant) {
        let due = tokio::time::Instant::from_std(due);
        match &mut self.timer {
            Some(timer) if timer.deadline() <= due && !timer.is_elapsed() => {}
            Some(timer) => timer.as_mut().reset(due),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(due))),
        }
    }

    /// Ready once `due` (which [`Deadline::arm`] was given) has passed.
    fn poll_due(&mut self, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        while timer.as_mut().poll(cx).is_ready() {
            let due = tokio::time::Instant::from_std(due);
            if tokio::time::Instant::now() >= due {
                return Poll::Ready(());
            }
            // Set for an earlier statement: on to this one's limit.
            timer.as_mut().reset(due);
        }
        Poll::Pending
    }
}

/// Runs one statement, which started at `started`, under its time limit and for as long as its
/// caller waits on `reply`. Returns the reply, why the actor must end when the connection cannot
/// be used any more, and when it ended.
#[allow(clippy::too_many_arguments)] // one call site's worth of state, in the order it is used
async fn execute(
    conn: &mut DriverConnection,
    ctx: &Ctx,
    deadline: &mut Deadline,
    stmt: &Statement,
    fetch: Fetch,
    limit: Option<Duration>,
    started: Instant,
    reply: &mut oneshot::Sender<Result<Output, RunError>>,
) -> (Result<Output, RunError>, Option<CloseReason>, Instant) {
    /// Why a statement is stopped before its end.
    enum Stop {
        Limit(Duration),
        Abandoned,
    }
    if reply.is_closed() {
        // Given up on before it started (a queued statement handed over as its caller left).
        return (Err(RunError::Timeout(Duration::ZERO)), None, Instant::now());
    }
    // A limit past the end of time is none.
    let due = limit.and_then(|limit| Some((started.checked_add(limit)?, limit)));
    if let Some((due, _)) = due {
        deadline.arm(due);
    }
    let outcome = {
        let mut running = pin!(conn.run(stmt, fetch, limit));
        // In this order: a statement that has its answer is answered, even at its limit.
        poll_fn(|cx| {
            if let Poll::Ready(result) = running.as_mut().poll(cx) {
                return Poll::Ready(Ok(result));
            }
            if let Some((due, limit)) = due
                && deadline.poll_due(due, cx).is_ready()
            {
                return Poll::Ready(Err(Stop::Limit(limit)));
            }
            if reply.poll_closed(cx).is_ready() {
                return Poll::Ready(Err(Stop::Abandoned));
            }
            Poll::Pending
        })
        .await
    };
    let result = match outcome {
        // The server stopped it at the limit (behind a transaction-mode pooler): the connection
        // is sound, its transaction rolled back.
        Ok(Err(ExecError::ServerTimeout)) => {
            let now = Instant::now();
            ctx.health.query_done(false);
            return (Err(RunError::Timeout(limit.unwrap_or_default())), None, now);
        }
        Ok(result) => result,
        Err(why) => {
            // The statement is stopped, so that one its caller was told failed (or no longer
            // waits for) does not go on and commit, nor hold a backend: SQLite's from here (the
            // driver runs it on a thread of its own), a server's from a connection of its own.
            // The protocol state is unknown after an abandoned statement, so the connection
            // closes. Not an in-memory SQLite database's: closing it would lose the data, and
            // its driver ends the interrupted statement before it runs the next one.
            conn.interrupt();
            let now = Instant::now();
            ctx.health.query_done(false);
            let shared = ctx.shared.upgrade();
            let (error, reason) = match why {
                Stop::Limit(limit) => (RunError::Timeout(limit), CloseReason::Timeout),
                Stop::Abandoned => (
                    RunError::Timeout(now.saturating_duration_since(started)),
                    CloseReason::Abandoned,
                ),
            };
            let stop = match &shared {
                Some(shared) if shared.config.in_memory() => None,
                _ => Some(reason),
            };
            if stop.is_some()
                && let Some(canceller) = conn.canceller()
                && let Some(shared) = &shared
            {
                cancel_in_background(shared, canceller);
            }
            return (Err(error), stop, now);
        }
    };
    let now = Instant::now();
    match result {
        Ok(output) => {
            ctx.health.query_done(true);
            (Ok(output), None, now)
        }
        Err(error) => {
            ctx.health.query_done(false);
            let broken = is_connection_error(&error);
            if broken && let Some(shared) = ctx.shared.upgrade() {
                shared.connection_lost();
            }
            (
                Err(RunError::Exec { error, broken }),
                broken.then_some(CloseReason::Broken),
                now,
            )
        }
    }
}

/// Stops the statement `canceller` points at on the server, from a connection of its own.
fn cancel_in_background(shared: &Shared, canceller: Canceller) {
    let target = shared.config.target.clone();
    let pool = shared.config.name.clone();
    let timeout = shared.config.connect_timeout;
    tokio::spawn(async move {
        if let Err(error) = canceller.cancel(&target, &pool, timeout).await {
            tracing::warn!(
                pool,
                %error,
                "could not stop a statement that overran its time limit on the server"
            );
        }
    });
}

/// Undoes any transaction or session state, then hands the slot back to the pool. `false` when
/// the rollback failed (the slot is dropped: the connection must close) or the pool is gone.
async fn reset_and_checkin(
    conn: &mut DriverConnection,
    shared: &Weak<Shared>,
    mut slot: Slot,
) -> bool {
    let reset = tokio::time::timeout(PING_TIMEOUT, conn.reset()).await;
    if matches!(reset, Ok(Ok(()))) {
        slot.session_dirty = false;
        match shared.upgrade() {
            Some(shared) => {
                shared.checkin(slot);
                true
            }
            None => false,
        }
    } else {
        tracing::warn!(
            connection = slot.id(),
            "rollback on release failed; closing the connection"
        );
        false
    }
}

/// Errors after which the connection cannot be trusted: I/O, protocol, TLS, a closed socket,
/// and the server's connection-exception and shutdown codes.
pub(crate) fn is_connection_error(error: &ExecError) -> bool {
    match error {
        ExecError::Database(e) => e.is_connection_error(),
        ExecError::Bind { .. }
        | ExecError::Unmapped { .. }
        | ExecError::SessionState
        | ExecError::ServerTimeout => false,
    }
}
