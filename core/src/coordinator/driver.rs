//! The coordinator driver: holds the coordinator lock, observes, evaluates, and carries out the
//! next step(s) of one cluster per call. No sleeping, spawning or timers inside.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::clock::Clock;
use crate::events::{derive_events, Event, EventEmitter, EventKind, HealthView, MemberHealth};
use crate::fence::{FenceTarget, Fencer};
use crate::lease::{AcquireOutcome, HeldLease, LeaseClient};
use crate::model::{ClusterRecord, ClusterView, LeaseName, TransitionKind, TransitionStep};
use crate::store::{Store, StoreError};

use super::decide::{apply, evaluate, Action, Verdict};
use super::fencing::{self, FenceAnswer};
use super::observe::{Liveness, LockStatus, Observations, Watch};
use super::probe::{hosting_member, AgentProbe, NoProbe};
use super::wake::{wake_targets, AgentWaker, NoWaker, WakeTarget};
use super::CoordinatorConfig;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Nothing to do (healthy, paused, no record).
    Idle,
    /// At least one step was recorded this run; more may follow.
    Progressed,
    /// Waiting on something (fencing pending, a promotion, observations); come back later.
    Waiting,
    /// Something should happen and cannot (no eligible candidate, fencing not confirmed).
    Blocked,
    /// Another coordinator holds the lock, or ours lapsed.
    NotInCharge,
    /// The store failed or holds a malformed record; nothing was decided.
    Error,
}

/// What one `run_once` saw and did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunReport {
    pub cluster: String,
    pub outcome: Outcome,
    /// Why the run ended where it did (the last decision's reason).
    pub reason: String,
    /// Each step carried out, in order, with its reason.
    pub steps: Vec<String>,
    /// The cluster record as last read or written.
    pub record: Option<ClusterRecord>,
}

impl RunReport {
    /// No transition or request is in flight and the last decision needed nothing.
    pub fn settled(&self) -> bool {
        self.outcome == Outcome::Idle && self.record.as_ref().is_none_or(|r| r.transition.is_none() && r.request.is_none())
    }
}

struct ClusterState<S, C> {
    lock: LeaseClient<S, C>,
    held: Option<HeldLease>,
    watch: Watch,
    /// Member health at the last run this coordinator acted in (the baseline for events).
    health: Option<HealthView>,
}

/// One coordinator process's view of the clusters it coordinates.
///
/// `owner` names this coordinator in the coordinator lock (unique per process: a restarted
/// coordinator is a new owner and waits out the old one's lock unless it was released).
pub struct Coordinator<S: Store + Clone, F: Fencer, C: Clock + Clone> {
    store: S,
    fencer: F,
    clock: C,
    config: CoordinatorConfig,
    owner: String,
    clusters: BTreeMap<String, ClusterState<S, C>>,
    events: Option<Arc<dyn EventEmitter>>,
    waker: Arc<dyn AgentWaker>,
    probe: Arc<dyn AgentProbe>,
}

enum StepResult {
    /// Recorded; evaluate again.
    Progressed(String),
    /// Nothing more this run.
    Stop(Outcome, String),
}

impl<S: Store + Clone, F: Fencer, C: Clock + Clone> Coordinator<S, F, C> {
    pub fn new(store: S, fencer: F, clock: C, config: CoordinatorConfig, owner: impl Into<String>) -> Self {
        Coordinator {
            store,
            fencer,
            clock,
            config,
            owner: owner.into(),
            clusters: BTreeMap::new(),
            events: None,
            waker: Arc::new(NoWaker),
            probe: Arc::new(NoProbe),
        }
    }

    /// How this coordinator tells whether the primary's agent process is gone (see
    /// [`super::probe`]). Default: [`NoProbe`], no evidence, failovers wait for the lease.
    pub fn with_probe(mut self, probe: Arc<dyn AgentProbe>) -> Self {
        self.probe = probe;
        self
    }

    /// Who wakes the agents right after the `Designated` record (the candidate, then the
    /// others) and the `Promoted` record (every other member), see [`super::wake`]. Default:
    /// [`NoWaker`], the agents notice on their next loop.
    pub fn with_waker(mut self, waker: Arc<dyn AgentWaker>) -> Self {
        self.waker = waker;
        self
    }

    /// Where this coordinator's events go: the start and each step of a change of primary, and
    /// member health changes (up/down, lag over `maximum_lag_on_failover`, role) derived from
    /// successive views. Only the coordinator holding the lock emits, so a cluster with several
    /// hosted coordinators reports each change once.
    pub fn with_events(mut self, events: Arc<dyn EventEmitter>) -> Self {
        self.events = Some(events);
        self
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// One evaluation and at most `max_steps_per_run` recorded steps. Returns at the first wait.
    pub async fn run_once(&mut self, cluster: &str) -> RunReport {
        let mut report = RunReport {
            cluster: cluster.to_string(),
            outcome: Outcome::Idle,
            reason: String::new(),
            steps: vec![],
            record: None,
        };
        let mut lock = match self.ensure_lock(cluster).await {
            Ok(l) => l,
            Err(e) => {
                if let Some(state) = self.clusters.get_mut(cluster) {
                    state.watch.lost_sight();
                }
                report.outcome = Outcome::Error;
                report.reason = format!("coordinator lock: {e}");
                return report;
            }
        };
        for _ in 0..self.config.max_steps_per_run {
            let view = match self.store.read_view(cluster).await {
                Ok(v) => v,
                Err(e) => {
                    if let Some(state) = self.clusters.get_mut(cluster) {
                        state.watch.lost_sight();
                    }
                    report.outcome = Outcome::Error;
                    report.reason = format!("reading the cluster: {e}");
                    return report;
                }
            };
            report.record = view.cluster.clone();
            let now = self.clock.monotonic();
            let dynamic = view.cluster.as_ref().map(|c| c.config.clone()).unwrap_or_default();
            let stale_after = self.config.stale_after(&dynamic);
            let wall = self.clock.wall_ms();
            // Probed after the read, so a refusal seen at the `Fenced` step came after the
            // fence confirmed (what `BreakLease` relies on).
            let probe = match probe_target(&view, &self.config, &lock) {
                Some((member, url)) => Some((member, self.probe.probe(&url).await)),
                None => None,
            };
            let state = self.clusters.get_mut(cluster).expect("ensure_lock created it");
            let probed = probe.as_ref().map(|(m, r)| (m.as_str(), *r));
            let obs = state.watch.observe_with_probe(&view, now, stale_after, wall, lock.clone(), probed);
            if let (Some(events), LockStatus::Held, 0) = (&self.events, &lock, report.steps.len()) {
                let next = health_view(&view, &obs);
                if let Some(prev) = state.health.replace(next.clone()) {
                    let term = view.cluster.as_ref().map_or(0, |c| c.term);
                    let threshold = view.cluster.as_ref().map(|c| c.config.maximum_lag_on_failover);
                    for e in derive_events(cluster, term, &prev, &next, threshold, wall) {
                        events.emit(e.source("coordinator"));
                    }
                }
            }
            let held = state.held.clone();
            let decision = evaluate(&view, &obs, &self.config);
            tracing::debug!(cluster, verdict = ?decision.verdict, reason = %decision.reason, "coordinator decision");
            let action = match decision.verdict {
                Verdict::Act(action) => action,
                verdict => {
                    report.reason = decision.reason;
                    report.outcome = match (verdict, lock == LockStatus::Held) {
                        (_, false) => Outcome::NotInCharge,
                        (Verdict::Idle, _) if !report.steps.is_empty() => Outcome::Progressed,
                        (Verdict::Idle, _) => Outcome::Idle,
                        (Verdict::Wait, _) | (Verdict::Act(_), _) => Outcome::Waiting,
                        (Verdict::Blocked, _) => Outcome::Blocked,
                    };
                    return report;
                }
            };
            if let Action::BreakCoordinatorLock { lock: dead } = &action {
                match self.store.release_lease(cluster, LeaseName::Coordinator, dead).await {
                    Ok(()) => {
                        tracing::info!(cluster, owner = %dead.owner, reason = %decision.reason, "coordinator lock released");
                        report.steps.push(format!("released the coordinator lock of {}", dead.owner));
                    }
                    Err(e) => tracing::debug!(cluster, error = %e, "releasing a dead coordinator's lock"),
                }
                // Either way the lock changed or is free: take it if we can and evaluate again.
                lock = match self.ensure_lock(cluster).await {
                    Ok(l) => l,
                    Err(e) => {
                        report.outcome = Outcome::Error;
                        report.reason = format!("coordinator lock: {e}");
                        return report;
                    }
                };
                continue;
            }
            // Act only while the lock is ours by our own clock (checked before each write).
            let valid = held.as_ref().is_some_and(|h| h.is_valid(self.clock.monotonic(), self.config.lock_margin()));
            if !valid {
                report.outcome = Outcome::NotInCharge;
                report.reason = "the coordinator lock lapsed before acting; not acting".into();
                return report;
            }
            let event =
                self.events.as_ref().and_then(|_| step_event(cluster, &view, &action, &decision.reason, self.clock.wall_ms()));
            match self.execute(cluster, &view, action, &decision.reason).await {
                StepResult::Progressed(step) => {
                    tracing::info!(cluster, step = %step, "coordinator step");
                    if let (Some(events), Some(e)) = (&self.events, event) {
                        events.emit(e);
                    }
                    report.steps.push(step);
                }
                StepResult::Stop(outcome, reason) => {
                    if let Ok(Some(r)) = self.store.read_cluster(cluster).await {
                        report.record = Some(r);
                    }
                    report.outcome =
                        if outcome == Outcome::Waiting && !report.steps.is_empty() { Outcome::Progressed } else { outcome };
                    report.reason = reason;
                    return report;
                }
            }
        }
        report.outcome = Outcome::Progressed;
        report.reason = format!("took {} steps this run", report.steps.len());
        if let Ok(Some(r)) = self.store.read_cluster(cluster).await {
            report.record = Some(r);
        }
        report
    }

    /// Releases the coordinator lock of `cluster` if held (a runner ending its invocation), so
    /// the next coordinator may take over at once.
    pub async fn release(&mut self, cluster: &str) -> Result<(), StoreError> {
        if let Some(state) = self.clusters.get_mut(cluster) {
            if let Some(held) = state.held.take() {
                return state.lock.release(&held).await;
            }
        }
        Ok(())
    }

    /// Renews or acquires the coordinator lock.
    async fn ensure_lock(&mut self, cluster: &str) -> Result<LockStatus, StoreError> {
        let state = self.clusters.entry(cluster.to_string()).or_insert_with(|| ClusterState {
            lock: LeaseClient::new(
                self.store.clone(),
                self.clock.clone(),
                cluster,
                LeaseName::Coordinator,
                self.owner.clone(),
                self.config.lock_lease_ms,
            ),
            held: None,
            watch: Watch::new(),
            health: None,
        });
        if let Some(held) = state.held.take() {
            let now = self.clock.monotonic();
            if held.is_valid(now, self.config.lock_margin()) {
                // Renewed once half of the lock's lease has passed, not on every run: a hosted
                // coordinator runs every second (every 100 ms during a transition), and a
                // renewal per run was 60 store writes a minute for nothing. Half leaves the
                // runs until the margin (a fifth) several tries. Acting still needs the lock
                // valid by our clock (checked before each write).
                if now.saturating_sub(held.written_from) < std::time::Duration::from_millis(self.config.lock_lease_ms / 2) {
                    state.held = Some(held);
                    return Ok(LockStatus::Held);
                }
                match state.lock.renew(&held).await {
                    Ok(h) => {
                        state.held = Some(h);
                        return Ok(LockStatus::Held);
                    }
                    Err(e) if e.is_conflict() => tracing::warn!(cluster, error = %e, "coordinator lock lost"),
                    Err(e) => {
                        // Unknown whether the renewal happened: keep counting on the old write only.
                        state.held = Some(held);
                        return Err(e);
                    }
                }
            }
        }
        match state.lock.try_acquire(None).await? {
            AcquireOutcome::Acquired(h) => {
                tracing::info!(cluster, owner = %self.owner, term = h.lease.term, "coordinator lock acquired");
                state.held = Some(h);
                Ok(LockStatus::Held)
            }
            AcquireOutcome::HeldByOther { owner, .. } => Ok(LockStatus::Other { owner }),
        }
    }

    async fn write(&self, cluster: &str, view: &ClusterView, next: ClusterRecord, step: String) -> StepResult {
        let expected = view.cluster.as_ref().map(|c| c.version);
        match self.store.write_cluster(cluster, expected, &next).await {
            Ok(_) => StepResult::Progressed(step),
            Err(e) if e.is_conflict() => {
                StepResult::Stop(Outcome::Waiting, format!("lost the race writing the cluster record ({e}); re-reading next run"))
            }
            Err(e) => StepResult::Stop(Outcome::Error, format!("writing the cluster record: {e}")),
        }
    }

    async fn execute(&self, cluster: &str, view: &ClusterView, action: Action, reason: &str) -> StepResult {
        let record = view.cluster.as_ref().expect("actions are only decided from a record");
        let now_ms = self.clock.wall_ms();
        match action {
            Action::Fence { ref member, term, kind, reason: ref why, ref skip, ref pending } => {
                let status = view.members.get(member);
                let mut target = FenceTarget::new(cluster, member, status, term, kind, why);
                target.skip = skip.clone();
                let answer = self.fencer.fence(&target, pending.as_ref()).await;
                match fencing::handle_answer(record, member, status, answer, now_ms) {
                    FenceAnswer::Fenced { record: next, step } => {
                        let woken = wake_targets(cluster, view, &action, &next);
                        self.write_and_wake(cluster, view, next, step, &woken).await
                    }
                    FenceAnswer::Pending { record: next, reason } => {
                        if let Some(next) = next {
                            if let StepResult::Stop(o, r) = self.write(cluster, view, next, String::new()).await {
                                return StepResult::Stop(o, r);
                            }
                        }
                        StepResult::Stop(Outcome::Waiting, reason)
                    }
                    FenceAnswer::NotConfirmed { record: next, reason } => {
                        if let Some(next) = next {
                            // Best effort: a lost write only means the next run resumes the handle.
                            let _ = self.write(cluster, view, next, String::new()).await;
                        }
                        StepResult::Stop(Outcome::Blocked, reason)
                    }
                }
            }
            Action::BreakLease { lease } => match self.store.release_lease(cluster, LeaseName::Leader, &lease).await {
                Ok(()) => StepResult::Progressed(format!("released {}'s leader lease (term {})", lease.owner, lease.term)),
                Err(e) if e.is_conflict() => StepResult::Stop(
                    Outcome::Waiting,
                    format!("the leader lease changed before it was released ({e}); re-reading"),
                ),
                Err(e) => StepResult::Stop(Outcome::Error, format!("releasing the old primary's leader lease: {e}")),
            },
            Action::Finish(entry) => {
                match self.store.append_history(cluster, &entry).await {
                    Ok(()) => {}
                    // A resumed coordinator finds the entry written by its predecessor.
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return StepResult::Stop(Outcome::Error, format!("writing history: {e}")),
                }
                let next = apply(record, &Action::Finish(entry), now_ms).expect("record-only action");
                self.write(cluster, view, next, reason.to_string()).await
            }
            other => {
                let next = apply(record, &other, now_ms).expect("record-only action");
                let woken = wake_targets(cluster, view, &other, &next);
                self.write_and_wake(cluster, view, next, reason.to_string(), &woken).await
            }
        }
    }

    /// Writes `next` and, once it is written (a woken agent must find what it is woken for),
    /// wakes `woken`.
    async fn write_and_wake(
        &self,
        cluster: &str,
        view: &ClusterView,
        next: ClusterRecord,
        step: String,
        woken: &[WakeTarget],
    ) -> StepResult {
        let result = self.write(cluster, view, next, step).await;
        if matches!(result, StepResult::Progressed(_)) {
            for target in woken {
                tracing::debug!(cluster, member = %target.member, reason = %target.reason, "waking the agent");
                self.waker.wake(target);
            }
        }
        result
    }
}

/// Whose agent to probe this run, and at which API URL: the agent hosting the coordinator
/// that holds the lock when it is not ours (evidence to take the lock over); else the
/// designated primary while no transition is under way (evidence to start one), the old primary
/// at the `Fenced` step (evidence to release its lease). Nobody when early failover is off or
/// the member publishes no API URL.
fn probe_target(view: &ClusterView, config: &CoordinatorConfig, lock: &LockStatus) -> Option<(String, String)> {
    config.agent_down_after()?;
    let record = view.cluster.as_ref()?;
    let member = match &record.transition {
        // Not in charge: the agent hosting the lock holder (is it gone?).
        _ if lock != &LockStatus::Held => {
            let LockStatus::Other { owner } = lock else { return None };
            hosting_member(owner, view.members.keys().map(String::as_str))?
        }
        None => record.primary.as_deref()?,
        Some(t) if t.step == TransitionStep::Fenced => t.old_primary.as_deref()?,
        Some(_) => return None,
    };
    let url = view.members.get(member).map(|m| m.api_url.clone()).filter(|u| !u.is_empty())?;
    Some((member.to_string(), url))
}

/// Member health as this coordinator judges it: up while Postgres runs and the heartbeat is not
/// stale (a member watched too briefly to tell counts by what its heartbeat says).
fn health_view(view: &ClusterView, obs: &Observations) -> HealthView {
    view.members
        .iter()
        .map(|(name, m)| {
            let stale = matches!(obs.member(name).liveness, Liveness::Stale { .. });
            (name.clone(), MemberHealth { up: m.pg_running && !stale, role: m.role, lag_bytes: m.lag_bytes })
        })
        .collect()
}

/// The event a step reports once it is recorded (`None` for bookkeeping steps).
fn step_event(cluster: &str, view: &ClusterView, action: &Action, reason: &str, now_ms: u64) -> Option<Event> {
    let t = view.cluster.as_ref().and_then(|c| c.transition.as_ref());
    let old = |t: &crate::model::Transition| t.old_primary.clone().unwrap_or_else(|| "-".into());
    let e = match action {
        Action::Begin { transition: t, .. } => {
            let kind = match t.kind {
                TransitionKind::Failover => EventKind::FailoverStarted,
                TransitionKind::Switchover => EventKind::SwitchoverStarted,
            };
            Event::new(kind, cluster, now_ms, format!("{} -> {}: {}", old(t), t.candidate, t.reason))
                .member(t.candidate.clone())
                .term(t.term)
        }
        Action::Fence { member, term, .. } => {
            Event::new(EventKind::Fenced, cluster, now_ms, format!("{member} fenced: {reason}"))
                .member(member.clone())
                .term(*term)
        }
        Action::MarkFenced { by, .. } => {
            let t = t?;
            Event::new(EventKind::Fenced, cluster, now_ms, format!("{} fenced: {by}", old(t))).member(old(t)).term(t.term)
        }
        Action::MarkPromoted { lsn } => {
            let t = t?;
            let at = lsn.map(|l| format!(" at {l}")).unwrap_or_default();
            Event::new(EventKind::Promoted, cluster, now_ms, format!("{} is primary{at}", t.candidate))
                .member(t.candidate.clone())
                .term(t.term)
        }
        Action::Finish(h) => Event::new(
            EventKind::Finished,
            cluster,
            now_ms,
            format!(
                "{} {} -> {} done in {} ms: {}",
                h.kind,
                h.old_primary.as_deref().unwrap_or("-"),
                h.new_primary,
                h.finished_ms.saturating_sub(h.started_ms),
                h.reason
            ),
        )
        .member(h.new_primary.clone())
        .term(h.term),
        _ => return None,
    };
    Some(e.source("coordinator"))
}
