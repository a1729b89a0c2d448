//! The API's maintenance endpoints, behind the same checks as `/demote` ([`crate::api_security`]):
//! `POST /restart`, `POST /reinit` and `POST /reload` (pgdctl `restart`, `reinit`, `reload`) and
//! `POST /drop-slot` (pgdctl `remove`). Each answers 200 once done, 409 when refused in this member's state (nothing
//! changed), 400 for a malformed body and 503 when Postgres failed.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgdaemon_core::agent::MaintenanceError;
use serde_json::json;

use crate::api_state::{error_response, ApiState};
use crate::http_control::{json_object, json_object_or_empty};

/// The answer for a finished request: `ok` as the 200 body, else the error's status.
fn answer(st: &ApiState, what: &str, result: Result<(), MaintenanceError>) -> Response {
    let member = st.api.snapshot().member;
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({ "member": member, what: true }))).into_response(),
        Err(MaintenanceError::Refused(m)) => error_response(StatusCode::CONFLICT, &format!("{member}: {m}; nothing was changed")),
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            error_response(StatusCode::SERVICE_UNAVAILABLE, &format!("{member}: {e}"))
        }
    }
}

/// The body of a request that takes no arguments: empty or `{}` (any field is a mistake).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArguments {}

/// The body of `POST /restart` (optional: an empty body is `{}`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartRequest {
    /// Restart the primary in place (the loop starts it again under its lease); without it only
    /// a replica is restarted.
    #[serde(default)]
    primary_in_place: bool,
}

pub(crate) async fn restart(State(st): State<ApiState>, body: Bytes) -> Response {
    let req: RestartRequest = match json_object_or_empty(&body, r#"{} or {"primary_in_place": true}"#) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let result = st.api.restart(req.primary_in_place).await;
    answer(&st, "restarted", result)
}

pub(crate) async fn reinit(State(st): State<ApiState>, body: Bytes) -> Response {
    if let Err(r) = json_object_or_empty::<NoArguments>(&body, "{}") {
        return r;
    }
    let result = st.api.reinit().await;
    answer(&st, "reinitialized", result)
}

pub(crate) async fn reload(State(st): State<ApiState>, body: Bytes) -> Response {
    if let Err(r) = json_object_or_empty::<NoArguments>(&body, "{}") {
        return r;
    }
    let result = st.api.reload().await;
    answer(&st, "reloaded", result)
}

/// The body of `POST /drop-slot`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DropSlotRequest {
    member: String,
}

/// Drops a removed member's slot on the primary. Refused while the member still has a
/// heartbeat in the store (remove it first) or when the store cannot be read to check.
pub(crate) async fn drop_slot(State(st): State<ApiState>, body: Bytes) -> Response {
    let req: DropSlotRequest = match json_object(&body, r#"{"member": "pg-3"}"#) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if let Err(e) = pgdaemon_core::keys::validate_member_name(&req.member) {
        return error_response(StatusCode::BAD_REQUEST, &e);
    }
    match st.api.cluster_view().await {
        Ok(view) if view.members.contains_key(&req.member) => {
            let m = format!(
                "{} still has a heartbeat in the store: remove it first (pgdctl remove); nothing was changed",
                req.member
            );
            return error_response(StatusCode::CONFLICT, &m);
        }
        Ok(_) => {}
        Err(e) => return error_response(StatusCode::SERVICE_UNAVAILABLE, &format!("cannot check the member in the store: {e}")),
    }
    let result = st.api.drop_member_slot(&req.member).await;
    answer(&st, "dropped", result)
}
