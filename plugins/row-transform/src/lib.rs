//! Example node plugin `row-transform`: renames fields and derives `full_name`, per its config.
//!
//! Config (the node's `config` in a workflow):
//! - `rename`: an object mapping old field names to new ones (default: none);
//! - `full_name_from`: two field names joined with a space into `full_name` (default: none).

use trellis_sdk::{Info, Node, Value, config, json};

struct RowTransform;

impl Node for RowTransform {
    fn info() -> Info {
        Info::new("row-transform", env!("CARGO_PKG_VERSION")).with_config_schema(json!({
            "type": "object",
            "properties": {
                "rename": {"type": "object", "additionalProperties": {"type": "string"}},
                "full_name_from": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2}
            }
        }))
    }

    fn transform(record: Value) -> Result<Value, String> {
        Settings::read().apply(record)
    }

    /// Reads the config once per batch, not once per record.
    fn transform_batch(records: Vec<Value>) -> Vec<Result<Value, String>> {
        if records.is_empty() {
            return Vec::new();
        }
        let settings = Settings::read();
        records.into_iter().map(|r| settings.apply(r)).collect()
    }
}

/// The node config, read once.
struct Settings {
    rename: Option<Value>,
    full_name_from: Option<Value>,
}

impl Settings {
    fn read() -> Settings {
        Settings {
            rename: config::get("rename"),
            full_name_from: config::get("full_name_from"),
        }
    }

    fn apply(&self, record: Value) -> Result<Value, String> {
        let Value::Object(mut fields) = record else {
            return Err("a record must be a JSON object".into());
        };
        if let Some(Value::Object(rename)) = &self.rename {
            for (old, new) in rename {
                let new = new
                    .as_str()
                    .ok_or_else(|| format!("rename target for `{old}` is not a string"))?;
                if let Some(value) = fields.remove(old) {
                    fields.insert(new.to_owned(), value);
                }
            }
        }
        if let Some(Value::Array(parts)) = &self.full_name_from {
            let mut words = Vec::with_capacity(parts.len());
            for part in parts {
                let key = part
                    .as_str()
                    .ok_or("`full_name_from` must list field names")?;
                match fields.get(key) {
                    Some(Value::String(s)) => words.push(s.clone()),
                    Some(Value::Null) | None => {}
                    Some(other) => words.push(other.to_string()),
                }
            }
            fields.insert("full_name".into(), Value::String(words.join(" ")));
        }
        Ok(Value::Object(fields))
    }
}

trellis_sdk::export_node!(RowTransform);
