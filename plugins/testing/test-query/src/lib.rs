//! Test-only node plugin `query`: runs the statement its node config names through the
//! `database` import, once per batch, and answers each record with what came back. Config:
//! - `database`, `statement`, `params` (an object): what to run;
//! - `repeat`: how many times to run it (default 1; the last answer is kept);
//! - `on_error`: `fail` (default) fails every record with the error; `carry` adds it to each
//!   record as `db_error: {"kind", "message"}` and goes on;
//! - `rows_as`: `value` (default) reads each row as a `Value`; `one` reads it into a struct with
//!   one integer field `one` (`database::query_as::<One>`), the typed read a Rust plugin does
//!   (what the `plugin_database` benchmark runs, for `SELECT 1 AS one`).
//!
//! A record then carries `rows` (the statement's `data`) and `row_count`.

use trellis_sdk::database::{self, Rows};
use trellis_sdk::{Info, Node, Value, config, json};

struct Query;

/// A row of `SELECT 1 AS one`, read typed (`rows_as = "one"`).
#[derive(serde::Deserialize)]
struct One {
    one: i64,
}

/// Runs the statement `repeat` times (at least once), reading its rows as `rows_as` says;
/// stops at the first error. The last answer, its rows as `Value`s.
fn run(
    name: &str,
    statement: &str,
    params: &Value,
    repeat: u64,
    typed: bool,
) -> Result<Rows<Value>, database::Error> {
    if !typed {
        let mut answer = database::query_as::<Value>(name, statement, params)?;
        for _ in 1..repeat {
            answer = database::query_as::<Value>(name, statement, params)?;
        }
        return Ok(answer);
    }
    let mut answer = database::query_as::<One>(name, statement, params)?;
    for _ in 1..repeat {
        answer = database::query_as::<One>(name, statement, params)?;
    }
    Ok(Rows {
        data: answer
            .data
            .into_iter()
            .map(|row| json!({"one": row.one}))
            .collect(),
        row_count: answer.row_count,
    })
}

impl Node for Query {
    fn info() -> Info {
        Info::new("query", env!("CARGO_PKG_VERSION")).with_capability("database")
    }

    fn transform(record: Value) -> Result<Value, String> {
        Ok(record)
    }

    fn transform_batch(records: Vec<Value>) -> Vec<Result<Value, String>> {
        let name = config::get("database")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "main".into());
        let statement = config::get("statement")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let params = config::get("params").unwrap_or(Value::Null);
        let repeat = config::get("repeat").and_then(|v| v.as_u64()).unwrap_or(1);
        let carry = config::get("on_error").and_then(|v| v.as_str().map(str::to_owned))
            == Some("carry".into());
        let typed = config::get("rows_as").and_then(|v| v.as_str().map(str::to_owned))
            == Some("one".into());
        let answer = run(&name, &statement, &params, repeat, typed);
        records
            .into_iter()
            .map(|mut record| match &answer {
                Ok(result) => {
                    record["rows"] = Value::Array(result.data.clone());
                    record["row_count"] = result.row_count.into();
                    Ok(record)
                }
                Err(e) if carry => {
                    let kind = format!("{:?}", e.kind).to_lowercase();
                    record["db_error"] = json!({"kind": kind, "message": e.message});
                    Ok(record)
                }
                Err(e) => Err(format!("database: {e}")),
            })
            .collect()
    }
}

trellis_sdk::export_node!(Query);
