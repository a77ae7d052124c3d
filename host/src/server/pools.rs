//! `GET /v1/pools` and `GET /v1/pools/{name}/stats`: the configured databases' pools.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::App;

/// Every pool: name, database type, target (without password) and connection counts.
/// A database per tenant lists its open tenants' pools under `tenants`.
pub async fn list(State(app): State<App>) -> Json<Value> {
    let summary = |pool: &crate::pool::Pool| {
        let stats = pool.stats();
        json!({
            "name": stats.pool,
            "database_type": stats.database_type,
            "target": stats.target,
            "connections": {
                "active": stats.connections.active,
                "idle": stats.connections.idle,
                "total": stats.connections.total,
            },
            "min_connections": pool.config().min_connections,
            "max_connections": pool.config().max_connections,
        })
    };
    let mut pools: Vec<Value> = app.databases().iter().map(summary).collect();
    for tenants in app.databases().tenanted() {
        let open: Vec<Value> = tenants
            .views()
            .into_iter()
            .map(|v| {
                let mut pool = summary(&v.pool);
                pool["tenant"] = json!(v.tenant);
                pool["circuit_open"] = json!(v.circuit_open);
                pool
            })
            .collect();
        pools.push(json!({
            "name": tenants.name(),
            "database_type": tenants.config().target.kind().as_str(),
            "target": tenants.config().target.to_string(),
            "per_tenant": true,
            "max_tenants": tenants.max_tenants(),
            "tenants": open,
        }));
    }
    Json(json!({ "pools": pools }))
}

/// One pool's full statistics, or 404 naming the known pools.
pub async fn stats(State(app): State<App>, Path(name): Path<String>) -> Response {
    match app.databases().get(&name) {
        Some(pool) => Json(pool.stats()).into_response(),
        None => {
            let known: Vec<&str> = app.databases().names().collect();
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {
                    "kind": "not_found",
                    "message": format!("no pool named `{name}`; configured: {}", known.join(", ")),
                }})),
            )
                .into_response()
        }
    }
}
