//! Operator maintenance through the agent (`pgdctl restart`, `reload`, `remove`; the agent API's
//! `POST /restart`, `/reload`, `/drop-slot`). None of these changes a member's role: a restart
//! is refused on a primary (pgdctl moves the primary away by a switchover first), so no path
//! here needs the lease rules, and each runs under the Postgres lock the loop's role changes
//! take, so it never interleaves with a promotion or a demotion.

use std::sync::PoisonError;

use super::handle::AgentHandle;
use crate::pg::{slot_name, PgError, StopMode};

/// Why a maintenance request was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaintenanceError {
    /// Not allowed in this member's state; nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("postgres: {0}")]
    Pg(#[from] PgError),
}

impl AgentHandle {
    /// Restarts this member's Postgres in place (fast stop, start, verified in recovery). Refused
    /// unless it runs as a replica and this agent holds no leader lease: restarting a primary
    /// stops every write for the restart's length and, past the lease, starts a failover.
    pub async fn restart_replica(&self) -> Result<(), MaintenanceError> {
        let _guard = self.shared.pg_lock.lock().await;
        let holds_lease = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner).holds_lease;
        let before = self.pg.probe().await;
        if holds_lease || !before.is_replica() {
            let what = if holds_lease {
                "holds the leader lease"
            } else if before.is_primary() {
                "is primary"
            } else {
                "is not running"
            };
            return Err(MaintenanceError::Refused(format!(
                "this member {what}: only a running replica is restarted in place (pgdctl restart switches a primary over first)"
            )));
        }
        tracing::info!("restarting Postgres on request");
        self.pg.stop(StopMode::Fast).await?;
        self.pg.start().await?;
        if !self.pg.probe().await.is_replica() {
            return Err(PgError::NotVerified("Postgres did not come back as a replica".into()).into());
        }
        // The next heartbeat shows the restart (pending settings cleared) without waiting a period.
        self.woken();
        Ok(())
    }

    /// Re-reads the configuration files (`pg_reload_conf()`).
    pub async fn reload(&self) -> Result<(), MaintenanceError> {
        Ok(self.pg.reload().await?)
    }

    /// Drops the replication slot of `member`, a member removed from the cluster, on this
    /// primary. Refused unless this member is primary; a slot a walsender still uses is kept
    /// (an error), and a slot already gone is fine.
    pub async fn drop_member_slot(&self, member: &str) -> Result<(), MaintenanceError> {
        let _guard = self.shared.pg_lock.lock().await;
        if !self.pg.probe().await.is_primary() {
            return Err(MaintenanceError::Refused("this member is not the primary: slots are dropped on the primary".into()));
        }
        Ok(self.pg.drop_slots(&[slot_name(member)]).await?)
    }
}
