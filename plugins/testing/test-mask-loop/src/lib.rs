//! Test-only masking plugin `mask-loop`: `mask` never returns. The host must stop the one call
//! that masks a field's values at its deadline (or the request's), and redact every value.

use trellis_sdk::{Info, Masker, Value};

struct MaskLoop;

impl Masker for MaskLoop {
    fn info() -> Info {
        Info::new("mask-loop", env!("CARGO_PKG_VERSION"))
    }

    fn mask(_field_path: &str, _value: Value, _params: &Value) -> Result<Value, String> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

trellis_sdk::export_masker!(MaskLoop);
