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

use std::collections::HashMap;

use serde::Deserialize;
use trellis_sdk::{Info, Node, Value, config, json};

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
        let Settings {
            key,
            field,
            total_as,
            count_as,
        } = match config::parse() {
            Ok(settings) => settings,
            Err(e) => return records.iter().map(|_| Err(e.to_string())).collect(),
        };
        let total_as = total_as.unwrap_or_else(|| format!("{field}_total"));
        let count_as = count_as.unwrap_or_else(|| format!("{field}_count"));

        // First pass: check each record and add it to its group.
        let mut groups: HashMap<String, (f64, bool, u64)> = HashMap::new();
        let checked: Vec<Result<(Value, String), String>> = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| {
                let Value::Object(ref fields) = record else {
                    return Err(format!("record {i} is not a JSON object"));
                };
                let amount = match fields.get(&field) {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) => Some(n),
                    Some(other) => {
                        return Err(format!("record {i}: `{field}` is {other}, not a number"));
                    }
                };
                let group = fields.get(&key).cloned().unwrap_or(Value::Null).to_string();
                let entry = groups.entry(group.clone()).or_insert((0.0, true, 0));
                entry.2 += 1;
                if let Some(n) = amount {
                    match n.as_i64() {
                        Some(_) => {}
                        None => entry.1 = false,
                    }
                    entry.0 += n.as_f64().unwrap_or(0.0);
                }
                Ok((record, group))
            })
            .collect();

        // Second pass: annotate each record with its group's total and count.
        checked
            .into_iter()
            .map(|checked| {
                let (mut record, group) = checked?;
                let (sum, all_integers, count) = groups[&group];
                let total = if all_integers && sum.abs() < 9.0e15 {
                    json!(sum as i64)
                } else {
                    json!(sum)
                };
                record[&total_as] = total;
                record[&count_as] = json!(count);
                Ok(record)
            })
            .collect()
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
