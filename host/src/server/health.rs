//! `GET /health`: liveness, with the running version.

use axum::Json;
use serde_json::{Value, json};

/// 200 `{"status":"ok","version":"…"}` while the host serves.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": crate::VERSION }))
}
