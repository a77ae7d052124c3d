//! One driver connection of any supported kind: connect, run a statement, ping, roll back.
//!
//! Only the connection actor owns a [`DriverConnection`]; everything else talks to the actor.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use crate::config::{DatabaseKind, DatabaseTarget};
use crate::sql::exec::{self, ExecError, Fetch, Output};
use crate::sql::params::Statement;

/// An open connection to PostgreSQL, MySQL/MariaDB or SQLite.
pub(crate) enum DriverConnection {
    Postgres(PgConnection),
    Mysql(MySqlConnection),
    Sqlite(SqliteConnection),
}

impl DriverConnection {
    /// Connects to `target` within `timeout`.
    /// `pool` becomes PostgreSQL's `application_name` (`trellis/POOL`), so the server's
    /// activity views show which pool a connection belongs to.
    pub(crate) async fn connect(
        target: &DatabaseTarget,
        pool: &str,
        timeout: Duration,
    ) -> Result<DriverConnection, sqlx::Error> {
        let mut application_name = format!("trellis/{pool}");
        while application_name.len() > 63 {
            application_name.pop();
        }
        let connect = async {
            Ok(match target {
                DatabaseTarget::Sqlite { path } => {
                    let options = match path {
                        Some(path) => {
                            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                                std::fs::create_dir_all(dir)?;
                            }
                            SqliteConnectOptions::new()
                                .filename(path)
                                .create_if_missing(true)
                                .journal_mode(SqliteJournalMode::Wal)
                        }
                        None => SqliteConnectOptions::new().in_memory(true),
                    }
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    .disable_statement_logging();
                    DriverConnection::Sqlite(options.connect().await?)
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
                        .application_name(&application_name)
                        .disable_statement_logging();
                    if let Some(password) = password {
                        options = options.password(password.expose());
                    }
                    DriverConnection::Postgres(options.connect().await?)
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
                        .username(user)
                        .disable_statement_logging();
                    if let Some(password) = password {
                        options = options.password(password.expose());
                    }
                    DriverConnection::Mysql(options.connect().await?)
                }
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// Runs one statement.
    pub(crate) async fn run(
        &mut self,
        stmt: &Statement,
        fetch: Fetch,
    ) -> Result<Output, ExecError> {
        match self {
            DriverConnection::Postgres(c) => exec::run_pg(c, stmt, fetch).await,
            DriverConnection::Mysql(c) => exec::run_mysql(c, stmt, fetch).await,
            DriverConnection::Sqlite(c) => exec::run_sqlite(c, stmt, fetch).await,
        }
    }

    /// A round trip to the server.
    pub(crate) async fn ping(&mut self) -> Result<(), sqlx::Error> {
        match self {
            DriverConnection::Postgres(c) => c.ping().await,
            DriverConnection::Mysql(c) => c.ping().await,
            DriverConnection::Sqlite(c) => c.ping().await,
        }
    }

    /// Ends whatever transaction or session state a caller left behind.
    ///
    /// PostgreSQL: `ROLLBACK` (a warning, not an error, outside a transaction). MySQL/MariaDB:
    /// `ROLLBACK` and `SET autocommit = 1`. SQLite: `ROLLBACK` only when a transaction is open.
    pub(crate) async fn reset(&mut self) -> Result<(), sqlx::Error> {
        use sqlx::Executor;
        match self {
            DriverConnection::Postgres(c) => {
                c.execute(sqlx::raw_sql("ROLLBACK")).await?;
            }
            DriverConnection::Mysql(c) => {
                c.execute(sqlx::raw_sql("ROLLBACK; SET autocommit = 1"))
                    .await?;
            }
            DriverConnection::Sqlite(c) => {
                // `ROLLBACK` without a transaction is an error on SQLite: ask first.
                let mut handle = c.lock_handle().await?;
                let in_transaction = handle.in_transaction_public();
                drop(handle);
                if in_transaction {
                    c.execute(sqlx::raw_sql("ROLLBACK")).await?;
                }
            }
        }
        Ok(())
    }

    /// Closes the connection politely.
    pub(crate) async fn close(self) {
        let _ = match self {
            DriverConnection::Postgres(c) => c.close().await,
            DriverConnection::Mysql(c) => c.close().await,
            DriverConnection::Sqlite(c) => c.close().await,
        };
    }
}

/// Whether SQLite is inside a transaction (`sqlite3_get_autocommit` is 0).
trait InTransaction {
    fn in_transaction_public(&mut self) -> bool;
}

impl InTransaction for sqlx::sqlite::LockedSqliteHandle<'_> {
    fn in_transaction_public(&mut self) -> bool {
        let raw = self.as_raw_handle();
        // SAFETY: the handle is locked for the duration of this call and `raw` points to the
        // open connection; sqlite3_get_autocommit only reads connection state.
        unsafe { libsqlite3_sys::sqlite3_get_autocommit(raw.as_ptr()) == 0 }
    }
}
