//! Operator maintenance through the agent (`pgdctl restart`, `reinit`, `reload`, `remove`; the
//! agent API's `POST /restart`, `/reinit`, `/reload`, `/drop-slot`). None of these raises a
//! member's role: a replica's restart or reinit is refused on a primary, and the primary's
//! in-place restart only stops Postgres, leaving the start to the loop's own lease-checked path
//! (as after a crash of Postgres alone). Each runs under the Postgres lock the loop's role
//! changes take, so it never interleaves with a promotion or a demotion; a replica's restart and
//! a reinit mark an [`super::Activity`] meanwhile: the loop keeps the heartbeat going but starts
//! nothing.

use std::sync::atomic::Ordering;
use std::sync::PoisonError;
use std::time::Duration;

use super::handle::AgentHandle;
use super::heartbeat::{keep_alive_beat, period};
use crate::params::MemberState;
use crate::pg::{slot_name, PgError, PrimaryTarget, StopMode};
use crate::store::{Store, StoreError};

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
    /// unless it runs as a replica and this agent holds no leader lease (the primary:
    /// [`Self::restart_primary_in_place`], or a switchover).
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
        let _activity = self.begin("restart".into(), true);
        self.pg.stop(StopMode::Fast).await?;
        self.pg.start().await?;
        if !self.pg.probe().await.is_replica() {
            return Err(PgError::NotVerified("Postgres did not come back as a replica".into()).into());
        }
        // The next heartbeat shows the restart (pending settings cleared) without waiting a period.
        self.woken();
        Ok(())
    }

    /// Replaces this replica's data directory with a fresh copy of the primary's (Patroni's
    /// reinit): refused on the primary, on the lease holder and while the last view names no
    /// primary with an address. The copy starts as a standby of that primary.
    pub async fn reinit(&self) -> Result<(), MaintenanceError> {
        let _guard = self.shared.pg_lock.lock().await;
        let snapshot = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if snapshot.holds_lease || self.pg.probe().await.is_primary() {
            return Err(MaintenanceError::Refused(
                "this member is the primary: only a replica is re-cloned (switch over first)".into(),
            ));
        }
        let view = snapshot.last_view.as_ref();
        let primary = view.and_then(|v| v.cluster.as_ref()).and_then(|c| c.primary.clone());
        let source = match (primary, view) {
            (Some(p), _) if p == snapshot.member => {
                return Err(MaintenanceError::Refused("the cluster record names this member primary: it is not re-cloned".into()))
            }
            (Some(p), Some(v)) => match v.members.get(&p) {
                Some(m) if !m.pg_host.is_empty() && m.pg_port != 0 => {
                    PrimaryTarget { name: p, host: m.pg_host.clone(), port: m.pg_port }
                }
                _ => return Err(MaintenanceError::Refused(format!("primary {p} has published no address to copy from"))),
            },
            _ => return Err(MaintenanceError::Refused("no primary to copy from in the last store read".into())),
        };
        tracing::warn!(source = %source, "reinit requested: replacing the data directory with a copy of the primary's");
        let _activity = self.begin(format!("reinit: basebackup from {}", source.name), true);
        self.pg.basebackup(&source).await?;
        self.woken();
        Ok(())
    }

    /// Restarts the primary's Postgres in place: a fast stop under the Postgres lock, then the
    /// loop (woken at once) starts it again exactly as after a crash of Postgres alone, under
    /// its still-held lease and with every check of that path (the lease valid for the term, no
    /// fence; a start that fails hands the lease over). Writes stop for the restart's length;
    /// no one else can be promoted meanwhile, as the lease is still renewed. Refused unless this
    /// agent holds the lease and Postgres runs as primary.
    pub async fn restart_primary_in_place(&self) -> Result<(), MaintenanceError> {
        let _guard = self.shared.pg_lock.lock().await;
        let holds_lease = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner).holds_lease;
        if !holds_lease || !self.pg.probe().await.is_primary() {
            return Err(MaintenanceError::Refused("this member is not the primary holding the lease".into()));
        }
        tracing::warn!("restarting the primary's Postgres in place on request: writes stop until it is back");
        self.pg.stop(StopMode::Fast).await?;
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

    /// One round of keeping this member visible while the loop runs a long operation of its own
    /// (a basebackup or rewind may take hours, and the loop publishes nothing until it ends):
    /// when the loop has been busy for a heartbeat period, publishes the heartbeat
    /// ([`keep_alive_beat`]) and the member state with the operation's progress. Call it every
    /// heartbeat period. Returns whether it published.
    pub async fn keep_alive(&self, store: &dyn Store, loop_busy_for: Duration) -> Result<bool, StoreError> {
        let Some(activity) = self.activity().filter(|a| !a.by_operator) else { return Ok(false) };
        let snapshot = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(last) = self.shared.last_beat.lock().unwrap_or_else(PoisonError::into_inner).clone() else { return Ok(false) };
        if loop_busy_for < period(&snapshot.config) {
            return Ok(false);
        }
        let seq = snapshot.seq.max(last.seq).max(self.shared.kept_alive_seq.load(Ordering::Relaxed)) + 1;
        self.shared.kept_alive_seq.store(seq, Ordering::Relaxed);
        let probe = self.pg.probe().await;
        store.put_member(&snapshot.cluster, &keep_alive_beat(&last, &probe, seq, self.clock.wall_ms())).await?;
        let stored = snapshot.last_view.as_ref().and_then(|v| v.states.get(&last.name)).cloned();
        let mut state = stored.unwrap_or_else(|| MemberState { name: last.name.clone(), ..Default::default() });
        state.activity = Some(activity.describe(self.clock.monotonic(), self.pg.data_dir_bytes().await));
        store.put_member_state(&snapshot.cluster, &state).await?;
        Ok(true)
    }
}
