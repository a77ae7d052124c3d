//! AsyncSQLDatabaseNode: SQL with named parameters on any configured database, through the pool.
//!
//! - [`params`]: the `:name` tokenizer and per-dialect translation (pure).
//! - [`exec`]: binding JSON arguments and mapping rows to JSON, per driver.
//! - [`error`]: classifying failures; what is transient.
//! - [`pooled`]: PostgreSQL behind a transaction-mode pooler (PgBouncer): no session state.
//! - [`node`]: the node itself: fetch modes, per-query timeout, retries, output shape.

pub(crate) mod driver;
pub(crate) mod error;
pub(crate) mod exec;
pub(crate) mod node;
pub(crate) mod params;
pub(crate) mod pooled;
pub(crate) mod row;

pub use error::ErrorKind;
pub use exec::{Fetch, Output};
pub use node::{SqlError, SqlNode, SqlNodeConfig};
pub use params::Params;
pub use row::Row;
