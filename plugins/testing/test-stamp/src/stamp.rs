use trellis_sdk::{Info, Node, Value, json};

struct Stamp;

impl Node for Stamp {
    fn info() -> Info {
        Info::new("stamp", env!("CARGO_PKG_VERSION"))
    }

    fn transform(mut record: Value) -> Result<Value, String> {
        record["served_by"] = json!(env!("CARGO_PKG_VERSION"));
        Ok(record)
    }
}

trellis_sdk::export_node!(Stamp);
