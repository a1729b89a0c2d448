//! The coordinator's decisions: a pure function of one consistent snapshot ([`ClusterView`]),
//! this coordinator's own observations ([`Observations`]) and its configuration. It returns the
//! next step (at most one) and the reason, and never performs I/O; the driver carries the actions out.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::lease::LeaseState;
use crate::model::{
    ClusterRecord, ClusterView, HistoryEntry, LeaderLease, ManualRequest, MemberStatus, RequestAction, RequestOutcome, Role,
    Transition, TransitionKind, TransitionStep,
};

pub use super::action::{apply, step_name, Action};
pub use super::eligibility::Eligibility;
use super::fencing;
use super::observe::{Liveness, LockStatus, Observations};
use super::probe::hosting_member;
use super::{CoordinatorConfig, FencingPolicy};

/// What to do next: nothing, wait, blocked, or exactly one step. One evaluation never decides
/// more than one step; the driver evaluates again after carrying it out.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per evaluation, moved straight to the driver: boxing buys nothing
pub enum Verdict {
    /// Nothing to do (healthy, paused, no record, another coordinator in charge).
    Idle,
    /// Carry out this step.
    Act(Action),
    /// Something is under way or not yet observable; come back on the next run.
    Wait,
    /// Something should happen but cannot (e.g. no eligible candidate); the reason says why.
    Blocked,
}

/// One evaluation's verdict and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: String,
}

impl Decision {
    fn idle(reason: impl Into<String>) -> Self {
        Decision { verdict: Verdict::Idle, reason: reason.into() }
    }
    fn wait(reason: impl Into<String>) -> Self {
        Decision { verdict: Verdict::Wait, reason: reason.into() }
    }
    fn blocked(reason: impl Into<String>) -> Self {
        Decision { verdict: Verdict::Blocked, reason: reason.into() }
    }
    fn act(action: Action, reason: impl Into<String>) -> Self {
        Decision { verdict: Verdict::Act(action), reason: reason.into() }
    }

    /// The step to carry out, if any.
    pub fn action(&self) -> Option<&Action> {
        match &self.verdict {
            Verdict::Act(a) => Some(a),
            _ => None,
        }
    }
}

/// Decides what to do next for one cluster.
pub fn evaluate(view: &ClusterView, obs: &Observations, config: &CoordinatorConfig) -> Decision {
    let Some(record) = view.cluster.as_ref() else {
        return Decision::idle("no cluster record: nothing to coordinate until the cluster is bootstrapped");
    };
    if let LockStatus::Other { owner } = &obs.lock {
        if let Some(lock) = view.coordinator.as_ref().filter(|l| l.owner == *owner && !l.is_free()) {
            let gone = config.agent_down_after().and_then(|after| {
                let member = hosting_member(owner, view.members.keys().map(String::as_str))?;
                obs.agent.as_ref().filter(|a| a.refused_for_at_least(member, after))
            });
            if let Some(a) = gone {
                return Decision::act(
                    Action::BreakCoordinatorLock { lock: lock.clone() },
                    format!(
                        "coordinator {owner} is hosted by {}'s agent, which refused {} connections in a row over {} ms: taking over its lock",
                        a.member,
                        a.refused_probes,
                        a.refused_for.as_millis()
                    ),
                );
            }
        }
        return Decision::idle(format!("coordinator {owner} holds the coordinator lock; not acting"));
    }
    if let Some(t) = &record.transition {
        // Pause and resume never wait for a transition; other requests do.
        if let Some(req) = &record.request {
            if matches!(req.action, RequestAction::Pause | RequestAction::Resume) {
                return answer_pause(req);
            }
        }
        // A transition in progress is finished even when paused: stopping halfway would leave
        // the cluster without a primary.
        return continue_transition(view, record, t, obs, config);
    }
    if let Some(req) = &record.request {
        return handle_request(view, record, req, obs, config);
    }
    if record.paused {
        return Decision::idle("cluster is paused: no automatic failover");
    }
    check_primary(view, record, obs, config)
}

fn answer_pause(req: &ManualRequest) -> Decision {
    let pause = req.action == RequestAction::Pause;
    let reason = if pause { "paused: no automatic failover until resumed" } else { "resumed: automatic failover enabled" };
    Decision::act(
        Action::Answer {
            outcome: RequestOutcome { id: req.id.clone(), action: req.action, accepted: true, reason: reason.into() },
            paused: Some(pause),
        },
        reason,
    )
}

fn refuse(req: &ManualRequest, reason: String) -> Decision {
    Decision::act(
        Action::Answer {
            outcome: RequestOutcome { id: req.id.clone(), action: req.action, accepted: false, reason: reason.clone() },
            paused: None,
        },
        format!("refused {} request {}: {reason}", req.action, req.id),
    )
}

fn handle_request(
    view: &ClusterView,
    record: &ClusterRecord,
    req: &ManualRequest,
    obs: &Observations,
    config: &CoordinatorConfig,
) -> Decision {
    let kind = match req.action {
        RequestAction::Pause | RequestAction::Resume => return answer_pause(req),
        RequestAction::Failover => TransitionKind::Failover,
        RequestAction::Switchover => TransitionKind::Switchover,
    };
    // A fresh coordinator has not yet seen heartbeats change: judging eligibility now would
    // refuse good candidates. The wait is bounded by the stale threshold.
    let unknown: Vec<&String> = view.members.keys().filter(|n| obs.member(n).liveness == Liveness::Unknown).collect();
    if !unknown.is_empty() {
        return Decision::wait(format!(
            "watching heartbeats of {} before acting on request {}",
            unknown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
            req.id
        ));
    }
    if record.paused {
        // Agents make no role changes while paused, so a designated candidate would never promote.
        return refuse(req, "the cluster is paused: resume it first (agents make no role changes while paused)".into());
    }
    let primary = record.primary.clone();
    if kind == TransitionKind::Switchover {
        let Some(p) = primary.as_deref() else {
            return refuse(req, "switchover needs a running primary and none is designated; use failover".into());
        };
        if let Err(why) = primary_healthy(view, record, p, obs) {
            return refuse(req, format!("switchover needs a healthy primary: {why}; use failover"));
        }
    }
    let exclude: Vec<&str> = primary.iter().map(String::as_str).collect();
    let candidate = match &req.candidate {
        Some(c) => {
            if Some(c) == primary.as_ref() {
                return refuse(req, format!("{c} is already the primary"));
            }
            let Some(status) = view.members.get(c) else {
                return refuse(req, format!("{c} is not a member of the cluster (no heartbeat record)"));
            };
            let ctx = Eligibility::new(view, record, obs, config, record.term, &exclude);
            if let Err(why) = ctx.check(status) {
                if !req.force {
                    return refuse(req, format!("candidate {c} is not eligible: {why} (use force to override)"));
                }
            }
            c.clone()
        }
        None => match Eligibility::new(view, record, obs, config, record.term, &exclude).best() {
            Ok(c) => c,
            Err(why) => return refuse(req, format!("no eligible candidate: {why}")),
        },
    };
    let reason = format!("manual {} requested ({}){}", kind, req.id, if req.force { ", forced" } else { "" });
    let transition =
        match new_transition(view, record, kind, primary, candidate.clone(), reason.clone(), req.force, obs.now_wall_ms) {
            Ok(t) => t,
            Err(e) => return refuse(req, e),
        };
    let answer = RequestOutcome {
        id: req.id.clone(),
        action: req.action,
        accepted: true,
        reason: format!(
            "started: {} -> {candidate} in term {}",
            transition.old_primary.as_deref().unwrap_or("(none)"),
            transition.term
        ),
    };
    Decision::act(Action::Begin { transition, answer: Some(answer) }, format!("{reason}: candidate {candidate}"))
}

/// Whether the designated primary is up: holding the lease (by our observation) with a fresh,
/// running, read-write heartbeat.
fn primary_healthy(view: &ClusterView, record: &ClusterRecord, p: &str, obs: &Observations) -> Result<(), String> {
    match &obs.leader {
        LeaseState::Held { lease, .. } if lease.owner == p => {}
        LeaseState::Held { lease, .. } => return Err(format!("the leader lease is held by {}, not {p}", lease.owner)),
        LeaseState::Expired(_) => return Err(format!("{p}'s leader lease expired")),
        LeaseState::Free(_) | LeaseState::Absent => return Err(format!("{p} holds no leader lease")),
    }
    let Some(status) = view.members.get(p) else { return Err(format!("{p} has no heartbeat record")) };
    if !obs.member(p).is_fresh() {
        return Err(format!("{p}'s heartbeat is not fresh"));
    }
    if !status.pg_running || status.role != Role::Primary {
        return Err(format!("{p} reports Postgres {}", if status.pg_running { "not read-write" } else { "down" }));
    }
    let _ = record;
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one call per field of a new transition, all needed
fn new_transition(
    view: &ClusterView,
    record: &ClusterRecord,
    kind: TransitionKind,
    old_primary: Option<String>,
    candidate: String,
    reason: String,
    forced: bool,
    now_ms: u64,
) -> Result<Transition, String> {
    // Above every term seen anywhere, so the candidate's lease acquisition always increases it.
    let lease_term = view.leader.as_ref().map_or(0, |l| l.term);
    let seen = record.term.max(lease_term);
    // Terms come from the store: a corrupt one must stop this cluster, not wrap around (S6).
    let term = seen.checked_add(1).ok_or_else(|| format!("no term after {seen}: the stored term is corrupt"))?;
    Ok(Transition {
        kind,
        step: TransitionStep::TermBumped,
        term,
        from_term: record.term,
        old_primary,
        candidate,
        reason,
        started_ms: now_ms,
        step_times_ms: BTreeMap::from([(step_name(TransitionStep::TermBumped).to_string(), now_ms)]),
        forced,
        fence: None,
        fenced_by: None,
        final_lsn: None,
        promote_lsn: None,
    })
}

/// No transition, not paused: is the designated primary alive?
fn check_primary(view: &ClusterView, record: &ClusterRecord, obs: &Observations, config: &CoordinatorConfig) -> Decision {
    let Some(p) = record.primary.clone() else {
        let holder = obs.leader.lease().filter(|l| !l.is_free()).map(|l| l.owner.clone());
        return start_failover(view, record, obs, config, holder, "no primary is designated".into());
    };
    let lease_ms = record.config.lease_ms;
    let why_down = match &obs.leader {
        LeaseState::Expired(lease) => Some(format!(
            "leader lease of {} (term {}) observed unchanged for at least {} ms",
            lease.owner, lease.term, lease.lease_ms
        )),
        LeaseState::Held { lease, unchanged_for } => {
            // A replica's own observation of the same rvn is evidence too (the rvn never
            // repeats), but only where fencing will confirm before anything is promoted.
            let sighting = view.members.values().find_map(|m| {
                m.leader_seen
                    .as_ref()
                    .filter(|s| s.rvn == lease.rvn && s.unchanged_ms >= lease.lease_ms)
                    .map(|s| (m.name.clone(), s.unchanged_ms))
            });
            if let Some((who, ms)) = sighting.clone().filter(|_| config.fencing == FencingPolicy::Required) {
                Some(format!("{who} observed the leader lease of {} (term {}) unchanged for {ms} ms", lease.owner, lease.term))
            } else if let Some((who, ms)) = sighting {
                // Without fencing only this coordinator's own observation may end the lease:
                // keep watching (a run that called this idle would end before seeing it lapse,
                // and the next run, too far apart, would start the count over).
                return Decision::wait(format!(
                    "{who} observed the leader lease of {} (term {}) unchanged for {ms} ms; with fencing off this coordinator watches it lapse itself ({} of {lease_ms} ms)",
                    lease.owner,
                    lease.term,
                    unchanged_for.as_millis()
                ));
            } else if lease.owner != p {
                return Decision::wait(format!(
                    "leader lease held by {} (term {}) but {p} is the designated primary; waiting for it to lapse ({} of {lease_ms} ms)",
                    lease.owner,
                    lease.term,
                    unchanged_for.as_millis()
                ));
            } else {
                let o = obs.member(&p);
                let down_for = o.pg_down_for.filter(|d| o.is_fresh() && *d >= config.pg_down_after(&record.config));
                // This run's refused probe of the primary's agent, with early failover on.
                let refused = config.agent_down_after().zip(obs.agent.as_ref()).filter(|(_, a)| a.refused_now(&p));
                match (down_for, refused) {
                    (Some(d), _) => Some(format!("{p} reports Postgres down for {} ms", d.as_millis())),
                    // Early failover on evidence: the fence must still confirm before anyone is
                    // promoted (S3); this only starts the transition before the lease runs out.
                    (None, Some((after, a))) if a.refused_for_at_least(&p, after) => Some(format!(
                        "{p}'s agent refused {} connections in a row over {} ms (its process is gone)",
                        a.refused_probes,
                        a.refused_for.as_millis()
                    )),
                    // Keep the runs coming (a hosted coordinator polls, a Lambda stays) until
                    // the refusals span `after` or stop.
                    (None, Some((after, a))) => {
                        return Decision::wait(format!(
                            "{p}'s agent refused {} connection(s) over {} ms; failing over once that lasts {} ms",
                            a.refused_probes,
                            a.refused_for.as_millis(),
                            after.as_millis()
                        ))
                    }
                    (None, None) => return Decision::idle(format!("primary {p} healthy (term {}, lease held)", record.term)),
                }
            }
        }
        LeaseState::Free(_) | LeaseState::Absent => {
            let o = obs.member(&p);
            let status = view.members.get(&p);
            match (o.liveness, status) {
                (Liveness::Unknown, _) => {
                    return Decision::wait(format!("{p} holds no leader lease; watching its heartbeat before deciding"));
                }
                (Liveness::Fresh, Some(s)) if s.pg_running && s.role == Role::Primary => {
                    return Decision::wait(format!("{p} is read-write but holds no leader lease yet (acquiring?)"));
                }
                (Liveness::Fresh, Some(s)) if s.pg_running && s.role == Role::Unknown => {
                    return Decision::wait(format!("{p} holds no leader lease and its role is not known yet"));
                }
                (Liveness::Fresh, Some(s)) => Some(format!(
                    "{p} holds no leader lease and reports {}",
                    if s.pg_running { "itself in recovery" } else { "Postgres down" }
                )),
                _ => Some(format!("{p} holds no leader lease and its heartbeat is stale")),
            }
        }
    };
    let why = why_down.expect("every branch without a reason returned");
    start_failover(view, record, obs, config, Some(p), why)
}

fn start_failover(
    view: &ClusterView,
    record: &ClusterRecord,
    obs: &Observations,
    config: &CoordinatorConfig,
    old: Option<String>,
    why: String,
) -> Decision {
    let exclude: Vec<&str> = old.iter().map(String::as_str).collect();
    let ctx = Eligibility::new(view, record, obs, config, record.term, &exclude);
    let unknown = ctx.unknown_members();
    if !unknown.is_empty() {
        return Decision::wait(format!("{why}; watching heartbeats of {} before choosing a candidate", unknown.join(", ")));
    }
    match ctx.best() {
        Ok(candidate) => {
            let reason = format!("failover: {why}");
            match new_transition(
                view,
                record,
                TransitionKind::Failover,
                old,
                candidate.clone(),
                reason.clone(),
                false,
                obs.now_wall_ms,
            ) {
                Ok(t) => Decision::act(Action::Begin { transition: t, answer: None }, format!("{reason}; candidate {candidate}")),
                Err(e) => Decision::blocked(format!("{reason}; no promotion: {e}")),
            }
        }
        Err(none) => Decision::blocked(format!("{why}; no promotion: no eligible candidate ({none})")),
    }
}

fn continue_transition(
    view: &ClusterView,
    record: &ClusterRecord,
    t: &Transition,
    obs: &Observations,
    config: &CoordinatorConfig,
) -> Decision {
    if let Some(req) = &record.request {
        // Leave the request pending? No: answer it, so the operator is not left guessing.
        return refuse(req, format!("a {} to {} in term {} is in progress ({})", t.kind, t.candidate, t.term, step_name(t.step)));
    }
    let age = obs.step_age.unwrap_or_default();
    match t.step {
        TransitionStep::TermBumped => fence_step(view, record, t, obs, config, age),
        TransitionStep::Fenced => designate_step(view, record, t, obs, config, age),
        TransitionStep::Designated => promoted_step(view, record, t, obs, config, age),
        TransitionStep::Promoted => {
            let others: Vec<String> = view.members.keys().filter(|n| **n != t.candidate).cloned().collect();
            Decision::act(
                Action::MarkFollowed { members: others.clone() },
                format!("{} is primary in term {}; members told to follow: {}", t.candidate, t.term, others.join(", ")),
            )
        }
        TransitionStep::Followed => {
            let entry = history_entry(t, obs.now_wall_ms);
            Decision::act(Action::Finish(entry), format!("{} to {} in term {} complete", t.kind, t.candidate, t.term))
        }
    }
}

fn fence_step(
    view: &ClusterView,
    record: &ClusterRecord,
    t: &Transition,
    obs: &Observations,
    config: &CoordinatorConfig,
    age: Duration,
) -> Decision {
    let Some(old) = &t.old_primary else {
        return Decision::act(
            Action::MarkFenced { by: "no old primary to fence".into(), final_lsn: None },
            "no old primary: nothing to fence",
        );
    };
    if config.fencing == FencingPolicy::Off {
        // S3 without fencing: only this coordinator's own observation of the lease counts.
        let old_status = view.members.get(old);
        let final_lsn = |s: Option<&MemberStatus>| s.and_then(|s| s.wal_position());
        return match &obs.leader {
            LeaseState::Expired(l) => Decision::act(
                Action::MarkFenced {
                    by: format!("fencing off: lease of {} (term {}) observed unchanged for {} ms", l.owner, l.term, l.lease_ms),
                    final_lsn: if t.kind == TransitionKind::Switchover { final_lsn(old_status) } else { None },
                },
                format!("{old}'s lease expired by observation (fencing off)"),
            ),
            LeaseState::Free(_) | LeaseState::Absent => {
                if t.kind == TransitionKind::Switchover {
                    // Zero data loss needs the demoted primary's final position.
                    match old_status {
                        Some(s) if s.role != Role::Primary && obs.member(old).is_fresh() && s.term >= t.term => {
                            return Decision::act(
                                Action::MarkFenced {
                                    by: format!("fencing off: {old} released its lease and left read-write"),
                                    final_lsn: s.wal_position(),
                                },
                                format!("{old} demoted itself"),
                            );
                        }
                        _ => return Decision::wait(format!("switchover: waiting for {old} to demote itself (fencing off)")),
                    }
                }
                Decision::act(
                    Action::MarkFenced { by: format!("fencing off: {old} holds no leader lease"), final_lsn: None },
                    format!("{old} released the leader lease"),
                )
            }
            LeaseState::Held { lease, unchanged_for } => Decision::wait(format!(
                "fencing off: waiting for {}'s lease to be seen unchanged for {} ms ({} ms so far)",
                lease.owner,
                lease.lease_ms,
                unchanged_for.as_millis()
            )),
        };
    }
    let _ = record;
    let (action, reason) = fencing::next_call(old, t, age, config.fence_pending_timeout());
    Decision::act(action, reason)
}

/// S4: the positions a candidate is judged by must include everything the old primary wrote
/// before it was fenced. A running replica whose heartbeat this coordinator has not seen change
/// since the `Fenced` step may still report a position from before the old primary's last
/// writes (found by the simulation, seed 3470: a replica 1 MiB ahead of the candidate had not
/// published yet). So wait for each one's next heartbeat: the coordinator wakes every member
/// at the fence and a woken agent publishes at once; otherwise it comes within a heartbeat
/// period. Bounded by the staleness threshold, after which a silent member is stale anyway.
fn unreported_since_fence(
    view: &ClusterView,
    obs: &Observations,
    config: &CoordinatorConfig,
    record: &ClusterRecord,
    exclude: &[&str],
    age: Duration,
) -> Option<Decision> {
    if age >= config.stale_after(&record.config) {
        return None;
    }
    let waiting: Vec<&str> = view
        .members
        .values()
        .filter(|m| m.pg_running && m.role == Role::Replica && !exclude.contains(&m.name.as_str()))
        .filter(|m| {
            let o = obs.member(&m.name);
            o.is_fresh() && o.changed_ago.is_none_or(|ago| ago >= age)
        })
        .map(|m| m.name.as_str())
        .collect();
    (!waiting.is_empty()).then(|| {
        Decision::wait(format!(
            "waiting for the first heartbeat after the fence from {} (S4: final positions)",
            waiting.join(", ")
        ))
    })
}

fn designate_step(
    view: &ClusterView,
    record: &ClusterRecord,
    t: &Transition,
    obs: &Observations,
    config: &CoordinatorConfig,
    age: Duration,
) -> Decision {
    let as_failover = |why: String| {
        Decision::act(
            Action::ContinueAsFailover { why: why.clone() },
            format!("switchover to {} continues as a failover: {why}", t.candidate),
        )
    };
    let mut exclude: Vec<&str> = t.old_primary.iter().map(String::as_str).collect();
    if !t.forced {
        if let Some(wait) = unreported_since_fence(view, obs, config, record, &exclude, age) {
            return wait;
        }
    }
    let ctx = Eligibility::new(view, record, obs, config, t.from_term, &exclude);
    if !t.forced {
        let check = match view.members.get(&t.candidate) {
            Some(s) => ctx.check(s),
            None => Err("its heartbeat record is gone".into()),
        };
        if let Err(why) = check {
            if obs.member(&t.candidate).liveness == Liveness::Unknown {
                return Decision::wait(format!("watching {}'s heartbeat before designating it", t.candidate));
            }
            if t.kind == TransitionKind::Switchover {
                // Often brief (a Postgres restart): wait as long as a promotion may take, then
                // go on under failover rules rather than stay without a primary.
                if age < config.promote_timeout() {
                    return Decision::wait(format!("switchover: candidate {} is not eligible yet ({why})", t.candidate));
                }
                return as_failover(format!("candidate {} is not eligible ({why}) for {} ms", t.candidate, age.as_millis()));
            }
            exclude.push(&t.candidate);
            let ctx = Eligibility::new(view, record, obs, config, t.from_term, &exclude);
            return match ctx.best() {
                Ok(other) if t.kind == TransitionKind::Failover => Decision::act(
                    Action::ChangeCandidate { candidate: other.clone(), why: why.clone() },
                    format!("candidate {} no longer eligible ({why}); choosing {other}", t.candidate),
                ),
                _ => Decision::blocked(format!(
                    "candidate {} is not eligible ({why}) and no other candidate qualifies",
                    t.candidate
                )),
            };
        }
    }
    if t.kind == TransitionKind::Switchover {
        let Some(target) = t.final_lsn else {
            return as_failover(format!("the final LSN of {} is unknown", t.old_primary.as_deref().unwrap_or("?")));
        };
        let replayed = view.members.get(&t.candidate).and_then(|s| s.replay_lsn);
        let received = view.members.get(&t.candidate).and_then(|s| s.receive_lsn);
        // Everything the old primary wrote, and everything the candidate received of it.
        if replayed.is_none_or(|r| r < target || received.is_some_and(|rc| r < rc)) {
            // WAL the candidate has not received by now will never come: the old primary is
            // stopped. Past the promote timeout, give up on losslessness rather than on a primary.
            if age >= config.promote_timeout() && received.is_none_or(|rc| rc < target) {
                return as_failover(format!(
                    "{} did not receive up to {}'s final LSN {target} within {} ms",
                    t.candidate,
                    t.old_primary.as_deref().unwrap_or("?"),
                    age.as_millis()
                ));
            }
            return Decision::wait(format!(
                "switchover: waiting for {} to replay up to {target} (at {})",
                t.candidate,
                replayed.map_or("unknown".to_string(), |l| l.to_string())
            ));
        }
    }
    if let Some(lease) = breakable_lease(t, obs, config) {
        return Decision::act(
            Action::BreakLease { lease: lease.clone() },
            format!(
                "{} is fenced ({}) and its agent refuses connections: releasing its lease (term {}) so {} need not wait for it to run out",
                lease.owner,
                t.fenced_by.as_deref().unwrap_or("confirmed"),
                lease.term,
                t.candidate
            ),
        );
    }
    Decision::act(Action::Designate, format!("designate {} primary for term {}", t.candidate, t.term))
}

/// The old primary's leader lease, when this coordinator may release it on the old primary's
/// behalf (docs/design.md section 4, "Early failover on evidence"): a fencer confirmed that
/// its Postgres stopped (this is the `Fenced` step, fencing required), and a probe made after
/// that confirmation (this run's, taken after reading the record at `Fenced`) found no agent
/// process to start it again. An agent started later reads the raised term first and will not
/// start Postgres as primary (S7); one that re-took this lease in between changed its `rvn`,
/// so the release, conditional on the `rvn` observed here, fails.
fn breakable_lease<'a>(t: &Transition, obs: &'a Observations, config: &CoordinatorConfig) -> Option<&'a LeaderLease> {
    let old = t.old_primary.as_deref()?;
    config.agent_down_after()?;
    let LeaseState::Held { lease, .. } = &obs.leader else { return None };
    let agent_gone = obs.agent.as_ref().is_some_and(|a| a.refused_now(old));
    (t.step == TransitionStep::Fenced && lease.owner == old && lease.term < t.term && agent_gone).then_some(lease)
}

fn promoted_step(
    view: &ClusterView,
    record: &ClusterRecord,
    t: &Transition,
    obs: &Observations,
    config: &CoordinatorConfig,
    age: Duration,
) -> Decision {
    let status = view.members.get(&t.candidate);
    let holds_lease = obs.leader.lease().is_some_and(|l| !l.is_free() && l.owner == t.candidate && l.term >= t.term);
    let read_write = status.is_some_and(|s| s.role == Role::Primary && s.pg_running && s.term >= t.term);
    if holds_lease && read_write {
        let lsn = status.and_then(|s| s.write_lsn.or(s.flush_lsn));
        return Decision::act(Action::MarkPromoted { lsn }, format!("{} reports read-write in term {}", t.candidate, t.term));
    }
    let o = obs.member(&t.candidate);
    let gone =
        matches!(o.liveness, Liveness::Stale { .. }) || o.pg_down_for.is_some_and(|d| d >= config.pg_down_after(&record.config));
    // A live candidate still in recovery that a later report left too far behind: its agent
    // will not promote (S4, `overtaken` in agent::decide), so it is replaced like a dead one.
    let exclude: Vec<&str> = t.old_primary.iter().map(String::as_str).collect();
    let overtaken = status
        .filter(|s| !t.forced && s.pg_running && s.role == Role::Replica)
        .and_then(|s| Eligibility::new(view, record, obs, config, t.from_term, &exclude).overtaken(s));
    if age >= config.promote_timeout() && (gone || overtaken.is_some()) {
        // It may have promoted unseen, so it becomes the old primary of a new transition
        // (fenced like any other).
        let why = match &overtaken {
            Some(lag) if !gone => format!("is {lag}"),
            _ => "looks down".to_string(),
        };
        return start_failover(
            view,
            record,
            obs,
            config,
            Some(t.candidate.clone()),
            format!("designated candidate {} did not report read-write within {} ms and {why}", t.candidate, age.as_millis()),
        );
    }
    Decision::wait(format!(
        "waiting for {} to report read-write in term {} ({}{})",
        t.candidate,
        t.term,
        if holds_lease { "holds the lease" } else { "lease not yet taken" },
        if read_write { ", read-write" } else { "" }
    ))
}

/// The history record of a finished transition.
pub fn history_entry(t: &Transition, now_ms: u64) -> HistoryEntry {
    HistoryEntry {
        term: t.term,
        kind: t.kind,
        old_primary: t.old_primary.clone(),
        new_primary: t.candidate.clone(),
        lsn: t.promote_lsn,
        reason: match &t.fenced_by {
            Some(f) => format!("{} (fenced: {f})", t.reason),
            None => t.reason.clone(),
        },
        started_ms: t.started_ms,
        finished_ms: now_ms,
        step_ms: t.step_times_ms.iter().map(|(k, v)| (k.clone(), v.saturating_sub(t.started_ms))).collect(),
        coordinator_version: Some(crate::VERSION.to_string()),
    }
}

#[cfg(test)]
mod message_tests {
    use super::*;

    #[test]
    fn messages_keep_member_names_as_written() {
        let req = ManualRequest {
            id: "R1".into(),
            action: RequestAction::Switchover,
            candidate: Some("Db-East".into()),
            force: false,
            requested_ms: 0,
        };
        let d = refuse(&req, "Db-East is not streaming".into());
        assert_eq!(d.reason, "refused switchover request R1: Db-East is not streaming");
        // Display is the stored name, so messages and records agree, and it pads in tables.
        assert_eq!(format!("{:<11}|", TransitionKind::Failover), "failover   |");
        for kind in [TransitionKind::Failover, TransitionKind::Switchover] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
        for action in [RequestAction::Failover, RequestAction::Switchover, RequestAction::Pause, RequestAction::Resume] {
            assert_eq!(serde_json::to_string(&action).unwrap(), format!("\"{action}\""));
        }
    }
}
