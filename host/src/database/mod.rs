//! The databases named in the configuration: one [`Pool`] each, opened at start, or for a
//! database per tenant one pool per tenant, opened on the tenant's first run ([`tenants`]).
//!
//! SQLite files (and their directory) are created when missing, so `trellis serve` in an empty
//! folder works. Errors name the database and its `user@host:port/db`, never the password.

pub(crate) mod tenants;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::database::DatabaseConfig;
use crate::pool::{Pool, PoolConfig, PoolConfigError, PoolError};
use tenants::{TenantError, TenantPools};

/// All configured databases, by name.
#[derive(Clone, Default)]
pub struct Databases {
    by_name: BTreeMap<String, Pool>,
    per_tenant: BTreeMap<String, Arc<TenantPools>>,
}

impl std::fmt::Debug for Databases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Databases {
    /// Opens a pool for every database in `configs`, in name order, and waits until each has
    /// its `min_connections` open; the first failure stops start-up. A database per tenant is
    /// checked, and opens its pools as tenants arrive.
    pub async fn open_all<'a>(
        configs: impl IntoIterator<Item = &'a DatabaseConfig>,
    ) -> Result<Databases, DatabaseError> {
        let mut databases = Databases::default();
        for config in configs {
            if config.tenancy.is_some() {
                let pools =
                    TenantPools::new(config.clone()).map_err(|source| DatabaseError::Tenants {
                        name: config.name.clone(),
                        source,
                    })?;
                tracing::info!(database = %config.name, address = %config.target, max_tenants = pools.max_tenants(), "database per tenant");
                databases
                    .per_tenant
                    .insert(config.name.clone(), Arc::new(pools));
                continue;
            }
            let pool = open(config).await?;
            tracing::info!(database = %config.name, address = %config.target, "database open");
            databases.by_name.insert(config.name.clone(), pool);
        }
        Ok(databases)
    }

    /// These databases and `pool`, already open, as database `name` (for embedding and
    /// benchmarks; `serve` opens its databases with [`Databases::open_all`]).
    pub fn with_pool(mut self, name: impl Into<String>, pool: Pool) -> Databases {
        self.by_name.insert(name.into(), pool);
        self
    }

    /// The pool of the database called `name` (not one per tenant).
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.by_name.get(name)
    }

    /// The pools of the database per tenant called `name`.
    pub fn per_tenant(&self, name: &str) -> Option<&Arc<TenantPools>> {
        self.per_tenant.get(name)
    }

    /// Every pool of a database that is not per tenant, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.by_name.values()
    }

    /// Every database per tenant, in name order.
    pub fn tenanted(&self) -> impl Iterator<Item = &Arc<TenantPools>> {
        self.per_tenant.values()
    }

    /// The configured names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self
            .by_name
            .keys()
            .chain(self.per_tenant.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pool in self.by_name.values() {
            pool.close().await;
        }
        for pools in self.per_tenant.values() {
            pools.close().await;
        }
    }
}

/// Opens the pool of one database and waits for its minimum connections.
pub async fn open(config: &DatabaseConfig) -> Result<Pool, DatabaseError> {
    if config.tenancy.is_some() {
        return Err(DatabaseError::PerTenant {
            name: config.name.clone(),
        });
    }
    let pool_config =
        PoolConfig::from_database(config).map_err(|source| DatabaseError::Config {
            name: config.name.clone(),
            source,
        })?;
    let pool = Pool::new(pool_config);
    if let Err(source) = pool.initialize().await {
        pool.close().await;
        return Err(DatabaseError::Connect {
            name: config.name.clone(),
            target: config.target.to_string(),
            source,
        });
    }
    Ok(pool)
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DatabaseError {
    /// Connecting failed.
    #[error("cannot open database `{name}` ({target})")]
    #[diagnostic(help(
        "check that the server is running and that `[databases.{name}]` in the config is right"
    ))]
    Connect {
        /// The configured name.
        name: String,
        /// `user@host:port/db` or the SQLite path; never the password.
        target: String,
        /// What the pool reported.
        #[source]
        source: PoolError,
    },
    /// A database per tenant was asked for as one database.
    #[error("database `{name}` is per tenant (its config names `${{tenant}}`)")]
    #[diagnostic(help("name one tenant's database with `--url`"))]
    PerTenant {
        /// The configured name.
        name: String,
    },
    /// A database per tenant's settings are invalid.
    #[error("database `{name}`")]
    Tenants {
        /// The configured name.
        name: String,
        /// What is wrong.
        #[source]
        source: TenantError,
    },
    /// The pool settings are invalid.
    #[error("invalid pool settings for database `{name}`")]
    Config {
        /// The configured name.
        name: String,
        /// What is wrong.
        #[source]
        source: PoolConfigError,
    },
}
