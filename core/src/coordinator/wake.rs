//! Waking agents at once after a step they act on (docs/design.md section 4, "Detection and
//! failover time"): right after the `Designated` record the candidate (it takes the lease and
//! promotes) and then the other members (replicas re-point to it); right after the `Promoted`
//! record every member but the new primary (a former primary waits for it to be read-write
//! before it rejoins). Without a wake an agent notices the record on its next loop (up to a
//! probe interval later).
//!
//! A wake only makes an agent run an ordinary loop earlier: that loop reads the store and decides
//! exactly as a scheduled one would (every lease and term check unchanged), so a lost, late,
//! repeated or forged wake costs time or a store read, never safety. That is why the waker is
//! best effort and the coordinator never waits for, nor learns, its outcome.
//!
//! [`wake_targets`] is the pure part (who, after which action); the driver calls an
//! [`AgentWaker`] with each target once the record is written.

use crate::model::{ClusterRecord, ClusterView, TransitionStep};

use super::action::Action;

/// What the woken agent will find in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// The old primary is fenced: publish a heartbeat with the final WAL position (S4).
    Fenced,
    /// The record names a primary of the term: the candidate may take the leader lease and
    /// promote, the others re-point to it.
    Designated,
    /// The candidate is primary: follow it, or rejoin it.
    Promoted,
}

impl std::fmt::Display for WakeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WakeReason::Fenced => "fenced",
            WakeReason::Designated => "designated",
            WakeReason::Promoted => "promoted",
        })
    }
}

/// One member to wake, with what is needed to reach it (from its last heartbeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeTarget {
    pub cluster: String,
    pub member: String,
    /// The member's agent API base URL (empty when its heartbeat has none, or it has none).
    pub api_url: String,
    /// The term of the record just written.
    pub term: u64,
    pub reason: WakeReason,
}

impl WakeTarget {
    /// A short human reason for the agent's log, e.g. "designated in term 7".
    pub fn describe(&self) -> String {
        format!("{} in term {}", self.reason, self.term)
    }
}

/// Wakes a member's agent so that it runs its next loop now.
///
/// Obligations: best effort (an unreachable agent, an error or a refusal is logged at most, never
/// returned: the agent's own loop picks the record up anyway); returns quickly, without waiting
/// for the agent (an implementation that needs I/O starts it in the background and bounds it,
/// e.g. a short connect timeout and a total timeout of about a second), so the coordinator is
/// never held up for more than a few milliseconds; safe to call repeatedly and concurrently for
/// the same member (each call is at most one more early loop, which the agent rate-limits).
pub trait AgentWaker: Send + Sync {
    fn wake(&self, target: &WakeTarget);
}

/// Wakes nobody: agents notice on their next loop (tests, and runners without a way to reach
/// the agents).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWaker;

impl AgentWaker for NoWaker {
    fn wake(&self, _target: &WakeTarget) {}
}

impl<W: AgentWaker + ?Sized> AgentWaker for std::sync::Arc<W> {
    fn wake(&self, target: &WakeTarget) {
        (**self).wake(target)
    }
}

/// Who to wake once `action` has been recorded as `next` (the record just written over `view`):
/// after the fence is recorded ([`Action::MarkFenced`], or a fencer's confirmation of
/// [`Action::Fence`]) every member but the old primary; after [`Action::Designate`] the
/// candidate first, then every other member with a heartbeat;
/// after [`Action::MarkPromoted`] every member with a heartbeat but the candidate; nobody after
/// any other step. Pure.
pub fn wake_targets(cluster: &str, view: &ClusterView, action: &Action, next: &ClusterRecord) -> Vec<WakeTarget> {
    let Some(t) = next.transition.as_ref() else { return Vec::new() };
    let target = |member: &str, reason| WakeTarget {
        cluster: cluster.to_string(),
        member: member.to_string(),
        api_url: view.members.get(member).map(|m| m.api_url.clone()).unwrap_or_default(),
        term: next.term,
        reason,
    };
    match action {
        Action::Designate => std::iter::once(target(&t.candidate, WakeReason::Designated))
            .chain(view.members.keys().filter(|m| **m != t.candidate).map(|m| target(m, WakeReason::Designated)))
            .collect(),
        // The fenced old primary writes no more: every replica's next heartbeat carries its final
        // position, which the designation waits for (S4). `Fence` counts only once its
        // confirmation is what was recorded.
        Action::MarkFenced { .. } | Action::Fence { .. } if t.step == TransitionStep::Fenced => view
            .members
            .keys()
            .filter(|m| Some(m.as_str()) != t.old_primary.as_deref())
            .map(|m| target(m, WakeReason::Fenced))
            .collect(),
        Action::MarkPromoted { .. } => {
            view.members.keys().filter(|m| **m != t.candidate).map(|m| target(m, WakeReason::Promoted)).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::apply;
    use crate::model::{MemberStatus, Transition};
    use crate::DynamicConfig;

    fn view() -> ClusterView {
        let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        record.term = 4;
        record.primary = None;
        record.transition = Some(Transition::fenced_failover("n1", "n2", 4));
        let mut v = ClusterView { cluster: Some(record), ..Default::default() };
        for (name, url) in [("n1", "http://n1:8008"), ("n2", "https://n2:8008"), ("n3", "")] {
            let mut m = MemberStatus::new(name);
            m.api_url = url.into();
            v.members.insert(name.into(), m);
        }
        v
    }

    #[test]
    fn everyone_is_woken_after_designation_candidate_first_and_the_others_after_promotion() {
        let v = view();
        let record = v.cluster.clone().unwrap();
        let designated = apply(&record, &Action::Designate, 1).unwrap();
        let woken = wake_targets("c", &v, &Action::Designate, &designated);
        assert_eq!(
            woken[0],
            WakeTarget {
                cluster: "c".into(),
                member: "n2".into(),
                api_url: "https://n2:8008".into(),
                term: 4,
                reason: WakeReason::Designated
            }
        );
        assert_eq!(woken[0].describe(), "designated in term 4");
        // The candidate first, then the others (they re-point to it).
        let names: Vec<&str> = woken.iter().map(|t| t.member.as_str()).collect();
        assert_eq!(names, vec!["n2", "n1", "n3"]);
        let promoted = apply(&designated, &Action::MarkPromoted { lsn: None }, 2).unwrap();
        let woken = wake_targets("c", &v, &Action::MarkPromoted { lsn: None }, &promoted);
        let names: Vec<(&str, &str)> = woken.iter().map(|t| (t.member.as_str(), t.api_url.as_str())).collect();
        assert_eq!(names, vec![("n1", "http://n1:8008"), ("n3", "")]);
        assert!(woken.iter().all(|t| t.reason == WakeReason::Promoted && t.term == 4));
    }

    #[test]
    fn the_fence_wakes_everyone_but_the_old_primary() {
        let v = view();
        let record = v.cluster.clone().unwrap();
        let action = Action::MarkFenced { by: "http".into(), final_lsn: None };
        let next = apply(&record, &action, 1).unwrap();
        let old = next.transition.as_ref().and_then(|t| t.old_primary.clone());
        let woken = wake_targets("c", &v, &action, &next);
        assert!(!woken.is_empty() && woken.iter().all(|t| t.reason == WakeReason::Fenced && Some(&t.member) != old.as_ref()));
        assert_eq!(woken.len(), v.members.len() - usize::from(old.is_some()));
    }

    #[test]
    fn a_fencers_confirmation_wakes_like_the_fence_and_a_pending_answer_wakes_nobody() {
        let v = view();
        let record = v.cluster.clone().unwrap();
        let t = record.transition.clone().unwrap();
        let fence = Action::Fence {
            member: t.old_primary.clone().unwrap_or_default(),
            term: t.term,
            kind: t.kind,
            reason: t.reason.clone(),
            skip: vec![],
            pending: None,
        };
        let confirmed = apply(&record, &Action::MarkFenced { by: "command".into(), final_lsn: None }, 1).unwrap();
        let woken = wake_targets("c", &v, &fence, &confirmed);
        assert_eq!(woken, wake_targets("c", &v, &Action::MarkFenced { by: String::new(), final_lsn: None }, &confirmed));
        assert!(!woken.is_empty());
        // A pending fencer's handle recorded: the step is still the term bump.
        let mut pending = record.clone();
        pending.transition.as_mut().unwrap().step = TransitionStep::TermBumped;
        assert!(wake_targets("c", &v, &fence, &pending).is_empty());
    }

    #[test]
    fn other_steps_wake_nobody() {
        let v = view();
        let record = v.cluster.clone().unwrap();
        for action in [Action::MarkFollowed { members: vec!["n1".into()] }, Action::SkipFencer { fencer: "ec2".into() }] {
            let next = apply(&record, &action, 1).unwrap();
            assert!(wake_targets("c", &v, &action, &next).is_empty(), "{action:?}");
        }
        // No transition in the record written: nothing to act on.
        let mut idle = record.clone();
        idle.transition = None;
        assert!(wake_targets("c", &v, &Action::Designate, &idle).is_empty());
    }
}
