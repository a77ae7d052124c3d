//! Test-only node plugin `infinite-loop`: `transform` never returns. The host's deadline must stop
//! it, and the next call must work.

use trellis_sdk::{Info, Node, Value};

struct InfiniteLoop;

impl Node for InfiniteLoop {
    fn info() -> Info {
        Info::new("infinite-loop", env!("CARGO_PKG_VERSION"))
    }

    fn transform(record: Value) -> Result<Value, String> {
        if record.get("spin").and_then(Value::as_bool) == Some(false) {
            return Ok(record);
        }
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

trellis_sdk::export_node!(InfiniteLoop);
