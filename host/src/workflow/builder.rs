//! `WorkflowBuilder`: the same workflows as `workflows/*.toml`, built in Rust when Trellis is
//! embedded as a library. It ends in the same validation as the file loader.
//!
//! ```
//! use serde_json::json;
//! use trellis_host::{AnyName, InputType, WorkflowBuilder};
//!
//! let workflow = WorkflowBuilder::new("finance_report")
//!     .input("start_date", InputType::String, Some(json!("2024-01-01")))
//!     .add_node("AsyncSQLDatabaseNode", "financial_query", json!({
//!         "query": "SELECT department, SUM(amount) AS total FROM expenses WHERE date >= :start_date GROUP BY department",
//!         "params": {"start_date": "$inputs.start_date"}
//!     }))
//!     .add_node("plugin:sum-by-key", "totals", json!({"key": "department", "field": "total"}))
//!     .connect("financial_query.result.data", "totals.records")
//!     .build(&AnyName)
//!     .unwrap();
//! assert_eq!(workflow.nodes.len(), 2);
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::spec::{
    Connection, DEFAULT_NODE_TIMEOUT, Draft, InputSpec, InputType, Known, NodeKind, NodeSpec,
    SpecError, Workflow,
};

/// Builds a [`Workflow`]. Problems are collected and reported by [`WorkflowBuilder::build`].
#[derive(Debug)]
pub struct WorkflowBuilder {
    name: String,
    description: Option<String>,
    database: Option<String>,
    node_timeout: Duration,
    inputs: BTreeMap<String, InputSpec>,
    nodes: Vec<NodeSpec>,
    connections: Vec<Connection>,
    problems: Vec<String>,
}

impl WorkflowBuilder {
    /// A workflow called `name` (its policy resource id).
    pub fn new(name: impl Into<String>) -> WorkflowBuilder {
        WorkflowBuilder {
            name: name.into(),
            description: None,
            database: None,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            inputs: BTreeMap::new(),
            nodes: Vec::new(),
            connections: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// What it does.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// The database nodes use unless they name one (default `main`).
    pub fn database(mut self, name: impl Into<String>) -> Self {
        self.database = Some(name.into());
        self
    }

    /// The default per-node time limit (default 30 s).
    pub fn node_timeout(mut self, limit: Duration) -> Self {
        self.node_timeout = limit;
        self
    }

    /// Declares an input; without a default it is required.
    pub fn input(
        mut self,
        name: impl Into<String>,
        kind: InputType,
        default: Option<Value>,
    ) -> Self {
        self.inputs.insert(
            name.into(),
            InputSpec {
                kind,
                default,
                description: None,
            },
        );
        self
    }

    /// Adds a node of `node_type` (`AsyncSQLDatabaseNode`, `WorkflowConnectionPool`,
    /// `AsyncPostgreSQLVectorNode` or `plugin:<name>`) with its JSON config.
    pub fn add_node(mut self, node_type: &str, id: impl Into<String>, config: Value) -> Self {
        let id = id.into();
        match NodeKind::parse(node_type) {
            Ok(kind) => self.nodes.push(NodeSpec {
                id,
                kind,
                config,
                typed: Default::default(),
                database: None,
                timeout: None,
                optional: false,
                mask_downstream: false,
                line: None,
            }),
            Err(message) => self.problems.push(format!("node `{id}`: {message}")),
        }
        self
    }

    /// Lets downstream nodes see the last added node's output masked for the user, as the
    /// response shows it (default: they see clear values).
    pub fn mask_downstream(mut self) -> Self {
        if let Some(node) = self.nodes.last_mut() {
            node.mask_downstream = true;
        }
        self
    }

    /// Runs the last added node on database `name`.
    pub fn on_database(mut self, name: impl Into<String>) -> Self {
        if let Some(node) = self.nodes.last_mut() {
            node.database = Some(name.into());
        }
        self
    }

    /// Gives the last added node its own time limit.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        if let Some(node) = self.nodes.last_mut() {
            node.timeout = Some(limit);
        }
        self
    }

    /// Marks the last added node optional: when policy denies `execute` it is skipped instead
    /// of refusing the run.
    pub fn optional(mut self) -> Self {
        if let Some(node) = self.nodes.last_mut() {
            node.optional = true;
        }
        self
    }

    /// Connects `from` (`node` or `node.path.into.output`) to `to` (`node.config_key`; a plugin
    /// node's default key is `records`).
    pub fn connect(mut self, from: &str, to: &str) -> Self {
        let split = |s: &str| {
            let mut parts = s.split('.').map(str::to_owned);
            (parts.next().unwrap_or_default(), parts.collect::<Vec<_>>())
        };
        let (from, output) = split(from);
        let (to, input) = split(to);
        self.connections.push(Connection {
            from,
            output,
            to,
            input,
            line: None,
        });
        self
    }

    /// Validates and returns the workflow; `known` says which plugins and databases exist.
    pub fn build(self, known: &dyn Known) -> Result<Workflow, SpecError> {
        if let Some(first) = self.problems.first() {
            return Err(SpecError {
                location: format!("workflow `{}`", self.name),
                message: first.clone(),
                hint: None,
                snippet: None,
            });
        }
        Draft {
            name: self.name,
            description: self.description,
            source: None,
            database: self.database,
            node_timeout: self.node_timeout,
            inputs: self.inputs,
            nodes: self.nodes,
            connections: self.connections,
        }
        .validate(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workflow::AnyName;
    use serde_json::json;

    #[test]
    fn builder_and_file_agree() {
        let built = WorkflowBuilder::new("w")
            .add_node("AsyncSQLDatabaseNode", "rows", json!({"query": "SELECT 1"}))
            .add_node("plugin:p", "t", json!({}))
            .optional()
            .connect("rows.result.data", "t")
            .build(&AnyName)
            .unwrap();
        let text = r#"
[[nodes]]
id = "rows"
type = "AsyncSQLDatabaseNode"
config = { query = "SELECT 1" }
[[nodes]]
id = "t"
type = "plugin:p"
optional = true
[[connections]]
from = "rows.result.data"
to = "t"
"#;
        let parsed = Workflow::parse(text, std::path::Path::new("w.toml"), &AnyName).unwrap();
        let strip = |w: &Workflow| {
            let mut nodes = w.nodes.clone();
            nodes.iter_mut().for_each(|n| n.line = None);
            let mut conns = w.connections.clone();
            conns.iter_mut().for_each(|c| c.line = None);
            (nodes, conns, w.order.clone(), w.upstream.clone())
        };
        assert_eq!(strip(&built), strip(&parsed));
    }

    #[test]
    fn builder_reports_problems() {
        let e = WorkflowBuilder::new("w")
            .add_node("Nope", "a", json!({}))
            .build(&AnyName)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("workflow `w`: node `a`: unknown node type `Nope`"),
            "{e}"
        );
        let e = WorkflowBuilder::new("w")
            .add_node("plugin:p", "a", json!({}))
            .connect("a", "b")
            .build(&AnyName)
            .unwrap_err()
            .to_string();
        assert!(e.contains("connection to unknown node `b`"), "{e}");
    }
}
