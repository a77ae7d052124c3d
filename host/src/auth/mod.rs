//! Who is calling: the `[auth]` settings and the [`Authenticator`] that turns a request's headers
//! into the [`UserContext`] every decision is made for.
//!
//! Three modes. `none` (the default) authenticates nobody: every route that needs a user answers
//! 401 with a hint to configure `[auth]`. `jwt` verifies `Authorization: Bearer <token>` (HS256,
//! RS256 or EdDSA; signature, algorithm, `exp`, `nbf`, `aud`, `iss`) and maps the token's claims
//! onto the user, so a caller can never choose their own attributes. `dev` trusts a JSON user in
//! the `X-Trellis-User` header; it is refused unless the host listens on a loopback address.

mod dev;
mod error;
mod jwt;
pub(crate) mod settings;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;

use crate::config::values::Secret;
use crate::policy::UserContext;

pub use error::{AuthError, AuthSetupError};

/// The header dev mode reads the user from.
pub const DEV_USER_HEADER: &str = "x-trellis-user";

/// `[auth]`: how callers are identified.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `mode`, with the settings that mode needs.
    pub mode: AuthMode,
}

/// `auth.mode`.
#[derive(Debug, Clone, Default)]
pub enum AuthMode {
    /// `"none"`: nobody is authenticated; routes that need a user answer 401.
    #[default]
    None,
    /// `"dev"`: the `X-Trellis-User` header is trusted as is (loopback addresses only).
    Dev,
    /// `"jwt"`: bearer tokens, verified.
    Jwt(Box<JwtConfig>),
}

/// The `jwt` mode settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The one algorithm tokens must be signed with.
    pub algorithm: JwtAlgorithm,
    /// The HS256 key, or the PEM public key for RS256 and EdDSA.
    pub key: KeySource,
    /// The `aud` every token must carry.
    pub audience: String,
    /// The `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf`.
    pub leeway: Duration,
    /// Which claims hold the user's fields.
    pub claims: ClaimNames,
}

/// The JWT signature algorithms Trellis verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256, a shared key.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, an RSA public key.
    #[serde(rename = "RS256")]
    Rs256,
    /// Ed25519, an Ed25519 public key.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl JwtAlgorithm {
    /// The name used in JWT headers and in `trellis.toml`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the JWT key comes from. Display names the source, never the key.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `auth.key`: the key itself (from the file or an environment variable).
    Inline {
        /// The key: HS256 bytes or PEM text.
        key: Secret,
        /// Where it was written, for messages (`` `auth.key` in ./trellis.toml ``).
        origin: String,
    },
    /// `auth.key_file`: a file holding the key, resolved against the config file's directory.
    File(PathBuf),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Inline { origin, .. } => f.write_str(origin),
            KeySource::File(path) => write!(f, "key file `{}`", path.display()),
        }
    }
}

/// `[auth.claims]`: the token claims that become the user's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimNames {
    /// The user id (default `sub`); required in every token.
    pub user_id: String,
    /// The tenant (default `tenant`).
    pub tenant_id: String,
    /// The e-mail address (default `email`).
    pub email: String,
    /// The roles, an array of strings (default `roles`).
    pub roles: String,
    /// The attributes, an object (default `attributes`).
    pub attributes: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            user_id: "sub".into(),
            tenant_id: "tenant".into(),
            email: "email".into(),
            roles: "roles".into(),
            attributes: "attributes".into(),
        }
    }
}

/// Turns request headers into the user they prove. Built once at start; cheap to share.
pub struct Authenticator {
    inner: Inner,
}

enum Inner {
    None,
    Dev,
    Jwt(Box<jwt::JwtVerifier>),
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Prepares the configured mode for a host listening on `listen`.
    ///
    /// Dev mode is refused unless `listen` is a loopback address, and announced with a warning
    /// when allowed. In jwt mode the key is read and parsed here, so a bad key stops the start.
    pub fn new(config: &AuthConfig, listen: SocketAddr) -> Result<Authenticator, AuthSetupError> {
        let inner = match &config.mode {
            AuthMode::None => {
                tracing::info!(
                    "auth mode `none`: every route that needs a user answers 401 \
                     (set `[auth] mode` in trellis.toml)"
                );
                Inner::None
            }
            AuthMode::Dev => {
                if !listen.ip().to_canonical().is_loopback() {
                    return Err(AuthSetupError::DevNotLoopback { listen });
                }
                tracing::warn!(
                    "!!! AUTH MODE `dev`: the X-Trellis-User header is trusted as is, so any \
                     process on this machine may act as any user with any attributes. For local \
                     development only; use `[auth] mode = \"jwt\"` anywhere else !!!"
                );
                Inner::Dev
            }
            AuthMode::Jwt(jwt) => {
                let verifier = jwt::JwtVerifier::new(jwt)?;
                tracing::info!(
                    algorithm = %jwt.algorithm,
                    key = %jwt.key,
                    audience = %jwt.audience,
                    issuer = jwt.issuer.as_deref().unwrap_or("(any)"),
                    "auth mode `jwt`"
                );
                Inner::Jwt(Box::new(verifier))
            }
        };
        Ok(Authenticator { inner })
    }

    /// `"none"`, `"dev"` or `"jwt"`.
    pub fn mode(&self) -> &'static str {
        match self.inner {
            Inner::None => "none",
            Inner::Dev => "dev",
            Inner::Jwt(_) => "jwt",
        }
    }

    /// Whether callers authenticate with bearer tokens (jwt mode): 401 answers then carry a
    /// `WWW-Authenticate: Bearer` challenge.
    pub fn uses_bearer_tokens(&self) -> bool {
        matches!(self.inner, Inner::Jwt(_))
    }

    /// The user `headers` prove, or why they prove none.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<UserContext, AuthError> {
        let user = match &self.inner {
            Inner::None => Err(AuthError::NotConfigured),
            Inner::Dev => dev::user_from_headers(headers),
            Inner::Jwt(verifier) => {
                if headers.contains_key(DEV_USER_HEADER) {
                    return Err(AuthError::DevHeaderRefused);
                }
                let token = jwt::bearer_token(headers)?;
                verifier.verify(token)
            }
        }?;
        check_printable(&user)?;
        Ok(user)
    }
}

/// Refuses an identity with a control character (a newline, an escape) in its id, tenant,
/// e-mail or a role: such a value would forge lines in a text log and break every log reader
/// downstream, and no real identity needs one.
fn check_printable(user: &UserContext) -> Result<(), AuthError> {
    let fields = [
        ("user_id", user.user_id.as_str()),
        ("tenant_id", user.tenant_id.as_str()),
        ("email", user.email.as_str()),
    ];
    let roles = user.roles.iter().map(|r| ("roles", r.as_str()));
    match fields
        .into_iter()
        .chain(roles)
        .find(|(_, v)| v.chars().any(char::is_control))
    {
        Some((field, _)) => Err(AuthError::ControlCharacter(field)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
