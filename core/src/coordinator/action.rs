//! The coordinator's vocabulary: the steps [`super::decide::evaluate`] chooses ([`Action`]) and
//! what each does to the cluster record ([`apply`]). Pure: no I/O.

use crate::fence::PendingHandle;
use crate::lsn::Lsn;
use crate::model::{
    ClusterRecord, FenceProgress, HistoryEntry, LeaderLease, RequestOutcome, Transition, TransitionKind, TransitionStep,
};

/// One step the driver must carry out. Everything except [`Action::Fence`] and
/// [`Action::BreakLease`] is a single compare-and-set of the cluster record (see [`apply`]);
/// `Fence` runs the fencer and, once it confirms, records [`TransitionStep::Fenced`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Bump the term, name nobody primary, record the transition (and answer the request that
    /// asked for it, if any).
    Begin { transition: Transition, answer: Option<RequestOutcome> },
    /// Answer a manual request without starting a transition (pause/resume, or a refusal).
    Answer { outcome: RequestOutcome, paused: Option<bool> },
    /// Fence (failover) or demote (switchover) the old primary. `pending`: the fencer's last
    /// "pending" answer in this transition, to be checked instead of starting again.
    Fence { member: String, term: u64, kind: TransitionKind, reason: String, skip: Vec<String>, pending: Option<PendingHandle> },
    /// Give up on a fencer that stayed pending too long; the chain moves on to the next.
    SkipFencer { fencer: String },
    /// Record the old primary as fenced without a fencer (fencing off and its lease observed
    /// expired or released, or no old primary).
    MarkFenced { by: String, final_lsn: Option<Lsn> },
    /// Replace the not yet designated candidate (the chosen one became ineligible).
    ChangeCandidate { candidate: String, why: String },
    /// A switchover that cannot finish losslessly (the old primary's final LSN is unknown, the
    /// candidate cannot replay up to it, or it became ineligible) continues under failover rules:
    /// the kind becomes failover and the reason says why, so history shows it was not lossless.
    /// The old primary is already fenced, so going on is the only way to a primary again (S5).
    ContinueAsFailover { why: String },
    /// Release the fenced old primary's leader lease on its behalf (a compare-and-set on its
    /// `rvn`, as its own release would be), so the candidate need not wait for it to run out.
    /// Only with fencing confirmed and the old primary's agent process gone (docs/design.md
    /// section 4, "Early failover on evidence"). Changes no record.
    BreakLease { lease: LeaderLease },
    /// Release the coordinator lock of a coordinator hosted in an agent process that is gone
    /// (its agent refuses connections), so this coordinator takes over at once instead of
    /// after the lock's lease. Taken without holding the lock; every step after it is still a
    /// compare-and-set of the cluster record, as between any two racing coordinators.
    BreakCoordinatorLock { lock: LeaderLease },
    /// Name the candidate primary of the transition's term: it may now take the lease and promote.
    Designate,
    /// The candidate reported read-write under the new term.
    MarkPromoted { lsn: Option<Lsn> },
    /// The other members are told (through the record) to follow the new primary.
    MarkFollowed { members: Vec<String> },
    /// Append the history record, then clear the transition.
    Finish(HistoryEntry),
}

/// Step names used in `step_times_ms` and history.
pub fn step_name(step: TransitionStep) -> &'static str {
    match step {
        TransitionStep::TermBumped => "term_bumped",
        TransitionStep::Fenced => "fenced",
        TransitionStep::Designated => "designated",
        TransitionStep::Promoted => "promoted",
        TransitionStep::Followed => "followed",
    }
}

/// The cluster record after a record-only action (everything but [`Action::Fence`] and
/// [`Action::BreakLease`]). Returns `None` for those: `Fence`'s record change depends on the
/// fencer's answer, `BreakLease` writes the lease item only.
pub fn apply(record: &ClusterRecord, action: &Action, now_ms: u64) -> Option<ClusterRecord> {
    let mut r = record.clone();
    let stamp = |t: &mut Transition, step: TransitionStep| {
        t.step = step;
        t.step_times_ms.insert(step_name(step).to_string(), now_ms);
    };
    match action {
        Action::Fence { .. } | Action::BreakLease { .. } | Action::BreakCoordinatorLock { .. } => return None,
        Action::Begin { transition, answer } => {
            r.term = transition.term;
            r.primary = None;
            r.transition = Some(transition.clone());
            if let Some(a) = answer {
                r.request = None;
                r.last_request = Some(a.clone());
            }
        }
        Action::Answer { outcome, paused } => {
            r.request = None;
            r.last_request = Some(outcome.clone());
            if let Some(p) = paused {
                r.paused = *p;
            }
        }
        Action::SkipFencer { fencer } => {
            let t = r.transition.as_mut()?;
            let f = t.fence.get_or_insert_with(FenceProgress::default);
            f.pending = None;
            if !f.skip.contains(fencer) {
                f.skip.push(fencer.clone());
            }
        }
        Action::MarkFenced { by, final_lsn } => {
            let t = r.transition.as_mut()?;
            t.fenced_by = Some(by.clone());
            t.final_lsn = *final_lsn;
            if let Some(f) = t.fence.as_mut() {
                f.pending = None;
            }
            stamp(t, TransitionStep::Fenced);
        }
        Action::ChangeCandidate { candidate, .. } => {
            r.transition.as_mut()?.candidate = candidate.clone();
        }
        Action::ContinueAsFailover { why } => {
            let t = r.transition.as_mut()?;
            t.kind = TransitionKind::Failover;
            t.reason = format!("{}; continued as a failover, not lossless: {why}", t.reason);
        }
        Action::Designate => {
            let t = r.transition.as_mut()?;
            r.primary = Some(t.candidate.clone());
            stamp(t, TransitionStep::Designated);
        }
        Action::MarkPromoted { lsn } => {
            let t = r.transition.as_mut()?;
            t.promote_lsn = *lsn;
            stamp(t, TransitionStep::Promoted);
        }
        Action::MarkFollowed { .. } => stamp(r.transition.as_mut()?, TransitionStep::Followed),
        Action::Finish(_) => r.transition = None,
    }
    Some(r)
}
