//! Jwt mode: the key loaded and checked at start, bearer tokens verified per request (signature,
//! the one configured algorithm, `exp`, `nbf`, `aud`, `iss`), and claims mapped onto the user.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::{AuthError, AuthSetupError, ClaimNames, JwtAlgorithm, JwtConfig, KeySource};
use crate::policy::UserContext;

/// The shortest HS256 key accepted: the hash size, as RFC 7518 §3.2 requires.
const MIN_HMAC_KEY_BYTES: usize = 32;
/// The shortest RSA modulus accepted.
const MIN_RSA_BITS: usize = 2048;

/// A parsed key and the checks every token must pass.
pub(super) struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: JwtAlgorithm,
    claims: ClaimNames,
}

impl JwtVerifier {
    /// Reads and parses the key; a key that cannot verify `config.algorithm` is an error here.
    pub(super) fn new(config: &JwtConfig) -> Result<JwtVerifier, AuthSetupError> {
        let key = load_key(&config.key, config.algorithm)?;
        let mut validation = Validation::new(algorithm(config.algorithm));
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_audience(&[&config.audience]);
        let mut required = vec!["exp", "aud"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtVerifier {
            key,
            validation,
            algorithm: config.algorithm,
            claims: config.claims.clone(),
        })
    }

    /// Verifies `token` and maps its claims onto a user.
    pub(super) fn verify(&self, token: &str) -> Result<UserContext, AuthError> {
        // RFC 7515 §4.1.11: a header that marks extensions critical must be refused by a
        // verifier that does not understand them, and this one understands none.
        if header_has_crit(token) {
            return Err(AuthError::InvalidToken(
                "the token's header marks extensions critical (`crit`), and this server \
                 understands none"
                    .into(),
            ));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| self.token_error(token, e.kind()))?;
        user_from_claims(data.claims, &self.claims)
    }

    /// What to tell the caller about a failed verification (never the token or the key).
    fn token_error(&self, token: &str, kind: &ErrorKind) -> AuthError {
        let expected = self.algorithm;
        let reason = match kind {
            ErrorKind::InvalidSignature => "the signature does not verify".to_owned(),
            ErrorKind::ExpiredSignature => "the token has expired (`exp`)".to_owned(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".to_owned(),
            ErrorKind::InvalidAudience => "the audience (`aud`) does not name this server".into(),
            ErrorKind::InvalidIssuer => "the issuer (`iss`) is not accepted here".to_owned(),
            ErrorKind::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
            ErrorKind::InvalidClaimFormat(claim) => format!("the `{claim}` claim is malformed"),
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm => wrong_algorithm(token, expected),
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_) => match header_algorithm(token) {
                // An `alg` the library does not know (`none`, `HS1024`) fails header parsing.
                Some(alg) if alg != expected.as_str() => wrong_algorithm(token, expected),
                _ => "not a well-formed JWT".to_owned(),
            },
            other => {
                // A key problem: the key was checked at start, so this is not the caller's fault.
                tracing::error!(error = ?other, "a bearer token could not be verified");
                "the token could not be verified".to_owned()
            }
        };
        AuthError::InvalidToken(reason)
    }
}

fn wrong_algorithm(token: &str, expected: JwtAlgorithm) -> String {
    match header_algorithm(token) {
        Some(alg) => {
            format!("the token is signed with `{alg}`; this server accepts only `{expected}`")
        }
        None => {
            format!("the token names no usable algorithm; this server accepts only `{expected}`")
        }
    }
}

/// `token`'s header as JSON, when it decodes.
fn header_json(token: &str) -> Option<Value> {
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `token`'s header has a `crit` parameter (in any form: even an empty or malformed
/// one is refused, as RFC 7515 §4.1.11 forbids both).
fn header_has_crit(token: &str) -> bool {
    header_json(token).is_some_and(|h| h.get("crit").is_some())
}

/// The `alg` of `token`'s header when it is a short plain name (so it is safe to repeat).
fn header_algorithm(token: &str) -> Option<String> {
    let header = header_json(token)?;
    let alg = header.get("alg")?.as_str()?;
    (alg.len() <= 16 && alg.chars().all(|c| c.is_ascii_alphanumeric())).then(|| alg.to_owned())
}

fn algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// The token of `Authorization: Bearer <token>`.
pub(super) fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingBearer)?;
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader("Authorization"));
    }
    let text = value
        .to_str()
        .map_err(|_| AuthError::MalformedAuthorization)?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MalformedAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::MalformedAuthorization);
    }
    Ok(token)
}

/// Reads the key from its source and parses it for `algorithm`.
fn load_key(source: &KeySource, algorithm: JwtAlgorithm) -> Result<DecodingKey, AuthSetupError> {
    let text = match source {
        KeySource::Inline { key, .. } => key.expose().to_owned(),
        KeySource::File(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::KeyRead {
                path: path.clone(),
                source,
            })?;
            // A key file usually ends with a newline that is not part of an HS256 key.
            text.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    let bad = |reason: String, hint: &'static str| AuthSetupError::BadKey {
        origin: source.to_string(),
        algorithm,
        reason,
        hint,
    };
    const PUBLIC_PEM_HINT: &str = "give the public key as PEM (`-----BEGIN PUBLIC KEY-----`); \
         `openssl pkey -in private.pem -pubout` prints it";
    if algorithm != JwtAlgorithm::Hs256 && text.contains("PRIVATE KEY-----") {
        return Err(bad(
            "it is a private key; the server needs only the public key".into(),
            PUBLIC_PEM_HINT,
        ));
    }
    match algorithm {
        JwtAlgorithm::Hs256 => {
            if text.len() < MIN_HMAC_KEY_BYTES {
                return Err(bad(
                    format!(
                        "it is {} bytes long; HS256 needs at least {MIN_HMAC_KEY_BYTES}",
                        text.len()
                    ),
                    "use a random key of 32 bytes or more, e.g. `openssl rand -base64 48`",
                ));
            }
            Ok(DecodingKey::from_secret(text.as_bytes()))
        }
        JwtAlgorithm::Rs256 => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::pkcs8::DecodePublicKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPublicKey::from_public_key_pem(text.trim())
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(text.trim()))
                .map_err(|e| {
                    bad(
                        format!("not an RSA public key in PEM form: {e}"),
                        PUBLIC_PEM_HINT,
                    )
                })?;
            let bits = key.size() * 8;
            if bits < MIN_RSA_BITS {
                return Err(bad(
                    format!("it has {bits} bits; at least {MIN_RSA_BITS} are needed"),
                    "use an RSA key of 2048 bits or more",
                ));
            }
            Ok(DecodingKey::from_rsa_raw_components(
                &key.n().to_bytes_be(),
                &key.e().to_bytes_be(),
            ))
        }
        JwtAlgorithm::EdDsa => {
            use ed25519_dalek::pkcs8::DecodePublicKey;
            let key =
                ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
                    bad(
                        format!("not an Ed25519 public key in PEM form: {e}"),
                        PUBLIC_PEM_HINT,
                    )
                })?;
            Ok(DecodingKey::from_ed_der(key.as_bytes()))
        }
    }
}

/// Maps verified claims onto a user: the id is required, the rest default to empty.
pub(super) fn user_from_claims(
    mut claims: Map<String, Value>,
    names: &ClaimNames,
) -> Result<UserContext, AuthError> {
    let bad = |claim: &str, expected: &'static str| AuthError::BadClaim {
        claim: claim.to_owned(),
        expected,
    };
    let mut take = |name: &str| match claims.remove(name) {
        None | Some(Value::Null) => None,
        Some(value) => Some(value),
    };
    let user_id = match take(&names.user_id) {
        None => return Err(AuthError::MissingUserId(names.user_id.clone())),
        Some(Value::String(id)) if !id.trim().is_empty() => id,
        Some(_) => return Err(bad(&names.user_id, "a non-empty string")),
    };
    let mut string = |name: &str| match take(name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(name, "a string")),
    };
    let tenant_id = string(&names.tenant_id)?;
    let email = string(&names.email)?;
    let roles = match take(&names.roles) {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(role) => Ok(role),
                _ => Err(bad(&names.roles, "an array of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(&names.roles, "an array of strings")),
    };
    let attributes = match take(&names.attributes) {
        None => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad(&names.attributes, "an object")),
    };
    Ok(UserContext {
        user_id,
        tenant_id,
        email,
        roles,
        attributes,
    })
}
