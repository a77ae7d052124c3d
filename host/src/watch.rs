//! The one directory watcher behind `--watch`, for plugins, policies and workflows alike.
//!
//! notify-debouncer-full gathers a directory's events (a rename's two halves, a write's many);
//! then a changed file is handed on only once it is **stable**: the same size and modification
//! time `settle` apart. A file rewritten in place passes through states no one meant to deploy
//! (empty after a truncate, half written); reading one of those would, for a policy file, drop
//! its `forbid`s. The owner then reads the files again itself. Deploy by writing a new file
//! beside the old one and renaming it over (atomic on one file system): that is never seen
//! half-way, and is picked up as soon as it settles.
//!
//! The owner's callback runs on the blocking pool, one batch at a time, never on a request's
//! thread. The watcher stops with [`DirWatcher::stop`], or when dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The default time a changed file must stay unchanged before it is read.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(300);

/// What changed, as handed to the owner.
#[derive(Debug)]
pub enum Change {
    /// These files changed (or were removed) and are now stable.
    Files(Vec<PathBuf>),
    /// Events may have been missed (or the owner's other source changed): look at everything.
    Everything,
}

/// Which files of the directory matter to the owner.
pub type Filter = fn(&Path) -> bool;

/// How the owner reads what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// One file at a time (plugins): each is handed on as soon as it is stable.
    EachFile,
    /// The whole directory at once (policies, workflows): changes are handed on only when every
    /// changed file is stable, so no half-written neighbour is read with them.
    WholeDirectory,
}

/// A running watcher.
pub struct DirWatcher {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl DirWatcher {
    /// Watches `dir` (created if missing): `on_change` gets every stable change to a file
    /// `filter` accepts, and [`Change::Everything`] whenever `also` changes. Must be called
    /// inside a tokio runtime.
    pub fn start(
        dir: &Path,
        filter: Filter,
        reads: Reads,
        settle: Duration,
        also: Option<watch::Receiver<u64>>,
        on_change: impl Fn(Change) + Send + Sync + 'static,
    ) -> Result<DirWatcher, notify::Error> {
        std::fs::create_dir_all(dir).map_err(notify::Error::io)?;
        let (events_tx, events) = mpsc::unbounded_channel();
        // The debouncer's own window gathers a burst of events; stability is judged after it.
        let mut debouncer = new_debouncer(
            (settle / 3).max(Duration::from_millis(10)),
            None,
            move |result: DebounceEventResult| {
                let batch = match result {
                    Ok(events) => events
                        .into_iter()
                        .map(|e| {
                            if e.need_rescan() {
                                Err(())
                            } else {
                                Ok(e.event.paths)
                            }
                        })
                        .collect::<Result<Vec<_>, ()>>()
                        .map(|paths| paths.into_iter().flatten().collect::<Vec<_>>()),
                    Err(errors) => {
                        for error in errors {
                            tracing::warn!(%error, "watcher error; looking at the whole directory");
                        }
                        Err(())
                    }
                };
                // The receiver is gone only when the watcher is stopping.
                let _ = events_tx.send(batch);
            },
        )?;
        debouncer.watch(dir, RecursiveMode::NonRecursive)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(
            debouncer,
            events,
            stopped,
            filter,
            reads,
            settle,
            also,
            Arc::new(on_change),
        ));
        Ok(DirWatcher {
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops watching and waits for a callback in progress to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a file looked like: absent, or its size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    Absent,
    Present(u64, Option<SystemTime>),
}

fn look(path: &Path) -> Look {
    match std::fs::metadata(path) {
        Ok(m) => Look::Present(m.len(), m.modified().ok()),
        Err(_) => Look::Absent,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run<D>(
    debouncer: D,
    mut events: mpsc::UnboundedReceiver<Result<Vec<PathBuf>, ()>>,
    mut stopped: oneshot::Receiver<()>,
    filter: Filter,
    reads: Reads,
    settle: Duration,
    mut also: Option<watch::Receiver<u64>>,
    on_change: Arc<dyn Fn(Change) + Send + Sync>,
) {
    // Kept alive for as long as this task runs; dropping it ends the OS watch.
    let _debouncer = debouncer;
    // Each changed file: how it looked when last seen, and when to look again.
    let mut pending: HashMap<PathBuf, (Look, Instant)> = HashMap::new();
    // Stable files not handed on yet (whole-directory owners wait for the rest).
    let mut ready: Vec<PathBuf> = Vec::new();
    let mut everything = false;
    loop {
        let next_due = pending.values().map(|(_, at)| *at).min();
        tokio::select! {
            _ = &mut stopped => break,
            batch = events.recv() => match batch {
                Some(Ok(paths)) => {
                    let due = Instant::now() + settle;
                    for path in paths.into_iter().filter(|p| filter(p)) {
                        let seen = look(&path);
                        pending.insert(path, (seen, due));
                    }
                }
                Some(Err(())) => everything = true,
                None => break,
            },
            changed = async { also.as_mut().expect("guarded").changed().await }, if also.is_some() => {
                if changed.is_err() {
                    also = None;
                } else {
                    everything = true;
                }
            }
            () = sleep_until(next_due), if next_due.is_some() => {
                let now = Instant::now();
                let mut stable = Vec::new();
                for (path, (seen, at)) in pending.iter_mut() {
                    if *at > now {
                        continue;
                    }
                    let again = look(path);
                    if again == *seen {
                        stable.push(path.clone());
                    } else {
                        // Still being written: look again after another settle.
                        *seen = again;
                        *at = now + settle;
                    }
                }
                for path in &stable {
                    pending.remove(path);
                }
                ready.append(&mut stable);
                let hand_on = match reads {
                    Reads::EachFile => true,
                    Reads::WholeDirectory => pending.is_empty(),
                };
                if hand_on && !ready.is_empty() {
                    let mut files = std::mem::take(&mut ready);
                    files.sort();
                    files.dedup();
                    deliver(&on_change, Change::Files(files)).await;
                }
            }
        }
        if everything && pending.is_empty() {
            everything = false;
            ready.clear();
            deliver(&on_change, Change::Everything).await;
        }
    }
}

async fn deliver(on_change: &Arc<dyn Fn(Change) + Send + Sync>, change: Change) {
    let on_change = on_change.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || on_change(change)).await {
        tracing::error!(error = %e, "a reload after a file change failed");
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
