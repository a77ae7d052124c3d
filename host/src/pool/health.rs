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
    /// When the connection last proved itself (a query or a check), as nanos since `created`.
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

    /// A statement ended at `now`.
    pub(crate) fn query_done(&self, ok: bool, now: Instant) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if ok {
            self.proved_ok(now);
        } else {
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

    fn proved_ok(&self, now: Instant) {
        let since = now.saturating_duration_since(self.created);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        self.last_ok.store(nanos, Ordering::Relaxed);
    }

    /// When the connection last answered correctly.
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
