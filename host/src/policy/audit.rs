//! The audit trail: one record per decision (time, user, action, resource, decision, deciding
//! policies, generation, errors, latency, masks applied), written as JSON lines to a file by a
//! background thread, or into the table `policy_audit` of a SQLite, PostgreSQL or MySQL/MariaDB
//! database by a background task, so that deciding never waits on a disk. Records that cannot be queued or written are counted in
//! [`AuditLog::dropped`], never silently lost.

use crate::sql::{Fetch, Params};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;

use serde::Serialize;

/// One decision, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditRecord {
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The user's id.
    pub user_id: String,
    /// The Cedar action (`node:execute`, `mask`, …).
    pub action: String,
    /// `node:ID` or `workflow:ID`.
    pub resource: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The deciding policy ids.
    pub policies: Vec<String>,
    /// The policy generation that decided.
    pub generation: u64,
    /// Evaluation errors (any makes the decision a deny).
    pub errors: Vec<String>,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
    /// Whether the decision came from the cache.
    pub cached: bool,
    /// For masking: `field_path:mask_type` of each mask applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<String>,
}

/// Why the audit log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file could not be opened.
    #[error("cannot open the audit log `{path}`", path = path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The table could not be created.
    #[error("cannot create the audit table `policy_audit` in database `{database}`")]
    Table {
        /// The database's configured name.
        database: String,
        /// The pool's error.
        #[source]
        source: Box<crate::pool::PoolError>,
    },
}

enum Message {
    Record(Box<AuditRecord>),
    Flush(mpsc::Sender<()>),
}

/// A JSON-lines audit file fed through a bounded queue.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Message>>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    writer: Option<JoinHandle<()>>,
    recent: std::sync::Mutex<std::collections::VecDeque<AuditRecord>>,
    recent_capacity: usize,
}

impl AuditLog {
    /// Appends to `path` (created if missing), with room for `capacity` queued records.
    pub fn open(path: &Path, capacity: usize) -> Result<AuditLog, AuditError> {
        let file = crate::private_fs::create_parent(path)
            .and_then(|()| crate::private_fs::open_append(path))
            .map_err(|source| AuditError::File {
                path: path.to_owned(),
                source,
            })?;
        let (tx, rx) = mpsc::sync_channel::<Message>(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (d, w) = (dropped.clone(), written.clone());
        let writer = std::thread::Builder::new()
            .name("trellis-audit".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(msg) = rx.recv() {
                    let mut batch = vec![msg];
                    // Let a burst gather: one wake-up per batch, not one per decision (a
                    // sender only wakes this thread while it waits in `recv`).
                    std::thread::sleep(COALESCE);
                    batch.extend(rx.try_iter());
                    let mut flushes = Vec::new();
                    for msg in batch {
                        match msg {
                            Message::Record(r) => {
                                let ok = serde_json::to_writer(&mut out, &r).is_ok()
                                    && out.write_all(b"\n").is_ok();
                                if ok { &w } else { &d }.fetch_add(1, Ordering::Relaxed);
                            }
                            Message::Flush(done) => flushes.push(done),
                        }
                    }
                    if out.flush().is_err() {
                        tracing::error!("cannot write the audit log");
                    }
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|source| AuditError::File {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped,
            written,
            writer: Some(writer),
            recent: Default::default(),
            recent_capacity: 0,
        })
    }

    /// Writes into the table `policy_audit` of the SQLite, PostgreSQL or MySQL/MariaDB database
    /// behind `pool` (created if missing), with room for `capacity` queued records. Must be
    /// called inside a Tokio runtime.
    pub async fn open_database(
        pool: &crate::pool::Pool,
        capacity: usize,
    ) -> Result<AuditLog, AuditError> {
        let table_error = |source| AuditError::Table {
            database: pool.name().to_owned(),
            source: Box::new(source),
        };
        let lease = pool.acquire().await.map_err(table_error)?;
        lease
            .execute(&create_table(pool.kind()), &Params::None, Fetch::All)
            .await
            .map_err(table_error)?;
        drop(lease);
        let pool = pool.clone();
        let (tx, rx) = mpsc::sync_channel::<Message>(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (d, w) = (dropped.clone(), written.clone());
        let handle = tokio::runtime::Handle::current();
        // A plain thread receives (so `record` never needs a runtime) and drives the inserts.
        let writer = std::thread::Builder::new()
            .name("trellis-audit-db".into())
            .spawn(move || {
                while let Ok(msg) = rx.recv() {
                    let mut batch = vec![msg];
                    // Let a burst gather: one wake-up per batch, not one per decision (a
                    // sender only wakes this thread while it waits in `recv`).
                    std::thread::sleep(COALESCE);
                    batch.extend(rx.try_iter());
                    let mut flushes = Vec::new();
                    let mut records = Vec::new();
                    for msg in batch {
                        match msg {
                            Message::Record(r) => records.push(r),
                            Message::Flush(done) => flushes.push(done),
                        }
                    }
                    let n = records.len() as u64;
                    match handle.block_on(insert(&pool, &records)) {
                        Ok(()) => w.fetch_add(n, Ordering::Relaxed),
                        Err(e) => {
                            tracing::error!("cannot write the audit table: {e}");
                            d.fetch_add(n, Ordering::Relaxed)
                        }
                    };
                    for done in flushes {
                        let _ = done.send(());
                    }
                }
            })
            .map_err(|source| AuditError::File {
                path: PathBuf::from("policy_audit"),
                source,
            })?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped,
            written,
            writer: Some(writer),
            recent: Default::default(),
            recent_capacity: 0,
        })
    }

    /// Queues `record`; when the queue is full the record is counted as dropped.
    pub fn record(&self, record: AuditRecord) {
        if self.recent_capacity > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= self.recent_capacity {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An audit log that only keeps the `capacity` most recent records in memory (no file or
    /// table): for `[policy] audit = false`.
    pub fn memory_only(capacity: usize) -> AuditLog {
        AuditLog {
            tx: None,
            dropped: Arc::default(),
            written: Arc::default(),
            writer: None,
            recent: Default::default(),
            recent_capacity: capacity,
        }
    }

    /// Also keeps the `capacity` most recent records in memory, for [`AuditLog::recent`].
    pub fn with_recent(mut self, capacity: usize) -> AuditLog {
        self.recent_capacity = capacity;
        self
    }

    /// The `limit` most recent records, newest first.
    pub fn recent(&self, limit: usize) -> Vec<AuditRecord> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.iter().rev().take(limit).cloned().collect()
    }

    /// Waits until every record queued so far is written.
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::channel();
        if tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    /// Records that could not be queued or written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// The table, in `kind`'s dialect: only the auto-numbered key differs.
fn create_table(kind: crate::config::DatabaseKind) -> String {
    use crate::config::DatabaseKind;
    let id = match kind {
        DatabaseKind::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        DatabaseKind::Postgres => "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        DatabaseKind::Mysql => "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    };
    format!("CREATE TABLE IF NOT EXISTS policy_audit ({id}, {COLUMNS})")
}

/// How long the writer lets records gather after the first one of a batch.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(2);

/// The audit table's columns after `id`, the same on every database (`BIGINT` is a 64-bit
/// integer on all three).
const COLUMNS: &str = "time TEXT NOT NULL, user_id TEXT NOT NULL, action TEXT NOT NULL, \
    resource TEXT NOT NULL, decision TEXT NOT NULL, policies TEXT NOT NULL, \
    generation BIGINT NOT NULL, errors TEXT NOT NULL, latency_us BIGINT NOT NULL, \
    cached INTEGER NOT NULL, masks TEXT NOT NULL";

/// Inserts a batch in one transaction, on one lease.
async fn insert(
    pool: &crate::pool::Pool,
    records: &[Box<AuditRecord>],
) -> Result<(), crate::pool::PoolError> {
    let lease = pool.acquire().await?;
    lease.execute("BEGIN", &Params::None, Fetch::All).await?;
    for r in records {
        let params = serde_json::json!({
            "time": r.time, "user_id": r.user_id, "action": r.action, "resource": r.resource,
            "decision": r.decision,
            "policies": serde_json::to_string(&r.policies).unwrap_or_default(),
            "generation": r.generation,
            "errors": serde_json::to_string(&r.errors).unwrap_or_default(),
            // Numbers, not booleans: every dialect stores `cached` as an integer 0 or 1.
            "latency_us": r.latency_us, "cached": i64::from(r.cached),
            "masks": serde_json::to_string(&r.masks).unwrap_or_default(),
        });
        let serde_json::Value::Object(params) = params else {
            unreachable!("a json! object literal is an object")
        };
        lease
            .execute(
                "INSERT INTO policy_audit (time, user_id, action, resource, decision, policies, generation, errors, latency_us, cached, masks) \
                 VALUES (:time, :user_id, :action, :resource, :decision, :policies, :generation, :errors, :latency_us, :cached, :masks)",
                &Params::Named(params),
                Fetch::All,
            )
            .await?;
    }
    // A failed insert leaves the transaction open: dropping the lease rolls it back.
    lease.execute("COMMIT", &Params::None, Fetch::All).await?;
    Ok(())
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
