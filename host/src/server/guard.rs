//! Layers every request passes before its handler: the request deadline (504 with a JSON body
//! when it runs out), in dev mode the `Host`/`Origin` check that keeps web pages out, and the
//! caller the listings need.

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header::{HOST, ORIGIN};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use super::error::ApiError;
use crate::loopback::{is_loopback, is_loopback_authority};

/// Answers 504 `{"error": {"kind": "timeout", …}}` when the handler has not answered within
/// `server.request_timeout`; the handler's future is dropped (its statements are cancelled by
/// their own guards).
pub async fn deadline(State(app): State<App>, request: Request, next: Next) -> Response {
    let limit = app.config().server.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request did not finish within `server.request_timeout` ({})",
                humantime::format_duration(limit)
            ),
        )
        .with(
            "hint",
            "raise `request_timeout` under `[server]` in trellis.toml, or make the workflow faster",
        )
        .into_response(),
    }
}

/// Dev mode trusts a header, so it must answer only this machine's own clients. A web page can
/// still reach a loopback server through DNS rebinding (its own name, resolved to 127.0.0.1):
/// refuse a `Host` that is not a loopback name, and an `Origin` that is not a loopback one.
pub async fn dev_loopback_only(State(app): State<App>, request: Request, next: Next) -> Response {
    if app.auth().mode() != "dev" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let host_ok = match headers.get(HOST) {
        Some(host) => host.to_str().is_ok_and(is_loopback_authority),
        // HTTP/1.0 without a Host: a local tool, not a browser.
        None => true,
    };
    let origin_ok = match headers.get(ORIGIN) {
        Some(origin) => origin.to_str().is_ok_and(is_loopback_origin),
        None => true,
    };
    if host_ok && origin_ok {
        return next.run(request).await;
    }
    let what = if host_ok { "Origin" } else { "Host" };
    tracing::warn!(
        header = what,
        "dev mode refused a request not addressed from and to loopback"
    );
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("auth mode `dev` answers only loopback clients: this request's `{what}` is not a loopback name"),
    )
    .with(
        "hint",
        "call the server as http://127.0.0.1:PORT or http://localhost:PORT; for other callers use `[auth] mode = \"jwt\"`",
    )
    .into_response()
}

/// Whether an `Origin` value (`scheme://host[:port]`) is a loopback origin (`null` is not).
fn is_loopback_origin(origin: &str) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https") && url.host_str().is_some_and(is_loopback)
}

/// The listings (`/metrics`, `/v1/pools…`, `/v1/plugins`, `/v1/workflows`) answer an
/// authenticated caller, or anyone when `[server] public` names them.
pub async fn listings(State(app): State<App>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or_default();
    let name = match route {
        "/metrics" => "metrics",
        r if r.starts_with("/v1/pools") => "pools",
        "/v1/plugins" => "plugins",
        _ => "workflows",
    };
    if app.config().server.public.iter().any(|p| p == name) {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    match <super::auth::CurrentUser as axum::extract::FromRequestParts<App>>::from_request_parts(
        &mut parts, &app,
    )
    .await
    {
        Ok(_) => next.run(Request::from_parts(parts, body)).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// 503 while the audit trail cannot be written and `[policy] audit_on_failure = "refuse"`: no
/// decision is made without its record.
pub(super) fn audit_refusal(app: &App) -> Result<(), ApiError> {
    match app.policy().audit() {
        Some(audit) if audit.refusing() => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit trail cannot be written now (it fails, or its writer is behind), and no decision is made without its record",
        )
        .with(
            "hint",
            "retry shortly: the host serves again as soon as the records are written (free space for the audit file, or bring the audit database back, if they fail); `[policy] audit_on_failure = \"serve\"` keeps serving and counts lost records",
        )),
        _ => Ok(()),
    }
}
