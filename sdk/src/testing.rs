//! Unit tests for plugins under a plain `cargo test` on the native target: a fake host for the
//! current thread (node config, captured log lines, database answers), and runners that call a
//! [`Node`] or [`Masker`] the way the host does.
//!
//! Off `wasm32` the SDK's [`config`](crate::config), [`log`](crate::log) and
//! [`database`](crate::database) calls go to these fakes instead of the host. Each test runs on
//! its own thread, so tests do not see each other's fakes. On `wasm32` this module still
//! compiles, but the calls go to the real host and the fakes are never consulted: run plugin
//! tests on the native target.
//!
//! ```
//! use trellis_sdk::database::ErrorKind;
//! use trellis_sdk::{Info, Node, Value, config, database, json, testing};
//!
//! struct Lookup;
//!
//! impl Node for Lookup {
//!     fn info() -> Info {
//!         Info::new("lookup", "0.1.0").with_capability("database")
//!     }
//!
//!     fn transform(mut record: Value) -> Result<Value, String> {
//!         let table = config::get("table").ok_or("`table` is not set")?;
//!         trellis_sdk::log::info(&format!("looking up in {table}"));
//!         let rows = database::rows("main", "SELECT name FROM t WHERE id = :id", &record)
//!             .map_err(|e| e.to_string())?;
//!         record["names"] = Value::Array(rows);
//!         Ok(record)
//!     }
//! }
//!
//! testing::answer_query("main", "SELECT name FROM t WHERE id = :id", |params| match params["id"].as_u64() {
//!     Some(1) => Ok(testing::query_result(vec![json!({"name": "Ada"})])),
//!     _ => Err(database::Error { kind: ErrorKind::Denied, message: "not yours".into() }),
//! });
//! let out = testing::run_node::<Lookup>(vec![json!({"id": 1}), json!({"id": 2})], json!({"table": "t"}));
//! assert_eq!(out[0], Ok(json!({"id": 1, "names": [{"name": "Ada"}]})));
//! assert_eq!(out[1], Err("Denied: not yours".to_owned()));
//! assert_eq!(testing::logs()[0].message, "looking up in \"t\"");
//! assert_eq!(testing::queries()[1].params, json!({"id": 2}));
//! ```

// On wasm32 nothing reads the fakes (see the module docs).
#![cfg_attr(target_arch = "wasm32", allow(dead_code))]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::database::{Error, ErrorKind};
use crate::log::Level;
use crate::{Map, Masker, Node, Value, json};

/// One line the plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub message: String,
}

/// One statement the plugin ran through [`crate::database::query`].
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The database it named.
    pub database: String,
    /// The statement text.
    pub statement: String,
    /// Its parameters (`null` for none).
    pub params: Value,
}

/// A fake database's answer to one statement: the `query` result, or an error.
type Answer = Rc<dyn Fn(&Value) -> Result<Value, Error>>;

/// The fake host of the current thread.
#[derive(Default)]
struct Fakes {
    /// The node config: key → JSON text, as the host sends it.
    config: HashMap<String, String>,
    logs: Vec<LogLine>,
    answers: HashMap<(String, String), Answer>,
    queries: Vec<Query>,
    /// The capabilities of the plugin being run by [`run_node`], if any.
    capabilities: Option<Vec<String>>,
}

thread_local! {
    static FAKES: RefCell<Fakes> = RefCell::new(Fakes::default());
}

fn with<R>(f: impl FnOnce(&mut Fakes) -> R) -> R {
    FAKES.with(|fakes| f(&mut fakes.borrow_mut()))
}

// ---- node config ----------------------------------------------------------------------------

/// Makes `config` (an object, or `null` for none) this thread's whole node config.
///
/// # Panics
///
/// If `config` is neither an object nor `null`.
pub fn set_config(config: Value) {
    let config = match config {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        other => panic!("a node config is a JSON object, not {other}"),
    };
    with(|fakes| {
        fakes.config = config
            .into_iter()
            .map(|(key, value)| (key, value.to_string()))
            .collect();
    });
}

/// Sets one key of this thread's node config.
pub fn set_config_key(key: &str, value: Value) {
    with(|fakes| fakes.config.insert(key.to_owned(), value.to_string()));
}

/// Sets one key of this thread's node config to `text` exactly as the host would send it, even
/// if it is not JSON (to test [`crate::config::try_get`]'s error).
pub fn set_config_text(key: &str, text: &str) {
    with(|fakes| fakes.config.insert(key.to_owned(), text.to_owned()));
}

// ---- logs -----------------------------------------------------------------------------------

/// The lines logged on this thread since the last [`new_instance`] (or [`run_node`],
/// [`run_masker`]), oldest first. Each is also printed to stderr, which `cargo test` shows for a
/// failing test.
pub fn logs() -> Vec<LogLine> {
    with(|fakes| fakes.logs.clone())
}

// ---- database -------------------------------------------------------------------------------

/// Answers `statement` on database `database` with `answer(params)` from now on, on this thread.
/// `answer` returns what [`crate::database::query`] returns (see [`query_result`]) or an
/// [`Error`] of any kind.
///
/// A statement with no answer is [`ErrorKind::Denied`], as the host's default-deny policy would
/// have it; so is every statement of a plugin run by [`run_node`] that does not ask for the
/// `database` capability.
pub fn answer_query(
    database: &str,
    statement: &str,
    answer: impl Fn(&Value) -> Result<Value, Error> + 'static,
) {
    with(|fakes| {
        fakes
            .answers
            .insert((database.to_owned(), statement.to_owned()), Rc::new(answer))
    });
}

/// Answers `statement` on `database` with `rows`, whatever the parameters.
pub fn answer_rows(database: &str, statement: &str, rows: Vec<Value>) {
    let result = query_result(rows);
    answer_query(database, statement, move |_| Ok(result.clone()));
}

/// Answers `statement` on `database` with an error of `kind`, whatever the parameters.
pub fn answer_error(database: &str, statement: &str, kind: ErrorKind, message: &str) {
    let error = Error {
        kind,
        message: message.to_owned(),
    };
    answer_query(database, statement, move |_| Err(error.clone()));
}

/// A [`crate::database::query`] result holding `rows`, as the host builds it:
/// `{"data": rows, "row_count": N, "database_type": "fake"}`.
pub fn query_result(rows: Vec<Value>) -> Value {
    json!({"row_count": rows.len(), "data": rows, "database_type": "fake"})
}

/// The statements run on this thread since the last [`new_instance`] (or [`run_node`]), in order,
/// answered or not.
pub fn queries() -> Vec<Query> {
    with(|fakes| fakes.queries.clone())
}

// ---- instances and runs ---------------------------------------------------------------------

/// Starts a new plugin instance on this thread, as the host does for every call: forgets the
/// values of [`crate::state`], the captured logs and the statements run. Config and database
/// answers stay.
pub fn new_instance() {
    crate::state::new_instance();
    with(|fakes| {
        fakes.logs.clear();
        fakes.queries.clear();
    });
}

/// Forgets everything this module set on this thread: a new instance, no config, no database
/// answers.
pub fn reset() {
    new_instance();
    with(|fakes| *fakes = Fakes::default());
}

/// Runs node plugin `N` on `records` with node config `config` (an object, or `null`), as the
/// host's call does: a new instance ([`new_instance`]), each record sent as JSON text through
/// [`Node::transform_json`] (so a [`crate::Record`] fast path is tested too), one result per
/// record back. The database answers `N` only if its [`Node::info`] asks for `database`.
///
/// # Panics
///
/// If `config` is not an object or `null`, or if `N` breaks the contract by returning a number of
/// results different from the number of records.
pub fn run_node<N: Node>(records: Vec<Value>, config: Value) -> Vec<Result<Value, String>> {
    set_config(config);
    new_instance();
    let capabilities = N::info().capabilities;
    with(|fakes| fakes.capabilities = Some(capabilities));
    let texts: Vec<String> = records.iter().map(Value::to_string).collect();
    let out = crate::__transform::<N>(texts);
    with(|fakes| fakes.capabilities = None);
    assert_eq!(
        out.len(),
        records.len(),
        "node plugin `{}` returned {} results for {} records",
        N::info().name,
        out.len(),
        records.len()
    );
    out.into_iter()
        .map(|result| {
            let text = result?;
            serde_json::from_str(&text)
                .map_err(|e| format!("the plugin returned a record that is not JSON: {e}"))
        })
        .collect()
}

/// A repeatable stream of numbers (xorshift64, from `seed`, which must not be 0), for tests that
/// generate their inputs: the same seed gives the same inputs on every run.
///
/// ```
/// let mut next = trellis_sdk::testing::numbers(7);
/// let first: Vec<usize> = (0..3).map(|_| next()).collect();
/// let mut again = trellis_sdk::testing::numbers(7);
/// assert_eq!(first, (0..3).map(|_| again()).collect::<Vec<_>>());
/// ```
pub fn numbers(seed: u64) -> impl FnMut() -> usize {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as usize
    }
}

/// Runs masking plugin `M` on `values` found at `field_path`, with the masking rule's `params`,
/// as the host's call does (a new instance, JSON text through the export). An `Err` is what the
/// host would redact.
///
/// # Panics
///
/// If `M` returns a number of results different from the number of values.
pub fn run_masker<M: Masker>(
    field_path: &str,
    values: Vec<Value>,
    params: Value,
) -> Vec<Result<Value, String>> {
    new_instance();
    let requests = values
        .iter()
        .map(|value| crate::__MaskRequest {
            field_path: field_path.to_owned(),
            value: value.to_string(),
            params: params.to_string(),
        })
        .collect();
    let out = crate::__mask::<M>(requests);
    assert_eq!(
        out.len(),
        values.len(),
        "masking plugin `{}` returned {} results for {} values",
        M::info().name,
        out.len(),
        values.len()
    );
    out.into_iter()
        .map(|result| {
            let text = result?;
            serde_json::from_str(&text)
                .map_err(|e| format!("the plugin returned a value that is not JSON: {e}"))
        })
        .collect()
}

/// The host imports, answered by the fakes (wired in by `crate::imports` off `wasm32`).
pub(crate) mod fakes {
    use super::{Query, with};
    use crate::database::{Error, ErrorKind};
    use crate::log::Level;

    pub(crate) fn log(level: Level, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
        with(|fakes| {
            fakes.logs.push(super::LogLine {
                level,
                message: message.to_owned(),
            })
        });
    }

    pub(crate) fn config_get(key: &str) -> Option<String> {
        with(|fakes| fakes.config.get(key).cloned())
    }

    pub(crate) fn database_query(
        name: &str,
        statement: &str,
        params: &str,
    ) -> Result<String, Error> {
        let params = serde_json::from_str(params).map_err(|e| Error {
            kind: ErrorKind::Query,
            message: format!("the parameters are not JSON: {e}"),
        })?;
        let (allowed, answer) = with(|fakes| {
            fakes.queries.push(Query {
                database: name.to_owned(),
                statement: statement.to_owned(),
                params: serde_json::Value::clone(&params),
            });
            let allowed = fakes
                .capabilities
                .as_ref()
                .is_none_or(|caps| caps.iter().any(|c| c == "database"));
            let answer = fakes
                .answers
                .get(&(name.to_owned(), statement.to_owned()))
                .cloned();
            (allowed, answer)
        });
        if !allowed {
            return Err(Error {
                kind: ErrorKind::Denied,
                message: "the plugin does not ask for the `database` capability".into(),
            });
        }
        // The answer runs with no borrow held, so it may log or read the config.
        match answer {
            Some(answer) => answer(&params).map(|result| result.to_string()),
            None => Err(Error {
                kind: ErrorKind::Denied,
                message: format!(
                    "testing: no answer for this statement on database `{name}` \
                     (set one with trellis_sdk::testing::answer_query)"
                ),
            }),
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::{Info, config, database};

    #[test]
    fn config_and_logs_of_this_thread() {
        set_config(json!({"a": 1, "b": "two"}));
        set_config_key("c", json!([3]));
        assert_eq!(config::get("a"), Some(json!(1)));
        assert_eq!(config::get("c"), Some(json!([3])));
        assert_eq!(config::get("nope"), None);
        std::thread::spawn(|| assert_eq!(config::get("a"), None))
            .join()
            .unwrap();
        crate::log::warn("careful");
        crate::log::log(Level::Debug, "details");
        assert_eq!(
            logs(),
            vec![
                LogLine {
                    level: Level::Warn,
                    message: "careful".into()
                },
                LogLine {
                    level: Level::Debug,
                    message: "details".into()
                },
            ]
        );
        reset();
        assert_eq!(config::get("a"), None);
        assert!(logs().is_empty());
    }

    #[test]
    fn fake_database_answers_rows_errors_and_closures() {
        answer_rows("main", "SELECT 1", vec![json!({"one": 1})]);
        answer_error("main", "DELETE FROM t", ErrorKind::Limit, "too many");
        answer_query("other", "SELECT :x", |params| {
            Ok(query_result(vec![json!({"x": params["x"]})]))
        });
        assert_eq!(
            database::query("main", "SELECT 1", &Value::Null),
            Ok(json!({"data": [{"one": 1}], "row_count": 1, "database_type": "fake"}))
        );
        assert_eq!(
            database::rows("other", "SELECT :x", &json!({"x": 5})),
            Ok(vec![json!({"x": 5})])
        );
        let error = database::query("main", "DELETE FROM t", &Value::Null).unwrap_err();
        assert_eq!(
            (error.kind, error.message.as_str()),
            (ErrorKind::Limit, "too many")
        );
        // Another database, or another statement, has no answer: denied.
        let error = database::query("other", "SELECT 1", &Value::Null).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Denied);
        assert!(error.message.contains("no answer"), "{}", error.message);
        assert_eq!(queries().len(), 4);
        assert_eq!(
            queries()[1],
            Query {
                database: "other".into(),
                statement: "SELECT :x".into(),
                params: json!({"x": 5}),
            }
        );
    }

    #[test]
    fn typed_rows_name_the_column_that_does_not_fit_but_not_its_value() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct Person {
            id: i64,
            ssn: u64,
        }
        answer_rows(
            "main",
            "SELECT id, ssn FROM people",
            vec![
                json!({"id": 1, "ssn": 123456789}),
                json!({"id": 2, "ssn": "987-65-4321"}),
            ],
        );
        let error =
            database::query_as::<Person>("main", "SELECT id, ssn FROM people", &Value::Null)
                .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Query);
        assert!(error.message.contains("data[1].ssn"), "{}", error.message);
        assert!(!error.message.contains("987"), "{}", error.message);
        answer_rows(
            "main",
            "SELECT 1 AS id, 2 AS ssn",
            vec![json!({"id": 1, "ssn": 2})],
        );
        let rows = database::query_as::<Person>("main", "SELECT 1 AS id, 2 AS ssn", &Value::Null);
        assert_eq!(
            rows,
            Ok(database::Rows {
                data: vec![Person { id: 1, ssn: 2 }],
                row_count: 1
            })
        );
    }

    struct NoCapability;

    impl Node for NoCapability {
        fn info() -> Info {
            Info::new("no-capability", "0.1.0")
        }

        fn transform(_record: Value) -> Result<Value, String> {
            database::query("main", "SELECT 1", &Value::Null).map_err(|e| format!("{:?}", e.kind))
        }
    }

    #[test]
    fn a_node_without_the_capability_is_denied() {
        answer_rows("main", "SELECT 1", vec![]);
        let out = run_node::<NoCapability>(vec![json!({})], Value::Null);
        assert_eq!(out, vec![Err("Denied".to_owned())]);
        // Called directly, outside run_node, nothing checks the capability.
        assert!(NoCapability::transform(json!({})).is_ok());
    }

    struct Broken;

    impl Node for Broken {
        fn info() -> Info {
            Info::new("broken", "0.1.0")
        }

        fn transform(record: Value) -> Result<Value, String> {
            Ok(record)
        }

        fn transform_batch(_records: Vec<Value>) -> Vec<Result<Value, String>> {
            Vec::new()
        }
    }

    #[test]
    #[should_panic(expected = "node plugin `broken` returned 0 results for 1 records")]
    fn run_node_checks_one_result_per_record() {
        run_node::<Broken>(vec![json!({})], Value::Null);
    }

    struct Upper;

    impl Masker for Upper {
        fn info() -> Info {
            Info::new("upper", "0.1.0")
        }

        fn mask(field_path: &str, value: Value, params: &Value) -> Result<Value, String> {
            let text = crate::json::as_str(&value, field_path)?;
            let suffix = params["suffix"].as_str().unwrap_or("");
            Ok(Value::String(text.to_uppercase() + suffix))
        }
    }

    #[test]
    fn run_masker_sends_path_value_and_params() {
        let out = run_masker::<Upper>(
            "user.name",
            vec![json!("ada"), json!(1)],
            json!({"suffix": "!"}),
        );
        assert_eq!(
            out,
            vec![
                Ok(json!("ADA!")),
                Err("`user.name` is 1, not a string".to_owned())
            ]
        );
    }
}
