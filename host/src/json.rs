//! JSON on the request path: objects built by moving their values in, and values written out
//! as serde_json writes them, only faster.
//!
//! `serde_json::json!` turns every value it is given into a new one through the serializer
//! (`to_value(&v)`), a deep copy: a node's rows wrapped in its output object would be copied
//! whole. serde_json's writer checks a string byte by byte for what needs escaping, and hands
//! each run between escapes to its formatter: the largest single cost of writing a run's answer
//! (BENCHMARKS.md, issue 21). [`write_value`] checks eight bytes at a time, copies a string
//! that needs no escape in one piece, and leaves every other string and every number to
//! serde_json, so its bytes are serde_json's. [`parse`] reads text into a [`Value`] as
//! `serde_json::from_str` does, but makes each object's map and each array at its final size.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;

/// The object of `fields`, in their order, each value moved in (a name given twice keeps the
/// last value, in the first one's place, as `json!` does).
pub(crate) fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let mut map = Map::with_capacity(N);
    for (name, value) in fields {
        map.insert(name.to_owned(), value);
    }
    Value::Object(map)
}

/// `text` read as JSON: the value `serde_json::from_str` gives (its errors too), with fewer
/// allocations.
///
/// serde_json's own reader starts each object with an empty map and each array with an empty
/// vector, and grows them as it reads: an object of eight fields has its hash table rebuilt twice
/// (each key hashed again with SipHash) and its entries moved three times. Here the fields and
/// items are collected on the stack first, and the map or vector is made once, at its size. The
/// fields go in in their order, so a name given twice keeps the last value in the first one's
/// place, as there.
pub(crate) fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let value = ValueSeed.deserialize(&mut reader)?;
    reader.end()?;
    Ok(value)
}

/// Reads a batch of texts, each as [`parse`] reads it, for a plugin's results, whose records
/// mostly share their names: an object (the whole text) whose names, in order, are those of the
/// last such object is made by copying that one's map of names, which keeps their hashes, and
/// filling in its values. Otherwise its names are hashed as [`parse`] hashes them.
#[derive(Default)]
pub(crate) struct Batch {
    /// The names of the last object read, in order, each with `null`; none when its names
    /// repeated.
    shape: Option<Map<String, Value>>,
}

impl Batch {
    /// `text` as [`parse`] reads it: the same value, field order and errors.
    pub(crate) fn parse(&mut self, text: &str) -> Result<Value, serde_json::Error> {
        // Only JSON's own whitespace may come before the object.
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return parse(text);
        }
        let mut reader = serde_json::Deserializer::from_str(text);
        let value = reader.deserialize_map(Shaped(&mut self.shape))?;
        reader.end()?;
        Ok(value)
    }
}

/// Reads the object a [`Batch`] text holds.
struct Shaped<'a>(&'a mut Option<Map<String, Value>>);

impl<'de> Visitor<'de> for Shaped<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Value, A::Error> {
        let mut read: SmallVec<[(Name<'de>, Value); 12]> = SmallVec::new();
        while let Some(name) = fields.next_key_seed(NameSeed)? {
            read.push((name, fields.next_value_seed(ValueSeed)?));
        }
        let same = self.0.as_ref().is_some_and(|shape| {
            shape.len() == read.len() && shape.keys().zip(&read).all(|(k, (n, _))| k == n.as_str())
        });
        if !same {
            let mut shape = Map::with_capacity(read.len());
            for (name, _) in &read {
                shape.insert(name.as_str().to_owned(), Value::Null);
            }
            if shape.len() < read.len() {
                // A repeated name: made as `parse` makes it, and no shape kept.
                *self.0 = None;
                let mut map = Map::with_capacity(read.len());
                for (name, value) in read {
                    map.insert(name.into_string(), value);
                }
                return Ok(Value::Object(map));
            }
            *self.0 = Some(shape);
        }
        let mut map = self.0.as_ref().map(Map::clone).unwrap_or_default();
        for (slot, (_, value)) in map.values_mut().zip(read) {
            *slot = value;
        }
        Ok(Value::Object(map))
    }
}

/// An object's name as read: borrowed from the text when it holds no escape.
enum Name<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Name<'_> {
    fn as_str(&self) -> &str {
        match self {
            Name::Borrowed(s) => s,
            Name::Owned(s) => s,
        }
    }

    fn into_string(self) -> String {
        match self {
            Name::Borrowed(s) => s.to_owned(),
            Name::Owned(s) => s,
        }
    }
}

/// Reads a [`Name`].
struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = Name<'de>;

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<Name<'de>, D::Error> {
        reader.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Name<'de>, E> {
        Ok(Name::Borrowed(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Name<'de>, E> {
        Ok(Name::Owned(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Name<'de>, E> {
        Ok(Name::Owned(value))
    }
}

/// Reads one JSON value (see [`parse`]).
struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<Value, D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(Value::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(Number::from_f64(value).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(Value::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(Value::String(value))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Value, A::Error> {
        let mut read: SmallVec<[Value; 16]> = SmallVec::new();
        while let Some(item) = items.next_element_seed(ValueSeed)? {
            read.push(item);
        }
        Ok(Value::Array(read.into_vec()))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut fields: A) -> Result<Value, A::Error> {
        let mut read: SmallVec<[(String, Value); 12]> = SmallVec::new();
        while let Some(name) = fields.next_key::<String>()? {
            read.push((name, fields.next_value_seed(ValueSeed)?));
        }
        let mut map = Map::with_capacity(read.len());
        for (name, value) in read {
            map.insert(name, value);
        }
        Ok(Value::Object(map))
    }
}

/// `value` as compact JSON text: the bytes of `serde_json::to_string(value)`.
pub(crate) fn to_string(value: &Value) -> String {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    // Only whole UTF-8 strings and ASCII are written; were that ever not so, serde_json's own
    // text is sent rather than anything else.
    String::from_utf8(out).unwrap_or_else(|_| value.to_string())
}

/// Appends `value` as compact JSON, byte for byte what `serde_json::to_writer` writes.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(out, number),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => write_values(out, items),
        Value::Object(map) => write_object(out, map),
    }
}

/// Appends `items` as a JSON array (see [`write_value`]).
pub(crate) fn write_values(out: &mut Vec<u8>, items: &[Value]) {
    write_array(out, items, write_value);
}

/// Appends `items` as a JSON array of strings (see [`write_str`]).
pub(crate) fn write_strings(out: &mut Vec<u8>, items: &[String]) {
    write_array(out, items, |out, item| write_str(out, item));
}

fn write_array<T>(out: &mut Vec<u8>, items: &[T], write: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write(out, item);
    }
    out.push(b']');
}

/// Appends `map` as a compact JSON object (see [`write_value`]).
pub(crate) fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    out.push(b'{');
    for (i, (name, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// Appends `text` as a JSON string: copied whole between its quotes when nothing in it needs
/// an escape, else written by serde_json.
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        // Writing a `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

fn write_number(out: &mut Vec<u8>, number: &Number) {
    if let Some(n) = number.as_u64() {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    } else if let Some(n) = number.as_i64() {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    } else {
        // A float: serde_json's own shortest form (and `null` where it writes that).
        let _ = serde_json::to_writer(&mut *out, number);
    }
}

/// Whether a byte of `bytes` is one serde_json escapes: `"`, `\\` or a control character
/// below 0x20. Eight bytes at a time, the last eight overlapping the ones before (a string of 4
/// to 7 bytes is read as two overlapping halves): a byte below 0x20 is one whose value minus
/// 0x20 borrows into its top bit while its own top bit is clear; `"` and `\\` are the bytes
/// that become zero when xor-ed with them.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let special = |x: u64| {
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        control | zero_byte(x ^ (ONES * u64::from(b'"'))) | zero_byte(x ^ (ONES * u64::from(b'\\')))
            != 0
    };
    let word = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let half = |at: usize| {
        let mut half = [0; 4];
        half.copy_from_slice(&bytes[at..at + 4]);
        u64::from(u32::from_le_bytes(half))
    };
    let n = bytes.len();
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            if special(word(at)) {
                return true;
            }
            at += 8;
        }
        at < n && special(word(n - 8))
    } else if n >= 4 {
        special(half(0) | (half(n - 4) << 32))
    } else {
        bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    /// Every value [`super::write_value`] writes is what serde_json writes, byte for byte:
    /// strings with and without escapes at every position of an eight-byte word, control
    /// characters, non-ASCII text, every kind of number, nesting.
    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let mut strings: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "exactly8".into(),
            "ünïcødé 🙂 text of some length".into(),
            "\u{7f}\u{80}".into(),
        ];
        for special in [
            '"', '\\', '\n', '\t', '\u{0}', '\u{1f}', '\u{8}', ' ', '~', 'é',
        ] {
            for len in 0..20 {
                for at in 0..len {
                    let mut s: String = "abcdefghijklmnopqrstuvwxyz".chars().take(len).collect();
                    s.insert(at, special);
                    strings.push(s);
                }
            }
        }
        let numbers = [
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(-0.0),
            json!(1e20),
            json!(1e-7),
            json!(123456.789),
            json!(f64::MAX),
            json!(0.1 + 0.2),
        ];
        let mut values: Vec<Value> = strings.iter().map(|s| json!(s)).collect();
        values.extend(numbers.iter().cloned());
        values.extend([json!(null), json!(true), json!(false), json!([]), json!({})]);
        let mut object = serde_json::Map::new();
        for (i, s) in strings.iter().enumerate().take(200) {
            object.insert(s.clone(), values[i % values.len()].clone());
        }
        values.push(Value::Object(object));
        values.push(json!([{"a": [1, "x\"y", {"b": null}], "c": 2.5}, [[]], "é"]));
        for value in &values {
            let ours = super::to_string(value);
            assert_eq!(ours, serde_json::to_string(value).unwrap(), "{value:?}");
        }
    }

    /// [`super::parse`] reads every text as `serde_json::from_str` does: the same value (the
    /// same order of fields, the last of a repeated name in the first one's place, the same
    /// numbers), and the same error for every text serde_json refuses.
    #[test]
    fn parse_reads_what_serde_json_reads() {
        let valid = [
            "null",
            " true ",
            "false",
            "0",
            "-0",
            "18446744073709551615",
            "-9223372036854775808",
            "18446744073709551616",
            "1.5e300",
            "1e999",
            "-0.0",
            "123456.789",
            r#""a\"b\u00e9\ud83d\ude42""#,
            "[]",
            "{}",
            r#"{"b":1,"a":2,"b":3}"#,
            r#"{"name":"Ada Byron","email":"ada@x.example","salary":98000,"expenses":1760.4,"x":null,"y":[1,2,{"z":true}]}"#,
            r#"[1,[2,[3,[4]]],{"a":{"b":{"c":[]}}}]"#,
        ];
        let mut texts: Vec<String> = valid.iter().map(|t| (*t).to_owned()).collect();
        // Objects and arrays on both sides of the sizes kept on the stack.
        for n in [0, 1, 11, 12, 13, 15, 16, 17, 40] {
            let fields: Vec<String> = (0..n).map(|i| format!(r#""f{}":{i}"#, i % 7)).collect();
            texts.push(format!("{{{}}}", fields.join(",")));
            let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            texts.push(format!("[{}]", items.join(",")));
        }
        texts.push(format!("{}{}", "[".repeat(127), "]".repeat(127)));
        let invalid = [
            "",
            " ",
            "nul",
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{1:2}"#,
            "[1] x",
            "01",
            r#""\x""#,
            "\"\u{1}\"",
            r#""\ud800""#,
            "{\"a\":[1,2}",
        ];
        texts.extend(invalid.iter().map(|t| (*t).to_owned()));
        texts.push(format!("{}{}", "[".repeat(200), "]".repeat(200)));
        texts.push(format!("{}1{}", "{\"a\":".repeat(130), "}".repeat(130)));
        for text in &texts {
            let theirs = serde_json::from_str::<Value>(text);
            match (super::parse(text), theirs) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours, theirs, "{text}");
                    let order =
                        |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>());
                    assert_eq!(order(&ours), order(&theirs), "{text}");
                }
                (Err(ours), Err(theirs)) => {
                    assert_eq!(ours.to_string(), theirs.to_string(), "{text}")
                }
                (ours, theirs) => panic!("{text}: {ours:?} against {theirs:?}"),
            }
        }
    }

    /// [`super::Batch`] reads a run of texts as [`super::parse`] reads each: objects of the
    /// same names one after another, of other names, with a repeated name, and every other
    /// text of the test above, in turn.
    #[test]
    fn a_batch_reads_each_text_as_parse_does() {
        let mut texts = vec![
            r#"{"a":1,"b":"x"}"#.to_owned(),
            r#"{"a":2,"b":{"c":[1]}}"#.to_owned(),
            r#" {"a":3,"b":null} "#.to_owned(),
            r#"{"b":4,"a":5}"#.to_owned(),
            r#"{"a":6}"#.to_owned(),
            r#"{"a":7,"b":8,"c":9}"#.to_owned(),
            r#"{"a":7,"b":8,"a":9}"#.to_owned(),
            r#"{"a":7,"b":8,"a":9}"#.to_owned(),
            r#"{"ab":1,"b":2}"#.to_owned(),
            r#"{"ab":3,"b":4}"#.to_owned(),
            r#"{"a":1,"b":}"#.to_owned(),
            r#"{"a":1,"b":2} x"#.to_owned(),
            "[1]".to_owned(),
            r#"{"a":1,"b":2}"#.to_owned(),
            "{}".to_owned(),
            "{}".to_owned(),
            "{".to_owned(),
            r#"{1:2}"#.to_owned(),
            // Whitespace that is not JSON's before an object.
            "\u{a0}{\"a\":1}".to_owned(),
            "\u{2003}{}".to_owned(),
        ];
        texts.push(format!("{}1{}", "{\"a\":".repeat(130), "}".repeat(130)));
        texts.push(format!("{}1{}", "{\"a\":".repeat(120), "}".repeat(120)));
        let mut batch = super::Batch::default();
        for text in texts.iter().chain(&texts) {
            match (batch.parse(text), super::parse(text)) {
                (Ok(ours), Ok(theirs)) => {
                    assert_eq!(ours, theirs, "{text}");
                    assert_eq!(super::to_string(&ours), super::to_string(&theirs), "{text}");
                }
                (Err(ours), Err(theirs)) => {
                    assert_eq!(ours.to_string(), theirs.to_string(), "{text}")
                }
                (ours, theirs) => panic!("{text}: {ours:?} against {theirs:?}"),
            }
        }
    }

    #[test]
    fn object_is_what_json_builds() {
        let rows = json!([{"a": 1, "b": [true, null]}, {"a": "x"}]);
        let built = super::object([
            ("data", rows.clone()),
            ("count", 2.into()),
            ("plugin", "p@1".into()),
        ]);
        assert_eq!(built, json!({"data": rows, "count": 2, "plugin": "p@1"}));
        let keys: Vec<&str> = built
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, ["data", "count", "plugin"]);
        assert_eq!(super::object([]), Value::Object(Default::default()));
    }
}
