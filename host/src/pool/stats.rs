//! Pool statistics: counters kept as the pool works, and the snapshot shown by the `stats`
//! operation, `GET /v1/pools/{name}/stats` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Idle longer than `idle_timeout` while above `min_connections`.
    Idle,
    /// Older than `max_lifetime`.
    Lifetime,
    /// Health score below `health_threshold`.
    Health,
    /// The connection broke (I/O error, server shutdown, failed check or rollback).
    Broken,
    /// A statement overran `command_timeout`.
    Timeout,
    /// The actor task ended unexpectedly (panicked).
    Died,
    /// The pool was closed.
    Shutdown,
    /// A statement left session state that a reset cannot undo (see
    /// [`Statement::leaves_state`](crate::sql::params::Statement::leaves_state)).
    Session,
    /// Its caller gave up on a running statement (a node timeout, a dropped request), which
    /// was then stopped like one past `command_timeout`.
    Abandoned,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 9] = [
        CloseReason::Idle,
        CloseReason::Lifetime,
        CloseReason::Health,
        CloseReason::Broken,
        CloseReason::Timeout,
        CloseReason::Died,
        CloseReason::Shutdown,
        CloseReason::Session,
        CloseReason::Abandoned,
    ];

    /// The label used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Health => "health",
            CloseReason::Broken => "broken",
            CloseReason::Timeout => "timeout",
            CloseReason::Died => "died",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Session => "session",
            CloseReason::Abandoned => "abandoned",
        }
    }

    fn index(self) -> usize {
        CloseReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(0)
    }
}

/// Acquisition histogram buckets: 2^6 per power of two (values within 1.6 %), up to 2^42 ns.
const ACQUIRE_HIST_GROUPING: u8 = 6;
const ACQUIRE_HIST_MAX_POWER: u8 = 42;
const ACQUIRE_HIST_MAX_VALUE: u64 = (1 << ACQUIRE_HIST_MAX_POWER) - 1;

/// Counters updated on the pool's paths.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) recycled: AtomicU64,
    pub(crate) failed: AtomicU64,
    closed: [AtomicU64; CloseReason::ALL.len()],
    pub(crate) queries: AtomicU64,
    pub(crate) query_errors: AtomicU64,
    pub(crate) acquisitions: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) reclaimed: AtomicU64,
    acquire_total_ns: AtomicU64,
    /// Acquisition waits in ns: lock-free, recorded on every statement from every thread.
    acquire_hist: histogram::AtomicHistogram,
}

impl Counters {
    pub(crate) fn new() -> Counters {
        Counters {
            created: AtomicU64::new(0),
            recycled: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            closed: Default::default(),
            queries: AtomicU64::new(0),
            query_errors: AtomicU64::new(0),
            acquisitions: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
            acquire_total_ns: AtomicU64::new(0),
            acquire_hist: histogram::AtomicHistogram::new(
                ACQUIRE_HIST_GROUPING,
                ACQUIRE_HIST_MAX_POWER,
            )
            .expect("valid histogram parameters"),
        }
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Ordering::Relaxed);
        if matches!(reason, CloseReason::Lifetime | CloseReason::Health) {
            self.recycled.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn acquired(&self, waited: Duration) {
        let ns = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        self.acquire_total_ns.fetch_add(ns, Ordering::Relaxed);
        // Above the range (over 2^42 ns, 73 minutes): counted in the top bucket.
        let _ = self.acquire_hist.increment(ns.min(ACQUIRE_HIST_MAX_VALUE));
    }

    pub(crate) fn acquisition_snapshot(&self, waiters: usize) -> AcquisitionStats {
        let count = self.acquisitions.load(Ordering::Relaxed);
        let total = self.acquire_total_ns.load(Ordering::Relaxed);
        let mut quantiles = [None, None];
        let _ = self
            .acquire_hist
            .load()
            .quantile_buckets_into(&[0.5, 0.99], &mut quantiles);
        // A bucket's upper end: within 1/64 (1.6 %) of the recorded waits.
        let [p50, p99] = quantiles.map(|b| b.map_or(0, |b| b.end()));
        let ms = |ns: u64| ns as f64 / 1e6;
        // Each fine bucket falls in the first Prometheus bucket its upper end fits (a fine
        // bucket spans at most 1/64 of its value, so a wait lands at most that far off).
        let mut buckets = vec![0u64; ACQUIRE_BUCKETS.len() + 1];
        for b in self
            .acquire_hist
            .load()
            .into_iter()
            .filter(|b| b.count() > 0)
        {
            let end_s = b.end() as f64 / 1e9;
            let i = ACQUIRE_BUCKETS
                .iter()
                .position(|&le| end_s <= le)
                .unwrap_or(ACQUIRE_BUCKETS.len());
            buckets[i] += b.count();
        }
        AcquisitionStats {
            buckets,
            sum_s: total as f64 / 1e9,
            count,
            avg_ms: if count == 0 {
                0.0
            } else {
                ms(total) / count as f64
            },
            p50_ms: ms(p50),
            p99_ms: ms(p99),
            waiters,
            timeouts: self.timeouts.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn closed_snapshot(&self) -> Vec<(CloseReason, u64)> {
        CloseReason::ALL
            .iter()
            .map(|r| (*r, self.closed[r.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A pool's figures at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStats {
    /// The pool's name.
    pub pool: String,
    /// `postgresql`, `mysql` or `sqlite`.
    pub database_type: &'static str,
    /// `user@host:port/db` or the SQLite path (never a password).
    pub target: String,
    /// Connection counts.
    pub connections: ConnectionStats,
    /// Statement counts.
    pub queries: QueryStats,
    /// Acquire timings.
    pub acquisition: AcquisitionStats,
    /// Outstanding and reclaimed leases.
    pub leases: LeaseStats,
    /// Each open connection's health.
    pub health: Vec<ConnectionHealth>,
}

/// Connection counts.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionStats {
    /// Opened since the pool started.
    pub created: u64,
    /// Closed for age or poor health (and replaced as needed).
    pub recycled: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// Leased now.
    pub active: usize,
    /// Idle now.
    pub idle: usize,
    /// Open now (active, idle, or being checked).
    pub total: usize,
    /// Being opened now.
    pub opening: usize,
    /// Closed since the pool started, by reason.
    pub closed: std::collections::BTreeMap<&'static str, u64>,
}

/// Statement counts.
#[derive(Debug, Clone, Serialize)]
pub struct QueryStats {
    /// Statements run.
    pub executed: u64,
    /// Statements that failed.
    pub errors: u64,
    /// `errors / executed` (0 when nothing ran).
    pub error_rate: f64,
}

/// Acquire timings.
#[derive(Debug, Clone, Serialize)]
pub struct AcquisitionStats {
    /// Successful acquires.
    pub count: u64,
    /// Mean wait, in milliseconds.
    pub avg_ms: f64,
    /// Median wait, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile wait, in milliseconds.
    pub p99_ms: f64,
    /// Callers waiting now.
    pub waiters: usize,
    /// Acquires that gave up after `acquire_timeout`.
    pub timeouts: u64,
    /// The waits as a Prometheus histogram over [`ACQUIRE_BUCKETS`]: per bucket (not
    /// cumulative) counts, the last one past the highest bound; `/metrics` only.
    #[serde(skip)]
    pub buckets: Vec<u64>,
    /// The sum of every wait, in seconds.
    #[serde(skip)]
    pub sum_s: f64,
}

/// The upper bounds (seconds) of the acquisition-wait histogram on `/metrics`: 10 µs to ~10 s.
pub const ACQUIRE_BUCKETS: [f64; 11] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0, 10.0,
];

/// Lease counts.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseStats {
    /// Held now.
    pub active: usize,
    /// Taken back after `lease_timeout`.
    pub reclaimed: u64,
}

/// One connection's health record.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionHealth {
    /// The connection's id within the pool.
    pub connection_id: u64,
    /// 0..=100; below `health_threshold` the connection is recycled.
    pub score: i64,
    /// Health checks run on it.
    pub checks: u64,
    /// Share of checks that passed (1 when none ran).
    pub check_success_rate: f64,
    /// Statements run on it.
    pub queries: u64,
    /// Seconds since it was opened.
    pub age_s: f64,
}
