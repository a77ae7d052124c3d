//! The node config the host passes for the current call, read-only: one key at a time
//! ([`get`], [`try_get`]) or as the plugin's own struct ([`parse`]).
//!
//! The interface only answers "the value at this key", it cannot list the keys; so [`parse`]
//! first asks the struct which fields it has, then fetches those. This covers a struct's
//! top-level fields: `#[serde(flatten)]` is not supported (the keys it would take cannot be
//! known), and keys the struct does not name are never seen (`#[serde(deny_unknown_fields)]`
//! has nothing to deny; declare a config schema with [`crate::Info::with_config_schema`] and the
//! host refuses unknown keys when it loads the workflow).

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use crate::decode::{self, DecodeError};
use crate::{Map, Value};

/// The value at `key`, if set (`None` also when the host sent something that is not JSON; use
/// [`try_get`] to tell the two apart).
pub fn get(key: &str) -> Option<Value> {
    try_get(key).ok().flatten()
}

/// The value at `key`, if set; an error if the host sent something that is not JSON.
pub fn try_get(key: &str) -> Result<Option<Value>, ConfigError> {
    match crate::imports::config_get(key) {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|_| ConfigError::NotJson {
                key: key.to_owned(),
            }),
    }
}

/// The node config as `T`, a struct whose fields are the config's keys.
///
/// A key that is not set is absent, so `Option` fields become `None` and `#[serde(default)]`
/// fields their default; a key set to `null` is `null` (fine for an `Option`, an error for a
/// `String`). Errors name the key and never quote its value:
/// `` config key `threshold`: invalid type: string, expected u64 ``.
///
/// Only top-level fields are fetched (see the [module docs](self)): `T` must be a struct with
/// named fields (or a newtype around one), without `#[serde(flatten)]`.
///
/// Parsing costs one host call per field; a plugin that reads its config for every record can
/// parse it once per call with [`crate::state`].
///
/// ```
/// use serde::Deserialize;
/// use trellis_sdk::{config, json, testing};
///
/// #[derive(Debug, Deserialize)]
/// struct Settings {
///     threshold: u64,
///     #[serde(default)]
///     label: Option<String>,
/// }
///
/// testing::set_config(json!({"threshold": 10}));
/// let settings: Settings = config::parse().unwrap();
/// assert_eq!((settings.threshold, settings.label), (10, None));
///
/// testing::set_config(json!({"threshold": "ten"}));
/// let error = config::parse::<Settings>().unwrap_err();
/// assert_eq!(error.to_string(), "config key `threshold`: invalid type: string, expected u64");
/// ```
pub fn parse<T: DeserializeOwned>() -> Result<T, ConfigError> {
    let fields = field_names::<T>()?;
    let mut config = Map::new();
    for &key in fields {
        if let Some(value) = try_get(key)? {
            config.insert(key.to_owned(), value);
        }
    }
    decode::from_value(&Value::Object(config)).map_err(ConfigError::from_decode)
}

/// Why the node config does not fit what the plugin asks for. Never quotes a config value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The host sent text at `key` that is not JSON.
    NotJson {
        /// The config key.
        key: String,
    },
    /// A key the plugin needs is not set.
    Missing {
        /// The config key (a path such as `limits.max` when a nested struct misses a field).
        key: String,
    },
    /// A value does not fit.
    Invalid {
        /// Where: the key, or a path into its value such as `rename.first` or `columns[2]`.
        key: String,
        /// What is wrong, e.g. `invalid type: string, expected u64`.
        message: String,
    },
    /// [`parse`] was asked for a type that is not a struct with named fields.
    Unsupported {
        /// The type asked for.
        type_name: &'static str,
    },
}

impl ConfigError {
    fn from_decode(error: DecodeError) -> ConfigError {
        if error.is_missing() {
            ConfigError::Missing {
                key: error.path().to_owned(),
            }
        } else {
            ConfigError::Invalid {
                key: error.path().to_owned(),
                message: error.message().to_owned(),
            }
        }
    }

    /// The key (or path into a key's value) at fault, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::NotJson { key }
            | ConfigError::Missing { key }
            | ConfigError::Invalid { key, .. } => Some(key).filter(|k| !k.is_empty()),
            ConfigError::Unsupported { .. } => None,
        }
        .map(String::as_str)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotJson { key } => {
                write!(
                    f,
                    "config key `{key}`: the host sent a value that is not JSON"
                )
            }
            ConfigError::Missing { key } => write!(f, "config key `{key}` is missing"),
            ConfigError::Invalid { key, message } if key.is_empty() => {
                write!(f, "config: {message}")
            }
            ConfigError::Invalid { key, message } => write!(f, "config key `{key}`: {message}"),
            ConfigError::Unsupported { type_name } => write!(
                f,
                "config::parse needs a struct with named fields (without `#[serde(flatten)]`), \
                 not `{type_name}`"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for String {
    fn from(error: ConfigError) -> String {
        error.to_string()
    }
}

// ---- which keys a struct has --------------------------------------------------------------

/// The field names (serde names: after `rename`, with aliases) of the struct `T`, learnt by
/// deserializing it from a [`FieldNames`] that stops at `deserialize_struct`.
fn field_names<T: DeserializeOwned>() -> Result<&'static [&'static str], ConfigError> {
    match T::deserialize(FieldNames) {
        Err(Found::Fields(fields)) => Ok(fields),
        Ok(_) | Err(Found::NotAStruct) => Err(ConfigError::Unsupported {
            type_name: std::any::type_name::<T>(),
        }),
    }
}

/// A Deserializer that holds no data: it answers a struct's `deserialize_struct` with the
/// struct's field names (as an "error", ending the deserialization), and anything else with
/// [`Found::NotAStruct`].
struct FieldNames;

#[derive(Debug)]
enum Found {
    Fields(&'static [&'static str]),
    NotAStruct,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("looking for field names")
    }
}

impl std::error::Error for Found {}

impl de::Error for Found {
    fn custom<T: fmt::Display>(_message: T) -> Self {
        Found::NotAStruct
    }
}

impl<'de> Deserializer<'de> for FieldNames {
    type Error = Found;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Found> {
        Err(Found::NotAStruct)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Found> {
        Err(Found::Fields(fields))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Found> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;

    use super::*;
    use crate::{json, testing};

    fn default_limit() -> u32 {
        100
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Limits {
        max: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Settings {
        threshold: u64,
        #[serde(default = "default_limit")]
        limit: u32,
        #[serde(rename = "as")]
        total_as: Option<String>,
        #[serde(default)]
        rename: BTreeMap<String, String>,
        limits: Option<Limits>,
    }

    #[test]
    fn a_struct_from_its_keys() {
        testing::set_config(json!({
            "threshold": 5, "as": "total", "rename": {"a": "b"}, "limits": {"max": 3},
            "not_a_field": "ignored"
        }));
        let settings: Settings = parse().unwrap();
        assert_eq!(
            settings,
            Settings {
                threshold: 5,
                limit: 100,
                total_as: Some("total".into()),
                rename: BTreeMap::from([("a".into(), "b".into())]),
                limits: Some(Limits { max: 3 }),
            }
        );
    }

    #[test]
    fn errors_name_the_key_and_never_quote_the_value() {
        let cases = [
            (
                json!({"threshold": "s3cr3t"}),
                "config key `threshold`: invalid type: string, expected u64",
                Some("threshold"),
            ),
            (
                json!({}),
                "config key `threshold` is missing",
                Some("threshold"),
            ),
            (
                json!({"threshold": 1, "as": 31337}),
                "config key `as`: invalid type: integer, expected a string",
                Some("as"),
            ),
            (
                json!({"threshold": 1, "rename": {"a": 31337}}),
                "config key `rename.a`: invalid type: integer, expected a string",
                Some("rename.a"),
            ),
            (
                json!({"threshold": 1, "limits": {}}),
                "config key `limits.max` is missing",
                Some("limits.max"),
            ),
            (
                json!({"threshold": 1, "limit": null}),
                "config key `limit`: invalid type: null, expected u32",
                Some("limit"),
            ),
        ];
        for (config, expected, key) in cases {
            testing::set_config(config.clone());
            let error = parse::<Settings>().unwrap_err();
            assert_eq!(error.to_string(), expected, "{config}");
            assert_eq!(error.key(), key);
            assert!(!error.to_string().contains("s3cr3t") && !error.to_string().contains("31337"));
        }
    }

    #[test]
    fn text_that_is_not_json_is_reported_by_try_get_and_parse() {
        testing::set_config(json!({}));
        testing::set_config_text("threshold", "{s3cr3t");
        assert_eq!(get("threshold"), None);
        let error = try_get("threshold").unwrap_err();
        assert_eq!(
            error,
            ConfigError::NotJson {
                key: "threshold".into()
            }
        );
        let error = parse::<Settings>().unwrap_err();
        assert_eq!(error.key(), Some("threshold"));
        assert!(!error.to_string().contains("s3cr3t"));
        assert_eq!(try_get("limit"), Ok(None));
    }

    #[test]
    fn only_structs_with_named_fields() {
        #[derive(Debug, Deserialize)]
        struct Flat {
            #[serde(flatten)]
            _rest: HashMap<String, Value>,
        }
        #[derive(Debug, Deserialize)]
        struct Wrapped(#[allow(dead_code)] Limits);

        testing::set_config(json!({"max": 4}));
        assert!(matches!(
            parse::<HashMap<String, Value>>(),
            Err(ConfigError::Unsupported { .. })
        ));
        let error = parse::<Flat>().unwrap_err();
        assert!(error.to_string().contains("flatten"), "{error}");
        assert!(parse::<Wrapped>().is_ok());
    }
}
