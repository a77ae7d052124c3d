//! The tracking table `trellis_migrations`: one row per migration id, per dialect.
//!
//! A row is *applied* when `success` is true, `dirty` is false and `rolled_back_at` is null. A
//! failed attempt in a transaction leaves `success = false` with the error (the schema was rolled
//! back, so the next run tries again). A step outside a transaction sets `dirty` before it starts
//! and clears it when it succeeds; a dirty row blocks every run until it is resolved.

use serde_json::{Value, json};

use crate::config::values::DatabaseKind;
use crate::pool::{Lease, PoolError};
use crate::sql::exec::Fetch;
use crate::sql::params::Params;
use crate::sql::row::Row;

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The migration id.
    pub id: String,
    /// Its description when it last ran.
    pub description: String,
    /// SHA-256 of what ran.
    pub checksum: String,
    /// When it was (last) applied or attempted.
    pub applied_at: Option<String>,
    /// Who applied it.
    pub applied_by: Option<String>,
    /// How long the step took, in milliseconds.
    pub execution_ms: Option<i64>,
    /// Whether the step succeeded.
    pub success: bool,
    /// The error of a failed attempt.
    pub error: Option<String>,
    /// A step outside a transaction started and did not finish cleanly.
    pub dirty: bool,
    /// When it was rolled back.
    pub rolled_back_at: Option<String>,
    /// Who rolled it back.
    pub rolled_back_by: Option<String>,
}

impl HistoryRow {
    /// Whether the migration is in effect.
    pub fn is_applied(&self) -> bool {
        self.success && !self.dirty && self.rolled_back_at.is_none()
    }
}

/// `CREATE TABLE IF NOT EXISTS trellis_migrations …` for `kind`.
pub fn create_table_sql(kind: DatabaseKind) -> &'static str {
    match kind {
        DatabaseKind::Postgres => {
            "CREATE TABLE IF NOT EXISTS trellis_migrations (
    id VARCHAR(255) PRIMARY KEY,
    description TEXT NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    applied_at TIMESTAMPTZ,
    applied_by VARCHAR(255),
    execution_ms BIGINT,
    success BOOLEAN NOT NULL,
    error TEXT,
    dirty BOOLEAN NOT NULL DEFAULT FALSE,
    rolled_back_at TIMESTAMPTZ,
    rolled_back_by VARCHAR(255)
)"
        }
        DatabaseKind::Mysql => {
            "CREATE TABLE IF NOT EXISTS trellis_migrations (
    id VARCHAR(255) NOT NULL PRIMARY KEY,
    description TEXT NOT NULL,
    checksum VARCHAR(64) NOT NULL,
    applied_at DATETIME(6) NULL,
    applied_by VARCHAR(255) NULL,
    execution_ms BIGINT NULL,
    success BOOLEAN NOT NULL,
    error TEXT NULL,
    dirty BOOLEAN NOT NULL DEFAULT FALSE,
    rolled_back_at DATETIME(6) NULL,
    rolled_back_by VARCHAR(255) NULL
)"
        }
        DatabaseKind::Sqlite => {
            "CREATE TABLE IF NOT EXISTS trellis_migrations (
    id TEXT NOT NULL PRIMARY KEY,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT,
    applied_by TEXT,
    execution_ms INTEGER,
    success BOOLEAN NOT NULL,
    error TEXT,
    dirty BOOLEAN NOT NULL DEFAULT FALSE,
    rolled_back_at TEXT,
    rolled_back_by TEXT
)"
        }
    }
}

/// The current time as the database writes it into the timestamp columns.
fn now(kind: DatabaseKind) -> &'static str {
    match kind {
        DatabaseKind::Postgres => "clock_timestamp()",
        DatabaseKind::Mysql => "NOW(6)",
        DatabaseKind::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    }
}

const COLUMNS: &str = "id, description, checksum, applied_at, applied_by, execution_ms, success, error, dirty, rolled_back_at, rolled_back_by";

fn named(value: Value) -> Params {
    match value {
        Value::Object(map) => Params::Named(map),
        _ => Params::None,
    }
}

/// Whether the table exists.
pub async fn exists(lease: &Lease, kind: DatabaseKind) -> Result<bool, PoolError> {
    let sql = match kind {
        DatabaseKind::Postgres => {
            "SELECT 1 AS found FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'trellis_migrations'"
        }
        DatabaseKind::Mysql => {
            "SELECT 1 AS found FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'trellis_migrations'"
        }
        DatabaseKind::Sqlite => {
            "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = 'trellis_migrations'"
        }
    };
    let out = lease.execute(sql, &Params::None, Fetch::One).await?;
    Ok(!out.rows.is_empty())
}

/// Every row, by id.
pub async fn read_all(lease: &Lease) -> Result<Vec<HistoryRow>, PoolError> {
    let sql = format!("SELECT {COLUMNS} FROM trellis_migrations ORDER BY id");
    let out = lease.execute(&sql, &Params::None, Fetch::All).await?;
    Ok(out.rows.iter().map(row).collect())
}

/// The row of `id`.
pub async fn read_one(lease: &Lease, id: &str) -> Result<Option<HistoryRow>, PoolError> {
    let sql = format!("SELECT {COLUMNS} FROM trellis_migrations WHERE id = :id");
    let out = lease
        .execute(&sql, &named(json!({ "id": id })), Fetch::One)
        .await?;
    Ok(out.rows.first().map(row))
}

/// What a new row says.
pub(crate) struct NewRow<'a> {
    pub id: &'a str,
    pub description: &'a str,
    pub checksum: &'a str,
    pub by: &'a str,
    pub execution_ms: Option<i64>,
    pub success: bool,
    pub error: Option<&'a str>,
    pub dirty: bool,
}

/// Replaces the row of `row.id` (applied or attempted now).
pub(crate) async fn put(
    lease: &Lease,
    kind: DatabaseKind,
    row: NewRow<'_>,
) -> Result<(), PoolError> {
    lease
        .execute(
            "DELETE FROM trellis_migrations WHERE id = :id",
            &named(json!({ "id": row.id })),
            Fetch::All,
        )
        .await?;
    let sql = format!(
        "INSERT INTO trellis_migrations ({COLUMNS}) VALUES (:id, :description, :checksum, {now}, :by, :ms, {success}, :error, {dirty}, NULL, NULL)",
        now = now(kind),
        success = if row.success { "TRUE" } else { "FALSE" },
        dirty = if row.dirty { "TRUE" } else { "FALSE" },
    );
    lease
        .execute(
            &sql,
            &named(json!({
                "id": row.id,
                "description": row.description,
                "checksum": row.checksum,
                "by": row.by,
                "ms": row.execution_ms,
                "error": row.error,
            })),
            Fetch::All,
        )
        .await?;
    Ok(())
}

/// Marks `id` applied by a step that finished (after [`put`] marked it dirty).
pub(crate) async fn finish_applied(
    lease: &Lease,
    id: &str,
    execution_ms: i64,
) -> Result<(), PoolError> {
    lease
        .execute(
            "UPDATE trellis_migrations SET success = TRUE, dirty = FALSE, error = NULL, execution_ms = :ms WHERE id = :id",
            &named(json!({ "id": id, "ms": execution_ms })),
            Fetch::All,
        )
        .await?;
    Ok(())
}

/// Records `error` on `id`; `dirty` says whether the row blocks later runs.
pub(crate) async fn set_error(
    lease: &Lease,
    id: &str,
    error: &str,
    dirty: bool,
) -> Result<(), PoolError> {
    let sql = format!(
        "UPDATE trellis_migrations SET error = :error, dirty = {} WHERE id = :id",
        if dirty { "TRUE" } else { "FALSE" }
    );
    lease
        .execute(
            &sql,
            &named(json!({ "id": id, "error": error })),
            Fetch::All,
        )
        .await?;
    Ok(())
}

/// Marks `id` rolled back now by `by`.
pub(crate) async fn mark_rolled_back(
    lease: &Lease,
    kind: DatabaseKind,
    id: &str,
    by: &str,
) -> Result<(), PoolError> {
    let sql = format!(
        "UPDATE trellis_migrations SET rolled_back_at = {}, rolled_back_by = :by, dirty = FALSE, error = NULL WHERE id = :id",
        now(kind)
    );
    lease
        .execute(&sql, &named(json!({ "id": id, "by": by })), Fetch::All)
        .await?;
    Ok(())
}

/// Clears the dirty marker of `id`, recording it as applied or as not applied.
pub(crate) async fn resolve(
    lease: &Lease,
    id: &str,
    applied: bool,
    by: &str,
) -> Result<(), PoolError> {
    let sql = if applied {
        "UPDATE trellis_migrations SET dirty = FALSE, success = TRUE, error = NULL, rolled_back_at = NULL, rolled_back_by = NULL WHERE id = :id"
    } else {
        "UPDATE trellis_migrations SET dirty = FALSE, success = FALSE, error = :note WHERE id = :id"
    };
    let params = if applied {
        json!({ "id": id })
    } else {
        json!({ "id": id, "note": format!("resolved as not applied by {by}") })
    };
    lease.execute(sql, &named(params), Fetch::All).await?;
    Ok(())
}

fn row(r: &Row) -> HistoryRow {
    let text = |k: &str| match r.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let flag = |k: &str| match r.get(k) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        Some(Value::String(s)) => s == "1" || s.eq_ignore_ascii_case("true"),
        _ => false,
    };
    HistoryRow {
        id: text("id").unwrap_or_default(),
        description: text("description").unwrap_or_default(),
        checksum: text("checksum").unwrap_or_default(),
        applied_at: text("applied_at"),
        applied_by: text("applied_by"),
        execution_ms: r.get("execution_ms").and_then(Value::as_i64),
        success: flag("success"),
        error: text("error"),
        dirty: flag("dirty"),
        rolled_back_at: text("rolled_back_at"),
        rolled_back_by: text("rolled_back_by"),
    }
}
