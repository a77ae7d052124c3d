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
        let key = config_string("key").unwrap_or_else(|| "department".into());
        let field = config_string("field").unwrap_or_else(|| "salary".into());
        let total_as = config_string("as").unwrap_or_else(|| format!("{field}_total"));
        let count_as = config_string("count_as").unwrap_or_else(|| format!("{field}_count"));

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

fn config_string(key: &str) -> Option<String> {
    match config::get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

trellis_sdk::export_node!(SumByKey);
