//! What one decision of a node agent looks at ([`AgentInput`]), gathered by the runtime.

use std::time::Duration;

use super::bootstrap::BootstrapPolicy;
use super::failsafe::FailsafeInput;
use crate::config::DynamicConfig;
use crate::lease::{HeldLease, LeaseState};
use crate::model::{ClusterView, LeaseSighting, MemberStatus, MemberTags};
use crate::pg::PgProbe;

/// Who this agent is: fixed for the life of the process.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentIdentity {
    pub cluster: String,
    pub member: String,
    /// libpq host and port other members use to reach this node's Postgres.
    pub pg_host: String,
    pub pg_port: u16,
    /// Base URL of this agent's HTTP API.
    pub api_url: String,
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
    pub tags: MemberTags,
    pub agent_version: String,
}

/// The outcome of this loop's read of the store.
// One per loop, built once and read in place: boxing the view would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreRead {
    Ok(ClusterView),
    /// No answer: nothing is known about the cluster; only the agent's own lease clock counts.
    Unavailable(String),
    /// A record could not be decoded (or the request was refused): nothing may be decided from it.
    Malformed(String),
}

/// How a rejoin was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejoinMethod {
    Rewind,
    Basebackup,
}

/// The last rejoin attempt failed (reported by the runtime; drives the basebackup fallback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejoinFailure {
    pub method: RejoinMethod,
    /// Member name of the source it was attempted from.
    pub source: String,
    pub error: String,
}

/// Starting Postgres as primary failed (reported by the runtime; drives the hand-over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryStartFailure {
    pub term: u64,
    /// Monotonic time of the failure.
    pub at: Duration,
    pub error: String,
}

/// Everything one decision looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInput {
    pub identity: AgentIdentity,
    /// This agent's monotonic clock now (after the store read).
    pub now: Duration,
    /// Wall clock, only for the heartbeat's human-readable timestamp and TTL.
    pub wall_ms: u64,
    pub probe: PgProbe,
    pub store: StoreRead,
    /// The lease observer's verdict on the leader lease read in `store` (`None` when not read).
    pub lease_state: Option<LeaseState>,
    /// The leader lease this agent holds, timed from before the write that produced it.
    pub held: Option<HeldLease>,
    /// Dynamic configuration: the cluster record's, or the last valid one known.
    pub config: DynamicConfig,
    /// Sequence number for this loop's heartbeat.
    pub seq: u64,
    /// The highest term this agent has held the leader lease for.
    pub max_term_held: u64,
    /// The agent was told to demote for this term: it refuses the lease for any term at or below.
    pub fenced_through: u64,
    pub last_rejoin_failure: Option<RejoinFailure>,
    /// The last failed start of this member's Postgres as primary, until one succeeds.
    pub primary_start_failure: Option<PrimaryStartFailure>,
    /// When (monotonic) this agent last asked for a coordinator run.
    pub last_run_request: Option<Duration>,
    /// What this agent has seen of the leader lease (for the heartbeat and the fast path).
    pub leader_seen: Option<LeaseSighting>,
    /// This loop's probe of the designated primary's agent (replicas only; `None`: not probed),
    /// for the fast path (docs/design.md section 4, "Early failover on evidence").
    pub primary_agent: Option<crate::coordinator::AgentReach>,
    /// Failsafe acknowledgements held and promises given (docs/failsafe.md).
    pub failsafe: FailsafeInput,
    /// Slots of members gone for longer than the retention ([`super::DepartedSlots`]).
    pub departed_slots: Vec<String>,
    /// Automatic bootstrap of a cluster without a record (agent::bootstrap).
    pub bootstrap: BootstrapPolicy,
    /// How long this member has run as a replica without streaming (`None`: streaming, or not
    /// a running replica).
    pub replica_not_streaming_for: Option<Duration>,
    /// The last heartbeat this process published (`None` after a start or restart).
    pub last_heartbeat: Option<PublishedHeartbeat>,
}

/// The heartbeat this agent last published, and when (monotonic, taken before the write).
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedHeartbeat {
    pub status: MemberStatus,
    pub at: Duration,
}
