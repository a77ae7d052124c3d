//! Unit tests of the auth modes: key loading, token checks, claims mapping, dev headers, and
//! that no message repeats a key or a token. The keys are the test-only ones in
//! `tests/fixtures/auth/`.

use crate::diagnostic::Plain;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use base64::Engine as _;
use jsonwebtoken::{EncodingKey, Header, get_current_timestamp};
use serde_json::{Value, json};

use super::*;

const HS_KEY: &str = "0123456789abcdef0123456789abcdef-test-only";
const RSA_PUBLIC: &str = include_str!("../../../tests/fixtures/auth/rsa-public.pem");
const RSA_PRIVATE: &str = include_str!("../../../tests/fixtures/auth/rsa-private.pem");
const OTHER_RSA_PRIVATE: &str = include_str!("../../../tests/fixtures/auth/other-rsa-private.pem");
const ED_PUBLIC: &str = include_str!("../../../tests/fixtures/auth/ed25519-public.pem");
const ED_PRIVATE: &str = include_str!("../../../tests/fixtures/auth/ed25519-private.pem");

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn jwt_config(algorithm: JwtAlgorithm, key: &str) -> JwtConfig {
    JwtConfig {
        algorithm,
        key: KeySource::Inline {
            key: crate::config::values::Secret::new(key),
            origin: "`auth.key` in test.toml".into(),
        },
        audience: "trellis".into(),
        issuer: None,
        leeway: Duration::from_secs(0),
        claims: ClaimNames::default(),
    }
}

fn jwt_auth(config: JwtConfig) -> Authenticator {
    Authenticator::new(
        &AuthConfig {
            mode: AuthMode::Jwt(Box::new(config)),
        },
        loopback(),
    )
    .unwrap()
}

/// The DER body of a PEM file.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn sign(alg: jsonwebtoken::Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        jsonwebtoken::Algorithm::HS256,
        &EncodingKey::from_secret(HS_KEY.as_bytes()),
        claims,
    )
}

fn claims() -> Value {
    json!({
        "sub": "alice",
        "aud": "trellis",
        "exp": get_current_timestamp() + 600,
        "tenant": "acme",
        "email": "alice@example.com",
        "roles": ["analyst"],
        "attributes": {"department": "finance.analysis", "security_clearance": "confidential"},
    })
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

/// Authenticates `token` and returns the error message, checking it never repeats the token.
fn rejection(auth: &Authenticator, token: &str) -> String {
    let err = auth.authenticate(&bearer(token)).unwrap_err();
    assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    let message = err.to_string();
    assert!(!message.contains(token), "{message}");
    assert!(!message.contains(HS_KEY), "{message}");
    message
}

#[test]
fn hs256_token_maps_claims_onto_the_user() {
    let auth = jwt_auth(jwt_config(JwtAlgorithm::Hs256, HS_KEY));
    assert_eq!(auth.mode(), "jwt");
    assert!(auth.uses_bearer_tokens());
    let user = auth.authenticate(&bearer(&hs(&claims()))).unwrap();
    assert_eq!(user.user_id, "alice");
    assert_eq!(user.tenant_id, "acme");
    assert_eq!(user.email, "alice@example.com");
    assert_eq!(user.roles, ["analyst"]);
    assert_eq!(user.attributes["department"], "finance.analysis");
}

#[test]
fn rs256_and_eddsa_tokens_verify_with_pem_public_keys() {
    let rs = jwt_auth(jwt_config(JwtAlgorithm::Rs256, RSA_PUBLIC));
    let token = sign(
        jsonwebtoken::Algorithm::RS256,
        &EncodingKey::from_rsa_der(&der(RSA_PRIVATE)),
        &claims(),
    );
    assert_eq!(rs.authenticate(&bearer(&token)).unwrap().user_id, "alice");
    let forged = sign(
        jsonwebtoken::Algorithm::RS256,
        &EncodingKey::from_rsa_der(&der(OTHER_RSA_PRIVATE)),
        &claims(),
    );
    assert!(rejection(&rs, &forged).contains("signature does not verify"));

    let ed = jwt_auth(jwt_config(JwtAlgorithm::EdDsa, ED_PUBLIC));
    let token = sign(
        jsonwebtoken::Algorithm::EdDSA,
        &EncodingKey::from_ed_der(&der(ED_PRIVATE)),
        &claims(),
    );
    assert_eq!(ed.authenticate(&bearer(&token)).unwrap().user_id, "alice");
    // An RS256 token against the EdDSA server: refused by name, before any key is tried.
    let message = rejection(
        &ed,
        &sign(
            jsonwebtoken::Algorithm::RS256,
            &EncodingKey::from_rsa_der(&der(RSA_PRIVATE)),
            &claims(),
        ),
    );
    assert_eq!(
        message,
        "invalid bearer token: the token is signed with `RS256`; this server accepts only `EdDSA`"
    );
}

#[test]
fn each_token_check_has_its_own_reason() {
    let mut config = jwt_config(JwtAlgorithm::Hs256, HS_KEY);
    config.issuer = Some("https://issuer.test".into());
    let auth = jwt_auth(config);
    let good = with(claims(), "iss", json!("https://issuer.test"));
    auth.authenticate(&bearer(&hs(&good))).unwrap();

    let now = get_current_timestamp();
    let cases = [
        (
            sign(
                jsonwebtoken::Algorithm::HS256,
                &EncodingKey::from_secret(b"another-key-another-key-another-key"),
                &good,
            ),
            "the signature does not verify",
        ),
        (hs(&with(good.clone(), "exp", json!(now - 10))), "expired"),
        (hs(&without(good.clone(), "exp")), "no `exp` claim"),
        (hs(&with(good.clone(), "exp", json!("soon"))), "`exp`"),
        (
            hs(&with(good.clone(), "nbf", json!(now + 600))),
            "not valid yet",
        ),
        (hs(&with(good.clone(), "aud", json!("other"))), "audience"),
        (
            hs(&with(good.clone(), "aud", json!(["a", "b"]))),
            "audience",
        ),
        (hs(&without(good.clone(), "aud")), "no `aud` claim"),
        (
            hs(&with(good.clone(), "iss", json!("https://evil.test"))),
            "issuer",
        ),
        (hs(&without(good.clone(), "iss")), "no `iss` claim"),
        (
            sign(
                jsonwebtoken::Algorithm::HS512,
                &EncodingKey::from_secret(HS_KEY.as_bytes()),
                &good,
            ),
            "signed with `HS512`; this server accepts only `HS256`",
        ),
        ("not-a-jwt".to_owned(), "not a well-formed JWT"),
        ("a.b.c".to_owned(), "not a well-formed JWT"),
    ];
    for (token, expected) in cases {
        let message = rejection(&auth, &token);
        assert!(message.contains(expected), "{expected}: {message}");
    }
    // Several audiences, one of them ours: accepted.
    auth.authenticate(&bearer(&hs(&with(
        good.clone(),
        "aud",
        json!(["other", "trellis"]),
    ))))
    .unwrap();
}

#[test]
fn unsigned_tokens_are_refused_by_algorithm() {
    let auth = jwt_auth(jwt_config(JwtAlgorithm::Hs256, HS_KEY));
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let token = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    assert_eq!(
        rejection(&auth, &token),
        "invalid bearer token: the token is signed with `none`; this server accepts only `HS256`"
    );
}

#[test]
fn leeway_tolerates_small_clock_skew() {
    let mut config = jwt_config(JwtAlgorithm::Hs256, HS_KEY);
    config.leeway = Duration::from_secs(60);
    let auth = jwt_auth(config);
    let now = get_current_timestamp();
    let token = hs(&with(claims(), "exp", json!(now - 5)));
    auth.authenticate(&bearer(&token)).unwrap();
    let token = hs(&with(claims(), "nbf", json!(now + 5)));
    auth.authenticate(&bearer(&token)).unwrap();
}

#[test]
fn claims_mapping_defaults_custom_names_and_shapes() {
    let names = ClaimNames::default();
    let map = |v: Value| jwt::user_from_claims(v.as_object().unwrap().clone(), &names);

    let user = map(json!({"sub": "bob", "tenant": null})).unwrap();
    assert_eq!(user.user_id, "bob");
    assert_eq!(user.tenant_id, "");
    assert!(user.roles.is_empty() && user.attributes.is_empty());

    let err = map(json!({"email": "x@y"})).unwrap_err().to_string();
    assert_eq!(err, "the token has no `sub` claim (the user id)");
    let err = map(json!({"sub": ""})).unwrap_err().to_string();
    assert_eq!(err, "the token's `sub` claim must be a non-empty string");
    let err = map(json!({"sub": 7})).unwrap_err().to_string();
    assert_eq!(err, "the token's `sub` claim must be a non-empty string");
    let err = map(json!({"sub": "b", "roles": "admin"}))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the token's `roles` claim must be an array of strings");
    let err = map(json!({"sub": "b", "roles": ["a", 1]}))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the token's `roles` claim must be an array of strings");
    let err = map(json!({"sub": "b", "attributes": ["x"]}))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the token's `attributes` claim must be an object");
    let err = map(json!({"sub": "b", "tenant": 3}))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "the token's `tenant` claim must be a string");

    let custom = ClaimNames {
        user_id: "preferred_username".into(),
        tenant_id: "org".into(),
        email: "mail".into(),
        roles: "https://trellis.example/roles".into(),
        attributes: "abac".into(),
    };
    let user = jwt::user_from_claims(
        json!({
            "sub": "ignored", "preferred_username": "carol", "org": "o1", "mail": "c@o1",
            "https://trellis.example/roles": ["hr_manager"], "abac": {"region": "eu_west"},
            "attributes": {"department": "not read"},
        })
        .as_object()
        .unwrap()
        .clone(),
        &custom,
    )
    .unwrap();
    assert_eq!(
        serde_json::to_value(&user).unwrap(),
        json!({"user_id": "carol", "tenant_id": "o1", "email": "c@o1",
               "roles": ["hr_manager"], "attributes": {"region": "eu_west"}})
    );
}

#[test]
fn jwt_mode_refuses_the_dev_header_and_bad_authorization() {
    let auth = jwt_auth(jwt_config(JwtAlgorithm::Hs256, HS_KEY));
    let mut headers = bearer(&hs(&claims()));
    headers.insert(
        DEV_USER_HEADER,
        HeaderValue::from_static(r#"{"user_id":"root","roles":["admin"]}"#),
    );
    let err = auth.authenticate(&headers).unwrap_err();
    assert_eq!(
        err.to_string(),
        "X-Trellis-User is accepted only in dev mode"
    );

    let err = auth.authenticate(&HeaderMap::new()).unwrap_err();
    assert!(matches!(err, AuthError::MissingBearer), "{err}");
    assert!(!err.is_invalid_token());
    for value in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "token"] {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static(value));
        let err = auth.authenticate(&h).unwrap_err();
        assert!(
            matches!(err, AuthError::MalformedAuthorization),
            "{value}: {err}"
        );
    }
    let mut h = bearer(&hs(&claims()));
    h.append(AUTHORIZATION, HeaderValue::from_static("Bearer x"));
    assert!(matches!(
        auth.authenticate(&h).unwrap_err(),
        AuthError::DuplicateHeader(_)
    ));
    // The scheme is case-insensitive.
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("bearer {}", hs(&claims()))).unwrap(),
    );
    auth.authenticate(&h).unwrap();
}

#[test]
fn bad_keys_stop_the_start_naming_the_source_not_the_key() {
    let setup = |config: JwtConfig| {
        Authenticator::new(
            &AuthConfig {
                mode: AuthMode::Jwt(Box::new(config)),
            },
            loopback(),
        )
        .unwrap_err()
        .plain()
    };
    let err = setup(jwt_config(JwtAlgorithm::Hs256, "short-key"));
    assert!(err.contains("`auth.key` in test.toml"), "{err}");
    assert!(
        err.contains("9 bytes long; HS256 needs at least 32"),
        "{err}"
    );
    assert!(!err.contains("short-key"), "{err}");

    let err = setup(jwt_config(JwtAlgorithm::Rs256, RSA_PRIVATE));
    assert!(err.contains("it is a private key"), "{err}");
    assert!(err.contains("help: give the public key as PEM"), "{err}");
    assert!(!err.contains("MII"), "{err}");

    let err = setup(jwt_config(JwtAlgorithm::Rs256, ED_PUBLIC));
    assert!(err.contains("not an RSA public key in PEM form"), "{err}");
    let err = setup(jwt_config(JwtAlgorithm::EdDsa, RSA_PUBLIC));
    assert!(
        err.contains("not an Ed25519 public key in PEM form"),
        "{err}"
    );
    let err = setup(jwt_config(JwtAlgorithm::EdDsa, "garbage-garbage"));
    assert!(err.contains("not a usable EdDSA key"), "{err}");
    assert!(!err.contains("garbage"), "{err}");

    let mut config = jwt_config(JwtAlgorithm::Rs256, "");
    config.key = KeySource::File("/nonexistent/trellis-test/key.pem".into());
    let err = setup(config);
    assert!(
        err.starts_with("cannot read the JWT key file `/nonexistent/trellis-test/key.pem`"),
        "{err}"
    );
}

#[test]
fn key_file_is_read_and_a_trailing_newline_is_not_part_of_an_hs256_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hs.key");
    std::fs::write(&path, format!("{HS_KEY}\n")).unwrap();
    let mut config = jwt_config(JwtAlgorithm::Hs256, "");
    config.key = KeySource::File(path);
    let auth = jwt_auth(config);
    auth.authenticate(&bearer(&hs(&claims()))).unwrap();
    assert!(!format!("{auth:?}").contains(HS_KEY));
}

#[test]
fn none_mode_answers_401_with_a_hint() {
    let auth = Authenticator::new(&AuthConfig::default(), loopback()).unwrap();
    assert_eq!(auth.mode(), "none");
    let err = auth.authenticate(&bearer(&hs(&claims()))).unwrap_err();
    assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    assert!(matches!(err, AuthError::NotConfigured));
    assert!(err.hint().unwrap().contains("[auth] mode"));
}

fn dev() -> Authenticator {
    Authenticator::new(
        &AuthConfig {
            mode: AuthMode::Dev,
        },
        loopback(),
    )
    .unwrap()
}

fn dev_header(value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(DEV_USER_HEADER, HeaderValue::from_str(value).unwrap());
    h
}

#[test]
fn dev_mode_only_on_loopback() {
    for addr in [
        "127.0.0.1:8700",
        "127.0.0.2:0",
        "[::1]:0",
        "[::ffff:127.0.0.1]:0",
    ] {
        let auth = Authenticator::new(
            &AuthConfig {
                mode: AuthMode::Dev,
            },
            addr.parse().unwrap(),
        );
        assert_eq!(auth.unwrap().mode(), "dev", "{addr}");
    }
    for addr in ["0.0.0.0:0", "[::]:8700", "192.0.2.7:80"] {
        let err = Authenticator::new(
            &AuthConfig {
                mode: AuthMode::Dev,
            },
            addr.parse().unwrap(),
        )
        .unwrap_err()
        .plain();
        assert!(
            err.starts_with(&format!("auth mode `dev` is refused on `{addr}`")),
            "{err}"
        );
        assert!(err.contains("help: listen on 127.0.0.1"), "{err}");
    }
}

#[test]
fn dev_mode_reads_the_user_header() {
    let auth = dev();
    assert!(!auth.uses_bearer_tokens());
    let user = auth
        .authenticate(&dev_header(
            r#"{"user_id":"ana","roles":["hr_manager"],"attributes":{"department":"hr"}}"#,
        ))
        .unwrap();
    assert_eq!(user.user_id, "ana");
    assert_eq!(user.roles, ["hr_manager"]);

    let reason = |v: &str| auth.authenticate(&dev_header(v)).unwrap_err().to_string();
    assert!(reason("not json").starts_with("`X-Trellis-User` is not a valid user: expected"));
    assert!(
        reason(r#"{"user_id":"a","role":["x"]}"#).contains("unknown field `role`"),
        "{}",
        reason(r#"{"user_id":"a","role":["x"]}"#)
    );
    assert!(reason(r#"{"roles":[]}"#).contains("missing field `user_id`"));
    assert!(reason(r#"{"user_id":" "}"#).contains("`user_id` is empty"));

    let err = auth.authenticate(&HeaderMap::new()).unwrap_err();
    assert!(matches!(err, AuthError::MissingDevUser));
    assert!(err.hint().is_some());
    let err = auth.authenticate(&bearer("abc")).unwrap_err();
    assert!(matches!(err, AuthError::BearerInDevMode), "{err}");
    let mut h = dev_header(r#"{"user_id":"a"}"#);
    h.append(
        DEV_USER_HEADER,
        HeaderValue::from_static(r#"{"user_id":"b"}"#),
    );
    assert!(matches!(
        auth.authenticate(&h).unwrap_err(),
        AuthError::DuplicateHeader(_)
    ));
}
