//! Why a caller is not authenticated ([`AuthError`], shown to the caller) and why the configured
//! mode cannot start ([`AuthSetupError`], shown to the operator). Neither ever holds key material
//! or echoes a token.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;

use super::JwtAlgorithm;

/// Why a request proves no user. Every message is safe to send back to the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Auth mode `none`: nobody can be authenticated.
    #[error("authentication is not configured on this server")]
    NotConfigured,
    /// Jwt mode, and no `Authorization` header.
    #[error("no credentials: send `Authorization: Bearer <token>`")]
    MissingBearer,
    /// Dev mode, and no `X-Trellis-User` header.
    #[error("no credentials: send the user as JSON in an `X-Trellis-User` header")]
    MissingDevUser,
    /// Jwt mode, and an `X-Trellis-User` header: callers never set their own user.
    #[error("X-Trellis-User is accepted only in dev mode")]
    DevHeaderRefused,
    /// Dev mode, and only a bearer token.
    #[error(
        "bearer tokens are not read in dev mode: send the user as JSON in an `X-Trellis-User` header"
    )]
    BearerInDevMode,
    /// The `Authorization` header is not `Bearer <token>`.
    #[error("the `Authorization` header must be `Bearer <token>`")]
    MalformedAuthorization,
    /// A credential header was sent more than once.
    #[error("more than one `{0}` header: send exactly one")]
    DuplicateHeader(&'static str),
    /// Dev mode: the header is not a user.
    #[error("`X-Trellis-User` is not a valid user: {0}")]
    InvalidDevUser(String),
    /// Jwt mode: the token failed verification.
    #[error("invalid bearer token: {0}")]
    InvalidToken(String),
    /// Jwt mode: the token verified but carries no user id.
    #[error("the token has no `{0}` claim (the user id)")]
    MissingUserId(String),
    /// The identity (dev header or token) has a control character in a field that reaches logs.
    #[error("the user's `{0}` contains a control character (a newline, tab or escape)")]
    ControlCharacter(&'static str),
    /// Jwt mode: a mapped claim has the wrong shape.
    #[error("the token's `{claim}` claim must be {expected}")]
    BadClaim {
        /// The claim's name.
        claim: String,
        /// What it must be (`an array of strings`).
        expected: &'static str,
    },
}

impl AuthError {
    /// The HTTP status to answer with: 401 for every credential problem.
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    /// What the caller (or operator) can do about it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            AuthError::NotConfigured => Some(
                "set `[auth] mode = \"jwt\"` (or `\"dev\"` on a loopback address) in trellis.toml; \
                 see the README's Authentication section",
            ),
            AuthError::MissingDevUser | AuthError::InvalidDevUser(_) => Some(
                "X-Trellis-User: {\"user_id\": \"alice\", \"roles\": [\"analyst\"], \
                 \"attributes\": {\"department\": \"finance\"}}",
            ),
            _ => None,
        }
    }

    /// Whether a token was presented and rejected (RFC 6750 `error="invalid_token"`).
    pub fn is_invalid_token(&self) -> bool {
        matches!(
            self,
            AuthError::InvalidToken(_) | AuthError::MissingUserId(_) | AuthError::BadClaim { .. }
        )
    }
}

/// Why the configured auth mode cannot start.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum AuthSetupError {
    /// Dev mode on an address other machines can reach.
    #[error(
        "auth mode `dev` is refused on `{listen}`: it trusts the `X-Trellis-User` header from any \
         caller, so it may listen only on a loopback address"
    )]
    #[diagnostic(help(
        "listen on 127.0.0.1 \
         (`trellis serve --listen 127.0.0.1:8700`), or set `[auth] mode = \"jwt\"`"
    ))]
    DevNotLoopback {
        /// The listen address given.
        listen: SocketAddr,
    },
    /// `auth.key_file` could not be read.
    #[error("cannot read the JWT key file `{path}`", path = path.display())]
    #[diagnostic(help(
        "`key_file` is resolved against the \
         directory of trellis.toml"
    ))]
    KeyRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The key was read but is not a usable key for the algorithm.
    #[error("the JWT key ({origin}) is not a usable {algorithm} key: {reason}")]
    #[diagnostic(help("{hint}"))]
    BadKey {
        /// Where the key came from (never the key).
        origin: String,
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// What is wrong with it.
        reason: String,
        /// What to give instead.
        hint: &'static str,
    },
}
