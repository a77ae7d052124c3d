//! The runner: init, status, plan, apply, rollback and resolve, each on one leased connection
//! under the migration lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::history::{self, HistoryRow, NewRow};
use super::lock::{DbLock, LockError, step_lock_sql};
use super::plan::{Plan, PlanError};
use super::source::{LoadError, Migration, MigrationSet, Step, StepError, script};
use crate::config::values::DatabaseKind;
use crate::pool::{Lease, Pool, PoolError};
use crate::sql::exec::Fetch;

/// Why a migration command failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum MigrateError {
    /// The migrations could not be read.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Load(#[from] LoadError),
    /// The migrations cannot be ordered.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plan(#[from] PlanError),
    /// The lock could not be taken.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lock(#[from] LockError),
    /// The database failed outside a migration step.
    #[error("{during}")]
    Database {
        /// What the runner was doing.
        during: &'static str,
        /// The failure.
        #[source]
        cause: Box<PoolError>,
    },
    /// An applied migration's file changed.
    #[error(
        "migration `{id}` was applied with checksum {recorded} but its up step now has checksum {current}: it changed after it was applied (drift)"
    )]
    #[diagnostic(help(
        "restore `{id}` as it was and put the change in a new migration (`trellis migrate new NAME --depends-on {id}`)"
    ))]
    Drift {
        /// The migration.
        id: String,
        /// The first 12 hex digits recorded in the history.
        recorded: String,
        /// The first 12 hex digits of the current content.
        current: String,
    },
    /// A step outside a transaction did not finish.
    #[error(
        "migration `{id}` is dirty: a step outside a transaction did not finish ({error}); no migration runs until it is resolved"
    )]
    #[diagnostic(help(
        "repair the database by hand, then run `trellis migrate resolve {id}` (add `--applied` if the repair completed the migration)"
    ))]
    Dirty {
        /// The migration.
        id: String,
        /// What the history says.
        error: String,
    },
    /// A step failed.
    #[error(
        "migration `{id}` failed in its {step} step{}: {cause}",
        if *dirty { ", outside a transaction" } else { "" }
    )]
    #[diagnostic(help("{}", failed_help(id, *dirty)))]
    Failed {
        /// The migration.
        id: String,
        /// `up` or `down`.
        step: &'static str,
        /// What went wrong.
        cause: String,
        /// The step ran outside a transaction: the history row is now dirty.
        dirty: bool,
    },
    /// Rolling back needs a down step that does not exist.
    #[error(
        "migration `{id}` has no down step, so the rollback stops before it; nothing was rolled back"
    )]
    #[diagnostic(help("add `{id}/down.sql`, or roll back to `{id}` or a later migration"))]
    NoDown {
        /// The migration.
        id: String,
    },
    /// An id given on the command line is unknown.
    #[error("no migration `{id}`")]
    #[diagnostic(help("`trellis migrate status` lists the known ids"))]
    UnknownTarget {
        /// The id.
        id: String,
    },
    /// The history holds an applied migration that is not on disk, and the rollback needs it.
    #[error(
        "migration `{id}` is applied but not among the known migrations, so it cannot be rolled back"
    )]
    #[diagnostic(help("restore `{id}` in the migrations directory"))]
    UnknownApplied {
        /// The id.
        id: String,
    },
    /// `resolve` of a migration that is not dirty.
    #[error("migration `{id}` is not dirty: there is nothing to resolve")]
    NotDirty {
        /// The id.
        id: String,
    },
    /// A non-transactional PostgreSQL migration holds several statements: PostgreSQL would run
    /// them as one implicit transaction.
    #[error(
        "migration `{id}` has `transaction = false` but its up.sql holds {statements} statements; PostgreSQL runs a multi-statement script as one implicit transaction, so statements such as `CREATE INDEX CONCURRENTLY` would fail"
    )]
    #[diagnostic(help("put one statement in each non-transactional migration"))]
    NonTransactionalScript {
        /// The migration.
        id: String,
        /// How many statements.
        statements: usize,
    },
}

fn failed_help(id: &str, dirty: bool) -> String {
    if dirty {
        format!(
            "the database may be half-changed and the migration is marked dirty; repair it by hand, then run `trellis migrate resolve {id}` (add `--applied` if the repair completed the migration)"
        )
    } else {
        format!(
            "the step ran in a transaction that was rolled back, so the schema is unchanged; fix `{id}` and run the command again"
        )
    }
}

fn db(during: &'static str) -> impl FnOnce(PoolError) -> MigrateError {
    move |cause| MigrateError::Database {
        during,
        cause: Box::new(cause),
    }
}

/// Watches a run: called before and after each step.
pub trait Progress: Send {
    /// The run will take at most `total` steps.
    fn start(&mut self, total: usize) {
        let _ = total;
    }
    /// A step starts.
    fn begin(&mut self, id: &str) {
        let _ = id;
    }
    /// A step ended: it ran (in `elapsed`), or another runner had already done it (`None`).
    fn finish(&mut self, id: &str, elapsed: Option<Duration>) {
        let _ = (id, elapsed);
    }
}

impl Progress for () {}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The migrations this runner applied (or rolled back), in order, with their time.
    pub ran: Vec<(String, Duration)>,
    /// The ones another runner had done by the time this one got the lock.
    pub skipped: Vec<String>,
}

/// Which migrations a rollback undoes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTarget {
    /// Everything that depends on this id, directly or not; the id itself stays applied.
    To(String),
    /// Every applied migration.
    All,
}

/// Where one migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusState {
    /// Applied, with the same checksum as now.
    Applied,
    /// Applied, but the file changed since.
    Drifted,
    /// Not applied (never, failed, or rolled back).
    Pending,
    /// Marked dirty: blocks every run until resolved.
    Dirty,
    /// Applied but not among the known migrations.
    Orphan,
}

impl StatusState {
    /// The word `trellis migrate status` prints.
    pub fn as_str(&self) -> &'static str {
        match self {
            StatusState::Applied => "applied",
            StatusState::Drifted => "drifted",
            StatusState::Pending => "pending",
            StatusState::Dirty => "dirty",
            StatusState::Orphan => "orphan",
        }
    }
}

/// One line of the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEntry {
    /// The migration id.
    pub id: String,
    /// Its description.
    pub description: String,
    /// Where it stands.
    pub state: StatusState,
    /// Its history row, if it ever ran.
    pub history: Option<HistoryRow>,
}

/// Every known migration in plan order, then applied ones that are not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether `trellis_migrations` exists.
    pub initialized: bool,
    /// The entries.
    pub entries: Vec<StatusEntry>,
}

/// Runs migrations against one pool.
pub struct Runner {
    pool: Pool,
    set: MigrationSet,
    by: String,
    lock_wait: Duration,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("pool", &self.pool)
            .field("migrations", &self.set)
            .finish()
    }
}

impl Runner {
    /// A runner for `set` on `pool`, recording `$USER` (or `unknown`) as who ran it.
    pub fn new(pool: Pool, set: MigrationSet) -> Runner {
        let by = std::env::var("USER")
            .or_else(|_| std::env::var("USERNAME"))
            .unwrap_or_else(|_| "unknown".to_owned());
        Runner {
            pool,
            set,
            by,
            lock_wait: Duration::from_secs(600),
        }
    }

    /// Records `by` as who applied or rolled back.
    pub fn by(mut self, by: impl Into<String>) -> Runner {
        self.by = by.into();
        self
    }

    /// How long to wait for another runner's lock (default 10 minutes).
    pub fn lock_wait(mut self, wait: Duration) -> Runner {
        self.lock_wait = wait;
        self
    }

    /// The known migrations.
    pub fn migrations(&self) -> &MigrationSet {
        &self.set
    }

    fn kind(&self) -> DatabaseKind {
        self.pool.kind()
    }

    async fn lock(&self) -> Result<DbLock, MigrateError> {
        let lease = self
            .pool
            .acquire()
            .await
            .map_err(db("cannot connect to run migrations"))?;
        if self.per_step() {
            return Ok(DbLock::per_step(lease, self.kind()));
        }
        Ok(DbLock::acquire(lease, self.kind(), self.lock_wait).await?)
    }

    /// Whether each step's transaction takes the lock (SQLite, and PostgreSQL behind a
    /// transaction-mode pooler) instead of one lock held for the whole run.
    fn per_step(&self) -> bool {
        self.kind() == DatabaseKind::Sqlite || self.pool.behind_pooler()
    }

    /// Opens the transaction a step runs in: SQLite's takes the write lock at once; behind a
    /// transaction-mode pooler PostgreSQL's takes the migration lock (see `super::lock`).
    async fn begin(&self, lease: &Lease, what: &'static str) -> Result<(), MigrateError> {
        if self.kind() == DatabaseKind::Postgres && self.pool.behind_pooler() {
            return match run(lease, &step_lock_sql(self.lock_wait)).await {
                Err(e) if lock_not_available(&e) => Err(LockError::Timeout(self.lock_wait).into()),
                other => other.map_err(db(what)),
            };
        }
        let sql = match self.kind() {
            DatabaseKind::Sqlite => "BEGIN IMMEDIATE",
            _ => "BEGIN",
        };
        run(lease, sql).await.map_err(db(what))
    }

    /// Creates `trellis_migrations` when missing. Idempotent.
    pub async fn init(&self) -> Result<(), MigrateError> {
        let lock = self.lock().await?;
        let result = self.init_locked(lock.lease()).await;
        finish(lock, result).await
    }

    async fn init_locked(&self, lease: &Lease) -> Result<(), MigrateError> {
        // Behind a pooler the check and the creation are one locked transaction.
        let pooled = self.pool.behind_pooler();
        if pooled {
            self.begin(lease, "cannot begin a transaction").await?;
        }
        let created = self.create_history(lease).await;
        if pooled {
            let end = if created.is_ok() {
                "COMMIT"
            } else {
                "ROLLBACK"
            };
            run(lease, end)
                .await
                .map_err(db("cannot end the transaction"))?;
        }
        created
    }

    async fn create_history(&self, lease: &Lease) -> Result<(), MigrateError> {
        let kind = self.kind();
        if history::exists(lease, kind)
            .await
            .map_err(db("cannot read the migration history"))?
        {
            return Ok(());
        }
        run(lease, history::create_table_sql(kind))
            .await
            .map_err(db("cannot create `trellis_migrations`"))?;
        Ok(())
    }

    /// The history (empty when the table does not exist yet), without locking.
    async fn read_history(
        &self,
        lease: &Lease,
    ) -> Result<(bool, BTreeMap<String, HistoryRow>), MigrateError> {
        if !history::exists(lease, self.kind())
            .await
            .map_err(db("cannot read the migration history"))?
        {
            return Ok((false, BTreeMap::new()));
        }
        let rows = history::read_all(lease)
            .await
            .map_err(db("cannot read the migration history"))?;
        Ok((true, rows.into_iter().map(|r| (r.id.clone(), r)).collect()))
    }

    /// Every migration and where it stands.
    pub async fn status(&self) -> Result<Status, MigrateError> {
        let plan = Plan::new(&self.set)?;
        let lease = self
            .pool
            .acquire()
            .await
            .map_err(db("cannot connect to read the migration history"))?;
        let (initialized, rows) = self.read_history(&lease).await?;
        drop(lease);
        let mut entries = Vec::new();
        for id in plan.order() {
            let m = self.set.get(id).expect("the plan holds known ids");
            let row = rows.get(id).cloned();
            let state = match &row {
                Some(r) if r.dirty => StatusState::Dirty,
                Some(r) if r.is_applied() && r.checksum != m.checksum() => StatusState::Drifted,
                Some(r) if r.is_applied() => StatusState::Applied,
                _ => StatusState::Pending,
            };
            entries.push(StatusEntry {
                id: id.clone(),
                description: m.description().to_owned(),
                state,
                history: row,
            });
        }
        for (id, row) in rows {
            if !plan.contains(&id) && (row.is_applied() || row.dirty) {
                entries.push(StatusEntry {
                    id,
                    description: row.description.clone(),
                    state: if row.dirty {
                        StatusState::Dirty
                    } else {
                        StatusState::Orphan
                    },
                    history: Some(row),
                });
            }
        }
        Ok(Status {
            initialized,
            entries,
        })
    }

    /// The migrations `apply` would run (up to and including `to`, with its dependencies), in
    /// order. Changes nothing; fails on drift and on a dirty history like `apply` does.
    pub async fn plan(&self, to: Option<&str>) -> Result<Vec<Arc<dyn Migration>>, MigrateError> {
        let plan = Plan::new(&self.set)?;
        let lease = self
            .pool
            .acquire()
            .await
            .map_err(db("cannot connect to read the migration history"))?;
        let (_, rows) = self.read_history(&lease).await?;
        drop(lease);
        self.pending(&plan, &rows, to)
    }

    fn pending(
        &self,
        plan: &Plan,
        rows: &BTreeMap<String, HistoryRow>,
        to: Option<&str>,
    ) -> Result<Vec<Arc<dyn Migration>>, MigrateError> {
        self.check_history(rows)?;
        let wanted = match to {
            Some(to) if !plan.contains(to) => {
                return Err(MigrateError::UnknownTarget { id: to.to_owned() });
            }
            Some(to) => Some(plan.ancestors(to)),
            None => None,
        };
        Ok(plan
            .order()
            .iter()
            .filter(|id| wanted.as_ref().is_none_or(|w| w.contains(*id)))
            .filter(|id| !rows.get(*id).is_some_and(HistoryRow::is_applied))
            .map(|id| self.set.get(id).expect("the plan holds known ids").clone())
            .collect())
    }

    /// Dirty rows and drift stop every run.
    fn check_history(&self, rows: &BTreeMap<String, HistoryRow>) -> Result<(), MigrateError> {
        if let Some(row) = rows.values().find(|r| r.dirty) {
            return Err(MigrateError::Dirty {
                id: row.id.clone(),
                error: row.error.clone().unwrap_or_default(),
            });
        }
        for row in rows.values().filter(|r| r.is_applied()) {
            if let Some(m) = self.set.get(&row.id) {
                let current = m.checksum();
                if current != row.checksum {
                    return Err(MigrateError::Drift {
                        id: row.id.clone(),
                        recorded: short(&row.checksum),
                        current: short(&current),
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies every pending migration (or only `to` and its dependencies), each once, under the
    /// lock.
    pub async fn apply(
        &self,
        to: Option<&str>,
        progress: &mut dyn Progress,
    ) -> Result<Applied, MigrateError> {
        let plan = Plan::new(&self.set)?;
        let lock = self.lock().await?;
        let result = self.apply_locked(lock.lease(), &plan, to, progress).await;
        finish(lock, result).await
    }

    async fn apply_locked(
        &self,
        lease: &Lease,
        plan: &Plan,
        to: Option<&str>,
        progress: &mut dyn Progress,
    ) -> Result<Applied, MigrateError> {
        self.init_locked(lease).await?;
        let (_, rows) = self.read_history(lease).await?;
        let pending = self.pending(plan, &rows, to)?;
        if self.kind() == DatabaseKind::Postgres {
            for m in pending.iter().filter(|m| !m.transactional()) {
                if let Some(sql) = m.sql(true) {
                    let statements = script(sql, DatabaseKind::Postgres).statements;
                    if statements > 1 {
                        return Err(MigrateError::NonTransactionalScript {
                            id: m.id().to_owned(),
                            statements,
                        });
                    }
                }
            }
        }
        progress.start(pending.len());
        let mut applied = Applied::default();
        for m in pending {
            progress.begin(m.id());
            let outcome = self.apply_one(lease, m.as_ref()).await?;
            progress.finish(m.id(), outcome);
            match outcome {
                Some(elapsed) => applied.ran.push((m.id().to_owned(), elapsed)),
                None => applied.skipped.push(m.id().to_owned()),
            }
        }
        Ok(applied)
    }

    /// Whether `m` runs inside a transaction here.
    fn in_transaction(&self, m: &dyn Migration) -> bool {
        m.transactional() && self.kind() != DatabaseKind::Mysql
    }

    /// Applies one migration; `None` when another runner already did.
    async fn apply_one(
        &self,
        lease: &Lease,
        m: &dyn Migration,
    ) -> Result<Option<Duration>, MigrateError> {
        if self.in_transaction(m) {
            self.apply_in_transaction(lease, m).await
        } else {
            self.apply_marked(lease, m).await
        }
    }

    /// Applies one migration and records it in one transaction; a failed step is rolled back,
    /// then recorded as failed (not dirty).
    async fn apply_in_transaction(
        &self,
        lease: &Lease,
        m: &dyn Migration,
    ) -> Result<Option<Duration>, MigrateError> {
        let kind = self.kind();
        let id = m.id();
        let checksum = m.checksum();
        let step = Step::new(lease, kind);
        self.begin(lease, "cannot begin the migration's transaction")
            .await?;
        match self.run_recorded(lease, m, &step, &checksum).await {
            Ok(Some(Ok(elapsed))) => {
                run(lease, "COMMIT")
                    .await
                    .map_err(db("cannot commit the migration"))?;
                tracing::info!(migration = id, ?elapsed, "migration applied");
                Ok(Some(elapsed))
            }
            Ok(None) => {
                run(lease, "COMMIT")
                    .await
                    .map_err(db("cannot end the transaction"))?;
                Ok(None)
            }
            Ok(Some(Err(step_error))) => {
                run(lease, "ROLLBACK")
                    .await
                    .map_err(db("cannot roll back the failed migration"))?;
                history::put(
                    lease,
                    kind,
                    NewRow {
                        id,
                        description: m.description(),
                        checksum: &checksum,
                        by: &self.by,
                        execution_ms: None,
                        success: false,
                        error: Some(step_error.message()),
                        dirty: false,
                    },
                )
                .await
                .map_err(db("cannot record the failed migration"))?;
                Err(MigrateError::Failed {
                    id: id.to_owned(),
                    step: "up",
                    cause: step_error.message().to_owned(),
                    dirty: false,
                })
            }
            Err(e) => {
                let _ = run(lease, "ROLLBACK").await;
                Err(e)
            }
        }
    }

    /// Inside the migration's transaction: runs the up step and records it as applied. `None`
    /// when another runner already applied it; `Some(Err)` when the step failed.
    async fn run_recorded(
        &self,
        lease: &Lease,
        m: &dyn Migration,
        step: &Step<'_>,
        checksum: &str,
    ) -> Result<Option<Result<Duration, StepError>>, MigrateError> {
        let id = m.id();
        if already_applied(lease, id).await? {
            return Ok(None);
        }
        let started = Instant::now();
        if let Err(e) = m.up(step).await {
            return Ok(Some(Err(e)));
        }
        let elapsed = started.elapsed();
        history::put(
            lease,
            self.kind(),
            NewRow {
                id,
                description: m.description(),
                checksum,
                by: &self.by,
                execution_ms: Some(millis(elapsed)),
                success: true,
                error: None,
                dirty: false,
            },
        )
        .await
        .map_err(db("cannot record the migration"))?;
        Ok(Some(Ok(elapsed)))
    }

    /// Applies one migration outside a transaction: marks its row dirty first (under SQLite's
    /// write lock, the check and the mark are one transaction), runs the step, then clears the
    /// mark (or records the error, leaving the row dirty).
    async fn apply_marked(
        &self,
        lease: &Lease,
        m: &dyn Migration,
    ) -> Result<Option<Duration>, MigrateError> {
        let kind = self.kind();
        let id = m.id();
        let checksum = m.checksum();
        let step = Step::new(lease, kind);
        if self.per_step() {
            self.begin(lease, "cannot begin a transaction").await?;
        }
        let marked = async {
            if already_applied(lease, id).await? {
                return Ok::<bool, MigrateError>(false);
            }
            history::put(
                lease,
                kind,
                NewRow {
                    id,
                    description: m.description(),
                    checksum: &checksum,
                    by: &self.by,
                    execution_ms: None,
                    success: false,
                    error: Some("the up step started and did not finish"),
                    dirty: true,
                },
            )
            .await
            .map_err(db("cannot record the migration"))?;
            Ok(true)
        }
        .await;
        if self.per_step() {
            let end = if marked.is_ok() { "COMMIT" } else { "ROLLBACK" };
            run(lease, end)
                .await
                .map_err(db("cannot end the transaction"))?;
        }
        if !marked? {
            return Ok(None);
        }
        let started = Instant::now();
        match m.up(&step).await {
            Ok(()) => {
                let elapsed = started.elapsed();
                history::finish_applied(lease, id, millis(elapsed))
                    .await
                    .map_err(db("cannot record the migration"))?;
                tracing::info!(migration = id, ?elapsed, "migration applied");
                Ok(Some(elapsed))
            }
            Err(step_error) => {
                history::set_error(lease, id, step_error.message(), true)
                    .await
                    .map_err(db("cannot record the failed migration"))?;
                Err(MigrateError::Failed {
                    id: id.to_owned(),
                    step: "up",
                    cause: step_error.message().to_owned(),
                    dirty: true,
                })
            }
        }
    }

    /// Rolls back, in reverse dependency order, under the lock. Every migration to roll back
    /// must have a down step; otherwise nothing is rolled back.
    pub async fn rollback(
        &self,
        target: RollbackTarget,
        progress: &mut dyn Progress,
    ) -> Result<Applied, MigrateError> {
        let plan = Plan::new(&self.set)?;
        let lock = self.lock().await?;
        let result = self
            .rollback_locked(lock.lease(), &plan, &target, progress)
            .await;
        finish(lock, result).await
    }

    async fn rollback_locked(
        &self,
        lease: &Lease,
        plan: &Plan,
        target: &RollbackTarget,
        progress: &mut dyn Progress,
    ) -> Result<Applied, MigrateError> {
        self.init_locked(lease).await?;
        let (_, rows) = self.read_history(lease).await?;
        self.check_history(&rows)?;
        let undo: BTreeSet<String> = match target {
            RollbackTarget::To(id) => {
                if !plan.contains(id) {
                    return Err(MigrateError::UnknownTarget { id: id.clone() });
                }
                plan.descendants(id)
            }
            RollbackTarget::All => {
                if let Some(orphan) = rows
                    .values()
                    .find(|r| r.is_applied() && !plan.contains(&r.id))
                {
                    return Err(MigrateError::UnknownApplied {
                        id: orphan.id.clone(),
                    });
                }
                plan.order().iter().cloned().collect()
            }
        };
        let todo: Vec<Arc<dyn Migration>> = plan
            .order()
            .iter()
            .rev()
            .filter(|id| undo.contains(*id) && rows.get(*id).is_some_and(HistoryRow::is_applied))
            .map(|id| self.set.get(id).expect("the plan holds known ids").clone())
            .collect();
        if let Some(m) = todo.iter().find(|m| !m.reversible()) {
            return Err(MigrateError::NoDown {
                id: m.id().to_owned(),
            });
        }
        progress.start(todo.len());
        let mut done = Applied::default();
        for m in todo {
            progress.begin(m.id());
            let outcome = self.rollback_one(lease, m.as_ref()).await?;
            progress.finish(m.id(), outcome);
            match outcome {
                Some(elapsed) => done.ran.push((m.id().to_owned(), elapsed)),
                None => done.skipped.push(m.id().to_owned()),
            }
        }
        Ok(done)
    }

    async fn rollback_one(
        &self,
        lease: &Lease,
        m: &dyn Migration,
    ) -> Result<Option<Duration>, MigrateError> {
        let kind = self.kind();
        let id = m.id();
        let step = Step::new(lease, kind);
        let transactional = self.in_transaction(m);
        if transactional || self.per_step() {
            self.begin(lease, "cannot begin the rollback's transaction")
                .await?;
        }
        let row = history::read_one(lease, id).await;
        let applied = matches!(&row, Ok(Some(r)) if r.is_applied());
        if row.is_err() || !applied {
            if transactional || self.per_step() {
                let _ = run(lease, "ROLLBACK").await;
            }
            row.map_err(db("cannot read the migration history"))?;
            return Ok(None);
        }
        let started = Instant::now();
        if transactional {
            match m.down(&step).await {
                Ok(()) => {
                    let recorded = history::mark_rolled_back(lease, kind, id, &self.by).await;
                    if let Err(e) = recorded {
                        let _ = run(lease, "ROLLBACK").await;
                        return Err(db("cannot record the rollback")(e));
                    }
                    run(lease, "COMMIT")
                        .await
                        .map_err(db("cannot commit the rollback"))?;
                }
                Err(step_error) => {
                    run(lease, "ROLLBACK")
                        .await
                        .map_err(db("cannot roll back the failed down step"))?;
                    return Err(MigrateError::Failed {
                        id: id.to_owned(),
                        step: "down",
                        cause: step_error.message().to_owned(),
                        dirty: false,
                    });
                }
            }
        } else {
            let marked =
                history::set_error(lease, id, "the down step started and did not finish", true)
                    .await;
            if self.per_step() {
                let end = if marked.is_ok() { "COMMIT" } else { "ROLLBACK" };
                run(lease, end)
                    .await
                    .map_err(db("cannot end the transaction"))?;
            }
            marked.map_err(db("cannot record the rollback"))?;
            match m.down(&step).await {
                Ok(()) => history::mark_rolled_back(lease, kind, id, &self.by)
                    .await
                    .map_err(db("cannot record the rollback"))?,
                Err(step_error) => {
                    history::set_error(lease, id, step_error.message(), true)
                        .await
                        .map_err(db("cannot record the failed rollback"))?;
                    return Err(MigrateError::Failed {
                        id: id.to_owned(),
                        step: "down",
                        cause: step_error.message().to_owned(),
                        dirty: true,
                    });
                }
            }
        }
        let elapsed = started.elapsed();
        tracing::info!(migration = id, ?elapsed, "migration rolled back");
        Ok(Some(elapsed))
    }

    /// Clears the dirty marker of `id` after a manual repair: the migration counts as applied
    /// when `applied`, as not applied (it runs again on the next apply) otherwise.
    pub async fn resolve(&self, id: &str, applied: bool) -> Result<(), MigrateError> {
        let lock = self.lock().await?;
        let result = async {
            let lease = lock.lease();
            self.init_locked(lease).await?;
            let row = history::read_one(lease, id)
                .await
                .map_err(db("cannot read the migration history"))?;
            if !row.is_some_and(|r| r.dirty) {
                return Err(MigrateError::NotDirty { id: id.to_owned() });
            }
            history::resolve(lease, id, applied, &self.by)
                .await
                .map_err(db("cannot resolve the migration"))?;
            tracing::info!(migration = id, applied, "dirty migration resolved");
            Ok(())
        }
        .await;
        finish(lock, result).await
    }
}

/// Releases the lock whatever the result; a failed release only matters when all else went well.
async fn finish<T>(lock: DbLock, result: Result<T, MigrateError>) -> Result<T, MigrateError> {
    let released = lock.release().await;
    let value = result?;
    released.map_err(db("cannot release the migration lock"))?;
    Ok(value)
}

/// Runs one statement without parameters.
async fn run(lease: &Lease, sql: &str) -> Result<(), PoolError> {
    lease
        .execute(sql, &crate::sql::params::Params::None, Fetch::All)
        .await
        .map(|_| ())
}

/// `55P03`: the lock was not taken within `lock_timeout`.
fn lock_not_available(e: &PoolError) -> bool {
    matches!(e, PoolError::Query(crate::pool::QueryError::Database { sqlstate: Some(code), .. }) if code == "55P03")
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn short(checksum: &str) -> String {
    checksum.chars().take(12).collect()
}

/// Reads `id`'s history row under the lock: whether it is applied already; a dirty row is an
/// error naming it.
async fn already_applied(lease: &Lease, id: &str) -> Result<bool, MigrateError> {
    let row = history::read_one(lease, id)
        .await
        .map_err(db("cannot read the migration history"))?;
    match row {
        Some(row) if row.dirty => Err(MigrateError::Dirty {
            id: row.id,
            error: row.error.unwrap_or_default(),
        }),
        Some(row) => Ok(row.is_applied()),
        None => Ok(false),
    }
}
