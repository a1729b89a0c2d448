//! The agent's loop body: gather one snapshot, decide, execute, report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::lock::Mutex as AsyncMutex;

use super::bootstrap::BootstrapPolicy;
use super::decide::{decide, AgentAction};
use super::failsafe::FailsafeState;
use super::handle::{AgentCounters, AgentHandle, AgentSnapshot, Shared};
use super::input::{AgentIdentity, AgentInput, PrimaryStartFailure, PublishedHeartbeat, RejoinFailure, StoreRead};
use super::slots::{DepartedSlots, DEFAULT_DEPARTED_SLOT_RETENTION};
use crate::clock::Clock;
use crate::config::DynamicConfig;
use crate::coordinator::AgentProbe;
use crate::events::{Event, EventEmitter, EventKind};
use crate::lease::{HeldLease, LeaseObserver, LeaseState};
use crate::model::{LeaseSighting, Role};
use crate::pg::{PgControl, PgProbe};
use crate::store::{Store, StoreError};
use parameters::AppliedParameters;

/// How long after a failed entry in the fleet registry the agent tries again.
pub const REGISTRATION_RETRY: Duration = Duration::from_secs(60);

/// Why a coordinator run could not be requested.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("coordinator trigger: {0}")]
pub struct TriggerError(pub String);

/// Asks for a coordinator run now (the replica fast path, docs/design.md section 4).
///
/// Obligations: best effort (a failure is logged and the scheduled run remains the safety net);
/// returns quickly (fire-and-forget: an asynchronous Lambda invoke or a send on a local channel,
/// never waiting for the run itself); safe to call repeatedly (the coordinator is idempotent).
#[async_trait]
pub trait CoordinatorTrigger: Send + Sync {
    async fn request_run(&self, cluster: &str, evidence: &LeaseSighting) -> Result<(), TriggerError>;
}

/// What happened to one action of a tick.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionOutcome {
    pub action: AgentAction,
    /// `None`: done (or not needed); `Some`: failed or skipped, and why.
    pub error: Option<String>,
    /// A guarded action whose condition did not hold ([`AgentAction::DemoteIfLeaseLost`] with the
    /// lease still valid): nothing was done.
    pub not_needed: bool,
}

impl ActionOutcome {
    /// The action ran and succeeded.
    pub fn performed(&self) -> bool {
        self.error.is_none() && !self.not_needed
    }
}

/// What [`AgentRuntime`]'s execution of one action did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Executed {
    Done,
    NotNeeded,
}

/// The result of one loop iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct TickReport {
    pub reason: String,
    pub outcomes: Vec<ActionOutcome>,
    pub errors: Vec<String>,
    pub duration: Duration,
}

impl TickReport {
    /// Names of the actions that were performed and succeeded.
    pub fn done(&self) -> Vec<&'static str> {
        self.outcomes.iter().filter(|o| o.performed()).map(|o| o.action.name()).collect()
    }

    pub fn did(&self, name: &str) -> bool {
        self.done().contains(&name)
    }
}

/// One agent: the loop state around [`decide`].
///
/// [`AgentRuntime::tick`] is one iteration and never sleeps, spawns tasks or uses tokio timers;
/// the caller (the agent's `main`, a test, the simulation) decides when the next one runs, normally
/// [`AgentRuntime::interval`] later. All time comes from the injected clock; the lease timestamp is
/// taken before every lease write (lock-client rule). Because a tick can only check the lease
/// when it runs, the process should also run [`AgentHandle::enforce_lease_deadline`] from a
/// separate task, which demotes when a stuck tick (a hanging store call) outlives the lease.
pub struct AgentRuntime<S, P, C> {
    store: S,
    pg: Arc<P>,
    clock: C,
    identity: AgentIdentity,
    trigger: Option<Arc<dyn CoordinatorTrigger>>,
    /// Probes the designated primary's agent each loop (replicas; fast path on a refusal).
    agent_probe: Option<Arc<dyn AgentProbe>>,
    /// The designated primary's agent API URL, from the last view, while it is another member.
    primary_agent_url: Option<String>,
    config: DynamicConfig,
    observer: LeaseObserver,
    held: Option<HeldLease>,
    seq: u64,
    max_term_held: u64,
    last_rejoin_failure: Option<RejoinFailure>,
    primary_start_failure: Option<PrimaryStartFailure>,
    last_run_request: Option<Duration>,
    counters: AgentCounters,
    shared: Arc<Shared>,
    /// Where this node's role-change events go (lease lost, promoted, demoted).
    events: Option<Arc<dyn EventEmitter>>,
    /// External demotions already reported as events.
    external_demotions_reported: u64,
    /// The term of the lease this agent held valid at the end of its last tick (events).
    lease_valid_after_last_tick: Option<u64>,
    departed_slots: DepartedSlots,
    bootstrap: BootstrapPolicy,
    /// Watches the initialize lock (automatic bootstrap) for a takeover of a dead winner.
    init_observer: LeaseObserver,
    /// When (monotonic) this agent's last initialisation failed: it waits a lock duration
    /// before trying again, rather than run initdb every loop on a setting that cannot work.
    init_failed_at: Option<Duration>,
    /// The last heartbeat published: the next is due after a renew interval or on a change.
    last_heartbeat: Option<PublishedHeartbeat>,
    /// Since when (monotonic) this member has run as a replica without streaming.
    replica_not_streaming_since: Option<Duration>,
    /// When (monotonic) to enter the cluster in the fleet registry; `None` once this process has.
    registration_due: Option<Duration>,
    parameters: AppliedParameters,
}

impl<S, P, C> AgentRuntime<S, P, C>
where
    S: Store,
    P: PgControl + 'static,
    C: Clock + Clone + 'static,
{
    /// `config`: the dynamic configuration to use until the cluster record provides one.
    pub fn new(store: S, pg: P, clock: C, identity: AgentIdentity, config: DynamicConfig) -> Self {
        let snapshot = AgentSnapshot {
            cluster: identity.cluster.clone(),
            member: identity.member.clone(),
            config: config.clone(),
            ..Default::default()
        };
        AgentRuntime {
            store,
            pg: Arc::new(pg),
            clock,
            identity,
            trigger: None,
            agent_probe: None,
            primary_agent_url: None,
            config,
            observer: LeaseObserver::new(),
            held: None,
            seq: 0,
            max_term_held: 0,
            last_rejoin_failure: None,
            primary_start_failure: None,
            last_run_request: None,
            counters: AgentCounters::default(),
            shared: Arc::new(Shared {
                fence: Mutex::new((0, String::new())),
                pg_lock: AsyncMutex::new(()),
                snapshot: Mutex::new(snapshot),
                external_demotions: AtomicU64::new(0),
                heartbeat_asked: std::sync::atomic::AtomicBool::new(false),
                lease_deadline: Mutex::new(None),
                failsafe: Mutex::new(FailsafeState::default()),
                activity: Mutex::new(None),
                kept_alive_seq: AtomicU64::new(0),
                last_beat: Mutex::new(None),
                archive: Mutex::new(None),
            }),
            events: None,
            external_demotions_reported: 0,
            lease_valid_after_last_tick: None,
            departed_slots: DepartedSlots::new(DEFAULT_DEPARTED_SLOT_RETENTION),
            bootstrap: BootstrapPolicy::default(),
            init_observer: LeaseObserver::new(),
            init_failed_at: None,
            last_heartbeat: None,
            replica_not_streaming_since: None,
            registration_due: Some(Duration::ZERO),
            parameters: AppliedParameters::default(),
        }
    }

    /// Lets this agent initialise a cluster that has no record (agent::bootstrap).
    pub fn with_bootstrap(mut self, policy: BootstrapPolicy) -> Self {
        self.bootstrap = policy;
        self
    }

    /// How long the slot of a member that left is kept on the primary (agent::slots).
    pub fn with_departed_slot_retention(mut self, retention: Duration) -> Self {
        self.departed_slots = DepartedSlots::new(retention);
        self
    }

    /// Where this node's role changes are reported: `lease_lost` (a held lease stopped being
    /// valid without a release), `promoted`, `demoted` (by the loop, or on request through
    /// [`AgentHandle::demote_now`], reported at the next tick).
    pub fn with_events(mut self, events: Arc<dyn EventEmitter>) -> Self {
        self.events = Some(events);
        self
    }

    /// Probes the designated primary's agent in every loop, beside the Postgres probe; a refused
    /// connection (its process is gone) asks for a coordinator run at once, so the coordinator
    /// can fail over on that evidence without waiting for the lease (a Lambda runs only when
    /// asked). Without it only the coordinator's own probes see it.
    pub fn with_agent_probe(mut self, probe: Arc<dyn AgentProbe>) -> Self {
        self.agent_probe = Some(probe);
        self
    }

    /// Where fast-path coordinator requests go (none: only the schedule triggers runs).
    pub fn with_trigger(mut self, trigger: Arc<dyn CoordinatorTrigger>) -> Self {
        self.trigger = Some(trigger);
        self
    }

    pub fn handle(&self) -> AgentHandle {
        AgentHandle { shared: self.shared.clone(), pg: self.pg.clone(), clock: Arc::new(self.clock.clone()) }
    }

    /// How long to wait before the next tick (the probe interval of the current configuration).
    pub fn interval(&self) -> Duration {
        self.config.probe_interval()
    }

    pub fn held_lease(&self) -> Option<&HeldLease> {
        self.held.as_ref()
    }

    pub fn pg(&self) -> &P {
        &self.pg
    }

    /// One loop iteration: probe -> read view -> decide -> execute -> report.
    ///
    /// The decision's actions run in the order decided. Execution rules: lease writes, the
    /// demotion, coordinator requests and the heartbeat always run; the first failed role change
    /// (start, promote, follow, rewind, basebackup, slots) skips the later ones; a failed
    /// demotion skips a release of the lease (S2: the lease is kept until it lapses). Promote (and
    /// starting a primary's data directory) runs only while the lease for that term is held and
    /// valid by this agent's clock and the term is above any fence. A running primary's decision
    /// ends with [`AgentAction::DemoteIfLeaseLost`], so a tick never ends with a writable
    /// Postgres and no valid lease (S2).
    pub async fn tick(&mut self) -> TickReport {
        let started = self.clock.monotonic();
        let fenced_through = self.shared.fenced_through();
        // The primary's agent beside Postgres, at the URL the last view gave: no added latency.
        let primary_agent = async {
            match (&self.agent_probe, &self.primary_agent_url) {
                (Some(p), Some(url)) => Some(p.probe(url).await),
                _ => None,
            }
        };
        let (probe, primary_agent) = futures::join!(self.pg.probe(), primary_agent);
        let read = self.store.read_view(&self.identity.cluster).await;
        let after_read = self.clock.monotonic();
        let mut store_error = None;
        let (store, lease_state) = match read {
            Ok(view) => {
                let state = self.observer.observe(view.leader.as_ref(), after_read);
                if let Some(rec) = &view.cluster {
                    match rec.config.validate() {
                        Ok(()) => self.config = rec.config.clone(),
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster record has invalid dynamic config; keeping the last valid one")
                        }
                    }
                }
                self.primary_agent_url = primary_agent_url(&view, &self.identity.member);
                if let Some(own) = view.members.get(&self.identity.member) {
                    // Continue the sequence across agent restarts: observers look for change.
                    self.seq = self.seq.max(own.seq);
                }
                if let Some(h) = &self.held {
                    self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).note_view(
                        &self.identity.member,
                        h.lease.term,
                        &view,
                    );
                }
                (StoreRead::Ok(view), Some(state))
            }
            Err(e) => {
                store_error = Some(e.to_string());
                match e {
                    StoreError::Unavailable(m) => {
                        // The primary may be cut off by the same outage and unable to renew: an
                        // rvn unchanged across it is no evidence that it stopped, so lease watching
                        // starts over once the store answers again (docs/store-outages.md). The
                        // former primary then re-takes its own lease before anyone may take over.
                        self.observer.reset();
                        (StoreRead::Unavailable(m), None)
                    }
                    other => (StoreRead::Malformed(other.to_string()), None),
                }
            }
        };
        self.seq += 1;
        let leader_seen = self.sighting(&lease_state, after_read);
        let members = match &store {
            StoreRead::Ok(view) => Some(view.members.keys()),
            _ => None,
        };
        if self.shared.heartbeat_asked.swap(false, Ordering::Relaxed) {
            self.last_heartbeat = None;
        }
        self.replica_not_streaming_since = match self.replica_not_streaming_since {
            _ if !probe.is_replica() || probe.streaming => None,
            Some(since) => Some(since),
            None => Some(after_read),
        };
        let replica_not_streaming_for = self.replica_not_streaming_since.map(|since| after_read.saturating_sub(since));
        let departed_slots = self.departed_slots.observe(after_read, &probe, &self.identity.member, members);
        let input = AgentInput {
            identity: self.identity.clone(),
            now: after_read,
            wall_ms: self.clock.wall_ms(),
            probe: probe.clone(),
            store,
            lease_state,
            held: self.held.clone(),
            config: self.config.clone(),
            seq: self.seq,
            max_term_held: self.max_term_held,
            fenced_through,
            last_rejoin_failure: self.last_rejoin_failure.clone(),
            primary_start_failure: self.primary_start_failure.clone(),
            last_run_request: self.last_run_request,
            leader_seen,
            primary_agent,
            failsafe: self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).input(
                after_read,
                self.config.failsafe_mode,
                self.held.as_ref().map(|h| h.lease.term),
            ),
            departed_slots,
            bootstrap: self.bootstrap.clone(),
            last_heartbeat: self.last_heartbeat.clone(),
            replica_not_streaming_for,
        };
        let mut decision = decide(&input);
        if let Some(activity) = self.handle().activity().filter(|a| a.by_operator) {
            // An operator's restart or reinit holds the Postgres lock: this loop only keeps the
            // heartbeat and the lease rules going. What it would start or raise was decided on a
            // probe taken mid-operation (a stopped or emptied data directory).
            decision.actions.retain(|a| {
                !a.is_role_change() && !matches!(a, AgentAction::AcquireLease { .. } | AgentAction::AdoptLease { .. })
            });
            decision.reason = format!("{} in progress: no role changes; {}", activity.what, decision.reason);
        }
        tracing::debug!(reason = %decision.reason, actions = ?decision.names(), "decided");
        if let Some(AgentAction::PublishHeartbeat(beat)) =
            decision.actions.iter().find(|a| matches!(a, AgentAction::PublishHeartbeat(_)))
        {
            *self.shared.last_beat.lock().unwrap_or_else(PoisonError::into_inner) = Some(beat.clone());
        }

        let mut outcomes = Vec::with_capacity(decision.actions.len());
        let mut role_failed = false;
        let mut demote_failed = false;
        for action in decision.actions {
            let result = if role_failed && action.is_role_change() {
                Err("skipped: an earlier role change failed".to_string())
            } else if demote_failed && action == AgentAction::ReleaseLease {
                Err("skipped: the demotion failed; the lease is kept until it lapses (S2)".to_string())
            } else {
                let r = self.execute(&action, &probe).await;
                self.sync_lease_deadline();
                r
            };
            if let Err(e) = &result {
                role_failed |= action.is_role_change();
                demote_failed |= action.is_demotion();
                if !matches!(action, AgentAction::PublishHeartbeat(_)) {
                    self.counters.action_failures += 1;
                }
                tracing::warn!(action = action.name(), error = %e, "agent action failed");
            }
            let (error, not_needed) = match result {
                Ok(done) => (None, done == Executed::NotNeeded),
                Err(e) => (Some(e), false),
            };
            outcomes.push(ActionOutcome { action, error, not_needed });
        }

        let errors: Vec<String> = store_error
            .iter()
            .cloned()
            .chain(outcomes.iter().filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.action.name()))))
            .collect();
        let duration = self.clock.monotonic().saturating_sub(started);
        self.counters.ticks += 1;
        // After a role change the snapshot (HTTP API, metrics) shows the new state, not the probe
        // taken before it.
        let changed = outcomes.iter().any(|o| o.performed() && (o.action.is_role_change() || o.action.is_demotion()));
        let probe_after = if changed { Some(self.pg.probe().await) } else { None };
        self.emit_role_events(&outcomes, &decision.reason);
        let report = TickReport { reason: decision.reason, outcomes, errors, duration };
        self.publish_snapshot(&input, probe_after, &report, store_error);
        let due = self.registration_due.is_some_and(|at| after_read >= at);
        if due && matches!(&input.store, StoreRead::Ok(view) if view.cluster.is_some()) {
            self.register(after_read).await;
        }
        if let StoreRead::Ok(view) = &input.store {
            self.keep_parameters_and_state(view, &probe).await;
        }
        report
    }

    /// Enters the cluster in the fleet registry once per process, after the tick's work (a
    /// fleet coordinator finds it there; clusters bootstrapped by older releases are entered
    /// when an agent of this one starts). A failure costs nothing but a try a minute later (a
    /// store role without the right would otherwise be asked, and logged, every loop).
    async fn register(&mut self, now: Duration) {
        match self.store.register_cluster(&self.identity.cluster, self.clock.wall_ms()).await {
            Ok(()) => self.registration_due = None,
            Err(e) => {
                self.registration_due = Some(now + REGISTRATION_RETRY);
                tracing::warn!(error = %e, "entering the cluster in the fleet registry; trying again in a minute")
            }
        }
    }

    /// Publishes the held lease's deadline for [`AgentHandle::enforce_lease_deadline`].
    fn sync_lease_deadline(&self) {
        let margin = self.config.safety_margin();
        *self.shared.lease_deadline.lock().unwrap_or_else(PoisonError::into_inner) =
            self.held.as_ref().map(|h| (h.lease.term, h.valid_until(margin)));
        // After the deadline: an acknowledgement is refused while a lease is held or being claimed.
        let mut fs = self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner);
        fs.note_lease(self.held.as_ref().map(|h| h.lease.term));
        fs.end_claim();
    }

    /// Reports this tick's role changes (see [`AgentRuntime::with_events`]).
    fn emit_role_events(&mut self, outcomes: &[ActionOutcome], reason: &str) {
        let had_lease = self.lease_valid_after_last_tick.take();
        self.lease_valid_after_last_tick = self.holds_valid_lease().then(|| self.held.as_ref().map_or(0, |h| h.lease.term));
        let Some(events) = self.events.clone() else { return };
        let external = self.shared.external_demotions.load(Ordering::Relaxed);
        let new_external = external > self.external_demotions_reported;
        self.external_demotions_reported = external;
        let now = self.clock.wall_ms();
        let (cluster, member) = (self.identity.cluster.clone(), self.identity.member.clone());
        let ev = |kind, term: u64, detail: String| {
            Event::new(kind, cluster.as_str(), now, detail).member(member.as_str()).term(term).source("agent")
        };
        let lease_term = had_lease.unwrap_or(self.max_term_held);
        let released = outcomes.iter().any(|o| o.performed() && o.action == AgentAction::ReleaseLease);
        if had_lease.is_some() && self.lease_valid_after_last_tick.is_none() && !released {
            events.emit(ev(EventKind::LeaseLost, lease_term, format!("leader lease of term {lease_term} not renewed: {reason}")));
        }
        if new_external {
            let (term, why) = self.shared.fence.lock().unwrap_or_else(PoisonError::into_inner).clone();
            events.emit(ev(EventKind::Demoted, term, format!("demoted on request: {why}")));
        }
        for o in outcomes.iter().filter(|o| o.performed()) {
            match &o.action {
                AgentAction::Promote { term } => events.emit(ev(EventKind::Promoted, *term, format!("promoted in term {term}"))),
                AgentAction::Demote | AgentAction::DemoteIfLeaseLost => {
                    events.emit(ev(EventKind::Demoted, lease_term, format!("demoted: {reason}")))
                }
                _ => {}
            }
        }
    }

    /// The held lease is valid by this agent's clock, or extended by failsafe acknowledgements.
    fn holds_valid_lease(&self) -> bool {
        let now = self.clock.monotonic();
        self.held.as_ref().is_some_and(|h| {
            h.is_valid(now, self.config.safety_margin())
                || self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).extension(h.lease.term, now).is_some()
        })
    }

    fn sighting(&self, state: &Option<LeaseState>, now: Duration) -> Option<LeaseSighting> {
        let lease = match state {
            Some(LeaseState::Held { lease, .. }) | Some(LeaseState::Expired(lease)) => lease,
            _ => return None,
        };
        let (rvn, first_seen) = self.observer.sighting()?;
        (rvn == lease.rvn).then(|| LeaseSighting {
            term: lease.term,
            rvn: lease.rvn.clone(),
            unchanged_ms: now.saturating_sub(first_seen).as_millis() as u64,
        })
    }

    fn publish_snapshot(
        &self,
        input: &AgentInput,
        probe_after: Option<PgProbe>,
        report: &TickReport,
        store_error: Option<String>,
    ) {
        let probe = probe_after.unwrap_or_else(|| input.probe.clone());
        let margin = self.config.safety_margin();
        let (fence, view) = (
            self.shared.fenced_through(),
            match &input.store {
                StoreRead::Ok(v) => Some(v.clone()),
                _ => None,
            },
        );
        let mut s = self.shared.snapshot.lock().unwrap_or_else(PoisonError::into_inner);
        s.role = if probe.running { probe.role } else { Role::Unknown };
        s.pg_running = probe.running;
        s.holds_lease = self.held.is_some();
        s.lease_term = self.held.as_ref().map(|h| h.lease.term);
        s.lease_valid_until = self.held.as_ref().map(|h| h.valid_until(margin));
        if let Some(v) = &view {
            s.term = s.term.max(v.cluster.as_ref().map_or(0, |c| c.term));
            s.last_view = view;
        }
        s.fenced_through = fence;
        s.last_probe = Some(probe);
        s.store_error = store_error;
        s.last_reason = report.reason.clone();
        s.last_errors = report.errors.clone();
        s.last_loop_duration = report.duration;
        s.seq = self.seq;
        s.config = self.config.clone();
        s.counters = self.counters.clone();
        s.counters.demotions += self.shared.external_demotions.load(Ordering::Relaxed);
    }
}

/// The designated primary's agent API URL in `view`, when that is another member's and no
/// transition is under way (then the coordinator already acts).
fn primary_agent_url(view: &crate::model::ClusterView, me: &str) -> Option<String> {
    let record = view.cluster.as_ref().filter(|r| r.transition.is_none())?;
    let primary = record.primary.as_deref().filter(|p| *p != me)?;
    view.members.get(primary).map(|m| m.api_url.clone()).filter(|u| !u.is_empty())
}

mod execute;
mod parameters;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::memory::MemoryStore;
    use crate::model::{ClusterRecord, LeaseName, MemberStatus};
    use crate::pg::DataDirState;
    use crate::pg::{PgError, PrimaryTarget, StopMode, UpstreamConfig};
    use crate::store::LeaseClaim;

    /// A Postgres double for runtime tests: a role, a data directory state and a call log.
    #[derive(Default)]
    struct FakePg {
        state: Mutex<(PgProbe, Vec<String>)>,
        /// When set, a basebackup waits for a permit: a long copy the test ends when it likes.
        copy_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    }

    impl FakePg {
        fn with(probe: PgProbe) -> Self {
            FakePg { state: Mutex::new((probe, vec![])), copy_gate: Mutex::new(None) }
        }
        fn log(&self, call: &str) {
            self.state.lock().unwrap().1.push(call.to_string());
        }
        fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().1.clone()
        }
        fn set(&self, f: impl FnOnce(&mut PgProbe)) {
            f(&mut self.state.lock().unwrap().0)
        }
    }

    #[async_trait]
    impl PgControl for FakePg {
        async fn probe(&self) -> PgProbe {
            self.state.lock().unwrap().0.clone()
        }
        async fn start(&self) -> Result<(), PgError> {
            self.log("start");
            self.set(|p| {
                p.running = true;
                p.role = if p.data == DataDirState::Standby { Role::Replica } else { Role::Primary };
            });
            Ok(())
        }
        async fn stop(&self, _mode: StopMode) -> Result<(), PgError> {
            self.log("stop");
            self.set(|p| p.running = false);
            Ok(())
        }
        async fn promote(&self) -> Result<(), PgError> {
            self.log("promote");
            self.set(|p| {
                p.role = Role::Primary;
                p.data = DataDirState::Primary;
            });
            Ok(())
        }
        async fn demote(&self) -> Result<(), PgError> {
            self.log("demote");
            self.set(|p| {
                p.running = false;
                p.role = Role::Unknown;
            });
            Ok(())
        }
        async fn follow(&self, primary: &PrimaryTarget) -> Result<(), PgError> {
            self.log(&format!("follow {}", primary.name));
            let up =
                UpstreamConfig { host: Some(primary.host.clone()), port: Some(primary.port), application_name: None, slot: None };
            self.set(|p| p.upstream = Some(up));
            Ok(())
        }
        async fn rewind(&self, source: &PrimaryTarget) -> Result<(), PgError> {
            self.log(&format!("rewind {}", source.name));
            Err(PgError::Tool { tool: "pg_rewind".into(), output: "could not find common ancestor".into() })
        }
        async fn basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
            self.log(&format!("basebackup {}", source.name));
            let gate = self.copy_gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                self.set(|p| *p = PgProbe::stopped(DataDirState::Empty));
                let _permit = gate.acquire().await.unwrap();
                self.set(|p| *p = replica());
            }
            Ok(())
        }
        async fn data_dir_bytes(&self) -> Option<u64> {
            Some(3 * 1024 * 1024)
        }
        async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError> {
            self.log(&format!("slots {}", members.join(",")));
            let slots: Vec<String> = members.iter().map(|m| crate::pg::slot_name(m)).collect();
            self.set(|p| p.slots = slots);
            Ok(())
        }
        async fn initialize(&self, _budget: Duration, _restore: Option<&crate::backup::RestoreSource>) -> Result<(), PgError> {
            self.log("initialize");
            self.set(|p| p.data = DataDirState::Primary);
            Ok(())
        }
        async fn initialized(&self) -> Result<(), PgError> {
            Ok(())
        }
        async fn drop_slots(&self, slots: &[String]) -> Result<(), PgError> {
            self.log(&format!("drop slots {}", slots.join(",")));
            self.set(|p| p.slots.retain(|s| !slots.contains(s)));
            Ok(())
        }
        async fn set_sync_standbys(&self, names: &crate::pg::SyncStandbys) -> Result<(), PgError> {
            self.log(&format!("sync '{}'", names.to_setting()));
            let text = names.to_setting();
            self.set(|p| p.sync_standby_names = Some(text));
            Ok(())
        }
        async fn apply_parameters(&self, p: &crate::params::ClusterParameters) -> Result<Option<Vec<String>>, PgError> {
            self.log(&format!("parameters v{}", p.version));
            Ok(Some(p.parameters.keys().filter(|k| k.starts_with("bad")).cloned().collect()))
        }
    }

    struct Trigger(Mutex<Vec<LeaseSighting>>);

    #[async_trait]
    impl CoordinatorTrigger for Trigger {
        async fn request_run(&self, _cluster: &str, evidence: &LeaseSighting) -> Result<(), TriggerError> {
            self.0.lock().unwrap().push(evidence.clone());
            Ok(())
        }
    }

    fn config() -> DynamicConfig {
        DynamicConfig {
            lease_ms: 4000,
            renew_interval_ms: 1000,
            safety_margin_ms: 1500,
            probe_interval_ms: 500,
            ..Default::default()
        }
    }

    fn identity(member: &str, port: u16) -> AgentIdentity {
        AgentIdentity {
            cluster: "c1".into(),
            member: member.into(),
            pg_host: "127.0.0.1".into(),
            pg_port: port,
            ..Default::default()
        }
    }

    fn primary() -> PgProbe {
        PgProbe { running: true, role: Role::Primary, data: DataDirState::Primary, ..Default::default() }
    }

    fn replica() -> PgProbe {
        PgProbe { running: true, role: Role::Replica, data: DataDirState::Standby, ..Default::default() }
    }

    type Rt = AgentRuntime<Arc<MemoryStore>, FakePg, ManualClock>;

    async fn setup(member: &str, probe: PgProbe) -> (Arc<MemoryStore>, ManualClock, Rt) {
        let store = Arc::new(MemoryStore::new());
        if store.read_cluster("c1").await.unwrap().is_none() {
            store.write_cluster("c1", None, &ClusterRecord::bootstrap("n1", config())).await.unwrap();
        }
        let clock = ManualClock::new(1_000_000);
        let rt = AgentRuntime::new(store.clone(), FakePg::with(probe), clock.clone(), identity(member, 5001), config());
        (store, clock, rt)
    }

    #[tokio::test]
    async fn primary_renews_then_demotes_within_the_lease_when_the_store_goes_away() {
        let (store, clock, mut rt) = setup("n1", primary()).await;
        let r = rt.tick().await;
        assert_eq!(r.done(), vec!["acquire_lease", "publish_heartbeat"], "{}", r.reason);
        clock.advance(Duration::from_millis(1000)); // one renew interval
        assert!(rt.tick().await.did("renew_lease"));
        let last_renewal = clock.monotonic();
        store.set_available(false);
        let mut demoted_at = None;
        for _ in 0..20 {
            clock.advance(Duration::from_millis(500));
            if rt.tick().await.did("demote") {
                demoted_at = Some(clock.monotonic());
                break;
            }
        }
        let at = demoted_at.expect("never demoted");
        // Renewed at `last_renewal` (timestamp taken before the call): valid for 4000 - 1500 ms.
        assert!(at - last_renewal >= Duration::from_millis(2500) && at - last_renewal < Duration::from_millis(4000));
        assert_eq!(rt.pg().calls().last().unwrap(), "demote");
        let snap = rt.handle().snapshot();
        assert!(!snap.holds_lease && snap.counters.lease_renew_failures >= 3 && snap.counters.demotions == 1);
    }

    #[tokio::test]
    async fn a_record_created_before_the_initialize_lock_was_won_is_joined_not_initialised_over() {
        // The loop decided to initialise on a read without a record; another member then
        // created it and released the lock before this one took the lock.
        let (store, _clock, mut rt) = setup("n2", PgProbe::stopped(DataDirState::Empty)).await;
        rt.initialize("c1").await.unwrap();
        assert!(!rt.pg().calls().iter().any(|c| c == "initialize"), "{:?}", rt.pg().calls());
        let lock = store.read_lease("c1", LeaseName::Initialize).await.unwrap();
        assert!(lock.as_ref().is_none_or(|l| l.is_free()), "the lock is released: {lock:?}");
    }

    #[tokio::test]
    async fn parameters_are_applied_once_per_version_and_the_state_written_only_on_change() {
        use crate::params::ClusterParameters;
        let (store, clock, mut rt) = setup("n2", replica()).await;
        let writes = |rt: &Rt| rt.pg().calls().into_iter().filter(|c| c.starts_with("parameters")).collect::<Vec<_>>();
        rt.tick().await;
        assert!(writes(&rt).is_empty() && store.read_view("c1").await.unwrap().states.is_empty(), "nothing to apply or report");
        let mut p = ClusterParameters::default();
        p.parameters.insert("shared_buffers".into(), "256MB".into());
        p.parameters.insert("bad_one".into(), "x".into());
        store.write_parameters("c1", None, &p).await.unwrap();
        rt.pg().set(|probe| probe.pending_restart = vec!["shared_buffers".into()]);
        for _ in 0..3 {
            clock.advance(Duration::from_millis(500));
            rt.tick().await;
        }
        assert_eq!(writes(&rt), ["parameters v1"], "once per version");
        let state = store.read_view("c1").await.unwrap().states["n2"].clone();
        assert_eq!(
            (state.parameters_version, state.pending_restart, state.parameter_errors),
            (1, vec!["shared_buffers".into()], vec!["bad_one".into()])
        );
        // A restart cleared it: reported once more.
        rt.pg().set(|probe| probe.pending_restart.clear());
        clock.advance(Duration::from_millis(500));
        rt.tick().await;
        assert!(store.read_view("c1").await.unwrap().states["n2"].pending_restart.is_empty());
        // An item this build cannot read never wipes what the node runs with.
        store.put_raw("c1", crate::keys::PARAMETERS, r#"{"parameters": {}, "version": 9, "min_reader_version": 99}"#);
        clock.advance(Duration::from_millis(500));
        rt.tick().await;
        assert_eq!(writes(&rt), ["parameters v1"]);
    }

    /// n1 primary with an address, n2 a streaming replica, both with heartbeats; `rt` is n2's.
    async fn two_members() -> (Arc<MemoryStore>, ManualClock, Rt) {
        let (store, clock, mut rt) = setup("n2", replica()).await;
        let mut n1 = MemberStatus::new("n1");
        (n1.role, n1.pg_running, n1.pg_host, n1.pg_port) = (Role::Primary, true, "127.0.0.1".into(), 5001);
        store.put_member("c1", &n1).await.unwrap();
        rt.tick().await;
        (store, clock, rt)
    }

    #[tokio::test]
    async fn an_operators_reinit_keeps_the_heartbeat_and_starts_nothing_until_it_ends() {
        let (store, clock, mut rt) = two_members().await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *rt.pg().copy_gate.lock().unwrap() = Some(gate.clone());
        let handle = rt.handle();
        let reinit = tokio::spawn(async move { handle.reinit().await });
        while rt.handle().activity().is_none() {
            tokio::task::yield_now().await;
        }
        let seq_before = store.read_view("c1").await.unwrap().members["n2"].seq;
        for _ in 0..8 {
            clock.advance(Duration::from_millis(500));
            let r = rt.tick().await;
            // The data directory looks empty mid-copy: the loop must not start a copy of its own.
            assert!(r.outcomes.iter().all(|o| !o.action.is_role_change()), "{:?}: {}", r.done(), r.reason);
            assert!(r.reason.contains("reinit: basebackup from n1 in progress"), "{}", r.reason);
        }
        let view = store.read_view("c1").await.unwrap();
        assert!(view.members["n2"].seq > seq_before && !view.members["n2"].pg_running, "the heartbeat goes on");
        assert_eq!(view.states["n2"].activity.as_deref(), Some("reinit: basebackup from n1: 3 MB copied in 4 s"));
        gate.add_permits(1);
        reinit.await.unwrap().unwrap();
        assert!(rt.handle().activity().is_none());
        clock.advance(Duration::from_millis(500));
        rt.tick().await;
        assert!(store.read_view("c1").await.unwrap().states["n2"].activity.is_none(), "cleared when it ends");
        assert_eq!(rt.pg().calls().iter().filter(|c| c.starts_with("basebackup")).count(), 1, "{:?}", rt.pg().calls());
    }

    #[tokio::test]
    async fn reinit_and_restart_are_refused_on_the_primary() {
        let (_store, _clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        for refused in [rt.handle().reinit().await, rt.handle().restart_replica().await] {
            assert!(matches!(refused, Err(crate::agent::MaintenanceError::Refused(_))), "{refused:?}");
        }
        assert!(rt.pg().calls().iter().all(|c| !c.starts_with("basebackup") && c != "stop"), "{:?}", rt.pg().calls());
    }

    #[tokio::test]
    async fn a_long_copy_of_the_loops_own_keeps_the_heartbeat_alive_through_the_keeper() {
        let (store, clock, rt) = two_members().await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *rt.pg().copy_gate.lock().unwrap() = Some(gate.clone());
        // n2 lost its data directory: the loop copies it from n1 (blocked until the gate opens).
        rt.pg().set(|p| *p = PgProbe::stopped(DataDirState::Empty));
        let handle = rt.handle();
        let mut rt = rt;
        let tick = tokio::spawn(async move {
            let r = rt.tick().await;
            (rt, r)
        });
        while handle.activity().is_none() {
            tokio::task::yield_now().await;
        }
        let before = store.read_view("c1").await.unwrap().members["n2"].clone();
        clock.advance(Duration::from_millis(100));
        assert!(!handle.keep_alive(store.as_ref(), Duration::from_millis(100)).await.unwrap(), "the loop beat recently");
        clock.advance(Duration::from_secs(3));
        assert!(handle.keep_alive(store.as_ref(), Duration::from_secs(3)).await.unwrap());
        let view = store.read_view("c1").await.unwrap();
        let beat = &view.members["n2"];
        assert!(beat.seq > before.seq && !beat.pg_running && beat.leader_seen.is_none(), "{beat:?}");
        assert_eq!(view.states["n2"].activity.as_deref(), Some("basebackup from n1: 3 MB copied in 3 s"));
        gate.add_permits(1);
        let (mut rt, r) = tick.await.unwrap();
        assert!(r.did("basebackup"), "{}", r.reason);
        clock.advance(Duration::from_millis(500));
        rt.tick().await;
        let view = store.read_view("c1").await.unwrap();
        assert!(view.members["n2"].seq > beat.seq, "the loop continues the sequence");
        assert!(view.states["n2"].activity.is_none());
    }

    #[tokio::test]
    async fn an_agent_enters_its_cluster_in_the_registry_once_it_exists() {
        let store = Arc::new(MemoryStore::new());
        let clock = ManualClock::new(1_000_000);
        let mut rt = AgentRuntime::new(store.clone(), FakePg::with(replica()), clock.clone(), identity("n2", 5002), config());
        rt.tick().await;
        assert!(store.list_clusters().await.unwrap().is_empty(), "no cluster record yet: nothing to register");
        store.write_cluster("c1", None, &ClusterRecord::bootstrap("n1", config())).await.unwrap();
        store.set_available(false);
        rt.tick().await;
        store.set_available(true);
        clock.advance(Duration::from_millis(500));
        rt.tick().await;
        assert_eq!(store.list_clusters().await.unwrap(), vec!["c1".to_string()], "the first loop that reads the record");
        store.unregister_cluster("c1").await.unwrap();
        clock.advance(Duration::from_millis(500));
        rt.tick().await;
        assert!(store.list_clusters().await.unwrap().is_empty(), "once per process: an operator's removal stands");
    }

    #[tokio::test]
    async fn a_timed_out_renewal_that_landed_is_re_taken_not_demoted() {
        let (store, clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        // The store applied a renewal whose answer never arrived: same owner and term, new rvn.
        let held = rt.held_lease().unwrap().lease.clone();
        let landed = store.renew_lease("c1", LeaseName::Leader, &held).await.unwrap();
        clock.advance(Duration::from_millis(1000)); // one renew interval
        let r = rt.tick().await;
        assert!(r.did("renew_lease") && !r.did("demote"), "{r:?}");
        let now = rt.held_lease().unwrap().lease.clone();
        assert_eq!((now.owner.as_str(), now.term), ("n1", held.term));
        assert_ne!(now.rvn, landed.rvn, "re-took the landed record with a fresh write");
        assert!(!rt.pg().calls().iter().any(|c| c == "demote"));
    }

    #[tokio::test]
    async fn a_lost_renewal_race_demotes_in_the_same_tick() {
        let (store, clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        // Someone else takes the lease (a coordinator/operator forced it).
        let held = rt.held_lease().unwrap().lease.clone();
        store.release_lease("c1", LeaseName::Leader, &held).await.unwrap();
        store.acquire_lease("c1", LeaseName::Leader, LeaseClaim::Free, "n2", 2, 4000).await.unwrap();
        clock.advance(Duration::from_millis(1000)); // one renew interval
        let r = rt.tick().await;
        // Executed in the order decided: the renewal fails, the guarded demotion then acts.
        let executed: Vec<_> = r.outcomes.iter().map(|o| (o.action.name(), o.error.is_some(), o.not_needed)).collect();
        assert_eq!(
            executed,
            vec![("renew_lease", true, false), ("demote_if_lease_lost", false, false), ("publish_heartbeat", false, false)],
            "{r:?}"
        );
        assert!(rt.held_lease().is_none());
    }

    #[tokio::test]
    async fn the_guarded_demotion_does_nothing_while_the_lease_is_held() {
        let (_store, clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        clock.advance(Duration::from_millis(1000)); // one renew interval
        let r = rt.tick().await;
        let guard = r.outcomes.iter().find(|o| o.action == AgentAction::DemoteIfLeaseLost).expect("a running primary's guard");
        assert!(guard.not_needed && guard.error.is_none(), "{r:?}");
        assert_eq!(r.done(), vec!["renew_lease", "publish_heartbeat"]);
        assert!(!rt.pg().calls().iter().any(|c| c == "demote"), "{:?}", rt.pg().calls());
    }

    #[tokio::test]
    async fn replica_promotes_only_after_taking_the_lease_for_the_named_term() {
        let (store, clock, mut r1) = setup("n1", primary()).await;
        r1.tick().await;
        let mut r2 = AgentRuntime::new(store.clone(), FakePg::with(replica()), clock.clone(), identity("n2", 5002), config());
        let trigger = Arc::new(Trigger(Mutex::new(vec![])));
        r2 = r2.with_trigger(trigger.clone());
        r2.tick().await;
        assert!(r2.pg().calls().iter().any(|c| c == "follow n1"));
        // n1's agent dies; n2 sees the lease unchanged for a full duration and asks for a run.
        for _ in 0..9 {
            clock.advance(Duration::from_millis(500));
            let r = r2.tick().await;
            assert!(!r.did("promote") && !r.did("acquire_lease"), "promoted on its own: {}", r.reason);
        }
        let asked = trigger.0.lock().unwrap().clone();
        assert_eq!(asked.len(), 1, "exactly one request per lease duration");
        assert!(asked[0].unchanged_ms >= 4000 && asked[0].term == 1);
        let hb = store.read_view("c1").await.unwrap().members["n2"].clone();
        assert!(hb.leader_seen.is_some_and(|s| s.unchanged_ms >= 4000));
        // The coordinator names n2 for term 2.
        let rec = store.read_cluster("c1").await.unwrap().unwrap();
        store
            .write_cluster("c1", Some(rec.version), &ClusterRecord { term: 2, primary: Some("n2".into()), ..rec })
            .await
            .unwrap();
        clock.advance(Duration::from_millis(500));
        let r = r2.tick().await;
        assert_eq!(r.done(), vec!["acquire_lease", "promote", "ensure_slots", "publish_heartbeat"], "{}", r.reason);
        assert_eq!(r2.held_lease().unwrap().lease.term, 2);
        // The old primary's agent comes back: not designated, lease gone -> demote, then (once
        // n2's heartbeat says it is read-write) rewind, and when the rewind fails, a basebackup.
        clock.advance(Duration::from_millis(500));
        r2.tick().await;
        let r = r1.tick().await;
        assert!(r.did("demote"), "{}", r.reason);
        let r = r1.tick().await;
        assert!(r.outcomes.iter().any(|o| o.action.name() == "rewind" && o.error.is_some()), "{r:?}");
        let r = r1.tick().await;
        assert!(r.did("basebackup"), "{}", r.reason);
    }

    #[tokio::test]
    async fn a_primary_no_longer_designated_demotes_before_releasing_its_lease() {
        // With fencing off a released lease lets the coordinator promote at once (S2).
        let (store, clock, mut rt) = setup("n1", primary()).await;
        assert!(rt.tick().await.did("acquire_lease"));
        let rec = store.read_cluster("c1").await.unwrap().unwrap();
        store
            .write_cluster("c1", Some(rec.version), &ClusterRecord { term: 2, primary: Some("n2".into()), ..rec })
            .await
            .unwrap();
        clock.advance(Duration::from_millis(500));
        let r = rt.tick().await;
        let order: Vec<&str> = r.done().into_iter().filter(|a| matches!(*a, "demote" | "release_lease")).collect();
        assert_eq!(order, vec!["demote", "release_lease"], "{}", r.reason);
    }

    #[tokio::test]
    async fn demote_now_fences_and_refuses_the_lease_for_that_term() {
        let (store, clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        let handle = rt.handle();
        assert!(handle.is_leader());
        handle.demote_now(1, "fencer").await.unwrap();
        assert!(!handle.is_leader() || !rt.pg().probe().await.running);
        clock.advance(Duration::from_millis(500));
        let r = rt.tick().await;
        assert!(r.did("release_lease"), "{}", r.reason);
        assert!(store.read_lease("c1", LeaseName::Leader).await.unwrap().unwrap().released);
        for _ in 0..4 {
            clock.advance(Duration::from_millis(500));
            let r = rt.tick().await;
            assert!(!r.did("acquire_lease") && !r.did("start") && !r.did("promote"), "{}", r.reason);
        }
        assert_eq!(rt.handle().snapshot().fenced_through, 1);
    }

    #[tokio::test]
    async fn role_changes_are_reported_once_each() {
        use crate::events::{Collector, EventKind};
        let events = Arc::new(Collector::new());
        let (store, clock, rt) = setup("n1", primary()).await;
        let mut rt = rt.with_events(events.clone());
        for _ in 0..3 {
            rt.tick().await;
            clock.advance(Duration::from_millis(500));
        }
        assert!(events.drain().is_empty(), "holding and renewing the lease is not news");
        store.set_available(false);
        for _ in 0..20 {
            clock.advance(Duration::from_millis(500));
            if rt.tick().await.did("demote") {
                break;
            }
        }
        let got: Vec<_> = events.drain().into_iter().map(|e| (e.kind, e.member.unwrap_or_default(), e.term, e.source)).collect();
        let n1 = || "n1".to_string();
        let agent = || "agent".to_string();
        assert_eq!(got, vec![(EventKind::LeaseLost, n1(), 1, agent()), (EventKind::Demoted, n1(), 1, agent())]);
        for _ in 0..3 {
            clock.advance(Duration::from_millis(500));
            rt.tick().await;
        }
        assert!(events.drain().is_empty(), "reported once, not every tick");

        // A demotion on request (the coordinator's fencer) is reported at the next tick, and a
        // clean release of the lease is no "lease lost".
        let (_store, clock, rt) = setup("n1", primary()).await;
        let mut rt = rt.with_events(events.clone());
        rt.tick().await;
        rt.handle().demote_now(1, "fenced by coordinator").await.unwrap();
        clock.advance(Duration::from_millis(500));
        assert!(rt.tick().await.did("release_lease"));
        let got: Vec<_> = events.drain().into_iter().map(|e| (e.kind, e.detail)).collect();
        assert_eq!(got, vec![(EventKind::Demoted, "demoted on request: fenced by coordinator".to_string())]);
    }

    #[tokio::test]
    async fn watchdog_demotes_when_the_loop_does_not_come_back_in_time() {
        let (_store, clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        let handle = rt.handle();
        clock.advance(Duration::from_millis(2000));
        assert!(!handle.enforce_lease_deadline().await.unwrap(), "still valid: 2000 < 4000 - 1500 ms");
        // No tick runs (a store call hangs); the lease runs out by the agent's clock.
        clock.advance(Duration::from_millis(600));
        assert!(handle.enforce_lease_deadline().await.unwrap());
        assert_eq!(rt.pg().calls().last().unwrap(), "demote");
        // Its own deadline is no fence: the loop may re-take its lease for the same term.
        assert_eq!(handle.snapshot().fenced_through, 0);
    }

    #[tokio::test]
    async fn malformed_cluster_record_changes_nothing_but_the_lease_check_applies() {
        let (store, clock, mut rt) = setup("n1", primary()).await;
        rt.tick().await;
        store.put_raw("c1", crate::keys::CLUSTER, "{not json");
        for _ in 0..3 {
            clock.advance(Duration::from_millis(500));
            let r = rt.tick().await;
            assert!(r.reason.contains("unusable"), "{}", r.reason);
            assert!(!r.did("demote"));
        }
        assert!(rt.held_lease().is_some(), "renewals go on: the lease item itself is fine");
        assert!(!rt.pg().calls().iter().any(|c| c == "demote"));
    }

    #[tokio::test]
    async fn an_idle_cluster_at_the_defaults_writes_at_most_30_times_per_node_minute() {
        let store = Arc::new(MemoryStore::new());
        store.write_cluster("c1", None, &ClusterRecord::bootstrap("n1", DynamicConfig::default())).await.unwrap();
        let clock = ManualClock::new(1_000_000);
        let follower = |me: &str| PgProbe {
            upstream: Some(UpstreamConfig {
                host: Some("127.0.0.1".into()),
                port: Some(5001),
                application_name: None,
                slot: Some(crate::pg::slot_name(me)),
            }),
            streaming: true,
            ..replica()
        };
        let mut lead = primary();
        lead.slots = vec![crate::pg::slot_name("n2"), crate::pg::slot_name("n3")];
        let mut agents: Vec<Rt> = [("n1", lead, 5001), ("n2", follower("n2"), 5002), ("n3", follower("n3"), 5003)]
            .into_iter()
            .map(|(name, probe, port)| {
                AgentRuntime::new(
                    store.clone(),
                    FakePg::with(probe),
                    clock.clone(),
                    identity(name, port),
                    DynamicConfig::default(),
                )
            })
            .collect();
        let mut writes = std::collections::BTreeMap::<&str, usize>::new();
        for second in 0..70 {
            clock.advance(Duration::from_secs(1));
            for agent in agents.iter_mut() {
                let report = agent.tick().await;
                assert!(!report.did("demote") && !report.did("demote_if_lease_lost"), "{report:?}");
                if second >= 10 {
                    for name in report.done() {
                        if matches!(
                            name,
                            "renew_lease"
                                | "acquire_lease"
                                | "adopt_lease"
                                | "release_lease"
                                | "record_sync"
                                | "publish_heartbeat"
                        ) {
                            *writes.entry(name).or_default() += 1;
                        }
                    }
                }
            }
        }
        // One minute after the start: renewals every 4 s (15) and each member's unchanged
        // heartbeat every 3 s (3 x 20); today's figure is 75, the target at most 90.
        let total: usize = writes.values().sum();
        eprintln!("an idle 3-node cluster, one minute: {total} store writes {writes:?}");
        assert!(total <= 90, "{total} writes in a minute: {writes:?}");
        assert!(writes.get("renew_lease").copied().unwrap_or(0) >= 15, "the lease is still renewed: {writes:?}");
        assert!(writes.get("publish_heartbeat").copied().unwrap_or(0) >= 45, "every member still beats: {writes:?}");
    }

    #[test]
    fn only_another_designated_primary_outside_a_transition_is_probed() {
        let mut view =
            crate::model::ClusterView { cluster: Some(ClusterRecord::bootstrap("n1", config())), ..Default::default() };
        let mut n1 = MemberStatus::new("n1");
        n1.api_url = "http://127.0.0.1:8008".into();
        view.members.insert("n1".into(), n1);
        assert_eq!(primary_agent_url(&view, "n2").as_deref(), Some("http://127.0.0.1:8008"));
        assert_eq!(primary_agent_url(&view, "n1"), None, "not itself");
        view.cluster.as_mut().unwrap().transition = Some(crate::model::Transition::fenced_failover("n1", "n2", 2));
        assert_eq!(primary_agent_url(&view, "n2"), None, "the coordinator is acting already");
    }
}
