//! The `log` import: a plugin's log lines go into `tracing`, tagged `plugin = name@version`.
//!
//! Each call may write [`LOG_LINES_PER_CALL`] lines of at most [`LOG_MESSAGE_CAP`] bytes; the
//! rest is dropped, so a plugin cannot flood the host's logs.

use super::{CallState, LOG_LINES_PER_CALL, LOG_MESSAGE_CAP};
use crate::plugins::bindings::{v1, v2};

/// A log level of either interface version.
#[derive(Clone, Copy)]
enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl v1::trellis::plugin::log::Host for CallState {
    fn log(&mut self, level: v1::Level, message: String) {
        let level = match level {
            v1::Level::Trace => Level::Trace,
            v1::Level::Debug => Level::Debug,
            v1::Level::Info => Level::Info,
            v1::Level::Warn => Level::Warn,
            v1::Level::Error => Level::Error,
        };
        self.write_log(level, message);
    }
}

impl v2::trellis::plugin::log::Host for CallState {
    fn log(&mut self, level: v2::Level, message: String) {
        let level = match level {
            v2::Level::Trace => Level::Trace,
            v2::Level::Debug => Level::Debug,
            v2::Level::Info => Level::Info,
            v2::Level::Warn => Level::Warn,
            v2::Level::Error => Level::Error,
        };
        self.write_log(level, message);
    }
}

impl CallState {
    fn write_log(&mut self, level: Level, message: String) {
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
