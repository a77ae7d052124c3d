//! Masking plugins as the policy engine's `plugin:<name>` mask type: looks the plugin up in the
//! registry on every call (so a hot-swapped plugin is used at once), or in the set a run pinned
//! ([`RegistryMasker::pinned`]), masks a field's values in one call within the request's budget, and fails
//! closed.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{MaskInput, Plugin, PluginKind, PluginRegistry, PluginSet, PluginSource};
use crate::policy::ExternalMasker;

/// [`ExternalMasker`] over the plugin registry (the serving version at each call), or over the
/// plugins a run pinned.
pub struct RegistryMasker {
    plugins: PluginSource,
}

impl RegistryMasker {
    /// Masks with the plugins in `registry`.
    pub fn new(registry: Arc<PluginRegistry>) -> RegistryMasker {
        RegistryMasker {
            plugins: PluginSource::Registry(registry),
        }
    }

    /// Masks with the plugins of `set` only.
    pub fn pinned(set: Arc<PluginSet>) -> RegistryMasker {
        RegistryMasker {
            plugins: PluginSource::Pinned(set),
        }
    }

    fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.get(name)
    }
}

impl ExternalMasker for RegistryMasker {
    fn mask_batch(
        &self,
        plugin: &str,
        field: &str,
        params: &Value,
        values: &[Value],
        deadline: Option<Instant>,
    ) -> Result<Vec<Result<Value, String>>, String> {
        let p = self
            .get(plugin)
            .ok_or_else(|| format!("masking plugin `{plugin}` is not loaded"))?;
        if p.kind() != PluginKind::Masking {
            return Err(format!("plugin `{}` is not a masking plugin", p.label()));
        }
        let inputs: Vec<MaskInput> = values
            .iter()
            .map(|value| MaskInput {
                field_path: field.to_owned(),
                value: value.clone(),
                params: params.clone(),
            })
            .collect();
        p.mask_until(&inputs, deadline).map_err(|e| e.to_string())
    }

    fn params_problems(&self, plugin: &str, params: &Value) -> Vec<String> {
        match (self.get(plugin), params) {
            (Some(p), Value::Object(params)) if p.kind() == PluginKind::Masking => {
                p.config_problems(params, &[])
            }
            _ => Vec::new(),
        }
    }
}
