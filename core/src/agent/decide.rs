//! The pure per-loop decision of a node agent.

use std::time::Duration;

use super::bootstrap::initialize_blocker;
use super::heartbeat;
use super::input::{AgentInput, PrimaryStartFailure, RejoinMethod, StoreRead};
use super::sync::{self, SyncInput, SyncStep};
use crate::config::DynamicConfig;
use crate::coordinator::AgentReach;
use crate::lease::{HeldLease, LeaseState};
use crate::model::{ClusterRecord, ClusterView, LeaderLease, LeaseSighting, MemberStatus, Role};
use crate::pg::{slot_name, DataDirState, PgProbe, PrimaryTarget, SyncStandbys};

/// One thing to do. The runtime executes them in order; see [`super::AgentRuntime::tick`] for what
/// a failure skips.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentAction {
    /// Renew the held lease (conditional on its `rvn`).
    RenewLease,
    /// Claim the leader lease for `term`: `takeover_rvn` is the rvn observed unchanged for a full
    /// lease duration (`None`: the lease is absent or released).
    AcquireLease {
        term: u64,
        takeover_rvn: Option<String>,
    },
    /// The stored lease is this member's for the current term but this process does not hold it
    /// (it restarted): renew that exact record to hold it again.
    AdoptLease {
        lease: LeaderLease,
    },
    /// Release the held lease so a successor may take it at once.
    ReleaseLease,
    /// Stop counting on the held lease (it is no longer valid by this agent's clock).
    ForgetLease,
    /// Start Postgres in whatever role its data directory says.
    Start,
    /// Promote to read-write for `term` (runtime re-checks the lease just before).
    Promote {
        term: u64,
    },
    /// Self-fence: stop accepting writes now.
    Demote,
    /// The S2 safety net, emitted for a running primary that is not demoting: demote unless this
    /// agent still holds a valid lease (or a failsafe extension) once this loop's lease writes
    /// are done. The decision assumes its lease writes succeed; this is the step that covers
    /// the case where one did not (a renewal that failed, a claim that lost a race).
    DemoteIfLeaseLost,
    Follow(PrimaryTarget),
    Rewind(PrimaryTarget),
    Basebackup(PrimaryTarget),
    /// Create replication slots for these members (on the primary).
    EnsureSlots(Vec<String>),
    /// Drop these slots of departed members (on the primary; see agent::slots).
    DropSlots(Vec<String>),
    /// Automatic bootstrap (agent::bootstrap): claim the initialize lock, initialise the empty
    /// data directory, create the cluster record naming this member primary in term 1.
    Initialize,
    /// Synchronous mode: write this cluster record (the read one with a new `sync`),
    /// conditional on its `version`.
    RecordSync(ClusterRecord),
    /// Synchronous mode: set `synchronous_standby_names`.
    SetSyncStandbys(SyncStandbys),
    /// Ask for a coordinator run now (fast path): the leader lease looks dead.
    RequestCoordinatorRun {
        evidence: LeaseSighting,
    },
    PublishHeartbeat(MemberStatus),
}

impl AgentAction {
    /// Changes the role or data of Postgres (skipped after an earlier role action failed).
    pub fn is_role_change(&self) -> bool {
        matches!(
            self,
            AgentAction::Start
                | AgentAction::Promote { .. }
                | AgentAction::Follow(_)
                | AgentAction::Rewind(_)
                | AgentAction::Basebackup(_)
                | AgentAction::EnsureSlots(_)
                | AgentAction::DropSlots(_)
                | AgentAction::Initialize
                | AgentAction::RecordSync(_)
                | AgentAction::SetSyncStandbys(_)
        )
    }

    /// Stops Postgres as a self-fence (possibly, for the guarded safety net).
    pub fn is_demotion(&self) -> bool {
        matches!(self, AgentAction::Demote | AgentAction::DemoteIfLeaseLost)
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            AgentAction::RenewLease => "renew_lease",
            AgentAction::AcquireLease { .. } => "acquire_lease",
            AgentAction::AdoptLease { .. } => "adopt_lease",
            AgentAction::ReleaseLease => "release_lease",
            AgentAction::ForgetLease => "forget_lease",
            AgentAction::Start => "start",
            AgentAction::Promote { .. } => "promote",
            AgentAction::Demote => "demote",
            AgentAction::DemoteIfLeaseLost => "demote_if_lease_lost",
            AgentAction::Follow(_) => "follow",
            AgentAction::Rewind(_) => "rewind",
            AgentAction::Basebackup(_) => "basebackup",
            AgentAction::EnsureSlots(_) => "ensure_slots",
            AgentAction::DropSlots(_) => "drop_slots",
            AgentAction::Initialize => "initialize",
            AgentAction::RecordSync(_) => "record_sync",
            AgentAction::SetSyncStandbys(_) => "set_sync_standbys",
            AgentAction::RequestCoordinatorRun { .. } => "request_coordinator_run",
            AgentAction::PublishHeartbeat(_) => "publish_heartbeat",
        }
    }
}

/// What to do this loop, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDecision {
    pub actions: Vec<AgentAction>,
    pub reason: String,
}

impl AgentDecision {
    pub fn names(&self) -> Vec<&'static str> {
        self.actions.iter().map(AgentAction::name).collect()
    }
}

/// The decision of one loop (S2 rules, docs/design.md section 3).
///
/// - A held lease that is no longer valid by this agent's monotonic clock (lease - safety margin
///   since before the last successful write) is forgotten and a running primary demotes at once,
///   whatever the store says.
/// - A held lease is renewed once its last write is `renew_interval_ms` old (then every loop
///   until a renewal succeeds): a conditional write, safe to attempt even with the store
///   unreadable (or a record malformed), when nothing else changes.
/// - Only the member the cluster record names primary for the current term may hold the lease or
///   run read-write; it acquires the lease with `term = record.term` only if that term is newer
///   than any it held and not fenced, then promotes (or keeps running as primary).
/// - Everyone else releases a held lease, demotes a running primary, and follows the designated
///   primary: re-point a standby, rewind a former primary (basebackup when the rewind failed),
///   basebackup an empty data directory.
/// - A non-holder that sees the leader lease unchanged for a full lease duration asks for a
///   coordinator run (at most once per lease duration).
/// - A paused cluster gets no role changes other than the S2 demotion.
/// - A demotion runs before a release of the lease in the same loop.
/// - A running primary that does not demote ends with [`AgentAction::DemoteIfLeaseLost`].
/// - The heartbeat is published last, when due ([`heartbeat::due`]); with a coordinator-run
///   request, always, and just before it (the request's evidence is the heartbeat's sighting).
///
/// The runtime carries the actions out in this order (see [`super::AgentRuntime::tick`] for
/// what a failure skips).
pub fn decide(input: &AgentInput) -> AgentDecision {
    let mut d = Decider { input, actions: Vec::new(), reasons: Vec::new(), demoting: false };
    d.run();
    if input.probe.is_primary() && !d.demoting {
        d.actions.push(AgentAction::DemoteIfLeaseLost);
    }
    let beat = heartbeat::heartbeat(input);
    match d.actions.iter().position(|a| matches!(a, AgentAction::RequestCoordinatorRun { .. })) {
        // The coordinator judges the lease by the sighting in this heartbeat: it must be in the
        // store before the request, whatever the heartbeat's cadence says.
        Some(request) => d.actions.insert(request, AgentAction::PublishHeartbeat(beat)),
        None if heartbeat::due(input, &beat) => d.actions.push(AgentAction::PublishHeartbeat(beat)),
        None => {}
    }
    AgentDecision { actions: d.actions, reason: d.reasons.join("; ") }
}

struct Decider<'a> {
    input: &'a AgentInput,
    actions: Vec<AgentAction>,
    reasons: Vec<String>,
    demoting: bool,
}

impl<'a> Decider<'a> {
    fn push(&mut self, action: AgentAction) {
        if action == AgentAction::Demote {
            if self.demoting {
                return;
            }
            self.demoting = true;
            // Stop writes before giving the lease up: once it is released, a coordinator with
            // fencing off may promote another member at once (S2; found by the sim, seed 4678).
            if let Some(release) = self.actions.iter().position(|a| *a == AgentAction::ReleaseLease) {
                self.actions.insert(release, action);
                return;
            }
        }
        self.actions.push(action);
    }

    fn why(&mut self, reason: impl Into<String>) {
        self.reasons.push(reason.into());
    }

    /// Renews once the last successful write is `renew_interval_ms` old: at the defaults three
    /// of every ten loops, leaving the rest of the lease (minus the margin) for retries.
    fn renew_when_due(&mut self, held: &HeldLease) {
        if self.input.now.saturating_sub(held.written_from) >= self.input.config.renew_interval() {
            self.push(AgentAction::RenewLease);
        }
    }

    fn run(&mut self) {
        let input = self.input;
        let probe = &input.probe;
        let margin = input.config.safety_margin();

        // S2 first: a lease not renewed within lease - margin (by our own clock) is gone.
        let mut held = input.held.clone();
        let failsafe_until = input.failsafe.until.filter(|u| input.now < *u);
        if let Some(h) = &held {
            if !h.is_valid(input.now, margin) && failsafe_until.is_some() {
                // Every member promised not to take over: keep running on their acknowledgements.
                let left = failsafe_until.unwrap_or_default().saturating_sub(input.now).as_millis();
                self.why(format!(
                    "failsafe: leader lease term {} not renewed, kept for {left} ms on every member's acknowledgement",
                    h.lease.term
                ));
            } else if !h.is_valid(input.now, margin) {
                self.push(AgentAction::ForgetLease);
                let late = input.now.saturating_sub(h.written_from).as_millis();
                self.why(format!(
                    "leader lease term {} not renewed for {late} ms (valid for {} ms minus {} ms margin)",
                    h.lease.term,
                    h.lease.lease_ms,
                    margin.as_millis()
                ));
                if probe.is_primary() {
                    self.push(AgentAction::Demote);
                    self.why("demoting: a primary without a valid lease must stop accepting writes (S2)");
                }
                held = None;
            } else if h.lease.term <= input.fenced_through {
                self.push(AgentAction::ReleaseLease);
                self.why(format!("releasing lease term {}: told to demote through term {}", h.lease.term, input.fenced_through));
                held = None;
            }
        }

        let view = match &input.store {
            StoreRead::Ok(view) => view,
            StoreRead::Unavailable(e) | StoreRead::Malformed(e) => {
                let what =
                    if matches!(input.store, StoreRead::Unavailable(_)) { "store unavailable" } else { "store record unusable" };
                self.why(format!("{what}: {e}"));
                if let Some(h) = &held {
                    self.renew_when_due(h);
                    self.why("keeping the held lease; no other change without a usable view");
                } else if probe.is_primary() && !self.demoting {
                    self.push(AgentAction::Demote);
                    self.why("demoting: running as primary without a lease (S2)");
                } else {
                    self.why("no other change without a usable view");
                }
                return;
            }
        };

        let me = input.identity.member.as_str();
        let record = view.cluster.as_ref();
        let term = record.map_or(0, |r| r.term);
        let paused = record.is_some_and(|r| r.paused);
        let designated = record.and_then(|r| r.primary.as_deref()) == Some(me);

        if designated && term > input.fenced_through {
            self.as_designated(view, term, held, paused);
        } else {
            if held.is_some() {
                self.push(AgentAction::ReleaseLease);
                self.why("releasing the leader lease: this member is not the designated primary");
            }
            if probe.is_primary() {
                self.push(AgentAction::Demote);
                match record {
                    None => self.why("demoting: no cluster record names this member primary (S2)"),
                    Some(r) if designated => self
                        .why(format!("demoting: told to demote through term {} (record term {})", input.fenced_through, r.term)),
                    Some(r) => self.why(format!(
                        "demoting: the cluster record names {} primary for term {}",
                        r.primary.as_deref().unwrap_or("no member"),
                        r.term
                    )),
                }
            }
            if paused {
                self.why("cluster paused: no role changes");
            } else if !self.demoting {
                self.as_follower(view);
            }
            self.fast_path();
        }
    }

    /// This member is the designated primary for `term`.
    fn as_designated(&mut self, view: &ClusterView, term: u64, held: Option<HeldLease>, paused: bool) {
        let input = self.input;
        let me = input.identity.member.as_str();
        let probe = &input.probe;
        if let Some(f) = self.handing_over(term, paused) {
            // Postgres is down and did not restart in place: stop renewing, so the lease runs out
            // and a replica takes over, rather than hold it over a primary that cannot serve
            // (docs/design.md section 4). Not a release: this agent may never claim this term
            // again, while its own unreleased lease can be re-taken after the window when nobody
            // took over (the coordinator's failover moves the record to a new term first).
            self.why(format!(
                "postgres did not restart in place as primary for term {term} ({}): not renewing the leader lease for {} ms",
                f.error,
                handover_window(&input.config).as_millis()
            ));
            return;
        }
        if probe.is_replica() {
            if let Some(why) = overtaken(view, me, probe, &input.config) {
                // S4 after the designation: a replica whose position reached the store only now
                // (its agent was cut off or hung) is further ahead than the coordinator knew.
                // Promoting would lose what it holds, so neither the lease nor the promotion;
                // the coordinator replaces a candidate that has not promoted within its promote
                // timeout, judging the new positions.
                self.why(format!("not promoting for term {term}: {why}"));
                return;
            }
        }
        let will_hold = match &held {
            Some(h) if h.lease.term == term => {
                self.renew_when_due(h);
                true
            }
            Some(h) => {
                // An older term of ours: hand it back and claim the new term in the same loop.
                self.push(AgentAction::ReleaseLease);
                self.why(format!("replacing lease term {} with term {term}", h.lease.term));
                self.claim(term, None, true)
            }
            None => match &view.leader {
                Some(l) if l.owner == me && l.term == term && !l.released => {
                    self.push(AgentAction::AdoptLease { lease: l.clone() });
                    self.why(format!("re-taking this member's own lease for term {term} (agent restarted)"));
                    true
                }
                _ => self.claim(term, input.lease_state.as_ref(), false),
            },
        };
        if !will_hold {
            if probe.is_primary() {
                self.push(AgentAction::Demote);
                self.why("demoting: running as primary without the lease for the current term (S2)");
            }
            return;
        }
        if paused {
            self.why("cluster paused: no role changes");
            if probe.is_primary() {
                self.sync_replication(view);
            }
            return;
        }
        let others: Vec<String> = view.members.keys().filter(|m| m.as_str() != me).cloned().collect();
        let missing_slots = others.iter().any(|m| !probe.slots.contains(&slot_name(m)));
        if probe.is_primary() {
            self.why(format!("primary for term {term}"));
            if missing_slots {
                self.push(AgentAction::EnsureSlots(others));
            }
            if !input.departed_slots.is_empty() {
                self.push(AgentAction::DropSlots(input.departed_slots.clone()));
                self.why(format!("dropping the slots of departed members: {}", input.departed_slots.join(", ")));
            }
            self.sync_replication(view);
        } else if probe.is_replica() {
            if let Some(names) = sync::before_promote(me, input.config.synchronous_mode, &view.members) {
                // Strict: no commit of the new term is acknowledged before a standby has it.
                self.push(AgentAction::SetSyncStandbys(names));
            }
            self.push(AgentAction::Promote { term });
            self.push(AgentAction::EnsureSlots(others));
            self.why(format!("promoting: named primary for term {term}"));
        } else if probe.running {
            self.why("postgres answers but its role is unknown; waiting");
        } else {
            match probe.data {
                DataDirState::Empty => self.why(format!("named primary for term {term} but the data directory is empty")),
                DataDirState::Primary | DataDirState::Standby => {
                    self.push(AgentAction::Start);
                    self.why(format!("starting postgres: named primary for term {term}"));
                }
            }
        }
    }

    /// The failed restart this loop hands over for: this term's, within its window, Postgres still
    /// down on a primary data directory, the cluster not paused.
    fn handing_over(&self, term: u64, paused: bool) -> Option<&'a PrimaryStartFailure> {
        let input = self.input;
        let f = input.primary_start_failure.as_ref()?;
        let within = input.now < f.at + handover_window(&input.config);
        (f.term == term && within && !paused && !input.probe.running && input.probe.data == DataDirState::Primary).then_some(f)
    }

    /// The primary keeps `synchronous_standby_names` and the recorded set in step (agent::sync).
    fn sync_replication(&mut self, view: &ClusterView) {
        let input = self.input;
        let Some(record) = view.cluster.as_ref() else { return };
        let plan = sync::plan(&SyncInput {
            me: &input.identity.member,
            mode: input.config.synchronous_mode,
            node_count: input.config.synchronous_node_count,
            record,
            members: &view.members,
            probe: &input.probe,
        });
        if !plan.reason.is_empty() {
            self.why(plan.reason);
        }
        for step in plan.steps {
            match step {
                SyncStep::Record(state) => self.push(AgentAction::RecordSync(ClusterRecord { sync: state, ..record.clone() })),
                SyncStep::Set(names) => self.push(AgentAction::SetSyncStandbys(names)),
            }
        }
    }

    /// Decides how to claim the lease for `term`; returns whether the loop will hold it (if the
    /// write succeeds). `after_release`: our own older lease is being released in this loop.
    fn claim(&mut self, term: u64, state: Option<&LeaseState>, after_release: bool) -> bool {
        let input = self.input;
        if let Some(p) = input.failsafe.promise.as_ref().filter(|p| input.now < p.until) {
            self.why(format!(
                "named primary for term {term}, but this member acknowledged {}'s failsafe for term {}: waiting {} ms",
                p.leader,
                p.term,
                (p.until - input.now).as_millis()
            ));
            return false;
        }
        if term <= input.max_term_held {
            self.why(format!(
                "named primary for term {term}, but this agent already held term {}: waiting for a new term",
                input.max_term_held
            ));
            return false;
        }
        if after_release {
            self.push(AgentAction::AcquireLease { term, takeover_rvn: None });
            return true;
        }
        match state {
            None | Some(LeaseState::Absent) | Some(LeaseState::Free(_)) => {
                self.push(AgentAction::AcquireLease { term, takeover_rvn: None });
                self.why(format!("acquiring the free leader lease for term {term}"));
                true
            }
            Some(LeaseState::Expired(l)) if !self.may_take_over(l) => {
                self.why(format!(
                    "named primary for term {term}, but {} (term {}) runs in failsafe mode without asking this member: it may still be primary",
                    l.owner, l.term
                ));
                false
            }
            Some(LeaseState::Expired(l)) => {
                self.push(AgentAction::AcquireLease { term, takeover_rvn: Some(l.rvn.clone()) });
                self.why(format!("taking over the expired leader lease of {} (term {}) for term {term}", l.owner, l.term));
                true
            }
            Some(LeaseState::Held { lease, unchanged_for }) => {
                self.why(format!(
                    "named primary for term {term}; waiting for the lease of {} (term {}) to expire: unchanged for {} of {} ms",
                    lease.owner,
                    lease.term,
                    unchanged_for.as_millis(),
                    lease.lease_ms
                ));
                false
            }
        }
    }

    /// A primary in failsafe mode lists the members it asks for acknowledgements; only those have
    /// promised not to take its lease while it runs on them, so nobody else may take it over.
    fn may_take_over(&self, lease: &LeaderLease) -> bool {
        let me = self.input.identity.member.as_str();
        let StoreRead::Ok(view) = &self.input.store else { return false };
        match view.members.get(&lease.owner).and_then(|m| m.failsafe_members.as_ref()) {
            Some(listed) => lease.owner == me || listed.iter().any(|m| m == me),
            None => true,
        }
    }

    /// This member must not be primary: follow the designated one.
    /// A stopped standby starts even while there is no primary to follow: during a failover the
    /// coordinator waits for candidates to run (it judges their WAL from their heartbeats), so
    /// staying down would deadlock both (found by the simulation). A standby cannot take writes.
    fn start_stopped_standby(&mut self) {
        let probe = &self.input.probe;
        if !probe.running && probe.data == DataDirState::Standby {
            self.why("starting the stopped standby meanwhile");
            self.push(AgentAction::Start);
        }
    }

    fn as_follower(&mut self, view: &ClusterView) {
        let input = self.input;
        let probe = &input.probe;
        let Some(record) = view.cluster.as_ref() else {
            match initialize_blocker(&input.bootstrap, &input.identity.member, probe, view) {
                None => {
                    self.push(AgentAction::Initialize);
                    self.why("no cluster record: initialising a new cluster if this member wins the initialize lock");
                }
                Some(why) => self.why(why),
            }
            return;
        };
        let Some(primary) = record.primary.as_deref().filter(|p| *p != input.identity.member) else {
            self.why(format!("no primary to follow in term {}", record.term));
            self.start_stopped_standby();
            return;
        };
        let target = match view.members.get(primary) {
            Some(m) if !m.pg_host.is_empty() && m.pg_port != 0 => {
                PrimaryTarget { name: primary.to_string(), host: m.pg_host.clone(), port: m.pg_port }
            }
            _ => {
                self.why(format!("primary {primary} has published no address yet"));
                self.start_stopped_standby();
                return;
            }
        };
        let own_slot = slot_name(&input.identity.member);
        if probe.is_replica() {
            let ok = probe.upstream.as_ref().is_some_and(|u| u.matches(&target, &own_slot));
            if ok {
                if probe.streaming {
                    self.why(format!("replica of {target}"));
                } else if let Some(tl) = self.diverged_from(view, &target) {
                    // It received WAL the new primary never had (asynchronous replication, a
                    // failover within maximum_lag_on_failover): Postgres cannot follow the new
                    // timeline from there and retries for ever. Rewinding a standby promotes
                    // and demotes nothing (docs/design.md section 4, "Diverged replicas").
                    let what = format!("replica on timeline {} while {target} runs timeline {tl}, not streaming", probe.timeline);
                    self.rejoin(target, &what);
                } else {
                    // Configured right but no WAL arrives: the cause is in Postgres's log (the
                    // walreceiver's connection error); say so instead of looking healthy.
                    self.why(format!("replica of {target}, not streaming (see the postgres log)"));
                }
            } else {
                self.why(format!("re-pointing to {target}"));
                self.push(AgentAction::Follow(target));
            }
            return;
        }
        if probe.running {
            self.why("postgres answers but its role is unknown; waiting");
            return;
        }
        match probe.data {
            DataDirState::Empty => {
                self.why(format!("empty data directory: bootstrapping from {target}"));
                self.push(AgentAction::Basebackup(target));
            }
            DataDirState::Standby => {
                self.why(format!("starting as a standby of {target}"));
                self.push(AgentAction::Follow(target));
            }
            DataDirState::Primary => {
                // Rewinding from a candidate that is still a standby finds the timelines equal,
                // changes nothing, and leaves this former primary's extra WAL in place, diverged
                // from the timeline the candidate is about to start: wait for its promotion.
                let promoted = view
                    .members
                    .get(&target.name)
                    .is_some_and(|m| m.role == Role::Primary && m.pg_running && m.term >= record.term);
                if !promoted {
                    self.why(format!(
                        "former primary: waiting for {target} to report read-write in term {} before rejoining it",
                        record.term
                    ));
                    return;
                }
                self.rejoin(target, "former primary");
            }
        }
    }

    /// Rejoins `target` through pg_rewind, or a basebackup once a rewind from it failed.
    fn rejoin(&mut self, target: PrimaryTarget, what: &str) {
        let failed =
            self.input.last_rejoin_failure.as_ref().filter(|f| f.source == target.name && f.method == RejoinMethod::Rewind);
        if let Some(f) = failed {
            self.why(format!("{what}: rewind from {target} failed ({}): falling back to a basebackup", f.error));
            self.push(AgentAction::Basebackup(target));
        } else {
            self.why(format!("{what}: rejoining {target} through pg_rewind"));
            self.push(AgentAction::Rewind(target));
        }
    }

    /// The timeline of the followed primary, when this replica has not streamed for two renew
    /// intervals while that primary runs a newer timeline than its own. A standby that can
    /// follow a promotion switches timelines within a second, so by then it cannot.
    fn diverged_from(&self, view: &ClusterView, target: &PrimaryTarget) -> Option<u32> {
        let input = self.input;
        let stuck = input.replica_not_streaming_for.is_some_and(|d| d >= input.config.renew_interval() * 2);
        let primary = view.members.get(&target.name).filter(|m| m.role == Role::Primary && m.pg_running)?;
        (stuck && primary.timeline > input.probe.timeline).then_some(primary.timeline)
    }

    /// A non-holder that sees the leader lease expired (by its own clock, or by the store's), or
    /// released by the designated primary outside any transition (its agent shut down cleanly),
    /// or free while a transition is open, asks for a coordinator run. Without the second case a
    /// clean restart of the primary's agent left the cluster without a primary until the
    /// coordinator's next scheduled run (a minute on AWS). The third is a coordinator that died
    /// in the middle of a failover (after the old primary released its lease to `/demote`,
    /// before a candidate took the new one): nothing else would run the next one before the
    /// schedule (the simulation's longest write outages). Asking is rate-limited to once a lease.
    fn fast_path(&mut self) {
        let input = self.input;
        if input.primary_agent == Some(AgentReach::Refused) {
            return self.primary_agent_gone();
        }
        let (lease, why) = match &input.lease_state {
            Some(LeaseState::Expired(lease)) => (lease, "unchanged for"),
            Some(LeaseState::Free(lease)) if self.released_by_designated_primary(lease) => {
                (lease, "released; last seen unchanged for")
            }
            // Expired by the store itself (etcd drops the key with its TTL; the record reads
            // back ownerless): as good as seen expired, and the sooner a coordinator runs the
            // sooner the failover.
            Some(LeaseState::Free(lease)) if lease.owner.is_empty() && !lease.released => {
                (lease, "expired in the store; last seen unchanged for")
            }
            Some(LeaseState::Free(lease)) if self.transition_open() => {
                (lease, "free while a transition is open; last seen unchanged for")
            }
            _ => return,
        };
        if lease.owner == input.identity.member {
            return;
        }
        let due = input.last_run_request.is_none_or(|at| input.now.saturating_sub(at) >= Duration::from_millis(lease.lease_ms));
        let evidence = input.leader_seen.clone().unwrap_or(LeaseSighting {
            term: lease.term,
            rvn: lease.rvn.clone(),
            unchanged_ms: lease.lease_ms,
        });
        self.why(format!("leader lease of {} (term {}) {why} {} ms", lease.owner, lease.term, evidence.unchanged_ms));
        if due {
            self.push(AgentAction::RequestCoordinatorRun { evidence });
        }
    }

    /// The designated primary's agent refused this loop's connection (its process is gone):
    /// ask for a coordinator run, which probes it itself and may fail over without waiting for
    /// the lease (docs/design.md section 4, "Early failover on evidence"). At most once a loop
    /// interval: the coordinator needs two refusals a second apart, and a Lambda remembers
    /// the first only while it stays warm.
    fn primary_agent_gone(&mut self) {
        let input = self.input;
        let Some(lease) = input.lease_state.as_ref().and_then(LeaseState::lease).filter(|l| !l.is_free()) else { return };
        if lease.owner == input.identity.member {
            return;
        }
        let interval = Duration::from_millis(input.config.probe_interval_ms);
        let due = input.last_run_request.is_none_or(|at| input.now.saturating_sub(at) >= interval);
        self.why(format!("the agent of {} (leader lease term {}) refuses connections", lease.owner, lease.term));
        if due {
            let evidence =
                input.leader_seen.clone().unwrap_or(LeaseSighting { term: lease.term, rvn: lease.rvn.clone(), unchanged_ms: 0 });
            self.push(AgentAction::RequestCoordinatorRun { evidence });
        }
    }

    fn transition_open(&self) -> bool {
        let StoreRead::Ok(view) = &self.input.store else { return false };
        view.cluster.as_ref().is_some_and(|r| r.transition.is_some())
    }

    /// The released lease is the designated primary's own for the record's term, and no
    /// transition is under way (a switchover's old primary releases on purpose).
    fn released_by_designated_primary(&self, lease: &LeaderLease) -> bool {
        let StoreRead::Ok(view) = &self.input.store else { return false };
        view.cluster
            .as_ref()
            .is_some_and(|r| r.transition.is_none() && r.term == lease.term && r.primary.as_deref() == Some(lease.owner.as_str()))
    }
}

/// Another replica on this member's timeline or later reports a WAL position more than
/// `maximum_lag_on_failover` ahead of this member's own (received or replayed): the reason, for
/// a designated candidate that must not promote (S4). A forced transition (an operator's choice
/// of a lagging candidate) is not checked.
fn overtaken(view: &ClusterView, me: &str, probe: &PgProbe, config: &DynamicConfig) -> Option<String> {
    if view.cluster.as_ref().and_then(|r| r.transition.as_ref()).is_some_and(|t| t.forced) {
        return None;
    }
    // `None` orders below any position: the later of the two, if either is known.
    let own = probe.receive_lsn.max(probe.replay_lsn)?;
    view.members
        .values()
        .filter(|m| m.name != me && m.pg_running && m.role == Role::Replica && m.timeline >= probe.timeline)
        .filter_map(|m| m.wal_position().map(|pos| (m, pos)))
        .map(|(m, pos)| (m, pos, pos.bytes_ahead_of(own)))
        .filter(|(_, _, ahead)| *ahead > config.maximum_lag_on_failover)
        .max_by_key(|(_, _, ahead)| *ahead)
        .map(|(m, pos, ahead)| {
            format!(
                "{} reports {pos}, {ahead} bytes ahead of this member's {own} (maximum_lag_on_failover {})",
                m.name, config.maximum_lag_on_failover
            )
        })
}

/// How long a primary whose Postgres did not restart in place leaves its lease to a replica
/// before it claims it again: two leases, time for a coordinator to notice and fail over.
pub fn handover_window(config: &DynamicConfig) -> Duration {
    config.lease() * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::bootstrap::BootstrapPolicy;
    use crate::agent::failsafe::FailsafeInput;
    use crate::agent::input::{AgentIdentity, PublishedHeartbeat, RejoinFailure};
    use crate::lsn::Lsn;
    use crate::model::ClusterRecord;
    use crate::pg::{PgProbe, UpstreamConfig};

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn lease(owner: &str, term: u64, rvn: &str) -> LeaderLease {
        LeaderLease { owner: owner.into(), term, rvn: rvn.into(), lease_ms: 10_000, released: false }
    }

    fn member(name: &str, port: u16, role: Role) -> MemberStatus {
        let mut m = MemberStatus::new(name);
        m.pg_host = "127.0.0.1".into();
        m.pg_port = port;
        m.role = role;
        m
    }

    fn view(term: u64, primary: &str, leader: Option<LeaderLease>) -> ClusterView {
        let mut v = ClusterView {
            cluster: Some(ClusterRecord { term, ..ClusterRecord::bootstrap(primary, DynamicConfig::default()) }),
            leader,
            ..Default::default()
        };
        for (n, port) in [("n1", 5001), ("n2", 5002), ("n3", 5003)] {
            let role = if n == primary { Role::Primary } else { Role::Replica };
            let mut m = member(n, port, role);
            if n == primary {
                m.pg_running = true;
                m.term = term;
            }
            v.members.insert(n.into(), m);
        }
        v
    }

    fn primary_probe() -> PgProbe {
        PgProbe {
            running: true,
            role: Role::Primary,
            data: DataDirState::Primary,
            slots: vec!["n2".into(), "n3".into()],
            ..Default::default()
        }
    }

    fn replica_probe(upstream_port: u16) -> PgProbe {
        PgProbe {
            running: true,
            role: Role::Replica,
            data: DataDirState::Standby,
            upstream: Some(UpstreamConfig {
                host: Some("127.0.0.1".into()),
                port: Some(upstream_port),
                application_name: None,
                slot: Some("me".into()),
            }),
            ..Default::default()
        }
    }

    fn input(me: &str, probe: PgProbe, store: StoreRead, held: Option<HeldLease>) -> AgentInput {
        let lease_state = match &store {
            StoreRead::Ok(v) => Some(match &v.leader {
                None => LeaseState::Absent,
                Some(l) if l.is_free() => LeaseState::Free(l.clone()),
                Some(l) => LeaseState::Held { lease: l.clone(), unchanged_for: MS(100) },
            }),
            _ => None,
        };
        AgentInput {
            identity: AgentIdentity {
                cluster: "c".into(),
                member: me.into(),
                pg_host: "127.0.0.1".into(),
                pg_port: 5009,
                ..Default::default()
            },
            now: MS(20_000),
            wall_ms: 1_000_000,
            probe,
            store,
            lease_state,
            held,
            config: DynamicConfig::default(),
            seq: 7,
            max_term_held: 0,
            fenced_through: 0,
            last_rejoin_failure: None,
            primary_start_failure: None,
            last_run_request: None,
            leader_seen: None,
            primary_agent: None,
            failsafe: FailsafeInput::default(),
            departed_slots: Vec::new(),
            bootstrap: BootstrapPolicy::default(),
            replica_not_streaming_for: None,
            last_heartbeat: None,
        }
    }

    fn held(owner: &str, term: u64, rvn: &str, written_from_ms: u64) -> Option<HeldLease> {
        Some(HeldLease { lease: lease(owner, term, rvn), written_from: MS(written_from_ms) })
    }

    fn target(name: &str, port: u16) -> PrimaryTarget {
        PrimaryTarget { name: name.into(), host: "127.0.0.1".into(), port }
    }

    /// One named situation: input, expected action names, and a word the reason must contain.
    struct Case {
        name: &'static str,
        input: AgentInput,
        expect: Vec<&'static str>,
        reason_has: &'static str,
    }

    fn cases() -> Vec<Case> {
        let mut v = vec![];
        // --- primary side ---
        v.push(Case {
            name: "healthy primary renews each loop",
            input: input(
                "n1",
                primary_probe(),
                StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))),
                held("n1", 3, "r", 16_000),
            ),
            expect: vec!["renew_lease", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "primary for term 3",
        });
        v.push(Case {
            name: "primary whose lease ran out demotes even with the store down",
            input: input("n1", primary_probe(), StoreRead::Unavailable("timeout".into()), held("n1", 3, "r", 11_000)),
            expect: vec!["forget_lease", "demote", "publish_heartbeat"],
            reason_has: "not renewed",
        });
        v.push(Case {
            name: "primary with a still-valid lease and the store down keeps trying to renew",
            input: input("n1", primary_probe(), StoreRead::Unavailable("timeout".into()), held("n1", 3, "r", 15_000)),
            expect: vec!["renew_lease", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "store unavailable",
        });
        v.push(Case {
            name: "malformed record changes nothing but the lease check",
            input: input("n1", primary_probe(), StoreRead::Malformed("cluster: bad json".into()), held("n1", 3, "r", 15_000)),
            expect: vec!["renew_lease", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "unusable",
        });
        v.push(Case {
            name: "primary not designated any more (new term elsewhere) releases and demotes",
            input: input(
                "n1",
                primary_probe(),
                StoreRead::Ok(view(4, "n2", Some(lease("n1", 3, "r")))),
                held("n1", 3, "r", 16_000),
            ),
            expect: vec!["demote", "release_lease", "publish_heartbeat"],
            reason_has: "names n2 primary for term 4",
        });
        v.push(Case {
            name: "primary without any lease demotes (S2)",
            input: {
                let mut i = input("n1", primary_probe(), StoreRead::Ok(view(4, "n2", Some(lease("n2", 4, "x")))), None);
                i.max_term_held = 3;
                i
            },
            expect: vec!["demote", "publish_heartbeat"],
            reason_has: "names n2",
        });
        v.push(Case {
            name: "fenced primary releases its lease and demotes",
            input: {
                let mut i = input(
                    "n1",
                    primary_probe(),
                    StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))),
                    held("n1", 3, "r", 16_000),
                );
                i.fenced_through = 3;
                i
            },
            expect: vec!["demote", "release_lease", "publish_heartbeat"],
            reason_has: "demote through term 3",
        });
        v.push(Case {
            name: "restarted agent re-takes its own lease and keeps running",
            input: input("n1", primary_probe(), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None),
            expect: vec!["adopt_lease", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "agent restarted",
        });
        // Postgres crashed under a live agent and did not restart in place (now = 20 s,
        // default lease 10 s: the hand-over window is 20 s from the failure).
        let down = || PgProbe { running: false, ..primary_probe() };
        let failed = |term, at_ms| Some(PrimaryStartFailure { term, at: MS(at_ms), error: "lock file".into() });
        v.push(Case {
            name: "primary whose postgres is down restarts it in place",
            input: input("n1", down(), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), held("n1", 3, "r", 16_000)),
            expect: vec!["renew_lease", "start", "publish_heartbeat"],
            reason_has: "starting postgres",
        });
        v.push(Case {
            name: "primary whose restart in place failed stops renewing so a replica takes over",
            input: {
                let mut i =
                    input("n1", down(), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), held("n1", 3, "r", 16_000));
                i.primary_start_failure = failed(3, 19_500);
                i.max_term_held = 3;
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "not renewing the leader lease",
        });
        v.push(Case {
            name: "once its lease ran out it does not re-take it within the window",
            input: {
                let mut i = input("n1", down(), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.primary_start_failure = failed(3, 9_000);
                i.max_term_held = 3;
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "not renewing the leader lease",
        });
        v.push(Case {
            name: "nobody took over within the window: it re-takes its own lease and tries again",
            input: {
                let mut i = input("n1", down(), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.primary_start_failure = failed(3, 0);
                i.max_term_held = 3;
                i
            },
            expect: vec!["adopt_lease", "start", "publish_heartbeat"],
            reason_has: "starting postgres",
        });
        v.push(Case {
            name: "a failed start of an older term does not hand over this one",
            input: {
                let mut i =
                    input("n1", down(), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), held("n1", 3, "r", 16_000));
                i.primary_start_failure = failed(2, 19_500);
                i
            },
            expect: vec!["renew_lease", "start", "publish_heartbeat"],
            reason_has: "starting postgres",
        });
        v.push(Case {
            name: "paused: no hand-over, the primary keeps its lease",
            input: {
                let mut v = view(3, "n1", Some(lease("n1", 3, "r")));
                v.cluster.as_mut().unwrap().paused = true;
                let mut i = input("n1", down(), StoreRead::Ok(v), held("n1", 3, "r", 16_000));
                i.primary_start_failure = failed(3, 19_500);
                i
            },
            expect: vec!["renew_lease", "publish_heartbeat"],
            reason_has: "paused",
        });
        v.push(Case {
            name: "primary creates missing slots",
            input: {
                let mut p = primary_probe();
                p.slots = vec!["n2".into()];
                input("n1", p, StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), held("n1", 3, "r", 16_000))
            },
            expect: vec!["renew_lease", "ensure_slots", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "primary",
        });
        v.push(Case {
            name: "primary drops the slots of departed members",
            input: {
                let mut p = primary_probe();
                p.slots = vec!["n2".into(), "n3".into(), "n9".into()];
                let mut i = input("n1", p, StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), held("n1", 3, "r", 16_000));
                i.departed_slots = vec!["n9".into()];
                i
            },
            expect: vec!["renew_lease", "drop_slots", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "departed members: n9",
        });
        v.push(Case {
            name: "fresh cluster: the designated primary takes the absent lease",
            input: input("n1", primary_probe(), StoreRead::Ok(view(1, "n1", None)), None),
            expect: vec!["acquire_lease", "demote_if_lease_lost", "publish_heartbeat"],
            reason_has: "free leader lease",
        });
        v.push(Case {
            name: "no cluster record: a running primary demotes",
            input: input("n1", primary_probe(), StoreRead::Ok(ClusterView::default()), None),
            expect: vec!["demote", "publish_heartbeat"],
            reason_has: "no cluster record",
        });
        // --- replica side ---
        v.push(Case {
            name: "replica never promotes on its own when the lease is expired",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.lease_state = Some(LeaseState::Expired(lease("n1", 3, "r")));
                i.identity.member = "n2".into();
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i
            },
            expect: vec!["publish_heartbeat", "request_coordinator_run"],
            reason_has: "unchanged",
        });
        v.push(Case {
            name: "a lease released by the designated primary outside a transition asks for a run",
            input: {
                let released = LeaderLease { released: true, ..lease("n1", 3, "r") };
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(released))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i
            },
            expect: vec!["publish_heartbeat", "request_coordinator_run"],
            reason_has: "released",
        });
        v.push(Case {
            name: "a lease the store expired (etcd's TTL: ownerless, not released) asks for a run",
            input: {
                let expired = LeaderLease { owner: String::new(), ..lease("n1", 3, "r") };
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(expired))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i
            },
            expect: vec!["publish_heartbeat", "request_coordinator_run"],
            reason_has: "expired in the store",
        });
        v.push(Case {
            name: "a free lease while a transition is open asks for a run (its coordinator may have died)",
            input: {
                let released = LeaderLease { released: true, ..lease("n1", 3, "r") };
                let mut v = view(4, "n1", Some(released));
                let record = v.cluster.as_mut().unwrap();
                record.primary = None;
                record.transition = Some(crate::model::Transition::fenced_failover("n1", "n3", 4));
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(v), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i
            },
            expect: vec!["publish_heartbeat", "request_coordinator_run"],
            reason_has: "free while a transition is open",
        });
        v.push(Case {
            name: "the primary's agent refusing connections asks for a run at once (early failover)",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i.primary_agent = Some(AgentReach::Refused);
                i.last_run_request = Some(MS(19_000));
                i
            },
            expect: vec!["publish_heartbeat", "request_coordinator_run"],
            reason_has: "the agent of n1 (leader lease term 3) refuses connections",
        });
        v.push(Case {
            name: "asking on a refusal is limited to once a loop interval",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i.primary_agent = Some(AgentReach::Refused);
                i.last_run_request = Some(MS(19_500));
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "refuses connections",
        });
        v.push(Case {
            name: "a primary's agent that answers or times out asks for nothing",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i.primary_agent = Some(AgentReach::NoAnswer);
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "",
        });
        v.push(Case {
            name: "a released lease of an older term is not the designated primary's",
            input: {
                let released = LeaderLease { released: true, ..lease("n1", 2, "r") };
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(released))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "",
        });
        v.push(Case {
            name: "fast path is rate limited to once per lease duration",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.lease_state = Some(LeaseState::Expired(lease("n1", 3, "r")));
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i.last_run_request = Some(MS(15_000));
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "unchanged",
        });
        v.push(Case {
            name: "designated replica waits while the old lease is still held",
            input: input("n2", replica_probe(5001), StoreRead::Ok(view(4, "n2", Some(lease("n1", 3, "r")))), None),
            expect: vec!["publish_heartbeat"],
            reason_has: "waiting for the lease of n1",
        });
        v.push(Case {
            name: "designated replica takes over an expired lease and promotes",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(4, "n2", Some(lease("n1", 3, "r")))), None);
                i.lease_state = Some(LeaseState::Expired(lease("n1", 3, "r")));
                i
            },
            expect: vec!["acquire_lease", "promote", "ensure_slots", "publish_heartbeat"],
            reason_has: "promoting",
        });
        let overtaken = |forced: bool| {
            let mut v = view(4, "n2", Some(lease("n1", 3, "r")));
            let n3 = v.members.get_mut("n3").unwrap();
            n3.pg_running = true;
            n3.receive_lsn = Some(Lsn(0x0300_0000));
            if forced {
                let mut t = crate::model::Transition::fenced_failover("n1", "n2", 4);
                t.forced = true;
                v.cluster.as_mut().unwrap().transition = Some(t);
            }
            let mut i = input("n2", replica_probe(5001), StoreRead::Ok(v), None);
            i.probe.receive_lsn = Some(Lsn(0x0100_0000));
            i.lease_state = Some(LeaseState::Expired(lease("n1", 3, "r")));
            i
        };
        v.push(Case {
            name: "a designated replica overtaken after its designation neither takes the lease nor promotes (S4)",
            input: overtaken(false),
            expect: vec!["publish_heartbeat"],
            reason_has: "not promoting for term 4: n3 reports 0/3000000, 33554432 bytes ahead of this member's 0/1000000",
        });
        v.push(Case {
            name: "a forced candidate promotes however far behind (the operator chose it)",
            input: overtaken(true),
            expect: vec!["acquire_lease", "promote", "ensure_slots", "publish_heartbeat"],
            reason_has: "promoting",
        });
        v.push(Case {
            name: "designated replica does not re-take a term it held before",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(4, "n2", None)), None);
                i.max_term_held = 4;
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "already held term 4",
        });
        v.push(Case {
            name: "fenced member refuses the lease for its fenced term",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(4, "n2", None)), None);
                i.fenced_through = 4;
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "",
        });
        v.push(Case {
            name: "paused cluster: designated replica is not promoted",
            input: {
                let mut vw = view(4, "n2", None);
                vw.cluster.as_mut().unwrap().paused = true;
                input("n2", replica_probe(5001), StoreRead::Ok(vw), None)
            },
            expect: vec!["acquire_lease", "publish_heartbeat"],
            reason_has: "paused",
        });
        v.push(Case {
            name: "replica following the right primary does nothing",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i.probe.streaming = true;
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "replica of n1",
        });
        v.push(Case {
            name: "replica configured right but not streaming says so",
            input: {
                let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
                i.probe.streaming = false;
                i
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "not streaming",
        });
        v.push(Case {
            name: "replica re-points to the new primary",
            input: {
                let mut i = input("n3", replica_probe(5001), StoreRead::Ok(view(4, "n2", Some(lease("n2", 4, "x")))), None);
                i.probe.upstream.as_mut().unwrap().slot = Some("n3".into());
                i
            },
            expect: vec!["follow", "publish_heartbeat"],
            reason_has: "re-pointing",
        });
        v.push(Case {
            name: "stopped former primary rejoins with pg_rewind",
            input: input(
                "n1",
                PgProbe::stopped(DataDirState::Primary),
                StoreRead::Ok(view(4, "n2", Some(lease("n2", 4, "x")))),
                None,
            ),
            expect: vec!["rewind", "publish_heartbeat"],
            reason_has: "pg_rewind",
        });
        v.push(Case {
            name: "former primary waits for the designated candidate to promote before rewinding",
            input: {
                let mut vw = view(4, "n2", None);
                let n2 = vw.members.get_mut("n2").unwrap();
                n2.role = Role::Replica;
                n2.term = 3;
                input("n1", PgProbe::stopped(DataDirState::Primary), StoreRead::Ok(vw), None)
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "waiting for n2",
        });
        v.push(Case {
            name: "failed rewind falls back to basebackup",
            input: {
                let mut i = input(
                    "n1",
                    PgProbe::stopped(DataDirState::Primary),
                    StoreRead::Ok(view(4, "n2", Some(lease("n2", 4, "x")))),
                    None,
                );
                i.last_rejoin_failure =
                    Some(RejoinFailure { method: RejoinMethod::Rewind, source: "n2".into(), error: "boom".into() });
                i
            },
            expect: vec!["basebackup", "publish_heartbeat"],
            reason_has: "falling back",
        });
        v.push(Case {
            name: "empty data directory bootstraps from the primary",
            input: input(
                "n4",
                PgProbe::stopped(DataDirState::Empty),
                StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))),
                None,
            ),
            expect: vec!["basebackup", "publish_heartbeat"],
            reason_has: "bootstrapping",
        });
        v.push(Case {
            name: "stopped standby starts following",
            input: input(
                "n2",
                PgProbe::stopped(DataDirState::Standby),
                StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))),
                None,
            ),
            expect: vec!["follow", "publish_heartbeat"],
            reason_has: "standby",
        });
        v.push(Case {
            name: "stopped standby starts while a failover names no primary yet",
            input: {
                let mut vw = view(4, "n1", None);
                vw.cluster.as_mut().unwrap().primary = None;
                input("n2", PgProbe::stopped(DataDirState::Standby), StoreRead::Ok(vw), None)
            },
            expect: vec!["start", "publish_heartbeat"],
            reason_has: "no primary to follow",
        });
        v.push(Case {
            name: "stopped former primary stays down while no primary is named",
            input: {
                let mut vw = view(4, "n1", None);
                vw.cluster.as_mut().unwrap().primary = None;
                input("n2", PgProbe::stopped(DataDirState::Primary), StoreRead::Ok(vw), None)
            },
            expect: vec!["publish_heartbeat"],
            reason_has: "no primary to follow",
        });
        v.push(Case {
            name: "stopped designated primary with its lease starts postgres",
            input: input(
                "n1",
                PgProbe::stopped(DataDirState::Primary),
                StoreRead::Ok(view(3, "n1", Some(lease("n1", 3, "r")))),
                held("n1", 3, "r", 16_000),
            ),
            expect: vec!["renew_lease", "start", "publish_heartbeat"],
            reason_has: "starting",
        });
        v.push(Case {
            name: "store down, replica: heartbeat attempt only",
            input: input("n2", replica_probe(5001), StoreRead::Unavailable("down".into()), None),
            expect: vec!["publish_heartbeat"],
            reason_has: "store unavailable",
        });
        v
    }

    #[test]
    fn named_situations() {
        let mut failures = vec![];
        for case in cases() {
            let d = decide(&case.input);
            if d.names() != case.expect || !d.reason.contains(case.reason_has) {
                failures.push(format!(
                    "{}: got {:?} ({:?}), want {:?} containing {:?}",
                    case.name,
                    d.names(),
                    d.reason,
                    case.expect,
                    case.reason_has
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn takeover_carries_the_observed_rvn_and_the_record_term() {
        let mut i = input("n2", replica_probe(5001), StoreRead::Ok(view(4, "n2", Some(lease("n1", 3, "old")))), None);
        i.lease_state = Some(LeaseState::Expired(lease("n1", 3, "old")));
        let d = decide(&i);
        assert_eq!(d.actions[0], AgentAction::AcquireLease { term: 4, takeover_rvn: Some("old".into()) });
        assert_eq!(d.actions[1], AgentAction::Promote { term: 4 });
    }

    #[test]
    fn re_point_targets_the_designated_primary_address() {
        let mut i = input("n3", replica_probe(5001), StoreRead::Ok(view(4, "n2", None)), None);
        i.probe.upstream.as_mut().unwrap().slot = Some("n3".into());
        assert_eq!(decide(&i).actions[0], AgentAction::Follow(target("n2", 5002)));
    }

    #[test]
    fn heartbeat_reports_lsns_lag_seq_and_sighting() {
        let mut vw = view(3, "n1", Some(lease("n1", 3, "r")));
        vw.members.get_mut("n1").unwrap().write_lsn = Some("0/5000".parse().unwrap());
        let mut p = replica_probe(5001);
        p.receive_lsn = Some("0/4000".parse().unwrap());
        p.replay_lsn = Some("0/3000".parse().unwrap());
        p.replay_age = Some(MS(1500));
        let mut i = input("n2", p, StoreRead::Ok(vw), None);
        i.leader_seen = Some(LeaseSighting { term: 3, rvn: "r".into(), unchanged_ms: 100 });
        let d = decide(&i);
        let Some(AgentAction::PublishHeartbeat(m)) = d.actions.last() else { panic!("no heartbeat") };
        assert_eq!(m.seq, 7);
        assert_eq!(m.term, 3);
        assert_eq!(m.role, Role::Replica);
        assert_eq!(m.lag_bytes, Some(0x1000));
        assert_eq!(m.lag_seconds, Some(1.5));
        assert_eq!(m.leader_seen.as_ref().unwrap().rvn, "r");
        assert_eq!(m.pg_port, 5009);
    }

    #[test]
    fn the_lease_is_renewed_once_its_last_write_is_a_renew_interval_old() {
        let vw = || view(3, "n1", Some(lease("n1", 3, "r")));
        let recent = input("n1", primary_probe(), StoreRead::Ok(vw()), held("n1", 3, "r", 17_000));
        assert!(!decide(&recent).names().contains(&"renew_lease"), "3 s of a 4 s interval");
        let due = input("n1", primary_probe(), StoreRead::Ok(vw()), held("n1", 3, "r", 16_000));
        assert!(decide(&due).names().contains(&"renew_lease"));
        let store_down = input("n1", primary_probe(), StoreRead::Unavailable("timeout".into()), held("n1", 3, "r", 17_000));
        assert_eq!(decide(&store_down).names(), vec!["demote_if_lease_lost", "publish_heartbeat"]);
    }

    #[test]
    fn an_unchanged_heartbeat_waits_for_its_period_and_a_change_goes_out_at_once() {
        let vw = || view(3, "n1", Some(lease("n1", 3, "r")));
        let mut i = input("n2", replica_probe(5001), StoreRead::Ok(vw()), None);
        i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
        i.probe.streaming = true;
        i.leader_seen = Some(LeaseSighting { term: 3, rvn: "r".into(), unchanged_ms: 100 });
        let Some(AgentAction::PublishHeartbeat(first)) = decide(&i).actions.last().cloned() else { panic!("first heartbeat") };
        i.last_heartbeat = Some(PublishedHeartbeat { status: first, at: MS(18_000) });

        // A loop later: new seq, timestamps, replay age and sighting age only.
        i.seq += 1;
        i.wall_ms += 1_000;
        i.probe.replay_age = Some(MS(9_000));
        i.leader_seen = Some(LeaseSighting { term: 3, rvn: "r".into(), unchanged_ms: 1_100 });
        assert!(decide(&i).actions.is_empty(), "{:?}", decide(&i).names());

        let mut stopped = i.clone();
        stopped.probe = PgProbe::default();
        assert_eq!(decide(&stopped).names().last(), Some(&"publish_heartbeat"), "postgres stopped");
        let mut renewed = i.clone();
        renewed.leader_seen = Some(LeaseSighting { term: 3, rvn: "r2".into(), unchanged_ms: 0 });
        assert!(decide(&renewed).actions.is_empty(), "a renewal is no news");
        let mut new_term = i.clone();
        new_term.leader_seen = Some(LeaseSighting { term: 4, rvn: "r9".into(), unchanged_ms: 0 });
        assert_eq!(decide(&new_term).names(), vec!["publish_heartbeat"], "a new leader lease");
        let mut wal = i.clone();
        wal.probe.replay_lsn = Some("0/9000".parse().unwrap());
        assert_eq!(decide(&wal).names(), vec!["publish_heartbeat"], "WAL replayed");

        i.now = MS(21_000);
        assert_eq!(decide(&i).names(), vec!["publish_heartbeat"], "a heartbeat period (renew - probe) after the last one");
    }

    #[test]
    fn a_replica_stuck_behind_the_primarys_timeline_rewinds_then_falls_back_to_a_basebackup() {
        let stuck = |not_streaming_ms: u64, primary_tl: u32| {
            let mut vw = view(3, "n1", Some(lease("n1", 3, "r")));
            vw.members.get_mut("n1").unwrap().timeline = primary_tl;
            let mut i = input("n2", replica_probe(5001), StoreRead::Ok(vw), None);
            i.probe.upstream.as_mut().unwrap().slot = Some("n2".into());
            i.probe.timeline = 1;
            i.replica_not_streaming_for = Some(MS(not_streaming_ms));
            i
        };
        let d = decide(&stuck(8_000, 2));
        assert_eq!(d.names(), vec!["rewind", "publish_heartbeat"], "{}", d.reason);
        assert!(d.reason.contains("replica on timeline 1 while n1 (127.0.0.1:5001) runs timeline 2"), "{}", d.reason);
        assert_eq!(decide(&stuck(7_000, 2)).names(), vec!["publish_heartbeat"], "may still switch timelines");
        assert_eq!(decide(&stuck(60_000, 1)).names(), vec!["publish_heartbeat"], "same timeline: a connection problem");
        let mut failed = stuck(8_000, 2);
        failed.last_rejoin_failure =
            Some(RejoinFailure { method: RejoinMethod::Rewind, source: "n1".into(), error: "no common ancestor".into() });
        assert_eq!(decide(&failed).names(), vec!["basebackup", "publish_heartbeat"]);
    }
}
