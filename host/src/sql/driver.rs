//! One driver connection of any supported kind: connect (with TLS), run a statement, ping, roll
//! back. The sqlx types stay in this module and `exec`; the pool sees only [`DriverConnection`].
//!
//! Only the connection actor owns a [`DriverConnection`]; everything else talks to the actor.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};

use super::exec::{self, ExecError, Fetch, Output};
use super::pooled::{self, PooledSession};
use crate::config::database::{DatabaseTarget, Pooler};
use crate::config::values::DatabaseKind;
use crate::sql::params::Statement;
use crate::tls::{SslMode, Tls};

/// How long a SQLite connection waits for another one's lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Puts a SQLite database file in WAL mode (readers never block the writer), once.
///
/// WAL is a property of the file, and switching to it takes an exclusive lock that SQLite's busy
/// timeout does not wait for: with sqlx's `journal_mode` connect option every new connection asks
/// for it, so several connections opening a new database at once failed with "database is
/// locked". Here a connection only asks when the file is not in WAL yet, and retries while
/// another connection holds the lock. A file system without WAL support keeps its mode.
async fn ensure_wal(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
    loop {
        let attempt = async {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await?;
            if !mode.eq_ignore_ascii_case("wal") {
                let _: String = sqlx::query_scalar("PRAGMA journal_mode = WAL")
                    .fetch_one(&mut *conn)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        };
        match attempt.await {
            Err(e) if is_sqlite_busy(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            result => return result,
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, extended codes included.
fn is_sqlite_busy(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Opens a SQLite database: the file (made private to the host user, put in WAL mode), or an
/// in-memory database.
async fn open_sqlite(path: Option<&Path>) -> Result<DriverConnection, sqlx::Error> {
    let options = match path {
        Some(path) => {
            // The database holds the data policy protects: its directory and file are the host
            // user's alone (SQLite gives its -wal and -shm files the database file's mode).
            crate::private_fs::create_parent(path)?;
            crate::private_fs::touch(path)?;
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
        }
        None => SqliteConnectOptions::new().in_memory(true),
    }
    .busy_timeout(SQLITE_BUSY_TIMEOUT)
    .foreign_keys(true)
    .disable_statement_logging();
    let mut conn = options.connect().await?;
    if path.is_some() {
        ensure_wal(&mut conn).await?;
    }
    let handle = SqliteHandle(conn.lock_handle().await?.as_raw_handle());
    Ok(DriverConnection::Sqlite { conn, handle })
}

/// Connects to PostgreSQL with `options` under `tls`, and reads the server process id (not
/// behind a transaction-mode pooler, where the process changes with each transaction).
async fn connect_postgres(
    tls: &Tls,
    options: PgConnectOptions,
    pooler: Pooler,
) -> Result<DriverConnection, sqlx::Error> {
    let mut options = apply_pg(tls, options);
    if pooler == Pooler::Transaction {
        // No named statement may outlive a transaction; `extra_float_digits` is a startup
        // parameter PgBouncer refuses (values come back in binary, where it does not apply).
        options = options.statement_cache_capacity(0).extra_float_digits(None);
        let conn = options.connect().await.map_err(|e| tls_error(tls, e))?;
        return Ok(DriverConnection::Postgres {
            conn,
            touched: false,
            pid: None,
            pooled: Some(Box::default()),
        });
    }
    let mut conn = options.connect().await.map_err(|e| tls_error(tls, e))?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    Ok(DriverConnection::Postgres {
        conn,
        touched: false,
        pid: Some(pid),
        pooled: None,
    })
}

/// Connects to MySQL/MariaDB with `options` under `tls`, and reads the server version and the
/// connection id.
async fn connect_mysql(
    tls: &Tls,
    options: MySqlConnectOptions,
) -> Result<DriverConnection, sqlx::Error> {
    let options = apply_mysql(tls, options);
    let mut conn = options.connect().await.map_err(|e| tls_error(tls, e))?;
    let (version, id): (String, u64) = sqlx::query_as("SELECT VERSION(), CONNECTION_ID()")
        .fetch_one(&mut conn)
        .await?;
    Ok(DriverConnection::Mysql {
        conn,
        mariadb: version.contains("MariaDB"),
        id,
    })
}

/// What the driver reported when connecting, pinging, resetting or cancelling failed: shown,
/// never inspected, outside this module.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct DriverError(sqlx::Error);

/// An open connection to PostgreSQL, MySQL/MariaDB or SQLite.
pub(crate) enum DriverConnection {
    Postgres {
        conn: PgConnection,
        /// A session statement (`BEGIN`, `SET`, …) ran since the last reset: a transaction
        /// may be open.
        touched: bool,
        /// The server process (`pg_backend_pid()`), to cancel a statement from elsewhere;
        /// `None` behind a transaction-mode pooler.
        pid: Option<i32>,
        /// Behind a transaction-mode pooler: what the connection keeps (see `super::pooled`).
        pooled: Option<Box<PooledSession>>,
    },
    Mysql {
        conn: MySqlConnection,
        /// The server is MariaDB (it has `SET STATEMENT … FOR`).
        mariadb: bool,
        /// The server's connection id (`CONNECTION_ID()`), to stop a statement from elsewhere.
        id: u64,
    },
    Sqlite {
        conn: SqliteConnection,
        /// The connection's own handle, to interrupt its running statement.
        handle: SqliteHandle,
    },
}

/// The raw handle of an open SQLite connection, kept for `sqlite3_interrupt` (the one SQLite
/// call meant for another thread than the one running the statement). It lives in the
/// [`DriverConnection`] that owns the connection, so it is never used after the connection
/// closes.
pub(crate) struct SqliteHandle(std::ptr::NonNull<libsqlite3_sys::sqlite3>);

// SAFETY: the pointer is only passed to `sqlite3_interrupt`, which SQLite allows from any
// thread while the connection is open (see `DriverConnection::interrupt`).
unsafe impl Send for SqliteHandle {}

impl DriverConnection {
    /// Connects to `target` within `timeout`.
    /// `pool` becomes PostgreSQL's `application_name` (`trellis/POOL`), so the server's
    /// activity views show which pool a connection belongs to.
    pub(crate) async fn connect(
        target: &DatabaseTarget,
        pool: &str,
        search_path: Option<&str>,
        pooler: Pooler,
        timeout: Duration,
    ) -> Result<DriverConnection, DriverError> {
        Self::open(target, pool, search_path, pooler, timeout)
            .await
            .map_err(DriverError)
    }

    async fn open(
        target: &DatabaseTarget,
        pool: &str,
        search_path: Option<&str>,
        pooler: Pooler,
        timeout: Duration,
    ) -> Result<DriverConnection, sqlx::Error> {
        let mut application_name = format!("trellis/{pool}");
        while application_name.len() > 63 {
            application_name.pop();
        }
        let connect = async {
            Ok(match target {
                DatabaseTarget::Sqlite { path } => open_sqlite(path.as_deref()).await?,
                DatabaseTarget::Server {
                    kind: DatabaseKind::Postgres,
                    ..
                } => {
                    let (mut options, tls) =
                        pg_target(target, &application_name).expect("a PostgreSQL target");
                    if let Some(path) = search_path {
                        // A startup parameter: the session's default, which `RESET ALL` keeps.
                        options = options.options([("search_path", path)]);
                    }
                    connect_postgres(tls, options, pooler).await?
                }
                DatabaseTarget::Server {
                    host,
                    port,
                    database,
                    user,
                    password,
                    tls,
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
                    connect_mysql(tls, options).await?
                }
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// Runs one statement. `limit` is the time the caller allows it (behind a transaction-mode
    /// pooler the server is told; elsewhere the caller enforces it alone).
    pub(crate) async fn run(
        &mut self,
        stmt: &Statement,
        fetch: Fetch,
        limit: Option<Duration>,
    ) -> Result<Output, ExecError> {
        match self {
            DriverConnection::Postgres {
                conn,
                touched,
                pooled: Some(session),
                ..
            } => {
                let maybe_in_transaction = *touched;
                if stmt.touches_session {
                    *touched = true;
                }
                pooled::run(conn, session, stmt, fetch, limit, maybe_in_transaction).await
            }
            DriverConnection::Postgres { conn, touched, .. } => {
                if stmt.touches_session {
                    *touched = true;
                }
                if let Fetch::Many(n) = fetch
                    && let Some(output) = exec::run_pg_many(conn, stmt, n, *touched).await?
                {
                    return Ok(output);
                }
                exec::run_pg(conn, stmt, fetch, exec::PgMode::Cached).await
            }
            DriverConnection::Mysql { conn, mariadb, .. } => {
                exec::run_mysql(conn, stmt, fetch, *mariadb).await
            }
            DriverConnection::Sqlite { conn, .. } => exec::run_sqlite(conn, stmt, fetch).await,
        }
    }

    /// How to stop this connection's running statement from another connection, where the
    /// server can (not SQLite).
    pub(crate) fn canceller(&self) -> Option<Canceller> {
        match self {
            DriverConnection::Postgres { pid, .. } => pid.map(Canceller::Postgres),
            DriverConnection::Mysql { id, .. } => Some(Canceller::Mysql(*id)),
            DriverConnection::Sqlite { .. } => None,
        }
    }

    /// Stops the statement running on this connection, where that is done from the client:
    /// SQLite (`sqlite3_interrupt`; the statement fails with `SQLITE_INTERRUPT` and its changes
    /// are rolled back). A server's statement is stopped through a [`Canceller`] instead.
    pub(crate) fn interrupt(&mut self) {
        if let DriverConnection::Sqlite { handle, .. } = self {
            // SAFETY: `handle` is this connection's, which stays open while `self` lives (the
            // driver closes it only when the `SqliteConnection` beside it is dropped or closed),
            // and `sqlite3_interrupt` may be called from any thread. Called when no statement
            // runs, it has no effect on the next one (SQLite clears the flag when a statement
            // starts on an idle connection).
            unsafe { libsqlite3_sys::sqlite3_interrupt(handle.0.as_ptr()) }
        }
    }

    /// A round trip to the server.
    pub(crate) async fn ping(&mut self) -> Result<(), DriverError> {
        use sqlx::Executor;
        match self {
            // A pooler may answer a bare `Sync` itself: ask a server.
            DriverConnection::Postgres {
                conn,
                pooled: Some(_),
                ..
            } => conn.execute(sqlx::raw_sql("SELECT 1")).await.map(drop),
            DriverConnection::Postgres { conn, .. } => conn.ping().await,
            DriverConnection::Mysql { conn, .. } => conn.ping().await,
            DriverConnection::Sqlite { conn, .. } => conn.ping().await,
        }
        .map_err(DriverError)
    }

    /// Ends whatever transaction or session state a caller left behind.
    ///
    /// PostgreSQL: `ROLLBACK` (a warning, not an error, outside a transaction), then what
    /// `DISCARD ALL` does except dropping the driver's own prepared statements: `RESET ALL`,
    /// `SET SESSION AUTHORIZATION DEFAULT` and `RESET ROLE`, so a `SET search_path` or
    /// `SET ROLE` never reaches the next caller; `pg_advisory_unlock_all()` for session advisory
    /// locks; `CLOSE ALL` (cursors `WITH HOLD`), `UNLISTEN *`, `DISCARD TEMP`,
    /// `DISCARD SEQUENCES`; and `DEALLOCATE` of the statements prepared with SQL `PREPARE`.
    /// MySQL/MariaDB: `ROLLBACK`, `UNLOCK TABLES`, `SET autocommit = 1` and
    /// `RELEASE_ALL_LOCKS()` (`GET_LOCK` locks); what this cannot undo (user variables, other
    /// settings, temporary tables) closes the connection instead (see
    /// [`Statement::leaves_state`](crate::sql::params::Statement::leaves_state)). SQLite:
    /// `ROLLBACK` only when a transaction is open.
    pub(crate) async fn reset(&mut self) -> Result<(), DriverError> {
        self.reset_session().await.map_err(DriverError)
    }

    async fn reset_session(&mut self) -> Result<(), sqlx::Error> {
        use sqlx::Executor;
        match self {
            DriverConnection::Postgres {
                conn,
                touched,
                pooled: Some(_),
                ..
            } => {
                // Behind a transaction-mode pooler nothing outlives a transaction (what would is
                // refused): ending the caller's is all there is to do.
                conn.execute(sqlx::raw_sql("ROLLBACK")).await?;
                *touched = false;
            }
            DriverConnection::Postgres { conn, touched, .. } => {
                // `RESET ALL` returns every setting to its connect-time value (the startup
                // parameters, `application_name` among them, stay); it leaves the role alone.
                conn.execute(sqlx::raw_sql(PG_RESET)).await?;
                *touched = false;
            }
            DriverConnection::Mysql { conn, .. } => {
                conn.execute(sqlx::raw_sql(
                    "ROLLBACK; UNLOCK TABLES; SET autocommit = 1; SELECT RELEASE_ALL_LOCKS()",
                ))
                .await?;
            }
            DriverConnection::Sqlite { conn, .. } => {
                // `ROLLBACK` without a transaction is an error on SQLite: ask first.
                let mut handle = conn.lock_handle().await?;
                let in_transaction = handle.in_transaction_public();
                drop(handle);
                if in_transaction {
                    conn.execute(sqlx::raw_sql("ROLLBACK")).await?;
                }
            }
        }
        Ok(())
    }

    /// Closes the connection politely.
    pub(crate) async fn close(self) {
        let _ = match self {
            DriverConnection::Postgres { conn, .. } => conn.close().await,
            DriverConnection::Mysql { conn, .. } => conn.close().await,
            DriverConnection::Sqlite { conn, .. } => conn.close().await,
        };
    }
}

/// A connect error in the TLS step, reworded to say which mode failed and what to set (the
/// client key's path taken out); any other error as it is (an unreadable file is an I/O error,
/// whose text names no path).
fn tls_error(tls: &crate::tls::Tls, e: sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Tls(cause) => sqlx::Error::Tls(tls.failure(&cause.to_string()).into()),
        // rustls reports a failed handshake (an unknown issuer, a wrong name) as invalid data
        // on the socket.
        sqlx::Error::Io(cause)
            if tls.mode != SslMode::Disable && cause.kind() == std::io::ErrorKind::InvalidData =>
        {
            sqlx::Error::Tls(tls.failure(&cause.to_string()).into())
        }
        e => e,
    }
}

/// Stops the statement running on one server connection, from another connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Canceller {
    /// `pg_cancel_backend(pid)`.
    Postgres(i32),
    /// `KILL QUERY id`.
    Mysql(u64),
}

impl Canceller {
    /// Opens a connection to `target` (named `trellis/POOL/cancel`, so it never counts as one of
    /// the pool's) and stops the statement. Whatever ran in its transaction is rolled back;
    /// a statement that already finished is not affected.
    pub(crate) async fn cancel(
        self,
        target: &DatabaseTarget,
        pool: &str,
        timeout: Duration,
    ) -> Result<(), DriverError> {
        self.cancel_on(target, pool, timeout)
            .await
            .map_err(DriverError)
    }

    async fn cancel_on(
        self,
        target: &DatabaseTarget,
        pool: &str,
        timeout: Duration,
    ) -> Result<(), sqlx::Error> {
        let mut conn = DriverConnection::open(
            target,
            &format!("{pool}/cancel"),
            None,
            Pooler::None,
            timeout,
        )
        .await?;
        let result = match (&mut conn, self) {
            (DriverConnection::Postgres { conn, .. }, Canceller::Postgres(pid)) => {
                sqlx::query("SELECT pg_cancel_backend($1)")
                    .bind(pid)
                    .execute(&mut *conn)
                    .await
                    .map(drop)
            }
            (DriverConnection::Mysql { conn, .. }, Canceller::Mysql(id)) => {
                use sqlx::Executor;
                // `KILL` takes no placeholder; `id` is a number.
                conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "KILL QUERY {id}"
                ))))
                .await
                .map(drop)
                .or_else(|e| {
                    // 1094 "unknown thread id": the session ended, and its statement with it.
                    let gone =
                        e.as_database_error().and_then(|d| d.code()).as_deref() == Some("1094");
                    if gone { Ok(()) } else { Err(e) }
                })
            }
            _ => Ok(()),
        };
        conn.close().await;
        result
    }
}

/// The PostgreSQL reset (see [`DriverConnection::reset`]), one round trip. `DISCARD ALL` would
/// also drop the driver's cached prepared statements (its next use of one would fail).
const PG_RESET: &str = "ROLLBACK; RESET ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; \
    SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; DISCARD TEMP; DISCARD SEQUENCES; \
    DO $$ DECLARE s record; BEGIN \
    FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP \
    EXECUTE format('DEALLOCATE %I', s.name); END LOOP; END $$";

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

/// The connect options, TLS settings included, for a PostgreSQL `target` (none for another
/// kind): for a connection the pool does not own, such as the control plane's LISTEN.
pub(crate) fn pg_options(
    target: &DatabaseTarget,
    application_name: &str,
) -> Option<PgConnectOptions> {
    pg_target(target, application_name).map(|(options, tls)| apply_pg(tls, options))
}

/// The connect options for a PostgreSQL `target` before its TLS settings, and those settings.
fn pg_target<'a>(
    target: &'a DatabaseTarget,
    application_name: &str,
) -> Option<(PgConnectOptions, &'a Tls)> {
    let DatabaseTarget::Server {
        kind: DatabaseKind::Postgres,
        host,
        port,
        database,
        user,
        password,
        tls,
    } = target
    else {
        return None;
    };
    let mut options = PgConnectOptions::new()
        .host(host)
        .port(*port)
        .database(database)
        .username(user)
        .application_name(application_name)
        .disable_statement_logging();
    if let Some(password) = password {
        options = options.password(password.expose());
    }
    Some((options, tls))
}

/// Applies these settings to PostgreSQL connect options.
fn apply_pg(
    tls: &Tls,
    options: sqlx::postgres::PgConnectOptions,
) -> sqlx::postgres::PgConnectOptions {
    use sqlx::postgres::PgSslMode;
    let mut options = options.ssl_mode(match tls.mode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    });
    if let Some(ca) = &tls.root_cert {
        options = options.ssl_root_cert(ca);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        options = options.ssl_client_cert(cert).ssl_client_key(key.expose());
    }
    options
}

/// Applies these settings to MySQL/MariaDB connect options.
fn apply_mysql(
    tls: &Tls,
    options: sqlx::mysql::MySqlConnectOptions,
) -> sqlx::mysql::MySqlConnectOptions {
    use sqlx::mysql::MySqlSslMode;
    let mut options = options.ssl_mode(match tls.mode {
        SslMode::Disable => MySqlSslMode::Disabled,
        SslMode::Prefer => MySqlSslMode::Preferred,
        SslMode::Require => MySqlSslMode::Required,
        SslMode::VerifyCa => MySqlSslMode::VerifyCa,
        SslMode::VerifyFull => MySqlSslMode::VerifyIdentity,
    });
    if let Some(ca) = &tls.root_cert {
        options = options.ssl_ca(ca);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        options = options.ssl_client_cert(cert).ssl_client_key(key.expose());
    }
    options
}
