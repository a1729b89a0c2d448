//! `POST /backup` (pgdctl `backup`) and `GET /backups` (pgdctl `backups`, `restore`), behind the
//! same checks as `/demote` ([`crate::api_security`]). 409 when this member has no `[archive]`
//! or already runs a backup (nothing started), 503 when barman-cloud failed, 400 for bad input.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api_state::{error_response, ApiState};
use crate::backups::BackupError;
use crate::http_control::json_object_or_empty;
use crate::http_maintenance::NoArguments;

/// The answer of a member without `[archive]`.
fn no_archive(st: &ApiState) -> Response {
    let member = st.api.snapshot().member;
    error_response(StatusCode::CONFLICT, &format!("{member}: no [archive] is configured on this member; nothing was done"))
}

/// Takes a base backup of this member now and answers with it once it is listed.
pub(crate) async fn backup(State(st): State<ApiState>, body: Bytes) -> Response {
    if let Err(r) = json_object_or_empty::<NoArguments>(&body, "{}") {
        return r;
    }
    let Some(b) = st.api.backups() else { return no_archive(&st) };
    match b.backup_now("requested through the API").await {
        Ok(info) => (StatusCode::OK, Json(info)).into_response(),
        Err(e) => backup_error(e),
    }
}

fn backup_error(e: BackupError) -> Response {
    match e {
        BackupError::Busy | BackupError::Refused(_) => error_response(StatusCode::CONFLICT, &format!("{e}; nothing was done")),
        BackupError::Failed(_) => error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// On the primary: closes the current WAL segment, so a replica's backup finds its last
/// segment in the archive (asked by that replica's agent).
pub(crate) async fn switch_wal(State(st): State<ApiState>, body: Bytes) -> Response {
    if let Err(r) = json_object_or_empty::<NoArguments>(&body, "{}") {
        return r;
    }
    let Some(b) = st.api.backups() else { return no_archive(&st) };
    match b.switch_wal().await {
        Ok(segment) => (StatusCode::OK, Json(serde_json::json!({ "segment": segment }))).into_response(),
        Err(e) => backup_error(e),
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// Another cluster's backups in the same destination (a restore's source).
    cluster: Option<String>,
}

/// The backups of this cluster (or `?cluster=NAME`), as barman-cloud lists them.
pub(crate) async fn list(
    State(st): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_response(StatusCode::BAD_REQUEST, "the only query parameter is cluster=NAME");
    };
    if let Some(c) = &q.cluster {
        if let Err(e) = pgdaemon_core::keys::validate_cluster_name(c) {
            return error_response(StatusCode::BAD_REQUEST, &e);
        }
    }
    let Some(b) = st.api.backups() else { return no_archive(&st) };
    match b.list(q.cluster.as_deref()).await {
        Ok(list) => (StatusCode::OK, Json(list)).into_response(),
        Err(e) => error_response(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}
