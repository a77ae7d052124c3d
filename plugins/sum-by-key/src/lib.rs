//! Example node plugin `sum-by-key`: sums a numeric field over the records of a batch that share
//! a key, e.g. salary by department.
//!
//! The plugin interface returns one result per input record, so this is a *window* aggregation
//! (SQL's `SUM(salary) OVER (PARTITION BY department)`): every record comes back with the total
//! and the count of its group added, and a later step (or the caller) keeps one row per group if
//! it wants a grouped result. Keeping the one-result-per-record contract means a bad record fails
//! alone, with its own error, instead of failing the whole batch.
//!
//! Config (the node's `config` in a workflow):
//! - `key`: the field to group by (default `department`); a missing key groups under `null`;
//! - `field`: the numeric field to sum (default `salary`);
//! - `as`: the name of the added total field (default `<field>_total`);
//! - `count_as`: the name of the added group size field (default `<field>_count`).
//!
//! A record that is not an object, or whose `field` is present but not a number, fails with an
//! error and is left out of every total.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_sdk::{Info, Node, Record, Value, config, json, serde_json};

struct SumByKey;

impl Node for SumByKey {
    fn info() -> Info {
        Info::new("sum-by-key", env!("CARGO_PKG_VERSION")).with_config_schema(json!({
            "type": "object",
            "properties": {
                "key": {"type": "string", "default": "department"},
                "field": {"type": "string", "default": "salary"},
                "as": {"type": "string"},
                "count_as": {"type": "string"}
            }
        }))
    }

    fn transform(record: Value) -> Result<Value, String> {
        // A batch of one is a group of one.
        Self::transform_batch(vec![record])
            .pop()
            .unwrap_or_else(|| Err("no result".into()))
    }

    fn transform_batch(records: Vec<Value>) -> Vec<Result<Value, String>> {
        let texts = records.iter().map(Value::to_string).collect();
        Self::transform_json(texts)
            .into_iter()
            .map(|out| serde_json::from_str(&out?).map_err(|e| e.to_string()))
            .collect()
    }

    /// Each record stays JSON text except the two fields read and the two added ([`Record`]):
    /// a record is never built into a [`Value`].
    fn transform_json(records: Vec<String>) -> Vec<Result<String, String>> {
        let settings = match config::parse::<Settings>() {
            Ok(settings) => settings,
            Err(e) => return records.iter().map(|_| Err(e.to_string())).collect(),
        };
        let total_as = settings
            .total_as
            .clone()
            .unwrap_or_else(|| format!("{}_total", settings.field));
        let count_as = settings
            .count_as
            .clone()
            .unwrap_or_else(|| format!("{}_count", settings.field));

        // Per group: the sum, whether every amount was an integer, and the members. Each
        // record keeps its group's index; the groups are found by the key's compact JSON text
        // in an ordered map (no hashing, and no copy of the text per record).
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut groups: Vec<(f64, bool, u64)> = Vec::new();
        let read: Vec<Result<(Record<'_>, usize), String>> = records
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let record = Record::parse(text).map_err(|e| {
                    if text.trim_start().starts_with('{') {
                        format!("record {i} is not JSON: {e}")
                    } else {
                        format!("record {i} is not a JSON object")
                    }
                })?;
                let amount = settings.amount(&record, i)?;
                let group = group_of(&record, &settings.key);
                let at = match index.get(group.as_str()) {
                    Some(&at) => at,
                    None => {
                        groups.push((0.0, true, 0));
                        index.insert(group, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                let entry = &mut groups[at];
                entry.2 += 1;
                if let Some(n) = amount {
                    entry.1 &= n.as_i64().is_some();
                    entry.0 += n.as_f64().unwrap_or(0.0);
                }
                Ok((record, at))
            })
            .collect();

        read.into_iter()
            .map(|read| {
                let (mut record, at) = read?;
                let (sum, all_integers, count) = groups[at];
                if all_integers && sum.abs() < 9.0e15 {
                    record.insert(total_as.as_str(), &(sum as i64))?;
                } else {
                    record.insert(total_as.as_str(), &sum)?;
                }
                record.insert(count_as.as_str(), &count)?;
                Ok(record.to_json())
            })
            .collect()
    }
}

impl Settings {
    /// Record `i`'s amount: `None` when the field is missing or null.
    fn amount(&self, record: &Record<'_>, i: usize) -> Result<Option<serde_json::Number>, String> {
        let field = &self.field;
        match record.raw(field).as_deref() {
            None | Some("null") => Ok(None),
            Some(json) => match serde_json::from_str::<Value>(json) {
                Ok(Value::Number(n)) => Ok(Some(n)),
                Ok(other) => Err(format!("record {i}: `{field}` is {other}, not a number")),
                Err(e) => Err(format!("record {i}: `{field}`: {e}")),
            },
        }
    }
}

/// The compact JSON text of `record`'s `key` (`null` when missing): a string without escapes
/// as it came, anything else written again, so that equal values always group together.
fn group_of(record: &Record<'_>, key: &str) -> String {
    match record.raw(key) {
        None => "null".to_owned(),
        Some(Cow::Borrowed(json)) if json.starts_with('"') && !json.contains('\\') => {
            json.to_owned()
        }
        Some(json) => serde_json::from_str::<Value>(&json)
            .map(|v| v.to_string())
            .unwrap_or_else(|_| json.into_owned()),
    }
}

/// The node config; every key is optional.
#[derive(Deserialize)]
struct Settings {
    /// The field to group by.
    #[serde(default = "default_key")]
    key: String,
    /// The numeric field to sum.
    #[serde(default = "default_field")]
    field: String,
    /// The added total's name (default `<field>_total`).
    #[serde(rename = "as")]
    total_as: Option<String>,
    /// The added group size's name (default `<field>_count`).
    count_as: Option<String>,
}

fn default_key() -> String {
    "department".into()
}

fn default_field() -> String {
    "salary".into()
}

trellis_sdk::export_node!(SumByKey);

#[cfg(test)]
mod tests {
    use trellis_sdk::testing;

    use super::*;

    fn totals(out: &[Result<Value, String>], total: &str, count: &str) -> Vec<(Value, Value)> {
        out.iter()
            .map(|r| {
                let r = r.as_ref().expect("a record");
                (r[total].clone(), r[count].clone())
            })
            .collect()
    }

    #[test]
    fn each_record_gets_its_groups_total_and_count() {
        let out = testing::run_node::<SumByKey>(
            vec![
                json!({"name": "a", "department": "eng", "salary": 100}),
                json!({"name": "b", "department": "ops", "salary": 50}),
                json!({"name": "c", "department": "eng", "salary": 25}),
                json!({"name": "e", "salary": 7}),
                json!({"name": "f", "salary": 1}),
            ],
            json!({}),
        );
        assert_eq!(
            totals(&out, "salary_total", "salary_count"),
            vec![
                (json!(125), json!(2)),
                (json!(50), json!(1)),
                (json!(125), json!(2)),
                (json!(8), json!(2)),
                (json!(8), json!(2)),
            ]
        );
        assert_eq!(out[0].as_ref().unwrap()["name"], "a");
    }

    #[test]
    fn a_bad_record_fails_alone_and_counts_for_nothing() {
        let out = testing::run_node::<SumByKey>(
            vec![
                json!({"department": "eng", "salary": 100}),
                json!({"department": "eng", "salary": "lots"}),
                json!([1]),
                json!({"department": "eng", "salary": null}),
            ],
            json!({}),
        );
        assert_eq!(
            out[1],
            Err("record 1: `salary` is \"lots\", not a number".to_owned())
        );
        assert_eq!(out[2], Err("record 2 is not a JSON object".to_owned()));
        // A missing amount still counts as a member of its group.
        let first = out[0].as_ref().unwrap();
        assert_eq!(
            (&first["salary_total"], &first["salary_count"]),
            (&json!(100), &json!(2))
        );
    }

    #[test]
    fn key_field_and_names_come_from_the_config() {
        let out = testing::run_node::<SumByKey>(
            vec![
                json!({"team": "x", "hours": 1.5}),
                json!({"team": "x", "hours": 2}),
                json!({"team": "y", "hours": 2}),
            ],
            json!({"key": "team", "field": "hours", "as": "team_hours", "count_as": "members"}),
        );
        assert_eq!(
            totals(&out, "team_hours", "members"),
            vec![
                (json!(3.5), json!(2)),
                (json!(3.5), json!(2)),
                (json!(2), json!(1))
            ]
        );
    }

    #[test]
    fn equal_keys_group_together_however_the_text_writes_them() {
        // As the records arrive from `trellis plugin call`: text, not written by the host.
        testing::set_config(json!({}));
        testing::new_instance();
        let out = SumByKey::transform_json(vec![
            r#"{"department": "eng", "salary": 1}"#.to_owned(),
            r#"{"department":"\u0065ng","salary":2}"#.to_owned(),
            r#"{"department":["a", 1],"salary":4}"#.to_owned(),
            r#"{"department":["a",1],"salary":8}"#.to_owned(),
            r#"{"salary":16}"#.to_owned(),
            r#"{"department":null,"salary":32}"#.to_owned(),
        ]);
        let totals: Vec<Value> = out
            .iter()
            .map(|r| {
                serde_json::from_str::<Value>(r.as_ref().unwrap()).unwrap()["salary_total"].clone()
            })
            .collect();
        assert_eq!(totals, [3, 3, 12, 12, 48, 48].map(|n| json!(n)));
        // Untouched fields keep their text; the two added come last.
        assert_eq!(
            out[0].as_deref(),
            Ok(r#"{"department":"eng","salary":1,"salary_total":3,"salary_count":2}"#)
        );
    }

    #[test]
    fn a_bad_config_fails_every_record_and_names_the_key() {
        let out = testing::run_node::<SumByKey>(
            vec![json!({"salary": 1}), json!({"salary": 2})],
            json!({"field": 31337}),
        );
        let expected = "config key `field`: invalid type: integer, expected a string";
        assert_eq!(
            out,
            vec![Err(expected.to_owned()), Err(expected.to_owned())]
        );
    }
}
