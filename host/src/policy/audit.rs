//! The audit trail: one record per decision (time, user, run, action, resource, decision,
//! deciding policies, generation, errors, latency, masks applied), written as JSON lines to a
//! file by a background thread, or into the audit tables of a SQLite, PostgreSQL or
//! MySQL/MariaDB database by a background task, so that deciding never waits on a disk.
//!
//! # The file's lines
//!
//! What every decision of a workflow run shares (the run, its user, its policy generation, its
//! start) is written once per run and file, not once per decision. A file holds three kinds of
//! line:
//!
//! - a **run**: `{"run": 3, "run_id": "8d4…", "time": "2026-12-06T03:44:28.5Z", "user_id":
//!   "fin001", "generation": 7}`; `run` numbers the file's runs from 1;
//! - a **decision of a run**: `{"run": 3, "at_us": 412, "action": "node:execute", "resource":
//!   "node:report", "decision": "allow", "policies": ["p1"], "latency_us": 9}`, plus `"cached":
//!   true`, `"errors": […]` and `"masks": […]` when there are any. Its run is the last run line
//!   of that number above it in the same file (numbers start again at 1 in a new file and when
//!   the host restarts); `at_us` is its time in microseconds after that line's `time`;
//! - a **decision outside a run** (`/v1/authorize`, `trellis policy`): the whole record, as
//!   [`AuditRecord`] serializes (`time`, `user_id`, `action`, …, `generation`).
//!
//! Every file starts its runs afresh, so each file (a rotated one too) reads on its own.
//! `GET /v1/audit` gives every decision whole.
//!
//! # The tables
//!
//! In a database the same split holds, in three tables:
//!
//! - `policy_audit_runs`: one row per run (`writer`, `run`, `run_id`, `time`, `user_id`,
//!   `generation`), keyed by `(writer, run)`: a number each writer draws at random when it
//!   starts, and its runs numbered from 1, so that hosts sharing the tables need no round trip
//!   for a key;
//! - `policy_audit_decisions`: one row per decision of a run (`id`, its run's `writer` and
//!   `run`, `at_us` after the run's `time`, `action`, `resource`, `decision`, `policies`,
//!   `errors`, `latency_us`, `cached`, `masks`; the lists as JSON text);
//! - `policy_audit`: a decision outside a run, whole (and the rows hosts before the split
//!   wrote, which name their run in `run_id`).
//!
//! A run's decisions read whole with `SELECT r.run_id, r.user_id, r.generation, r.time, d.*
//! FROM policy_audit_decisions d JOIN policy_audit_runs r ON r.writer = d.writer AND r.run =
//! d.run`. A batch of records is one transaction of a few multi-row statements.
//!
//! The file is rotated by size and age, and only the newest rotated files are kept. When
//! records cannot be written (a full disk, the audit database gone), what happens is the
//! operator's choice ([`OnFailure`]): by default the host **refuses** requests that would
//! decide anything ([`AuditLog::refusing`]), keeps the unwritten records and retries them every
//! second, and serves again once they are written; or it keeps **serving** and counts every
//! lost record in [`AuditLog::dropped`] (`trellis_audit_records_dropped` on `/metrics`).
//! Nothing is silently lost either way. The same holds when the writer falls behind and its
//! queue (`[policy] audit_queue`) is full: refuse mode keeps the records that do not fit and
//! refuses requests until the writer has written them; serve mode drops and counts them.

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
    /// When. Written as RFC 3339, UTC; kept as a timestamp until then, since most records'
    /// time is written only as microseconds after their run's.
    pub time: jiff::Timestamp,
    /// The workflow run the decision is part of (`None`: a decision outside a run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
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
    #[error("cannot create the audit tables `policy_audit*` in database `{database}`")]
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
    Record(Arc<AuditRecord>),
    Flush(mpsc::Sender<()>),
}

/// What the writer and the request path share.
#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    /// The last write failed, and records wait to be written again.
    failing: AtomicBool,
    /// Records that found the queue full in refuse mode, for the writer's next batch (at most
    /// [`MAX_PENDING`]; beyond it they are dropped and counted).
    overflow: std::sync::Mutex<Vec<Arc<AuditRecord>>>,
    /// The queue was full (refuse mode): requests are refused until the writer has taken and
    /// written what overflowed.
    behind: AtomicBool,
}

impl Shared {
    fn overflow(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AuditRecord>>> {
        self.overflow.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A JSON-lines audit file (or table) fed through a bounded queue.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Message>>,
    shared: Arc<Shared>,
    on_failure: OnFailure,
    writer: Option<JoinHandle<()>>,
    /// Shared with the writer's queue: a record is built once, never copied.
    recent: std::sync::Mutex<std::collections::VecDeque<Arc<AuditRecord>>>,
    recent_capacity: usize,
}

/// Where a writer puts a batch of records.
trait Sink: Send + 'static {
    fn write(&mut self, records: &[Arc<AuditRecord>]) -> Result<(), String>;
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

    /// Writes into the audit tables (see the module's docs) of the SQLite, PostgreSQL or
    /// MySQL/MariaDB database behind `pool` (created if missing), with room for `capacity`
    /// queued records. Must be called inside a Tokio runtime.
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
            writer: fastrand::i64(..),
            runs: Runs::default(),
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
        let record = Arc::new(record);
        if self.recent_capacity > 0 {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= self.recent_capacity {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Message::Record(record)) {
            Ok(()) => {}
            // The writer is behind: refuse mode keeps the record and refuses requests until the
            // writer has caught up, so that no decision goes unrecorded.
            Err(TrySendError::Full(Message::Record(record)))
                if self.on_failure == OnFailure::Refuse =>
            {
                let mut overflow = self.shared.overflow();
                if overflow.len() < MAX_PENDING {
                    overflow.push(record);
                    self.shared.behind.store(true, Ordering::Relaxed);
                } else {
                    self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
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
        recent
            .iter()
            .rev()
            .take(limit)
            .map(|r| AuditRecord::clone(r))
            .collect()
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

    /// Whether records overflowed the queue (refuse mode) and wait for the writer.
    pub fn behind(&self) -> bool {
        self.shared.behind.load(Ordering::Relaxed)
    }

    /// Whether requests must be refused now (`audit_on_failure = "refuse"`): writes fail, or
    /// the queue was full and the writer has not caught up yet.
    pub fn refusing(&self) -> bool {
        self.on_failure == OnFailure::Refuse && (self.failing() || self.behind())
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
    let mut pending: Vec<Arc<AuditRecord>> = Vec::new();
    loop {
        let wait = if !pending.is_empty() {
            RETRY
        } else if shared.behind.load(Ordering::Relaxed) {
            // What overflowed is taken below at once.
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
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
                Message::Record(r) => pending.push(r),
                Message::Flush(done) => flushes.push(done),
            }
        }
        pending.append(&mut shared.overflow());
        if !pending.is_empty() {
            write_pending(sink, shared, on_failure, &mut pending);
        }
        if pending.is_empty() {
            // Caught up, unless more overflowed meanwhile (the flag is set under the same lock).
            let overflow = shared.overflow();
            if overflow.is_empty() {
                shared.behind.store(false, Ordering::Relaxed);
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
    // Stopping: one last try, with what overflowed the queue too; what still cannot be written
    // is lost, and counted.
    pending.append(&mut shared.overflow());
    if !pending.is_empty() {
        write_pending(sink, shared, OnFailure::Serve, &mut pending);
    }
}

fn write_pending(
    sink: &mut impl Sink,
    shared: &Shared,
    on_failure: OnFailure,
    pending: &mut Vec<Arc<AuditRecord>>,
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
    /// The runs this file has a run line for.
    runs: Runs,
}

/// The runs a sink has written what their decisions share for (a file's run lines, the tables'
/// runs rows), by run id: see the module's docs.
#[derive(Default)]
struct Runs {
    /// Hashed with foldhash (seeded per process), as the decision caches are: each decision
    /// looks its run up, and SipHash of a run id cost about 240 instructions a lookup.
    by_id: std::collections::HashMap<String, Run, foldhash::quality::RandomState>,
    /// The number of the last run.
    last: u64,
}

/// One run: its number, and what its decisions share.
struct Run {
    number: u64,
    time: jiff::Timestamp,
    user_id: String,
    generation: u64,
}

/// A decision's run, as [`Runs::of`] finds it.
struct OfRun {
    number: u64,
    /// The decision's time, in microseconds after the run's start.
    at_us: i64,
    /// Numbered just now: what its decisions share is still to be written.
    new: bool,
}

/// The most runs remembered per sink: past it the older half is forgotten, and a later
/// decision of a forgotten run writes its run again (with a new number).
const MAX_RUNS: usize = 4096;

/// A run line as written.
#[derive(Serialize)]
struct RunOut<'a> {
    run: u64,
    run_id: &'a str,
    time: &'a str,
    user_id: &'a str,
    generation: u64,
}

/// A decision of a run, as written: what the run line does not say.
#[derive(Serialize)]
struct DecisionOut<'a> {
    run: u64,
    at_us: i64,
    action: &'a str,
    resource: &'a str,
    decision: &'a str,
    policies: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'a [String],
    latency_us: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cached: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    masks: &'a [String],
}

impl RunOut<'_> {
    /// Appends the line's JSON, the bytes `serde_json::to_writer` gives, written faster
    /// ([`crate::json::write_str`]): the writer thread writes one per run.
    fn write(&self, out: &mut Vec<u8>) {
        use crate::json::write_str;
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"run\":");
        out.extend_from_slice(number.format(self.run).as_bytes());
        out.extend_from_slice(b",\"run_id\":");
        write_str(out, self.run_id);
        out.extend_from_slice(b",\"time\":");
        write_str(out, self.time);
        out.extend_from_slice(b",\"user_id\":");
        write_str(out, self.user_id);
        out.extend_from_slice(b",\"generation\":");
        out.extend_from_slice(number.format(self.generation).as_bytes());
        out.push(b'}');
    }
}

impl DecisionOut<'_> {
    /// Appends the line's JSON, the bytes `serde_json::to_writer` gives, written faster
    /// ([`crate::json::write_str`]): the writer thread writes one per decision.
    fn write(&self, out: &mut Vec<u8>) {
        use crate::json::{write_str, write_strings};
        let strings = |out: &mut Vec<u8>, name: &[u8], items: &[String]| {
            out.extend_from_slice(name);
            write_strings(out, items);
        };
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"run\":");
        out.extend_from_slice(number.format(self.run).as_bytes());
        out.extend_from_slice(b",\"at_us\":");
        out.extend_from_slice(number.format(self.at_us).as_bytes());
        out.extend_from_slice(b",\"action\":");
        write_str(out, self.action);
        out.extend_from_slice(b",\"resource\":");
        write_str(out, self.resource);
        out.extend_from_slice(b",\"decision\":");
        write_str(out, self.decision);
        strings(out, b",\"policies\":", self.policies);
        if !self.errors.is_empty() {
            strings(out, b",\"errors\":", self.errors);
        }
        out.extend_from_slice(b",\"latency_us\":");
        out.extend_from_slice(number.format(self.latency_us).as_bytes());
        if self.cached {
            out.extend_from_slice(b",\"cached\":true");
        }
        if !self.masks.is_empty() {
            strings(out, b",\"masks\":", self.masks);
        }
        out.push(b'}');
    }
}

impl Runs {
    /// Forgets the runs numbered after `last` (they were not written), and numbers again from
    /// there.
    fn forget_after(&mut self, last: u64) {
        self.by_id.retain(|_, line| line.number <= last);
        self.last = last;
    }

    /// Forgets every run, and goes on numbering.
    fn forget(&mut self) {
        self.by_id.clear();
    }

    /// The run (`run_id`) of `record`: a run this sink knows when it has the same user and
    /// generation, else a new one.
    fn of(&mut self, run_id: &str, record: &AuditRecord) -> OfRun {
        let known = self
            .by_id
            .get(run_id)
            .filter(|r| r.user_id == record.user_id && r.generation == record.generation);
        if let Some(run) = known {
            return OfRun {
                number: run.number,
                at_us: micros_after(run.time, record.time),
                new: false,
            };
        }
        if self.by_id.len() >= MAX_RUNS {
            // The older half goes: a run still deciding is among the newest.
            let keep_after = self.last.saturating_sub(MAX_RUNS as u64 / 2);
            self.by_id.retain(|_, run| run.number > keep_after);
        }
        self.last += 1;
        self.by_id.insert(
            run_id.to_owned(),
            Run {
                number: self.last,
                time: record.time,
                user_id: record.user_id.clone(),
                generation: record.generation,
            },
        );
        OfRun {
            number: self.last,
            at_us: 0,
            new: true,
        }
    }

    /// Writes `record` to `out` as its lines: the run's line first when this file has none for
    /// it (or one with another user or generation), then the decision.
    fn write(&mut self, record: &AuditRecord, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let Some(run_id) = record.run_id.as_deref() else {
            serde_json::to_writer(&mut *out, record)?;
            out.push(b'\n');
            return Ok(());
        };
        let run = self.of(run_id, record);
        if run.new {
            RunOut {
                run: run.number,
                run_id,
                time: &record.time.to_string(),
                user_id: &record.user_id,
                generation: record.generation,
            }
            .write(out);
            out.push(b'\n');
        }
        DecisionOut {
            run: run.number,
            at_us: run.at_us,
            action: &record.action,
            resource: &record.resource,
            decision: record.decision,
            policies: &record.policies,
            errors: &record.errors,
            latency_us: record.latency_us,
            cached: record.cached,
            masks: &record.masks,
        }
        .write(out);
        out.push(b'\n');
        Ok(())
    }
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
            // An existing file's run lines are not read back: numbering starts again at 1, and
            // a decision's run is the last run line of its number above it.
            runs: Runs::default(),
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
        self.runs = Runs::default();
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
    fn write(&mut self, records: &[Arc<AuditRecord>]) -> Result<(), String> {
        self.rotate_if_due()
            .map_err(|e| format!("cannot rotate `{}`: {e}", self.path.display()))?;
        let mut bytes = Vec::with_capacity(records.len() * 160);
        // What the file knows of its runs before this batch: a batch that is not written
        // leaves it as it was, so its retry writes the run lines again.
        let last = self.runs.last;
        let serialized = records
            .iter()
            .try_for_each(|r| self.runs.write(r, &mut bytes));
        if let Err(e) = serialized {
            self.runs.forget_after(last);
            return Err(e.to_string());
        }
        if let Err(e) = self.file.write_all(&bytes) {
            // A full disk can take part of the batch: cut it off, so the retry writes whole
            // lines only.
            let _ = self.file.set_len(self.len);
            self.runs.forget_after(last);
            return Err(format!("cannot write `{}`: {e}", self.path.display()));
        }
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// The audit tables: a batch per transaction, a few rows per statement; after a failure the
/// tables are made again first (the database may have come back empty) and the runs rows known
/// before are forgotten.
struct TableSink {
    pool: crate::pool::Pool,
    handle: tokio::runtime::Handle,
    failed: bool,
    /// This writer's number, drawn at random when it starts: its runs rows are keyed by it and
    /// their own number, so that hosts sharing the tables never need a round trip for a key.
    writer: i64,
    /// The runs this writer wrote a row for. After a failure it forgets them all (their rows may
    /// be gone) but never numbers a run again with a number it gave: a commit that succeeded
    /// on the server, with its answer lost, must not make the retry collide with its own rows.
    runs: Runs,
}

impl Sink for TableSink {
    fn write(&mut self, records: &[Arc<AuditRecord>]) -> Result<(), String> {
        let pool = &self.pool;
        let recreate = self.failed;
        if recreate {
            self.runs.forget();
        }
        let (runs, writer) = (&mut self.runs, self.writer);
        let result = self.handle.block_on(async {
            if recreate {
                create(pool).await?;
            }
            insert(pool, records, runs, writer).await
        });
        self.failed = result.is_err();
        result.map_err(|e| format!("cannot write the audit tables: {e}"))
    }
}

/// Microseconds from `start` to `at`.
fn micros_after(start: jiff::Timestamp, at: jiff::Timestamp) -> i64 {
    at.duration_since(start)
        .as_micros()
        .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// Creates the audit tables when missing, and adds the `run_id` column to a `policy_audit` made
/// before it existed (hosts before it wrote no run id; their rows keep `NULL` there).
async fn create(pool: &crate::pool::Pool) -> Result<(), crate::pool::PoolError> {
    let lease = pool.acquire().await?;
    for table in create_tables(pool.kind()) {
        lease.execute(&table, &Params::None, Fetch::All).await?;
    }
    let has_run_id = async || {
        lease
            .execute(HAS_RUN_ID, &Params::None, Fetch::All)
            .await
            .is_ok()
    };
    if !has_run_id().await {
        let added = lease.execute(ADD_RUN_ID, &Params::None, Fetch::All).await;
        // Another host of the fleet may have added it between the check and here.
        if let Err(e) = added
            && !has_run_id().await
        {
            return Err(e);
        }
    }
    Ok(())
}

/// Succeeds, with no rows, when the table has the `run_id` column.
const HAS_RUN_ID: &str = "SELECT run_id FROM policy_audit WHERE 1 = 0";

/// The same column as in [`COLUMNS`], for a table made before it existed.
const ADD_RUN_ID: &str = "ALTER TABLE policy_audit ADD COLUMN run_id TEXT";

/// The tables, in `kind`'s dialect: only the auto-numbered key differs. The runs table comes
/// before the decisions table that refers to it.
fn create_tables(kind: crate::config::values::DatabaseKind) -> [String; 3] {
    use crate::config::values::DatabaseKind;
    let id = match kind {
        DatabaseKind::Sqlite => "id INTEGER PRIMARY KEY AUTOINCREMENT",
        DatabaseKind::Postgres => "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        DatabaseKind::Mysql => "id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    };
    [
        format!("CREATE TABLE IF NOT EXISTS policy_audit ({id}, {COLUMNS})"),
        format!("CREATE TABLE IF NOT EXISTS policy_audit_runs ({RUN_COLUMNS})"),
        format!("CREATE TABLE IF NOT EXISTS policy_audit_decisions ({id}, {DECISION_COLUMNS})"),
    ]
}

/// How long the writer lets records gather after the first one of a batch.
const COALESCE: Duration = Duration::from_millis(2);

/// `policy_audit`'s columns after `id`, the same on every database (`BIGINT` is a 64-bit
/// integer on all three). `run_id` is `NULL` for a decision outside a workflow run; it comes last
/// because a table made before it existed gets it added at the end ([`ADD_RUN_ID`]).
const COLUMNS: &str = "time TEXT NOT NULL, user_id TEXT NOT NULL, action TEXT NOT NULL, \
    resource TEXT NOT NULL, decision TEXT NOT NULL, policies TEXT NOT NULL, \
    generation BIGINT NOT NULL, errors TEXT NOT NULL, latency_us BIGINT NOT NULL, \
    cached INTEGER NOT NULL, masks TEXT NOT NULL, run_id TEXT";

/// `policy_audit_runs`' columns: its key (see [`TableSink::writer`]) and what a run's decisions
/// share.
const RUN_COLUMNS: &str = "writer BIGINT NOT NULL, run BIGINT NOT NULL, run_id TEXT NOT NULL, \
    time TEXT NOT NULL, user_id TEXT NOT NULL, generation BIGINT NOT NULL, \
    PRIMARY KEY (writer, run)";

/// `policy_audit_decisions`' columns after `id`: a decision of a run, without what its run's row
/// says.
const DECISION_COLUMNS: &str = "writer BIGINT NOT NULL, run BIGINT NOT NULL, \
    at_us BIGINT NOT NULL, action TEXT NOT NULL, resource TEXT NOT NULL, \
    decision TEXT NOT NULL, policies TEXT NOT NULL, errors TEXT NOT NULL, \
    latency_us BIGINT NOT NULL, cached INTEGER NOT NULL, masks TEXT NOT NULL, \
    FOREIGN KEY (writer, run) REFERENCES policy_audit_runs (writer, run)";

/// A list column's JSON text.
fn list(items: &[String]) -> serde_json::Value {
    serde_json::Value::String(serde_json::to_string(items).expect("a list of strings is JSON"))
}

/// Inserts a batch in one transaction, on one lease: the runs rows of `writer` that `runs` does
/// not know yet, then the decisions.
async fn insert(
    pool: &crate::pool::Pool,
    records: &[Arc<AuditRecord>],
    runs: &mut Runs,
    writer: i64,
) -> Result<(), crate::pool::PoolError> {
    use serde_json::Value;
    let kind = pool.kind();
    let mut whole = Vec::new();
    let mut run_rows = Vec::new();
    let mut decisions = Vec::new();
    for r in records {
        let shared = [
            Value::from(r.action.as_str()),
            Value::from(r.resource.as_str()),
            Value::from(r.decision),
            list(&r.policies),
            list(&r.errors),
            Value::from(r.latency_us),
            // A number, not a boolean: every dialect stores `cached` as an integer 0 or 1.
            Value::from(i64::from(r.cached)),
            list(&r.masks),
        ];
        let Some(run_id) = &r.run_id else {
            whole.push(
                [
                    Value::from(r.time.to_string()),
                    Value::from(r.user_id.as_str()),
                    Value::from(r.generation),
                ]
                .into_iter()
                .chain(shared)
                .collect::<Vec<_>>(),
            );
            continue;
        };
        let run = runs.of(run_id, r);
        if run.new {
            run_rows.push(vec![
                Value::from(writer),
                Value::from(run.number),
                Value::from(run_id.as_str()),
                Value::from(r.time.to_string()),
                Value::from(r.user_id.as_str()),
                Value::from(r.generation),
            ]);
        }
        decisions.push(
            [
                Value::from(writer),
                Value::from(run.number),
                Value::from(run.at_us),
            ]
            .into_iter()
            .chain(shared)
            .collect::<Vec<_>>(),
        );
    }
    let lease = pool.acquire().await?;
    lease.execute("BEGIN", &Params::None, Fetch::All).await?;
    // Runs rows before the decisions that refer to them.
    insert_rows(
        &lease,
        kind,
        "policy_audit (time, user_id, generation, action, resource, decision, policies, errors, \
         latency_us, cached, masks)",
        whole,
    )
    .await?;
    insert_rows(
        &lease,
        kind,
        "policy_audit_runs (writer, run, run_id, time, user_id, generation)",
        run_rows,
    )
    .await?;
    insert_rows(
        &lease,
        kind,
        "policy_audit_decisions (writer, run, at_us, action, resource, decision, policies, \
         errors, latency_us, cached, masks)",
        decisions,
    )
    .await?;
    // A failed insert leaves the transaction open: dropping the lease rolls it back.
    lease.execute("COMMIT", &Params::None, Fetch::All).await?;
    Ok(())
}

/// Rows per statement: a batch is written in statements of these many rows, the largest that
/// fits first, so that a table sees at most four statement texts (each prepared once per
/// connection). 64 rows of 11 values stay far below every database's limit on parameters.
const ROWS_PER_STATEMENT: [usize; 4] = [64, 16, 4, 1];

/// Inserts `rows` (each the values of `target`'s columns, in order) with as few statements as
/// [`ROWS_PER_STATEMENT`] allows.
async fn insert_rows(
    lease: &crate::pool::Lease,
    kind: crate::config::values::DatabaseKind,
    target: &str,
    rows: Vec<Vec<serde_json::Value>>,
) -> Result<(), crate::pool::PoolError> {
    let mut rows = rows.into_iter();
    while rows.len() > 0 {
        let n = ROWS_PER_STATEMENT
            .into_iter()
            .find(|&n| n <= rows.len())
            .unwrap_or(1);
        let chunk: Vec<Vec<serde_json::Value>> = rows.by_ref().take(n).collect();
        let sql = insert_sql(kind, target, n, chunk[0].len());
        let values = chunk.into_iter().flatten().collect();
        lease
            .execute(&sql, &Params::Positional(values), Fetch::All)
            .await?;
    }
    Ok(())
}

/// `INSERT INTO target VALUES (…), (…)`: `rows` rows of `width` placeholders in `kind`'s
/// dialect.
fn insert_sql(
    kind: crate::config::values::DatabaseKind,
    target: &str,
    rows: usize,
    width: usize,
) -> String {
    use std::fmt::Write as _;
    let mut sql = format!("INSERT INTO {target} VALUES ");
    let mut n = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            n += 1;
            match kind {
                crate::config::values::DatabaseKind::Postgres => {
                    let _ = write!(sql, "${n}");
                }
                _ => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn record(run: Option<&str>, time: &str, user: &str, generation: u64) -> AuditRecord {
        AuditRecord {
            time: time.parse().unwrap(),
            run_id: run.map(str::to_owned),
            user_id: user.into(),
            action: "node:execute".into(),
            resource: "node:report".into(),
            decision: "allow",
            policies: vec!["p1".into()],
            generation,
            errors: Vec::new(),
            latency_us: 9,
            cached: false,
            masks: Vec::new(),
        }
    }

    /// The run and decision lines, written by hand for speed, are serde_json's text of them,
    /// with every optional field present and absent, and strings that need escapes.
    #[test]
    fn lines_are_written_as_serde_json_writes_them() {
        let (policies, errors, masks) = (
            vec!["p1".to_owned(), "a \"quoted\" id".to_owned()],
            vec!["bad\nthing".to_owned()],
            vec!["ssn:redact".to_owned(), "salary:partial".to_owned()],
        );
        for (errors, cached, masks) in [
            (&[][..], false, &[][..]),
            (&errors[..], true, &masks[..]),
            (&[][..], true, &[][..]),
            (&errors[..], false, &masks[..]),
        ] {
            let decision = DecisionOut {
                run: 12,
                at_us: -3,
                action: "node:execute",
                resource: "node:é\u{1}",
                decision: "deny",
                policies: &policies,
                errors,
                latency_us: u64::MAX,
                cached,
                masks,
            };
            let mut ours = Vec::new();
            decision.write(&mut ours);
            assert_eq!(ours, serde_json::to_vec(&decision).unwrap());
        }
        let run = RunOut {
            run: 1,
            run_id: "r\\1",
            time: "2026-12-06T17:00:00Z",
            user_id: "alice",
            generation: 0,
        };
        let mut ours = Vec::new();
        run.write(&mut ours);
        assert_eq!(ours, serde_json::to_vec(&run).unwrap());
    }

    fn lines(bytes: &[u8]) -> Vec<Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_runs_shared_context_is_written_once() {
        let mut runs = Runs::default();
        let mut out = Vec::new();
        let mut masked = record(Some("r-1"), "2026-12-06T03:44:28.000500Z", "ada", 7);
        masked.action = "mask".into();
        masked.masks = vec!["ssn:redact".into()];
        masked.cached = true;
        for r in [
            record(Some("r-1"), "2026-12-06T03:44:28Z", "ada", 7),
            masked,
            record(None, "2026-12-06T03:44:29Z", "root", 7),
            // The same run id with another generation (or user) is a run of its own.
            record(Some("r-1"), "2026-12-06T03:44:30Z", "ada", 8),
        ] {
            runs.write(&r, &mut out).unwrap();
        }
        let lines = lines(&out);
        assert_eq!(
            lines,
            [
                json!({"run": 1, "run_id": "r-1", "time": "2026-12-06T03:44:28Z",
                    "user_id": "ada", "generation": 7}),
                json!({"run": 1, "at_us": 0, "action": "node:execute", "resource": "node:report",
                    "decision": "allow", "policies": ["p1"], "latency_us": 9}),
                json!({"run": 1, "at_us": 500, "action": "mask", "resource": "node:report",
                    "decision": "allow", "policies": ["p1"], "latency_us": 9, "cached": true,
                    "masks": ["ssn:redact"]}),
                serde_json::to_value(record(None, "2026-12-06T03:44:29Z", "root", 7)).unwrap(),
                json!({"run": 2, "run_id": "r-1", "time": "2026-12-06T03:44:30Z",
                    "user_id": "ada", "generation": 8}),
                json!({"run": 2, "at_us": 0, "action": "node:execute", "resource": "node:report",
                    "decision": "allow", "policies": ["p1"], "latency_us": 9}),
            ]
        );
        // A decision outside a run keeps every field, as before.
        assert_eq!(lines[3]["user_id"], "root");
        assert_eq!(lines[3]["errors"], json!([]));
    }

    #[test]
    fn a_full_memory_of_runs_forgets_the_older_half() {
        let mut runs = Runs::default();
        let at = "2026-12-06T03:44:28Z";
        for i in 0..MAX_RUNS {
            let run = runs.of(&format!("r-{i}"), &record(Some("x"), at, "ada", 7));
            assert!(run.new);
        }
        // The next new run makes room: the newest runs are still known, the oldest are not.
        assert!(runs.of("r-next", &record(Some("x"), at, "ada", 7)).new);
        let newest = format!("r-{}", MAX_RUNS - 1);
        assert!(!runs.of(&newest, &record(Some("x"), at, "ada", 7)).new);
        assert!(runs.of("r-0", &record(Some("x"), at, "ada", 7)).new);
        assert!(runs.by_id.len() <= MAX_RUNS / 2 + 2, "{}", runs.by_id.len());
    }

    #[test]
    fn a_batch_not_written_writes_its_run_lines_again() {
        let mut runs = Runs::default();
        let mut out = Vec::new();
        runs.write(
            &record(Some("a"), "2026-12-06T03:44:28Z", "ada", 7),
            &mut out,
        )
        .unwrap();
        let last = runs.last;
        let mut lost = Vec::new();
        runs.write(
            &record(Some("b"), "2026-12-06T03:44:28Z", "bob", 7),
            &mut lost,
        )
        .unwrap();
        runs.forget_after(last);
        let mut retry = Vec::new();
        runs.write(
            &record(Some("b"), "2026-12-06T03:44:28Z", "bob", 7),
            &mut retry,
        )
        .unwrap();
        runs.write(
            &record(Some("a"), "2026-12-06T03:44:29Z", "ada", 7),
            &mut retry,
        )
        .unwrap();
        let retry = lines(&retry);
        assert_eq!(retry[0]["run_id"], "b", "{retry:?}");
        assert_eq!(retry[0]["run"], 2);
        assert_eq!(retry[1]["run"], 2);
        // Run `a`'s line was written before: its decision only.
        assert_eq!(retry[2]["run"], 1);
        assert_eq!(retry[2]["at_us"], 1_000_000);
        assert_eq!(retry.len(), 3);
    }

    #[test]
    fn a_statement_inserts_rows_of_placeholders_in_the_dialect() {
        use crate::config::values::DatabaseKind;
        assert_eq!(
            insert_sql(DatabaseKind::Postgres, "t (a, b)", 2, 2),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4)"
        );
        for kind in [DatabaseKind::Sqlite, DatabaseKind::Mysql] {
            assert_eq!(
                insert_sql(kind, "t (a, b, c)", 1, 3),
                "INSERT INTO t (a, b, c) VALUES (?, ?, ?)"
            );
        }
    }

    #[test]
    fn a_file_has_fewer_bytes_per_decision_of_a_run() {
        let mut runs = Runs::default();
        let (mut compact, mut whole) = (Vec::new(), Vec::new());
        for i in 0..16 {
            let r = record(
                Some("8d6f6c2e-0c6b-4a53-9a8e-3f3f8c1e2d4b"),
                &format!("2026-12-06T03:44:28.{i:06}Z"),
                "fin001",
                7,
            );
            runs.write(&r, &mut compact).unwrap();
            serde_json::to_writer(&mut whole, &r).unwrap();
            whole.push(b'\n');
        }
        assert!(
            compact.len() * 10 < whole.len() * 7,
            "{} against {} bytes",
            compact.len(),
            whole.len()
        );
    }
}
