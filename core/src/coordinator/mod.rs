//! The coordinator: cluster-wide decisions (failover, switchover, manual requests) for the
//! Lambda and the agent-hosted runner.
//!
//! - [`decide::evaluate`] is pure: one snapshot + this coordinator's observations -> the next
//!   step ([`Action`]) or none, and the reason. [`fencing`] is the pure side of the fencing step:
//!   which fencer call to make and what a fencer's answer does to the record.
//! - [`Coordinator::run_once`] does one evaluation and carries out at most the next few steps,
//!   each recorded in the cluster record by compare-and-set, so a coordinator that dies at any
//!   point is continued by the next one (S5). It never sleeps, spawns or reads a timer: waiting
//!   means "come back on the next run"; time comes only from the injected [`crate::Clock`].
//! - [`runner::run_until_settled`] loops `run_once` with a caller-supplied sleep until the
//!   cluster is settled or a time budget ends.
//!
//! Failover steps (recorded in [`crate::model::Transition`]): bump the term and name nobody
//! primary -> fence the old primary and confirm it -> designate the candidate (the record names
//! it primary of the new term; its agent takes the leader lease and promotes) -> wait until it
//! reports read-write under the new term -> tell the others to follow (the record) -> history.
//! Right after the `Designated` and `Promoted` records the driver wakes the agents that act on
//! them ([`wake`]), so they do not wait for their next loop.
//!
//! Manual requests travel in [`crate::model::ClusterRecord::request`]: whoever asks (pgdctl,
//! the Lambda's JSON actions) writes a [`crate::model::ManualRequest`] by compare-and-set; the
//! coordinator holding the lock takes it, answers in `last_request`, and clears it.

mod action;
pub mod decide;
pub mod driver;
mod eligibility;
pub mod fencing;
pub mod observe;
pub mod probe;
pub mod runner;
pub mod wake;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DynamicConfig};

pub use decide::{apply, evaluate, history_entry, Action, Decision, Eligibility, Verdict};
pub use driver::{Coordinator, Outcome, RunReport};
pub use fencing::FenceAnswer;
pub use observe::{AgentSighting, Liveness, LockStatus, MemberObservation, Observations, Watch};
pub use probe::{hosted_owner, hosting_member, AgentProbe, AgentReach, NoProbe};
pub use runner::run_until_settled;
pub use wake::{wake_targets, AgentWaker, NoWaker, WakeReason, WakeTarget};

/// Whether a failover must fence the old primary first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FencingPolicy {
    /// Promote only after a fencer confirmed the old primary cannot accept writes.
    #[default]
    Required,
    /// No fencer: promote only after this coordinator itself has observed the old primary's
    /// lease unchanged for a full lease duration (S3's explicit alternative).
    Off,
}

/// The coordinator's own settings (the cluster's timings live in the record's DynamicConfig).
///
/// Defaults and why:
/// - `lock_lease_ms` 10 s: equal to the default leader lease, so when the host of the active
///   coordinator dies with the primary, taking over the lock costs no time beyond the leader
///   lease expiry that is being waited for anyway.
/// - `heartbeat_stale_ms` unset: 3 probe intervals or 2 renew intervals, whichever is longer
///   (4 s by default) - one slow probe never makes a member look dead.
/// - `fence_pending_timeout_ms` 60 s: EC2 StopInstances with force usually reaches `stopped`
///   within seconds, SSM commands within ~30 s; past a minute the next fencer is tried.
/// - `promote_timeout_ms` 30 s: pg_promote takes well under a second; 30 s covers crash
///   recovery of a lagging replica before a dead candidate is replaced.
/// - `agent_down_after_ms` 1 s: the primary's agent refusing connections (its process is gone)
///   for this long starts a failover before the lease runs out. An agent restarted by its
///   service manager listens again well within it (about 0.1 s after it starts); a rolling
///   upgrade restarts the primary's agent after a switchover (docs/upgrading.md). 0 turns early
///   failover off: failovers then wait for the lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub fencing: FencingPolicy,
    pub lock_lease_ms: u64,
    pub heartbeat_stale_ms: Option<u64>,
    pub fence_pending_timeout_ms: u64,
    pub promote_timeout_ms: u64,
    pub agent_down_after_ms: u64,
    /// How many recorded steps one `run_once` may take before returning.
    pub max_steps_per_run: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            fencing: FencingPolicy::Required,
            lock_lease_ms: 10_000,
            heartbeat_stale_ms: None,
            fence_pending_timeout_ms: 60_000,
            promote_timeout_ms: 30_000,
            agent_down_after_ms: 1_000,
            max_steps_per_run: 8,
        }
    }
}

impl CoordinatorConfig {
    /// How long a heartbeat may go unchanged before its member counts as down.
    pub fn stale_after(&self, dynamic: &DynamicConfig) -> Duration {
        Duration::from_millis(
            self.heartbeat_stale_ms.unwrap_or_else(|| (3 * dynamic.probe_interval_ms).max(2 * dynamic.renew_interval_ms)),
        )
    }

    /// How long the primary's agent must report its Postgres down before that counts as
    /// evidence for a failover: three probe intervals, at least 4 s, the time an in-place restart
    /// takes (measured 1.8-2.9 s). Independent of the heartbeat cadence: a stopped Postgres is a
    /// change, published at once.
    pub fn pg_down_after(&self, dynamic: &DynamicConfig) -> Duration {
        Duration::from_millis((3 * dynamic.probe_interval_ms).max(4_000))
    }

    pub fn fence_pending_timeout(&self) -> Duration {
        Duration::from_millis(self.fence_pending_timeout_ms)
    }

    /// How long the primary's agent must refuse connections before a failover starts early;
    /// `None`: early failover is off (also without fencing, which has no proof to offer).
    pub fn agent_down_after(&self) -> Option<Duration> {
        (self.agent_down_after_ms > 0 && self.fencing == FencingPolicy::Required)
            .then(|| Duration::from_millis(self.agent_down_after_ms))
    }

    pub fn promote_timeout(&self) -> Duration {
        Duration::from_millis(self.promote_timeout_ms)
    }

    pub fn lock_lease(&self) -> Duration {
        Duration::from_millis(self.lock_lease_ms)
    }

    /// The lock holder stops acting this long before its lock could be taken over.
    pub fn lock_margin(&self) -> Duration {
        Duration::from_millis(self.lock_lease_ms / 5)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lock_lease_ms < 1000 {
            return Err(ConfigError::invalid(
                "coordinator.lock_lease_ms",
                format!("is {}; must be at least 1000", self.lock_lease_ms),
            ));
        }
        if self.heartbeat_stale_ms == Some(0) {
            return Err(ConfigError::invalid("coordinator.heartbeat_stale_ms", "must be above 0"));
        }
        if self.fence_pending_timeout_ms == 0 {
            return Err(ConfigError::invalid("coordinator.fence_pending_timeout_ms", "must be above 0"));
        }
        if self.promote_timeout_ms == 0 {
            return Err(ConfigError::invalid("coordinator.promote_timeout_ms", "must be above 0"));
        }
        if (1..100).contains(&self.agent_down_after_ms) {
            return Err(ConfigError::invalid(
                "coordinator.agent_down_after_ms",
                format!("is {}; must be 0 (early failover off) or at least 100", self.agent_down_after_ms),
            ));
        }
        if self.max_steps_per_run == 0 {
            return Err(ConfigError::invalid("coordinator.max_steps_per_run", "must be at least 1"));
        }
        Ok(())
    }
}
