//! The databases named in the configuration, opened with sqlx at start.
//!
//! Each database gets a driver pool for its kind. SQLite files (and their directory) are created
//! when missing, so `trellis serve` in an empty folder works. Errors name the database and its
//! `host:port/db`, never the password.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::config::{DatabaseConfig, DatabaseKind, DatabaseTarget};

/// How long opening one database may take before start-up fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A driver pool for one database, by kind.
#[derive(Debug, Clone)]
pub enum DriverPool {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    Mysql(MySqlPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// One open database.
#[derive(Debug, Clone)]
pub struct Database {
    config: DatabaseConfig,
    pool: DriverPool,
}

impl Database {
    /// Opens `config`: creates a SQLite file and its directory if missing, or connects to a server
    /// and checks the connection.
    pub async fn open(config: &DatabaseConfig) -> Result<Database, DatabaseError> {
        let err = |source| DatabaseError::Connect {
            name: config.name.clone(),
            target: config.target.to_string(),
            source,
        };
        let pool = match &config.target {
            DatabaseTarget::Sqlite { path } => {
                let options = match path {
                    Some(path) => {
                        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                            std::fs::create_dir_all(dir).map_err(|source| {
                                DatabaseError::CreateDir {
                                    name: config.name.clone(),
                                    dir: dir.display().to_string(),
                                    source,
                                }
                            })?;
                        }
                        SqliteConnectOptions::new()
                            .filename(path)
                            .create_if_missing(true)
                            .journal_mode(SqliteJournalMode::Wal)
                    }
                    None => SqliteConnectOptions::new().in_memory(true),
                }
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(err)?;
                DriverPool::Sqlite(pool)
            }
            DatabaseTarget::Server {
                kind: DatabaseKind::Postgres,
                host,
                port,
                database,
                user,
                password,
            } => {
                let mut options = PgConnectOptions::new()
                    .host(host)
                    .port(*port)
                    .database(database)
                    .username(user)
                    .application_name("trellis");
                if let Some(password) = password {
                    options = options.password(password.expose());
                }
                // One direct connection first: the pool would only report a timeout, this
                // reports why (refused, unknown database, bad password).
                first_connection::<PgConnection>(&options)
                    .await
                    .map_err(err)?;
                let pool = PgPoolOptions::new()
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(err)?;
                DriverPool::Postgres(pool)
            }
            DatabaseTarget::Server {
                host,
                port,
                database,
                user,
                password,
                ..
            } => {
                let mut options = MySqlConnectOptions::new()
                    .host(host)
                    .port(*port)
                    .database(database)
                    .username(user);
                if let Some(password) = password {
                    options = options.password(password.expose());
                }
                // One direct connection first: the pool would only report a timeout, this
                // reports why (refused, unknown database, bad password).
                first_connection::<MySqlConnection>(&options)
                    .await
                    .map_err(err)?;
                let pool = MySqlPoolOptions::new()
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(err)?;
                DriverPool::Mysql(pool)
            }
        };
        let db = Database {
            config: config.clone(),
            pool,
        };
        db.ping().await?;
        Ok(db)
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The kind of database.
    pub fn kind(&self) -> DatabaseKind {
        self.config.target.kind()
    }

    /// The driver pool.
    pub fn pool(&self) -> &DriverPool {
        &self.pool
    }

    /// Runs `SELECT 1`.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        let result = match &self.pool {
            DriverPool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            DriverPool::Mysql(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            DriverPool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        };
        result.map_err(|source| DatabaseError::Connect {
            name: self.config.name.clone(),
            target: self.config.target.to_string(),
            source,
        })
    }

    /// Closes every connection, waiting for borrowed ones to come back.
    pub async fn close(&self) {
        match &self.pool {
            DriverPool::Postgres(p) => p.close().await,
            DriverPool::Mysql(p) => p.close().await,
            DriverPool::Sqlite(p) => p.close().await,
        }
    }
}

/// Opens and closes one connection, within [`CONNECT_TIMEOUT`].
async fn first_connection<C: Connection>(options: &C::Options) -> Result<(), sqlx::Error>
where
    C::Options: ConnectOptions<Connection = C>,
{
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    connection.close().await
}

/// All configured databases, by name.
#[derive(Debug, Clone, Default)]
pub struct Databases {
    by_name: BTreeMap<String, Database>,
}

impl Databases {
    /// Opens every database in `configs`, in name order; the first failure stops start-up.
    pub async fn open_all<'a>(
        configs: impl IntoIterator<Item = &'a DatabaseConfig>,
    ) -> Result<Databases, DatabaseError> {
        let mut by_name = BTreeMap::new();
        for config in configs {
            let db = Database::open(config).await?;
            tracing::info!(database = %config.name, address = %config.target, "database open");
            by_name.insert(config.name.clone(), db);
        }
        Ok(Databases { by_name })
    }

    /// The database called `name`.
    pub fn get(&self, name: &str) -> Option<&Database> {
        self.by_name.get(name)
    }

    /// Every database, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Database> {
        self.by_name.values()
    }

    /// Closes all of them.
    pub async fn close(&self) {
        for db in self.by_name.values() {
            db.close().await;
        }
    }
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// Connecting or the first query failed.
    #[error(
        "cannot open database `{name}` ({target})\n\nhint: check that the server is running and that `[databases.{name}]` in the config is right"
    )]
    Connect {
        /// The configured name.
        name: String,
        /// `host:port/db` or the SQLite path; never the password.
        target: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The directory for a SQLite file could not be created.
    #[error("cannot create directory `{dir}` for database `{name}`")]
    CreateDir {
        /// The configured name.
        name: String,
        /// The directory.
        dir: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
