//! `GET /health` (liveness, with the running version) and `GET /ready` (readiness: every pool
//! answers). The host accepts no connection before start-up has finished (see
//! [`crate::cli::serve`]), so `/ready` is only ever asked once the policies, plugins and
//! workflows directories have been read; it says whether the databases answer now.

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use serde_json::{Value, json};

use super::App;
use super::auth::CurrentUser;
use crate::plugins::LoadStatus;
use crate::sql::exec::Fetch;
use crate::sql::params::Params;

/// How long each pool has to answer `SELECT 1` for `/ready`.
pub const POOL_CHECK: Duration = Duration::from_secs(2);

/// 200 `{"status":"ok","version":"…"}` while the host serves.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok", "version": crate::VERSION }))
}

/// 200 `{"status":"ready", …}` when every pool answers a `SELECT 1` within [`POOL_CHECK`], else
/// 503 `{"status":"not_ready","reasons":[…]}`. Either way it lists the files that failed to load
/// (their last good version, if any, serves, so they do not make the host unready); the errors
/// themselves, which may quote file contents, only to an authenticated caller.
pub async fn ready(State(app): State<App>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let caller = CurrentUser::from_request_parts(&mut parts, &app)
        .await
        .is_ok();
    let checks = join_all(app.databases().iter().map(|pool| async move {
        let answered = tokio::time::timeout(POOL_CHECK, async {
            let lease = pool.acquire().await?;
            lease.execute("SELECT 1", &Params::default(), Fetch::One).await
        })
        .await;
        let problem = match answered {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(pool = pool.name(), error = %e, "readiness: the pool does not answer");
                Some(format!("pool `{}` does not answer", pool.name()))
            }
            Err(_) => Some(format!(
                "pool `{}` did not answer within {} s",
                pool.name(),
                POOL_CHECK.as_secs()
            )),
        };
        (pool.name().to_owned(), problem)
    }))
    .await;
    let reasons: Vec<&String> = checks.iter().filter_map(|(_, p)| p.as_ref()).collect();
    let pools: serde_json::Map<String, Value> = checks
        .iter()
        .map(|(name, p)| (name.clone(), json!(if p.is_some() { "down" } else { "ok" })))
        .collect();

    let error = |text: &str| caller.then(|| app.shown_text(text));
    let mut not_loaded = Vec::new();
    for (file, e) in &app.workflows().current().errors {
        let mut entry = json!({"file": app.shown_path(file), "error": error(&e.to_string())});
        if caller && let Some(hint) = &e.hint {
            entry["hint"] = json!(hint);
        }
        not_loaded.push(entry);
    }
    for p in app.plugins().registry().list() {
        if p.status == LoadStatus::Failed {
            let file = app.config().paths.plugins.join(&p.file);
            let e = p.error.as_deref().unwrap_or_default();
            not_loaded.push(json!({"file": app.shown_path(&file), "error": error(e)}));
        }
    }
    if let Some(e) = app.policy().last_error() {
        let dir = app.shown_path(app.policy().generation().dir());
        not_loaded.push(json!({"file": dir, "error": error(&e)}));
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if reasons.is_empty() { "ready" } else { "not_ready" },
        "version": crate::VERSION,
        "pools": pools,
        "not_loaded": not_loaded,
    });
    if !reasons.is_empty() {
        body["reasons"] = json!(reasons);
    }
    (status, Json(body)).into_response()
}
