//! [`Record`]: a JSON object whose top-level fields stay JSON text until a plugin asks for them,
//! for plugins that rename, drop or add fields and would otherwise spend their time building and
//! re-serializing a whole [`Value`] per record (see [`crate::Node::transform_json`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Value;

/// One record as its top-level fields, in their original order, each value still the exact JSON
/// text it arrived as (nested objects and arrays are checked but never built).
///
/// Reading a field parses only that field; writing the record out copies untouched values
/// verbatim. Duplicate keys keep the last value, as [`Value`] does.
///
/// ```
/// use trellis_sdk::Record;
///
/// let text = r#"{"first":"Ada","last":"Lovelace","active":true}"#;
/// let mut record = Record::parse(text).unwrap();
/// record.rename("active", "is_active");
/// let name = format!("{} {}", record.str("first").unwrap().unwrap(), record.str("last").unwrap().unwrap());
/// record.insert_str("full_name", &name);
/// assert_eq!(
///     record.to_json(),
///     r#"{"first":"Ada","last":"Lovelace","is_active":true,"full_name":"Ada Lovelace"}"#
/// );
/// ```
#[derive(Debug, Clone, Default)]
pub struct Record<'a> {
    fields: Vec<(Cow<'a, str>, Field<'a>)>,
}

/// A field's value as JSON text: borrowed from the input, or written by the plugin.
#[derive(Debug, Clone)]
enum Field<'a> {
    Raw(&'a RawValue),
    Owned(String),
}

impl Field<'_> {
    fn json(&self) -> &str {
        match self {
            Field::Raw(raw) => raw.get(),
            Field::Owned(text) => text,
        }
    }
}

impl<'a> Record<'a> {
    /// Parses one record; anything but a JSON object is an error.
    pub fn parse(text: &'a str) -> Result<Record<'a>, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        let record = Record::deserialize(&mut de).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(record)
    }

    /// How many fields the record has.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the record has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The field names, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_ref())
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.fields.iter().position(|(k, _)| k == key)
    }

    /// The JSON text of a field's value (`None` when the field is missing).
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| self.fields[i].1.json())
    }

    /// A field's value, parsed (`None` when the field is missing).
    pub fn get(&self, key: &str) -> Option<Value> {
        // The text was checked when the record was parsed or the field was written.
        self.raw(key)
            .map(|json| serde_json::from_str(json).unwrap_or(Value::Null))
    }

    /// A string field without copying it when it has no escapes. `Ok(None)` when the field is
    /// missing or null; an error naming the field when it holds anything else.
    pub fn str(&self, key: &str) -> Result<Option<Cow<'_, str>>, String> {
        let Some(json) = self.raw(key) else {
            return Ok(None);
        };
        if json == "null" {
            return Ok(None);
        }
        if let Some(inner) = json.strip_prefix('"').and_then(|s| s.strip_suffix('"'))
            && !inner.contains('\\')
        {
            return Ok(Some(Cow::Borrowed(inner)));
        }
        match serde_json::from_str::<String>(json) {
            Ok(text) => Ok(Some(Cow::Owned(text))),
            // Which kind of value, never the value: records may hold secrets, and the host logs
            // plugin errors (as `decode` does).
            Err(_) => Err(format!(
                "field `{key}`: invalid type: {}, expected a string",
                match json.as_bytes().first() {
                    Some(b'{') => "object",
                    Some(b'[') => "array",
                    Some(b't' | b'f') => "boolean",
                    Some(b'"') => "string with an invalid escape",
                    _ => "number",
                }
            )),
        }
    }

    /// Removes a field and gives back its JSON text.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.position(key)?;
        Some(self.fields.remove(i).1.json().to_owned())
    }

    /// Renames a field in place; a field already called `to` is replaced, as with a map's
    /// remove-then-insert. Returns whether `from` was there.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        let Some(i) = self.position(from) else {
            return false;
        };
        if from == to {
            return true;
        }
        let i = match self.position(to) {
            Some(j) => {
                self.fields.remove(j);
                if j < i { i - 1 } else { i }
            }
            None => i,
        };
        self.fields[i].0 = Cow::Owned(to.to_owned());
        true
    }

    /// Sets a field to any serializable value (appended when new, replaced in place when not).
    pub fn insert(&mut self, key: &str, value: &impl Serialize) -> Result<(), String> {
        let json = serde_json::to_string(value).map_err(|e| format!("field `{key}`: {e}"))?;
        self.set(key, Field::Owned(json));
        Ok(())
    }

    /// Sets a field to a string.
    pub fn insert_str(&mut self, key: &str, value: &str) {
        let mut json = String::with_capacity(value.len() + 2);
        push_json_str(&mut json, value);
        self.set(key, Field::Owned(json));
    }

    fn set(&mut self, key: &str, field: Field<'a>) {
        match self.position(key) {
            Some(i) => self.fields[i].1 = field,
            None => self.fields.push((Cow::Owned(key.to_owned()), field)),
        }
    }

    /// The record as compact JSON text (untouched values exactly as they arrived).
    pub fn to_json(&self) -> String {
        let size: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.json().len() + 4)
            .sum();
        let mut out = String::with_capacity(size + 2);
        out.push('{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, key);
            out.push(':');
            out.push_str(value.json());
        }
        out.push('}');
        out
    }

    /// The record as a [`Value`] (parses every field).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.to_json()).unwrap_or(Value::Null)
    }
}

impl fmt::Display for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// Appends `text` as a JSON string literal.
fn push_json_str(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        // serde_json escapes exactly as it does everywhere else (it cannot fail on a `str`).
        let escaped = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        out.push_str(&escaped);
    }
}

impl<'de> Deserialize<'de> for Record<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = Record<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Record<'de>, A::Error> {
        let mut record = Record {
            fields: Vec::with_capacity(map.size_hint().unwrap_or(8)),
        };
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value: &'de RawValue = map.next_value()?;
            match record.fields.iter().position(|(k, _)| *k == key) {
                Some(i) => record.fields[i].1 = Field::Raw(value),
                None => record.fields.push((key, Field::Raw(value))),
            }
        }
        Ok(record)
    }
}

/// A key, borrowed from the input unless it had escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn untouched_values_are_copied_verbatim() {
        let text = r#"{"a": [1, 2], "b":{"c":"d"},"e":1.50}"#;
        let record = Record::parse(text).unwrap();
        assert_eq!(record.to_json(), r#"{"a":[1, 2],"b":{"c":"d"},"e":1.50}"#);
        assert_eq!(record.get("a"), Some(json!([1, 2])));
    }

    #[test]
    fn non_objects_and_trailing_text_are_refused() {
        assert!(Record::parse("[1]").is_err());
        assert!(Record::parse("1").is_err());
        assert!(Record::parse(r#"{"a":1} x"#).is_err());
        assert!(Record::parse(r#"{"a":}"#).is_err());
    }

    #[test]
    fn escaped_keys_and_strings() {
        let record = Record::parse(r#"{"a\"b":"x\ny","plain":"ok","n":null,"i":3}"#).unwrap();
        assert_eq!(
            record.keys().collect::<Vec<_>>(),
            ["a\"b", "plain", "n", "i"]
        );
        assert_eq!(record.str("a\"b").unwrap().unwrap(), "x\ny");
        assert!(matches!(
            record.str("plain").unwrap(),
            Some(Cow::Borrowed("ok"))
        ));
        assert_eq!(record.str("n").unwrap(), None);
        assert_eq!(record.str("missing").unwrap(), None);
        assert_eq!(
            record.str("i").unwrap_err(),
            "field `i`: invalid type: number, expected a string"
        );
        let secret = Record::parse(r#"{"ssn":123456789,"card":{"pan":"4111"}}"#).unwrap();
        for key in ["ssn", "card"] {
            let error = secret.str(key).unwrap_err();
            assert!(
                !error.contains("123456789") && !error.contains("4111"),
                "{error}"
            );
        }
        let back: Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(
            back,
            json!({"a\"b": "x\ny", "plain": "ok", "n": null, "i": 3})
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value_like_value_does() {
        let text = r#"{"a":1,"b":2,"a":3}"#;
        let record = Record::parse(text).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(record.to_value(), value);
        assert_eq!(record.len(), 2);
    }

    #[test]
    fn edits_match_map_semantics() {
        let text = r#"{"a":1,"b":2,"c":3}"#;
        let mut record = Record::parse(text).unwrap();
        let mut map: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();

        assert!(record.rename("a", "c"));
        let v = map.remove("a").unwrap();
        map.insert("c".into(), v);
        assert!(!record.rename("zz", "y"));
        assert!(record.rename("b", "b"));
        record.insert_str("s", "q\"uote\u{1}");
        map.insert("s".into(), json!("q\"uote\u{1}"));
        record.insert("b", &json!({"k": [true]})).unwrap();
        map.insert("b".into(), json!({"k": [true]}));
        assert_eq!(record.remove("s").as_deref(), Some(r#""q\"uote\u0001""#));
        map.remove("s");

        assert_eq!(record.to_value(), Value::Object(map));
        assert_eq!(record.keys().collect::<Vec<_>>(), ["c", "b"]);
    }
}
