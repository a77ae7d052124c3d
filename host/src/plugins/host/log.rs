//! The `log` import: a plugin's log lines go into `tracing`, tagged `plugin = name@version`.
//!
//! Each call may write [`LOG_LINES_PER_CALL`] lines of at most [`LOG_MESSAGE_CAP`] bytes; the
//! rest is dropped, so a plugin cannot flood the host's logs.

use super::{CallState, LOG_LINES_PER_CALL, LOG_MESSAGE_CAP};
use crate::plugins::bindings::Level;
use crate::plugins::bindings::trellis::plugin::log::Host;

impl Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let mut message = message;
        if message.len() > LOG_MESSAGE_CAP {
            let mut end = LOG_MESSAGE_CAP;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str(" …(truncated)");
        }
        let plugin = &*self.label;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        if self.log_budget == 0 {
            tracing::warn!(
                plugin,
                limit = LOG_LINES_PER_CALL,
                "plugin reached its log limit for this call; further lines are dropped"
            );
        }
    }
}
