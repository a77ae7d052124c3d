//! The health record a connection's actor and the pool share: its score, its id, and whether
//! it is in use.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Health score bounds and steps (the Kailash WorkflowConnectionPool's).
pub(crate) const HEALTH_START: i64 = 100;
const HEALTH_QUERY_FAILED: i64 = -10;
const HEALTH_CHECK_PASSED: i64 = 5;
const HEALTH_CHECK_FAILED: i64 = -20;

/// What the pool and the actor both know about one connection.
#[derive(Debug)]
pub(crate) struct ConnHealth {
    pub(crate) id: u64,
    pub(crate) created: Instant,
    score: AtomicI64,
    alive: AtomicBool,
    pub(crate) checks: AtomicU64,
    pub(crate) checks_passed: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) query_errors: AtomicU64,
    /// When the connection last proved itself (a health check, or a statement on a lease), as
    /// nanos since `created`. A queued statement's proof is kept in its [`Slot`] instead
    /// (`proven_at`), which the actor holds while it runs: no clock arithmetic per statement.
    ///
    /// [`Slot`]: super::protocol::Slot
    last_ok: AtomicU64,
}

impl ConnHealth {
    pub(crate) fn new(id: u64) -> ConnHealth {
        ConnHealth {
            id,
            created: Instant::now(),
            score: AtomicI64::new(HEALTH_START),
            alive: AtomicBool::new(true),
            checks: AtomicU64::new(0),
            checks_passed: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            query_errors: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
        }
    }

    pub(crate) fn score(&self) -> i64 {
        self.score.load(Ordering::Relaxed)
    }

    fn adjust(&self, delta: i64) {
        let _ = self
            .score
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s + delta).clamp(0, 100))
            });
    }

    /// A statement ended; one that succeeded proves the connection where its caller records it
    /// (`proved_ok`, or the slot's `proven_at`).
    pub(crate) fn query_done(&self, ok: bool) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.query_errors.fetch_add(1, Ordering::Relaxed);
            self.adjust(HEALTH_QUERY_FAILED);
        }
    }

    pub(crate) fn check_done(&self, ok: bool) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.checks_passed.fetch_add(1, Ordering::Relaxed);
            self.adjust(HEALTH_CHECK_PASSED);
            self.proved_ok(Instant::now());
        } else {
            self.adjust(HEALTH_CHECK_FAILED);
        }
    }

    /// The connection answered correctly at `now`.
    pub(crate) fn proved_ok(&self, now: Instant) {
        let since = now.saturating_duration_since(self.created);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.last_ok.store(nanos, Ordering::Relaxed);
    }

    /// When the connection last answered a health check or a lease's statement correctly (see
    /// `Slot::last_ok` for when it last answered at all).
    pub(crate) fn last_ok(&self) -> Instant {
        self.created + Duration::from_nanos(self.last_ok.load(Ordering::Relaxed))
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    pub(crate) fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }
}
