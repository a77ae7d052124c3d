//! Masking of output fields: the Kailash mask formats (`redact`, `partial`, `hash`, `replace`)
//! exactly, plus `null`, `email`, `last4`, `first4`, `hmac`, `date_year` and `plugin:<name>`.
//!
//! Field paths are dotted with `[]` for every element of an array (`items[].ssn`); an array input
//! is treated as rows, each masked alike. The input is never mutated: masking works on a copy.
//! A mask that cannot be applied (an `email` mask on a non-address, a missing HMAC key, a failing
//! plugin) redacts the field: masking fails closed.

use std::sync::Arc;
use std::time::Instant;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::rules::{FieldPath, MaskType};
use crate::config::values::Secret;

/// What Kailash's `redact` writes.
pub const REDACTED: &str = "[REDACTED]";

/// A masking transform outside the host, e.g. a WebAssembly masking plugin.
///
/// The plugin runtime implements this for its registry. Every value of one field under one
/// rule goes in one call; a value's error, or the call's, makes the values redacted.
pub trait ExternalMasker: Send + Sync {
    /// Masks `values` of field `field` with plugin `plugin` and the rule's `params`, one result
    /// per value, in order; the call must end by `deadline` (the request's budget) when one is
    /// given.
    fn mask_batch(
        &self,
        plugin: &str,
        field: &str,
        params: &Value,
        values: &[Value],
        deadline: Option<Instant>,
    ) -> Result<Vec<Result<Value, String>>, String>;

    /// What is wrong with a rule's `params` for plugin `plugin`, by the schema the plugin
    /// declares (checked when the policies load); nothing when the plugin is not loaded (its
    /// masks then fail closed) or declares no schema.
    fn params_problems(&self, _plugin: &str, _params: &Value) -> Vec<String> {
        Vec::new()
    }
}

/// Applies mask types to values, with the key for `hmac` and the plugins for `plugin:<name>`.
#[derive(Clone, Default)]
pub struct Masker {
    hmac_key: Option<Secret>,
    external: Option<Arc<dyn ExternalMasker>>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("hmac_key", &self.hmac_key)
            .field("external", &self.external.is_some())
            .finish()
    }
}

/// The environment variable that holds the `hmac` mask key when the config does not.
pub const HMAC_KEY_ENV: &str = "TRELLIS_MASK_HMAC_KEY";

impl Masker {
    /// A masker with an `hmac` key (`None`: `hmac` masks redact).
    pub fn new(hmac_key: Option<Secret>) -> Masker {
        Masker {
            hmac_key,
            external: None,
        }
    }

    /// A masker whose `hmac` key comes from `HMAC_KEY_ENV` (`TRELLIS_HMAC_KEY`), if set.
    pub fn from_env() -> Masker {
        Masker::new(
            std::env::var(HMAC_KEY_ENV)
                .ok()
                .filter(|k| !k.is_empty())
                .map(Secret::new),
        )
    }

    /// Whether an `hmac` key is set (keyed `hash` masks need it too).
    pub fn has_key(&self) -> bool {
        self.hmac_key.is_some()
    }

    /// What is wrong with a `plugin:` mask's `params`, by the plugin's declared schema (see
    /// [`ExternalMasker::params_problems`]); nothing without plugins.
    pub fn params_problems(&self, plugin: &str, params: &Value) -> Vec<String> {
        self.external
            .as_ref()
            .map(|e| e.params_problems(plugin, params))
            .unwrap_or_default()
    }

    /// Whether `plugin:<name>` masks have somewhere to go.
    pub fn has_external(&self) -> bool {
        self.external.is_some()
    }

    /// Routes `plugin:<name>` masks to `external`.
    pub fn with_external(mut self, external: Arc<dyn ExternalMasker>) -> Masker {
        self.external = Some(external);
        self
    }

    /// The masked form of `value`, or an error saying why the mask cannot apply.
    pub fn apply(&self, mask: &MaskType, field: &str, value: &Value) -> Result<Value, String> {
        let s = || py_str(value);
        Ok(match mask {
            MaskType::Redact => Value::String(REDACTED.into()),
            MaskType::Partial => {
                let chars: Vec<char> = s().chars().collect();
                let n = chars.len();
                Value::String(if n <= 4 {
                    "*".repeat(n)
                } else {
                    chars[..2].iter().collect::<String>()
                        + &"*".repeat(n - 4)
                        + &chars[n - 2..].iter().collect::<String>()
                })
            }
            MaskType::Hash { unkeyed: true } => {
                Value::String(hex::encode(Sha256::digest(s().as_bytes()))[..16].to_owned())
            }
            MaskType::Hash { unkeyed: false } => {
                let key = self.hmac_key.as_ref().ok_or_else(|| {
                    format!("no key for `hash` masks: set `{HMAC_KEY_ENV}` or `[policy] hmac_key`")
                })?;
                let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                    .map_err(|e| e.to_string())?;
                mac.update(b"trellis-hash\0");
                mac.update(s().as_bytes());
                Value::String(hex::encode(mac.finalize().into_bytes())[..16].to_owned())
            }
            MaskType::Replace(v) => match v {
                Some(v) if !v.is_null() => v.clone(),
                _ => Value::String("[MASKED]".into()),
            },
            MaskType::Null => Value::Null,
            MaskType::Email => {
                let text = value.as_str().ok_or("`email` masks need a string")?;
                let (_, domain) = text
                    .rsplit_once('@')
                    .filter(|(u, d)| !u.is_empty() && !d.is_empty())
                    .ok_or("not an e-mail address")?;
                Value::String(format!("***@{domain}"))
            }
            MaskType::Last4 | MaskType::First4 => {
                let chars: Vec<char> = s().chars().collect();
                let n = chars.len();
                Value::String(if n <= 4 {
                    "*".repeat(n)
                } else if *mask == MaskType::Last4 {
                    "*".repeat(n - 4) + &chars[n - 4..].iter().collect::<String>()
                } else {
                    chars[..4].iter().collect::<String>() + &"*".repeat(n - 4)
                })
            }
            MaskType::Hmac => {
                let key = self
                    .hmac_key
                    .as_ref()
                    .ok_or_else(|| format!("no key for `hmac` masks: set `{HMAC_KEY_ENV}`"))?;
                let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                    .map_err(|e| e.to_string())?;
                mac.update(s().as_bytes());
                Value::String(hex::encode(mac.finalize().into_bytes())[..32].to_owned())
            }
            MaskType::DateYear => {
                let text = value
                    .as_str()
                    .ok_or("`date_year` masks need a date string")?;
                let year = text.get(..4).filter(|y| {
                    y.bytes().all(|b| b.is_ascii_digit())
                        && text.as_bytes().get(4).is_none_or(|b| *b == b'-')
                });
                Value::String(year.ok_or("not a date like `2024-05-01`")?.to_owned())
            }
            MaskType::Plugin { name, params } => {
                let external = self
                    .external
                    .as_ref()
                    .ok_or_else(|| format!("masking plugin `{name}` is not loaded"))?;
                external
                    .mask_batch(name, field, params, std::slice::from_ref(value), None)?
                    .pop()
                    .unwrap_or_else(|| Err("the plugin returned no result".into()))?
            }
        })
    }

    /// Masks `field` in a copy of `data`; returns the copy, how many values were masked, and
    /// the errors of masks that failed (those values were redacted).
    pub fn mask_field(
        &self,
        data: &Value,
        path: &FieldPath,
        mask: &MaskType,
    ) -> (Value, usize, Vec<String>) {
        let mut out = data.clone();
        let (count, errors) = self.mask_field_until(&mut out, path, mask, None);
        (out, count, errors)
    }

    /// [`Masker::mask_field`] in place (`out` itself is masked), within a budget: a `plugin:`
    /// mask masks every value of the field in one call that ends by `deadline`; once the
    /// deadline has passed, the values are redacted without a call.
    pub fn mask_field_until(
        &self,
        out: &mut Value,
        path: &FieldPath,
        mask: &MaskType,
        deadline: Option<Instant>,
    ) -> (usize, Vec<String>) {
        let mut targets = Vec::new();
        // Rows: every element, unless the path itself starts at the array (`[].x`).
        let rows =
            matches!(path.segments.first(), Some(first) if !(first.key.is_empty() && first.each));
        if rows && out.is_array() {
            for row in out.as_array_mut().into_iter().flatten() {
                collect(row, &path.segments, &mut targets);
            }
        } else {
            collect(out, &path.segments, &mut targets);
        }
        let count = targets.len();
        let mut errors = Vec::new();
        match mask {
            MaskType::Plugin { name, params } => {
                self.mask_batch((name, params), path, mask, targets, deadline, &mut errors)
            }
            _ => {
                for target in targets {
                    let result = self.apply(mask, &path.text, target);
                    *target = self.or_redact(result, path, mask, &mut errors);
                }
            }
        }
        (count, errors)
    }

    /// Masks `targets` with plugin `name` in one call; every value whose masking failed (all of
    /// them, when the call failed or the budget is spent) is redacted.
    fn mask_batch(
        &self,
        (name, params): (&str, &Value),
        path: &FieldPath,
        mask: &MaskType,
        targets: Vec<&mut Value>,
        deadline: Option<Instant>,
        errors: &mut Vec<String>,
    ) {
        if targets.is_empty() {
            return;
        }
        let values: Vec<Value> = targets.iter().map(|v| (**v).clone()).collect();
        let results = match (&self.external, deadline) {
            (_, Some(deadline)) if Instant::now() >= deadline => {
                Err("the request's time ran out before this mask ran".to_owned())
            }
            (None, _) => Err(format!("masking plugin `{name}` is not loaded")),
            (Some(external), _) => external.mask_batch(name, &path.text, params, &values, deadline),
        };
        match results {
            Ok(results) if results.len() == targets.len() => {
                for (target, result) in targets.into_iter().zip(results) {
                    *target = self.or_redact(result, path, mask, errors);
                }
            }
            other => {
                let reason = match other {
                    Err(e) => e,
                    Ok(r) => format!("{} results for {} values", r.len(), values.len()),
                };
                for target in targets {
                    *target = self.or_redact(Err(reason.clone()), path, mask, errors);
                }
            }
        }
    }

    /// The masked value, or (when masking failed) [`REDACTED`], with the failure logged and
    /// counted in `errors`.
    fn or_redact(
        &self,
        result: Result<Value, String>,
        path: &FieldPath,
        mask: &MaskType,
        errors: &mut Vec<String>,
    ) -> Value {
        match result {
            Ok(v) => v,
            Err(e) => {
                // The reason can quote the value (a plugin's text surely may): it goes only to
                // the log. Callers and the audit trail get the field and the mask.
                tracing::warn!(field = %path.text, %mask, sensitive = true, error = %e, "mask failed; value redacted");
                errors.push(format!(
                    "field `{}`: mask `{}` failed; redacted",
                    path.text, mask
                ));
                Value::String(REDACTED.into())
            }
        }
    }
}

/// The values `segments` names under `value`, each `[]` segment taking every element.
fn collect<'a>(
    value: &'a mut Value,
    segments: &[super::rules::FieldSegment],
    out: &mut Vec<&'a mut Value>,
) {
    let Some((seg, rest)) = segments.split_first() else {
        return;
    };
    let target = if seg.key.is_empty() {
        Some(value)
    } else {
        value.as_object_mut().and_then(|m| m.get_mut(&seg.key))
    };
    let Some(target) = target else { return };
    if seg.each {
        if let Value::Array(items) = target {
            for item in items {
                if rest.is_empty() {
                    out.push(item);
                } else {
                    collect(item, rest, out);
                }
            }
        }
    } else if rest.is_empty() {
        out.push(target);
    } else {
        collect(target, rest, out);
    }
}

/// Python's `str(value)` for JSON values.
pub fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                format!("{f:.1}")
            } else {
                format!("{f}")
            }
        }
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(mask: MaskType, v: Value) -> Value {
        Masker::new(Some(Secret::new("k")))
            .apply(&mask, "f", &v)
            .unwrap()
    }

    #[test]
    fn kailash_formats() {
        assert_eq!(m(MaskType::Redact, json!("x")), json!("[REDACTED]"));
        assert_eq!(
            m(MaskType::Partial, json!("123-45-6789")),
            json!("12*******89")
        );
        assert_eq!(m(MaskType::Partial, json!(85000)), json!("85*00"));
        assert_eq!(m(MaskType::Partial, json!("abcd")), json!("****"));
        // hashlib.sha256(b"123-45-6789").hexdigest()[:16]
        assert_eq!(
            m(MaskType::Hash { unkeyed: true }, json!("123-45-6789")),
            json!(hex::encode(Sha256::digest(b"123-45-6789"))[..16])
        );
        assert_eq!(
            m(MaskType::Hash { unkeyed: true }, json!(true)),
            json!(hex::encode(Sha256::digest(b"True"))[..16])
        );
        assert_eq!(m(MaskType::Replace(None), json!(1)), json!("[MASKED]"));
        assert_eq!(
            m(MaskType::Replace(Some(json!("n/a"))), json!(1)),
            json!("n/a")
        );
    }

    #[test]
    fn extra_formats() {
        assert_eq!(m(MaskType::Null, json!("x")), Value::Null);
        assert_eq!(
            m(MaskType::Email, json!("john.doe@acme.com")),
            json!("***@acme.com")
        );
        assert_eq!(
            m(MaskType::Last4, json!("4111111111111111")),
            json!("************1111")
        );
        assert_eq!(
            m(MaskType::First4, json!("4111111111111111")),
            json!("4111************")
        );
        assert_eq!(m(MaskType::DateYear, json!("1990-04-12")), json!("1990"));
        let a = m(MaskType::Hmac, json!("emp123"));
        assert_eq!(
            a,
            m(MaskType::Hmac, json!("emp123")),
            "joinable: same input, same pseudonym"
        );
        assert_ne!(
            a,
            Masker::new(Some(Secret::new("other")))
                .apply(&MaskType::Hmac, "f", &json!("emp123"))
                .unwrap()
        );
        assert_eq!(a.as_str().unwrap().len(), 32);
    }

    #[test]
    fn failing_masks_redact() {
        let masker = Masker::new(None);
        let (out, n, errors) = masker.mask_field(
            &json!({"e": "not-an-address", "h": "x"}),
            &FieldPath::parse("e").unwrap(),
            &MaskType::Email,
        );
        assert_eq!((out["e"].clone(), n, errors.len()), (json!(REDACTED), 1, 1));
        let (out, _, errors) = masker.mask_field(
            &json!({"h": "x"}),
            &FieldPath::parse("h").unwrap(),
            &MaskType::Hmac,
        );
        assert_eq!((out["h"].clone(), errors.len()), (json!(REDACTED), 1));
    }

    #[test]
    fn nested_and_array_paths_and_the_input_stays_as_it_was() {
        let data = json!({"items": [{"ssn": "111-22-3333"}, {"ssn": "444-55-6666"}, {"other": 1}], "a": {"b": "secret"}});
        let before = data.clone();
        let masker = Masker::default();
        let (out, n, _) = masker.mask_field(
            &data,
            &FieldPath::parse("items[].ssn").unwrap(),
            &MaskType::Redact,
        );
        assert_eq!(n, 2);
        assert_eq!(out["items"][1]["ssn"], json!(REDACTED));
        assert_eq!(out["items"][2], json!({"other": 1}));
        let (out, _, _) =
            masker.mask_field(&data, &FieldPath::parse("a.b").unwrap(), &MaskType::Partial);
        assert_eq!(out["a"]["b"], json!("se**et"));
        assert_eq!(data, before);
        let rows = json!([{"ssn": "1"}, {"ssn": "2"}]);
        let (out, n, _) =
            masker.mask_field(&rows, &FieldPath::parse("ssn").unwrap(), &MaskType::Null);
        assert_eq!((out, n), (json!([{"ssn": null}, {"ssn": null}]), 2));
    }

    struct Upper;
    impl ExternalMasker for Upper {
        fn mask_batch(
            &self,
            plugin: &str,
            _field: &str,
            _params: &Value,
            values: &[Value],
            _deadline: Option<Instant>,
        ) -> Result<Vec<Result<Value, String>>, String> {
            match plugin {
                "upper" => Ok(values
                    .iter()
                    .map(|v| Ok(json!(py_str(v).to_uppercase())))
                    .collect()),
                other => Err(format!("plugin `{other}` trapped")),
            }
        }
    }

    fn plugin_mask(name: &str) -> MaskType {
        MaskType::Plugin {
            name: name.into(),
            params: json!({}),
        }
    }

    #[test]
    fn plugin_masks_go_through_the_external_masker_and_fail_closed() {
        let masker = Masker::default().with_external(Arc::new(Upper));
        assert_eq!(
            masker
                .apply(&plugin_mask("upper"), "f", &json!("abc"))
                .unwrap(),
            json!("ABC")
        );
        let (out, _, errors) = masker.mask_field(
            &json!({"f": "abc"}),
            &FieldPath::parse("f").unwrap(),
            &plugin_mask("broken"),
        );
        assert_eq!((out["f"].clone(), errors.len()), (json!(REDACTED), 1));
        let (out, _, _) = Masker::default().mask_field(
            &json!({"f": "abc"}),
            &FieldPath::parse("f").unwrap(),
            &plugin_mask("upper"),
        );
        assert_eq!(out["f"], json!(REDACTED));
    }
}
