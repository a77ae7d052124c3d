//! The database lock that serializes migration runners.
//!
//! PostgreSQL: `pg_advisory_lock` on a key derived from the current schema; MariaDB/MySQL:
//! `GET_LOCK` on a name derived from the current database. Both are held by the session, so a
//! runner that dies (process killed, connection lost) releases them with its connection. SQLite
//! has no session lock: the runner opens an immediate (write-locking) transaction around each
//! step instead, so [`DbLock::acquire`] holds nothing there. Nor does PostgreSQL behind a
//! transaction-mode pooler, where a session lock would stay with a server session the runner
//! may never see again: each step's transaction takes `pg_advisory_xact_lock` on the same key
//! ([`step_lock_sql`]).
//!
//! [`DbLock::release`] unlocks and gives the connection back; a lock dropped without it (a
//! cancelled run) rolls back and unlocks from a spawned task before the connection returns to
//! the pool.

use std::time::Duration;

use crate::config::values::DatabaseKind;
use crate::pool::{Lease, PoolError};
use crate::sql::exec::Fetch;
use crate::sql::params::{self, Params};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LockError {
    /// Another runner held it for the whole wait.
    #[error("another migration runner held the lock for {0:?}")]
    #[diagnostic(help(
        "wait for it to finish; a runner that died releases the lock with its connection"
    ))]
    Timeout(Duration),
    /// The database failed.
    #[error("cannot take the migration lock")]
    Database(#[source] PoolError),
}

/// The migration lock, held on one leased connection.
pub struct DbLock {
    lease: Option<Lease>,
    kind: DatabaseKind,
    held: bool,
}

impl std::fmt::Debug for DbLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbLock({}, held: {})", self.kind, self.held)
    }
}

/// PostgreSQL behind a transaction-mode pooler: opens a step's transaction and takes the
/// migration lock for it, waiting at most `wait` (`lock_timeout`; `55P03` when it passes).
pub(crate) fn step_lock_sql(wait: Duration) -> String {
    let ms = wait.as_millis().clamp(1, i32::MAX as u128);
    format!(
        "BEGIN; SET LOCAL lock_timeout = {ms}; \
         SELECT pg_advisory_xact_lock(hashtext('trellis_migrations.' || current_schema()))"
    )
}

fn lock_sql(kind: DatabaseKind) -> Option<(&'static str, &'static str)> {
    match kind {
        DatabaseKind::Postgres => Some((
            "SELECT pg_advisory_lock(hashtext('trellis_migrations.' || current_schema())) AS got",
            "SELECT pg_advisory_unlock(hashtext('trellis_migrations.' || current_schema())) AS released",
        )),
        DatabaseKind::Mysql => Some((
            "SELECT GET_LOCK(CONCAT('trellis_migrations.', MD5(DATABASE())), :wait) AS got",
            "SELECT RELEASE_LOCK(CONCAT('trellis_migrations.', MD5(DATABASE()))) AS released",
        )),
        DatabaseKind::Sqlite => None,
    }
}

impl DbLock {
    /// Holds `lease` without a session lock: each step's transaction locks (SQLite, PostgreSQL
    /// behind a transaction-mode pooler).
    pub fn per_step(lease: Lease, kind: DatabaseKind) -> DbLock {
        DbLock {
            lease: Some(lease),
            kind,
            held: false,
        }
    }

    /// Takes the lock on `lease`, waiting at most `wait`.
    pub async fn acquire(
        lease: Lease,
        kind: DatabaseKind,
        wait: Duration,
    ) -> Result<DbLock, LockError> {
        let Some((lock, _)) = lock_sql(kind) else {
            return Ok(DbLock::per_step(lease, kind));
        };
        let got = match kind {
            DatabaseKind::Mysql => {
                let mut p = serde_json::Map::new();
                p.insert("wait".into(), wait.as_secs().max(1).into());
                let out = lease
                    .execute(lock, &Params::Named(p), Fetch::One)
                    .await
                    .map_err(LockError::Database)?;
                // 1: taken; 0: timed out; NULL: an error.
                out.rows
                    .first()
                    .and_then(|r| r.get("got"))
                    .and_then(|v| v.as_i64())
                    == Some(1)
            }
            _ => {
                let stmt = params::prepare(lock, &Params::None, kind)
                    .map_err(|e| LockError::Database(PoolError::Query(e.into())))?;
                match lease.run_with_timeout(stmt, Fetch::One, Some(wait)).await {
                    Ok(_) => true,
                    // The connection was closed, and with it the wait.
                    Err(PoolError::Query(crate::pool::QueryError::Timeout(_))) => false,
                    Err(e) => return Err(LockError::Database(e)),
                }
            }
        };
        if !got {
            return Err(LockError::Timeout(wait));
        }
        tracing::debug!(database = %kind, "migration lock taken");
        Ok(DbLock {
            lease: Some(lease),
            kind,
            held: true,
        })
    }

    /// The connection the lock is held on.
    pub fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .expect("the lease is only taken on release")
    }

    /// Whether a session lock is held (false on SQLite).
    pub fn is_session_lock(&self) -> bool {
        self.held
    }

    /// Unlocks and gives the connection back.
    pub async fn release(mut self) -> Result<(), PoolError> {
        let lease = self.lease.take();
        let held = std::mem::take(&mut self.held);
        if let (true, Some(lease)) = (held, lease) {
            unlock(&lease, self.kind).await?;
        }
        Ok(())
    }
}

async fn unlock(lease: &Lease, kind: DatabaseKind) -> Result<(), PoolError> {
    if let Some((_, unlock)) = lock_sql(kind) {
        lease.execute(unlock, &Params::None, Fetch::One).await?;
        tracing::debug!(database = %kind, "migration lock released");
    }
    Ok(())
}

impl Drop for DbLock {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        if let Some(lease) = self.lease.take() {
            let kind = self.kind;
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    handle.spawn(async move {
                        // End the interrupted step's transaction before another runner can
                        // take the lock (a warning only, when none is open).
                        let _ = lease.execute("ROLLBACK", &Params::None, Fetch::All).await;
                        if let Err(e) = unlock(&lease, kind).await {
                            tracing::warn!(error = %e, "cannot release the migration lock");
                        }
                    });
                }
                Err(_) => tracing::warn!(
                    "migration lock dropped outside a runtime: it is released when the connection closes"
                ),
            }
        }
    }
}
