//! The `config` import: read-only lookups in the config the host passed for this call.

use super::CallState;
use crate::plugins::bindings::trellis::plugin::config::Host;

impl Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).map(|value| value.to_string())
    }
}
