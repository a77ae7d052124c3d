//! `GET /v1/workflows` (what is loaded, the generation, files that failed) and
//! `POST /v1/workflows/{name}/run` (authenticate, run through the access-controlled runtime,
//! answer with the masked results or a 400/403/404/500/504 that says what happened).

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::App;
use super::auth::CurrentUser;
use super::error::{ApiError, parse_body};
use crate::policy::PreparedUser;
use crate::workflow::{AccessError, Denial, Workflow, new_run_id};

/// Lists the workflows in service that the caller may `view` (all of them when the listing is
/// public and nobody is authenticated), and the files that failed to load.
pub async fn list(State(app): State<App>, request: axum::extract::Request) -> Json<Value> {
    let (mut parts, _) = request.into_parts();
    let caller =
        <CurrentUser as axum::extract::FromRequestParts<App>>::from_request_parts(&mut parts, &app)
            .await
            .ok()
            .map(|CurrentUser(user)| PreparedUser::new(user));
    let loaded = app.workflows().current();
    let workflows: Vec<Value> = loaded
        .workflows
        .values()
        .filter(|w| {
            caller
                .as_ref()
                .is_none_or(|user| app.runtime().may_view(user, &w.name))
        })
        .map(|w| describe(&app, w))
        .collect();
    let errors: Vec<Value> = loaded
        .errors
        .iter()
        .map(|(file, error)| {
            json!({"file": app.shown_path(file), "error": app.shown_text(&error.to_string()), "hint": error.hint})
        })
        .collect();
    Json(json!({
        "dir": app.shown_path(app.workflows().dir()),
        "generation": loaded.generation,
        "loaded_at": loaded.loaded_at.map(|t| jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()),
        "workflows": workflows,
        "errors": errors,
    }))
}

fn describe(app: &App, w: &Workflow) -> Value {
    let inputs: Map<String, Value> = w
        .inputs
        .iter()
        .map(|(name, spec)| {
            (
                name.clone(),
                json!({
                    "type": format!("{:?}", spec.kind).to_lowercase(),
                    "required": spec.default.is_none(),
                    "default": spec.default,
                    "description": spec.description,
                }),
            )
        })
        .collect();
    json!({
        "name": w.name,
        "description": w.description,
        "file": w.source.as_ref().map(|p| app.shown_path(p)),
        "inputs": inputs,
        "nodes": w.nodes.iter().map(|n| json!({
            "id": n.id,
            "type": n.kind.to_string(),
            "database": n.database,
            "optional": n.optional,
        })).collect::<Vec<_>>(),
        "connections": w.connections.iter().map(|c| json!({
            "from": dotted(&c.from, &c.output),
            "to": dotted(&c.to, &c.input),
        })).collect::<Vec<_>>(),
    })
}

/// `node.a.b`.
fn dotted(node: &str, path: &[String]) -> String {
    std::iter::once(node)
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".")
}

/// The body of a run request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    #[serde(default)]
    inputs: Map<String, Value>,
}

/// Runs a workflow for the authenticated caller.
pub async fn run(
    State(app): State<App>,
    Path(name): Path<String>,
    CurrentUser(user): CurrentUser,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ip = peer.map(|axum::Extension(axum::extract::ConnectInfo(peer))| {
        super::client_ip::client_ip(peer.ip(), &headers, &app.config().server.trusted_proxies)
    });
    // The run pins one generation: its workflow, policies and plugins.
    let pinned = app.generations().current();
    let Some(workflow) = pinned.workflows.workflows.get(&name).cloned() else {
        let loaded = pinned.workflows.clone();
        // Only the names this caller may `view`, as in `GET /v1/workflows`.
        let caller = PreparedUser::new(user);
        let names: Vec<String> = loaded
            .workflows
            .keys()
            .filter(|w| app.runtime().may_view(&caller, w))
            .cloned()
            .collect();
        let mut error = ApiError::new(StatusCode::NOT_FOUND, format!("unknown workflow `{name}`"))
            .with("workflows", names);
        if !loaded.errors.is_empty() {
            error = error.with(
                "hint",
                format!(
                    "{} workflow file(s) failed to load: GET /v1/workflows lists their errors",
                    loaded.errors.len()
                ),
            );
        }
        return Err(error);
    };
    let request: RunRequest = parse_body(&body)?;
    super::guard::audit_refusal(&app)?;
    let started = Instant::now();
    let run_id = new_run_id();
    let user = PreparedUser::new(user);
    let span = tracing::Span::current();
    span.record("user_id", tracing::field::debug(&user.context().user_id));
    span.record("workflow", tracing::field::debug(&workflow.name));
    span.record("run_id", tracing::field::display(&run_id));
    let result = app
        .runtime()
        .run_in(
            &pinned.pinned(),
            &workflow,
            &user,
            &request.inputs,
            run_id.clone(),
            ip,
        )
        .await;
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    let user_id = &user.context().user_id;
    match result {
        Ok(report) => {
            app.metrics().record_run(&workflow.name, "ok");
            tracing::debug!(%run_id, workflow = %workflow.name, user = ?user_id, took_ms, skipped = report.skipped.len(), withheld = report.withheld.len(), "run finished");
            // Written straight from the report: a `Value` of it first would copy every row.
            Ok((
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                report.to_json(),
            )
                .into_response())
        }
        Err(AccessError::Denied(denial)) => {
            app.metrics().record_run(&workflow.name, "denied");
            tracing::info!(%run_id, workflow = %workflow.name, user = ?user_id, resource = %format!("{}:{}", denial.resource_type, denial.resource_id), permission = denial.permission, reason = %denial.reason, "run denied");
            Err(denied(&app, &user, &denial).with("run_id", run_id))
        }
        Err(AccessError::Inputs(problems)) => {
            app.metrics().record_run(&workflow.name, "invalid");
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid inputs for workflow `{}`", workflow.name),
            )
            .with("problems", problems)
            .with("run_id", run_id))
        }
        Err(AccessError::Run(e)) => {
            app.metrics().record_run(&workflow.name, "failed");
            // The whole error (a database's message, a plugin's text, a parameter's value, a
            // file path) goes only to the log; the caller gets identifiers and fixed text.
            tracing::warn!(%run_id, workflow = %workflow.name, user = ?user_id, node = e.node(), sensitive = true, error = %e, "run failed");
            let view = e.caller_view();
            let status = match view.kind {
                "timeout" => StatusCode::GATEWAY_TIMEOUT,
                "tenant" => StatusCode::FORBIDDEN,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(ApiError::failure(status, &view)
                .with(
                    "hint",
                    format!("the server log has the detail under run_id `{run_id}`"),
                )
                .with("run_id", run_id))
        }
    }
}

/// A 403 naming what was denied; admins also see the deciding policies and the reason.
pub(super) fn denied(app: &App, user: &PreparedUser, d: &Denial) -> ApiError {
    let what = format!(
        "`{}` on {} `{}`",
        d.permission, d.resource_type, d.resource_id
    );
    let message = if d.policies.is_empty() {
        format!("access denied: no policy grants you {what}")
    } else {
        format!("access denied: a policy denies you {what}")
    };
    let mut error = ApiError::new(StatusCode::FORBIDDEN, message).with(
        "denied",
        json!({
            "resource_type": d.resource_type,
            "resource_id": d.resource_id,
            "permission": d.permission,
        }),
    );
    if d.resource_type == "node" {
        error = error.with("node", d.resource_id.clone());
    }
    if app.runtime().is_admin(user) {
        error = error
            .with("reason", d.reason.clone())
            .with("policies", d.policies.clone())
            .with("policy_generation", d.generation);
    }
    error
}
