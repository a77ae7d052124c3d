//! Typed values out of JSON for plugins: records, node config and masking params become the
//! plugin's own `serde` types, and a value that does not fit is an error that names the field but
//! never quotes the value (records and config may hold secrets; the host logs plugin errors).

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, Expected, IntoDeserializer,
    Unexpected, VariantAccess, Visitor,
};

use crate::Value;

/// Why a JSON value does not fit a type: where (a path such as `age`, `address.city` or
/// `tags[2]`), and what is wrong, without the value itself.
///
/// The messages of `serde`'s own types (numbers, strings, collections, derived structs and enums)
/// never quote the value. A type's own `Deserialize` impl can fail with any message it likes
/// (`serde::de::Error::custom`); that message is kept as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    path: String,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    /// The text is not JSON (serde_json's message: a position, never the text).
    NotJson(String),
    /// A field the type needs is absent; `path` names it.
    Missing,
    /// The value at `path` does not fit.
    Invalid(String),
}

impl DecodeError {
    /// Where the problem is, e.g. `age`, `address.city`, `tags[2]`; empty for the whole value.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, e.g. `invalid type: string, expected u64`, or `missing`.
    pub fn message(&self) -> &str {
        match &self.problem {
            Problem::NotJson(message) | Problem::Invalid(message) => message,
            Problem::Missing => "missing",
        }
    }

    /// Whether a field the type needs is absent.
    pub fn is_missing(&self) -> bool {
        self.problem == Problem::Missing
    }

    /// Whether the text was not JSON at all.
    pub fn is_not_json(&self) -> bool {
        matches!(self.problem, Problem::NotJson(_))
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.problem, self.path.as_str()) {
            (Problem::NotJson(message), _) => write!(f, "not JSON: {message}"),
            (Problem::Missing, path) => write!(f, "field `{path}` is missing"),
            (Problem::Invalid(message), "") => f.write_str(message),
            (Problem::Invalid(message), path) => write!(f, "field `{path}`: {message}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for String {
    fn from(error: DecodeError) -> String {
        error.to_string()
    }
}

/// `value` as a `T`.
///
/// ```
/// use trellis_sdk::{decode, json};
///
/// #[derive(Debug, serde::Deserialize)]
/// struct Person { name: String, age: u32 }
///
/// let error = decode::from_value::<Person>(&json!({"name": "Ada", "age": "secret"})).unwrap_err();
/// assert_eq!(error.to_string(), "field `age`: invalid type: string, expected u32");
/// ```
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(ValueDeserializer(value)).map_err(|e| {
        let mut path = e.path().to_string();
        if path == "." {
            path.clear();
        }
        let problem = match e.into_inner() {
            Unquoted::Missing(field) => {
                path = if path.is_empty() {
                    field.to_owned()
                } else {
                    format!("{path}.{field}")
                };
                Problem::Missing
            }
            Unquoted::Message(message) => Problem::Invalid(message),
        };
        DecodeError { path, problem }
    })
}

/// The JSON text `json` as a `T`: as fast as `serde_json::from_str` when it fits; when it does
/// not, parsed again to name the field at fault without quoting it.
pub fn from_str<T: DeserializeOwned>(json: &str) -> Result<T, DecodeError> {
    if let Ok(value) = serde_json::from_str(json) {
        return Ok(value);
    }
    let value: Value = serde_json::from_str(json).map_err(|e| DecodeError {
        path: String::new(),
        problem: Problem::NotJson(e.to_string()),
    })?;
    match from_value::<T>(&value) {
        Err(e) => Err(e),
        // The two parsers disagree (e.g. on a duplicate key); serde_json's message may quote the
        // text, so it is not used.
        Ok(_) => Err(DecodeError {
            path: String::new(),
            problem: Problem::Invalid(format!("does not fit `{}`", std::any::type_name::<T>())),
        }),
    }
}

// ---- a Deserializer over &Value whose errors never quote a value -------------------------------

/// The error of [`ValueDeserializer`]: `serde`'s messages with the value left out.
#[derive(Debug)]
enum Unquoted {
    Missing(&'static str),
    Message(String),
}

impl fmt::Display for Unquoted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unquoted::Missing(field) => write!(f, "missing field `{field}`"),
            Unquoted::Message(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Unquoted {}

/// What kind of value `unexpected` is, without the value.
fn kind(unexpected: &Unexpected<'_>) -> &'static str {
    match unexpected {
        Unexpected::Bool(_) => "boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "integer",
        Unexpected::Float(_) => "floating point number",
        Unexpected::Char(_) => "character",
        Unexpected::Str(_) => "string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "null",
        Unexpected::Option => "option",
        Unexpected::NewtypeStruct => "newtype struct",
        Unexpected::Seq => "array",
        Unexpected::Map => "object",
        Unexpected::Enum => "enum",
        Unexpected::UnitVariant => "unit variant",
        Unexpected::NewtypeVariant => "newtype variant",
        Unexpected::TupleVariant => "tuple variant",
        Unexpected::StructVariant => "struct variant",
        Unexpected::Other(_) => "value",
    }
}

/// `names` as serde lists them: `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` ``.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        0 => "nothing".to_owned(),
        1 => quoted[0].clone(),
        2 => format!("{} or {}", quoted[0], quoted[1]),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

impl de::Error for Unquoted {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Unquoted::Message(message.to_string())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Unquoted::Message(format!(
            "invalid type: {}, expected {expected}",
            kind(&unexpected)
        ))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Unquoted::Message(format!(
            "invalid value: {}, expected {expected}",
            kind(&unexpected)
        ))
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        // The variant is a value (`"mode": "fast"`), so it is left out.
        Unquoted::Message(format!("unknown variant, expected {}", one_of(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        Unquoted::Missing(field)
    }
}

/// Deserializes from a borrowed [`Value`] (strings are copied: the targets are
/// `DeserializeOwned`), with [`Unquoted`] errors.
#[derive(Clone, Copy)]
struct ValueDeserializer<'v>(&'v Value);

impl ValueDeserializer<'_> {
    fn unexpected(&self) -> Unexpected<'_> {
        match self.0 {
            Value::Null => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Number(n) if n.is_f64() => Unexpected::Float(0.0),
            Value::Number(_) => Unexpected::Unsigned(0),
            Value::String(_) => Unexpected::Str(""),
            Value::Array(_) => Unexpected::Seq,
            Value::Object(_) => Unexpected::Map,
        }
    }
}

impl<'de> IntoDeserializer<'de, Unquoted> for ValueDeserializer<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for ValueDeserializer<'_> {
    type Error = Unquoted;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unquoted> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(ValueDeserializer));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Object(fields) => {
                let mut map = MapDeserializer::new(
                    fields
                        .iter()
                        .map(|(k, v)| (k.as_str(), ValueDeserializer(v))),
                );
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unquoted> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unquoted> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unquoted> {
        match self.0 {
            // A unit variant: `"fast"`.
            Value::String(variant) => visitor.visit_enum(variant.as_str().into_deserializer()),
            // Any other variant, externally tagged: `{"fixed": 3}`.
            Value::Object(fields) if fields.len() == 1 => {
                let (variant, content) = fields.iter().next().expect("one field");
                visitor.visit_enum(Variant { variant, content })
            }
            _ => Err(de::Error::invalid_type(
                self.unexpected(),
                &"a variant name or an object with one key",
            )),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unquoted> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// An externally tagged enum variant with content: `{"variant": content}`.
struct Variant<'v> {
    variant: &'v str,
    content: &'v Value,
}

impl<'de, 'v> EnumAccess<'de> for Variant<'v> {
    type Error = Unquoted;
    type Variant = ValueDeserializer<'v>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Unquoted> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, ValueDeserializer(self.content)))
    }
}

impl<'de> VariantAccess<'de> for ValueDeserializer<'_> {
    type Error = Unquoted;

    fn unit_variant(self) -> Result<(), Unquoted> {
        match self.0 {
            Value::Null => Ok(()),
            _ => Err(de::Error::invalid_type(self.unexpected(), &"unit variant")),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, Unquoted> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Unquoted> {
        self.deserialize_any(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unquoted> {
        self.deserialize_any(visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;
    use crate::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Fixed(u32),
        Window { size: u8 },
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Address {
        city: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Person {
        name: String,
        age: u32,
        #[serde(default)]
        nickname: Option<String>,
        #[serde(default)]
        tags: Vec<String>,
        address: Option<Address>,
        mode: Option<Mode>,
        #[serde(default)]
        extra: BTreeMap<String, f64>,
    }

    #[test]
    fn values_that_fit() {
        let person: Person = from_value(&json!({
            "name": "Ada", "age": 36, "tags": ["a"], "address": {"city": "London"},
            "mode": {"window": {"size": 3}}, "extra": {"x": 1, "y": 2.5}, "ignored": [1, {}]
        }))
        .unwrap();
        assert_eq!(person.age, 36);
        assert_eq!(person.nickname, None);
        assert_eq!(person.address.unwrap().city, "London");
        assert_eq!(person.mode, Some(Mode::Window { size: 3 }));
        assert_eq!(person.extra["y"], 2.5);
        let fast: Mode = from_value(&json!("fast")).unwrap();
        assert_eq!(fast, Mode::Fast);
        let fixed: Mode = from_value(&json!({"fixed": 7})).unwrap();
        assert_eq!(fixed, Mode::Fixed(7));
        let signed: i64 = from_value(&json!(-3)).unwrap();
        assert_eq!(signed, -3);
    }

    #[test]
    fn errors_name_the_field_and_never_the_value() {
        let cases = [
            (
                json!({"name": "Ada", "age": "s3cr3t"}),
                "field `age`: invalid type: string, expected u32",
            ),
            (
                json!({"name": "Ada", "age": 4_000_000_000_000u64}),
                "field `age`: invalid value: integer, expected u32",
            ),
            (
                json!({"name": "Ada", "age": 1, "tags": ["ok", 987654]}),
                "field `tags[1]`: invalid type: integer, expected a string",
            ),
            (
                json!({"name": "Ada", "age": 1, "address": {"city": 31337}}),
                "field `address.city`: invalid type: integer, expected a string",
            ),
            (
                json!({"name": "Ada", "age": 1, "address": {}}),
                "field `address.city` is missing",
            ),
            (json!({"age": 1}), "field `name` is missing"),
            (
                json!({"name": "Ada", "age": 1, "mode": "s3cr3t"}),
                "field `mode`: unknown variant, expected one of `fast`, `fixed`, `window`",
            ),
            (
                json!("s3cr3t"),
                "invalid type: string, expected struct Person",
            ),
            // As serde_json has it, an array fills a struct's fields in order.
            (
                json!(["s3cr3t"]),
                "invalid length 1, expected struct Person with 7 elements",
            ),
        ];
        for (value, expected) in cases {
            let error = from_value::<Person>(&value).unwrap_err();
            assert_eq!(error.to_string(), expected, "{value}");
            assert!(!error.to_string().contains("s3cr3t"));
            assert!(!error.to_string().contains("31337"));
            assert!(!error.to_string().contains("987654"));
        }
        let missing = from_value::<Person>(&json!({"age": 1})).unwrap_err();
        assert!(missing.is_missing());
        assert_eq!((missing.path(), missing.message()), ("name", "missing"));
    }

    #[test]
    fn text_is_parsed_fast_and_errors_are_the_same() {
        let person: Person = from_str(r#"{"name":"Ada","age":36}"#).unwrap();
        assert_eq!(person.name, "Ada");
        let error = from_str::<Person>(r#"{"name":"Ada","age":"s3cr3t"}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field `age`: invalid type: string, expected u32"
        );
        let error = from_str::<Person>(r#"{"name":"s3cr3t""#).unwrap_err();
        assert!(error.is_not_json());
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }
}
