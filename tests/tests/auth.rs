//! Authentication over HTTP against the real `trellis serve`: JWT (HS256, RS256, EdDSA) accepted
//! and refused for each reason, dev mode's header, dev mode refused off loopback, and mode `none`.
//! `GET /v1/whoami` is the route under test: it needs a user and returns it.
//!
//! The keys are the test-only ones in `tests/fixtures/auth/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use trellis_tests::{Server, run_trellis};

const HS_KEY: &str = "e2e-hs256-key-0123456789abcdef0123456789";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/auth")
        .join(name)
}

fn pem(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

/// The DER body of a PEM private key (PKCS#1 for RSA, PKCS#8 for Ed25519).
fn der(name: &str) -> Vec<u8> {
    let body: String = pem(name)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({
        "sub": "alice",
        "aud": "trellis-e2e",
        "exp": now() + 600,
        "tenant": "acme",
        "email": "alice@example.com",
        "roles": ["analyst"],
        "attributes": {"department": "finance.analysis"},
    })
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(HS_KEY.as_bytes()),
        claims,
    )
}

/// A temp folder holding `trellis.toml` with `config`.
fn folder(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("trellis.toml"), config).unwrap();
    dir
}

/// `GET /v1/whoami` with `headers`: status, `WWW-Authenticate` (if any) and the JSON body.
async fn whoami(server: &Server, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new().get(format!("{}/v1/whoami", server.base_url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, challenge, response.json().await.unwrap())
}

async fn with_token(server: &Server, token: &str) -> (u16, Option<String>, Value) {
    whoami(server, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Asserts a 401 whose message contains `reason`, and returns the message.
fn refused(answer: (u16, Option<String>, Value), reason: &str) -> String {
    let (status, _, body) = answer;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["kind"], "unauthenticated", "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains(reason),
        "expected `{reason}` in: {message}"
    );
    message
}

#[tokio::test]
async fn jwt_hs256_accepts_good_tokens_and_refuses_each_bad_one() {
    let dir = folder(
        "[auth]\nmode = \"jwt\"\nalgorithm = \"HS256\"\nkey = \"${TRELLIS_E2E_JWT_KEY}\"\n\
         audience = \"trellis-e2e\"\nleeway = \"0s\"\n",
    );
    let server = Server::start_with_env(dir.path(), &[], &[("TRELLIS_E2E_JWT_KEY", HS_KEY)]);

    let (status, _, body) = with_token(&server, &hs(&claims())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"user_id": "alice", "tenant_id": "acme", "email": "alice@example.com",
               "roles": ["analyst"], "attributes": {"department": "finance.analysis"}})
    );

    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-server-key-not-the-server-key"),
        &claims(),
    );
    let mut expired = claims();
    expired["exp"] = json!(now() - 60);
    let mut other_audience = claims();
    other_audience["aud"] = json!("someone-else");
    let wrong_algorithm = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_der(&der("rsa-private.pem")),
        &claims(),
    );
    let cases = [
        (forged, "the signature does not verify"),
        (hs(&expired), "the token has expired"),
        (
            hs(&other_audience),
            "the audience (`aud`) does not name this server",
        ),
        (
            wrong_algorithm,
            "the token is signed with `RS256`; this server accepts only `HS256`",
        ),
    ];
    for (token, reason) in &cases {
        let answer = with_token(&server, token).await;
        assert_eq!(
            answer.1.as_deref(),
            Some(r#"Bearer realm="trellis", error="invalid_token""#)
        );
        let message = refused(answer, reason);
        assert!(!message.contains(token.as_str()), "{message}");
    }

    // No credentials: 401 with a bare challenge.
    let answer = whoami(&server, &[]).await;
    assert_eq!(answer.1.as_deref(), Some(r#"Bearer realm="trellis""#));
    refused(
        answer,
        "no credentials: send `Authorization: Bearer <token>`",
    );

    // A caller can never pick their own user or attributes, even beside a good token.
    let good = hs(&claims());
    let answer = whoami(
        &server,
        &[
            ("authorization", &format!("Bearer {good}")),
            (
                "x-trellis-user",
                r#"{"user_id":"root","roles":["admin"],"attributes":{"security_clearance":"top_secret"}}"#,
            ),
        ],
    )
    .await;
    refused(answer, "X-Trellis-User is accepted only in dev mode");

    let (_, log) = stop(server);
    assert!(!log.contains(HS_KEY), "the key leaked into the log:\n{log}");
    assert!(log.contains("auth mode `jwt`"), "{log}");
}

/// Stops the server with SIGTERM and returns its exit status and stderr.
fn stop(server: Server) -> (std::process::ExitStatus, String) {
    kill(Pid::from_raw(server.pid() as i32), Signal::SIGTERM).expect("send SIGTERM");
    server.wait(Duration::from_secs(15))
}

#[tokio::test]
async fn jwt_rs256_with_a_key_file_relative_to_the_config() {
    let dir = folder(
        "[auth]\nmode = \"jwt\"\nalgorithm = \"RS256\"\nkey_file = \"keys/rsa-public.pem\"\n\
         audience = \"trellis-e2e\"\nissuer = \"https://id.test\"\n\n\
         [auth.claims]\nroles = \"groups\"\n",
    );
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::copy(
        fixture("rsa-public.pem"),
        dir.path().join("keys/rsa-public.pem"),
    )
    .unwrap();
    let server = Server::start(dir.path(), &[]);

    let mut good = claims();
    good["iss"] = json!("https://id.test");
    good["groups"] = json!(["hr_manager"]);
    let key = EncodingKey::from_rsa_der(&der("rsa-private.pem"));
    let (status, _, body) = with_token(&server, &sign(Algorithm::RS256, &key, &good)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "alice");
    assert_eq!(
        body["roles"],
        json!(["hr_manager"]),
        "roles read from `groups`"
    );

    let other = EncodingKey::from_rsa_der(&der("other-rsa-private.pem"));
    refused(
        with_token(&server, &sign(Algorithm::RS256, &other, &good)).await,
        "the signature does not verify",
    );
    let mut no_issuer = good.clone();
    no_issuer.as_object_mut().unwrap().remove("iss");
    refused(
        with_token(&server, &sign(Algorithm::RS256, &key, &no_issuer)).await,
        "the token has no `iss` claim",
    );
    let mut roles_not_array = good.clone();
    roles_not_array["groups"] = json!("admin");
    refused(
        with_token(&server, &sign(Algorithm::RS256, &key, &roles_not_array)).await,
        "the token's `groups` claim must be an array of strings",
    );
}

#[tokio::test]
async fn jwt_eddsa_with_an_inline_pem_key() {
    let dir = folder(&format!(
        "[auth]\nmode = \"jwt\"\nalgorithm = \"EdDSA\"\naudience = \"trellis-e2e\"\nkey = \"\"\"\n{}\"\"\"\n",
        pem("ed25519-public.pem")
    ));
    let server = Server::start(dir.path(), &[]);
    let key = EncodingKey::from_ed_der(&der("ed25519-private.pem"));
    let (status, _, body) = with_token(&server, &sign(Algorithm::EdDSA, &key, &claims())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "alice");

    let mut no_subject = claims();
    no_subject.as_object_mut().unwrap().remove("sub");
    refused(
        with_token(&server, &sign(Algorithm::EdDSA, &key, &no_subject)).await,
        "the token has no `sub` claim (the user id)",
    );
    refused(
        with_token(&server, &hs(&claims())).await,
        "the token is signed with `HS256`; this server accepts only `EdDSA`",
    );
}

#[test]
fn jwt_bad_key_stops_the_start_naming_the_source_not_the_key() {
    let private = pem("rsa-private.pem");
    let dir = folder(&format!(
        "[auth]\nmode = \"jwt\"\nalgorithm = \"RS256\"\naudience = \"a\"\nkey = \"\"\"\n{private}\"\"\"\n"
    ));
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0"],
        Duration::from_secs(30),
    );
    // 78: a configuration error.
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("error: the JWT key (`auth.key` in trellis.toml) is not a usable RS256 key: it is a private key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: give the public key as PEM"),
        "{stderr}"
    );
    let body_line = private.lines().nth(1).unwrap();
    assert!(!stderr.contains(body_line), "the key leaked:\n{stderr}");
}

#[tokio::test]
async fn dev_mode_trusts_the_header_on_loopback_and_says_so() {
    let dir = folder("[auth]\nmode = \"dev\"\n");
    let server = Server::start(dir.path(), &[]);

    let user = json!({"user_id": "ana", "tenant_id": "t1", "email": "ana@example.com",
                      "roles": ["hr_manager"], "attributes": {"department": "hr"}});
    let (status, challenge, body) = whoami(&server, &[("x-trellis-user", &user.to_string())]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(challenge, None);
    assert_eq!(body, user);

    let answer = whoami(
        &server,
        &[("x-trellis-user", r#"{"user_id": "ana", "role": []}"#)],
    )
    .await;
    assert_eq!(answer.1, None, "no bearer challenge in dev mode");
    let message = refused(
        answer,
        "`X-Trellis-User` is not a valid user: unknown field `role`",
    );
    assert!(message.contains("expected one of"), "{message}");
    refused(
        whoami(&server, &[("x-trellis-user", "{not json")]).await,
        "`X-Trellis-User` is not a valid user: ",
    );
    let (_, _, body) = whoami(&server, &[]).await;
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .starts_with("X-Trellis-User: {"),
        "{body}"
    );

    let (_, stderr) = stop(server);
    assert!(stderr.contains("AUTH MODE `dev`"), "{stderr}");
    assert!(
        stderr.contains("X-Trellis-User header is trusted"),
        "{stderr}"
    );
}

#[test]
fn dev_mode_is_refused_on_a_non_loopback_address() {
    let dir = folder("[auth]\nmode = \"dev\"\n");
    let (status, stdout, stderr) = run_trellis(
        dir.path(),
        &["serve", "--listen", "0.0.0.0:0"],
        Duration::from_secs(30),
    );
    // 78: a configuration error.
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
    assert!(
        stderr.contains("error: auth mode `dev` is refused on `0.0.0.0:0`: it trusts the `X-Trellis-User` header from any caller, so it may listen only on a loopback address"),
        "{stderr}"
    );
    assert!(
        stderr.contains("help: listen on 127.0.0.1 (`trellis serve --listen 127.0.0.1:8700`), or set `[auth] mode = \"jwt\"`"),
        "{stderr}"
    );
    // Nothing was opened: the embedded database was not created.
    assert!(!dir.path().join("data/trellis.db").exists());
}

#[tokio::test]
async fn mode_none_answers_401_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (status, challenge, body) = whoami(&server, &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(challenge, None);
    assert_eq!(
        body["error"]["message"],
        "authentication is not configured on this server"
    );
    assert!(
        body["error"]["hint"]
            .as_str()
            .unwrap()
            .contains("set `[auth] mode = \"jwt\"`"),
        "{body}"
    );
    // Routes without a user still answer.
    let health = reqwest::get(format!("{}/health", server.base_url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
