//! The audit trail: one record per decision (time, user, action, resource, decision, deciding
//! policies, generation, errors, latency, masks applied), written as JSON lines by a background
//! thread so that deciding never waits on a disk. Records that cannot be queued are counted in
//! [`AuditLog::dropped`], never silently lost.

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
#[error("cannot open the audit log `{path}`", path = path.display())]
pub struct AuditError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
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
}

impl AuditLog {
    /// Appends to `path` (created if missing), with room for `capacity` queued records.
    pub fn open(path: &Path, capacity: usize) -> Result<AuditLog, AuditError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditError {
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
            .map_err(|source| AuditError {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped,
            written,
            writer: Some(writer),
        })
    }

    /// Queues `record`; when the queue is full the record is counted as dropped.
    pub fn record(&self, record: AuditRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Message::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
