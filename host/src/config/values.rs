//! The value types of `trellis.toml` that every section shares: secrets that never print,
//! database kinds, `${VAR}` interpolation, durations, and paths relative to the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// The placeholder a database per tenant names; never taken from the environment.
pub const TENANT_PLACEHOLDER: &str = "${tenant}";
/// The three database kinds Trellis speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// PostgreSQL (also `postgresql`).
    #[serde(alias = "postgresql")]
    Postgres,
    /// MySQL or MariaDB (also `mariadb`).
    #[serde(alias = "mariadb")]
    Mysql,
    /// SQLite, embedded.
    Sqlite,
}

impl DatabaseKind {
    /// The lower-case name used in outputs (`postgresql`, `mysql`, `sqlite`).
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgresql",
            DatabaseKind::Mysql => "mysql",
            DatabaseKind::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for DatabaseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string (password, key). Debug and Display print `***`; read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a driver. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
// ---- value types with their own parsing ----------------------------------------------------

/// A string value with `${VAR}` expanded, then parsed as `T`.
#[derive(Debug)]
pub(crate) struct Interpolated<T>(pub(crate) T);

impl<'de, T: FromConfigStr> Deserialize<'de> for Interpolated<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        let expanded =
            interpolate(&raw, |name| std::env::var(name).ok()).map_err(de::Error::custom)?;
        T::from_config_str(&expanded)
            .map(Interpolated)
            .map_err(de::Error::custom)
    }
}

/// Parsing from an (interpolated) string; errors must not repeat secret input.
pub(crate) trait FromConfigStr: Sized {
    fn from_config_str(s: &str) -> Result<Self, String>;
}

impl FromConfigStr for String {
    fn from_config_str(s: &str) -> Result<Self, String> {
        Ok(s.to_owned())
    }
}

impl FromConfigStr for PathBuf {
    fn from_config_str(s: &str) -> Result<Self, String> {
        Ok(PathBuf::from(s))
    }
}

impl FromConfigStr for Secret {
    fn from_config_str(s: &str) -> Result<Self, String> {
        Ok(Secret::new(s))
    }
}

impl FromConfigStr for SocketAddr {
    fn from_config_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|_| format!("`{s}` is not an address like `127.0.0.1:8700`"))
    }
}

#[derive(Debug)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl FromConfigStr for HumanDuration {
    fn from_config_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration like `30s` or `5m`: {e}"))
    }
}
/// Expands `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`. A lone `$` stays as it is.
pub(crate) fn interpolate(
    raw: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or("unclosed `${`: write `${VAR}`, or `$$` for a literal `$`")?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid environment variable name"
                ));
            }
            if name == "tenant" && default.is_none() {
                // `${tenant}` is filled per tenant (see `Tenancy`), never from the environment.
                out.push_str(TENANT_PLACEHOLDER);
                rest = &body[end + 1..];
                continue;
            }
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!("environment variable `{name}` is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}
/// `path` as seen from the current directory, when written relative to `base`.
pub(crate) fn relative_to(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() || base == Path::new(".") {
        path
    } else {
        base.join(path)
    }
}

/// A semantic error found after parsing, with the span of the table at fault.
#[derive(Debug)]
pub(crate) struct ResolveError {
    pub(crate) span: std::ops::Range<usize>,
    pub(crate) key: String,
    pub(crate) message: String,
}
