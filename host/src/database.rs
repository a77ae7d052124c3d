//! The databases named in the configuration: one [`Pool`] each, opened at start.
//!
//! SQLite files (and their directory) are created when missing, so `trellis serve` in an empty
//! folder works. Errors name the database and its `user@host:port/db`, never the password.

use std::collections::BTreeMap;

use crate::config::DatabaseConfig;
use crate::pool::{Pool, PoolConfig, PoolConfigError, PoolError};

/// All configured databases, by name.
#[derive(Debug, Clone, Default)]
pub struct Databases {
    by_name: BTreeMap<String, Pool>,
}

impl Databases {
    /// Opens a pool for every database in `configs`, in name order, and waits until each has
    /// its `min_connections` open; the first failure stops start-up.
    pub async fn open_all<'a>(
        configs: impl IntoIterator<Item = &'a DatabaseConfig>,
    ) -> Result<Databases, DatabaseError> {
        let mut by_name = BTreeMap::new();
        for config in configs {
            let pool = open(config).await?;
            tracing::info!(database = %config.name, address = %config.target, "database open");
            by_name.insert(config.name.clone(), pool);
        }
        Ok(Databases { by_name })
    }

    /// The pool of the database called `name`.
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.by_name.get(name)
    }

    /// Every pool, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.by_name.values()
    }

    /// The configured names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for pool in self.by_name.values() {
            pool.close().await;
        }
    }
}

/// Opens the pool of one database and waits for its minimum connections.
pub async fn open(config: &DatabaseConfig) -> Result<Pool, DatabaseError> {
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
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// Connecting failed.
    #[error(
        "cannot open database `{name}` ({target})\n\nhint: check that the server is running and that `[databases.{name}]` in the config is right"
    )]
    Connect {
        /// The configured name.
        name: String,
        /// `user@host:port/db` or the SQLite path; never the password.
        target: String,
        /// What the pool reported.
        #[source]
        source: PoolError,
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
