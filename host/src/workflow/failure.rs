//! What a caller may see of a failed run: the node, the kind, a code (SQLSTATE) or the plugin's
//! `name@version`, and a fixed message. It is built only from identifiers and fixed text, never
//! from a database's message, a plugin's text, a parameter or a file path, so nothing that
//! masking or withholding protects can leave the host through an error. The whole error goes
//! to the server log, marked sensitive, under the run id.

use serde::Serialize;

use super::runtime::{NodeError, RunError};
use crate::database::tenants::TenantError;
use crate::plugins::CallError;
use crate::pool::{PoolError, QueryError};
use crate::sql::ErrorKind;
use crate::vector::VectorError;

/// The caller's view of a failed run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerError {
    /// `connection`, `timeout`, `query`, `plugin`, `configuration`, `pool_exhausted`, `tenant`
    /// (the caller's tenant cannot use a database per tenant) or `unavailable` (its circuit is
    /// open, or the database has as many tenants as it may).
    pub kind: &'static str,
    /// The failing node's id.
    pub node: String,
    /// The database's SQLSTATE (or MySQL error number), for `query`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `name@version` (or the name, when it is not loaded), for `plugin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Fixed text naming the node and what kind of thing went wrong.
    pub message: String,
}

impl RunError {
    /// What the caller may see of this error (see the module doc).
    pub fn caller_view(&self) -> CallerError {
        match self {
            RunError::Timeout { node, limit, .. } => CallerError {
                kind: "timeout",
                node: node.clone(),
                code: None,
                plugin: None,
                message: format!(
                    "node `{node}` did not finish within its time limit of {}",
                    humantime::format_duration(*limit)
                ),
            },
            RunError::Node { node, source, .. } => node_view(node, source),
        }
    }
}

fn node_view(node: &str, error: &NodeError) -> CallerError {
    let view = |kind: &'static str, message: String| CallerError {
        kind,
        node: node.to_owned(),
        code: None,
        plugin: None,
        message,
    };
    match error {
        NodeError::Config(_) | NodeError::Connection(_) => view(
            "configuration",
            format!("node `{node}` could not be set up for this run (its config or an input)"),
        ),
        NodeError::Database(_) => view(
            "configuration",
            format!("node `{node}` names a database this host does not have"),
        ),
        NodeError::Tenant(e) => tenant_view(node, e),
        NodeError::Sql(e) => database_view(node, e.kind(), e.sqlstate()),
        NodeError::Pool(e) => database_view(node, e.kind(), pool_sqlstate(e.pool_error())),
        NodeError::Vector(VectorError::Database { source, .. }) => {
            database_view(node, source.kind(), pool_sqlstate(Some(source)))
        }
        NodeError::Vector(_) => view(
            "configuration",
            format!(
                "node `{node}`'s vector operation is invalid for this run (its config or an input)"
            ),
        ),
        NodeError::PluginMissing(name) => CallerError {
            plugin: Some(name.clone()),
            ..view(
                "configuration",
                format!("node `{node}` names plugin `{name}`, which is not loaded"),
            )
        },
        NodeError::Plugin(e) => {
            let (plugin, what) = plugin_failure(e);
            CallerError {
                plugin: Some(plugin.to_owned()),
                ..view(
                    "plugin",
                    format!("plugin `{plugin}` {what} in node `{node}`"),
                )
            }
        }
        NodeError::Record { plugin, index, .. } => CallerError {
            plugin: Some(plugin.clone()),
            ..view(
                "plugin",
                format!("plugin `{plugin}` refused record {index} in node `{node}`"),
            )
        },
    }
}

fn tenant_view(node: &str, error: &TenantError) -> CallerError {
    let (kind, message) = match error {
        TenantError::NoTenant { database } => (
            "tenant",
            format!(
                "node `{node}` reads database `{database}`, which is per tenant, and you have no tenant"
            ),
        ),
        TenantError::BadTenant { database } => (
            "tenant",
            format!(
                "node `{node}` reads database `{database}`, which is per tenant, and your tenant id \
                 is not a plain name (letters, digits, `_` and `-`)"
            ),
        ),
        TenantError::Full { database, .. } => (
            "unavailable",
            format!(
                "node `{node}`: database `{database}` has as many tenants open as it may; try again"
            ),
        ),
        TenantError::CircuitOpen { database, retry_in } => (
            "unavailable",
            format!(
                "node `{node}`: database `{database}` is failing for your tenant; next attempt in {} s",
                retry_in.as_secs().max(1)
            ),
        ),
        TenantError::Config { database, .. } => (
            "configuration",
            format!("node `{node}`: database `{database}` has invalid pool settings"),
        ),
    };
    CallerError {
        kind,
        node: node.to_owned(),
        code: None,
        plugin: None,
        message,
    }
}

fn database_view(node: &str, kind: ErrorKind, code: Option<&str>) -> CallerError {
    let (kind, message) = match kind {
        ErrorKind::Connection => (
            "connection",
            format!("node `{node}` lost or could not reach its database"),
        ),
        ErrorKind::Timeout => (
            "timeout",
            format!("node `{node}`'s statement ran past its time limit and was stopped"),
        ),
        ErrorKind::Query => (
            "query",
            match code {
                Some(code) => {
                    format!("the database refused node `{node}`'s statement (code {code})")
                }
                None => format!("the database refused node `{node}`'s statement"),
            },
        ),
        ErrorKind::Configuration => (
            "configuration",
            format!("node `{node}`'s statement or its parameters are invalid for this run"),
        ),
        ErrorKind::PoolExhausted => (
            "pool_exhausted",
            format!("node `{node}` found no free connection in time"),
        ),
    };
    CallerError {
        kind,
        node: node.to_owned(),
        code: code.map(str::to_owned),
        plugin: None,
        message,
    }
}

fn pool_sqlstate(error: Option<&PoolError>) -> Option<&str> {
    match error {
        Some(PoolError::Query(QueryError::Database { sqlstate, .. })) => sqlstate.as_deref(),
        _ => None,
    }
}

/// The plugin's `name@version` and what happened, in fixed words.
fn plugin_failure(error: &CallError) -> (&str, &'static str) {
    match error {
        CallError::Deadline { plugin, .. } => (plugin, "ran past its deadline and was stopped"),
        CallError::MemoryLimit { plugin, .. } => (plugin, "exceeded its memory limit"),
        CallError::Trap { plugin, .. } => (plugin, "trapped"),
        CallError::Malformed { plugin, .. } => (plugin, "returned malformed output"),
        CallError::WrongKind { plugin, .. } => (plugin, "is not a node plugin"),
        CallError::Instantiate { plugin, .. } => (plugin, "could not be instantiated"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_value_reaches_the_view() {
        let secret = "123-45-6789";
        let errors = [
            NodeError::Record {
                plugin: "sum-by-key@0.1.0".into(),
                index: 0,
                message: format!("`ssn` is \"{secret}\", not a number"),
            },
            NodeError::Plugin(CallError::Trap {
                plugin: "p@1".into(),
                export: crate::plugins::plugin::Export::Transform,
                message: format!("panicked at {{\"ssn\": \"{secret}\"}}"),
            }),
            NodeError::Config(format!("`{secret}` is not an integer")),
            NodeError::Connection(format!("cannot read `{secret}`")),
        ];
        for error in errors {
            let run = RunError::Node {
                node: "n".into(),
                location: "/srv/app/workflows/w.toml:3: node `n`".into(),
                source: error,
            };
            let shown = serde_json::to_string(&run.caller_view()).unwrap();
            assert!(!shown.contains(secret), "{shown}");
            assert!(!shown.contains("/srv"), "{shown}");
            assert!(run.to_string().contains(secret), "the log keeps the detail");
        }
    }
}
