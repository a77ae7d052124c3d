//! A host following the control plane (`trellis serve --control DATABASE`): it loads the active
//! generation before it serves, then LISTENs on a direct connection for new and activated
//! generations. Each one is fetched file by file (every file's SHA-256 checked against the
//! manifest), written under the host's staging directory, loaded and checked as one bundle off
//! to the side, and swapped in as one ([`Generations::install`]). A generation that does not
//! load leaves the last good one serving, and the host reports why in its heartbeat row.
//!
//! Notices are not stored: a host whose LISTEN connection dropped resyncs when it is back, and
//! polls the active generation as a backstop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::watch;

use super::bundle::{PARTS, sha256};
use super::settings::ControlConfig;
use super::{CHANNEL, FleetError, named};
use crate::config::database::DatabaseConfig;
use crate::generation::{Generation, Generations};
use crate::pool::Pool;
use crate::sql::exec::Fetch;
use crate::sql::row::Row;

/// What this host has from the control plane: written in its heartbeat row.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostState {
    /// The generation staged, ready to serve.
    pub staged: Option<i64>,
    /// The generation serving.
    pub active: Option<i64>,
    /// When `active` started serving (µs since the Unix epoch).
    pub activated_at_us: Option<i64>,
    /// The generation the last error is about, when it is a generation that does not load.
    pub failed: Option<i64>,
    /// The last error.
    pub last_error: Option<String>,
}

/// Why one generation could not be staged.
#[derive(Debug)]
enum StageError {
    /// The bundle itself is bad (a file's hash, a path, a file that does not load): trying
    /// again gives the same answer.
    Refused(String),
    /// The database or the disk failed: worth trying again.
    Transient(String),
}

impl StageError {
    fn message(&self) -> &str {
        match self {
            StageError::Refused(m) | StageError::Transient(m) => m,
        }
    }
}

/// The running follower of one host.
pub struct Follower {
    inner: Arc<Inner>,
    address: watch::Sender<Option<String>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    pool: Pool,
    control: DatabaseConfig,
    settings: ControlConfig,
    generations: Arc<Generations>,
    databases: Vec<String>,
    /// `<data>/control`: the blob cache, shared by the hosts of one data directory.
    root: PathBuf,
    /// `<root>/host-<pid>-<nonce>`: this process's staged generations, locked while it runs.
    staging: PathBuf,
    /// This process among the hosts (its staging directory's name): a heartbeat row is only
    /// ever overwritten by the process that wrote it, or once that one is silent.
    instance: String,
    /// The lock on `staging`, held for the life of the process.
    _lock: std::fs::File,
    state: Mutex<HostState>,
    /// Told on every change of `state`: the heartbeat is written at once.
    changed: tokio::sync::Notify,
    /// The generation staged and not yet serving.
    staged: Mutex<Option<Generation>>,
    /// Generations this host refused, with why: a bundle never changes, so it is not tried
    /// again.
    refused: Mutex<BTreeMap<i64, String>>,
    /// When this host started (RFC 3339).
    started_at: String,
    /// The machine's name, for the default host id.
    hostname: String,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Follower {
    /// Opens the control database, starts listening, and puts the active generation in
    /// service before returning (when there is one and it loads; else the host serves nothing
    /// and its heartbeat says why). `data` is the host's data directory.
    pub async fn start(
        control: DatabaseConfig,
        settings: ControlConfig,
        generations: Arc<Generations>,
        databases: Vec<String>,
        data: &Path,
    ) -> Result<Follower, FleetError> {
        let pool = super::schema::open(&control, "trellis serve").await?;
        let root = data.join("control");
        clean_stale(&root);
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let instance = format!("host-{}-{nonce:08x}", std::process::id());
        let staging = root.join(&instance);
        let lock = match make_staging(&root, &staging) {
            Ok(lock) => lock,
            Err(e) => {
                pool.close().await;
                return Err(FleetError::Staging {
                    dir: staging.display().to_string(),
                    source: e,
                });
            }
        };
        let inner = Arc::new(Inner {
            pool,
            control,
            settings,
            generations,
            databases,
            root,
            staging,
            instance,
            _lock: lock,
            state: Mutex::new(HostState::default()),
            changed: tokio::sync::Notify::new(),
            staged: Mutex::new(None),
            refused: Mutex::new(BTreeMap::new()),
            started_at: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|_| "host".into()),
        });
        // Listen first, then read: a generation published in between is not missed.
        let listener = match inner.listen().await {
            Ok(listener) => listener,
            Err(e) => {
                inner.pool.close().await;
                let _ = std::fs::remove_dir_all(&inner.staging);
                return Err(FleetError::Listen(e));
            }
        };
        if let Err(e) = inner.sync().await {
            drop(listener);
            inner.pool.close().await;
            let _ = std::fs::remove_dir_all(&inner.staging);
            return Err(e);
        }
        let (address, address_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(inner.clone().run(listener, address_rx, stop_rx));
        Ok(Follower {
            inner,
            address,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The address this host serves on: its heartbeat starts with it.
    pub fn serving_at(&self, address: String) {
        self.address.send_replace(Some(address));
    }

    /// What this host has from the control plane.
    pub fn state(&self) -> HostState {
        self.inner.state()
    }

    /// The control database's pool.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Stops following: removes this host's heartbeat row and staging directory and closes the
    /// control database.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let id = self
            .address
            .borrow()
            .clone()
            .map(|a| self.inner.host_id(&a));
        if let Some(id) = id {
            let _ = self
                .inner
                .pool
                .execute(
                    "DELETE FROM trellis_control.hosts WHERE id = :id AND instance = :instance",
                    &named(json!({ "id": id, "instance": self.inner.instance })),
                    Fetch::All,
                )
                .await;
        }
        self.inner.pool.close().await;
        let _ = std::fs::remove_dir_all(&self.inner.staging);
    }
}

/// The lock file in a staging directory: held by the process that stages there.
const LOCK: &str = ".lock";

/// Makes this process's staging directory and the blob cache, and locks the staging directory.
fn make_staging(root: &Path, staging: &Path) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(root.join("blobs"))?;
    std::fs::create_dir_all(staging)?;
    let lock = std::fs::File::create(staging.join(LOCK))?;
    lock.try_lock().map_err(std::io::Error::other)?;
    Ok(lock)
}

/// Removes the staging directories no running host holds (hosts that share the data directory,
/// in other containers too, hold their directory's lock).
fn clean_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("host-") {
            continue;
        }
        let Ok(lock) = std::fs::File::open(entry.path().join(LOCK)) else {
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Inner {
    fn state(&self) -> HostState {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes the state; the heartbeat is written at once when anything changed.
    fn update(&self, change: impl FnOnce(&mut HostState)) {
        let changed = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let before = state.clone();
            change(&mut state);
            *state != before
        };
        if changed {
            self.changed.notify_one();
        }
    }

    fn host_id(&self, address: &str) -> String {
        self.settings
            .host_id
            .clone()
            .unwrap_or_else(|| format!("{}@{address}", self.hostname))
    }

    /// A LISTEN connection of its own, straight to the control database.
    async fn listen(&self) -> Result<PgListener, sqlx::Error> {
        let options = crate::sql::driver::pg_options(&self.control.target, "trellis/control")
            .ok_or_else(|| sqlx::Error::Configuration("not PostgreSQL".into()))?;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    /// Follows notices and polls until stopped; the heartbeat runs beside, so a host busy
    /// staging a large generation still shows as live.
    async fn run(
        self: Arc<Self>,
        listener: PgListener,
        address: watch::Receiver<Option<String>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let heartbeat = tokio::spawn(self.clone().heartbeat(address, stop.clone()));
        let mut listener = Some(listener);
        let mut poll = tokio::time::interval(self.settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let retry = self.settings.poll_interval.min(Duration::from_secs(1));
        loop {
            if listener.is_none() {
                match self.listen().await {
                    Ok(back) => {
                        tracing::info!("control plane: listening again; resyncing");
                        listener = Some(back);
                        self.resync().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control plane: cannot listen; retrying");
                    }
                }
            }
            let notice = async {
                match listener.as_mut() {
                    Some(l) => l.try_recv().await,
                    None => {
                        tokio::time::sleep(retry).await;
                        Ok(None)
                    }
                }
            };
            tokio::select! {
                _ = stop.changed() => break,
                _ = poll.tick() => self.resync().await,
                received = notice => match received {
                    Ok(Some(_)) => {
                        // A notice only wakes the host: anyone who can connect may send one,
                        // so what serves is read from the tables, never from the payload. The
                        // notices queued meanwhile are answered by the same read.
                        if let Some(l) = listener.as_mut() {
                            while l.next_buffered().is_some() {}
                        }
                        self.resync().await;
                    }
                    Ok(None) if listener.is_none() => {}
                    Ok(None) => {
                        tracing::warn!("control plane: the LISTEN connection was lost");
                        listener = None;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control plane: the LISTEN connection failed");
                        listener = None;
                    }
                },
            }
        }
        let _ = heartbeat.await;
    }

    /// Writes the heartbeat row every interval and on every change, until stopped.
    async fn heartbeat(
        self: Arc<Self>,
        mut address: watch::Receiver<Option<String>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut beat = tokio::time::interval(self.settings.heartbeat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = address.changed() => {}
                _ = beat.tick() => {}
                () = self.changed.notified() => {}
            }
            self.beat(&address).await;
        }
    }

    /// [`Inner::sync`], logging a failure (the last good generation keeps serving).
    async fn resync(&self) {
        if let Err(e) = self.sync().await {
            tracing::warn!(error = %e, "control plane: cannot read the active generation");
            self.update(|s| s.last_error = Some(format!("cannot reach the control plane: {e}")));
        }
    }

    /// Serves the active generation, and stages a newer published one (a `publish --wait`
    /// under way).
    async fn sync(&self) -> Result<(), FleetError> {
        let (active, latest) = super::status::heads(&self.pool).await?;
        // The control plane answers: an earlier error that was not a refused generation is over.
        self.update(|s| {
            if s.failed.is_none() {
                s.last_error = None;
            }
        });
        if let Some(n) = active {
            self.activate(n).await;
        }
        if let Some(latest) = latest
            && active.is_none_or(|a| latest > a)
        {
            let _ = self.stage(latest).await;
        }
        Ok(())
    }

    /// Serves generation `n`, staging it first when needed. On failure the generation in
    /// service stays.
    async fn activate(&self, n: i64) {
        if self.state().active == Some(n) {
            return;
        }
        if self.stage(n).await.is_err() {
            return;
        }
        let staged = self
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take_if(|g| g.id == n as u64);
        let Some(generation) = staged else { return };
        self.generations.install(generation);
        let previous = self.state().active;
        self.update(|s| {
            s.active = Some(n);
            s.activated_at_us = Some(now_us());
            if s.failed.is_none() {
                s.last_error = None;
            }
        });
        tracing::info!(generation = n, "control plane: generation in service");
        // The files of what no longer serves or waits.
        if let Ok(entries) = std::fs::read_dir(&self.staging) {
            let keep =
                [Some(n), previous, self.state().staged].map(|g| g.map(|g| format!("gen-{g}")));
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !keep.iter().flatten().any(|k| *k == name) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Makes generation `n` ready to serve: fetched, checked and loaded off to the side.
    async fn stage(&self, n: i64) -> Result<(), ()> {
        let state = self.state();
        let in_slot = self
            .staged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|g| g.id == n as u64);
        if state.active == Some(n) || in_slot {
            return Ok(());
        }
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&n)
            .cloned();
        if let Some(why) = refused {
            // Reported again, as the generation the control plane wants now.
            self.update(|s| {
                s.failed = Some(n);
                s.last_error = Some(why);
            });
            return Err(());
        }
        let started = std::time::Instant::now();
        match self.load(n).await {
            Ok(generation) => {
                let replaced = self
                    .staged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .replace(generation)
                    .map(|g| g.id as i64);
                if let Some(old) = replaced
                    && Some(old) != state.active
                {
                    let _ = std::fs::remove_dir_all(self.staging.join(format!("gen-{old}")));
                }
                self.update(|s| {
                    s.staged = Some(n);
                    if s.failed.is_some() {
                        s.failed = None;
                        s.last_error = None;
                    }
                });
                tracing::info!(
                    generation = n,
                    took_ms = started.elapsed().as_millis() as u64,
                    "control plane: generation staged"
                );
                Ok(())
            }
            Err(e) => {
                tracing::error!(
                    generation = n,
                    error = e.message(),
                    "control plane: generation not loaded; the last good one keeps serving"
                );
                if state.active != Some(n) {
                    let _ = std::fs::remove_dir_all(self.staging.join(format!("gen-{n}")));
                }
                let message = format!("generation {n}: {}", e.message());
                if let StageError::Refused(_) = e {
                    self.refused
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(n, message.clone());
                }
                self.update(|s| {
                    s.last_error = Some(message);
                    if let StageError::Refused(_) = e {
                        s.failed = Some(n);
                    }
                });
                Err(())
            }
        }
    }

    /// Fetches generation `n`'s files, checks them against its manifest, writes them under the
    /// staging directory and loads them as a bundle.
    async fn load(&self, n: i64) -> Result<Generation, StageError> {
        let transient = |e: &dyn std::fmt::Display| StageError::Transient(e.to_string());
        let out = self
            .pool
            .execute(
                "SELECT manifest FROM trellis_control.generations WHERE id = :id",
                &named(json!({ "id": n })),
                Fetch::All,
            )
            .await
            .map_err(|e| transient(&e))?;
        let manifest = out
            .rows
            .first()
            .and_then(|r| r.get("manifest"))
            .cloned()
            .ok_or_else(|| StageError::Refused("it was never published".into()))?;
        let files = manifest_files(&manifest).map_err(StageError::Refused)?;
        // Blobs not in the cache yet, fetched in one query, each checked before it is kept.
        let blobs = self.root.join("blobs");
        let missing: Vec<&str> = files
            .values()
            .map(String::as_str)
            .filter(|sha| !blobs.join(sha).is_file())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            let out = self
                .pool
                .execute(
                    "SELECT sha256, content FROM trellis_control.blobs WHERE sha256 = ANY(:hashes)",
                    &named(json!({ "hashes": missing })),
                    Fetch::All,
                )
                .await
                .map_err(|e| transient(&e))?;
            // Decoding, hashing and writing megabytes: off the async workers.
            let rows = out.rows;
            let wanted: Vec<(String, String)> = missing
                .iter()
                .map(|sha| {
                    let path = files
                        .iter()
                        .find(|(_, s)| s == sha)
                        .map(|(p, _)| p.clone())
                        .unwrap_or_default();
                    (sha.to_string(), path)
                })
                .collect();
            let cache = blobs.clone();
            tokio::task::spawn_blocking(move || keep_blobs(&rows, &wanted, &cache))
                .await
                .map_err(|e| transient(&e))??;
        }
        let dir = self.staging.join(format!("gen-{n}"));
        // Problems name the bundle's files (`plugins/x.wasm`), not this host's layout.
        let inside = format!("{}/", dir.display());
        let generations = self.generations.clone();
        let databases = self.databases.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            materialize(&dir, &files, &blobs).map_err(|e| StageError::Transient(e.to_string()))?;
            Ok::<_, StageError>(generations.prepare(&dir, n as u64, databases))
        })
        .await
        .map_err(|e| transient(&e))??;
        prepared.map_err(|problems| StageError::Refused(problems.join("; ").replace(&inside, "")))
    }

    /// Writes this host's heartbeat row (once it serves at an address).
    async fn beat(&self, address: &watch::Receiver<Option<String>>) {
        let Some(address) = address.borrow().clone() else {
            return;
        };
        let state = self.state();
        let row = json!({
            "id": self.host_id(&address),
            "address": address,
            "version": crate::VERSION,
            "staged": state.staged,
            "active": state.active,
            "activated_at_us": state.activated_at_us,
            "failed": state.failed,
            "last_error": state.last_error,
            "heartbeat_ms": self.settings.heartbeat_interval.as_millis().min(i32::MAX as u128) as i64,
            "started_at": self.started_at,
            "instance": self.instance,
        });
        let written = self
            .pool
            .execute(
                "INSERT INTO trellis_control.hosts \
                 (id, instance, address, version, staged, active, activated_at_us, failed, last_error, heartbeat_ms, started_at, seen_at) \
                 VALUES (:id, :instance, :address, :version, :staged, :active, :activated_at_us, :failed, :last_error, :heartbeat_ms, \
                 CAST(:started_at AS timestamptz), now()) \
                 ON CONFLICT (id) DO UPDATE SET instance = EXCLUDED.instance, address = EXCLUDED.address, \
                 version = EXCLUDED.version, staged = EXCLUDED.staged, active = EXCLUDED.active, \
                 activated_at_us = EXCLUDED.activated_at_us, failed = EXCLUDED.failed, \
                 last_error = EXCLUDED.last_error, heartbeat_ms = EXCLUDED.heartbeat_ms, \
                 started_at = EXCLUDED.started_at, seen_at = now() \
                 WHERE hosts.instance = EXCLUDED.instance \
                 OR (now() - hosts.seen_at) >= greatest(hosts.heartbeat_ms::bigint * 3, 5000) * interval '1 millisecond' \
                 RETURNING id",
                &named(row),
                Fetch::All,
            )
            .await;
        match written {
            Ok(out) if out.rows.is_empty() => tracing::error!(
                host_id = %self.host_id(&address),
                "control plane: another live host writes its heartbeat under this host id; give each host its own `[control] host_id`"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "control plane: cannot write the heartbeat"),
        }
    }
}

/// A manifest's files (`part/name` → SHA-256), each path checked: a part of a bundle, a plain
/// file name (no directory, no `..`, not hidden), and a SHA-256 in hex.
fn manifest_files(manifest: &Value) -> Result<BTreeMap<String, String>, String> {
    let files = manifest
        .get("files")
        .and_then(Value::as_object)
        .ok_or("its manifest has no `files`")?;
    let mut out = BTreeMap::new();
    for (path, file) in files {
        let plain = path.split_once('/').is_some_and(|(part, name)| {
            PARTS.contains(&part)
                && !name.is_empty()
                && !name.starts_with('.')
                && !name.contains(['/', '\\', '\0'])
        });
        if !plain {
            return Err(format!(
                "its manifest names a file outside a bundle: `{path}`"
            ));
        }
        let sha = file
            .get("sha256")
            .and_then(Value::as_str)
            .filter(|s| {
                s.len() == 64
                    && s.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
            .ok_or_else(|| format!("its manifest has no SHA-256 for `{path}`"))?;
        out.insert(path.clone(), sha.to_owned());
    }
    Ok(out)
}

/// Writes a generation's files from the blob cache into `dir` (made anew), each checked
/// against its SHA-256 again: a cache entry damaged on disk is dropped, to be fetched again.
fn materialize(dir: &Path, files: &BTreeMap<String, String>, blobs: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for part in PARTS {
        std::fs::create_dir_all(dir.join(part))?;
    }
    for (path, sha) in files {
        let bytes = std::fs::read(blobs.join(sha))?;
        if sha256(&bytes) != *sha {
            let _ = std::fs::remove_file(blobs.join(sha));
            return Err(std::io::Error::other(format!(
                "the cached content of `{path}` does not match its SHA-256"
            )));
        }
        std::fs::write(dir.join(path), bytes)?;
    }
    Ok(())
}

/// Checks each wanted blob (SHA-256, path) among the fetched `rows` against its name and keeps
/// it in the cache directory.
fn keep_blobs(rows: &[Row], wanted: &[(String, String)], cache: &Path) -> Result<(), StageError> {
    let mut fetched = BTreeMap::new();
    for row in rows {
        if let (Some(sha), Some(content)) = (
            row.get("sha256").and_then(Value::as_str),
            row.get("content").and_then(Value::as_str),
        ) {
            fetched.insert(sha, content);
        }
    }
    for (sha, path) in wanted {
        let Some(content) = fetched.get(sha.as_str()) else {
            return Err(StageError::Refused(format!(
                "`{path}`: its content {sha} is not stored"
            )));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| StageError::Transient(e.to_string()))?;
        if sha256(&bytes) != *sha {
            return Err(StageError::Refused(format!(
                "`{path}`: the stored content does not match its SHA-256 {sha}; refusing the generation"
            )));
        }
        write_atomically(&cache.join(sha), &bytes)
            .map_err(|e| StageError::Transient(e.to_string()))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file, so a reader never sees half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside_the_bundle() {
        let sha = "a".repeat(64);
        let ok = json!({"files": {"plugins/x.wasm": {"sha256": sha}}});
        assert_eq!(manifest_files(&ok).unwrap().len(), 1);
        for bad in [
            "plugins/../x",
            "../x",
            "plugins/.hidden",
            "plugins/a/b",
            "other/x",
            "plugins/",
        ] {
            let m = json!({"files": {bad: {"sha256": sha}}});
            assert!(manifest_files(&m).is_err(), "{bad}");
        }
        let m = json!({"files": {"plugins/x.wasm": {"sha256": "ZZ"}}});
        assert!(manifest_files(&m).is_err());
    }
}
