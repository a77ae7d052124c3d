//! The routes, and the layers every request passes: its span and request id, metrics, dev mode's
//! loopback check, the deadline, the body limit.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tower_http::limit::RequestBodyLimitLayer;

use super::App;
use super::{admin, auth, guard, health, metrics, plugins, pools, trace, workflows};

/// The full HTTP API for `app`.
pub fn router(app: App) -> Router {
    let server = &app.config().server;
    // What the host holds (pools and their users and hosts, plugins and their hashes,
    // workflows and their load errors, metrics): for callers, unless `[server] public` says
    // a listing is public.
    let listings = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route("/v1/pools", get(pools::list))
        .route("/v1/pools/{name}/stats", get(pools::stats))
        .route("/v1/plugins", get(plugins::list))
        .route("/v1/workflows", get(workflows::list))
        .route_layer(middleware::from_fn_with_state(app.clone(), guard::listings));
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .merge(listings)
        .route("/v1/workflows/{name}/run", post(workflows::run))
        .route("/v1/authorize", post(admin::authorize))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/policies", get(admin::policies))
        .route("/v1/fleet", get(admin::fleet))
        .route("/v1/whoami", get(auth::whoami))
        .layer(DefaultBodyLimit::max(server.max_body_bytes))
        // A declared length over the limit is answered 413 at once, before any body is read.
        .layer(RequestBodyLimitLayer::new(server.max_body_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), guard::deadline))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            guard::dev_loopback_only,
        ))
        .layer(middleware::from_fn_with_state(app.clone(), metrics::track))
        // Outermost: every answer (a 413, a 504, a 404) carries the request id.
        .layer(middleware::from_fn(trace::span))
        .with_state(app)
}
