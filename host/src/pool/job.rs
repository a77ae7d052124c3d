//! Statements run on whichever connection frees up first, without a lease: [`Pool::execute`].
//!
//! A statement that finds no idle connection waits in the pool's queue. When an actor finishes
//! a statement it hands its connection straight to the oldest queued one and runs it without
//! going back through the pool's idle set or waking the caller first, so a saturated pool keeps
//! every connection busy; the caller is woken once, with the answer. Lease waiters are served in
//! turn with queued statements, so neither starves the other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::lease::query_error;
use super::protocol::Slot;
use super::protocol::{Command, Job, RunError, Running};
use super::{Pool, PoolError, QueryError, Shared, State, supervisor};
use crate::sql::exec::{Fetch, Output};
use crate::sql::params::{self, Params, Statement};

impl Pool {
    /// Translates `sql` with `params` for the pool's dialect and runs it on the first free
    /// connection, which goes back to the pool as soon as the statement is done (rolled back
    /// first if the statement may have opened a transaction or changed a session setting).
    ///
    /// Waits at most `acquire_timeout` for a connection ([`PoolError::Exhausted`]); the
    /// statement then runs under `command_timeout`. Use a `Lease` for several
    /// statements on one connection (a transaction).
    ///
    /// Cancellation-safe: dropping the future before a connection is found withdraws the
    /// statement; after that the actor still finishes it.
    pub async fn execute(
        &self,
        sql: &str,
        params: &Params,
        fetch: Fetch,
    ) -> Result<Output, PoolError> {
        let stmt = params::prepare(sql, params, self.shared.config.target.kind())
            .map_err(QueryError::from)?;
        // Straight to `run_for`: each `async fn` layer between the caller and the queue moves
        // the statement once more.
        self.run_for(None, stmt, fetch, None).await
    }

    /// Runs an already translated statement like [`Pool::execute`], with a time limit for this
    /// statement instead of the pool's `command_timeout` when `timeout` is set.
    pub async fn run(
        &self,
        stmt: Statement,
        fetch: Fetch,
        timeout: Option<Duration>,
    ) -> Result<Output, PoolError> {
        self.run_for(None, stmt, fetch, timeout).await
    }

    /// [`Pool::run`], counted under `workload` for pre-warming (as
    /// [`Pool::acquire_for`](super::Pool::acquire_for) counts a lease): when a burst of it starts,
    /// the pool opens connections up to the 90th percentile of its past peaks. A served workflow's
    /// statements are its workload.
    pub async fn run_for(
        &self,
        workload: Option<&str>,
        stmt: Statement,
        fetch: Fetch,
        timeout: Option<Duration>,
    ) -> Result<Output, PoolError> {
        let shared = &self.shared;
        let _burst = match workload {
            Some(name) if shared.config.pre_warm => {
                if let Some(target) = shared.workloads.begin(name) {
                    shared.request_warm(target);
                }
                Some(InWorkload { shared, name })
            }
            _ => None,
        };
        let start = Instant::now();
        if shared.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed {
                pool: shared.config.name.clone(),
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id: shared.next_job.fetch_add(1, Ordering::Relaxed),
            stmt,
            fetch,
            timeout,
            reply,
            queued_at: start,
        };
        let id = job.id;
        let (ready, queued) = {
            let mut state = shared.lock_state();
            // Checked again under the lock: `close` drains the queue under it after setting
            // the flag, so a statement queued now would never be answered.
            if shared.closed.load(Ordering::Acquire) {
                return Err(PoolError::Closed {
                    pool: shared.config.name.clone(),
                });
            }
            // The fast path only when nobody waits: not the queue, not a lease caller (who was
            // woken for the idle connection this would take).
            let free = state.jobs.is_empty() && state.waiters == 0;
            match free.then(|| state.take_proven()).flatten() {
                Some(slot) => (vec![(slot, job)], false),
                None => {
                    if state.jobs.is_empty() {
                        // The supervisor fails queued statements at their deadline.
                        shared.queue_armed.notify_one();
                    }
                    state.jobs.push_back(job);
                    let demand = state.waiters + state.jobs.len();
                    if state.open + state.opening < shared.config.max_connections
                        && state.opening < demand
                    {
                        state.opening += 1;
                        supervisor::open_in_background(shared.clone());
                    }
                    (state.pump(), true)
                }
            }
        };
        shared.counters.queries.fetch_add(1, Ordering::Relaxed);
        let mut queued = queued;
        for (slot, job) in ready {
            // An actor that ended just now sends the job back to the queue.
            queued |= !shared.dispatch(slot, job);
        }
        let mut guard = Queued { shared, id, queued };
        // A queued statement is answered by a connection, or failed by the supervisor once it
        // has waited `acquire_timeout` (one timer per pool, not one per statement).
        let answer = answer.await;
        guard.queued = false;
        let error = match answer {
            Ok(Ok(output)) => return Ok(output),
            Ok(Err(RunError::Expired)) => {
                shared.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                PoolError::Exhausted {
                    pool: shared.config.name.clone(),
                    size: shared.config.max_connections,
                    waited: start.elapsed(),
                }
            }
            Ok(Err(RunError::Unavailable(cause))) => shared.connect_error(cause),
            Ok(Err(error)) => query_error(error).into(),
            Err(_) if shared.closed.load(Ordering::Acquire) => PoolError::Closed {
                pool: shared.config.name.clone(),
            },
            Err(_) => QueryError::ConnectionGone.into(),
        };
        shared.counters.query_errors.fetch_add(1, Ordering::Relaxed);
        Err(error)
    }
}

/// One statement of a workload, counted until it ends (however it ends).
struct InWorkload<'a> {
    shared: &'a Arc<Shared>,
    name: &'a str,
}

impl Drop for InWorkload<'_> {
    fn drop(&mut self) {
        self.shared.workloads.end(self.name);
    }
}

/// Withdraws a queued statement when its caller stops waiting (the future is dropped), so it
/// never runs.
struct Queued<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    queued: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.queued {
            let mut state = self.shared.lock_state();
            // Not found: a connection took it already, and runs it to the end.
            if let Some(at) = state.jobs.iter().position(|j| j.id == self.id) {
                state.jobs.remove(at);
            }
        }
    }
}

impl State {
    /// An idle connection that needs no check first (none broke since it last proved itself).
    pub(super) fn take_proven(&mut self) -> Option<Slot> {
        if self.idle.is_empty() {
            // A busy pool's usual case: nothing to sweep or search.
            return None;
        }
        self.idle.retain(|slot| slot.health.is_alive());
        let suspect = self.suspect_since;
        let at = self
            .idle
            .iter()
            .position(|slot| suspect.is_none_or(|since| slot.last_ok() >= since))?;
        self.idle.remove(at)
    }

    /// Pairs idle connections with queued statements while no lease caller is waiting (those
    /// are woken for idle connections instead). The caller dispatches the pairs after unlocking.
    pub(super) fn pump(&mut self) -> Vec<(Slot, Job)> {
        let mut ready = Vec::new();
        while self.waiters == 0 && !self.jobs.is_empty() {
            let Some(slot) = self.take_proven() else {
                break;
            };
            if let Some(job) = self.jobs.pop_front() {
                ready.push((slot, job));
            }
        }
        ready
    }
}

impl Shared {
    /// Sends `job` to the actor behind `slot`, which hands the slot back when done. If the actor
    /// is gone the job goes back to the front of the queue (and `false` is returned).
    pub(crate) fn dispatch(&self, slot: Slot, job: Job) -> bool {
        let waited = job.queued_at.elapsed();
        let running = self.running();
        let tx = slot.tx.clone();
        if let Err(returned) = tx.send(Command::Job { job, slot, running }) {
            if let Command::Job { job, .. } = returned.0 {
                let mut state = self.lock_state();
                // Once closed, nothing serves the queue: dropping the job tells its caller.
                if !self.closed.load(Ordering::Acquire) {
                    state.jobs.push_front(job);
                }
            }
            self.wake_supervisor.notify_one();
            return false;
        }
        self.counters.acquired(waited);
        true
    }

    /// Counts `job` as acquired (at `now`) and running.
    pub(crate) fn start(&self, job: &Job, now: Instant) -> Running {
        self.counters
            .acquired(now.saturating_duration_since(job.queued_at));
        self.running()
    }

    /// A token counting one more statement as running.
    fn running(&self) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(self.running.clone())
    }

    /// Dispatches queued statements to idle connections, if any can be paired.
    pub(crate) fn pump(&self) {
        let ready = self.lock_state().pump();
        for (slot, job) in ready {
            self.dispatch(slot, job);
        }
    }

    /// Fails the queued statements that have waited `acquire_timeout`; returns when the next
    /// one will have (the queue is in arrival order, and every statement waits as long).
    pub(crate) fn expire_queued(&self, now: Instant) -> Option<Instant> {
        let timeout = self.config.acquire_timeout;
        let mut expired = Vec::new();
        let next = {
            let mut state = self.lock_state();
            while state
                .jobs
                .front()
                .is_some_and(|job| now.saturating_duration_since(job.queued_at) >= timeout)
            {
                expired.extend(state.jobs.pop_front());
            }
            state.jobs.front().map(|job| job.queued_at + timeout)
        };
        for job in expired {
            let _ = job.reply.send(Err(RunError::Expired));
        }
        next
    }

    /// No connection can be opened: `jobs` (taken from the queue in the same critical section
    /// that saw no connection open or opening) fail with `cause` instead of waiting.
    pub(crate) fn fail_queued(jobs: Vec<Job>, cause: &str) {
        for job in jobs {
            let _ = job.reply.send(Err(RunError::Unavailable(cause.to_owned())));
        }
    }
}
