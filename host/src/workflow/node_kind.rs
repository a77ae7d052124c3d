//! The node types a workflow may use, and how a workflow file names each.

use std::fmt;

/// The node types a workflow may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// `AsyncSQLDatabaseNode`: one SQL statement on a database's pool.
    Sql,
    /// `WorkflowConnectionPool`: one of the pool's JSON operations (`execute`, `stats`, …).
    PoolOperation,
    /// `AsyncPostgreSQLVectorNode`: a vector table operation.
    Vector,
    /// `plugin:<name>`: a node plugin's batch transform.
    Plugin(String),
}

/// The type names accepted in `type = "…"`.
pub const NODE_TYPES: &[&str] = &[
    "AsyncSQLDatabaseNode",
    "WorkflowConnectionPool",
    "AsyncPostgreSQLVectorNode",
    "plugin:<name>",
];

impl NodeKind {
    /// Whether the node's `query` is SQL the host runs (the SQL node, and a pool operation's
    /// `execute`): it must be written in the workflow, never filled from a run.
    pub fn takes_sql(&self) -> bool {
        matches!(self, NodeKind::Sql | NodeKind::PoolOperation)
    }

    /// Parses a `type` value.
    pub fn parse(text: &str) -> Result<NodeKind, String> {
        match text {
            "AsyncSQLDatabaseNode" => Ok(NodeKind::Sql),
            "WorkflowConnectionPool" => Ok(NodeKind::PoolOperation),
            "AsyncPostgreSQLVectorNode" => Ok(NodeKind::Vector),
            _ => match text.strip_prefix("plugin:") {
                Some(name) if !name.is_empty() => Ok(NodeKind::Plugin(name.to_owned())),
                Some(_) => Err("`plugin:` needs a plugin name, e.g. `plugin:sum-by-key`".into()),
                None => {
                    let close = NODE_TYPES
                        .iter()
                        .map(|t| (strsim::jaro_winkler(t, text), *t))
                        .filter(|(score, _)| *score > 0.85)
                        .max_by(|a, b| a.0.total_cmp(&b.0));
                    let mut msg = format!(
                        "unknown node type `{text}`; the types are {}",
                        NODE_TYPES
                            .iter()
                            .map(|t| format!("`{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    if let Some((_, t)) = close {
                        msg.push_str(&format!(" (did you mean `{t}`?)"));
                    }
                    Err(msg)
                }
            },
        }
    }

    /// Whether the node runs on a database (and so takes `database`).
    pub fn uses_database(&self) -> bool {
        !matches!(self, NodeKind::Plugin(_))
    }

    /// Where a node of this kind keeps its rows in its output (a JSON pointer): masking rules'
    /// field paths are read from there.
    pub fn records_pointer(&self) -> &'static str {
        match self {
            NodeKind::Sql => "/result/data",
            NodeKind::Vector => "/result/matches",
            NodeKind::PoolOperation | NodeKind::Plugin(_) => "/data",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeKind::Sql => f.write_str("AsyncSQLDatabaseNode"),
            NodeKind::PoolOperation => f.write_str("WorkflowConnectionPool"),
            NodeKind::Vector => f.write_str("AsyncPostgreSQLVectorNode"),
            NodeKind::Plugin(name) => write!(f, "plugin:{name}"),
        }
    }
}
