//! Write Trellis plugins in a few lines of Rust.
//!
//! A Trellis plugin is a WebAssembly component (`wasm32-wasip2`) that the host loads from its
//! plugins directory. It is either a **node** plugin, which transforms batches of JSON records in
//! a workflow, or a **masking** plugin, which masks field values in a node's output. The interface
//! is the WIT package `trellis:plugin@0.2.0` in `sdk/wit/`; this crate hides it behind two traits
//! ([`Node`], [`Masker`]), one export macro each, typed config and records, and a fake host for
//! native unit tests ([`testing`]).
//!
//! # A complete node plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "full-name"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! trellis-sdk = { path = "../../sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use serde::Deserialize;
//! use trellis_sdk::{ConfigError, Info, Node, Value, config, json, state};
//!
//! struct FullName;
//!
//! /// The node config, one field per key.
//! #[derive(Deserialize)]
//! struct Settings {
//!     /// Where the name goes.
//!     #[serde(default = "default_into")]
//!     into: String,
//! }
//!
//! fn default_into() -> String {
//!     "name".into()
//! }
//!
//! impl Node for FullName {
//!     fn info() -> Info {
//!         Info::new("full-name", env!("CARGO_PKG_VERSION"))
//!     }
//!
//!     fn transform(mut record: Value) -> Result<Value, String> {
//!         // Parsed on the first record of the call, kept for the others.
//!         let settings = state(config::parse::<Settings>)
//!             .as_ref()
//!             .map_err(ConfigError::to_string)?;
//!         let first = record["first"].as_str().ok_or("`first` is not a string")?;
//!         let last = record["last"].as_str().ok_or("`last` is not a string")?;
//!         record[&settings.into] = json!(format!("{first} {last}"));
//!         Ok(record)
//!     }
//! }
//!
//! trellis_sdk::export_node!(FullName);
//! ```
//!
//! A unit test, in the same file, run by `cargo test` on the native target (see [`testing`]):
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     use trellis_sdk::testing;
//!
//!     use super::*;
//!
//!     #[test]
//!     fn joins_first_and_last() {
//!         let out = testing::run_node::<FullName>(
//!             vec![json!({"first": "Ada", "last": "Lovelace"}), json!({"first": "Alan"})],
//!             json!({"into": "full"}),
//!         );
//!         assert_eq!(out[0], Ok(json!({"first": "Ada", "last": "Lovelace", "full": "Ada Lovelace"})));
//!         assert_eq!(out[1], Err("`last` is not a string".to_owned()));
//!     }
//! }
//! ```
//!
//! Build it with `trellis plugin build DIR` (or `cargo build --release --target wasm32-wasip2`)
//! and drop the `.wasm` into the plugins directory; test it with `cargo test` (native target).
//! `trellis plugin new NAME` writes such a crate.
//!
//! A masking plugin implements [`Masker`] instead and is exported with [`export_masker!`]:
//!
//! ```
//! use trellis_sdk::{Info, Masker, Value};
//!
//! struct LastFour;
//!
//! impl Masker for LastFour {
//!     fn info() -> Info {
//!         Info::new("last-four", env!("CARGO_PKG_VERSION"))
//!     }
//!
//!     fn mask(field_path: &str, value: Value, _params: &Value) -> Result<Value, String> {
//!         let text = trellis_sdk::json::as_str(&value, field_path)?;
//!         let keep = text.chars().count().saturating_sub(4);
//!         Ok(Value::String(text.chars().enumerate().map(|(i, c)| if i < keep { '*' } else { c }).collect()))
//!     }
//! }
//!
//! trellis_sdk::export_masker!(LastFour);
//! ```
//!
//! # Typed config, records and params
//!
//! - [`config::parse`] reads the node config into the plugin's own struct; an error names the
//!   key (`` config key `threshold`: invalid type: string, expected u64 ``) and never quotes
//!   the value. Only the struct's top-level fields are fetched (the interface answers one key
//!   at a time and cannot list them), so `#[serde(flatten)]` is not supported. [`config::get`]
//!   and [`config::try_get`] read one key as a [`Value`].
//! - A [`TypedNode`] takes each record as its own `serde` type and returns another; a record
//!   that does not fit fails alone with an error naming the field. Every `TypedNode` is a
//!   [`Node`].
//! - [`decode::from_value`] and [`decode::from_str`] do the same for anything else, e.g. a
//!   masking rule's `params`.
//! - [`state`] keeps a value (a parsed config, a lookup table) for the rest of the instance,
//!   which today is one call: one batch.
//!
//! # Native unit tests
//!
//! Off `wasm32`, [`config`], [`log`] and [`database`] talk to a fake host for the current thread
//! instead of the real one (whose imports exist only in a component). [`testing`] sets the
//! config, reads the captured log lines, answers database statements with rows or errors, and
//! runs a plugin as the host calls it: [`testing::run_node`], [`testing::run_masker`]. On
//! `wasm32` none of this is on the path: the calls go straight to the generated bindings.
//!
//! # Speed: records as JSON text
//!
//! [`Node::transform`] gets each record as a parsed [`Value`], which is simple and, for ~100-byte
//! records, costs most of a plugin's time (building the tree and serializing it again). A plugin
//! that renames, drops or adds top-level fields can override [`Node::transform_json`] and work on
//! a [`Record`] instead: untouched fields stay JSON text and are copied out verbatim. The example
//! `plugins/row-transform` does this and runs at more than twice the records per second. Faster
//! still, [`record::fields`] reads a record's fields in one pass and builds nothing, for a plugin
//! that writes its output as it reads (`row-transform` again, with a [`Record`] for the records
//! that pass does not cover). A
//! [`TypedNode`] decodes each record straight from its text into its own type, with no [`Value`]
//! in between.
//!
//! # The contract
//!
//! - `transform` gets a batch and returns **one result per record, in order**; an `Err` fails
//!   that record only. Work across records (an aggregation) overrides [`Node::transform_batch`]
//!   and still answers per record: the example `sum-by-key` adds each record's group total to the
//!   record (a window aggregation, like SQL's `SUM(x) OVER (PARTITION BY key)`).
//! - A masking `Err`, a panic, a deadline or a memory limit makes the host redact the value
//!   (`"[REDACTED]"`): masking fails closed.
//! - A panic traps the instance; the host reports the panic message with the plugin's name,
//!   version and export. Each call runs in a fresh instance, so no state survives between calls
//!   ([`state`] lasts one call).
//! - The sandbox has no filesystem, network or environment. `println!`/`eprintln!` output is
//!   captured (capped) and logged by the host; prefer [`log`], whose lines carry the plugin's
//!   name and version. The node's config is read with [`config::parse`] or [`config::get`].
//! - [`database::query`] runs a statement on one of the host's databases, if the plugin asks for
//!   the `database` capability and the host's policy allows it for the user the run is for.
//! - Limits: 64 MiB of memory and 1 s per call by default (the host's `[plugins]` config).

pub use serde_json::{self, Map, Value, json};

pub mod config;
pub mod decode;
mod imports;
pub mod record;
mod state;
pub mod testing;
mod typed;

pub use config::ConfigError;
pub use record::Record;
pub use state::state;
pub use typed::TypedNode;

#[doc(hidden)]
pub mod bindings {
    //! The generated WIT bindings. Plugin code uses the traits above instead.
    wit_bindgen::generate!({
        path: "wit",
        world: "trellis:plugin/plugin@0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "::trellis_sdk::bindings",
    });
}

use bindings::exports::trellis::plugin::mask::MaskRequest;
use bindings::trellis::plugin::types::{Description, Kind};

/// What a plugin says about itself.
#[derive(Debug, Clone)]
pub struct Info {
    /// Unique name; workflows refer to it as `plugin:<name>`.
    pub name: String,
    /// The plugin's own version, e.g. `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// Host capabilities it asks for.
    pub capabilities: Vec<String>,
    /// A JSON Schema for its node config.
    pub config_schema: Option<Value>,
}

impl Info {
    /// A plugin called `name` at `version`, asking for nothing.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Info {
        Info {
            name: name.into(),
            version: version.into(),
            capabilities: Vec::new(),
            config_schema: None,
        }
    }

    /// Asks for a host capability, e.g. `"database"` to call [`database::query`].
    pub fn with_capability(mut self, capability: impl Into<String>) -> Info {
        self.capabilities.push(capability.into());
        self
    }

    /// Declares the JSON Schema of the node config.
    pub fn with_config_schema(mut self, schema: Value) -> Info {
        self.config_schema = Some(schema);
        self
    }
}

/// A node plugin: transforms records.
pub trait Node {
    /// Name, version, capabilities, config schema.
    fn info() -> Info;

    /// Transforms one record; an `Err` fails that record only.
    fn transform(record: Value) -> Result<Value, String>;

    /// Transforms a batch, one result per record in order. Override it for work across records.
    fn transform_batch(records: Vec<Value>) -> Vec<Result<Value, String>> {
        records.into_iter().map(Self::transform).collect()
    }

    /// The batch as it crosses the interface: one JSON text per record in, one JSON text (or
    /// error) per record out, in order. The default parses each record into a [`Value`], calls
    /// [`Node::transform_batch`] and serializes the results.
    ///
    /// Building and re-serializing a whole [`Value`] per record is most of a simple plugin's
    /// time. A plugin that renames, drops or adds top-level fields can override this with
    /// [`Record`], which leaves every value it does not touch as JSON text (the example
    /// `row-transform` does; several times faster on ~100-byte records).
    fn transform_json(records: Vec<String>) -> Vec<Result<String, String>>
    where
        Self: Sized,
    {
        transform_as_values::<Self>(records)
    }
}

/// [`Node::transform_json`]'s default: records parsed into [`Value`]s, handed to
/// [`Node::transform_batch`], the results serialized.
pub fn transform_as_values<N: Node>(records: Vec<String>) -> Vec<Result<String, String>> {
    let mut parsed = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    for (i, text) in records.iter().enumerate() {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => parsed.push(v),
            Err(e) => bad.push((i, format!("record {i} is not JSON: {e}"))),
        }
    }
    if !bad.is_empty() {
        // The host always sends JSON; if it did not, fail every record rather than guess.
        let reason = bad.remove(0).1;
        return records.iter().map(|_| Err(reason.clone())).collect();
    }
    N::transform_batch(parsed)
        .into_iter()
        .map(|r| r.map(|v| v.to_string()))
        .collect()
}

/// A masking plugin: masks field values.
pub trait Masker {
    /// Name, version, capabilities.
    fn info() -> Info;

    /// Masks `value` found at `field_path`; `params` are the masking rule's `params` (an object).
    /// An `Err` makes the host redact the value.
    fn mask(field_path: &str, value: Value, params: &Value) -> Result<Value, String>;
}

/// Logging into the host's `tracing`, tagged with this plugin's name and version. In native
/// tests the lines are captured instead ([`testing::logs`]).
pub mod log {
    /// How important a line is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Level {
        /// Very fine detail.
        Trace,
        /// Detail for debugging.
        Debug,
        /// Normal operation.
        Info,
        /// Something looks wrong.
        Warn,
        /// Something failed.
        Error,
    }

    /// Logs `message` at `level`.
    pub fn log(level: Level, message: &str) {
        crate::imports::log(level, message);
    }
    /// Logs at `trace`.
    pub fn trace(message: &str) {
        log(Level::Trace, message);
    }
    /// Logs at `debug`.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Logs at `info`.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Logs at `warn`.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Logs at `error`.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Statements on the host's databases, each decided by the host's policy engine for the user the
/// run is for. The plugin must ask for the `database` capability ([`Info::with_capability`]).
/// In native tests the statements are answered by [`testing::answer_query`] and its kin.
pub mod database {
    use crate::Value;

    /// Why a statement did not run, or did not finish.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ErrorKind {
        /// The policy engine refused it.
        Denied,
        /// The database refused it, or the parameters do not fit the statement.
        Query,
        /// The call's deadline passed while waiting for the database.
        Timeout,
        /// Too many rows, or too many statements in this call.
        Limit,
    }

    /// A failed statement.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Error {
        /// What kind of failure.
        pub kind: ErrorKind,
        /// The host's message (never quotes a parameter value).
        pub message: String,
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}: {}", self.kind, self.message)
        }
    }

    impl std::error::Error for Error {}

    /// Runs `statement` (with `:name` parameters, values in the object `params`, or `Value::Null`)
    /// on database `name`. Returns the SQL node's `result` form:
    /// `{"data": [...], "row_count": N, "database_type": "..."}`.
    ///
    /// [`query_as`] reads the rows into the plugin's own types instead, and [`rows`] into
    /// `Value`s; both skip the `Value` this builds for the whole answer.
    pub fn query(name: &str, statement: &str, params: &Value) -> Result<Value, Error> {
        let text = answer(name, statement, params)?;
        serde_json::from_str(&text).map_err(|e| Error {
            kind: ErrorKind::Query,
            message: format!("the host returned rows that are not JSON: {e}"),
        })
    }

    /// A statement's answer with its rows typed ([`query_as`]).
    #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
    pub struct Rows<T> {
        /// The rows in the database's order, each read from its JSON object (keyed by column
        /// name).
        pub data: Vec<T>,
        /// How many rows the statement returned (for a write: how many it changed).
        pub row_count: u64,
    }

    /// Runs `statement` like [`query`], and reads each row straight into a `T`: a
    /// `#[derive(serde::Deserialize)]` struct whose fields are the columns, or `Value`. No
    /// `Value` is built for the answer first, so this is the cheapest way to read rows.
    ///
    /// A row that does not fit `T` is a [`ErrorKind::Query`] error naming the row and column
    /// (`data[0].id`), never the value.
    ///
    /// ```
    /// use trellis_sdk::{Value, database, json, testing};
    ///
    /// #[derive(Debug, PartialEq, serde::Deserialize)]
    /// struct Customer { id: i64, name: String }
    ///
    /// testing::answer_query("main", "SELECT id, name FROM customers", |_| {
    ///     Ok(testing::query_result(vec![json!({"id": 7, "name": "Ada"})]))
    /// });
    /// let rows = database::query_as::<Customer>("main", "SELECT id, name FROM customers", &Value::Null)?;
    /// assert_eq!(rows.data, [Customer { id: 7, name: "Ada".into() }]);
    /// assert_eq!(rows.row_count, 1);
    /// # Ok::<(), database::Error>(())
    /// ```
    pub fn query_as<T: serde::de::DeserializeOwned>(
        name: &str,
        statement: &str,
        params: &Value,
    ) -> Result<Rows<T>, Error> {
        read_rows(&answer(name, statement, params)?)
    }

    /// An answer's rows as `T`s. The host writes its answer as fixed text around the rows
    /// (`{"data":ROWS,"row_count":N,"database_type":"KIND"}`, its `answer_text` in
    /// `host/src/workflow/plugin_database.rs`), so only the rows go through the
    /// JSON parser; any other text (another host's, a test's) is parsed whole, and so is an
    /// answer whose rows do not fit `T`, for the error that names the row and column.
    fn read_rows<T: serde::de::DeserializeOwned>(text: &str) -> Result<Rows<T>, Error> {
        if let Some(rows) = framed(text).and_then(|(rows, row_count)| {
            let data = serde_json::from_str(rows).ok()?;
            Some(Rows { data, row_count })
        }) {
            return Ok(rows);
        }
        crate::decode::from_str(text).map_err(|e| Error {
            kind: ErrorKind::Query,
            message: format!("the rows do not fit the plugin's type: {e}"),
        })
    }

    /// The rows' text and the row count of an answer in the host's frame, `None` for any other
    /// text. The frame's tail is read from the end, so rows that hold the same characters (in a
    /// string, or a column called `row_count`) are never taken for it; what is left before it
    /// must then be one JSON value, which the caller's parse checks.
    fn framed(text: &str) -> Option<(&str, u64)> {
        let rest = text.strip_prefix(r#"{"data":"#)?.strip_suffix(r#""}"#)?;
        // The database type: a plain lowercase name.
        let kind = rest
            .bytes()
            .rev()
            .take_while(u8::is_ascii_lowercase)
            .count();
        let rest = rest[..rest.len() - kind].strip_suffix(r#","database_type":""#)?;
        let digits = rest.bytes().rev().take_while(u8::is_ascii_digit).count();
        let (rest, count) = rest.split_at(rest.len() - digits);
        // JSON has no leading zeros.
        if count.is_empty() || (count.len() > 1 && count.starts_with('0')) {
            return None;
        }
        let row_count = count.parse().ok()?;
        Some((rest.strip_suffix(r#","row_count":"#)?, row_count))
    }

    /// [`query`]'s rows (`data`), for a statement that returns rows.
    pub fn rows(name: &str, statement: &str, params: &Value) -> Result<Vec<Value>, Error> {
        Ok(query_as::<Value>(name, statement, params)?.data)
    }

    /// The host's answer to `statement`, as JSON text.
    fn answer(name: &str, statement: &str, params: &Value) -> Result<String, Error> {
        // No parameters is the common case: no serializer for it.
        let params = match params {
            Value::Null => std::borrow::Cow::Borrowed("null"),
            other => std::borrow::Cow::Owned(
                serde_json::to_string(other).expect("JSON values always serialize"),
            ),
        };
        crate::imports::database_query(name, statement, &params)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct One {
            one: i64,
        }

        /// The answer read whole, as before the host's frame was read apart.
        fn whole<T: serde::de::DeserializeOwned>(text: &str) -> Result<Rows<T>, String> {
            crate::decode::from_str(text).map_err(|e| e.to_string())
        }

        #[test]
        fn the_hosts_frame_is_read_around_its_rows() {
            let text = r#"{"data":[{"one":1},{"one":2}],"row_count":2,"database_type":"postgres"}"#;
            assert_eq!(framed(text), Some((r#"[{"one":1},{"one":2}]"#, 2)));
            let rows = read_rows::<One>(text).unwrap();
            assert_eq!(rows, whole::<One>(text).unwrap());
            assert_eq!(rows.data, [One { one: 1 }, One { one: 2 }]);
            // A write: no rows, the rows it changed. The text the host's own test pins for
            // `answer_text` (`host/src/workflow/plugin_database.rs`).
            let text = r#"{"data":[],"row_count":12345678901,"database_type":"mysql"}"#;
            assert_eq!(framed(text), Some(("[]", 12_345_678_901)));
            assert_eq!(read_rows::<Value>(text).unwrap().row_count, 12_345_678_901);
        }

        #[test]
        fn rows_that_look_like_the_frame_are_rows() {
            // A column called `row_count`, and strings holding the frame's text.
            let text = r#"{"data":[{"a":1,"row_count":5,"s":"\",\"row_count\":9,\"database_type\":\"x\"}"}],"row_count":1,"database_type":"sqlite"}"#;
            let rows = read_rows::<Value>(text).unwrap();
            assert_eq!(Ok(rows.clone()), whole::<Value>(text));
            assert_eq!(rows.row_count, 1);
            assert_eq!(rows.data[0]["row_count"], 5);
        }

        #[test]
        fn any_other_text_reads_as_the_whole_parse_does() {
            for text in [
                // Another order, whitespace, extra fields: not the frame, still an answer.
                r#"{"data":[{"one":1}],"database_type":"postgres","row_count":1}"#,
                r#"{ "data": [{"one": 1}], "row_count": 1, "database_type": "postgres" }"#,
                r#"{"row_count":1,"data":[{"one":1}],"database_type":"postgres","more":true}"#,
                // Not JSON, in the frame's shape.
                r#"{"data":[{"one":1}],"row_count":01,"database_type":"postgres"}"#,
                r#"{"data":[{"one":1}],"row_count":,"database_type":"postgres"}"#,
                r#"{"data":[{"one":1}]],"row_count":1,"database_type":"postgres"}"#,
                r#"{"data":[{"one":1}],"row_count":1,"database_type":"post\"gres"}"#,
                r#"{"data":[{"one":1}],"row_count":1,"database_type":"postgres"}x"#,
                r#"{"data":[{"one":1}],"row_count":99999999999999999999,"database_type":"postgres"}"#,
                // The frame's parts overlapping, or cut short.
                r#"{"data":,"row_count":1,"database_type":"postgres"}"#,
                r#"{"data":"}"#,
                r#"{"data":"#,
                "",
                // Rows that do not fit.
                r#"{"data":[{"one":"1"}],"row_count":1,"database_type":"postgres"}"#,
                r#"{"data":{"one":1},"row_count":1,"database_type":"postgres"}"#,
            ] {
                let read = read_rows::<One>(text).map_err(|e| e.message);
                let expected = whole::<One>(text)
                    .map_err(|e| format!("the rows do not fit the plugin's type: {e}"));
                assert_eq!(read, expected, "{text}");
            }
            let error = read_rows::<One>(
                r#"{"data":[{"one":1},{"one":"secret"}],"row_count":2,"database_type":"postgres"}"#,
            )
            .unwrap_err();
            assert_eq!(error.kind, ErrorKind::Query);
            assert!(error.message.contains("data[1].one"), "{}", error.message);
            assert!(!error.message.contains("secret"), "{}", error.message);
        }
    }
}

/// Small helpers for reading JSON records, with error messages fit to return as a record's
/// error.
pub mod json {
    use crate::{Map, Value};

    /// The record as an object.
    pub fn as_object(record: &Value) -> Result<&Map<String, Value>, String> {
        record
            .as_object()
            .ok_or_else(|| "a record must be a JSON object".to_owned())
    }

    /// The record as a mutable object.
    pub fn as_object_mut(record: &mut Value) -> Result<&mut Map<String, Value>, String> {
        record
            .as_object_mut()
            .ok_or_else(|| "a record must be a JSON object".to_owned())
    }

    /// `value` as a string; `what` names it in the error.
    pub fn as_str<'a>(value: &'a Value, what: &str) -> Result<&'a str, String> {
        value
            .as_str()
            .ok_or_else(|| format!("`{what}` is {value}, not a string"))
    }

    /// The string field `key` of `record`.
    pub fn str_field<'a>(record: &'a Value, key: &str) -> Result<&'a str, String> {
        match record.get(key) {
            Some(value) => as_str(value, key),
            None => Err(format!("`{key}` is missing")),
        }
    }

    /// The numeric field `key` of `record`.
    pub fn f64_field(record: &Value, key: &str) -> Result<f64, String> {
        match record.get(key) {
            Some(Value::Number(n)) => n.as_f64().ok_or_else(|| format!("`{key}` is out of range")),
            Some(other) => Err(format!("`{key}` is {other}, not a number")),
            None => Err(format!("`{key}` is missing")),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::json;

        #[test]
        fn fields_and_their_errors() {
            let record = json!({"name": "Ada", "age": 36, "tags": []});
            assert_eq!(str_field(&record, "name"), Ok("Ada"));
            assert_eq!(f64_field(&record, "age"), Ok(36.0));
            assert_eq!(
                str_field(&record, "age").unwrap_err(),
                "`age` is 36, not a string"
            );
            assert_eq!(
                f64_field(&record, "tags").unwrap_err(),
                "`tags` is [], not a number"
            );
            assert_eq!(str_field(&record, "nope").unwrap_err(), "`nope` is missing");
            assert!(as_object(&json!([1])).is_err());
        }
    }
}

// ---- glue used by the export macros ------------------------------------------------------

#[doc(hidden)]
pub fn __describe(info: Info, kind: PluginKind) -> Description {
    Description {
        name: info.name,
        version: info.version,
        kind: match kind {
            PluginKind::Node => Kind::Node,
            PluginKind::Masking => Kind::Masking,
        },
        capabilities: info.capabilities,
        config_schema: info.config_schema.map(|s| s.to_string()),
    }
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum PluginKind {
    Node,
    Masking,
}

#[doc(hidden)]
pub fn __transform<N: Node>(records: Vec<String>) -> Vec<Result<String, String>> {
    N::transform_json(records)
}

#[doc(hidden)]
pub fn __mask<M: Masker>(requests: Vec<MaskRequest>) -> Vec<Result<String, String>> {
    requests
        .into_iter()
        .map(|req| {
            let value: Value = serde_json::from_str(&req.value)
                .map_err(|e| format!("value at `{}` is not JSON: {e}", req.field_path))?;
            let params: Value = serde_json::from_str(&req.params).unwrap_or(Value::Null);
            M::mask(&req.field_path, value, &params).map(|v| v.to_string())
        })
        .collect()
}

#[doc(hidden)]
pub fn __not_this_kind(name: &str, kind: &str, count: usize) -> Vec<Result<String, String>> {
    let message = format!("plugin `{name}` is a {kind} plugin and does not implement this export");
    (0..count).map(|_| Err(message.clone())).collect()
}

#[doc(hidden)]
pub use bindings::exports::trellis::plugin::mask::Guest as __MaskGuest;
#[doc(hidden)]
pub use bindings::exports::trellis::plugin::mask::MaskRequest as __MaskRequest;
#[doc(hidden)]
pub use bindings::exports::trellis::plugin::meta::Guest as __MetaGuest;
#[doc(hidden)]
pub use bindings::exports::trellis::plugin::transform::Guest as __TransformGuest;
#[doc(hidden)]
pub use bindings::trellis::plugin::types::Description as __Description;

/// Exports a type implementing [`Node`] as this component's plugin.
#[macro_export]
macro_rules! export_node {
    ($ty:ident) => {
        impl $crate::__MetaGuest for $ty {
            fn describe() -> $crate::__Description {
                $crate::__describe(<$ty as $crate::Node>::info(), $crate::PluginKind::Node)
            }
        }
        impl $crate::__TransformGuest for $ty {
            fn transform(records: ::std::vec::Vec<::std::string::String>)
                -> ::std::vec::Vec<::std::result::Result<::std::string::String, ::std::string::String>> {
                $crate::__transform::<$ty>(records)
            }
        }
        impl $crate::__MaskGuest for $ty {
            fn mask(requests: ::std::vec::Vec<$crate::__MaskRequest>)
                -> ::std::vec::Vec<::std::result::Result<::std::string::String, ::std::string::String>> {
                $crate::__not_this_kind(&<$ty as $crate::Node>::info().name, "node", requests.len())
            }
        }
        $crate::bindings::__export_plugin_world!($ty);
    };
}

/// Exports a type implementing [`Masker`] as this component's plugin.
#[macro_export]
macro_rules! export_masker {
    ($ty:ident) => {
        impl $crate::__MetaGuest for $ty {
            fn describe() -> $crate::__Description {
                $crate::__describe(<$ty as $crate::Masker>::info(), $crate::PluginKind::Masking)
            }
        }
        impl $crate::__TransformGuest for $ty {
            fn transform(records: ::std::vec::Vec<::std::string::String>)
                -> ::std::vec::Vec<::std::result::Result<::std::string::String, ::std::string::String>> {
                $crate::__not_this_kind(&<$ty as $crate::Masker>::info().name, "masking", records.len())
            }
        }
        impl $crate::__MaskGuest for $ty {
            fn mask(requests: ::std::vec::Vec<$crate::__MaskRequest>)
                -> ::std::vec::Vec<::std::result::Result<::std::string::String, ::std::string::String>> {
                $crate::__mask::<$ty>(requests)
            }
        }
        $crate::bindings::__export_plugin_world!($ty);
    };
}
