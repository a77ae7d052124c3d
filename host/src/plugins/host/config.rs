//! The `config` import: read-only lookups in the config the host passed for this call.

use super::CallState;
use crate::plugins::bindings::{v1, v2};

impl v1::trellis::plugin::config::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).map(crate::json::to_string)
    }
}

impl v2::trellis::plugin::config::Host for CallState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).map(crate::json::to_string)
    }
}
