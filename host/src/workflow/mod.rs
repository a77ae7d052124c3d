//! Workflows: definitions (`workflows/*.toml` or [`WorkflowBuilder`]), the DAG [`Runtime`], the
//! [`AccessControlledRuntime`] that puts policy in front of it, and the watched [`WorkflowSet`].
//!
//! Data flows one way: the server hands a request to the access-controlled runtime, which asks
//! the policy engine, runs the nodes (SQL, pool operations, vector, plugins) through the runtime,
//! and masks what leaves the host. The file format is documented in `workflows/README.md`.

pub(crate) mod access;
pub(crate) mod builder;
mod check;
pub(crate) mod failure;
mod node_config;
mod node_kind;
mod plugin_database;
pub(crate) mod runtime;
pub(crate) mod scope;
pub(crate) mod set;
pub(crate) mod spec;

pub use access::{
    ADMIN_RESOURCE, AccessControlledRuntime, AccessError, Denial, Pinned, RunReport, new_run_id,
};
pub use builder::WorkflowBuilder;
pub use failure::CallerError;
pub use plugin_database::{DatabaseCaller, DatabasePolicy, PluginDatabase, decided_by};
pub use runtime::{NodeError, Plan, RunError, RunOutput, Runtime};
pub use set::{WorkflowSet, WorkflowWatcher};
pub use spec::{AnyName, InputType, Known, SpecError, Workflow};

use crate::plugins::{PluginKind, PluginSource};

/// Checks names against the running host: loaded node plugins and configured databases.
pub struct HostNames {
    /// The plugins: the registry's, or a staged set's.
    pub plugins: PluginSource,
    /// Configured database names.
    pub databases: Vec<String>,
}

impl Known for HostNames {
    fn plugin_config(
        &self,
        name: &str,
        config: &serde_json::Map<String, serde_json::Value>,
        later: &[&str],
    ) -> Vec<String> {
        self.plugins
            .get(name)
            .map(|p| p.config_problems(config, later))
            .unwrap_or_default()
    }

    fn plugin(&self, name: &str) -> Result<(), String> {
        match self.plugins.get(name) {
            Some(p) if p.kind() == PluginKind::Node => Ok(()),
            Some(p) => Err(format!(
                "plugin `{}` is a masking plugin, not a node plugin",
                p.label()
            )),
            None => {
                let loaded: Vec<String> = self
                    .plugins
                    .list()
                    .into_iter()
                    .filter_map(|s| s.name)
                    .map(|n| format!("`{n}`"))
                    .collect();
                Err(format!(
                    "unknown plugin `{name}` (loaded: {})",
                    if loaded.is_empty() {
                        "none".to_owned()
                    } else {
                        loaded.join(", ")
                    }
                ))
            }
        }
    }

    fn database(&self, name: &str) -> bool {
        self.databases.iter().any(|d| d == name)
    }
}
