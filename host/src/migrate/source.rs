//! Where migrations come from: `migrations/<id>/` directories and Rust types implementing
//! [`Migration`], gathered into one [`MigrationSet`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::values::DatabaseKind;
use crate::pool::Lease;
use crate::sql::exec::{Fetch, Output};
use crate::sql::params::{self, Params, Statement};

/// What a migration step returns.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), StepError>> + Send + 'a>>;

/// A migration: an id, a description, the ids it depends on, and a forward (and optionally a
/// backward) step.
///
/// Rust migrations implement this and are registered with [`MigrationSet::register`]; the
/// steps get a [`Step`], which runs SQL on the runner's connection inside the runner's
/// transaction (when there is one).
pub trait Migration: Send + Sync {
    /// The unique id, e.g. `001_create_user_profile`.
    fn id(&self) -> &str;

    /// One line saying what it does.
    fn description(&self) -> &str;

    /// The ids that must be applied first.
    fn dependencies(&self) -> Vec<String>;

    /// Whether the steps run inside a transaction (on databases with transactional DDL).
    /// `false` for statements such as `CREATE INDEX CONCURRENTLY`.
    fn transactional(&self) -> bool {
        true
    }

    /// The SHA-256 (hex) recorded when the migration is applied; a different value later is
    /// drift. The default covers the id and [`Migration::fingerprint`].
    fn checksum(&self) -> String {
        checksum(&format!("rust\n{}\n{}", self.id(), self.fingerprint()))
    }

    /// For Rust migrations: a string to change when the forward step changes, so the change
    /// is reported as drift. Empty by default.
    fn fingerprint(&self) -> &str {
        ""
    }

    /// Whether there is a backward step.
    fn reversible(&self) -> bool {
        false
    }

    /// The SQL the forward (`up`) or backward step runs, for `--dry-run`; `None` for code.
    fn sql(&self, up: bool) -> Option<&str> {
        let _ = up;
        None
    }

    /// The forward step.
    fn up<'a>(&'a self, db: &'a Step<'a>) -> StepFuture<'a>;

    /// The backward step. Only called when [`Migration::reversible`] is true.
    fn down<'a>(&'a self, db: &'a Step<'a>) -> StepFuture<'a> {
        let _ = db;
        let id = self.id().to_owned();
        Box::pin(async move { Err(StepError::new(format!("migration `{id}` has no down step"))) })
    }
}

/// The connection a migration step runs on.
pub struct Step<'a> {
    lease: &'a Lease,
    kind: DatabaseKind,
}

impl<'a> Step<'a> {
    pub(crate) fn new(lease: &'a Lease, kind: DatabaseKind) -> Step<'a> {
        Step { lease, kind }
    }

    /// The database's kind (and SQL dialect).
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// Runs a script of one or more statements, as written (no parameter translation).
    pub async fn script(&self, sql: &str) -> Result<Output, StepError> {
        let stmt = script(sql, self.kind);
        if stmt.statements == 0 {
            // Only comments and whitespace (a fresh template): nothing to send.
            return Ok(Output {
                rows: Vec::new(),
                text: None,
                row_count: 0,
                returns_rows: false,
            });
        }
        Ok(self.lease.run(stmt, Fetch::All).await?)
    }

    /// Runs one statement with `:name` parameters.
    pub async fn query(
        &self,
        sql: &str,
        params: &Params,
        fetch: Fetch,
    ) -> Result<Output, StepError> {
        Ok(self.lease.execute(sql, params, fetch).await?)
    }
}

/// A script run as written: no parameters, through the simple protocol (which runs several
/// statements), and marking the connection for a reset on release.
pub(crate) fn script(sql: &str, kind: DatabaseKind) -> Statement {
    // The tokenizer counts the statements; a script it cannot read (a stray `?` or `:name`) is
    // still sent as a script, and the database has the last word on it.
    // One it cannot read may leave anything behind: its connection is closed afterwards.
    let (statements, leaves_state, outlives_transaction) =
        params::prepare(sql, &Params::None, kind)
            .map(|s| (s.statements, s.leaves_state, s.outlives_transaction))
            .unwrap_or((2, true, true));
    Statement {
        sql: sql.into(),
        args: Vec::new(),
        touches_session: true,
        leaves_state,
        // SQLite prepares a single statement; several go through `raw_sql`.
        statements,
        outlives_transaction,
        shape: params::Shape::Other,
    }
}

/// Why a migration step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    message: String,
}

impl StepError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> StepError {
        StepError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<crate::pool::PoolError> for StepError {
    fn from(e: crate::pool::PoolError) -> StepError {
        StepError::new(e.to_string())
    }
}

/// SHA-256 (lower-case hex) of `text` with `\r\n` and `\r` normalized to `\n`.
pub fn checksum(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let digest = Sha256::digest(normalized.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A migration read from `migrations/<id>/`.
#[derive(Debug, Clone)]
pub struct SqlMigration {
    id: String,
    description: String,
    dependencies: Vec<String>,
    transaction: bool,
    up: String,
    down: Option<String>,
}

/// `migration.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    description: String,
    #[serde(default)]
    dependencies: Vec<String>,
    #[serde(default = "yes")]
    transaction: bool,
}

fn yes() -> bool {
    true
}

impl SqlMigration {
    /// Reads `dir` (`up.sql`, optional `down.sql`, `migration.toml`); the id is the directory
    /// name.
    pub fn load(dir: &Path) -> Result<SqlMigration, LoadError> {
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| LoadError::BadName {
                path: dir.to_path_buf(),
            })?
            .to_owned();
        validate_id(&id).map_err(|_| LoadError::BadName {
            path: dir.to_path_buf(),
        })?;
        let read = |name: &str| -> Result<Option<String>, LoadError> {
            let path = dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(LoadError::Io {
                    path,
                    cause: e.to_string(),
                }),
            }
        };
        let manifest_path = dir.join("migration.toml");
        let manifest: Manifest = match read("migration.toml")? {
            Some(text) => toml::from_str(&text).map_err(|e| LoadError::Manifest {
                path: manifest_path.clone(),
                cause: e.message().to_owned(),
            })?,
            None => {
                return Err(LoadError::Missing {
                    path: manifest_path,
                });
            }
        };
        let up = read("up.sql")?.ok_or_else(|| LoadError::Missing {
            path: dir.join("up.sql"),
        })?;
        let down = read("down.sql")?;
        Ok(SqlMigration {
            id,
            description: manifest.description,
            dependencies: manifest.dependencies,
            transaction: manifest.transaction,
            up,
            down,
        })
    }
}

impl Migration for SqlMigration {
    fn id(&self) -> &str {
        &self.id
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn dependencies(&self) -> Vec<String> {
        self.dependencies.clone()
    }

    fn transactional(&self) -> bool {
        self.transaction
    }

    fn checksum(&self) -> String {
        checksum(&self.up)
    }

    fn reversible(&self) -> bool {
        self.down.is_some()
    }

    fn sql(&self, up: bool) -> Option<&str> {
        if up {
            Some(&self.up)
        } else {
            self.down.as_deref()
        }
    }

    fn up<'a>(&'a self, db: &'a Step<'a>) -> StepFuture<'a> {
        Box::pin(async move { db.script(&self.up).await.map(|_| ()) })
    }

    fn down<'a>(&'a self, db: &'a Step<'a>) -> StepFuture<'a> {
        Box::pin(async move {
            match &self.down {
                Some(sql) => db.script(sql).await.map(|_| ()),
                None => Err(StepError::new(format!(
                    "migration `{}` has no down.sql",
                    self.id
                ))),
            }
        })
    }
}

/// Ids are what a directory may be called: letters, digits, `_`, `-` and `.`, at most 255.
pub(crate) fn validate_id(id: &str) -> Result<(), ()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if ok { Ok(()) } else { Err(()) }
}

/// A problem reading migrations.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[non_exhaustive]
pub enum LoadError {
    /// The migrations directory or a file in it cannot be read.
    #[error("cannot read `{}`: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS message.
        cause: String,
    },
    /// A required file is missing.
    #[error("`{}` is missing", path.display())]
    #[diagnostic(help(
        "every migration directory holds `migration.toml` and `up.sql`; `trellis migrate new NAME` writes both"
    ))]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// `migration.toml` does not parse.
    #[error("`{}`: {cause}", path.display())]
    Manifest {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        cause: String,
    },
    /// A directory name that cannot be an id.
    #[error("`{}` is not a valid migration id", path.display())]
    #[diagnostic(help("use letters, digits, `_`, `-` and `.` (e.g. `004_add_user_settings`)"))]
    BadName {
        /// The directory.
        path: PathBuf,
    },
    /// Two migrations share an id.
    #[error("two migrations have the id `{id}`")]
    Duplicate {
        /// The id.
        id: String,
    },
}

/// The migrations a runner knows, by id.
#[derive(Clone, Default)]
pub struct MigrationSet {
    migrations: BTreeMap<String, Arc<dyn Migration>>,
}

impl std::fmt::Debug for MigrationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.migrations.keys()).finish()
    }
}

impl MigrationSet {
    /// An empty set.
    pub fn new() -> MigrationSet {
        MigrationSet::default()
    }

    /// Reads every subdirectory of `dir` as a migration. A missing `dir` is an empty set.
    /// Entries that are not directories, and hidden ones, are skipped.
    pub fn from_dir(dir: &Path) -> Result<MigrationSet, LoadError> {
        let mut set = MigrationSet::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(set),
            Err(e) => {
                return Err(LoadError::Io {
                    path: dir.to_path_buf(),
                    cause: e.to_string(),
                });
            }
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LoadError::Io {
                path: dir.to_path_buf(),
                cause: e.to_string(),
            })?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if path.is_dir() && !hidden {
                dirs.push(path);
            }
        }
        dirs.sort();
        for path in dirs {
            set.register(Arc::new(SqlMigration::load(&path)?))?;
        }
        Ok(set)
    }

    /// Adds a migration; an id already present is an error.
    pub fn register(&mut self, migration: Arc<dyn Migration>) -> Result<(), LoadError> {
        let id = migration.id().to_owned();
        if self.migrations.contains_key(&id) {
            return Err(LoadError::Duplicate { id });
        }
        self.migrations.insert(id, migration);
        Ok(())
    }

    /// The migration called `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<dyn Migration>> {
        self.migrations.get(id)
    }

    /// Every migration, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Migration>> {
        self.migrations.values()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.migrations.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.migrations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_line_endings_only() {
        assert_eq!(checksum("a\r\nb\r\n"), checksum("a\nb\n"));
        assert_eq!(checksum("a\rb"), checksum("a\nb"));
        assert_ne!(checksum("a\nb"), checksum("a\nb "));
        assert_eq!(
            checksum(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn loads_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("001_init");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(
            dir.join("migration.toml"),
            "description = \"init\"\ndependencies = []\ntransaction = false\n",
        )
        .unwrap();
        std::fs::write(dir.join("up.sql"), "CREATE TABLE t (x INT);\r\n").unwrap();
        std::fs::write(root.path().join("README"), "not a migration").unwrap();
        let set = MigrationSet::from_dir(root.path()).unwrap();
        assert_eq!(set.len(), 1);
        let m = set.get("001_init").unwrap();
        assert_eq!(m.description(), "init");
        assert!(!m.transactional());
        assert!(!m.reversible());
        assert_eq!(m.checksum(), checksum("CREATE TABLE t (x INT);\n"));
    }

    #[test]
    fn a_missing_up_sql_is_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("001_init");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("migration.toml"), "").unwrap();
        let err = MigrationSet::from_dir(root.path()).unwrap_err();
        assert!(err.to_string().contains("001_init/up.sql"), "{err}");
    }
}
