//! A database per tenant: its config names `${tenant}` (in the database name, the user, the
//! SQLite path or `search_path`), and each tenant gets its own pool, opened on the tenant's first
//! run and behind its own circuit breaker.
//!
//! A tenant's pool is keyed by the tenant id the caller authenticated with, so one tenant never
//! gets a connection made for another, and a tenant that saturates its pool waits only on its
//! own connections. The tenant id must be a plain name (letters, digits, `_`, `-`; at most 63):
//! it is written into a connection target, so nothing else may reach it. At most `max_tenants`
//! pools are open at once; when a new tenant arrives at the limit, the least recently used pool
//! that nobody is using is closed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::database::{DatabaseConfig, DatabaseTarget};
use crate::config::values::TENANT_PLACEHOLDER;
use crate::pool::breaker::{Attempt, Breaker, Outcome};
use crate::pool::{Pool, PoolConfig, PoolConfigError};
use crate::vector::VectorStore;

/// The longest tenant id a database per tenant takes (PostgreSQL's identifier limit).
const MAX_TENANT_LEN: usize = 63;

/// The pools of one database per tenant.
pub struct TenantPools {
    config: DatabaseConfig,
    max_tenants: usize,
    pools: Mutex<HashMap<String, Arc<TenantPool>>>,
    epoch: Instant,
}

/// One tenant's pool.
pub struct TenantPool {
    tenant: String,
    pool: Pool,
    vectors: VectorStore,
    breaker: Arc<Breaker>,
    last_used_ms: AtomicU64,
}

/// A tenant's pool, lent for one node: say how the database answered with
/// [`Checkout::finish`], so the tenant's circuit learns whether it is reachable.
pub struct Checkout {
    entry: Arc<TenantPool>,
    attempt: Attempt,
    database: String,
}

/// Why a tenant's pool could not be lent.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The caller has no tenant.
    #[error("database `{database}` is per tenant, and the caller has no tenant")]
    NoTenant {
        /// The database.
        database: String,
    },
    /// The tenant id is not a plain name.
    #[error(
        "database `{database}` is per tenant, and the caller's tenant id is not a plain name \
         (letters, digits, `_` and `-`, at most {MAX_TENANT_LEN})"
    )]
    BadTenant {
        /// The database.
        database: String,
    },
    /// Every tenant pool is in use.
    #[error(
        "database `{database}` serves at most {max} tenants at once, and each of them is in use"
    )]
    Full {
        /// The database.
        database: String,
        /// `max_tenants`.
        max: usize,
    },
    /// The tenant's database keeps failing.
    #[error(
        "database `{database}` is failing for this tenant: circuit open, next attempt in {retry_in:.1?}"
    )]
    CircuitOpen {
        /// The database.
        database: String,
        /// Time left before a trial is let through.
        retry_in: Duration,
    },
    /// The pool settings are invalid for this tenant.
    #[error("invalid pool settings for database `{database}`")]
    Config {
        /// The database.
        database: String,
        /// What is wrong.
        #[source]
        source: PoolConfigError,
    },
}

/// One open tenant pool, as metrics and `/v1/pools` show it.
pub struct TenantPoolView {
    /// The tenant.
    pub tenant: String,
    /// Its pool (a handle: the pool stays the map's).
    pub pool: Pool,
    /// Whether its circuit is open.
    pub circuit_open: bool,
}

impl TenantPools {
    /// The pools of `config`, a database per tenant; none is opened yet. The settings are
    /// checked now, as they would be for a tenant.
    pub fn new(config: DatabaseConfig) -> Result<TenantPools, TenantError> {
        let max_tenants = config.tenancy.map_or(1, |t| t.max_tenants);
        let pools = TenantPools {
            config,
            max_tenants,
            pools: Mutex::default(),
            epoch: Instant::now(),
        };
        pools
            .pool_config("tenant")?
            .validate()
            .map_err(|source| TenantError::Config {
                database: pools.config.name.clone(),
                source,
            })?;
        Ok(pools)
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// `max_tenants`.
    pub fn max_tenants(&self) -> usize {
        self.max_tenants
    }

    /// The database, as configured (with `${tenant}`).
    pub fn config(&self) -> &DatabaseConfig {
        &self.config
    }

    /// `tenant`'s pool, opened on first use; fails at once while its circuit is open.
    pub fn checkout(&self, tenant: &str) -> Result<Checkout, TenantError> {
        let database = || self.config.name.clone();
        if tenant.is_empty() {
            return Err(TenantError::NoTenant {
                database: database(),
            });
        }
        if !is_plain(tenant) {
            return Err(TenantError::BadTenant {
                database: database(),
            });
        }
        let entry = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            match pools.get(tenant) {
                Some(entry) => entry.clone(),
                None => {
                    if pools.len() >= self.max_tenants {
                        self.evict_one(&mut pools)?;
                    }
                    let config = self.pool_config(tenant)?;
                    let pool = Pool::new(config);
                    tracing::info!(database = %self.config.name, tenant, "tenant pool opened");
                    let entry = Arc::new(TenantPool {
                        tenant: tenant.to_owned(),
                        vectors: VectorStore::new(pool.clone()),
                        pool,
                        breaker: Arc::default(),
                        last_used_ms: AtomicU64::new(0),
                    });
                    pools.insert(tenant.to_owned(), entry.clone());
                    entry
                }
            }
        };
        entry.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        let attempt = entry
            .breaker
            .enter()
            .map_err(|retry_in| TenantError::CircuitOpen {
                database: database(),
                retry_in,
            })?;
        Ok(Checkout {
            entry,
            attempt,
            database: database(),
        })
    }

    /// Each open tenant pool, by tenant: a snapshot, taken without holding the map while the
    /// caller reads the pools' statistics.
    pub fn views(&self) -> Vec<TenantPoolView> {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let mut views: Vec<TenantPoolView> = pools
            .values()
            .map(|e| TenantPoolView {
                tenant: e.tenant.clone(),
                pool: e.pool.clone(),
                circuit_open: e.breaker.is_open(),
            })
            .collect();
        drop(pools);
        views.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        views
    }

    /// Closes every tenant's pool.
    pub async fn close(&self) {
        let pools: Vec<Arc<TenantPool>> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in pools {
            p.pool.close().await;
        }
    }

    /// Closes the least recently used pool nobody is using, to make room for a new tenant.
    fn evict_one(&self, pools: &mut HashMap<String, Arc<TenantPool>>) -> Result<(), TenantError> {
        let idle = pools
            .values()
            // Held only by this map: no run has it checked out.
            .filter(|e| Arc::strong_count(e) == 1)
            .filter(|e| {
                let stats = e.pool.stats();
                stats.connections.active == 0 && stats.acquisition.waiters == 0
            })
            .min_by_key(|e| e.last_used_ms.load(Ordering::Relaxed))
            .map(|e| e.tenant.clone());
        let Some(tenant) = idle else {
            return Err(TenantError::Full {
                database: self.config.name.clone(),
                max: self.max_tenants,
            });
        };
        if let Some(entry) = pools.remove(&tenant) {
            tracing::info!(database = %self.config.name, tenant = %tenant, "tenant pool closed to make room (max_tenants)");
            tokio::spawn(async move { entry.pool.close().await });
        }
        Ok(())
    }

    fn pool_config(&self, tenant: &str) -> Result<PoolConfig, TenantError> {
        let mut db = self.config.clone();
        db.name = format!("{}/{tenant}", self.config.name);
        db.target = target_for(&self.config.target, tenant);
        db.search_path = db
            .search_path
            .map(|s| s.replace(TENANT_PLACEHOLDER, tenant));
        PoolConfig::from_database(&db).map_err(|source| TenantError::Config {
            database: self.config.name.clone(),
            source,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Checkout {
    /// The tenant's pool.
    pub fn pool(&self) -> &Pool {
        &self.entry.pool
    }

    /// The tenant's vector store.
    pub fn vectors(&self) -> &VectorStore {
        &self.entry.vectors
    }

    /// Records how the database answered.
    pub(crate) fn finish(self, outcome: Outcome) {
        if let Some(cool_down) = self.attempt.finish(outcome) {
            tracing::warn!(database = %self.database, tenant = %self.entry.tenant, ?cool_down, "tenant circuit open");
        }
    }
}

/// Whether `tenant` may be written into a connection target.
fn is_plain(tenant: &str) -> bool {
    tenant.len() <= MAX_TENANT_LEN
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `template` with `${tenant}` replaced by `tenant` (a plain name, see [`is_plain`]).
fn target_for(template: &DatabaseTarget, tenant: &str) -> DatabaseTarget {
    let fill = |s: &str| s.replace(TENANT_PLACEHOLDER, tenant);
    match template {
        DatabaseTarget::Sqlite { path } => DatabaseTarget::Sqlite {
            path: path
                .as_ref()
                .map(|p| PathBuf::from(fill(&p.to_string_lossy()))),
        },
        DatabaseTarget::Server {
            kind,
            host,
            port,
            database,
            user,
            password,
            tls,
        } => DatabaseTarget::Server {
            kind: *kind,
            host: host.clone(),
            port: *port,
            database: fill(database),
            user: fill(user),
            password: password.clone(),
            tls: tls.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_tenants() {
        for ok in ["acme", "ACME_2", "a-b", &"x".repeat(63)] {
            assert!(is_plain(ok), "{ok}");
        }
        for bad in [
            "a b",
            "a/b",
            "a@evil:1/x",
            "a'b",
            "a;b",
            "ü",
            "a\nb",
            "..",
            &"x".repeat(64),
        ] {
            assert!(!is_plain(bad), "{bad}");
        }
    }

    #[test]
    fn the_placeholder_is_filled_in_the_name_user_and_path_only() {
        let t = crate::config::database::parse_database_url(
            "postgres://u_${tenant}@db:5432/app_${tenant}",
        )
        .unwrap();
        let DatabaseTarget::Server {
            database,
            user,
            host,
            ..
        } = target_for(&t, "acme")
        else {
            panic!("a server")
        };
        assert_eq!(
            (database.as_str(), user.as_str(), host.as_str()),
            ("app_acme", "u_acme", "db")
        );
        let s = DatabaseTarget::Sqlite {
            path: Some("data/${tenant}.db".into()),
        };
        assert_eq!(
            target_for(&s, "acme"),
            DatabaseTarget::Sqlite {
                path: Some("data/acme.db".into())
            }
        );
    }
}
