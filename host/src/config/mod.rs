//! `trellis.toml`: where it is found, what it holds, and how secrets in it stay out of sight.
//!
//! The file is optional. Without one the embedded default applies: the SQLite file
//! `./data/trellis.db` as database `main`, plugins in `./plugins`, policies in `./policies`.
//! Relative paths in a file are resolved against the file's directory. String values may name
//! environment variables as `${VAR}` (or `${VAR:-default}`); `$$` is a literal `$`.
//! `${tenant}` is the one exception: it stays as written, for a database per tenant.
//!
//! Each section is its module's: `[server]` is `server::settings`, `[auth]` `auth::settings`,
//! `[plugins]` `plugins::settings`, `[policy]` `policy::settings`, `[databases]` [`database`];
//! this file finds and reads the file, hands each module its section, and keeps `[paths]` and
//! `[migrations]`, which are the host's own.
//!
//! Every error names the file, the line and the key at fault, and never prints a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub(crate) mod database;
pub(crate) mod values;

pub use database::{DatabaseConfig, DatabaseTarget, Pooler, parse_database_url};
pub use values::{DatabaseKind, Secret};

use crate::auth::settings::RawAuth;
pub use crate::plugins::settings::PluginsConfig;
use crate::plugins::settings::RawPlugins;
use crate::policy::settings::RawPolicy;
pub use crate::policy::settings::{AuditTarget, PolicyConfig};
use crate::server::settings::RawServer;
pub use crate::server::settings::ServerConfig;
use database::RawDatabase;
use serde::Deserialize;
use values::{Interpolated, ResolveError, relative_to};

/// The file `trellis` looks for in the current directory when `--config` is not given.
pub const DEFAULT_FILE: &str = "trellis.toml";

/// The configuration the host runs with, with paths resolved and secrets wrapped.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration came from.
    pub source: ConfigSource,
    /// The HTTP server.
    pub server: ServerConfig,
    /// The directories the host reads and writes.
    pub paths: PathsConfig,
    /// The databases, by name.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// `[plugins]`: limits for WebAssembly plugins.
    pub plugins: PluginsConfig,
    /// `[auth]`: how callers are identified.
    pub auth: crate::auth::AuthConfig,
    /// `[policy]`: the policy engine's settings and the audit trail.
    pub policy: PolicyConfig,
    /// `[migrations]`: migrations applied when the server starts.
    pub migrations: MigrationsConfig,
    /// `[control]`: how the host follows a fleet's control plane.
    pub control: crate::fleet::settings::ControlConfig,
}

/// `[migrations]`: a directory of migrations applied to one database when `trellis serve`
/// starts (off unless `dir` is set).
#[derive(Debug, Clone, Default)]
pub struct MigrationsConfig {
    /// The migrations directory.
    pub dir: Option<PathBuf>,
    /// The database they apply to (default `main`).
    pub database: String,
}

/// Where a configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A `trellis.toml` file.
    File(PathBuf),
    /// No file: the built-in defaults.
    Embedded,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::Embedded => f.write_str("embedded default"),
        }
    }
}

/// `[paths]`: directories, resolved against the config file's directory.
#[derive(Debug, Clone)]
pub struct PathsConfig {
    /// Where the host keeps its own files (the default SQLite database, caches).
    pub data: PathBuf,
    /// The watched plugin directory (`*.wasm`).
    pub plugins: PathBuf,
    /// Cedar schema, `*.cedar` and `*.rules.json`.
    pub policies: PathBuf,
    /// Workflow definitions.
    pub workflows: PathBuf,
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file `{path}`", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but something in it is wrong.
    #[error("{path}:{line}:{column}: {key}{message}",
        path = path.display(),
        key = key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
        /// The dotted key at fault, when known (`databases.main.url`).
        key: Option<String>,
        /// What is wrong, without any secret.
        message: String,
        /// What to do about it.
        hint: Option<String>,
        /// The lines at fault, when the fault has a place in the file.
        snippet: Option<Box<crate::diagnostic::Snippet>>,
    },
}

impl miette::Diagnostic for ConfigError {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        match self {
            ConfigError::Invalid { hint: Some(h), .. } => Some(Box::new(h)),
            _ => None,
        }
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        match self {
            ConfigError::Invalid {
                snippet: Some(s), ..
            } => Some(&**s),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        match self {
            ConfigError::Invalid {
                snippet: Some(s), ..
            } => s.labels(),
            _ => None,
        }
    }
}

impl Config {
    /// Loads `explicit` if given; else `./trellis.toml` if it exists; else the embedded default.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(path) => Config::load(path),
            None if Path::new(DEFAULT_FILE).is_file() => Config::load(Path::new(DEFAULT_FILE)),
            None => Ok(Config::embedded()),
        }
    }

    /// The embedded default: SQLite `./data/trellis.db` as `main`, `./plugins`, `./policies`.
    pub fn embedded() -> Config {
        RawConfig::default()
            .resolve(Path::new("."), ConfigSource::Embedded)
            .expect("the embedded default configuration is valid")
    }

    /// Loads and checks one file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses `text` as if read from `path` (used for messages and to resolve relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // The lines drawn around a problem must not show a secret either.
        let invalid =
            |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| {
                let (line, column) = line_column(text, span.as_ref().map_or(0, |s| s.start));
                let hint = hint_for(&message);
                // A span of nothing at the start means the place is not known.
                let snippet = span.filter(|s| s.end > 0).map(|s| {
                    let snippet = crate::diagnostic::Snippet::at(
                        path.display().to_string(),
                        // Only on an error: a file that loads is never scanned for secrets.
                        std::sync::Arc::from(redact_secrets(text)),
                        s.start,
                        s.len(),
                    );
                    Box::new(match &key {
                        Some(k) => snippet.labelled(format!("`{k}`")),
                        None => snippet,
                    })
                });
                ConfigError::Invalid {
                    path: path.to_owned(),
                    line,
                    column,
                    key,
                    message,
                    hint,
                    snippet,
                }
            };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), None, e.message().to_owned()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            // `toml::Spanned` shows up in the path as a private field name: leave it out.
            let key = e
                .path()
                .to_string()
                .split('.')
                .filter(|segment| !segment.starts_with("$__"))
                .collect::<Vec<_>>()
                .join(".");
            let key = (!key.is_empty()).then_some(key);
            let message = scrub(key.as_deref(), e.inner().message());
            invalid(e.inner().span(), key, message)
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        raw.resolve(base, ConfigSource::File(path.to_owned()))
            .map_err(|e| invalid(Some(e.span), Some(e.key), e.message))
    }

    /// The database called `name`, if configured.
    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.get(name)
    }
}

/// `text` with every secret it may hold replaced by `*`, byte for byte (so offsets stay): the
/// values of `password`, `sslkey`, `key` and `hmac_key`, and the password of any URL.
fn redact_secrets(text: &str) -> String {
    static VALUE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"(?m)^[ \t]*(?:password|sslkey|key|hmac_key)[ \t]*=[ \t]*(.*)$"#)
            .expect("a valid pattern")
    });
    static URL_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#"[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s"']*:([^@\s"']*)@"#)
            .expect("a valid pattern")
    });
    let mut bytes = text.as_bytes().to_vec();
    for re in [&*VALUE, &*URL_PASSWORD] {
        for caps in re.captures_iter(text) {
            if let Some(m) = caps.get(1) {
                bytes[m.range()].fill(b'*');
            }
        }
    }
    // Only whole characters were replaced, each byte by an ASCII `*`.
    String::from_utf8(bytes).unwrap_or_default()
}

/// Hides values in messages about keys that may hold secrets.
fn scrub(key: Option<&str>, message: &str) -> String {
    let secret_key = key.is_some_and(|k| {
        let last = k.rsplit('.').next().unwrap_or(k);
        matches!(last, "url" | "password" | "key")
    });
    // serde's own "invalid type: string \"…\"" quotes the value; for these keys it may be a secret.
    // Our parsers' messages never repeat a secret, so they pass through.
    let quotes_value = message.starts_with("invalid type") || message.starts_with("invalid value");
    if secret_key && quotes_value {
        match message.find(':') {
            Some(i) => format!("{} (value hidden)", &message[..i]),
            None => "invalid value (value hidden)".to_owned(),
        }
    } else {
        message.to_owned()
    }
}

fn hint_for(message: &str) -> Option<String> {
    if message.starts_with("unknown field") {
        Some(
            "check the spelling against the commented example `trellis.toml` in the repository"
                .into(),
        )
    } else if message.starts_with("`max_memory_bytes` must be") {
        Some("give a number of bytes; the default is 67108864 (64 MiB)".into())
    } else if message.starts_with("`mode = \"jwt\"` needs") {
        Some(
            "see the commented `[auth]` section of the example `trellis.toml` in the repository"
                .into(),
        )
    } else if message.contains("environment variable") {
        Some(
            "export the variable before starting trellis, or give a default as `${VAR:-value}`"
                .into(),
        )
    } else {
        None
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    paths: RawPaths,
    databases: Option<BTreeMap<String, toml::Spanned<RawDatabase>>>,
    plugins: Option<toml::Spanned<RawPlugins>>,
    auth: Option<toml::Spanned<RawAuth>>,
    policy: Option<toml::Spanned<RawPolicy>>,
    #[serde(default)]
    migrations: RawMigrations,
    #[serde(default)]
    control: crate::fleet::settings::RawControl,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigrations {
    dir: Option<Interpolated<PathBuf>>,
    database: Option<Interpolated<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPaths {
    data: Option<Interpolated<PathBuf>>,
    plugins: Option<Interpolated<PathBuf>>,
    policies: Option<Interpolated<PathBuf>>,
    workflows: Option<Interpolated<PathBuf>>,
}

impl RawConfig {
    fn resolve(self, base: &Path, source: ConfigSource) -> Result<Config, ResolveError> {
        let at = |p: Option<Interpolated<PathBuf>>, default: &str| -> PathBuf {
            relative_to(base, p.map_or_else(|| PathBuf::from(default), |p| p.0))
        };
        let paths = PathsConfig {
            data: at(self.paths.data, "data"),
            plugins: at(self.paths.plugins, "plugins"),
            policies: at(self.paths.policies, "policies"),
            workflows: at(self.paths.workflows, "workflows"),
        };
        let server = crate::server::settings::resolve(self.server)?;
        let databases = database::resolve(self.databases, base, &paths.data)?;
        let plugins = crate::plugins::settings::resolve(self.plugins)?;
        let policy = crate::policy::settings::resolve(self.policy, base, &paths.data, &databases)?;
        let migrations = MigrationsConfig {
            dir: self.migrations.dir.map(|d| relative_to(base, d.0)),
            database: self
                .migrations
                .database
                .map_or_else(|| "main".to_owned(), |d| d.0),
        };
        if migrations.dir.is_some() && !databases.contains_key(&migrations.database) {
            return Err(ResolveError {
                span: 0..0,
                key: "migrations.database".into(),
                message: format!("`{}` is not a configured database", migrations.database),
            });
        }
        let per_tenant = |name: &str| databases.get(name).is_some_and(|d| d.tenancy.is_some());
        if migrations.dir.is_some() && per_tenant(&migrations.database) {
            return Err(ResolveError {
                span: 0..0,
                key: "migrations.database".into(),
                message: format!(
                    "`{}` is a database per tenant: `trellis serve` applies migrations to one \
                     database; apply them to each tenant's with `trellis migrate --url URL`",
                    migrations.database
                ),
            });
        }
        if let AuditTarget::Database(name) = &policy.audit
            && per_tenant(name)
        {
            return Err(ResolveError {
                span: 0..0,
                key: "policy.audit_database".into(),
                message: format!(
                    "`{name}` is a database per tenant: the audit trail needs one database"
                ),
            });
        }
        let auth = crate::auth::settings::resolve(self.auth, base, &source)?;
        let control = crate::fleet::settings::resolve(self.control, &databases)?;
        Ok(Config {
            source,
            server,
            paths,
            databases,
            plugins,
            policy,
            migrations,
            auth,
            control,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::database::{DEFAULT_MAX_TENANTS, Tenancy};
    use super::values::interpolate;
    use super::*;
    use crate::diagnostic::Plain;
    use crate::server::settings::DEFAULT_LISTEN;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("conf/trellis.toml"))
    }

    #[test]
    fn embedded_default_is_sqlite_main() {
        let c = Config::embedded();
        assert_eq!(c.source, ConfigSource::Embedded);
        assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.paths.plugins, PathBuf::from("plugins"));
        assert_eq!(c.paths.policies, PathBuf::from("policies"));
        let main = c.database("main").unwrap();
        assert_eq!(
            main.target,
            DatabaseTarget::Sqlite {
                path: Some(PathBuf::from("data/trellis.db"))
            }
        );
    }

    #[test]
    fn empty_file_gets_defaults_relative_to_file() {
        let c = parse("").unwrap();
        assert_eq!(c.paths.plugins, PathBuf::from("conf/plugins"));
        assert_eq!(
            c.database("main").unwrap().target,
            DatabaseTarget::Sqlite {
                path: Some(PathBuf::from("conf/data/trellis.db"))
            }
        );
    }

    #[test]
    fn url_with_password_is_parsed_and_hidden() {
        let c = parse("[databases.pg]\nurl = \"postgres://app:s3cr%40t@db.local:6543/sales\"\n")
            .unwrap();
        let t = &c.database("pg").unwrap().target;
        let DatabaseTarget::Server {
            kind,
            host,
            port,
            database,
            user,
            password,
            ..
        } = t
        else {
            panic!("not a server: {t}")
        };
        assert_eq!(*kind, DatabaseKind::Postgres);
        assert_eq!((host.as_str(), *port), ("db.local", 6543));
        assert_eq!((database.as_str(), user.as_str()), ("sales", "app"));
        assert_eq!(password.as_ref().unwrap().expose(), "s3cr@t");
        let shown = format!("{t} {t:?} {c:?}");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(
            shown.contains("postgresql://app@db.local:6543/sales"),
            "{shown}"
        );
    }

    #[test]
    fn discrete_fields_and_env_interpolation() {
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("TRELLIS_TEST_CONFIG_PW", "hunter2") };
        let c = parse(
            "[databases.m]\ntype = \"mariadb\"\ndatabase = \"test\"\nuser = \"root\"\n\
             password = \"${TRELLIS_TEST_CONFIG_PW}\"\n",
        )
        .unwrap();
        let t = &c.database("m").unwrap().target;
        assert_eq!(t.kind(), DatabaseKind::Mysql);
        assert!(
            matches!(t, DatabaseTarget::Server { port: 3306, password: Some(p), .. } if p.expose() == "hunter2")
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_env_var_names_file_line_key_and_variable() {
        let err = parse(
            "[server]\n\n[databases.pg]\nurl = \"postgres://u:${TRELLIS_NOPE_NOT_SET}@h/db\"\n",
        )
        .unwrap_err()
        .plain();
        assert!(err.starts_with("conf/trellis.toml:4:"), "{err}");
        assert!(err.contains("key `databases.pg.url`"), "{err}");
        assert!(err.contains("`TRELLIS_NOPE_NOT_SET` is not set"), "{err}");
        assert!(err.contains("help:"), "{err}");
    }

    #[test]
    fn audit_queue_is_read_and_must_hold_a_record() {
        let config = parse("[policy]\naudit_queue = 16\n").unwrap();
        assert_eq!(config.policy.audit_queue, 16);
        assert_eq!(parse("").unwrap().policy.audit_queue, 65_536);
        let err = parse("[policy]\naudit_queue = 0\n").unwrap_err().plain();
        assert!(err.contains("key `policy.audit_queue`"), "{err}");
        assert!(err.contains("must be above zero"), "{err}");
    }

    #[test]
    fn unknown_key_and_wrong_type_name_line_and_key() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n")
            .unwrap_err()
            .plain();
        assert!(err.starts_with("conf/trellis.toml:3:"), "{err}");
        assert!(err.contains("unknown field `lisen`"), "{err}");

        let err = parse("[databases.pg]\nurl = \"sqlite::memory:\"\nmax_conections = 4\n")
            .unwrap_err()
            .plain();
        assert!(
            err.starts_with(
                "conf/trellis.toml:3:1: key `databases.pg.max_conections`: unknown field"
            ),
            "{err}"
        );

        let err = parse("[server]\nmax_body_bytes = \"big\"\n")
            .unwrap_err()
            .plain();
        assert!(err.starts_with("conf/trellis.toml:2:"), "{err}");
        assert!(err.contains("key `server.max_body_bytes`"), "{err}");

        let err = parse("[server]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .plain();
        assert!(err.contains("`nowhere` is not an address"), "{err}");
    }

    #[test]
    fn plugin_limits_with_overrides_and_checks() {
        let c = parse(
            "[plugins]\nmax_memory_bytes = 33554432\ncall_timeout = \"250ms\"\n\n[plugins.limits.big]\nmax_memory_bytes = 134217728\n",
        )
        .unwrap();
        let limits = &c.plugins.limits;
        assert_eq!(limits.default.memory_bytes, 32 << 20);
        assert_eq!(limits.default.call_timeout, Duration::from_millis(250));
        let big = limits.for_plugin("big");
        assert_eq!(big.memory_bytes, 128 << 20);
        assert_eq!(
            big.call_timeout,
            Duration::from_millis(250),
            "inherits the default"
        );
        assert_eq!(
            parse("").unwrap().plugins.limits.default,
            crate::plugins::Limits::default()
        );

        let err = parse("[plugins.limits.tiny]\nmax_memory_bytes = 1024\n")
            .unwrap_err()
            .plain();
        assert!(err.starts_with("conf/trellis.toml:1:"), "{err}");
        assert!(err.contains("key `plugins.limits.tiny`"), "{err}");
        assert!(err.contains("`max_memory_bytes` must be between"), "{err}");
        let err = parse("[plugins]\ncall_timeout = \"0s\"\n")
            .unwrap_err()
            .plain();
        assert!(
            err.contains("`call_timeout` must be more than zero"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let err = parse("[server]\nlisten = \n").unwrap_err().plain();
        assert!(err.starts_with("conf/trellis.toml:2:"), "{err}");
    }

    #[test]
    fn bad_values_for_secret_keys_are_not_echoed() {
        let err = parse("[databases.pg]\nurl = \"ftp://u:topsecret@h/db\"\n")
            .unwrap_err()
            .plain();
        assert!(err.contains("unsupported database scheme `ftp`"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");

        let err = parse("[databases.pg]\ntype = \"postgres\"\ndatabase = \"d\"\nuser = \"u\"\npassword = 12345\n")
            .unwrap_err()
            .plain();
        assert!(err.contains("key `databases.pg.password`"), "{err}");
        assert!(!err.contains("12345"), "{err}");
    }

    #[test]
    fn url_and_discrete_fields_conflict() {
        let err = parse("[databases.x]\nurl = \"sqlite::memory:\"\nhost = \"h\"\n")
            .unwrap_err()
            .plain();
        assert!(err.starts_with("conf/trellis.toml:1:"), "{err}");
        assert!(err.contains("key `databases.x`"), "{err}");
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn secrets_are_starred_in_the_lines_drawn_around_a_problem() {
        let text = "[databases.a]\nurl = \"postgres://app:tiger@h/db\"\npassword = \"hunter2\"\n\
                    [auth]\nkey = \"k€y\"\nmax_conections = 3\n";
        let red = redact_secrets(text);
        assert_eq!(red.len(), text.len());
        for secret in ["tiger", "hunter2", "k€y"] {
            assert!(!red.contains(secret), "{red}");
        }
        assert!(red.contains("postgres://app:*****@h/db"), "{red}");
        assert!(red.contains("max_conections = 3"), "{red}");
    }

    #[test]
    fn a_database_per_tenant_names_tenant_where_it_is_safe() {
        let c = parse(
            "[databases.t]\nurl = \"postgres://u@h/app_${tenant}\"\nmax_tenants = 8\n\
             [databases.s]\nurl = \"postgres://u@h/app\"\nsearch_path = \"s_${tenant}\"\n\
             [databases.l]\nurl = \"sqlite://data/${tenant}.db\"\n",
        )
        .unwrap();
        assert_eq!(
            c.database("t").unwrap().tenancy,
            Some(Tenancy { max_tenants: 8 })
        );
        assert_eq!(
            c.database("s").unwrap().tenancy,
            Some(Tenancy {
                max_tenants: DEFAULT_MAX_TENANTS
            })
        );
        assert!(c.database("l").unwrap().tenancy.is_some());
        for (text, expect) in [
            (
                "url = \"postgres://u@h/app\"\nmax_tenants = 2",
                "`max_tenants` is for a database per tenant",
            ),
            (
                "url = \"postgres://u@h/a_${tenant}\"\nmax_tenants = 0",
                "at least 1",
            ),
            (
                "type = \"postgres\"\nhost = \"${tenant}.db\"\ndatabase = \"d\"\nuser = \"u\"",
                "not the host",
            ),
            (
                "url = \"mysql://u@h/d\"\nsearch_path = \"x\"",
                "`search_path` is for PostgreSQL",
            ),
        ] {
            let err = parse(&format!("[databases.x]\n{text}\n"))
                .unwrap_err()
                .plain();
            assert!(err.contains(expect), "{text}: {err}");
        }
        let err = parse(
            "[databases.main]\nurl = \"postgres://u@h/a_${tenant}\"\n[migrations]\ndir = \"m\"\n",
        )
        .unwrap_err()
        .plain();
        assert!(err.contains("is a database per tenant"), "{err}");
    }

    #[test]
    fn pool_settings_are_read_per_database() {
        let c = parse(
            "[databases.pg]\nurl = \"postgres://u@h/db\"\nmax_connections = 4\nacquire_timeout = \"2s\"\nlease_timeout = \"${TRELLIS_NOPE_UNSET:-90s}\"\n",
        )
        .unwrap();
        let pool = &c.database("pg").unwrap().pool;
        assert_eq!(pool.max_connections, Some(4));
        assert_eq!(pool.acquire_timeout, Some(Duration::from_secs(2)));
        assert_eq!(pool.lease_timeout, Some(Duration::from_secs(90)));
        assert_eq!(pool.min_connections, None);
        let err = parse("[databases.pg]\nurl = \"postgres://u@h/db\"\nidle_timeout = 5\n")
            .unwrap_err()
            .plain();
        assert!(err.contains("key `databases.pg.idle_timeout`"), "{err}");
    }

    #[test]
    fn auth_modes_keys_and_claim_names() {
        use crate::auth::{AuthMode, JwtAlgorithm, KeySource};
        assert!(matches!(parse("").unwrap().auth.mode, AuthMode::None));
        assert!(matches!(
            parse("[auth]\nmode = \"dev\"\n").unwrap().auth.mode,
            AuthMode::Dev
        ));
        // SAFETY: tests in this module are the only users of this variable.
        unsafe { std::env::set_var("TRELLIS_TEST_CONFIG_JWT_KEY", "hs256-key-for-tests") };
        let c = parse(
            "[auth]\nmode = \"jwt\"\nalgorithm = \"HS256\"\nkey = \"${TRELLIS_TEST_CONFIG_JWT_KEY}\"\n\
             audience = \"trellis\"\nissuer = \"https://id.example\"\nleeway = \"5s\"\n\n\
             [auth.claims]\nuser_id = \"uid\"\nroles = \"groups\"\n",
        )
        .unwrap();
        let AuthMode::Jwt(jwt) = &c.auth.mode else {
            panic!("not jwt: {:?}", c.auth)
        };
        assert_eq!(jwt.algorithm, JwtAlgorithm::Hs256);
        assert!(
            matches!(&jwt.key, KeySource::Inline { key, origin } if key.expose() == "hs256-key-for-tests" && origin == "`auth.key` in conf/trellis.toml")
        );
        assert_eq!(jwt.audience, "trellis");
        assert_eq!(jwt.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(jwt.leeway, Duration::from_secs(5));
        assert_eq!(
            (jwt.claims.user_id.as_str(), jwt.claims.roles.as_str()),
            ("uid", "groups")
        );
        assert_eq!(jwt.claims.tenant_id, "tenant", "unset names keep defaults");
        assert!(!format!("{c:?}").contains("hs256-key-for-tests"));

        let c = parse(
            "[auth]\nmode = \"jwt\"\nalgorithm = \"EdDSA\"\nkey_file = \"keys/ed.pem\"\naudience = \"a\"\n",
        )
        .unwrap();
        let AuthMode::Jwt(jwt) = &c.auth.mode else {
            panic!("not jwt")
        };
        assert!(matches!(&jwt.key, KeySource::File(p) if p == Path::new("conf/keys/ed.pem")));
        assert_eq!(jwt.leeway, Duration::from_secs(30), "default leeway");
    }

    #[test]
    fn auth_errors_name_line_key_and_what_is_missing() {
        let jwt = "[server]\n\n[auth]\nmode = \"jwt\"\n";
        let err = parse(&format!("{jwt}algorithm = \"HS256\"\nkey = \"k\"\n"))
            .unwrap_err()
            .plain();
        assert!(
            err.starts_with("conf/trellis.toml:3:1: key `auth`: "),
            "{err}"
        );
        assert!(err.contains("needs `audience`"), "{err}");
        assert!(
            err.contains("help: see the commented `[auth]` section"),
            "{err}"
        );
        let err = parse(&format!("{jwt}key = \"k\"\naudience = \"a\"\n"))
            .unwrap_err()
            .plain();
        assert!(err.contains("needs `algorithm`"), "{err}");
        let err = parse(&format!("{jwt}algorithm = \"RS256\"\naudience = \"a\"\n"))
            .unwrap_err()
            .plain();
        assert!(err.contains("needs `key`"), "{err}");
        let err = parse(&format!(
            "{jwt}algorithm = \"RS256\"\naudience = \"a\"\nkey = \"k\"\nkey_file = \"f\"\n"
        ))
        .unwrap_err()
        .plain();
        assert!(err.contains("either `key` or `key_file`"), "{err}");
        let err = parse(&format!(
            "{jwt}algorithm = \"HS256\"\naudience = \"a\"\nkey = \"k\"\nleeway = \"1h\"\n"
        ))
        .unwrap_err()
        .plain();
        assert!(err.contains("`leeway` must be at most 300s"), "{err}");
        let err = parse(&format!("{jwt}algorithm = \"HS512\"\n"))
            .unwrap_err()
            .plain();
        assert!(err.starts_with("conf/trellis.toml:5:"), "{err}");
        assert!(err.contains("key `auth.algorithm`"), "{err}");
        assert!(err.contains("`HS256`, `RS256`, `EdDSA`"), "{err}");
        let err = parse("[auth]\nmode = \"open\"\n").unwrap_err().plain();
        assert!(err.contains("unknown variant `open`"), "{err}");
        let err = parse("[auth]\nmode = \"jwt\"\nkey = 123456789\n")
            .unwrap_err()
            .plain();
        assert!(err.contains("key `auth.key`"), "{err}");
        assert!(!err.contains("123456789"), "{err}");
        let err = parse("[auth.claims]\nuser = \"uid\"\n")
            .unwrap_err()
            .plain();
        assert!(err.contains("unknown field `user`"), "{err}");
    }

    #[test]
    fn interpolation_rules() {
        let env = |n: &str| (n == "A").then(|| "x".to_owned());
        assert_eq!(interpolate("a${A}b", env).unwrap(), "axb");
        assert_eq!(interpolate("$${A}", env).unwrap(), "${A}");
        assert_eq!(interpolate("${B:-def}", env).unwrap(), "def");
        assert_eq!(interpolate("cost $5", env).unwrap(), "cost $5");
        assert!(interpolate("${A", env).unwrap_err().contains("unclosed"));
        assert!(
            interpolate("${1A}", env)
                .unwrap_err()
                .contains("not a valid")
        );
    }

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            parse_database_url("sqlite::memory:").unwrap(),
            DatabaseTarget::Sqlite { path: None }
        );
        assert_eq!(
            parse_database_url("sqlite://data/x.db?mode=rwc").unwrap(),
            DatabaseTarget::Sqlite {
                path: Some("data/x.db".into())
            }
        );
        assert_eq!(
            parse_database_url("sqlite:///abs/x.db").unwrap(),
            DatabaseTarget::Sqlite {
                path: Some("/abs/x.db".into())
            }
        );
    }
}
