//! `[plugins]` of trellis.toml: the memory cap and call deadline of every plugin, with overrides
//! by plugin name; checked when the file loads.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::values::{HumanDuration, Interpolated, ResolveError};

/// `[plugins]`: the memory cap and call deadline of every plugin, with overrides by plugin name
/// under `[plugins.limits.NAME]`.
#[derive(Debug, Clone, Default)]
pub struct PluginsConfig {
    /// The resolved limits.
    pub limits: crate::plugins::LimitsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPlugins {
    max_memory_bytes: Option<usize>,
    call_timeout: Option<Interpolated<HumanDuration>>,
    limits: Option<BTreeMap<String, toml::Spanned<RawPluginLimits>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginLimits {
    max_memory_bytes: Option<usize>,
    call_timeout: Option<Interpolated<HumanDuration>>,
}

/// The smallest memory cap a plugin may be given (a Rust component needs about 1 MiB to start).
const MIN_PLUGIN_MEMORY: usize = 2 * 1024 * 1024;
/// The largest memory cap a plugin may be given.
const MAX_PLUGIN_MEMORY: usize = 4 * 1024 * 1024 * 1024;

pub(crate) fn resolve(
    raw: Option<toml::Spanned<RawPlugins>>,
) -> Result<PluginsConfig, ResolveError> {
    use crate::plugins::{Limits, LimitsConfig};
    let (table_span, raw) = match raw {
        Some(spanned) => (spanned.span(), spanned.into_inner()),
        None => (0..0, RawPlugins::default()),
    };
    let check = |memory: Option<usize>,
                 timeout: Option<Interpolated<HumanDuration>>,
                 base: Limits|
     -> Result<Limits, String> {
        let memory_bytes = memory.unwrap_or(base.memory_bytes);
        if !(MIN_PLUGIN_MEMORY..=MAX_PLUGIN_MEMORY).contains(&memory_bytes) {
            return Err(format!(
                "`max_memory_bytes` must be between {MIN_PLUGIN_MEMORY} and {MAX_PLUGIN_MEMORY}, not {memory_bytes}"
            ));
        }
        let call_timeout = timeout.map_or(base.call_timeout, |t| t.0.0);
        if call_timeout.is_zero() {
            return Err("`call_timeout` must be more than zero".into());
        }
        Ok(Limits {
            memory_bytes,
            call_timeout,
        })
    };
    let default =
        check(raw.max_memory_bytes, raw.call_timeout, Limits::default()).map_err(|message| {
            ResolveError {
                span: table_span.clone(),
                key: "plugins".into(),
                message,
            }
        })?;
    let mut limits = LimitsConfig {
        default,
        by_name: BTreeMap::new(),
    };
    for (name, spanned) in raw.limits.unwrap_or_default() {
        let span = spanned.span();
        let one = spanned.into_inner();
        let resolved =
            check(one.max_memory_bytes, one.call_timeout, default).map_err(|message| {
                ResolveError {
                    span,
                    key: format!("plugins.limits.{name}"),
                    message,
                }
            })?;
        limits.by_name.insert(name, resolved);
    }
    Ok(PluginsConfig { limits })
}
