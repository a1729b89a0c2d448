//! What the agent's loop shares with everything outside it: the [`AgentSnapshot`] it publishes
//! after each tick and the [`AgentHandle`] through which the HTTP API, the fencing endpoint and
//! the lease watchdog reach it (demote now, enforce the lease deadline).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::lock::Mutex as AsyncMutex;

use super::failsafe::FailsafeState;
use crate::clock::Clock;
use crate::config::DynamicConfig;
use crate::lsn::Lsn;
use crate::model::{ClusterView, Role};
use crate::pg::{PgControl, PgError, PgProbe};

/// Counters since the agent started (for metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentCounters {
    pub ticks: u64,
    pub lease_acquisitions: u64,
    pub lease_renewals: u64,
    pub lease_renew_failures: u64,
    pub demotions: u64,
    pub promotions: u64,
    pub coordinator_requests: u64,
    pub heartbeat_failures: u64,
    pub action_failures: u64,
}

/// A read-only picture of the agent for the HTTP API and metrics, updated at the end of each tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentSnapshot {
    pub cluster: String,
    pub member: String,
    /// Role from the last probe (`Unknown` when Postgres did not answer).
    pub role: Role,
    pub pg_running: bool,
    /// The agent holds the leader lease (as of the end of the last tick).
    pub holds_lease: bool,
    pub lease_term: Option<u64>,
    /// Monotonic instant (agent clock) until which the held lease is valid (lease - margin).
    pub lease_valid_until: Option<Duration>,
    /// The newest cluster term seen in the store.
    pub term: u64,
    pub fenced_through: u64,
    pub last_probe: Option<PgProbe>,
    pub last_view: Option<ClusterView>,
    /// The last store read failed with this error.
    pub store_error: Option<String>,
    pub last_reason: String,
    pub last_errors: Vec<String>,
    pub last_loop_duration: Duration,
    pub seq: u64,
    pub config: DynamicConfig,
    pub counters: AgentCounters,
}

/// Why an external demotion request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemoteError {
    #[error("demotion failed: {0}")]
    Pg(#[from] PgError),
    #[error("postgres still accepts writes after the demotion")]
    StillPrimary,
}

/// State shared between the loop and handles (HTTP API, fencing endpoint).
pub(super) struct Shared {
    /// Highest term the agent was told to demote for, and why.
    pub(super) fence: Mutex<(u64, String)>,
    /// Serializes every state-changing Postgres call, so a role raise decided before a fence can
    /// never run after it.
    pub(super) pg_lock: AsyncMutex<()>,
    pub(super) snapshot: Mutex<AgentSnapshot>,
    /// Demotions done through [`AgentHandle::demote_now`].
    pub(super) external_demotions: AtomicU64,
    /// Term and validity deadline (agent monotonic clock) of the held lease, updated the moment a
    /// lease write succeeds or the lease is dropped (not only at the end of a tick).
    pub(super) lease_deadline: Mutex<Option<(u64, Duration)>>,
    /// Failsafe acknowledgements and promises (see `super::failsafe`).
    pub(super) failsafe: Mutex<FailsafeState>,
    /// The next loop publishes its heartbeat even if nothing changed ([`AgentHandle::woken`]).
    pub(super) heartbeat_asked: std::sync::atomic::AtomicBool,
    /// A long Postgres operation in progress ([`AgentHandle::activity`]).
    pub(super) activity: Mutex<Option<Activity>>,
    /// The last heartbeat sequence number [`AgentHandle::keep_alive`] published.
    pub(super) kept_alive_seq: AtomicU64,
    /// The newest heartbeat a loop decided to publish (before its actions ran): what
    /// [`AgentHandle::keep_alive`] republishes, also during the first loop of a new member.
    pub(super) last_beat: Mutex<Option<crate::model::MemberStatus>>,
    /// This member's WAL archive and backups as last checked ([`AgentHandle::set_archive_status`]).
    pub(super) archive: Mutex<Option<crate::backup::ArchiveStatus>>,
}

/// A long Postgres operation in progress: a rewind or basebackup of the loop's, or an operator's
/// restart or reinit through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activity {
    /// What runs, e.g. "basebackup from pg-1".
    pub what: String,
    /// Agent monotonic time it began.
    pub since: Duration,
    /// Asked for by an operator (`/restart`, `/reinit`): the loop keeps running meanwhile, and
    /// changes nothing but the heartbeat until it ends. `false`: the loop itself runs it (and so
    /// publishes no heartbeat until it ends; see [`AgentHandle::keep_alive`]).
    pub by_operator: bool,
}

impl Activity {
    /// "basebackup from pg-1: 412 MB copied in 35 s" (`copied`: bytes in the data directory).
    pub fn describe(&self, now: Duration, copied: Option<u64>) -> String {
        let secs = now.saturating_sub(self.since).as_secs();
        match copied {
            Some(bytes) => format!("{}: {} MB copied in {secs} s", self.what, bytes / (1024 * 1024)),
            None => format!("{}: running for {secs} s", self.what),
        }
    }
}

impl Shared {
    pub(super) fn fenced_through(&self) -> u64 {
        self.fence.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    /// From now on this agent refuses the leader lease for any term at or below `term`.
    pub(super) fn fence_through(&self, term: u64, reason: &str) {
        let mut fence = self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        if term >= fence.0 {
            *fence = (term, reason.to_string());
        }
    }
}

/// Clears the activity when the operation ends, however it ends.
pub(super) struct ActivityGuard(Arc<Shared>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        *self.0.activity.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

/// A cheap, cloneable handle to a running agent: its snapshot and the "demote now" request.
#[derive(Clone)]
pub struct AgentHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) pg: Arc<dyn PgControl>,
    pub(super) clock: Arc<dyn Clock>,
}

impl AgentHandle {
    /// A coordinator woke this agent: its next loop publishes a heartbeat even if nothing
    /// changed, so the coordinator sees its current position at once (the designation after a
    /// fence waits for one, S4).
    pub fn woken(&self) {
        self.shared.heartbeat_asked.store(true, Ordering::Relaxed);
    }

    /// The agent's archive check found this: the loop publishes it in the member state (when
    /// it changed) for `pgdctl list`.
    pub fn set_archive_status(&self, status: Option<crate::backup::ArchiveStatus>) {
        *self.shared.archive.lock().unwrap_or_else(PoisonError::into_inner) = status;
    }

    pub fn archive_status(&self) -> Option<crate::backup::ArchiveStatus> {
        self.shared.archive.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The long Postgres operation in progress, if any.
    pub fn activity(&self) -> Option<Activity> {
        self.shared.activity.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Marks `activity` as running until the returned guard is dropped.
    pub(super) fn begin(&self, what: String, by_operator: bool) -> ActivityGuard {
        *self.shared.activity.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Activity { what, since: self.clock.monotonic(), by_operator });
        ActivityGuard(self.shared.clone())
    }

    /// The last loop's snapshot, with a demotion requested since then already counted in
    /// `fenced_through` (so `/primary` turns 503 the moment a fence arrives, not a loop later).
    pub fn snapshot(&self) -> AgentSnapshot {
        let fenced = self.shared.fenced_through();
        let mut s = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner).clone();
        s.fenced_through = s.fenced_through.max(fenced);
        s
    }

    /// The agent holds a leader lease still valid now by its own clock and Postgres was primary
    /// at the last probe (Patroni's `/primary` 200).
    pub fn is_leader(&self) -> bool {
        let s = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        s.role == Role::Primary && s.lease_valid_until.is_some_and(|until| self.clock.monotonic() < until)
    }

    /// Lease watchdog, for a task separate from the loop (e.g. every probe interval): if the held
    /// lease's validity (lease - safety margin from before its last successful write) has passed
    /// by this agent's clock while a loop is stuck (a store call hanging), and Postgres is
    /// read-write, demote now. Returns whether it demoted. The loop itself checks the same
    /// deadline each tick; this covers a tick that does not come back in time.
    pub async fn enforce_lease_deadline(&self) -> Result<bool, DemoteError> {
        let Some((term, until)) = *self.shared.lease_deadline.lock().unwrap_or_else(PoisonError::into_inner) else {
            return Ok(false);
        };
        // Failsafe: every member's acknowledgement extends the deadline (docs/failsafe.md).
        let until = self.deadline_with_failsafe(term, until);
        if self.clock.monotonic() < until || !self.pg.probe().await.is_primary() {
            return Ok(false);
        }
        // Re-check: a renewal may have landed while probing.
        let now_deadline = *self.shared.lease_deadline.lock().unwrap_or_else(PoisonError::into_inner);
        let still = now_deadline.is_some_and(|(t, u)| t == term && self.clock.monotonic() >= self.deadline_with_failsafe(t, u));
        if !still {
            return Ok(false);
        }
        // Not a fence: nobody else asked, and the loop may re-take this member's own lease for
        // `term` (as after its own self-demotion) instead of forcing a failover that loses data.
        tracing::warn!(term, "lease deadline passed while the agent loop was stuck: demoting");
        self.demote_locked(false).await?;
        self.count_external_demotion();
        Ok(true)
    }

    /// A demotion outside the loop (requested, or by the lease watchdog): counted in the
    /// snapshot now and reported as an event at the loop's next tick.
    fn count_external_demotion(&self) {
        self.shared.external_demotions.fetch_add(1, Ordering::Relaxed);
        self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner).counters.demotions += 1;
    }

    /// Demotes under the Postgres lock and verifies Postgres no longer accepts writes. With
    /// `report`, also reads the stopped server's final position under the same lock (nothing can
    /// restart it in between).
    async fn demote_locked(&self, report: bool) -> Result<Option<Lsn>, DemoteError> {
        let _guard = self.shared.pg_lock.lock().await;
        self.pg.demote().await?;
        if self.pg.probe().await.is_primary() {
            return Err(DemoteError::StillPrimary);
        }
        Ok(if report { self.pg.final_position().await } else { None })
    }

    /// Demotes now for `term` (the coordinator's fencer): from now on the agent refuses the leader
    /// lease for any term at or below `term` and releases one it holds at its next loop. Returns
    /// `Ok` only once Postgres no longer accepts writes (stopped, verified by a probe). Waits for
    /// a Postgres operation of the loop already in progress (they are serialized).
    pub async fn demote_now(&self, term: u64, reason: &str) -> Result<(), DemoteError> {
        self.demote_now_with_position(term, reason).await.map(|_| ())
    }

    /// [`Self::demote_now`], also returning the demoted server's final WAL position
    /// ([`PgControl::final_position`]) when it is known: what a switchover waits for the
    /// candidate to replay.
    pub async fn demote_now_with_position(&self, term: u64, reason: &str) -> Result<Option<Lsn>, DemoteError> {
        self.shared.fence_through(term, reason);
        tracing::warn!(term, reason, "demotion requested");
        let lsn = self.demote_locked(true).await?;
        self.count_external_demotion();
        let mut s = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        s.fenced_through = s.fenced_through.max(term);
        Ok(lsn)
    }
}
