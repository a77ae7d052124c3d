//! Example node plugin `row-transform`: renames fields and derives `full_name`, per its config.
//!
//! Config (the node's `config` in a workflow):
//! - `rename`: an object mapping old field names to new ones (default: none);
//! - `full_name_from`: two field names joined with a space into `full_name` (default: none).

use std::collections::BTreeMap;

use serde::Deserialize;
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
        let out = config::parse::<Settings>()?.apply(&text, &mut String::new())?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    /// The fast path: each record stays JSON text except the fields this plugin reads or
    /// writes ([`Record`]), and the config is read once per batch.
    fn transform_json(records: Vec<String>) -> Vec<Result<String, String>> {
        if records.is_empty() {
            return Vec::new();
        }
        match config::parse::<Settings>() {
            // Each record's text is freed once its result is made, so later results reuse its
            // memory instead of growing the instance's.
            // `full_name` is built in one buffer for the whole batch.
            Ok(settings) => {
                let mut name = String::with_capacity(32);
                records
                    .into_iter()
                    .map(|r| settings.apply(&r, &mut name))
                    .collect()
            }
            Err(e) => records.iter().map(|_| Err(e.to_string())).collect(),
        }
    }
}

/// The node config, read once per batch; every key is optional, and `null` is the same as absent.
#[derive(Deserialize)]
struct Settings {
    /// Old field name → new one, applied in the order of the old names.
    rename: Option<BTreeMap<String, String>>,
    /// Fields joined with a space into `full_name`.
    full_name_from: Option<Vec<String>>,
}

impl Settings {
    /// The record's new text. Names from the config, and `full_name` (built in `name`), are
    /// borrowed by the record, not copied.
    fn apply(&self, text: &str, name: &mut String) -> Result<String, String> {
        let mut record = Record::parse(text).map_err(|e| {
            if text.trim_start().starts_with('{') {
                format!("the record is not JSON: {e}")
            } else {
                "a record must be a JSON object".to_owned()
            }
        })?;
        for (old, new) in self.rename.iter().flatten() {
            record.rename(old, new.as_str());
        }
        if let Some(full_name_from) = self.full_name_from.as_ref().filter(|f| !f.is_empty()) {
            name.clear();
            let mut first = true;
            for key in full_name_from {
                // One lookup for a string (the common case); missing and null are skipped.
                let word = match record.str(key) {
                    Ok(Some(word)) => word,
                    Ok(None) => continue,
                    // A string that cannot be read (a lone surrogate escape) fails the record.
                    Err(e) if record.raw(key).is_some_and(|json| json.starts_with('"')) => {
                        return Err(e);
                    }
                    // Numbers, booleans, arrays and objects are joined as compact JSON.
                    Err(_) => record.get(key).unwrap_or_default().to_string().into(),
                };
                if !first {
                    name.push(' ');
                }
                first = false;
                name.push_str(&word);
            }
            record.insert_str("full_name", name.as_str());
        }
        Ok(record.to_json())
    }
}

trellis_sdk::export_node!(RowTransform);

#[cfg(test)]
mod tests {
    use trellis_sdk::testing;

    use super::*;

    fn config() -> Value {
        json!({"rename": {"dept": "department"}, "full_name_from": ["first", "last"]})
    }

    #[test]
    fn renames_and_derives_full_name() {
        let out = testing::run_node::<RowTransform>(
            vec![
                json!({"first": "Ada", "last": "Lovelace", "dept": "eng"}),
                json!({"first": "Alan", "last": null, "dept": "math"}),
                json!({"first": [1, 2], "last": 7}),
                json!([1, 2]),
            ],
            config(),
        );
        assert_eq!(
            out,
            vec![
                Ok(
                    json!({"first": "Ada", "last": "Lovelace", "department": "eng", "full_name": "Ada Lovelace"})
                ),
                Ok(
                    json!({"first": "Alan", "last": null, "department": "math", "full_name": "Alan"})
                ),
                Ok(json!({"first": [1, 2], "last": 7, "full_name": "[1,2] 7"})),
                Err("a record must be a JSON object".to_owned()),
            ]
        );
    }

    #[test]
    fn no_config_leaves_records_alone() {
        let record = json!({"first": "Ada", "dept": "eng"});
        for config in [json!({}), json!({"rename": null, "full_name_from": null})] {
            let out = testing::run_node::<RowTransform>(vec![record.clone()], config);
            assert_eq!(out, vec![Ok(record.clone())]);
        }
    }

    /// The fast path keeps untouched values byte for byte and a duplicate key's last value.
    #[test]
    fn untouched_values_stay_as_written() {
        testing::set_config(config());
        let out = RowTransform::transform_json(vec![
            r#"{"n":1.50,"tags":[1, {"a":null}],"first":"A","first":"B","last":"C","dept":"x"}"#
                .into(),
        ]);
        assert_eq!(
            out,
            vec![Ok(
                r#"{"n":1.50,"tags":[1, {"a":null}],"first":"B","last":"C","department":"x","full_name":"B C"}"#
                    .to_owned()
            )]
        );
    }

    #[test]
    fn a_bad_config_fails_every_record_and_names_the_key() {
        let out = testing::run_node::<RowTransform>(
            vec![json!({"dept": "eng"}), json!({})],
            json!({"rename": {"dept": "s3cr3t", "x": 31337}}),
        );
        let expected = "config key `rename.x`: invalid type: integer, expected a string";
        assert_eq!(
            out,
            vec![Err(expected.to_owned()), Err(expected.to_owned())]
        );
        let out =
            testing::run_node::<RowTransform>(vec![json!({})], json!({"full_name_from": "first"}));
        assert_eq!(
            out,
            vec![Err(
                "config key `full_name_from`: invalid type: string, expected a sequence".to_owned()
            )]
        );
    }
}
