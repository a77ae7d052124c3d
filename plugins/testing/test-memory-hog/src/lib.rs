//! Test-only node plugin `memory-hog`: `transform` allocates 1 MiB blocks until the host's memory
//! cap stops it (unless the record says `{"hog": false}`).

use trellis_sdk::{Info, Node, Value};

struct MemoryHog;

impl Node for MemoryHog {
    fn info() -> Info {
        Info::new("memory-hog", env!("CARGO_PKG_VERSION"))
    }

    fn transform(record: Value) -> Result<Value, String> {
        if record.get("hog").and_then(Value::as_bool) == Some(false) {
            return Ok(record);
        }
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = vec![0u8; 1 << 20];
            // Touch every page, so the memory is really used.
            for page in block.chunks_mut(4096) {
                page[0] = blocks.len() as u8;
            }
            blocks.push(std::hint::black_box(block));
        }
    }
}

trellis_sdk::export_node!(MemoryHog);
