//! The cluster model: what the store holds (docs/design.md section 2).
//!
//! Intent (the [`ClusterRecord`]) is kept apart from observed state (each agent's
//! [`MemberStatus`] heartbeat and the [`LeaderLease`]). The cluster record has four writers, all
//! through compare-and-set on its `version`: the coordinator (every transition step, pause and
//! resume, answers to requests), `pgdctl` (`bootstrap`, `edit-config`, writing and withdrawing a
//! request), the Lambda handler (a manual action's request) and the primary's agent in
//! synchronous mode (the recorded synchronous set, `ClusterRecord.sync`).
//!
//! Every stored type here is forward compatible: unknown fields are ignored when read (a newer
//! version may add fields), and the record-level version check lives in one place,
//! [`crate::codec::decode`]. The contract is in docs/upgrading.md. Configuration files keep
//! rejecting unknown keys ([`crate::config::strict`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::DynamicConfig;
use crate::lsn::Lsn;

/// What a member's Postgres is doing, as its agent last observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read-write (not in recovery).
    Primary,
    /// In recovery (standby).
    Replica,
    /// Postgres does not answer, or its role could not be read.
    #[default]
    Unknown,
}

/// Operator tags on a member (Patroni's `nofailover` and failover priority).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct MemberTags {
    /// Never promote this member.
    pub nofailover: bool,
    /// Higher wins a tie between equally advanced candidates.
    pub priority: i32,
}

/// One member's heartbeat (`member#<name>`), written only by that member's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub role: Role,
    /// Postgres answered the last probe.
    pub pg_running: bool,
    pub timeline: u32,
    /// Primary: `pg_current_wal_lsn()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_lsn: Option<Lsn>,
    /// Primary: `pg_current_wal_flush_lsn()`; replica: last flushed received position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<Lsn>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<Lsn>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<Lsn>,
    /// Replica: bytes behind the primary it streams from, as last measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    /// Replica: seconds since the last replayed transaction's commit on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Replica: a WAL receiver is streaming from a primary.
    #[serde(default)]
    pub streaming: bool,
    /// Increments on every heartbeat; observers judge liveness by its change, never by timestamps.
    pub seq: u64,
    /// The newest cluster term this agent has seen.
    #[serde(default)]
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub tags: MemberTags,
    #[serde(default)]
    pub agent_version: String,
    /// Base URL of the agent's HTTP API, e.g. `http://10.0.1.5:8008`.
    #[serde(default)]
    pub api_url: String,
    /// libpq host and port other members use to reach this Postgres.
    #[serde(default)]
    pub pg_host: String,
    #[serde(default)]
    pub pg_port: u16,
    /// Wall-clock time of the beat in ms since the epoch: shown to humans, never used to judge liveness.
    #[serde(default)]
    pub updated_at_ms: u64,
    /// Unix time (seconds) after which DynamoDB TTL may garbage-collect a dead member's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
    /// What this member last saw of the leader lease, timed on its own monotonic clock: the
    /// evidence a replica offers when it asks the coordinator for a run (fast path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader_seen: Option<LeaseSighting>,
    /// Primary in failsafe mode: the members whose acknowledgement it needs to run on without the
    /// store. A member not listed here must never take over this primary's lease (docs/failsafe.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_members: Option<Vec<String>>,
}

/// A member's observation of the leader lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSighting {
    pub term: u64,
    pub rvn: String,
    /// How long the observer has seen this exact `rvn`, by its own monotonic clock.
    pub unchanged_ms: u64,
}

impl MemberStatus {
    /// A member with nothing observed yet.
    pub fn new(name: impl Into<String>) -> Self {
        MemberStatus {
            name: name.into(),
            role: Role::Unknown,
            pg_running: false,
            timeline: 0,
            write_lsn: None,
            flush_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            streaming: false,
            seq: 0,
            term: 0,
            instance_id: None,
            availability_zone: None,
            tags: MemberTags::default(),
            agent_version: String::new(),
            api_url: String::new(),
            pg_host: String::new(),
            pg_port: 0,
            updated_at_ms: 0,
            expire_at: None,
            leader_seen: None,
            failsafe_members: None,
        }
    }

    /// The furthest WAL position this member holds: its write position as primary, else the
    /// furthest of received and replayed.
    pub fn wal_position(&self) -> Option<Lsn> {
        match self.role {
            Role::Primary => self.write_lsn.or(self.flush_lsn),
            _ => match (self.receive_lsn, self.replay_lsn) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Which lease item a lease call refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseName {
    /// `leader`: held by the writable primary.
    Leader,
    /// `lock#coordinator`: held by the one coordinator acting on the cluster.
    Coordinator,
    /// `lock#initialize`: held by the agent that initialises a cluster without a record
    /// (automatic bootstrap). Not part of [`crate::ClusterView`]: older readers skip the item.
    Initialize,
}

impl LeaseName {
    pub fn item_key(self) -> &'static str {
        match self {
            LeaseName::Leader => crate::keys::LEADER,
            LeaseName::Coordinator => crate::keys::COORDINATOR_LOCK,
            LeaseName::Initialize => crate::keys::INITIALIZE_LOCK,
        }
    }
}

/// A lease record (DynamoDB lock-client pattern).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderLease {
    /// Holder's member (or coordinator) name; empty once released.
    pub owner: String,
    /// Fencing token: strictly increases with every acquisition, never with a renewal.
    pub term: u64,
    /// Record version number: a new UUID on every write; observers time its changes.
    pub rvn: String,
    /// How long a holder may go without renewing before others may take over.
    pub lease_ms: u64,
    /// Set by a clean release: the lease may be acquired at once.
    #[serde(default)]
    pub released: bool,
}

impl LeaderLease {
    pub fn is_free(&self) -> bool {
        self.released || self.owner.is_empty()
    }
}

/// Planned (switchover) or unplanned (failover) change of primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// The primary was lost (or an operator forced a change); the old primary must be fenced.
    Failover,
    /// Planned: the healthy primary hands over after the candidate has caught up; no data loss.
    Switchover,
}

/// The steps of a change of primary, in order. Each is recorded in the cluster record before the
/// next begins, so a new coordinator continues where a dead one stopped (S5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionStep {
    /// The term was bumped; the old primary must now be fenced (or demoted, for a switchover).
    TermBumped,
    /// The old primary is confirmed fenced/demoted.
    Fenced,
    /// The candidate is named primary for the new term and may acquire the leader lease.
    Designated,
    /// The candidate reported read-write under the new term.
    Promoted,
    /// The other members were told to follow the new primary.
    Followed,
}

/// A change of primary in progress (stored inside the cluster record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub kind: TransitionKind,
    pub step: TransitionStep,
    /// The term this transition created.
    pub term: u64,
    /// The term before the transition (the one whose synchronous standbys are eligible).
    #[serde(default)]
    pub from_term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary: Option<String>,
    pub candidate: String,
    pub reason: String,
    /// Wall-clock start (ms since epoch), for history and humans.
    pub started_ms: u64,
    /// Wall-clock time each step was reached, by step name.
    #[serde(default)]
    pub step_times_ms: BTreeMap<String, u64>,
    /// The operator asked to skip eligibility checks.
    #[serde(default)]
    pub forced: bool,
    /// Fencing of the old primary still awaiting confirmation (e.g. an SSM command id), so a
    /// resumed coordinator re-checks it instead of starting over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceProgress>,
    /// How the old primary was confirmed fenced (fencer name and its evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
    /// Switchover: the old primary's last WAL position after its demotion; the candidate is
    /// designated only once it has replayed up to here (zero data loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<Lsn>,
    /// The candidate's WAL position when it first reported read-write in this term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_lsn: Option<Lsn>,
}

/// Fencing in flight: which fencer answered "pending" with which handle, and which fencers this
/// transition has given up on (timed out), so the chain moves on to the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FenceProgress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingFence>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<String>,
}

/// A fencer's "pending" answer, recorded so the next run asks the same fencer about the same handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFence {
    pub fencer: String,
    pub handle: String,
}

/// What an operator can ask the coordinator for through the cluster record (`pgdctl` on either
/// store, or the Lambda's JSON actions). Written by compare-and-set into
/// [`ClusterRecord::request`]; the coordinator takes it, acts or refuses, clears it and records a
/// [`RequestOutcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestAction {
    /// Forced change of primary: fences the current primary. `candidate` optional.
    Failover,
    /// Planned change of primary without data loss: demote, catch up, promote.
    Switchover,
    /// Stop automatic failover.
    Pause,
    /// Resume automatic failover.
    Resume,
}

/// The stored (snake_case) name, for messages and tables (width and alignment apply): a whole
/// message is never lower-cased, which would mangle member names.
impl std::fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            TransitionKind::Failover => "failover",
            TransitionKind::Switchover => "switchover",
        })
    }
}

/// The stored (snake_case) name, for messages.
impl std::fmt::Display for RequestAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            RequestAction::Failover => "failover",
            RequestAction::Switchover => "switchover",
            RequestAction::Pause => "pause",
            RequestAction::Resume => "resume",
        })
    }
}

/// A manual request waiting for the coordinator (`ClusterRecord.request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualRequest {
    /// Caller-chosen id (e.g. a UUID) so the caller can find its outcome in `last_request`.
    pub id: String,
    pub action: RequestAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Accept a candidate that fails the eligibility checks (S4 still logged in the reason).
    #[serde(default)]
    pub force: bool,
    /// Wall-clock time of the request, for humans.
    #[serde(default)]
    pub requested_ms: u64,
}

/// What became of the last manual request (`ClusterRecord.last_request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub id: String,
    pub action: RequestAction,
    pub accepted: bool,
    pub reason: String,
}

/// What synchronous replication currently guarantees (recorded by the primary before it relies on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncState {
    /// The term in which `members` was recorded.
    pub term: u64,
    /// Standbys listed in `synchronous_standby_names`.
    pub members: Vec<String>,
    /// Mode `on` fell back to asynchronous commits because no standby was available.
    #[serde(default)]
    pub degraded: bool,
}

/// The cluster record (`cluster`): intent. Changed only by compare-and-set on `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Compare-and-set version, maintained by the store: callers never set it themselves.
    #[serde(default)]
    pub version: u64,
    /// The current term. The designated `primary` is the only member allowed to be primary in it.
    pub term: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub config: DynamicConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncState>,
    /// A manual request (failover/switchover/pause/resume) waiting for the coordinator; see
    /// [`ManualRequest`]. Writers must use compare-and-set and must not replace a pending one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<ManualRequest>,
    /// The coordinator's answer to the last request it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<RequestOutcome>,
}

impl ClusterRecord {
    /// A new cluster whose first primary is `primary` in term 1.
    pub fn bootstrap(primary: impl Into<String>, config: DynamicConfig) -> Self {
        ClusterRecord {
            version: 0,
            term: 1,
            primary: Some(primary.into()),
            transition: None,
            paused: false,
            config,
            sync: None,
            request: None,
            last_request: None,
        }
    }
}

/// One promotion (`history#<term>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub term: u64,
    pub kind: TransitionKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary: Option<String>,
    pub new_primary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<Lsn>,
    pub reason: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Milliseconds from the start to each step.
    #[serde(default)]
    pub step_ms: BTreeMap<String, u64>,
    /// The version of the coordinator that recorded it (absent in records of releases before
    /// the record contract, which cannot read it: upgrade `pgdctl` first, docs/upgrading.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_version: Option<String>,
}

/// A cluster's entry in the fleet registry ([`crate::keys::REGISTRATION`]): coordinators that
/// discover their clusters evaluate every registered one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// When the cluster was first registered (wall clock, ms).
    pub registered_ms: u64,
}

/// A stored item that could not be read (garbage, a record for newer readers, a member record
/// under another member's key): skipped by the read that met it, and shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableItem {
    /// The item's key (`member#x`, `history#...`).
    pub item: String,
    pub error: String,
}

/// One consistent read of everything a cluster's decisions need.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    pub cluster: Option<ClusterRecord>,
    pub leader: Option<LeaderLease>,
    pub coordinator: Option<LeaderLease>,
    /// Heartbeats by member name.
    pub members: BTreeMap<String, MemberStatus>,
    /// Member items that could not be read and were skipped (never stored; see
    /// docs/upgrading.md): an unreadable member counts as one without a heartbeat, it never
    /// fails the read. An unreadable cluster record or lease still fails the whole read.
    pub unreadable: Vec<UnreadableItem>,
    /// Cluster-wide PostgreSQL parameters (`None`: never set).
    pub parameters: Option<crate::params::ClusterParameters>,
    /// Backup schedule, retention and restore source (`None`: never set).
    pub backup: Option<crate::backup::BackupConfig>,
    /// What each agent last reported beside its heartbeat, by member name.
    pub states: BTreeMap<String, crate::params::MemberState>,
}

impl ClusterView {
    /// The designated primary once the cluster has settled around it: no transition in progress,
    /// it holds the (unreleased) leader lease, runs read-write, and at least `replicas` others
    /// stream from it on its timeline (a replica still on an older timeline is not yet a
    /// candidate for the next failover). For tests, drills and operators' scripts.
    pub fn healthy_primary(&self, replicas: usize) -> Option<&str> {
        let r = self.cluster.as_ref()?;
        let p = r.primary.as_deref()?;
        let lease = self.leader.as_ref()?;
        if r.transition.is_some() || lease.owner != p || lease.released {
            return None;
        }
        let m = self.members.get(p)?;
        if m.role != Role::Primary || !m.pg_running {
            return None;
        }
        let streaming = self
            .members
            .values()
            .filter(|r| r.name != p && r.role == Role::Replica && r.streaming && r.timeline >= m.timeline)
            .count();
        (streaming >= replicas).then_some(p)
    }
}

#[cfg(test)]
impl Transition {
    /// A failover from `old` to `candidate` in `term` (from `term - 1`), at the `Fenced` step.
    pub(crate) fn fenced_failover(old: &str, candidate: &str, term: u64) -> Self {
        Transition {
            kind: TransitionKind::Failover,
            step: TransitionStep::Fenced,
            term,
            from_term: term - 1,
            old_primary: Some(old.into()),
            candidate: candidate.into(),
            reason: "lease expired".into(),
            started_ms: 1,
            step_times_ms: Default::default(),
            forced: false,
            fence: None,
            fenced_by: None,
            final_lsn: None,
            promote_lsn: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_primary_needs_lease_role_and_streaming_replicas_on_its_timeline() {
        let mut v = ClusterView {
            cluster: Some(ClusterRecord::bootstrap("a", crate::config::DynamicConfig::default())),
            leader: Some(LeaderLease { owner: "a".into(), term: 1, rvn: "r".into(), lease_ms: 10_000, released: false }),
            ..Default::default()
        };
        for (name, role) in [("a", Role::Primary), ("b", Role::Replica), ("c", Role::Replica)] {
            let mut m = MemberStatus::new(name);
            m.role = role;
            m.pg_running = true;
            m.streaming = role == Role::Replica;
            m.timeline = 2;
            v.members.insert(name.into(), m);
        }
        assert_eq!(v.healthy_primary(2), Some("a"));
        v.members.get_mut("c").unwrap().timeline = 1;
        assert_eq!(v.healthy_primary(2), None, "a replica on an older timeline does not count");
        assert_eq!(v.healthy_primary(1), Some("a"));
        v.leader.as_mut().unwrap().released = true;
        assert_eq!(v.healthy_primary(0), None, "a released lease is not held");
    }

    #[test]
    fn member_round_trips_and_ignores_unknown_fields() {
        let mut m = MemberStatus::new("n1");
        m.role = Role::Replica;
        m.receive_lsn = Some("0/300".parse().unwrap());
        m.replay_lsn = Some("0/200".parse().unwrap());
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<MemberStatus>(&json).unwrap(), m);
        assert_eq!(m.wal_position(), Some("0/300".parse().unwrap()));
        let newer = json.replacen('{', "{\"surprise\":{\"a\":1},\"format_version\":2,", 1);
        assert_eq!(crate::codec::decode::<MemberStatus>("member#n1", newer.as_bytes()).unwrap(), m);
        let too_new = json.replacen('{', "{\"min_reader_version\":2,", 1);
        let err = crate::codec::decode::<MemberStatus>("member#n1", too_new.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("readers of record format 2"), "{err}");
    }

    #[test]
    fn released_or_ownerless_lease_is_free() {
        let lease = LeaderLease { owner: "a".into(), term: 3, rvn: "x".into(), lease_ms: 10, released: false };
        assert!(!lease.is_free());
        assert!(LeaderLease { released: true, ..lease.clone() }.is_free());
        assert!(LeaderLease { owner: String::new(), ..lease }.is_free());
    }
}
