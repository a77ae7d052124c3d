//! Test-only node plugin `panic`: `transform` panics with a known message.

use trellis_sdk::{Info, Node, Value};

struct Panic;

impl Node for Panic {
    fn info() -> Info {
        Info::new("panic", env!("CARGO_PKG_VERSION"))
    }

    fn transform(record: Value) -> Result<Value, String> {
        panic!("deliberate panic on record {record}");
    }
}

trellis_sdk::export_node!(Panic);
