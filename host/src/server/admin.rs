//! The admin endpoints, allowed by policy (`admin` on workflow `trellis:api`):
//! `POST /v1/authorize` (decide or explain one access question), `GET /v1/audit?limit=N` (the
//! most recent decisions), `GET /v1/policies` (the generation in force and the last reload error),
//! `GET /v1/fleet` (every host of the control plane this host follows).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::auth::CurrentUser;
use super::error::{ApiError, parse_body};
use crate::policy::{AccessRequest, PreparedUser, ResourceType, UserContext};
use crate::workflow::{ADMIN_RESOURCE, Denial};

/// Requires `admin` on [`ADMIN_RESOURCE`] for the caller.
fn admin(app: &App, caller: UserContext) -> Result<PreparedUser, ApiError> {
    let user = PreparedUser::new(caller);
    if app.runtime().is_admin(&user) {
        Ok(user)
    } else {
        Err(super::workflows::denied(
            app,
            &user,
            &Denial {
                resource_type: "workflow",
                resource_id: ADMIN_RESOURCE.to_owned(),
                permission: "admin",
                reason: String::new(),
                policies: Vec::new(),
                generation: 0,
            },
        ))
    }
}

/// The body of `POST /v1/authorize`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizeRequest {
    /// The user asked about (default: the caller).
    user: Option<UserContext>,
    /// `node` or `workflow`.
    resource_type: String,
    resource_id: String,
    /// For a node: the workflow it is a node of (sets `runtime.workflow`, which rules scoped
    /// with `"workflow"` read; a run sets it itself).
    workflow: Option<String>,
    permission: String,
    /// What `runtime.…` paths read.
    #[serde(default)]
    runtime: Value,
    /// Also list every policy considered and the values the host derived.
    #[serde(default)]
    explain: bool,
}

/// Decides (or explains) one access question.
pub async fn authorize(
    State(app): State<App>,
    CurrentUser(caller): CurrentUser,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = admin(&app, caller)?;
    let request: AuthorizeRequest = parse_body(&body)?;
    super::guard::audit_refusal(&app)?;
    let resource_type = match request.resource_type.as_str() {
        "node" => ResourceType::Node,
        "workflow" => ResourceType::Workflow,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown resource_type `{other}`: use `node` or `workflow`"),
            ));
        }
    };
    if !resource_type
        .permissions()
        .contains(&request.permission.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown permission `{}` for a {}; the permissions are {}",
                request.permission,
                resource_type.as_str(),
                resource_type.permissions().join(", ")
            ),
        ));
    }
    let user = request.user.map(PreparedUser::new).unwrap_or(caller);
    let runtime = crate::policy::for_workflow(request.runtime, request.workflow.as_deref())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let runtime = if runtime.is_null() {
        json!({})
    } else {
        runtime
    };
    let access = AccessRequest {
        user: &user,
        resource_type,
        resource_id: &request.resource_id,
        permission: &request.permission,
        now: jiff::Timestamp::now(),
        runtime: &runtime,
    };
    let policy = app.policy();
    let mut answer = if request.explain {
        serde_json::to_value(policy.explain(&access)).unwrap_or_default()
    } else {
        json!({"decision": policy.decide(&access)})
    };
    answer["policy_generation"] = json!(policy.generation().id());
    answer["user_id"] = json!(user.context().user_id);
    Ok(Json(answer))
}

/// `?limit=N`.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    limit: Option<usize>,
}

/// The most recent decisions, newest first.
pub async fn audit(
    State(app): State<App>,
    CurrentUser(caller): CurrentUser,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    admin(&app, caller)?;
    let limit = query
        .limit
        .unwrap_or(100)
        .min(app.config().policy.audit_recent);
    let records = app
        .policy()
        .audit()
        .map(|a| a.recent(limit))
        .unwrap_or_default();
    Ok(Json(json!({"count": records.len(), "records": records})))
}

/// The policy generation in force, its size, and the last reload error.
pub async fn policies(
    State(app): State<App>,
    CurrentUser(caller): CurrentUser,
) -> Result<Json<Value>, ApiError> {
    admin(&app, caller)?;
    let policy = app.policy();
    let generation = policy.generation();
    Ok(Json(json!({
        "dir": generation.dir().display().to_string(),
        "generation": generation.id(),
        "policies": generation.policy_count(),
        "last_error": policy.last_error(),
    })))
}

/// `GET /v1/fleet`: every host following this host's control plane, the active and published
/// generations, and this host's own view (what it has staged and serves, its last error).
pub async fn fleet(
    State(app): State<App>,
    CurrentUser(caller): CurrentUser,
) -> Result<Json<Value>, ApiError> {
    admin(&app, caller)?;
    let Some(follower) = app.follower() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this host does not follow a control plane",
        )
        .with(
            "hint",
            "start it with `trellis serve --control DATABASE` to follow one",
        ));
    };
    let status = crate::fleet::status::status(follower.pool())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "GET /v1/fleet: cannot read the control database");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the control database does not answer",
            )
        })?;
    let mut body = json!(status);
    body["this_host"] = json!(follower.state());
    body["generation"] = json!(app.generations().current().id);
    Ok(Json(body))
}
