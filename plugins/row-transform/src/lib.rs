//! Example node plugin `row-transform`: renames fields and derives `full_name`, per its config.
//!
//! Config (the node's `config` in a workflow):
//! - `rename`: an object mapping old field names to new ones (default: none);
//! - `full_name_from`: two field names joined with a space into `full_name` (default: none).

use trellis_sdk::{Info, Node, Record, Value, config, json, serde_json};

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
        let text = record.to_string();
        let out = Settings::read()?.apply(&text)?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    /// The fast path: each record stays JSON text except the fields this plugin reads or
    /// writes ([`Record`]), and the config is read once per batch.
    fn transform_json(records: Vec<String>) -> Vec<Result<String, String>> {
        if records.is_empty() {
            return Vec::new();
        }
        match Settings::read() {
            Ok(settings) => records.iter().map(|r| settings.apply(r)).collect(),
            Err(e) => records.iter().map(|_| Err(e.clone())).collect(),
        }
    }
}

/// The node config, read once and checked.
struct Settings {
    rename: Vec<(String, String)>,
    full_name_from: Vec<String>,
}

impl Settings {
    fn read() -> Result<Settings, String> {
        let mut rename = Vec::new();
        match config::get("rename") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (old, new) in map {
                    let Value::String(new) = new else {
                        return Err(format!("rename target for `{old}` is not a string"));
                    };
                    rename.push((old, new));
                }
            }
            Some(_) => return Err("`rename` must be an object of field names".into()),
        }
        let full_name_from = match config::get("full_name_from") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(parts)) => parts
                .into_iter()
                .map(|p| match p {
                    Value::String(s) => Ok(s),
                    _ => Err("`full_name_from` must list field names".to_owned()),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("`full_name_from` must list field names".into()),
        };
        Ok(Settings {
            rename,
            full_name_from,
        })
    }

    fn apply(&self, text: &str) -> Result<String, String> {
        let mut record = Record::parse(text).map_err(|e| {
            if text.trim_start().starts_with('{') {
                format!("the record is not JSON: {e}")
            } else {
                "a record must be a JSON object".to_owned()
            }
        })?;
        for (old, new) in &self.rename {
            record.rename(old, new);
        }
        if !self.full_name_from.is_empty() {
            let mut name = String::new();
            let mut first = true;
            for key in &self.full_name_from {
                let word = match record.raw(key) {
                    None | Some("null") => continue,
                    Some(json) if json.starts_with('"') => record.str(key)?.unwrap_or_default(),
                    // Numbers, booleans, arrays and objects are joined as compact JSON.
                    Some(_) => record.get(key).unwrap_or_default().to_string().into(),
                };
                if !first {
                    name.push(' ');
                }
                first = false;
                name.push_str(&word);
            }
            record.insert_str("full_name", &name);
        }
        Ok(record.to_json())
    }
}

trellis_sdk::export_node!(RowTransform);
