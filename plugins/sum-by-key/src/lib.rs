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
use trellis_sdk::record::{self, Names};
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

    /// Each record stays JSON text except the two fields read and the two added: a record is
    /// never built into a [`Value`].
    fn transform_json(records: Vec<String>) -> Vec<Result<String, String>> {
        sum(&records, true)
    }
}

/// One record after the first pass: read in one pass of its text ([`record::fields`]), whose
/// output is the text with its group's fields appended, or as a [`Record`] (with its group).
enum Read<'a> {
    Text {
        text: &'a str,
        close: usize,
        group: usize,
    },
    Record(Record<'a>, usize),
}

/// The node: every record's group total and count. `one_pass` off reads every record into a
/// [`Record`], for the tests that compare the two.
fn sum(records: &[String], one_pass: bool) -> Vec<Result<String, String>> {
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
    let names = [settings.key.as_str(), &settings.field, &total_as, &count_as];
    // Each name must find its own field: a config naming one field twice goes through [`Record`].
    let one_pass = one_pass && (1..4).all(|i| !names[..i].contains(&names[i]));
    let names = Names::new(names);

    // Per group: the sum, whether every amount was an integer, and the members. Each record
    // keeps its group's index; the groups are found by the key's compact JSON text in an
    // ordered map (no hashing, and a copy of the text only for a new group).
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut groups: Vec<(f64, bool, u64)> = Vec::new();
    let read: Vec<Result<Read<'_>, String>> = records
        .iter()
        .enumerate()
        .map(|(i, text)| {
            // The group's index is filled in below, once the group is found.
            let (mut read, group, amount) =
                match one_pass.then(|| settings.read_text(text, &names)).flatten() {
                    Some((close, group, amount)) => (
                        Read::Text {
                            text,
                            close,
                            group: 0,
                        },
                        Cow::Borrowed(group),
                        amount,
                    ),
                    None => {
                        let record = Record::parse(text).map_err(|e| {
                            if text.trim_start().starts_with('{') {
                                format!("record {i} is not JSON: {e}")
                            } else {
                                format!("record {i} is not a JSON object")
                            }
                        })?;
                        let amount = settings.amount(&record, i)?;
                        let group = Cow::Owned(group_of(&record, &settings.key).into_owned());
                        (Read::Record(record, 0), group, amount)
                    }
                };
            let at = match index.get(group.as_ref()) {
                Some(&at) => at,
                None => {
                    groups.push((0.0, true, 0));
                    index.insert(group.into_owned(), groups.len() - 1);
                    groups.len() - 1
                }
            };
            let entry = &mut groups[at];
            entry.2 += 1;
            if let Some(n) = amount {
                entry.1 &= n.as_i64().is_some();
                entry.0 += n.as_f64().unwrap_or(0.0);
            }
            match &mut read {
                Read::Text { group, .. } | Read::Record(_, group) => *group = at,
            }
            Ok(read)
        })
        .collect();

    // The two fields each group's records get, as [`Record::insert`] writes them.
    let totals: Vec<(Total, u64)> = groups
        .iter()
        .map(|&(sum, all_integers, count)| {
            let total = if all_integers && sum.abs() < 9.0e15 {
                Total::Integer(sum as i64)
            } else {
                Total::Float(sum)
            };
            (total, count)
        })
        .collect();
    let mut tails: Vec<Option<String>> = vec![None; groups.len()];
    read.into_iter()
        .map(|read| match read? {
            Read::Record(mut record, at) => {
                let (total, count) = totals[at];
                match total {
                    Total::Integer(n) => record.insert(total_as.as_str(), &n)?,
                    Total::Float(x) => record.insert(total_as.as_str(), &x)?,
                }
                record.insert(count_as.as_str(), &count)?;
                Ok(record.to_json())
            }
            Read::Text { text, close, group } => {
                let tail = match &mut tails[group] {
                    Some(tail) => tail,
                    empty => empty.insert(tail(&totals[group], &total_as, &count_as)?),
                };
                let mut out = String::with_capacity(close + 1 + tail.len());
                out.push_str(&text[..close]);
                if close > 1 {
                    out.push(',');
                }
                out.push_str(tail);
                Ok(out)
            }
        })
        .collect()
}

/// A group's total, an integer while every amount was one (and it stays exact).
#[derive(Clone, Copy)]
enum Total {
    Integer(i64),
    Float(f64),
}

/// `"<total_as>":<total>,"<count_as>":<count>}`, the end of every record of a group read in
/// one pass: the same text [`Record::insert`] and [`Record::to_json`] write (serde_json's).
fn tail(&(total, count): &(Total, u64), total_as: &str, count_as: &str) -> Result<String, String> {
    let json = |e: serde_json::Error| e.to_string();
    let total = match total {
        Total::Integer(n) => serde_json::to_string(&n),
        Total::Float(x) => serde_json::to_string(&x),
    }
    .map_err(json)?;
    Ok(format!(
        "{}:{total},{}:{count}}}",
        serde_json::to_string(total_as).map_err(json)?,
        serde_json::to_string(count_as).map_err(json)?,
    ))
}

impl Settings {
    /// The one-pass reading of a record: where its `}` is, its group and its amount. `None` for
    /// a record [`Record`] reads instead: one [`record::fields`] does not read, that may repeat
    /// a name, that already has a field called as an added one (which is then replaced in
    /// place), whose key is neither missing, null nor a string without escapes, or whose amount
    /// is neither missing, null nor a number.
    fn read_text<'t>(
        &self,
        text: &'t str,
        names: &Names<'_>,
    ) -> Option<(usize, &'t str, Option<serde_json::Number>)> {
        let (mut key, mut amount, mut plain) = (None, None, true);
        let shape = record::fields(text, |field| match names.find(field.name) {
            Some(0) => key = Some(field),
            Some(1) => amount = Some(field.value),
            Some(_) => plain = false,
            None => {}
        })?;
        if !plain || shape.may_repeat {
            return None;
        }
        let group = match key {
            None => "null",
            Some(field) if field.value == "null" => "null",
            // Its text with the quotes, as [`group_of`] keeps it.
            Some(field) => {
                field.plain_str()?;
                field.value
            }
        };
        let amount = match amount {
            None | Some("null") => None,
            Some(json)
                if json.starts_with(['-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9']) =>
            {
                Some(serde_json::from_str::<serde_json::Number>(json).ok()?)
            }
            Some(_) => return None,
        };
        Some((shape.close, group, amount))
    }

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
fn group_of<'r>(record: &'r Record<'_>, key: &str) -> Cow<'r, str> {
    match record.raw(key) {
        None => Cow::Borrowed("null"),
        Some(Cow::Borrowed(json)) if json.starts_with('"') && !json.contains('\\') => {
            Cow::Borrowed(json)
        }
        Some(json) => Cow::Owned(
            serde_json::from_str::<Value>(&json)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| json.into_owned()),
        ),
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

    /// Read in one pass or into a [`Record`], every record comes out with the same bytes (or
    /// the same error), and the host's records take the one pass.
    #[test]
    fn the_one_pass_writes_what_a_record_writes() {
        let configs = [
            json!({}),
            json!({"key": "team", "field": "hours", "as": "t\"otal", "count_as": "n"}),
            json!({"key": "salary"}),
            json!({"as": "department"}),
        ];
        let names = [
            "department",
            "salary",
            "team",
            "hours",
            "salary_total",
            "n",
            "x",
        ];
        let values = [
            r#""eng""#,
            r#""ops""#,
            r#""\u0065ng""#,
            "null",
            "7",
            "-1.5e3",
            "2.25",
            "true",
            r#"[1, 2]"#,
            r#"{"k":"v"}"#,
            r#""lots""#,
            "12345678901234567890123",
        ];
        let mut next = testing::numbers(0x2545_f491_4f6c_dd1d_u64);
        for config in &configs {
            testing::set_config(config.clone());
            for _ in 0..2_000 {
                let batch: Vec<String> = (0..next() % 12)
                    .map(|_| {
                        let fields: Vec<String> = (0..next() % 5)
                            .map(|_| {
                                format!(
                                    r#""{}":{}"#,
                                    names[next() % names.len()],
                                    values[next() % values.len()]
                                )
                            })
                            .collect();
                        let text = format!("{{{}}}", fields.join(","));
                        if next().is_multiple_of(10) {
                            text.replace(':', ": ")
                        } else {
                            text
                        }
                    })
                    .collect();
                assert_eq!(sum(&batch, true), sum(&batch, false), "{config} {batch:?}");
            }
        }
        testing::set_config(json!({}));
        let batch = [
            r#"{"id":1,"department":"eng","salary":100}"#,
            r#"{"id":2,"department":"ops","salary":50.5}"#,
            r#"{}"#,
        ]
        .map(String::from);
        let settings: Settings = serde_json::from_value(json!({})).unwrap();
        let names = Names::new(["department", "salary", "salary_total", "salary_count"]);
        assert!(
            batch
                .iter()
                .all(|r| settings.read_text(r, &names).is_some())
        );
        assert_eq!(
            sum(&batch, true),
            [
                r#"{"id":1,"department":"eng","salary":100,"salary_total":100,"salary_count":1}"#,
                r#"{"id":2,"department":"ops","salary":50.5,"salary_total":50.5,"salary_count":1}"#,
                r#"{"salary_total":0,"salary_count":1}"#,
            ]
            .map(|r| Ok(r.to_owned()))
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
