//! Example masking plugin `email-mask`: masks the local part of an e-mail address and keeps the
//! domain, e.g. `alice.smith@example.com` → `a***@example.com`.
//!
//! Params (the masking rule's `params`):
//! - `keep`: how many leading characters of the local part to keep (default 1; never all);
//! - `mask`: the text that replaces the rest (default `***`).
//!
//! A value that is not a string, or not an address (no `@`, or an empty local part or domain),
//! is an error, which makes the host redact it: nothing unmasked gets through.

use trellis_sdk::{Info, Masker, Value, json};

struct EmailMask;

impl Masker for EmailMask {
    fn info() -> Info {
        // The params a masking rule may give; the host refuses a rule with others at load.
        Info::new("email-mask", env!("CARGO_PKG_VERSION")).with_config_schema(json!({
            "type": "object",
            "properties": {
                "keep": {"type": "integer", "minimum": 0},
                "mask": {"type": "string"}
            }
        }))
    }

    fn mask(field_path: &str, value: Value, params: &Value) -> Result<Value, String> {
        let Value::String(address) = value else {
            return Err(format!("`{field_path}` is not a string"));
        };
        let (local, domain) = address
            .rsplit_once('@')
            .filter(|(local, domain)| !local.is_empty() && !domain.is_empty())
            .ok_or_else(|| format!("`{field_path}` is not an e-mail address"))?;
        let keep = params.get("keep").and_then(Value::as_u64).unwrap_or(1) as usize;
        let mask = params.get("mask").and_then(Value::as_str).unwrap_or("***");
        // Never keep the whole local part, however large `keep` is.
        let keep = keep.min(local.chars().count().saturating_sub(1));
        let kept: String = local.chars().take(keep).collect();
        Ok(Value::String(format!("{kept}{mask}@{domain}")))
    }
}

trellis_sdk::export_masker!(EmailMask);
