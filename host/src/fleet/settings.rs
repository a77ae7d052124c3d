//! `[control]` of trellis.toml: how a host follows the fleet's control plane (`serve --control`):
//! the control database, this host's id, and how often it polls and writes its heartbeat;
//! checked when the file loads.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::database::{DatabaseConfig, Pooler};
use crate::config::values::{DatabaseKind, HumanDuration, Interpolated, ResolveError};

/// `[control]`.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The control database (a configured database's name, or a URL) a host follows when
    /// `serve` runs without `--control`; none by default (the host serves its directories).
    pub database: Option<String>,
    /// This host's id in the heartbeat table [default: the machine's name and the bound
    /// address, `name@127.0.0.1:8700`].
    pub host_id: Option<String>,
    /// How often a host asks for the active generation even without a notice: the backstop
    /// for notices lost while its LISTEN connection was down.
    pub poll_interval: Duration,
    /// How often a host writes its heartbeat row; a host silent for three intervals (and at
    /// least 5 s) is not live, and `publish --wait` does not wait for it.
    pub heartbeat_interval: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            database: None,
            host_id: None,
            poll_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    database: Option<Interpolated<String>>,
    host_id: Option<Interpolated<String>>,
    poll_interval: Option<Interpolated<HumanDuration>>,
    heartbeat_interval: Option<Interpolated<HumanDuration>>,
}

/// `[control]` with its defaults, checked against the configured databases.
pub(crate) fn resolve(
    raw: RawControl,
    databases: &BTreeMap<String, DatabaseConfig>,
) -> Result<ControlConfig, ResolveError> {
    let defaults = ControlConfig::default();
    let control = ControlConfig {
        database: raw.database.map(|d| d.0),
        host_id: raw.host_id.map(|h| h.0),
        poll_interval: raw.poll_interval.map_or(defaults.poll_interval, |d| d.0.0),
        heartbeat_interval: raw
            .heartbeat_interval
            .map_or(defaults.heartbeat_interval, |d| d.0.0),
    };
    let fail = |key: &str, message: String| ResolveError {
        span: 0..0,
        key: format!("control.{key}"),
        message,
    };
    for (key, value) in [
        ("poll_interval", control.poll_interval),
        ("heartbeat_interval", control.heartbeat_interval),
    ] {
        if value < Duration::from_millis(10) {
            return Err(fail(key, "must be at least 10ms".into()));
        }
    }
    if control.heartbeat_interval > Duration::from_secs(3600) {
        return Err(fail("heartbeat_interval", "must be at most 1h".into()));
    }
    if let Some(id) = &control.host_id
        && (id.is_empty() || id.len() > 200)
    {
        return Err(fail("host_id", "must be 1 to 200 characters".into()));
    }
    if let Some(name) = &control.database
        && !name.contains("://")
    {
        let Some(found) = databases.get(name) else {
            return Err(fail(
                "database",
                format!("`{name}` is not a configured database (give its name, or a URL)"),
            ));
        };
        if found.target.kind() != DatabaseKind::Postgres {
            return Err(fail(
                "database",
                format!("`{name}` is not PostgreSQL: the control plane is a PostgreSQL database"),
            ));
        }
        if found.pooler != Pooler::None {
            return Err(fail(
                "database",
                format!(
                    "`{name}` is behind a transaction-mode pooler: a host LISTENs for the \
                     control plane's notices, which needs a direct connection; name a database \
                     reached directly"
                ),
            ));
        }
    }
    Ok(control)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("trellis.toml")).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn defaults_and_a_direct_postgres_database() {
        let c = parse(
            "[databases.control]\nurl = \"postgres://u@h/c\"\n\
             [control]\ndatabase = \"control\"\nheartbeat_interval = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.control.database.as_deref(), Some("control"));
        assert_eq!(c.control.heartbeat_interval.as_millis(), 250);
        assert_eq!(c.control.poll_interval.as_secs(), 10);
    }

    #[test]
    fn the_control_database_must_be_reached_directly() {
        for (text, says) in [
            (
                "[databases.c]\nurl = \"postgres://u@h:6432/c\"\npooler = \"transaction\"\n\
                 [control]\ndatabase = \"c\"\n",
                "transaction-mode pooler",
            ),
            (
                "[databases.c]\nurl = \"sqlite://c.db\"\n[control]\ndatabase = \"c\"\n",
                "not PostgreSQL",
            ),
            (
                "[control]\ndatabase = \"nope\"\n",
                "not a configured database",
            ),
            ("[control]\npoll_interval = \"1ms\"\n", "at least 10ms"),
            ("[control]\npoll = \"1s\"\n", "poll"),
        ] {
            let error = parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
