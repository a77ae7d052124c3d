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
//! Data flows one way: server → workflow runtime → policy → node → masking → response.
//!
//! - [`auth`]: who is calling: JWT bearer tokens, or a trusted header in dev mode (loopback only).
//! - [`cli`]: the `trellis` subcommands, one file each, and the edge that draws an error once.
//! - [`config`]: `trellis.toml`: finding and reading it; its shared value types (`values`:
//!   secrets kept out of logs and errors, `${VAR}` interpolation) and `[databases]` (`database`).
//! - [`database`]: the databases named in the configuration, one pool each (or one per tenant).
//! - [`diagnostic`]: errors with the lines at fault and their help, rendered once at the edge.
//! - [`migrate`]: migrations: dependency-ordered, locked, checksummed, reversible.
//! - [`pool`]: WorkflowConnectionPool: connection actors, a supervisor, leases, stats; the
//!   Kailash JSON operations; the per-tenant AsyncConnectionManager.
//! - [`sql`]: AsyncSQLDatabaseNode: named parameters per dialect, rows as JSON, retries; the one
//!   module that speaks sqlx (its driver connections, with TLS).
//! - [`plugins`]: WebAssembly plugins: engine, sandbox, registry and hot reload.
//! - [`policy`]: Kailash-style rules compiled to Cedar, native Cedar policies, masking, audit.
//! - [`vector`]: AsyncPostgreSQLVectorNode: pgvector tables, indexes, batch inserts, filtered
//!   search; exact search on the embedded SQLite.
//! - [`workflow`]: workflow files and the builder, the DAG runtime, the access-controlled
//!   runtime (policy before, masking after), the watched workflows directory.
//! - [`server`]: the HTTP API (axum): health, metrics, pools, plugins, workflows, policy.
//! - [`tls`]: TLS to database servers (libpq's `sslmode`), from URL parameters or config keys.
//! - [`watch`]: the one directory watcher (`--watch`): debounced, and only stable files.
//! - [`shutdown`]: the one stop signal (SIGINT, SIGTERM or a test's own future).

pub(crate) mod auth;
pub mod cli;
pub mod config;
pub mod database;
pub mod diagnostic;
mod loopback;
pub mod migrate;
mod node_keys;
pub mod plugins;
pub mod policy;
pub mod pool;
mod private_fs;
mod served_file;
pub mod server;
pub(crate) mod shutdown;
pub mod sql;
mod suggest;
pub(crate) mod tls;
pub mod vector;
pub(crate) mod watch;
pub mod workflow;

/// The version of this build, as shown by `/health`, `/metrics` and `trellis --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
