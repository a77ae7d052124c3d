//! The routes, and the layers every request passes: metrics, body limit, timeout.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::App;
use super::{admin, auth, health, metrics, plugins, pools, workflows};

/// The full HTTP API for `app`.
pub fn router(app: App) -> Router {
    let server = &app.config().server;
    Router::new()
        .route("/health", get(health::health))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/pools", get(pools::list))
        .route("/v1/pools/{name}/stats", get(pools::stats))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/workflows", get(workflows::list))
        .route("/v1/workflows/{name}/run", post(workflows::run))
        .route("/v1/authorize", post(admin::authorize))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/policies", get(admin::policies))
        .route("/v1/whoami", get(auth::whoami))
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        // A declared length over the limit is answered 413 at once, before any body is read.
        .layer(RequestBodyLimitLayer::new(server.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            server.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), metrics::track))
        .with_state(app)
}
