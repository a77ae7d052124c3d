//! The host's imports (log, config, database) as the rest of the SDK calls them: on `wasm32` the
//! generated WIT bindings, nothing more; on any other target the fakes of [`crate::testing`], so
//! plugin code runs under a native `cargo test` instead of reaching wit-bindgen's
//! `unreachable!()` stubs.

use crate::database::Error;
use crate::log::Level;

#[cfg(target_arch = "wasm32")]
mod backend {
    use crate::bindings::trellis::plugin::{config, database, log};
    use crate::database::{Error, ErrorKind};
    use crate::log::Level;

    #[inline]
    pub(super) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }

    #[inline]
    pub(super) fn config_get(key: &str) -> Option<String> {
        config::get(key)
    }

    #[inline]
    pub(super) fn database_query(
        name: &str,
        statement: &str,
        params: &str,
    ) -> Result<String, Error> {
        database::query(name, statement, params).map_err(|e| Error {
            kind: match e.kind {
                database::ErrorKind::Denied => ErrorKind::Denied,
                database::ErrorKind::Query => ErrorKind::Query,
                database::ErrorKind::Timeout => ErrorKind::Timeout,
                database::ErrorKind::Limit => ErrorKind::Limit,
            },
            message: e.message,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fakes as backend;

/// Logs `message` at `level`.
#[inline]
pub(crate) fn log(level: Level, message: &str) {
    backend::log(level, message);
}

/// The node config's value at `key` as JSON text (as the host sent it), if set.
#[inline]
pub(crate) fn config_get(key: &str) -> Option<String> {
    backend::config_get(key)
}

/// Runs `statement` on database `name` with `params` (JSON text); the result as JSON text.
#[inline]
pub(crate) fn database_query(name: &str, statement: &str, params: &str) -> Result<String, Error> {
    backend::database_query(name, statement, params)
}
