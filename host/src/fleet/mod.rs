//! A fleet's control plane in PostgreSQL (issue 20): bundles of policies, plugins and workflows
//! published as numbered generations, each in one transaction, its files stored once by content.
//!
//! - [`schema`]: the control schema `trellis_control`, by migrations of its own.
//! - [`bundle`]: a bundle directory, read and checked exactly as a host loads one.
//! - [`publish`]: a bundle written as a new generation, and a generation activated.
//! - [`follow`]: a host following the control plane (`serve --control`), with its heartbeat.
//! - [`status`]: every host's heartbeat and the generations (`fleet status`, `publish --wait`).
//! - [`settings`]: `[control]` of trellis.toml.
//!
//! PostgreSQL's transaction is the one source of truth: no consensus of our own.

pub(crate) mod bundle;
pub mod follow;
pub(crate) mod publish;
pub(crate) mod schema;
pub mod settings;
pub mod status;

use crate::migrate::MigrateError;
use crate::pool::PoolError;
use crate::sql::params::Params;

/// The channel `NOTIFY` announces new and activated generations on.
pub const CHANNEL: &str = "trellis_generations";

/// Why a publish or an activation did not happen. Nothing is written when it fails.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FleetError {
    /// A bundle file could not be read.
    #[error("cannot read `{path}`: {reason}")]
    Read {
        /// The file or directory.
        path: String,
        /// Why.
        reason: String,
    },
    /// The bundle does not load as a host would load it.
    #[error("the bundle does not load, nothing was published:\n{}", .0.join("\n"))]
    #[diagnostic(help(
        "fix these files, check them with `trellis serve` on the directory, and publish again"
    ))]
    Invalid(Vec<String>),
    /// The control database could not be opened.
    #[error("cannot open the control database `{database}`")]
    #[diagnostic(help(
        "check its URL (or `[databases.{database}]`), that PostgreSQL runs there, and that \
         this user may connect"
    ))]
    Connect {
        /// The database.
        database: String,
        /// Why.
        #[source]
        source: Box<crate::database::DatabaseError>,
    },
    /// A host's staging directory could not be made.
    #[error("cannot make the staging directory `{dir}`")]
    #[diagnostic(help("the host stages generations under `[paths] data`: it must be writable"))]
    Staging {
        /// The directory.
        dir: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control database is behind a transaction-mode pooler.
    #[error("the control database `{0}` is behind a transaction-mode pooler")]
    #[diagnostic(help(
        "the control plane listens for notices (LISTEN), which needs a direct connection: give \
         the PostgreSQL server's own URL"
    ))]
    Pooled(String),
    /// The control database is not PostgreSQL.
    #[error("the control database `{0}` is not PostgreSQL")]
    NotPostgres(String),
    /// The control schema could not be made current.
    #[error("cannot set up the control schema")]
    Schema(#[source] Box<MigrateError>),
    /// The database failed.
    #[error("{what}")]
    Database {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<PoolError>,
    },
    /// The LISTEN connection to the control database could not be opened.
    #[error("cannot listen for the control plane's notices")]
    #[diagnostic(help(
        "a host needs a direct connection to the control database (not through a \
         transaction-mode pooler), and the right to LISTEN"
    ))]
    Listen(#[source] sqlx::Error),
    /// Another generation was activated while `publish --wait` waited.
    #[error(
        "generation {generation} was not activated: generation {} was made active meanwhile",
        active.map_or_else(|| "none".to_owned(), |a| a.to_string())
    )]
    #[diagnostic(help(
        "someone else changed the fleet; `trellis fleet status` shows it, and `--activate` \
         chooses between the two"
    ))]
    Superseded {
        /// The generation this publish made.
        generation: i64,
        /// The one active now.
        active: Option<i64>,
    },
    /// `--activate N` named a generation never published.
    #[error("no generation {0} was ever published")]
    #[diagnostic(help("`trellis fleet status` lists the published generations"))]
    NoSuchGeneration(i64),
}

/// A JSON object as a statement's named parameters.
pub(crate) fn named(value: serde_json::Value) -> Params {
    match value {
        serde_json::Value::Object(map) => Params::Named(map),
        _ => Params::Named(serde_json::Map::new()),
    }
}

/// Wraps a pool error with what was being done.
pub(crate) fn db(what: &'static str) -> impl FnOnce(PoolError) -> FleetError {
    move |source| FleetError::Database {
        what,
        source: Box::new(source),
    }
}
