//! The audit trail: one record per decision (time, user, action, resource, decision, deciding
//! policies, generation, errors, latency, masks applied), written as JSON lines to a file by a
//! background thread, or into the table `policy_audit` of a SQLite, PostgreSQL or MySQL/MariaDB
//! database by a background task, so that deciding never waits on a disk.
//!
//! The file is rotated by size and age, and only the newest rotated files are kept. When
//! records cannot be written (a full disk, the audit database gone), what happens is the
//! operator's choice ([`OnFailure`]): by default the host **refuses** requests that would
//! decide anything ([`AuditLog::refusing`]), keeps the unwritten records and retries them every
//! second, and serves again once they are written; or it keeps **serving** and counts every
//! lost record in [`AuditLog::dropped`] (`trellis_audit_records_dropped` on `/metrics`).
//! Nothing is silently lost either way.

use crate::sql::{Fetch, Params};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

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

/// What to do when audit records cannot be written (`[policy] audit_on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Refuse requests that decide anything until the records are written again (default).
    #[default]
    Refuse,
    /// Keep serving; count every record that is lost.
    Serve,
}

/// When the audit file is rotated, and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file is this large (`[policy] audit_max_bytes`, default 100 MiB).
    pub max_bytes: u64,
    /// Rotate once the file has been written for this long (`audit_max_age`, default 1 day).
    pub max_age: Duration,
    /// Rotated files kept; older ones are deleted (`audit_keep`, default 10).
    pub keep: usize,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation {
            max_bytes: 100 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            keep: 10,
        }
    }
}

enum Message {
    Record(Box<AuditRecord>),
    Flush(mpsc::Sender<()>),
}

/// What the writer and the request path share.
#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    /// The last write failed, and records wait to be written again.
    failing: AtomicBool,
}

/// A JSON-lines audit file (or table) fed through a bounded queue.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Message>>,
    shared: Arc<Shared>,
    on_failure: OnFailure,
    writer: Option<JoinHandle<()>>,
    recent: std::sync::Mutex<std::collections::VecDeque<AuditRecord>>,
    recent_capacity: usize,
}

/// Where a writer puts a batch of records.
trait Sink: Send + 'static {
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), String>;
}

/// The most records kept for a retry while writes fail (refuse mode); beyond it the oldest are
/// dropped and counted.
const MAX_PENDING: usize = 100_000;
/// How often unwritten records are tried again.
const RETRY: Duration = Duration::from_secs(1);

impl AuditLog {
    /// Appends to `path` (created if missing), with room for `capacity` queued records, with the
    /// default rotation and failure policy.
    pub fn open(path: &Path, capacity: usize) -> Result<AuditLog, AuditError> {
        AuditLog::open_file(path, capacity, Rotation::default(), OnFailure::default())
    }

    /// Appends to `path` (created 0600 if missing, in a 0700 directory), rotating it as
    /// `rotation` says.
    pub fn open_file(
        path: &Path,
        capacity: usize,
        rotation: Rotation,
        on_failure: OnFailure,
    ) -> Result<AuditLog, AuditError> {
        let sink = FileSink::open(path, rotation).map_err(|source| AuditError::File {
            path: path.to_owned(),
            source,
        })?;
        AuditLog::spawn("trellis-audit", sink, capacity, on_failure).map_err(|source| {
            AuditError::File {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Writes into the table `policy_audit` of the SQLite, PostgreSQL or MySQL/MariaDB database
    /// behind `pool` (created if missing), with room for `capacity` queued records. Must be
    /// called inside a Tokio runtime.
    pub async fn open_database(
        pool: &crate::pool::Pool,
        capacity: usize,
    ) -> Result<AuditLog, AuditError> {
        AuditLog::open_table(pool, capacity, OnFailure::default()).await
    }

    /// [`AuditLog::open_database`] with a failure policy.
    pub async fn open_table(
        pool: &crate::pool::Pool,
        capacity: usize,
        on_failure: OnFailure,
    ) -> Result<AuditLog, AuditError> {
        let table_error = |source| AuditError::Table {
            database: pool.name().to_owned(),
            source: Box::new(source),
        };
        create(pool).await.map_err(table_error)?;
        let sink = TableSink {
            pool: pool.clone(),
            handle: tokio::runtime::Handle::current(),
            failed: false,
        };
        AuditLog::spawn("trellis-audit-db", sink, capacity, on_failure).map_err(|source| {
            AuditError::File {
                path: PathBuf::from("policy_audit"),
                source,
            }
        })
    }

    /// Starts the writer thread over `sink`. A plain thread receives, so `record` never needs a
    /// runtime.
    fn spawn(
        name: &str,
        mut sink: impl Sink,
        capacity: usize,
        on_failure: OnFailure,
    ) -> std::io::Result<AuditLog> {
        let (tx, rx) = mpsc::sync_channel::<Message>(capacity.max(1));
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let writer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || write_loop(&rx, &mut sink, &state, on_failure))?;
        Ok(AuditLog {
            tx: Some(tx),
            shared,
            on_failure,
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
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// An audit log that only keeps the `capacity` most recent records in memory (no file or
    /// table): for `[policy] audit = false`.
    pub fn memory_only(capacity: usize) -> AuditLog {
        AuditLog {
            tx: None,
            shared: Arc::default(),
            on_failure: OnFailure::Serve,
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

    /// Waits until every record queued so far is written (or, while writes fail, tried).
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done_tx, done_rx) = mpsc::channel();
        if tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv();
        }
    }

    /// Records that could not be queued or written, and are lost.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records written.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Whether the last write failed (records wait to be written again, or were lost).
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// Whether requests must be refused now: writes fail and `audit_on_failure = "refuse"`.
    pub fn refusing(&self) -> bool {
        self.on_failure == OnFailure::Refuse && self.failing()
    }
}

/// The writer: gathers a burst of records, writes them in one go; on failure keeps them for a
/// retry every [`RETRY`] (refuse mode) or counts them lost (serve mode).
fn write_loop(
    rx: &mpsc::Receiver<Message>,
    sink: &mut impl Sink,
    shared: &Shared,
    on_failure: OnFailure,
) {
    let mut pending: Vec<AuditRecord> = Vec::new();
    loop {
        let wait = if pending.is_empty() {
            Duration::from_secs(3600)
        } else {
            RETRY
        };
        let mut batch = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(msg) => {
                batch.push(msg);
                // Let a burst gather: one wake-up per batch, not one per decision (a sender
                // only wakes this thread while it waits).
                std::thread::sleep(COALESCE);
                batch.extend(rx.try_iter());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        let mut flushes = Vec::new();
        for msg in batch {
            match msg {
                Message::Record(r) => pending.push(*r),
                Message::Flush(done) => flushes.push(done),
            }
        }
        if !pending.is_empty() {
            write_pending(sink, shared, on_failure, &mut pending);
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
    // Stopping: one last try; what still cannot be written is lost, and counted.
    if !pending.is_empty() {
        write_pending(sink, shared, OnFailure::Serve, &mut pending);
    }
}

fn write_pending(
    sink: &mut impl Sink,
    shared: &Shared,
    on_failure: OnFailure,
    pending: &mut Vec<AuditRecord>,
) {
    let n = pending.len() as u64;
    match sink.write(pending) {
        Ok(()) => {
            shared.written.fetch_add(n, Ordering::Relaxed);
            pending.clear();
            if shared.failing.swap(false, Ordering::Relaxed) {
                tracing::warn!("the audit trail is written again");
            }
        }
        Err(error) => {
            if !shared.failing.swap(true, Ordering::Relaxed) {
                tracing::error!(%error, ?on_failure, "cannot write the audit trail");
            }
            match on_failure {
                OnFailure::Serve => {
                    shared.dropped.fetch_add(n, Ordering::Relaxed);
                    pending.clear();
                }
                OnFailure::Refuse => {
                    let excess = pending.len().saturating_sub(MAX_PENDING);
                    if excess > 0 {
                        shared.dropped.fetch_add(excess as u64, Ordering::Relaxed);
                        pending.drain(..excess);
                    }
                }
            }
        }
    }
}

/// The audit file: appended to, rotated by size and age, partial writes undone.
struct FileSink {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    opened: std::time::Instant,
    rotation: Rotation,
}

impl FileSink {
    fn open(path: &Path, rotation: Rotation) -> std::io::Result<FileSink> {
        crate::private_fs::create_parent(path)?;
        let file = crate::private_fs::open_append(path)?;
        let len = file.metadata()?.len();
        Ok(FileSink {
            path: path.to_owned(),
            file,
            len,
            opened: std::time::Instant::now(),
            rotation,
        })
    }

    /// Renames the file to `NAME.YYYYmmddTHHMMSS.nnnnnnnnnZ` and starts a new one once it is
    /// too large or too old, then deletes the oldest rotated files beyond `keep`.
    fn rotate_if_due(&mut self) -> std::io::Result<()> {
        let due = self.len > 0
            && (self.len >= self.rotation.max_bytes
                || self.opened.elapsed() >= self.rotation.max_age);
        if !due {
            return Ok(());
        }
        let now = jiff::Timestamp::now();
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rotated = self.path.with_file_name(format!(
            "{name}.{}.{:09}Z",
            now.strftime("%Y%m%dT%H%M%S"),
            now.subsec_nanosecond()
        ));
        std::fs::rename(&self.path, &rotated)?;
        self.file = crate::private_fs::open_append(&self.path)?;
        self.len = 0;
        self.opened = std::time::Instant::now();
        tracing::info!(file = %rotated.display(), "audit file rotated");
        self.prune(&name)
    }

    fn prune(&self, name: &str) -> std::io::Result<()> {
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        let prefix = format!("{name}.");
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with('Z'))
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.rotation.keep);
        for old in &rotated[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), String> {
        self.rotate_if_due()
            .map_err(|e| format!("cannot rotate `{}`: {e}", self.path.display()))?;
        let mut bytes = Vec::with_capacity(records.len() * 256);
        for r in records {
            serde_json::to_writer(&mut bytes, r).map_err(|e| e.to_string())?;
            bytes.push(b'\n');
        }
        if let Err(e) = self.file.write_all(&bytes) {
            // A full disk can take part of the batch: cut it off, so the retry writes whole
            // lines only.
            let _ = self.file.set_len(self.len);
            return Err(format!("cannot write `{}`: {e}", self.path.display()));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// The audit table: a batch per transaction; after a failure the table is made again first
/// (the database may have come back empty).
struct TableSink {
    pool: crate::pool::Pool,
    handle: tokio::runtime::Handle,
    failed: bool,
}

impl Sink for TableSink {
    fn write(&mut self, records: &[AuditRecord]) -> Result<(), String> {
        let pool = &self.pool;
        let recreate = self.failed;
        let result = self.handle.block_on(async {
            if recreate {
                create(pool).await?;
            }
            insert(pool, records).await
        });
        self.failed = result.is_err();
        result.map_err(|e| format!("cannot write the audit table: {e}"))
    }
}

/// Creates the audit table when missing.
async fn create(pool: &crate::pool::Pool) -> Result<(), crate::pool::PoolError> {
    let lease = pool.acquire().await?;
    lease
        .execute(&create_table(pool.kind()), &Params::None, Fetch::All)
        .await?;
    Ok(())
}

/// The table, in `kind`'s dialect: only the auto-numbered key differs.
fn create_table(kind: crate::config::values::DatabaseKind) -> String {
    use crate::config::values::DatabaseKind;
    let id = match kind {
        DatabaseKind::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        DatabaseKind::Postgres => "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        DatabaseKind::Mysql => "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    };
    format!("CREATE TABLE IF NOT EXISTS policy_audit ({id}, {COLUMNS})")
}

/// How long the writer lets records gather after the first one of a batch.
const COALESCE: Duration = Duration::from_millis(2);

/// The audit table's columns after `id`, the same on every database (`BIGINT` is a 64-bit
/// integer on all three).
const COLUMNS: &str = "time TEXT NOT NULL, user_id TEXT NOT NULL, action TEXT NOT NULL, \
    resource TEXT NOT NULL, decision TEXT NOT NULL, policies TEXT NOT NULL, \
    generation BIGINT NOT NULL, errors TEXT NOT NULL, latency_us BIGINT NOT NULL, \
    cached INTEGER NOT NULL, masks TEXT NOT NULL";

/// Inserts a batch in one transaction, on one lease.
async fn insert(
    pool: &crate::pool::Pool,
    records: &[AuditRecord],
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
