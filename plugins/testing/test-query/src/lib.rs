//! Test-only node plugin `query`: runs the statement its node config names through the
//! `database` import, once per batch, and answers each record with what came back. Config:
//! - `database`, `statement`, `params` (an object): what to run;
//! - `repeat`: how many times to run it (default 1; the last answer is kept);
//! - `on_error`: `fail` (default) fails every record with the error; `carry` adds it to each
//!   record as `db_error: {"kind", "message"}` and goes on.
//!
//! A record then carries `rows` (the statement's `data`) and `row_count`.

use trellis_sdk::database::{self, ErrorKind};
use trellis_sdk::{Info, Node, Value, config, json};

struct Query;

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
        let mut answer = Err(database::Error {
            kind: ErrorKind::Query,
            message: "not run".into(),
        });
        for _ in 0..repeat.max(1) {
            answer = database::query_as::<Value>(&name, &statement, &params);
            if answer.is_err() {
                break;
            }
        }
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
