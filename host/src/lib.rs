//! Trellis host runtime.
//!
//! Trellis runs policy-guarded data workflows. The host owns the database drivers and the
//! connection pools; node logic and masking transforms are WebAssembly components loaded from a
//! directory; every access decision is made by Cedar. This crate is the library behind the
//! `trellis` binary, and can be embedded.
//!
//! It is not an ORM, and not a general plugin host: plugins see only the capabilities the host
//! grants them, and only after the policy engine agrees.
//!
//! # Layout
//!
//! The modules are the crate's own; what an embedder uses is re-exported at the root (the
//! `trellis` binary, the benches and the end-to-end tests use only that). Data flows one way:
//! server → workflow runtime → policy → node → masking → response.
//!
//! - `alloc`: the binary's global allocator (mimalloc, without its alignment checks when a
//!   word's alignment suffices).
//! - `auth`: who is calling: JWT bearer tokens, or a trusted header in dev mode (loopback only).
//! - `cli`: the `trellis` subcommands, one file each, and the edge that draws an error once.
//! - `config`: `trellis.toml`: finding and reading it; its shared value types (`values`:
//!   secrets kept out of logs and errors, `${VAR}` interpolation) and `[databases]` (`database`).
//! - `database`: the databases named in the configuration, one pool each (or one per tenant).
//! - `diagnostic`: errors with the lines at fault and their help, rendered once at the edge.
//! - `json`: JSON objects built by moving their values in (`json!` copies them).
//! - `migrate`: migrations: dependency-ordered, locked, checksummed, reversible.
//! - `pool`: WorkflowConnectionPool: connection actors, a supervisor, leases, stats; the
//!   Kailash JSON operations; the per-tenant AsyncConnectionManager.
//! - `sql`: AsyncSQLDatabaseNode: named parameters per dialect, rows as JSON, retries; the one
//!   module that speaks sqlx (its driver connections, with TLS).
//! - `plugins`: WebAssembly plugins: engine, sandbox, registry and hot reload.
//! - `policy`: Kailash-style rules compiled to Cedar, native Cedar policies, masking, audit.
//! - `vector`: AsyncPostgreSQLVectorNode: pgvector tables, indexes, batch inserts, filtered
//!   search; exact search on the embedded SQLite.
//! - `workflow`: workflow files and the builder, the DAG runtime, the access-controlled
//!   runtime (policy before, masking after), the watched workflows directory.
//! - `server`: the HTTP API (axum): health, metrics, pools, plugins, workflows, policy.
//! - `tls`: TLS to database servers (libpq's `sslmode`), from URL parameters or config keys.
//! - `watch`: the one directory watcher (`--watch`): debounced, and only stable files.
//! - `shutdown`: the one stop signal (SIGINT, SIGTERM or a test's own future).

mod alloc;
pub(crate) mod auth;
pub(crate) mod cli;
pub(crate) mod config;
pub(crate) mod database;
pub(crate) mod diagnostic;
pub(crate) mod fleet;
pub(crate) mod generation;
mod json;
mod loopback;
pub(crate) mod migrate;
mod node_keys;
pub(crate) mod plugins;
pub(crate) mod policy;
pub(crate) mod pool;
mod private_fs;
mod served_file;
pub(crate) mod server;
pub(crate) mod shutdown;
pub(crate) mod sql;
mod suggest;
pub(crate) mod tls;
pub(crate) mod vector;
pub(crate) mod watch;
pub(crate) mod workflow;

// The library's surface: the modules are the crate's own; what an embedder (and the `trellis`
// binary, the benches and the end-to-end tests) uses is re-exported here.

/// The global allocator of the binary and the benches.
pub use alloc::Allocator;
/// The `trellis` command line, for the binary.
pub use cli::report::render as render_error;
pub use cli::{Cli, LogFormat, exit_code, run as run_cli};
/// `trellis.toml` and database targets.
pub use config::{
    Config, DatabaseConfig, DatabaseKind, DatabaseTarget, Pooler, Secret, parse_database_url,
};
pub use database::Databases;
/// A configured database's pool.
pub use database::open as open_database;
/// An error's text without its drawing.
pub use diagnostic::plain as plain_error;
/// One numbered generation of policies, plugins and workflows, which a run pins.
pub use generation::{Generation, Generations};
/// Migrations.
pub use migrate::lock::{DbLock, LockError};
pub use migrate::{
    MigrateError, Migration, MigrationSet, PlanError, RollbackTarget, Runner as MigrationRunner,
    StatusState, Step as MigrationStep, StepFuture as MigrationStepFuture,
};
/// WebAssembly plugins.
pub use plugins::{
    CacheOutcome, CallConfig, CallError, DEFAULT_DEBOUNCE, DatabaseCallError, DatabaseErrorKind,
    DatabaseGate, DatabaseRequest, EngineOptions, Limits as PluginLimits, LimitsConfig,
    LoadError as PluginLoadError, LoadStatus as PluginLoadStatus, MaskInput, Plugin, PluginEngine,
    PluginKind, PluginRegistry, PluginWatcher, REDACTED, ReloadOutcome,
};
/// Policy: rules, Cedar, masking.
pub use policy::rules::{FieldPath, MaskType};
pub use policy::{
    AccessRequest, EngineSettings, Masker, PolicyEngine, PolicyGeneration, PreparedUser,
    ResourceType, UserContext,
};
/// Connection pools.
pub use pool::manager::{ConnectionManager, ManagerError, ManagerPoolConfig};
pub use pool::ops::{PoolOperations, PoolRequest};
pub use pool::{Pool, PoolConfig, PoolError, QueryError};
/// SQL.
pub use sql::error::DatabaseError;
pub use sql::exec::ExecError;
pub use sql::params::prepare as prepare_statement;
pub use sql::{ErrorKind, Fetch, Output, Params, Row, SqlError, SqlNode, SqlNodeConfig};
/// Vectors.
pub use vector::{
    Filter as VectorFilter, IndexSpec, IndexType, Metric, NewVector, SearchQuery, TableName,
    VectorError, VectorNode, VectorStore,
};
/// Workflows: files and the builder, the runtime, policy in front of it.
pub use workflow::{
    AccessControlledRuntime, AnyName, DatabaseCaller, DatabasePolicy, InputType, NodeError, Pinned,
    Plan, PluginDatabase, RunError, RunOutput, RunReport, Runtime, Workflow, WorkflowBuilder,
    WorkflowSet, decided_by as database_policy,
};

/// The version of this build, as shown by `/health`, `/metrics` and `trellis --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
