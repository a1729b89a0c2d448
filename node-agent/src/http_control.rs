//! The API's state-changing endpoints, behind [`crate::api_security`]'s checks (see
//! [`crate::http`]): `POST /demote`, the coordinator's HTTP fencer, `POST /failsafe`, failsafe
//! mode's peer endpoint, and `POST /wake`, the coordinator's waker. Bodies are typed JSON
//! objects; anything else is a 400 that changes nothing.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgdaemon_core::agent::FailsafeRequest;
use pgdaemon_core::fence::{DemoteReply, DemoteRequest};
use serde_json::Value;

use crate::api_state::{error_response, AgentApi, ApiState};
use crate::metrics::role_name;

/// A request body that must be one JSON object of type `T`; otherwise a 400 naming `example`.
// The error is the 400 response itself (axum's, 128 bytes): boxing it would only add a step.
#[allow(clippy::result_large_err)]
pub(crate) fn json_object<T: serde::de::DeserializeOwned>(body: &[u8], example: &str) -> Result<T, Response> {
    // Through `Value` first: serde would also accept a struct written as an array (`[4]`).
    serde_json::from_slice::<Value>(body)
        .and_then(|v| match v {
            Value::Object(_) => serde_json::from_value::<T>(v),
            _ => Err(serde::de::Error::custom("expected a JSON object")),
        })
        .map_err(|e| error_response(StatusCode::BAD_REQUEST, &format!("body must be JSON like {example}: {e}")))
}

/// [`json_object`], with an empty (or all-whitespace) body read as `{}`: for requests whose
/// fields are all optional.
#[allow(clippy::result_large_err)]
pub(crate) fn json_object_or_empty<T: serde::de::DeserializeOwned + Default>(body: &[u8], example: &str) -> Result<T, Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_object(body, example)
    }
}

/// How long `/demote` waits for the fresh read of the cluster record (a term ahead of the view).
const TERM_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `/demote` may act on `term`: `Ok(())`, or the term the agent holds current.
///
/// The accepted term is the cluster record's current term, and nothing else:
/// - the coordinator fences with the transition's new term, which it wrote into the record
///   (`Action::Begin` sets `record.term = transition.term`) *before* fencing; so a genuine
///   request names exactly the record's term. A term below it is a stale or replayed request
///   (an old fence must not stop the primary of a later term); a term above it was never
///   written by any coordinator.
/// - the agent's last view may lag the record by one loop (the coordinator fences at once after
///   the bump), so a term ahead of the view is checked against a fresh read of the record.
/// - when that read fails (the agent is cut off from the store: the very case a failover fences
///   for), only `view + 1` is accepted: the one bump a coordinator can have made before fencing
///   this node, which must first be fenced before any later transition can start.
///
/// Why this bound is safe: a demotion only ever makes a node *refuse* (stop Postgres, refuse the
/// lease through `term`), so accepting a term never endangers S1-S3; the bound protects liveness.
/// `fenced_through = u64::MAX` would keep the node from ever being primary again; the largest
/// term accepted here is at most one above the store's, which the next transition uses anyway.
pub async fn check_demote_term(api: &dyn AgentApi, term: u64) -> Result<(), u64> {
    let s = api.snapshot();
    let known = s.term.max(s.last_view.as_ref().and_then(|v| v.cluster.as_ref()).map_or(0, |c| c.term));
    if term == known {
        return Ok(());
    }
    if term < known {
        return Err(known);
    }
    match tokio::time::timeout(TERM_READ_TIMEOUT, api.current_term()).await {
        Ok(Ok(current)) if current == term => Ok(()),
        Ok(Ok(current)) => Err(current.max(known)),
        Ok(Err(_)) | Err(_) if known.checked_add(1) == Some(term) => {
            tracing::warn!(term, known, "demote: the store cannot be read; accepting the one term after the last one seen");
            Ok(())
        }
        _ => Err(known),
    }
}

/// The coordinator's HTTP fencer. 200 `{"demoted":true}` only once Postgres stopped accepting
/// writes, with `"lsn"` the final WAL position when known (a clean stop; the switchover waits for
/// the candidate to replay it); the loop is then woken, so that it releases the lease at once.
/// 400 for a malformed body and 409 for a term that is not the cluster record's current one
/// (nothing is changed); 503 when the demotion failed or could not be verified (the caller must
/// not treat the node as fenced).
pub(crate) async fn demote(State(st): State<ApiState>, body: Bytes) -> Response {
    let req: DemoteRequest = match json_object(&body, r#"{"term": 7, "reason": "..."}"#) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if req.term == 0 {
        return error_response(StatusCode::BAD_REQUEST, "term must be at least 1");
    }
    if req.reason.len() > 1024 {
        return error_response(StatusCode::BAD_REQUEST, "reason must be at most 1024 bytes");
    }
    let member = st.api.snapshot().member;
    if let Err(current) = check_demote_term(st.api.as_ref(), req.term).await {
        let which = if req.term < current { "stale" } else { "ahead of the store" };
        tracing::warn!(term = req.term, current, "demote refused: term is {which}");
        let error = format!("term {} is {which}: the cluster's current term is {current}; nothing was changed", req.term);
        let body = DemoteReply::refused(member, req.term, error, Some(current));
        return (StatusCode::CONFLICT, Json(body)).into_response();
    }
    let reason = if req.reason.is_empty() { "demotion requested over HTTP".to_string() } else { req.reason.clone() };
    match st.api.demote_with_position(req.term, &reason).await {
        Ok(lsn) => {
            // The loop releases the lease of a fenced primary: at once, not at its next tick, so
            // the candidate the coordinator is about to designate finds it free.
            st.api.wake();
            let s = st.api.snapshot();
            let body = DemoteReply {
                demoted: true,
                term: req.term,
                member,
                role: Some(role_name(s.role).to_string()),
                fenced_through: Some(s.fenced_through.max(req.term)),
                lsn: lsn.map(|l| l.to_string()),
                final_lsn: None,
                error: None,
                current_term: None,
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            tracing::error!(term = req.term, error = %e, "requested demotion failed");
            let body = DemoteReply::refused(member, req.term, e.to_string(), None);
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// The body of `POST /wake` (optional: an empty body is `{}`). Unknown fields are ignored, so
/// a newer coordinator may send more.
#[derive(Debug, Default, serde::Deserialize)]
struct WakeRequest {
    /// For the log only, e.g. "designated in term 7".
    #[serde(default)]
    reason: Option<String>,
}

/// The coordinator's waker (docs/design.md section 4): 202 at once, and the loop runs now (or
/// right after the running one, at most one early loop per 100 ms) instead of at its next tick.
/// Only the timing changes: the loop reads the store and decides as any other. 400 for a body
/// that is neither empty nor a JSON object (no wake).
pub(crate) async fn wake(State(st): State<ApiState>, body: Bytes) -> Response {
    let req: WakeRequest = match json_object_or_empty(&body, r#"{} or {"reason": "..."}"#) {
        Ok(r) => r,
        Err(response) => return response,
    };
    if req.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return error_response(StatusCode::BAD_REQUEST, "reason must be at most 1024 bytes");
    }
    tracing::debug!(reason = req.reason.as_deref().unwrap_or(""), "woken over HTTP");
    st.api.wake();
    (StatusCode::ACCEPTED, Json(serde_json::json!({ "woken": true }))).into_response()
}

/// Failsafe mode's peer endpoint: a primary that cannot reach the store asks each member to
/// acknowledge it (docs/failsafe.md). 200 with the reply when acknowledged (the member promised
/// not to take the leader lease for `valid_ms`), 409 with the reply when refused, 400 for a
/// malformed body (nothing is promised).
pub(crate) async fn failsafe(State(st): State<ApiState>, body: Bytes) -> Response {
    let req: FailsafeRequest = match json_object(&body, r#"{"cluster": "c", "leader": "pg-1", "term": 3, "valid_ms": 10000}"#) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let reply = st.api.failsafe(&req);
    let status = if reply.ack { StatusCode::OK } else { StatusCode::CONFLICT };
    (status, Json(reply)).into_response()
}
