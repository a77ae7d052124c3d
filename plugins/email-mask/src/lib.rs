//! Example masking plugin `email-mask`: masks the local part of an e-mail address and keeps the
//! domain, e.g. `alice.smith@example.com` → `a***@example.com`.
//!
//! Params (the masking rule's `params`):
//! - `keep`: how many leading characters of the local part to keep (default 1; never all);
//! - `mask`: the text that replaces the rest (default `***`).
//!
//! A value that is not a string, or not an address (no `@`, or an empty local part or domain),
//! is an error, which makes the host redact it: nothing unmasked gets through.

use serde::Deserialize;
use trellis_sdk::{Info, Masker, Value, decode, json};

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
        let Params { keep, mask } =
            decode::from_value(params).map_err(|e| format!("params: {e}"))?;
        // Never keep the whole local part, however large `keep` is.
        let keep = keep.min(local.chars().count().saturating_sub(1));
        let kept: String = local.chars().take(keep).collect();
        Ok(Value::String(format!("{kept}{mask}@{domain}")))
    }
}

/// The masking rule's params; both optional.
#[derive(Deserialize)]
struct Params {
    #[serde(default = "default_keep")]
    keep: usize,
    #[serde(default = "default_mask")]
    mask: String,
}

fn default_keep() -> usize {
    1
}

fn default_mask() -> String {
    "***".into()
}

trellis_sdk::export_masker!(EmailMask);

#[cfg(test)]
mod tests {
    use trellis_sdk::testing;

    use super::*;

    #[test]
    fn keeps_the_domain_and_the_first_characters() {
        let mask = |value: &str, params: Value| {
            testing::run_masker::<EmailMask>("employees[].email", vec![json!(value)], params)
                .remove(0)
        };
        assert_eq!(
            mask("alice.smith@example.com", json!({})),
            Ok(json!("a***@example.com"))
        );
        assert_eq!(
            mask("bob@corp.example", json!({"keep": 2, "mask": "…"})),
            Ok(json!("bo…@corp.example"))
        );
        // Never the whole local part.
        assert_eq!(mask("x@y.org", json!({"keep": 5})), Ok(json!("***@y.org")));
        // The last `@` splits: a quoted local part may hold one.
        assert_eq!(
            mask("a@b@c.org", json!({"keep": 0})),
            Ok(json!("***@c.org"))
        );
    }

    #[test]
    fn fails_closed_on_what_is_not_an_address() {
        let out = testing::run_masker::<EmailMask>(
            "email",
            vec![
                json!("not-an-address"),
                json!("@example.com"),
                json!("me@"),
                json!(42),
                json!(null),
            ],
            json!({}),
        );
        assert_eq!(
            out,
            vec![
                Err("`email` is not an e-mail address".to_owned()),
                Err("`email` is not an e-mail address".to_owned()),
                Err("`email` is not an e-mail address".to_owned()),
                Err("`email` is not a string".to_owned()),
                Err("`email` is not a string".to_owned()),
            ]
        );
    }

    #[test]
    fn bad_params_fail_closed_and_name_the_param() {
        let out = testing::run_masker::<EmailMask>(
            "email",
            vec![json!("alice@example.com")],
            json!({"keep": "s3cr3t"}),
        );
        assert_eq!(
            out,
            vec![Err(
                "params: field `keep`: invalid type: string, expected usize".to_owned()
            )]
        );
    }
}
