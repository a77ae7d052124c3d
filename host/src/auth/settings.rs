//! `[auth]` of trellis.toml: the mode, and for `jwt` the algorithm, key, audience, issuer,
//! leeway and claim names; checked when the file loads (the key itself is read at start).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::values::{HumanDuration, Interpolated, ResolveError, Secret, relative_to};

/// `[auth]` as written; which keys apply depends on `mode`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    mode: Option<RawAuthMode>,
    algorithm: Option<crate::auth::JwtAlgorithm>,
    key: Option<Interpolated<Secret>>,
    key_file: Option<Interpolated<PathBuf>>,
    audience: Option<Interpolated<String>>,
    issuer: Option<Interpolated<String>>,
    leeway: Option<Interpolated<HumanDuration>>,
    claims: Option<RawClaimNames>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawAuthMode {
    #[default]
    None,
    Dev,
    Jwt,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaimNames {
    user_id: Option<String>,
    tenant_id: Option<String>,
    email: Option<String>,
    roles: Option<String>,
    attributes: Option<String>,
}

/// The largest `auth.leeway`: more would let expired tokens live on.
const MAX_AUTH_LEEWAY: Duration = Duration::from_secs(300);

pub(crate) fn resolve(
    raw: Option<toml::Spanned<RawAuth>>,
    base: &Path,
    source: &dyn std::fmt::Display,
) -> Result<crate::auth::AuthConfig, ResolveError> {
    use crate::auth::{AuthConfig, AuthMode, ClaimNames, JwtConfig, KeySource};
    let Some(spanned) = raw else {
        return Ok(AuthConfig::default());
    };
    let span = spanned.span();
    let raw = spanned.into_inner();
    let fail = |message: String| ResolveError {
        span: span.clone(),
        key: "auth".into(),
        message,
    };
    // Keys of the other modes are ignored, so switching `mode` back and forth needs no other edit.
    let mode = match raw.mode.unwrap_or_default() {
        RawAuthMode::None => AuthMode::None,
        RawAuthMode::Dev => AuthMode::Dev,
        RawAuthMode::Jwt => {
            let algorithm = raw.algorithm.ok_or_else(|| {
                fail("`mode = \"jwt\"` needs `algorithm` (`HS256`, `RS256` or `EdDSA`)".into())
            })?;
            let key = match (raw.key, raw.key_file) {
                (Some(key), None) => KeySource::Inline {
                    key: key.0,
                    origin: format!("`auth.key` in {source}"),
                },
                (None, Some(file)) => KeySource::File(relative_to(base, file.0)),
                (None, None) => {
                    return Err(fail(
                        "`mode = \"jwt\"` needs `key` (the HS256 key or a PEM public key) or \
                         `key_file` (a file holding it)"
                            .into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(fail("give either `key` or `key_file`, not both".into()));
                }
            };
            let audience = raw
                .audience
                .map(|a| a.0)
                .filter(|a| !a.trim().is_empty())
                .ok_or_else(|| {
                    fail(
                        "`mode = \"jwt\"` needs `audience`: the `aud` value every token must \
                         carry for this server"
                            .into(),
                    )
                })?;
            let leeway = raw.leeway.map_or(Duration::from_secs(30), |l| l.0.0);
            if leeway > MAX_AUTH_LEEWAY {
                return Err(fail(format!(
                    "`leeway` must be at most {}s, not {}s",
                    MAX_AUTH_LEEWAY.as_secs(),
                    leeway.as_secs()
                )));
            }
            let mut claims = ClaimNames::default();
            if let Some(names) = raw.claims {
                for (given, slot, key) in [
                    (names.user_id, &mut claims.user_id, "user_id"),
                    (names.tenant_id, &mut claims.tenant_id, "tenant_id"),
                    (names.email, &mut claims.email, "email"),
                    (names.roles, &mut claims.roles, "roles"),
                    (names.attributes, &mut claims.attributes, "attributes"),
                ] {
                    if let Some(name) = given {
                        if name.is_empty() {
                            return Err(fail(format!("`claims.{key}` must name a claim")));
                        }
                        *slot = name;
                    }
                }
            }
            AuthMode::Jwt(Box::new(JwtConfig {
                algorithm,
                key,
                audience,
                issuer: raw.issuer.map(|i| i.0).filter(|i| !i.is_empty()),
                leeway,
                claims,
            }))
        }
    };
    Ok(AuthConfig { mode })
}
