//! What the agent's HTTP API is served from: the [`AgentApi`] a running agent (or a test fake)
//! provides and the router's shared [`ApiState`]; used by the read-only routes in
//! [`crate::http`] and the state-changing ones in [`crate::http_control`].

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pgdaemon_core::agent::{AgentSnapshot, DemoteError, FailsafeReply, FailsafeRequest, MaintenanceError};
use pgdaemon_core::{Clock, ClusterView, HistoryEntry, Lsn, StoreError};
use serde_json::json;

use crate::metrics::LoopStats;

/// What the HTTP API needs from a running agent. The real implementation wraps the runtime's
/// `AgentHandle` and the store (see `run`); tests use a fake.
///
/// Obligations: `snapshot` is cheap and never blocks on I/O (health checks call it many times a
/// second); `demote` returns `Ok` only once Postgres no longer accepts writes; `cluster_view` and
/// `history` read the store (or a recent copy of it) and report its errors unchanged.
#[async_trait]
pub trait AgentApi: Send + Sync + 'static {
    fn snapshot(&self) -> AgentSnapshot;
    async fn demote(&self, term: u64, reason: &str) -> Result<(), DemoteError>;
    /// [`Self::demote`], also returning the stopped server's final WAL position when known
    /// (`PgControl::final_position`). Default: `demote` and no position.
    async fn demote_with_position(&self, term: u64, reason: &str) -> Result<Option<Lsn>, DemoteError> {
        self.demote(term, reason).await.map(|()| None)
    }
    async fn cluster_view(&self) -> Result<ClusterView, StoreError>;
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError>;
    /// The cluster record's term as the store holds it now (a fresh read; `/demote` checks a
    /// term ahead of the agent's last view against it). Default: through `cluster_view`.
    async fn current_term(&self) -> Result<u64, StoreError> {
        Ok(self.cluster_view().await?.cluster.map_or(0, |c| c.term))
    }
    /// The member side of failsafe mode (`POST /failsafe`): judge and, when acknowledging, record
    /// the promise before answering; never blocks on I/O. Default: refuse (no failsafe support).
    fn failsafe(&self, req: &FailsafeRequest) -> FailsafeReply {
        FailsafeReply {
            member: self.snapshot().member,
            ack: false,
            valid_ms: 0,
            term: self.snapshot().term,
            reason: format!("{} does not take part in failsafe mode", req.cluster),
        }
    }
    /// `POST /wake`: have the loop run now instead of at its next tick (an ordinary loop, every
    /// check unchanged; rate-limited by the loop). Returns at once, never waits for the loop.
    /// Default: nothing (the next tick comes anyway).
    fn wake(&self) {}

    /// `POST /restart`: restart this member's Postgres in place, only as a replica
    /// (`AgentHandle::restart_replica`); with `primary`, only as the primary holding the lease
    /// (`AgentHandle::restart_primary_in_place`). Default: refused.
    async fn restart(&self, _primary: bool) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused("this agent does not restart Postgres".into()))
    }

    /// `POST /reinit`: replace this replica's data directory with a copy of the primary's
    /// (`AgentHandle::reinit`). Default: refused.
    async fn reinit(&self) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused("this agent does not re-clone Postgres".into()))
    }

    /// Backups and the archive watch (`POST /backup`, `GET /backups`); `None` without `[archive]`.
    fn backups(&self) -> Option<Arc<crate::backups::Backups>> {
        None
    }

    /// `POST /reload`: `pg_reload_conf()`. Default: refused.
    async fn reload(&self) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused("this agent does not reload Postgres".into()))
    }

    /// `POST /drop-slot`: drop a removed member's replication slot on this primary
    /// (`AgentHandle::drop_member_slot`). Default: refused.
    async fn drop_member_slot(&self, _member: &str) -> Result<(), MaintenanceError> {
        Err(MaintenanceError::Refused("this agent does not drop slots".into()))
    }
}

/// Shared state of the router.
#[derive(Clone)]
pub struct ApiState {
    pub api: Arc<dyn AgentApi>,
    /// The agent's clock: the one its lease validity is measured on.
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<LoopStats>,
    pub version: String,
}

/// A JSON error body: `{"error": message}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}
