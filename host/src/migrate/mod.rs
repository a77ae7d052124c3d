//! Database migrations: dependency-ordered, locked, checksummed and reversible, on PostgreSQL,
//! MariaDB/MySQL and SQLite.
//!
//! A migration is a directory `migrations/<id>/` holding `up.sql`, an optional `down.sql` and
//! `migration.toml` (description, dependencies, whether it runs in a transaction), or a Rust type
//! implementing [`Migration`] registered with the [`Runner`]. The runner:
//!
//! - keeps the history in the table `trellis_migrations` ([`history`]), created by an
//!   idempotent [`Runner::init`];
//! - orders migrations topologically by their dependencies, ties broken by id, so every machine
//!   computes the same plan ([`plan`]); a cycle or a missing dependency is an error naming it;
//! - takes a database lock before reading the history ([`lock`]): `pg_advisory_lock` on
//!   PostgreSQL and `GET_LOCK` on MariaDB (both held by the session, so they die with the
//!   connection when a runner dies), and an immediate (write-locking) transaction per step on
//!   SQLite. Every step reads its own history row again under the lock, so concurrent runners
//!   apply each migration exactly once;
//! - applies each migration in its own transaction where DDL is transactional (PostgreSQL,
//!   SQLite): a failure leaves the schema as it was. On MariaDB (DDL commits implicitly), and for
//!   migrations declared `transaction = false`, the history row is marked dirty before the step
//!   runs and cleared after it; a dirty row blocks every later run until
//!   `trellis migrate resolve ID` after a manual repair;
//! - stores a SHA-256 checksum of each migration's `up.sql` (line endings normalized) and refuses
//!   to run when an applied migration's file changed (drift);
//! - rolls back in reverse dependency order, and a rolled-back migration can be applied again.
//!
//! All database access goes through one [`Lease`](crate::pool::Lease) of a [`Pool`]: the lock,
//! the transaction and the statements stay on one connection. The pool's `lease_timeout` must
//! exceed the longest run (the CLI sets it to a day).

mod generate;
pub(crate) mod history;
pub mod lock;
pub(crate) mod plan;
mod runner;
mod source;

pub use generate::{GenerateError, new_migration};
pub use plan::PlanError;
pub use runner::{MigrateError, Progress, RollbackTarget, Runner, StatusState};
pub use source::{LoadError, Migration, MigrationSet, Step, StepFuture};
