//! A node's config, typed: each node type's config is parsed into its own type when the workflow
//! loads ([`NodeConfig`]), so a run parses only what is filled at run time (`"$inputs.NAME"`
//! strings and connections): an SQL node's `params` or a plugin node's `records` alone when that
//! is all a run fills, else the whole filled config ([`Typed`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::node_kind::NodeKind;
use crate::pool::ops::{OpError, PoolRequest};
use crate::sql::params::Params;
use crate::sql::{SqlError, SqlNodeConfig};
use crate::vector::{VectorError, VectorNode};

/// A node's config, by node type.
#[derive(Debug, Clone)]
pub enum NodeConfig {
    /// `AsyncSQLDatabaseNode`.
    Sql(SqlNodeConfig),
    /// `WorkflowConnectionPool`.
    PoolOperation(PoolRequest),
    /// `AsyncPostgreSQLVectorNode`.
    Vector(VectorNode),
    /// `plugin:<name>`.
    Plugin(PluginConfig),
}

/// A plugin node's config: the plugin's own settings, and the records it transforms.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// What the plugin reads through its config calls (checked against its `config_schema`).
    pub settings: Arc<Map<String, Value>>,
    /// The records (`records`, written in the file or filled by a connection).
    pub records: Records,
}

/// A plugin node's records: its own, or the array an upstream node's output holds, shared
/// with that output instead of copied (a node's rows are the records of the next, and they
/// are only read, to be written out for the plugin).
#[derive(Debug, Clone, PartialEq)]
pub enum Records {
    /// Written in the file, or filled in as a value.
    Own(Vec<Value>),
    /// The array at `path` in `output` (checked to be one when this was made).
    Shared {
        /// The upstream node's output, as downstream nodes see it.
        output: Arc<Value>,
        /// The keys (and array indexes) from the output to the array.
        path: Vec<String>,
    },
}

impl Records {
    /// `found`, what `path` leads to in `output` (the caller followed it, for an error of its
    /// own when it leads nowhere), as records: an array is shared, `null` is none, anything
    /// else is refused as [`PluginConfig::records`] refuses it.
    pub(crate) fn shared(
        output: &Arc<Value>,
        path: &[String],
        found: &Value,
    ) -> Result<Records, ConfigError> {
        match found {
            Value::Array(_) => Ok(Records::Shared {
                output: output.clone(),
                path: path.to_vec(),
            }),
            Value::Null => Ok(Records::Own(Vec::new())),
            other => Err(not_records(other)),
        }
    }

    /// The records, in order.
    pub fn as_slice(&self) -> &[Value] {
        match self {
            Records::Own(records) => records,
            Records::Shared { output, path } => match follow(output, path) {
                Some(Value::Array(records)) => records,
                _ => &[],
            },
        }
    }
}

/// What `path` (object keys, array indexes) leads to in `value`.
pub(crate) fn follow<'v>(value: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, key| match value {
        Value::Object(map) => map.get(key),
        Value::Array(items) => key.parse::<usize>().ok().and_then(|k| items.get(k)),
        _ => None,
    })
}

/// Why a node's config does not parse.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An SQL node's.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A pool operation's.
    #[error(transparent)]
    Pool(#[from] OpError),
    /// A vector node's.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// A plugin node's.
    #[error("{0}")]
    Plugin(String),
}

/// The one key of a typed config that a run fills in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// An SQL node's `params`.
    Params,
    /// A plugin node's `records`.
    Records,
}

impl Part {
    /// Its key in the config.
    pub fn key(self) -> &'static str {
        match self {
            Part::Params => "params",
            Part::Records => "records",
        }
    }
}

/// How much of a node's config was typed when its workflow loaded.
#[derive(Debug, Clone, Default)]
pub enum Typed {
    /// Not yet: the node belongs to a draft that was not validated.
    #[default]
    Unchecked,
    /// All of it: the file fixes every value, and a run uses it as it is.
    Ready(Arc<NodeConfig>),
    /// All but one key, which each run fills in and parses alone.
    Except(Arc<NodeConfig>, Part),
    /// None of it: values are filled in where the typed config has no place for them, so each
    /// run parses the whole filled config (it was checked at load with placeholders).
    AtRun,
}

impl Typed {
    /// Types `config`, of a node of `kind`, whose top-level keys `slots` are filled at run
    /// time; the config has been checked (see `check::node_config`).
    pub(crate) fn prepare(
        kind: &NodeKind,
        config: &Value,
        slots: &BTreeSet<&str>,
    ) -> Result<Typed, ConfigError> {
        let part = match (kind, slots.len()) {
            (_, 0) => return Ok(Typed::Ready(Arc::new(NodeConfig::parse(kind, config)?))),
            (NodeKind::Sql, 1) if slots.contains("params") => Part::Params,
            (NodeKind::Plugin(_), 1) if slots.contains("records") => Part::Records,
            _ => return Ok(Typed::AtRun),
        };
        let mut fixed = config.clone();
        if let Some(map) = fixed.as_object_mut() {
            map.remove(part.key());
        }
        Ok(Typed::Except(
            Arc::new(NodeConfig::parse(kind, &fixed)?),
            part,
        ))
    }
}

impl NodeConfig {
    /// Parses `config`, every value filled in, as the config of a `kind` node.
    pub fn parse(kind: &NodeKind, config: &Value) -> Result<NodeConfig, ConfigError> {
        Ok(match kind {
            NodeKind::Sql => NodeConfig::Sql(SqlNodeConfig::from_json(config)?),
            NodeKind::PoolOperation => NodeConfig::PoolOperation(PoolRequest::from_json(config)?),
            NodeKind::Vector => {
                let mut config = config.clone();
                if let Some(map) = config.as_object_mut() {
                    // The node's `database` is the workflow's; the vector config's own key is
                    // the same thing.
                    map.remove("database");
                }
                NodeConfig::Vector(VectorNode::from_json(&config)?)
            }
            NodeKind::Plugin(_) => {
                let Value::Object(map) = config else {
                    return Err(ConfigError::Plugin("the config must be a table".into()));
                };
                let mut settings = map.clone();
                let records = records(settings.remove("records"))?;
                NodeConfig::Plugin(PluginConfig {
                    settings: Arc::new(settings),
                    records,
                })
            }
        })
    }

    /// This config with `part` set to `value` (filled in by a run).
    pub(crate) fn with_part(&self, part: Part, value: Value) -> Result<NodeConfig, ConfigError> {
        Ok(match (self, part) {
            (NodeConfig::Sql(sql), Part::Params) => {
                let mut sql = sql.clone();
                sql.params = Params::from_json(Some(&value)).map_err(SqlError::Params)?;
                NodeConfig::Sql(sql)
            }
            (NodeConfig::Plugin(_), Part::Records) => self.with_records(records(Some(value))?)?,
            // `Typed::prepare` pairs each part only with its node type.
            (_, part) => return Err(not_filled(part)),
        })
    }

    /// This plugin node's config with `records` set (filled in by a run).
    pub(crate) fn with_records(&self, records: Records) -> Result<NodeConfig, ConfigError> {
        match self {
            NodeConfig::Plugin(plugin) => Ok(NodeConfig::Plugin(PluginConfig {
                settings: plugin.settings.clone(),
                records,
            })),
            _ => Err(not_filled(Part::Records)),
        }
    }
}

fn not_filled(part: Part) -> ConfigError {
    ConfigError::Plugin(format!(
        "`{}` is not filled in at run time for this node type",
        part.key()
    ))
}

/// A plugin node's `records`: an array, or nothing.
fn records(value: Option<Value>) -> Result<Records, ConfigError> {
    match value {
        None | Some(Value::Null) => Ok(Records::Own(Vec::new())),
        Some(Value::Array(items)) => Ok(Records::Own(items)),
        Some(other) => Err(not_records(&other)),
    }
}

fn not_records(value: &Value) -> ConfigError {
    ConfigError::Plugin(format!(
        "`records` must be an array of records, not {}",
        kind_of(value)
    ))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slots<'a>(keys: &[&'a str]) -> BTreeSet<&'a str> {
        keys.iter().copied().collect()
    }

    #[test]
    fn a_fixed_config_is_typed_whole() {
        let config = json!({"query": "SELECT 1", "fetch_mode": "one"});
        let typed = Typed::prepare(&NodeKind::Sql, &config, &slots(&[])).unwrap();
        assert!(matches!(typed, Typed::Ready(c) if matches!(&*c, NodeConfig::Sql(_))));
    }

    #[test]
    fn params_alone_are_filled_at_run() {
        let config = json!({"query": "SELECT :a", "params": {"a": "$inputs.a"}});
        let Typed::Except(sql, part) =
            Typed::prepare(&NodeKind::Sql, &config, &slots(&["params"])).unwrap()
        else {
            panic!("expected the SQL node typed but for its params");
        };
        let NodeConfig::Sql(filled) = sql.with_part(part, json!({"a": 5})).unwrap() else {
            panic!("an SQL config");
        };
        assert_eq!(filled.query, "SELECT :a");
        assert_eq!(
            filled.params,
            Params::Named(json!({"a": 5}).as_object().unwrap().clone())
        );
        assert!(sql.with_part(part, json!("x")).is_err());
    }

    #[test]
    fn records_alone_are_filled_at_run() {
        let kind = NodeKind::Plugin("p".into());
        let config = json!({"key": "k"});
        let Typed::Except(plugin, part) =
            Typed::prepare(&kind, &config, &slots(&["records"])).unwrap()
        else {
            panic!("expected the plugin node typed but for its records");
        };
        let NodeConfig::Plugin(filled) = plugin.with_part(part, json!([{"a": 1}])).unwrap() else {
            panic!("a plugin config");
        };
        assert_eq!(filled.records.as_slice(), [json!({"a": 1})]);
        assert_eq!(filled.settings.get("key"), Some(&json!("k")));
        let err = plugin.with_part(part, json!("x")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`records` must be an array of records, not a string"
        );
    }

    #[test]
    fn other_run_time_keys_leave_the_config_to_the_run() {
        let config = json!({"query": "SELECT 1", "fetch_mode": "$inputs.mode"});
        let typed = Typed::prepare(&NodeKind::Sql, &config, &slots(&["fetch_mode"])).unwrap();
        assert!(matches!(typed, Typed::AtRun));
    }
}
