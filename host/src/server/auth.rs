//! The authenticated caller of a request: the [`CurrentUser`] extractor, its 401 answer, and
//! `GET /v1/whoami`.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::App;
use crate::auth::AuthError;
use crate::policy::UserContext;

/// The user the request's credentials prove. A handler that takes it answers 401 without them.
#[derive(Debug, Clone)]
pub struct CurrentUser(pub UserContext);

impl FromRequestParts<App> for CurrentUser {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let auth = app.auth();
        auth.authenticate(&parts.headers)
            .map(CurrentUser)
            .map_err(|error| {
                tracing::debug!(mode = auth.mode(), %error, "request not authenticated");
                AuthRejection {
                    error,
                    bearer: auth.uses_bearer_tokens(),
                }
            })
    }
}

/// 401 `{"error": {"kind": "unauthenticated", "message", "hint"?}}`; in jwt mode with a
/// `WWW-Authenticate: Bearer` challenge.
#[derive(Debug)]
pub struct AuthRejection {
    error: AuthError,
    bearer: bool,
}

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let mut body = json!({"kind": "unauthenticated", "message": self.error.to_string()});
        if let Some(hint) = self.error.hint() {
            body["hint"] = json!(hint);
        }
        let status = self.error.status();
        let mut response = (status, Json(json!({ "error": body }))).into_response();
        if self.bearer && status == StatusCode::UNAUTHORIZED {
            let challenge = if self.error.is_invalid_token() {
                r#"Bearer realm="trellis", error="invalid_token""#
            } else {
                r#"Bearer realm="trellis""#
            };
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

/// `GET /v1/whoami`: the authenticated user, as the policy engine will see it.
pub async fn whoami(CurrentUser(user): CurrentUser) -> Json<UserContext> {
    Json(user)
}
