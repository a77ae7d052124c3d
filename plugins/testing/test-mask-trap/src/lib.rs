//! Test-only masking plugin `mask-trap`: `mask` panics, so the host must redact every value.

use trellis_sdk::{Info, Masker, Value};

struct MaskTrap;

impl Masker for MaskTrap {
    fn info() -> Info {
        Info::new("mask-trap", env!("CARGO_PKG_VERSION"))
    }

    fn mask(field_path: &str, _value: Value, _params: &Value) -> Result<Value, String> {
        panic!("deliberate panic while masking `{field_path}`");
    }
}

trellis_sdk::export_masker!(MaskTrap);
