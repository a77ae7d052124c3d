//! Classifying database errors, so callers can tell "database down" from "pool exhausted" from
//! "bad SQL", and so that only transient failures are retried.

use serde::Serialize;

/// The kind of a failure, as reported to callers (`"kind"` in JSON error bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The database cannot be reached, or the connection broke.
    Connection,
    /// A statement or an acquire overran its time limit.
    Timeout,
    /// The database rejected the statement (syntax, constraint, permission, …).
    Query,
    /// The node or pool is misconfigured, or a parameter is wrong.
    Configuration,
    /// Every connection is busy and none was freed in time.
    PoolExhausted,
}

/// SQLSTATE classes and codes after which the connection cannot be trusted.
fn is_connection_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(code, "57P01" | "57P02" | "57P03") // admin/crash shutdown, cannot connect now
}

/// Whether `error` means the connection itself is gone or unusable.
pub(super) fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| is_connection_sqlstate(&c))
                // MySQL/MariaDB: server shutdown, connection killed, lost connection.
                || matches!(mysql_errno(db.as_ref()), Some(1053 | 1077 | 1152 | 1927 | 2006 | 2013))
        }
        _ => false,
    }
}

/// Whether running the same statement again may succeed: connection loss, serialization
/// failure, deadlock, or a busy SQLite file. Never syntax, constraint or permission errors.
pub(super) fn is_transient(error: &sqlx::Error) -> bool {
    if is_connection_error(error) {
        return true;
    }
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            matches!(code, "40001" | "40P01")
                || matches!(mysql_errno(db.as_ref()), Some(1213 | 1205))
                // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
                || (db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some()
                    && code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)))
        }
        _ => false,
    }
}

/// The SQLSTATE of a database error, if it has one.
pub(super) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A one-line description of a database error for users: the server's message, its detail and
/// hint, the SQLSTATE and, on PostgreSQL, the character position in the query.
pub(super) fn describe(error: &sqlx::Error) -> String {
    let sqlx::Error::Database(db) = error else {
        return error.to_string();
    };
    let mut out = db.message().to_owned();
    let mut notes = Vec::new();
    if let Some(code) = db.code() {
        notes.push(format!("SQLSTATE {code}"));
    }
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        if let Some(sqlx::postgres::PgErrorPosition::Original(at)) = pg.position() {
            notes.push(format!("at character {at}"));
        }
        if let Some(detail) = pg.detail() {
            out.push_str(": ");
            out.push_str(detail);
        }
        if let Some(hint) = pg.hint() {
            notes.push(format!("server hint: {hint}"));
        }
    }
    if let Some(errno) = mysql_errno(db.as_ref()) {
        notes.push(format!("error {errno}"));
    }
    if !notes.is_empty() {
        out.push_str(" (");
        out.push_str(&notes.join(", "));
        out.push(')');
    }
    out
}

fn mysql_errno(db: &dyn sqlx::error::DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|e| e.number())
}

/// What the database or its driver reported about a statement. The rest of the host asks it
/// what it needs through these methods, so no sqlx type leaves this module.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DatabaseError(#[from] sqlx::Error);

impl DatabaseError {
    /// Whether the connection itself is gone or unusable.
    pub fn is_connection_error(&self) -> bool {
        is_connection_error(&self.0)
    }

    /// Whether trying again on another connection may succeed.
    pub fn is_transient(&self) -> bool {
        is_transient(&self.0)
    }

    /// The SQLSTATE (MySQL's error number, as text, where there is no SQLSTATE).
    pub fn sqlstate(&self) -> Option<String> {
        sqlstate(&self.0)
    }

    /// The message, without the driver's wrapping.
    pub fn describe(&self) -> String {
        describe(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_connection_errors_and_transient() {
        let e = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_connection_error(&e));
        assert!(is_transient(&e));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_connection_error(&sqlx::Error::ColumnNotFound(
            "x".into()
        )));
    }

    #[test]
    fn sqlstates() {
        assert!(is_connection_sqlstate("08006"));
        assert!(is_connection_sqlstate("57P01"));
        assert!(!is_connection_sqlstate("42601"));
    }
}
