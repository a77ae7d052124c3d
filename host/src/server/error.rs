//! JSON error responses: `{"error": {"kind", "message"}, …}` with the right status, and the one place request
//! bodies are parsed (so bad JSON is a 400 that says what is wrong and where).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    /// `{"error": {"kind", "message"}}` with `status`; the kind is named after the status
    /// (`bad_request`, `unauthorized`, `forbidden`, `not_found`, `internal`, `timeout`, …).
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let kind = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "internal",
            _ => "error",
        };
        ApiError {
            status,
            body: json!({"error": {"kind": kind, "message": message.into()}}),
        }
    }

    /// A failed run: `{"error": {"kind", "message", "code"?, "plugin"?}, "node"}` with `status`,
    /// from the caller's view of the error (identifiers and fixed text only).
    pub fn failure(status: StatusCode, view: &crate::workflow::CallerError) -> ApiError {
        let mut error = json!({"kind": view.kind, "message": view.message});
        if let Some(code) = &view.code {
            error["code"] = json!(code);
        }
        if let Some(plugin) = &view.plugin {
            error["plugin"] = json!(plugin);
        }
        ApiError {
            status,
            body: json!({"error": error, "node": view.node}),
        }
    }

    /// Adds `key: value` to the body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        if let Value::Object(map) = &mut self.body {
            map.insert(key.to_owned(), value.into());
        }
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// Parses a JSON body; an empty body is `{}`. Errors say what is wrong and at which line and
/// column.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let mut message = format!("invalid request body: {}", e.inner());
        if path != "." && !path.is_empty() {
            message.push_str(&format!(" (at `{path}`)"));
        }
        bad(message)
    })?;
    de.end()
        .map_err(|e| bad(format!("invalid request body: {e}")))?;
    Ok(value)
}
