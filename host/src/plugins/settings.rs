//! `[plugins]` of trellis.toml: the memory cap, call deadline and database limits of every
//! plugin, with overrides by plugin name; checked when the file loads.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::config::values::{HumanDuration, Interpolated, ResolveError};

/// `[plugins]`: the memory cap, call deadline and database limits (`max_rows` per statement,
/// `max_statements` per call) of every plugin, with overrides by plugin name under
/// `[plugins.limits.NAME]`.
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
    max_rows: Option<usize>,
    max_statements: Option<u32>,
    limits: Option<BTreeMap<String, toml::Spanned<RawPluginLimits>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPluginLimits {
    max_memory_bytes: Option<usize>,
    call_timeout: Option<Interpolated<HumanDuration>>,
    max_rows: Option<usize>,
    max_statements: Option<u32>,
}

/// What `[plugins]` and each `[plugins.limits.NAME]` may set.
struct RawLimits {
    memory: Option<usize>,
    timeout: Option<Interpolated<HumanDuration>>,
    max_rows: Option<usize>,
    max_statements: Option<u32>,
}

/// The smallest memory cap a plugin may be given (a Rust component needs about 1 MiB to start).
const MIN_PLUGIN_MEMORY: usize = 2 * 1024 * 1024;
/// The most rows `max_rows` may allow one statement to return to a plugin.
const MAX_ROWS: usize = 1_000_000;
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
    let check = |raw: RawLimits, base: Limits| -> Result<Limits, String> {
        let memory_bytes = raw.memory.unwrap_or(base.memory_bytes);
        if !(MIN_PLUGIN_MEMORY..=MAX_PLUGIN_MEMORY).contains(&memory_bytes) {
            return Err(format!(
                "`max_memory_bytes` must be between {MIN_PLUGIN_MEMORY} and {MAX_PLUGIN_MEMORY}, not {memory_bytes}"
            ));
        }
        let call_timeout = raw.timeout.map_or(base.call_timeout, |t| t.0.0);
        if call_timeout.is_zero() {
            return Err("`call_timeout` must be more than zero".into());
        }
        let max_rows = raw.max_rows.unwrap_or(base.max_rows);
        if !(1..=MAX_ROWS).contains(&max_rows) {
            return Err(format!(
                "`max_rows` must be between 1 and {MAX_ROWS}, not {max_rows}"
            ));
        }
        let max_statements = raw.max_statements.unwrap_or(base.max_statements);
        if max_statements == 0 {
            return Err("`max_statements` must be at least 1".into());
        }
        Ok(Limits {
            memory_bytes,
            call_timeout,
            max_rows,
            max_statements,
        })
    };
    let default = check(
        RawLimits {
            memory: raw.max_memory_bytes,
            timeout: raw.call_timeout,
            max_rows: raw.max_rows,
            max_statements: raw.max_statements,
        },
        Limits::default(),
    )
    .map_err(|message| ResolveError {
        span: table_span.clone(),
        key: "plugins".into(),
        message,
    })?;
    let mut limits = LimitsConfig {
        default,
        by_name: BTreeMap::new(),
    };
    for (name, spanned) in raw.limits.unwrap_or_default() {
        let span = spanned.span();
        let one = spanned.into_inner();
        let resolved = check(
            RawLimits {
                memory: one.max_memory_bytes,
                timeout: one.call_timeout,
                max_rows: one.max_rows,
                max_statements: one.max_statements,
            },
            default,
        )
        .map_err(|message| ResolveError {
            span,
            key: format!("plugins.limits.{name}"),
            message,
        })?;
        limits.by_name.insert(name, resolved);
    }
    Ok(PluginsConfig { limits })
}
