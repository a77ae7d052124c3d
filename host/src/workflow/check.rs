//! Node configs checked when a workflow loads, with the same parsers the nodes use when they
//! run, so the two can never disagree: unknown keys (with a did-you-mean, and where a seed key
//! goes instead), values of the wrong type or out of range, missing keys. A key filled only at
//! run time (by a connection, or `"$inputs.NAME"`) is given a placeholder of the right type here
//! and checked again, with its real value, when the node runs. [`Known`] is what the checks ask
//! the running host (plugins, databases, plugin config schemas).

use serde_json::{Map, Value, json};

use super::node_kind::NodeKind;

/// The hint under node-config problems.
pub(crate) const HINT: &str = "the node config keys of each type are in workflows/README.md";

/// The problems of one node's `config`; `later`: its top-level keys filled at run time.
pub(crate) fn node_config(
    kind: &NodeKind,
    config: &Map<String, Value>,
    later: &[&str],
    known: &dyn Known,
) -> Vec<String> {
    let probe = |placeholder: fn(&str) -> Value| {
        let mut probe = config.clone();
        for key in later {
            probe.insert((*key).to_owned(), placeholder(key));
        }
        Value::Object(probe)
    };
    match kind {
        NodeKind::Sql => {
            match crate::sql::node::SqlNodeConfig::from_json(&probe(sql_placeholder)) {
                Ok(_) => Vec::new(),
                Err(e) => vec![e.to_string()],
            }
        }
        NodeKind::PoolOperation => {
            if later.contains(&"operation") {
                return Vec::new();
            }
            match crate::pool::ops::PoolRequest::from_json(&probe(pool_placeholder)).map(drop) {
                Ok(()) => Vec::new(),
                Err(e) => vec![e.to_string()],
            }
        }
        NodeKind::Vector => {
            if later.contains(&"operation") {
                return Vec::new();
            }
            let mut probe = probe(vector_placeholder);
            if let Some(map) = probe.as_object_mut() {
                // As when it runs: the node's `database` is the workflow's.
                map.remove("database");
            }
            match crate::vector::VectorNode::from_json(&probe) {
                Ok(_) => Vec::new(),
                // Placeholders stand for one row each: with run-time keys, only the key names
                // are certain (lengths and shapes are checked when the node runs).
                Err(e) if later.is_empty() || names_a_key(&e.to_string()) => vec![e.to_string()],
                Err(_) => Vec::new(),
            }
        }
        NodeKind::Plugin(name) => {
            let mut later = later.to_vec();
            later.push("records");
            known.plugin_config(name, config, &later)
        }
    }
}

fn names_a_key(message: &str) -> bool {
    message.contains("unknown key `") || message.contains("is not a node setting")
}

fn sql_placeholder(key: &str) -> Value {
    match key {
        "params" => json!({}),
        "fetch_mode" => json!("all"),
        "fetch_size" | "timeout" => json!(1),
        "max_retries" | "retry_delay" => json!(0),
        "return_query" => json!(false),
        _ => Value::Null,
    }
}

fn pool_placeholder(key: &str) -> Value {
    match key {
        "connection_id" => json!("pool/1"),
        "workload" | "query" => json!("x"),
        "params" => json!({}),
        "fetch_mode" => json!("all"),
        "fetch_size" => json!(1),
        _ => Value::Null,
    }
}

fn vector_placeholder(key: &str) -> Value {
    match key {
        "vector" => json!([0.0]),
        "vectors" => json!([[0.0]]),
        "metadata" | "metadata_filter" => json!({}),
        "ids" => json!([1]),
        "id"
        | "limit"
        | "dimension"
        | "m"
        | "ef_construction"
        | "lists"
        | "ef_search"
        | "probes"
        | "maintenance_work_mem_mb" => json!(1),
        "distance_metric" => json!("cosine"),
        "index_type" => json!("hnsw"),
        "table_name" | "name" => json!("t"),
        _ => Value::Null,
    }
}

/// What the validator checks names against.
pub trait Known {
    /// Whether a node plugin called `name` is loaded.
    fn plugin(&self, name: &str) -> Result<(), String>;
    /// Whether a database called `name` is configured.
    fn database(&self, name: &str) -> bool;
    /// What is wrong with a node's `config` for node plugin `name`, by the plugin's
    /// `config_schema` (see [`crate::plugins::Plugin::config_problems`]); nothing by default.
    fn plugin_config(
        &self,
        _name: &str,
        _config: &serde_json::Map<String, Value>,
        _later: &[&str],
    ) -> Vec<String> {
        Vec::new()
    }
}

/// Accepts every plugin and database (for tests and offline checks).
pub struct AnyName;

impl Known for AnyName {
    fn plugin(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn database(&self, _: &str) -> bool {
        true
    }
}
