//! `[databases.NAME]`: where each database is, how to log in, its pool settings, and whether
//! it is per tenant; database URLs and their TLS parameters.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::values::{
    DatabaseKind, FromConfigStr, HumanDuration, Interpolated, ResolveError, Secret,
    TENANT_PLACEHOLDER, relative_to,
};
use crate::tls::{SslMode, TlsSpec};

/// `[databases.NAME]`: one database the host may connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseConfig {
    /// The name it is known by in workflows, the CLI and metrics.
    pub name: String,
    /// Where it is and how to log in.
    pub target: DatabaseTarget,
    /// Pool settings given in the file (unset ones take the pool's defaults); for a database
    /// per tenant they hold for each tenant's pool.
    pub pool: PoolSettings,
    /// PostgreSQL's `search_path` for every connection (`search_path`), set when it connects.
    pub search_path: Option<String>,
    /// Set when the database is per tenant: its `url` (or `database`, `user`, `path`,
    /// `search_path`) names `${tenant}`, and each tenant gets its own pool (see
    /// `database::tenants`).
    pub tenancy: Option<Tenancy>,
    /// What sits between the host and the server (`pooler`).
    pub pooler: Pooler,
}

/// What sits between the host and a PostgreSQL server (`pooler` in `[databases.NAME]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: each connection of the host is one server
    /// session for as long as it is open (`"none"`, the default).
    #[default]
    None,
    /// A pooler in transaction mode, such as PgBouncer with `pool_mode = transaction`: each
    /// transaction may run in another server session. The host then keeps no state in a
    /// session: every statement runs in a transaction of its own (or the caller's), with
    /// unnamed prepared statements and its time limit as `SET LOCAL statement_timeout`;
    /// statements that would leave session state (`SET`, `LISTEN`, `PREPARE`, session advisory
    /// locks, …) are refused; migrations lock with a transaction-scoped advisory lock.
    Transaction,
}

/// How a database per tenant is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenancy {
    /// At most this many tenants have a pool at once (`max_tenants`, default 64): it bounds the
    /// connections the host opens and the `tenant` label's values in the metrics.
    pub max_tenants: usize,
}

/// `max_tenants` when a database per tenant does not say.
pub(crate) const DEFAULT_MAX_TENANTS: usize = 64;

impl DatabaseConfig {
    /// A database with default pool settings.
    pub fn new(name: impl Into<String>, target: DatabaseTarget) -> DatabaseConfig {
        DatabaseConfig {
            name: name.into(),
            target,
            pool: PoolSettings::default(),
            search_path: None,
            tenancy: None,
            pooler: Pooler::None,
        }
    }
}

/// The pool settings of `[databases.NAME]`; see `pool::PoolConfig` for meanings and defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSettings {
    /// `min_connections`.
    pub min_connections: Option<usize>,
    /// `max_connections`.
    pub max_connections: Option<usize>,
    /// `health_threshold`.
    pub health_threshold: Option<i64>,
    /// `pre_warm`.
    pub pre_warm: Option<bool>,
    /// `acquire_timeout`.
    pub acquire_timeout: Option<Duration>,
    /// `command_timeout`.
    pub command_timeout: Option<Duration>,
    /// `health_check_interval`.
    pub health_check_interval: Option<Duration>,
    /// `max_lifetime`.
    pub max_lifetime: Option<Duration>,
    /// `idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// `lease_timeout`.
    pub lease_timeout: Option<Duration>,
}
/// Where a database is. Debug and Display never show the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum DatabaseTarget {
    /// A SQLite file (created when missing) or `:memory:`.
    Sqlite {
        /// The file; `None` for an in-memory database.
        path: Option<PathBuf>,
    },
    /// A PostgreSQL or MySQL/MariaDB server.
    Server {
        /// Which server protocol.
        kind: DatabaseKind,
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
        /// Database (schema) name.
        database: String,
        /// User to log in as.
        user: String,
        /// Password, if any.
        password: Option<Secret>,
        /// What the connection demands of TLS.
        tls: crate::tls::Tls,
    },
}

impl DatabaseTarget {
    /// The database kind.
    pub fn kind(&self) -> DatabaseKind {
        match self {
            DatabaseTarget::Sqlite { .. } => DatabaseKind::Sqlite,
            DatabaseTarget::Server { kind, .. } => *kind,
        }
    }
}

/// `host:port/db` or the SQLite path: what errors, logs and metrics may show.
impl fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Sqlite { path: Some(path) } => write!(f, "sqlite:{}", path.display()),
            DatabaseTarget::Sqlite { path: None } => f.write_str("sqlite::memory:"),
            DatabaseTarget::Server {
                kind,
                host,
                port,
                database,
                user,
                ..
            } => write!(f, "{kind}://{user}@{host}:{port}/{database}"),
        }
    }
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.target)
    }
}
/// `[databases.NAME]` as written: either `url`, or `type` with discrete fields.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDatabase {
    url: Option<Interpolated<DatabaseUrl>>,
    #[serde(rename = "type", alias = "database_type")]
    kind: Option<DatabaseKind>,
    host: Option<Interpolated<String>>,
    port: Option<u16>,
    database: Option<Interpolated<String>>,
    user: Option<Interpolated<String>>,
    password: Option<Interpolated<Secret>>,
    /// SQLite only: the file.
    path: Option<Interpolated<PathBuf>>,
    /// TLS (servers only, PostgreSQL and MySQL alike): libpq's names; `sslmode` takes
    /// MySQL's mode names too (see [`crate::tls`]).
    sslmode: Option<Interpolated<String>>,
    sslrootcert: Option<Interpolated<PathBuf>>,
    sslcert: Option<Interpolated<PathBuf>>,
    sslkey: Option<Interpolated<Secret>>,
    min_connections: Option<usize>,
    max_connections: Option<usize>,
    health_threshold: Option<i64>,
    pre_warm: Option<bool>,
    acquire_timeout: Option<Interpolated<HumanDuration>>,
    command_timeout: Option<Interpolated<HumanDuration>>,
    health_check_interval: Option<Interpolated<HumanDuration>>,
    max_lifetime: Option<Interpolated<HumanDuration>>,
    idle_timeout: Option<Interpolated<HumanDuration>>,
    lease_timeout: Option<Interpolated<HumanDuration>>,
    /// PostgreSQL only: the schemas to search, set on every connection.
    pub(crate) search_path: Option<Interpolated<String>>,
    /// A database per tenant: at most this many tenants' pools at once.
    pub(crate) max_tenants: Option<usize>,
    /// What sits between the host and the server: `"none"` or `"transaction"`.
    pub(crate) pooler: Option<Pooler>,
}
impl RawDatabase {
    pub(crate) fn pool_settings(&mut self) -> PoolSettings {
        let d = |v: Option<Interpolated<HumanDuration>>| v.map(|d| d.0.0);
        PoolSettings {
            min_connections: self.min_connections,
            max_connections: self.max_connections,
            health_threshold: self.health_threshold,
            pre_warm: self.pre_warm,
            acquire_timeout: d(self.acquire_timeout.take()),
            command_timeout: d(self.command_timeout.take()),
            health_check_interval: d(self.health_check_interval.take()),
            max_lifetime: d(self.max_lifetime.take()),
            idle_timeout: d(self.idle_timeout.take()),
            lease_timeout: d(self.lease_timeout.take()),
        }
    }

    pub(crate) fn resolve(self, base: &Path) -> Result<DatabaseTarget, String> {
        let discrete = self.host.is_some()
            || self.port.is_some()
            || self.database.is_some()
            || self.user.is_some()
            || self.password.is_some()
            || self.path.is_some();
        let tls_keys = TlsSpec {
            mode: self.sslmode.map(|m| SslMode::parse(&m.0)).transpose()?,
            root_cert: self.sslrootcert.map(|p| relative_to(base, p.0)),
            client_cert: self.sslcert.map(|p| relative_to(base, p.0)),
            client_key: self.sslkey.map(|k| k.0),
        };
        let has_tls_keys = tls_keys.mode.is_some()
            || tls_keys.root_cert.is_some()
            || tls_keys.client_cert.is_some()
            || tls_keys.client_key.is_some();
        if let Some(url) = self.url {
            if discrete || self.kind.is_some() {
                return Err(
                    "give either `url` or `type` with `host`, `port`, `database`, \
                            `user`, `password` (or `path` for sqlite), not both"
                        .into(),
                );
            }
            let DatabaseUrl(target, spec) = url.0;
            return match target {
                DatabaseTarget::Sqlite { path } => {
                    if has_tls_keys {
                        return Err(SQLITE_TLS.into());
                    }
                    Ok(DatabaseTarget::Sqlite {
                        path: path.map(|p| relative_to(base, p)),
                    })
                }
                DatabaseTarget::Server {
                    kind,
                    host,
                    port,
                    database,
                    user,
                    password,
                    ..
                } => {
                    let tls = spec.merge(tls_keys)?.resolve(&host)?;
                    Ok(DatabaseTarget::Server {
                        kind,
                        host,
                        port,
                        database,
                        user,
                        password,
                        tls,
                    })
                }
            };
        }
        let kind = self
            .kind
            .ok_or("missing `url` or `type` (`postgres`, `mysql` or `sqlite`)")?;
        match kind {
            DatabaseKind::Sqlite => {
                if self.host.is_some() || self.port.is_some() || self.user.is_some() {
                    return Err("a sqlite database takes only `path`".into());
                }
                if has_tls_keys {
                    return Err(SQLITE_TLS.into());
                }
                let path = self.path.map(|p| relative_to(base, p.0));
                Ok(DatabaseTarget::Sqlite { path })
            }
            DatabaseKind::Postgres | DatabaseKind::Mysql => {
                if self.path.is_some() {
                    return Err("`path` is for sqlite; a server takes `host` and `port`".into());
                }
                let default_port = if kind == DatabaseKind::Postgres {
                    5432
                } else {
                    3306
                };
                let host = self.host.map_or_else(|| "127.0.0.1".into(), |h| h.0);
                let tls = tls_keys.resolve(&host)?;
                Ok(DatabaseTarget::Server {
                    kind,
                    host,
                    port: self.port.unwrap_or(default_port),
                    database: self.database.ok_or("missing `database`")?.0,
                    user: self.user.ok_or("missing `user`")?.0,
                    password: self.password.map(|p| p.0),
                    tls,
                })
            }
        }
    }
}

/// `[databases]`: each table checked, or without any the SQLite file `DATA/trellis.db` as
/// `main`.
pub(crate) fn resolve(
    raw: Option<BTreeMap<String, toml::Spanned<RawDatabase>>>,
    base: &Path,
    data: &Path,
) -> Result<BTreeMap<String, DatabaseConfig>, ResolveError> {
    let mut databases = BTreeMap::new();
    match raw {
        None => {
            let name = "main".to_owned();
            let target = DatabaseTarget::Sqlite {
                path: Some(data.join("trellis.db")),
            };
            databases.insert(name.clone(), DatabaseConfig::new(name, target));
        }
        Some(raw) => {
            for (name, spanned) in raw {
                let span = spanned.span();
                let mut raw = spanned.into_inner();
                let pool = raw.pool_settings();
                let search_path = raw.search_path.take().map(|s| s.0);
                let max_tenants = raw.max_tenants.take();
                let pooler = raw.pooler.take().unwrap_or_default();
                let fail = |message: String| ResolveError {
                    span: span.clone(),
                    key: format!("databases.{name}"),
                    message,
                };
                let target = raw.resolve(base).map_err(&fail)?;
                let tenancy =
                    resolve_tenancy(&target, search_path.as_deref(), max_tenants).map_err(&fail)?;
                check_pooler(pooler, &target, search_path.as_deref()).map_err(&fail)?;
                databases.insert(
                    name.clone(),
                    DatabaseConfig {
                        name,
                        target,
                        pool,
                        search_path,
                        tenancy,
                        pooler,
                    },
                );
            }
        }
    }
    Ok(databases)
}

/// Checks where `${tenant}` appears and `search_path`/`max_tenants` fit the database; the
/// database is per tenant when its name, user, SQLite path or `search_path` names `${tenant}`.
/// A transaction-mode pooler is for PostgreSQL, and keeps no session setting.
fn check_pooler(
    pooler: Pooler,
    target: &DatabaseTarget,
    search_path: Option<&str>,
) -> Result<(), String> {
    if pooler == Pooler::None {
        return Ok(());
    }
    if target.kind() != DatabaseKind::Postgres {
        return Err("`pooler = \"transaction\"` is for PostgreSQL (PgBouncer and the like)".into());
    }
    if search_path.is_some() {
        return Err(
            "`search_path` is a session setting, which a transaction-mode pooler does not keep: \
             set it on the role instead (`ALTER ROLE … SET search_path = …`), or qualify the \
             table names"
                .into(),
        );
    }
    Ok(())
}

fn resolve_tenancy(
    target: &DatabaseTarget,
    search_path: Option<&str>,
    max_tenants: Option<usize>,
) -> Result<Option<Tenancy>, String> {
    let named = |s: &str| s.contains(TENANT_PLACEHOLDER);
    if search_path.is_some() && target.kind() != DatabaseKind::Postgres {
        return Err("`search_path` is for PostgreSQL".into());
    }
    if search_path.is_some_and(|s| s.trim().is_empty()) {
        return Err("`search_path` must name a schema".into());
    }
    let per_tenant = search_path.is_some_and(named)
        || match target {
            DatabaseTarget::Sqlite { path } => {
                path.as_ref().is_some_and(|p| named(&p.to_string_lossy()))
            }
            DatabaseTarget::Server {
                host,
                database,
                user,
                password,
                ..
            } => {
                if named(host) || password.as_ref().is_some_and(|p| named(p.expose())) {
                    return Err(format!(
                        "`{TENANT_PLACEHOLDER}` may name the database, the user, the sqlite \
                         path or `search_path`, not the host or the password"
                    ));
                }
                named(database) || named(user)
            }
        };
    match (per_tenant, max_tenants) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(format!(
            "`max_tenants` is for a database per tenant: name `{TENANT_PLACEHOLDER}` in its \
             `url` (for example `postgres://app@db/app_{TENANT_PLACEHOLDER}`) or its \
             `search_path`"
        )),
        (true, Some(0)) => Err("`max_tenants` must be at least 1".into()),
        (true, max) => Ok(Some(Tenancy {
            max_tenants: max.unwrap_or(DEFAULT_MAX_TENANTS),
        })),
    }
}

const SQLITE_TLS: &str =
    "`sslmode`, `sslrootcert`, `sslcert` and `sslkey` are for servers, not sqlite";
/// A database URL, parsed into a [`DatabaseTarget`] so that the password is wrapped at once,
/// with the TLS settings as written (keys beside the URL may add to them).
#[derive(Debug)]
pub(crate) struct DatabaseUrl(DatabaseTarget, TlsSpec);

impl FromConfigStr for DatabaseUrl {
    fn from_config_str(s: &str) -> Result<Self, String> {
        parse_url(s).map(|(target, spec)| DatabaseUrl(target, spec))
    }
}

/// Parses `postgres://user:pass@host:port/db?sslmode=…`, `mysql://…?ssl-mode=…`,
/// `mariadb://…`, `sqlite://path`, `sqlite:path` or `sqlite::memory:`. A parameter Trellis
/// does not know is an error, never dropped (see the `tls` module for the TLS ones). Errors never
/// include the password.
pub fn parse_database_url(s: &str) -> Result<DatabaseTarget, String> {
    parse_url(s).map(|(target, _)| target)
}

pub(crate) fn parse_url(s: &str) -> Result<(DatabaseTarget, TlsSpec), String> {
    if let Some(rest) = s.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            // `mode=rwc` (read, write, create) is how Trellis opens every file; other modes and
            // parameters would be ignored, so they are refused.
            if pair != "mode=rwc" {
                let key = pair.split('=').next().unwrap_or(pair);
                return Err(format!(
                    "unsupported parameter `{key}` in a sqlite URL: Trellis opens the file \
                     read-write and creates it when missing (`mode=rwc`); remove the parameter"
                ));
            }
        }
        let target = match rest {
            ":memory:" | "" => DatabaseTarget::Sqlite { path: None },
            path => DatabaseTarget::Sqlite {
                path: Some(PathBuf::from(path)),
            },
        };
        return Ok((target, TlsSpec::default()));
    }
    let url = url::Url::parse(s).map_err(|e| format!("not a database URL: {e}"))?;
    let kind = match url.scheme() {
        "postgres" | "postgresql" => DatabaseKind::Postgres,
        "mysql" | "mariadb" => DatabaseKind::Mysql,
        other => {
            return Err(format!(
                "unsupported database scheme `{other}`: use `postgres://`, `mysql://` or `sqlite://`"
            ));
        }
    };
    let decode = |v: &str| {
        percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .into_owned()
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?;
    let database = url.path().trim_start_matches('/');
    if database.is_empty() {
        return Err("the URL names no database (add `/NAME` after the host)".into());
    }
    let user = decode(url.username());
    if user.is_empty() {
        return Err("the URL names no user (`scheme://USER@host/db`)".into());
    }
    let spec = TlsSpec::from_url_params(
        kind,
        url.query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned())),
    )?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let target = DatabaseTarget::Server {
        kind,
        port: url.port().unwrap_or(match kind {
            DatabaseKind::Postgres => 5432,
            _ => 3306,
        }),
        database: decode(database),
        user,
        password: url.password().map(|p| Secret::new(decode(p))),
        tls: spec.clone().resolve(&host)?,
        host,
    };
    Ok((target, spec))
}
