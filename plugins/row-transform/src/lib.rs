//! Example node plugin `row-transform`: renames fields and derives `full_name`, per its config.
//!
//! Config (the node's `config` in a workflow):
//! - `rename`: an object mapping old field names to new ones (default: none);
//! - `full_name_from`: two field names joined with a space into `full_name` (default: none).
//!
//! A record is written out as it is read, in one pass ([`record::fields`]), when nothing in it
//! makes that pass's output differ from a [`Record`]'s (see [`Plan`]); any other record is read
//! into a [`Record`]. Both give the same bytes, which the tests check on generated records.

use std::collections::BTreeMap;

use serde::Deserialize;
use trellis_sdk::record::{self, Names};
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
                let plan = settings.plan();
                records
                    .into_iter()
                    .map(|r| match plan.as_ref().and_then(|plan| plan.apply(&r)) {
                        Some(out) => Ok(out),
                        None => settings.apply(&r, &mut name),
                    })
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

/// The most words `full_name` is built from in one pass; a longer `full_name_from` goes
/// through [`Record`].
const WORDS: usize = 4;

/// The one-pass path: what each config name is to a record's fields ([`Names`] numbers them: the
/// `full_name_from` names first, then the renames' old names, then the names a field must not
/// already have).
struct Plan<'s> {
    names: Names<'s>,
    /// How many `full_name_from` names there are (0: no `full_name`).
    words: usize,
    /// For each `full_name_from` name, the index of its first occurrence (a name may be given
    /// twice).
    word_of: Vec<usize>,
    /// Each rename, in the order of [`Names`] after the words.
    renames: Vec<&'s str>,
}

impl Plan<'_> {
    /// The record's new text, the same bytes [`Settings::apply`] gives; `None` for a record it
    /// must read: one that is not compact, may repeat a name, has a field a rename or
    /// `full_name` would replace, or a `full_name_from` field that is not a string without
    /// escapes or null, and every text the one pass does not read (errors included).
    fn apply(&self, text: &str) -> Option<String> {
        let mut out = String::with_capacity(text.len() + 32);
        let mut copied = 0;
        let mut words: [Option<&str>; WORDS] = [None; WORDS];
        let mut plain = true;
        let shape = record::fields(text, |field| {
            let Some(i) = self.names.find(field.name) else {
                return;
            };
            if i < self.words {
                match field.plain_str() {
                    Some(word) => words[i] = Some(word),
                    None => plain &= field.value == "null",
                }
            } else if let Some(to) = self.renames.get(i - self.words) {
                out.push_str(&text[copied..field.start]);
                out.push('"');
                out.push_str(to);
                out.push('"');
                copied = field.name_end();
            } else {
                // A field a rename or `full_name` replaces.
                plain = false;
            }
        })?;
        if !plain || shape.may_repeat {
            return None;
        }
        out.push_str(&text[copied..shape.close]);
        if self.words > 0 {
            if shape.close > 1 {
                out.push(',');
            }
            out.push_str(r#""full_name":""#);
            let mut first = true;
            for &i in &self.word_of {
                // Strings without escapes, so the name needs none either.
                if let Some(word) = words[i] {
                    if !first {
                        out.push(' ');
                    }
                    first = false;
                    out.push_str(word);
                }
            }
            out.push('"');
        }
        out.push('}');
        Some(out)
    }
}

impl Settings {
    /// The one-pass plan, when the config's names cannot act on each other: every name a rename
    /// reads or writes, and `full_name`, differs from the others and from the `full_name_from`
    /// names (a rename into a name another rename reads, or of a field `full_name` is built
    /// from, goes through [`Record`], which applies them in order). `None` otherwise.
    fn plan(&self) -> Option<Plan<'_>> {
        let from: Vec<&str> = self
            .full_name_from
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if from.len() > WORDS {
            return None;
        }
        let renames = self.rename.iter().flatten();
        let (old, new): (Vec<&str>, Vec<&str>) =
            renames.map(|(a, b)| (a.as_str(), b.as_str())).unzip();
        let full_name = (!from.is_empty()).then_some("full_name");
        let written: Vec<&str> = old.iter().chain(&new).copied().chain(full_name).collect();
        let distinct = written
            .iter()
            .enumerate()
            .all(|(i, a)| !written[i + 1..].contains(a) && !from.contains(a));
        // A new name is written as it is: one that needs escapes goes through [`Record`].
        let plain = new
            .iter()
            .all(|n| !n.bytes().any(|c| c < 0x20 || c == b'"' || c == b'\\'));
        if !distinct || !plain {
            return None;
        }
        let word_of = from
            .iter()
            .map(|w| from.iter().position(|x| x == w).unwrap_or_default())
            .collect();
        Some(Plan {
            names: Names::new(
                from.iter()
                    .chain(&old)
                    .chain(&new)
                    .copied()
                    .chain(full_name),
            ),
            words: from.len(),
            word_of,
            renames: new,
        })
    }

    /// The record's new text, read into a [`Record`]. Names from the config, and `full_name` (built in `name`), are
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

    /// The one pass gives the same bytes as a [`Record`] for every record it writes, and
    /// writes the records the host sends (compact, names once each).
    #[test]
    fn the_one_pass_writes_what_a_record_writes() {
        let configs = [
            json!({"rename": {"dept": "department"}, "full_name_from": ["first", "last"]}),
            json!({"rename": {"active": "is_active", "id": "key"}}),
            json!({"full_name_from": ["last", "first", "last"]}),
            json!({"rename": {"first": "given"}, "full_name_from": ["first", "last"]}),
            json!({"rename": {"a": "b", "b": "c"}}),
            json!({"rename": {"dept": "full_name"}, "full_name_from": ["first", "last"]}),
            json!({"rename": {"dept": "de\"pt"}}),
            json!({}),
        ];
        let names = [
            "first",
            "last",
            "dept",
            "department",
            "id",
            "full_name",
            "a",
            "b",
            "c",
        ];
        let values = [
            r#""Ada""#,
            r#""Love lace""#,
            "null",
            "7",
            "-1.5e3",
            "true",
            "[1, 2]",
            r#"{"k":"v"}"#,
            r#""a\"b""#,
            r#""\u00e9""#,
            r#""é😀""#,
            r#""""#,
        ];
        let mut next = testing::numbers(0x9e37_79b9_7f4a_7c15_u64);
        let (mut one_pass, mut by_record) = (0, 0);
        for config in &configs {
            let settings: Settings = serde_json::from_value(config.clone()).unwrap();
            let plan = settings.plan();
            for _ in 0..20_000 {
                let mut text = String::from("{");
                for k in 0..next() % 6 {
                    if k > 0 {
                        text.push(',');
                    }
                    text.push_str(&format!(
                        r#""{}":{}"#,
                        names[next() % names.len()],
                        values[next() % values.len()]
                    ));
                }
                text.push('}');
                if next().is_multiple_of(8) {
                    let mut at = next() % (text.len() + 1);
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    text.insert(at, ' ');
                }
                let expected = settings.apply(&text, &mut String::new());
                match plan.as_ref().and_then(|plan| plan.apply(&text)) {
                    Some(out) => {
                        one_pass += 1;
                        assert_eq!(Ok(out), expected, "{config} {text}");
                    }
                    None => by_record += 1,
                }
            }
        }
        assert!(
            one_pass > 30_000 && by_record > 30_000,
            "{one_pass} {by_record}"
        );
        // The bench's records, as the host sends them, take the one pass.
        let settings: Settings = serde_json::from_value(
            json!({"rename": {"active": "is_active"}, "full_name_from": ["first", "last"]}),
        )
        .unwrap();
        let text = r#"{"id":0,"first":"Ada","last":"Lovelace","department":"engineering","salary":100000,"active":true}"#;
        assert_eq!(
            settings.plan().unwrap().apply(text).as_deref(),
            Some(
                r#"{"id":0,"first":"Ada","last":"Lovelace","department":"engineering","salary":100000,"is_active":true,"full_name":"Ada Lovelace"}"#
            )
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
