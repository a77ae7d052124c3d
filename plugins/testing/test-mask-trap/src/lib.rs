//! Test-only masking plugin `mask-trap`: `mask` panics, quoting the value it was given, so the
//! host must redact every value and keep the panic's text away from callers and the audit trail.

use trellis_sdk::{Info, Masker, Value};

struct MaskTrap;

impl Masker for MaskTrap {
    fn info() -> Info {
        Info::new("mask-trap", env!("CARGO_PKG_VERSION"))
    }

    fn mask(field_path: &str, value: Value, _params: &Value) -> Result<Value, String> {
        panic!("deliberate panic while masking `{field_path}`: cannot mask value {value}");
    }
}

trellis_sdk::export_masker!(MaskTrap);
