//! AsyncConnectionManager: pools per (tenant, database), each behind a circuit breaker.
//!
//! Pools are keyed by tenant and `user@host:port/db` (plus the password, compared in memory and
//! never shown), so one tenant saturating its pool cannot slow another tenant's acquire. A
//! database that keeps refusing connections opens the pool's circuit ([`super::breaker`]):
//! callers then fail at once with [`ManagerError::CircuitOpen`] instead of waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::breaker::{Breaker, Outcome};
use super::{Lease, Pool, PoolConfig, PoolConfigError, PoolError};
use crate::config::database::DatabaseTarget;
use crate::sql::ErrorKind;

/// The Kailash `PoolConfig`: sizes and timeouts for the pools the manager creates.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerPoolConfig {
    /// Connections kept open (default 1).
    pub min_size: usize,
    /// Connections never exceeded (default 10).
    pub max_size: usize,
    /// Longest wait for a connection (default 30 s).
    pub connection_timeout: Duration,
    /// Longest a statement may run (default 60 s).
    pub command_timeout: Duration,
    /// How often idle connections are checked (default 60 s).
    pub health_check_interval: Duration,
}

impl Default for ManagerPoolConfig {
    fn default() -> Self {
        ManagerPoolConfig {
            min_size: 1,
            max_size: 10,
            connection_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(60),
        }
    }
}

/// Why the manager could not hand out a connection.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The database failed repeatedly; calls fail fast until the cool-down ends.
    #[error(
        "database {target} for tenant `{tenant}` is failing: circuit open, next attempt in {retry_in:.1?}"
    )]
    CircuitOpen {
        /// The tenant.
        tenant: String,
        /// `user@host:port/db`.
        target: String,
        /// Time left before a trial request is allowed.
        retry_in: Duration,
    },
    /// The pool settings are invalid.
    #[error(transparent)]
    Config(#[from] PoolConfigError),
    /// The pool failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

impl ManagerError {
    /// The error's class.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::CircuitOpen { .. } => ErrorKind::Connection,
            ManagerError::Config(_) => ErrorKind::Configuration,
            ManagerError::Pool(e) => e.kind(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    tenant: String,
    target: DatabaseTarget,
}

struct Managed {
    pool: Pool,
    breaker: Arc<Breaker>,
    requests: AtomicU64,
    failed: AtomicU64,
    wait_ns: AtomicU64,
}

/// A pool's figures, as the Kailash manager reports them.
#[derive(Debug, Clone, Serialize)]
pub struct ManagedPoolMetrics {
    /// Leased connections.
    pub active_connections: usize,
    /// Idle connections.
    pub idle_connections: usize,
    /// Requests for a connection, the first one included.
    pub total_requests: u64,
    /// Requests that failed.
    pub failed_requests: u64,
    /// Mean time to get a connection, in seconds.
    pub avg_wait_time: f64,
    /// Whether the circuit is closed and the pool has no connect failure outstanding.
    pub is_healthy: bool,
}

/// Pools per (tenant, database).
#[derive(Default)]
pub struct ConnectionManager {
    pools: Mutex<HashMap<PoolKey, Arc<Managed>>>,
}

impl ConnectionManager {
    /// An empty manager.
    pub fn new() -> ConnectionManager {
        ConnectionManager::default()
    }

    /// A connection to `target` for `tenant`, from that pair's pool (created on first use with
    /// `config`).
    pub async fn get_connection(
        &self,
        tenant: &str,
        target: &DatabaseTarget,
        config: &ManagerPoolConfig,
    ) -> Result<Lease, ManagerError> {
        let managed = self.managed(tenant, target, config)?;
        managed.requests.fetch_add(1, Ordering::Relaxed);
        let attempt = match managed.breaker.enter() {
            Ok(attempt) => attempt,
            Err(retry_in) => {
                managed.failed.fetch_add(1, Ordering::Relaxed);
                return Err(ManagerError::CircuitOpen {
                    tenant: tenant.to_owned(),
                    target: target.to_string(),
                    retry_in,
                });
            }
        };
        let start = Instant::now();
        let result = if attempt.is_trial() {
            // The trial must find out quickly whether the database is back.
            match managed.pool.initialize().await {
                Ok(()) => managed.pool.acquire().await,
                Err(e) => Err(e),
            }
        } else {
            managed.pool.acquire().await
        };
        let waited = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        managed.wait_ns.fetch_add(waited, Ordering::Relaxed);
        let outcome = match &result {
            Ok(_) => Outcome::Reached,
            Err(PoolError::Connect { .. }) => Outcome::Unreachable,
            Err(_) => Outcome::Inconclusive,
        };
        if result.is_err() {
            managed.failed.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cool_down) = attempt.finish(outcome) {
            tracing::warn!(tenant, target = %target, ?cool_down, "circuit open");
        }
        Ok(result?)
    }

    fn managed(
        &self,
        tenant: &str,
        target: &DatabaseTarget,
        config: &ManagerPoolConfig,
    ) -> Result<Arc<Managed>, ManagerError> {
        let key = PoolKey {
            tenant: tenant.to_owned(),
            target: target.clone(),
        };
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = pools.get(&key) {
            return Ok(m.clone());
        }
        let mut pc = PoolConfig::new(format!("{tenant}/{target}"), target.clone());
        pc.min_connections = config.min_size;
        pc.max_connections = config.max_size;
        pc.acquire_timeout = config.connection_timeout;
        pc.connect_timeout = config.connection_timeout.min(pc.connect_timeout);
        pc.command_timeout = Some(config.command_timeout);
        pc.health_check_interval = config.health_check_interval;
        pc.validate()?;
        let managed = Arc::new(Managed {
            pool: Pool::new(pc),
            breaker: Arc::default(),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            wait_ns: AtomicU64::new(0),
        });
        pools.insert(key, managed.clone());
        Ok(managed)
    }

    /// Per-pool figures, keyed `tenant/user@host:port/db`; only `tenant`'s pools when given.
    pub fn metrics(&self, tenant: Option<&str>) -> BTreeMap<String, ManagedPoolMetrics> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .iter()
            .filter(|(key, _)| tenant.is_none_or(|t| key.tenant == t))
            .map(|(key, m)| {
                let stats = m.pool.stats();
                let requests = m.requests.load(Ordering::Relaxed);
                let metrics = ManagedPoolMetrics {
                    active_connections: stats.connections.active,
                    idle_connections: stats.connections.idle,
                    total_requests: requests,
                    failed_requests: m.failed.load(Ordering::Relaxed),
                    avg_wait_time: if requests == 0 {
                        0.0
                    } else {
                        m.wait_ns.load(Ordering::Relaxed) as f64 / 1e9 / requests as f64
                    },
                    is_healthy: m.breaker.is_healthy(),
                };
                (format!("{}/{}", key.tenant, key.target), metrics)
            })
            .collect()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        let pools: Vec<Arc<Managed>> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, m)| m)
            .collect();
        for m in pools {
            m.pool.close().await;
        }
    }
}
