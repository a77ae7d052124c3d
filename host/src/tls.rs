//! TLS to database servers: libpq's `sslmode` semantics for PostgreSQL and MySQL/MariaDB alike.
//!
//! The settings come from a URL's parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey` for
//! PostgreSQL; `ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key` for MySQL) or from the same keys in
//! `[databases.NAME]`, and are checked when the config loads: an unknown parameter is an error
//! with a did-you-mean, never dropped. Without a mode, a loopback host gets `prefer` and any
//! other host `verify-full`. The driver does the handshake (sqlx with rustls); this module only
//! decides what it must demand, and words the error when the server cannot meet it.

use std::fmt;
use std::path::PathBuf;

use crate::config::values::{DatabaseKind, Secret};
use crate::loopback::is_loopback;
use crate::suggest::did_you_mean;

/// How much a connection demands of TLS (libpq's `sslmode`; MySQL's `ssl-mode` maps onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, unverified; plain otherwise.
    Prefer,
    /// TLS always, the certificate unverified.
    Require,
    /// TLS always, the certificate signed by a trusted CA (`sslrootcert`, else the system's).
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-full`), used in messages for both servers.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses libpq's names and MySQL's (`DISABLED`, `PREFERRED`, `REQUIRED`, `VERIFY_CA`,
    /// `VERIFY_IDENTITY`), in any case.
    pub fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "disable" | "disabled" => SslMode::Disable,
            "prefer" | "preferred" => SslMode::Prefer,
            "require" | "required" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" | "verify-identity" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "`{s}` is not a TLS mode: use `disable`, `prefer`, `require`, `verify-ca` or \
                     `verify-full`"
                ));
            }
        })
    }

    /// Whether the connection fails rather than go without TLS.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS settings of one server connection. Debug never shows the client key's path.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tls {
    /// What the connection demands.
    pub mode: SslMode,
    /// Whether `mode` was chosen by the host's default (loopback or not) rather than written.
    pub mode_is_default: bool,
    /// The CA certificates (PEM) that sign the server's certificate; the system's when `None`.
    pub root_cert: Option<PathBuf>,
    /// A client certificate (PEM), for servers that ask for one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM). Its path is kept like a secret.
    pub client_key: Option<Secret>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The TLS settings as written, before the host's default applies.
#[derive(Debug, Default, Clone)]
pub struct TlsSpec {
    /// `sslmode` / `ssl-mode`.
    pub mode: Option<SslMode>,
    /// `sslrootcert` / `ssl-ca`.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` / `ssl-cert`.
    pub client_cert: Option<PathBuf>,
    /// `sslkey` / `ssl-key`.
    pub client_key: Option<Secret>,
}

/// The URL parameters a server URL may carry, per kind: (mode, CA, certificate, key).
fn parameter_names(kind: DatabaseKind) -> [&'static str; 4] {
    match kind {
        DatabaseKind::Mysql => ["ssl-mode", "ssl-ca", "ssl-cert", "ssl-key"],
        _ => ["sslmode", "sslrootcert", "sslcert", "sslkey"],
    }
}

impl TlsSpec {
    /// Reads the parameters of a `kind` URL. Every parameter must be one of the kind's four; an
    /// unknown one is an error naming the closest known one. Values never appear in errors
    /// (except a mode, which is no secret).
    pub fn from_url_params(
        kind: DatabaseKind,
        params: impl IntoIterator<Item = (String, String)>,
    ) -> Result<TlsSpec, String> {
        let names = parameter_names(kind);
        let mut spec = TlsSpec::default();
        for (key, value) in params {
            let slot = names.iter().position(|n| *n == key);
            let duplicate = match slot {
                Some(0) => spec.mode.replace(SslMode::parse(&value)?).is_some(),
                Some(1) => spec.root_cert.replace(PathBuf::from(value)).is_some(),
                Some(2) => spec.client_cert.replace(PathBuf::from(value)).is_some(),
                Some(3) => spec.client_key.replace(Secret::new(value)).is_some(),
                _ => {
                    let mut message = format!("unknown URL parameter `{key}` for a {kind} URL");
                    let other = parameter_names(match kind {
                        DatabaseKind::Mysql => DatabaseKind::Postgres,
                        _ => DatabaseKind::Mysql,
                    });
                    if let Some(i) = other.iter().position(|n| *n == key) {
                        message.push_str(&format!(": did you mean `{}`?", names[i]));
                    } else if let Some(m) = did_you_mean(&key, &names) {
                        message.push_str(&format!(": did you mean `{m}`?"));
                    } else {
                        message.push_str(&format!(": a {kind} URL takes {}", list(&names)));
                    }
                    return Err(message);
                }
            };
            if duplicate {
                return Err(format!("URL parameter `{key}` is given twice"));
            }
        }
        Ok(spec)
    }

    /// Fills what `self` leaves open from `other` (discrete keys beside a URL); a setting given
    /// in both is an error.
    pub fn merge(self, other: TlsSpec) -> Result<TlsSpec, String> {
        fn one<T>(a: Option<T>, b: Option<T>, name: &str) -> Result<Option<T>, String> {
            match (a, b) {
                (Some(_), Some(_)) => Err(format!(
                    "`{name}` is set both in `url` and as a key: keep one"
                )),
                (a, b) => Ok(a.or(b)),
            }
        }
        Ok(TlsSpec {
            mode: one(self.mode, other.mode, "sslmode")?,
            root_cert: one(self.root_cert, other.root_cert, "sslrootcert")?,
            client_cert: one(self.client_cert, other.client_cert, "sslcert")?,
            client_key: one(self.client_key, other.client_key, "sslkey")?,
        })
    }

    /// The settings for a connection to `host`: the written mode, else `prefer` on a loopback
    /// host and `verify-full` anywhere else. A certificate without its key (or the reverse), or
    /// a CA with a mode that never checks it, is an error.
    pub fn resolve(self, host: &str) -> Result<Tls, String> {
        let (mode, mode_is_default) = match self.mode {
            Some(mode) => (mode, false),
            None if is_loopback(host) => (SslMode::Prefer, true),
            None => (SslMode::VerifyFull, true),
        };
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("`sslcert` and `sslkey` go together: give both or neither".into());
        }
        if mode == SslMode::Disable && (self.root_cert.is_some() || self.client_cert.is_some()) {
            return Err(
                "`sslmode = \"disable\"` uses no certificate: remove `sslrootcert`/`sslcert`/`sslkey`, \
                 or choose another mode"
                    .into(),
            );
        }
        Ok(Tls {
            mode,
            mode_is_default,
            root_cert: self.root_cert,
            client_cert: self.client_cert,
            client_key: self.client_key,
        })
    }
}

fn list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

impl Tls {
    /// The settings for a target given no TLS settings at all.
    pub fn default_for(host: &str) -> Tls {
        TlsSpec::default()
            .resolve(host)
            .expect("no settings are always consistent")
    }

    /// The message for a connection that failed in its TLS step: which mode failed, the
    /// driver's reason (with the key's path taken out), and what to set.
    pub(crate) fn failure(&self, cause: &str) -> String {
        let mut cause = cause.to_owned();
        if let Some(key) = &self.client_key
            && !key.expose().is_empty()
        {
            cause = cause.replace(key.expose(), "***");
        }
        let origin = if self.mode_is_default {
            " (the default for a host that is not loopback)"
        } else {
            ""
        };
        let hint = match self.mode {
            _ if cause.contains("does not support TLS") => {
                "turn TLS on in the server, or set `sslmode = \"prefer\"` to allow a plain connection"
            }
            SslMode::VerifyFull
                if cause.contains("NotValidForName") || cause.contains("not valid for name") =>
            {
                "connect with a host name the server's certificate names, or set `sslmode = \"verify-ca\"` \
                 to check the CA only"
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                "set `sslrootcert` (MySQL: `ssl-ca`) to the CA certificate that signed the server's \
                 certificate"
            }
            _ => "check the server's TLS settings, and `sslmode` in `[databases.NAME]`",
        };
        format!(
            "TLS with `sslmode={}`{origin} failed: {cause}; hint: {hint}",
            self.mode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_depend_on_loopback() {
        assert_eq!(Tls::default_for("127.0.0.1").mode, SslMode::Prefer);
        assert_eq!(Tls::default_for("localhost").mode, SslMode::Prefer);
        assert_eq!(Tls::default_for("::1").mode, SslMode::Prefer);
        assert_eq!(Tls::default_for("db.example.com").mode, SslMode::VerifyFull);
        assert_eq!(Tls::default_for("10.0.0.5").mode, SslMode::VerifyFull);
    }

    #[test]
    fn both_spellings_of_each_mode() {
        for (a, b) in [
            ("disable", "DISABLED"),
            ("prefer", "PREFERRED"),
            ("require", "REQUIRED"),
            ("verify-ca", "VERIFY_CA"),
            ("verify-full", "VERIFY_IDENTITY"),
        ] {
            assert_eq!(SslMode::parse(a).unwrap(), SslMode::parse(b).unwrap());
        }
        assert!(
            SslMode::parse("verify")
                .unwrap_err()
                .contains("verify-full")
        );
    }

    #[test]
    fn unknown_parameters_are_refused_with_a_suggestion() {
        let e = TlsSpec::from_url_params(DatabaseKind::Postgres, params(&[("sslmdoe", "require")]))
            .unwrap_err();
        assert!(e.contains("did you mean `sslmode`"), "{e}");
        let e = TlsSpec::from_url_params(DatabaseKind::Mysql, params(&[("sslmode", "require")]))
            .unwrap_err();
        assert!(e.contains("did you mean `ssl-mode`"), "{e}");
        let e =
            TlsSpec::from_url_params(DatabaseKind::Postgres, params(&[("pool", "3")])).unwrap_err();
        assert!(e.contains("takes `sslmode`"), "{e}");
    }

    #[test]
    fn the_key_path_never_shows() {
        let spec = TlsSpec::from_url_params(
            DatabaseKind::Postgres,
            params(&[("sslcert", "/c.pem"), ("sslkey", "/very/secret.key")]),
        )
        .unwrap();
        let tls = spec.resolve("db.example.com").unwrap();
        let shown = format!(
            "{tls:?} {}",
            tls.failure("cannot read /very/secret.key: denied")
        );
        assert!(!shown.contains("secret.key"), "{shown}");
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        let half = TlsSpec {
            client_cert: Some("/c.pem".into()),
            ..TlsSpec::default()
        };
        assert!(half.resolve("h").is_err());
        let disable = TlsSpec {
            mode: Some(SslMode::Disable),
            root_cert: Some("/ca.pem".into()),
            ..TlsSpec::default()
        };
        assert!(disable.resolve("h").is_err());
        let both = TlsSpec {
            mode: Some(SslMode::Require),
            ..TlsSpec::default()
        };
        assert!(both.clone().merge(both).is_err());
    }
}
