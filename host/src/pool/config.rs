//! A pool's settings: defaults, the `[databases.NAME]` table of `trellis.toml`, and the
//! Kailash JSON form (`database_type`, `host`, …, `min_connections`, …).

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::database::{DatabaseConfig, DatabaseTarget, Pooler, parse_database_url};
use crate::config::values::{DatabaseKind, Secret};

/// Settings of one [`Pool`](super::Pool).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The pool's name, used in errors, stats and metrics.
    pub name: String,
    /// The database.
    pub target: DatabaseTarget,
    /// Connections kept open even when idle (default 2).
    pub min_connections: usize,
    /// Connections never exceeded (default 10).
    pub max_connections: usize,
    /// Health score below which a connection is recycled (default 50).
    pub health_threshold: i64,
    /// Pre-warm for workloads seen before (default on).
    pub pre_warm: bool,
    /// Longest wait in `acquire` (default 30 s).
    pub acquire_timeout: Duration,
    /// Longest a statement may run; `None` for no limit (the default).
    pub command_timeout: Option<Duration>,
    /// How often idle connections are checked (default 30 s).
    pub health_check_interval: Duration,
    /// Age after which a connection is recycled, ±10% jitter (default 30 min).
    pub max_lifetime: Duration,
    /// Idle time after which connections above the minimum are closed (default 10 min).
    pub idle_timeout: Duration,
    /// Longest a lease may be held before it is reclaimed (default 5 min).
    pub lease_timeout: Duration,
    /// Longest one connection attempt may take (default 10 s).
    pub connect_timeout: Duration,
    /// PostgreSQL: the `search_path` every connection starts with (`RESET ALL` on release keeps
    /// it, as it is a connect-time setting).
    pub search_path: Option<String>,
    /// What sits between the pool and the server: behind a transaction-mode pooler no state is
    /// kept in a server session (see [`Pooler::Transaction`]).
    pub pooler: Pooler,
}

/// Invalid pool settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// A setting is out of range.
    #[error("pool `{pool}`: `{key}` {problem}")]
    Invalid {
        /// The pool.
        pool: String,
        /// The setting.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The JSON form is missing something or has a wrong type.
    #[error("pool config: {0}")]
    Json(String),
}

impl PoolConfig {
    /// Whether the target is an in-memory SQLite database (its one connection is the database).
    pub(crate) fn in_memory(&self) -> bool {
        matches!(self.target, DatabaseTarget::Sqlite { path: None })
    }

    /// Defaults for a pool called `name` on `target`.
    pub fn new(name: impl Into<String>, target: DatabaseTarget) -> PoolConfig {
        let mut config = PoolConfig {
            name: name.into(),
            target,
            min_connections: 2,
            max_connections: 10,
            health_threshold: 50,
            pre_warm: true,
            acquire_timeout: Duration::from_secs(30),
            command_timeout: None,
            health_check_interval: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(10 * 60),
            lease_timeout: Duration::from_secs(5 * 60),
            connect_timeout: Duration::from_secs(10),
            search_path: None,
            pooler: Pooler::None,
        };
        if config.in_memory() {
            // Every in-memory SQLite connection is its own database: keep exactly one.
            config.min_connections = 1;
            config.max_connections = 1;
        }
        config
    }

    /// The settings of `[databases.NAME]` in `trellis.toml`.
    pub fn from_database(db: &DatabaseConfig) -> Result<PoolConfig, PoolConfigError> {
        let mut c = PoolConfig::new(db.name.clone(), db.target.clone());
        c.search_path = db.search_path.clone();
        c.pooler = db.pooler;
        let p = &db.pool;
        if let Some(v) = p.min_connections {
            c.min_connections = v;
        }
        if let Some(v) = p.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = p.health_threshold {
            c.health_threshold = v;
        }
        if let Some(v) = p.pre_warm {
            c.pre_warm = v;
        }
        if let Some(v) = p.acquire_timeout {
            c.acquire_timeout = v;
        }
        if p.command_timeout.is_some() {
            c.command_timeout = p.command_timeout;
        }
        if let Some(v) = p.health_check_interval {
            c.health_check_interval = v;
        }
        if let Some(v) = p.max_lifetime {
            c.max_lifetime = v;
        }
        if let Some(v) = p.idle_timeout {
            c.idle_timeout = v;
        }
        if let Some(v) = p.lease_timeout {
            c.lease_timeout = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// The Kailash JSON form: `name`; `connection_string` (or `url`), or `database_type` with
    /// `host`, `port`, `database`, `user`, `password` (or `path` for SQLite); and the pool
    /// settings, durations in seconds.
    pub fn from_json(v: &Value) -> Result<PoolConfig, PoolConfigError> {
        let obj = v
            .as_object()
            .ok_or_else(|| PoolConfigError::Json("expected a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("pool")
            .to_owned();
        let mut c = PoolConfig::new(name, json_target(obj)?);
        c.set_from_json(obj)?;
        c.validate()?;
        Ok(c)
    }

    /// Overrides the pool settings the JSON form gives (counts, `health_threshold`, `pre_warm`,
    /// durations).
    fn set_from_json(&mut self, obj: &Map<String, Value>) -> Result<(), PoolConfigError> {
        let count = |key: &str| json_count(obj, key);
        let seconds = |key: &str| json_seconds(obj, key);
        if let Some(v) = count("min_connections")? {
            self.min_connections = v;
        }
        if let Some(v) = count("max_connections")? {
            self.max_connections = v;
        }
        if let Some(v) = obj.get("health_threshold") {
            self.health_threshold = v
                .as_i64()
                .ok_or_else(|| PoolConfigError::Json("`health_threshold` must be 0..100".into()))?;
        }
        if let Some(v) = obj.get("pre_warm") {
            self.pre_warm = v
                .as_bool()
                .ok_or_else(|| PoolConfigError::Json("`pre_warm` must be true or false".into()))?;
        }
        if let Some(v) = seconds("acquire_timeout")? {
            self.acquire_timeout = v;
        }
        if let Some(v) = seconds("command_timeout")? {
            self.command_timeout = Some(v);
        }
        if let Some(v) = seconds("health_check_interval")? {
            self.health_check_interval = v;
        }
        if let Some(v) = seconds("max_lifetime")? {
            self.max_lifetime = v;
        }
        if let Some(v) = seconds("idle_timeout")? {
            self.idle_timeout = v;
        }
        if let Some(v) = seconds("lease_timeout")? {
            self.lease_timeout = v;
        }
        Ok(())
    }

    /// Checks ranges and relations between settings.
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        let bad = |key: &'static str, problem: String| {
            Err(PoolConfigError::Invalid {
                pool: self.name.clone(),
                key,
                problem,
            })
        };
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.min_connections > self.max_connections {
            return bad(
                "min_connections",
                format!(
                    "({}) must not exceed `max_connections` ({})",
                    self.min_connections, self.max_connections
                ),
            );
        }
        if matches!(self.target, DatabaseTarget::Sqlite { path: None }) && self.max_connections > 1
        {
            return bad(
                "max_connections",
                "must be 1 for an in-memory SQLite database (each connection would be its own database)".into(),
            );
        }
        if !(0..=100).contains(&self.health_threshold) {
            return bad(
                "health_threshold",
                format!("({}) must be within 0..=100", self.health_threshold),
            );
        }
        for (key, value) in [
            ("acquire_timeout", self.acquire_timeout),
            ("health_check_interval", self.health_check_interval),
            ("max_lifetime", self.max_lifetime),
            ("idle_timeout", self.idle_timeout),
            ("lease_timeout", self.lease_timeout),
        ] {
            if value.is_zero() {
                return bad(key, "must be longer than zero".into());
            }
        }
        Ok(())
    }

    /// `max_lifetime` ±10%, so connections opened together are not recycled together.
    pub(crate) fn jittered_lifetime(&self) -> Duration {
        let factor = 0.9 + fastrand::f64() * 0.2;
        self.max_lifetime.mul_f64(factor)
    }
}

/// The database of the JSON form: `connection_string` (or `url`), or `database_type` with its
/// connection fields.
fn json_target(obj: &Map<String, Value>) -> Result<DatabaseTarget, PoolConfigError> {
    let str_of = |key: &str| obj.get(key).and_then(Value::as_str);
    if let Some(url) = str_of("connection_string").or_else(|| str_of("url")) {
        return parse_database_url(url).map_err(PoolConfigError::Json);
    }
    let kind = match str_of("database_type").or_else(|| str_of("type")) {
        Some("postgresql" | "postgres") => DatabaseKind::Postgres,
        Some("mysql" | "mariadb") => DatabaseKind::Mysql,
        Some("sqlite") => DatabaseKind::Sqlite,
        Some(other) => {
            return Err(PoolConfigError::Json(format!(
                "unknown `database_type` `{other}`: use `postgresql`, `mysql` or `sqlite`"
            )));
        }
        None => {
            return Err(PoolConfigError::Json(
                "give `connection_string`, or `database_type` with `host`, `database`, `user`"
                    .into(),
            ));
        }
    };
    Ok(match kind {
        DatabaseKind::Sqlite => DatabaseTarget::Sqlite {
            path: str_of("path")
                .or_else(|| str_of("database"))
                .filter(|p| *p != ":memory:")
                .map(Into::into),
        },
        _ => DatabaseTarget::Server {
            kind,
            tls: crate::tls::Tls::default_for(str_of("host").unwrap_or("127.0.0.1")),
            host: str_of("host").unwrap_or("127.0.0.1").to_owned(),
            port: match obj.get("port") {
                None => {
                    if kind == DatabaseKind::Postgres {
                        5432
                    } else {
                        3306
                    }
                }
                Some(p) => p
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| PoolConfigError::Json("`port` must be a port number".into()))?,
            },
            database: str_of("database")
                .ok_or_else(|| PoolConfigError::Json("missing `database`".into()))?
                .to_owned(),
            user: str_of("user")
                .ok_or_else(|| PoolConfigError::Json("missing `user`".into()))?
                .to_owned(),
            password: str_of("password").map(Secret::new),
        },
    })
}

/// The whole number under `key` of the JSON form, if given.
fn json_count(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>, PoolConfigError> {
    obj.get(key)
        .map(|v| {
            v.as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| PoolConfigError::Json(format!("`{key}` must be a whole number")))
        })
        .transpose()
}

/// The duration under `key` of the JSON form (seconds, or a string like `30s`), if given.
fn json_seconds(obj: &Map<String, Value>, key: &str) -> Result<Option<Duration>, PoolConfigError> {
    obj.get(key)
        .map(|v| match v {
            Value::Number(n) => n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| PoolConfigError::Json(format!("`{key}` must be seconds ≥ 0"))),
            Value::String(s) => humantime::parse_duration(s).map_err(|e| {
                PoolConfigError::Json(format!("`{key}`: `{s}` is not a duration: {e}"))
            }),
            _ => Err(PoolConfigError::Json(format!(
                "`{key}` must be a number of seconds"
            ))),
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kailash_json_form() {
        let c = PoolConfig::from_json(&json!({
            "name": "main_pool", "database_type": "postgresql", "host": "localhost", "port": 5432,
            "database": "production_db", "user": "app_user", "password": "secure_password",
            "min_connections": 3, "max_connections": 50, "health_threshold": 70, "pre_warm": true,
            "acquire_timeout": 1.5, "lease_timeout": "2m"
        }))
        .unwrap();
        assert_eq!(c.name, "main_pool");
        assert_eq!(
            (c.min_connections, c.max_connections, c.health_threshold),
            (3, 50, 70)
        );
        assert_eq!(c.acquire_timeout, Duration::from_millis(1500));
        assert_eq!(c.lease_timeout, Duration::from_secs(120));
        assert_eq!(
            c.target.to_string(),
            "postgresql://app_user@localhost:5432/production_db"
        );
        assert!(!format!("{c:?}").contains("secure_password"));
    }

    #[test]
    fn invalid_settings_are_named() {
        let err = PoolConfig::from_json(
            &json!({"connection_string": "sqlite::memory:", "min_connections": 3}),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("`min_connections` (3) must not exceed"),
            "{err}"
        );
        let err = PoolConfig::from_json(&json!({"database_type": "oracle"})).unwrap_err();
        assert!(
            err.to_string().contains("unknown `database_type` `oracle`"),
            "{err}"
        );
        let err = PoolConfig::from_json(
            &json!({"connection_string": "sqlite:x.db", "health_threshold": 101}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("health_threshold"), "{err}");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let c = PoolConfig::new("p", DatabaseTarget::Sqlite { path: None });
        for _ in 0..1000 {
            let l = c.jittered_lifetime();
            assert!(l >= c.max_lifetime.mul_f64(0.9) && l <= c.max_lifetime.mul_f64(1.1));
        }
    }
}
