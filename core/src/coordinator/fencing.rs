//! Fencing as a pure step of a transition (S3, docs/design.md section 3): which fencer call to
//! make next, or to give up on a fencer that stayed pending; and what a fencer's answer means for
//! the cluster record. No I/O: the driver calls the fencer and writes what these return.

use std::time::Duration;

use crate::fence::{FenceStatus, PendingHandle};
use crate::model::{ClusterRecord, FenceProgress, MemberStatus, Role, Transition, TransitionKind};

use super::action::{apply, Action};

/// "demotion" for a switchover (the old primary is asked to step down), "fencing" otherwise.
fn noun(kind: TransitionKind) -> &'static str {
    if kind == TransitionKind::Switchover {
        "demotion"
    } else {
        "fencing"
    }
}

/// The fencing step of `t` with fencing required: fence (or demote) `old`, resuming the
/// fencer's pending operation; or, once that stayed pending for `pending_timeout` (`age` is the
/// time since the step began), give up on that fencer so the chain moves on to the next.
/// Returns the action and its reason.
pub fn next_call(old: &str, t: &Transition, age: Duration, pending_timeout: Duration) -> (Action, String) {
    let progress = t.fence.clone().unwrap_or_default();
    if let Some(p) = &progress.pending {
        if age >= pending_timeout {
            return (
                Action::SkipFencer { fencer: p.fencer.clone() },
                format!("fencer {} still pending after {} ms; trying the next", p.fencer, age.as_millis()),
            );
        }
    }
    let verb = if t.kind == TransitionKind::Switchover { "demote" } else { "fence" };
    let action = Action::Fence {
        member: old.to_string(),
        term: t.term,
        kind: t.kind,
        reason: t.reason.clone(),
        skip: progress.skip,
        pending: progress.pending.as_ref().map(PendingHandle::from_record),
    };
    (action, format!("{verb} {old} for term {}", t.term))
}

/// What the driver does with a fencer's answer (from [`handle_answer`]).
#[derive(Debug, Clone, PartialEq)]
pub enum FenceAnswer {
    /// Confirmed: write `record` (the transition at step `Fenced`) and go on; `step` says so.
    Fenced { record: ClusterRecord, step: String },
    /// Started, not confirmed: write `record` when there is one (a new pending handle to resume
    /// from), then wait for the next run.
    Pending { record: Option<ClusterRecord>, reason: String },
    /// Failed or refused: write `record` when there is one (the pending handle forgotten, so the
    /// next run starts over with the first fencer; best effort), then stop, blocked.
    NotConfirmed { record: Option<ClusterRecord>, reason: String },
}

/// Interprets the fencer's `answer` about `member`, the old primary of `record`'s transition,
/// whose last heartbeat is `old_status`. The transition's fence progress (its pending handle)
/// is read from `record`; `now_ms` stamps the `Fenced` step.
pub fn handle_answer(
    record: &ClusterRecord,
    member: &str,
    old_status: Option<&MemberStatus>,
    answer: FenceStatus,
    now_ms: u64,
) -> FenceAnswer {
    let Some(t) = record.transition.as_ref() else {
        let reason = format!("no transition in progress: the fencer's answer about {member} is not used");
        return FenceAnswer::NotConfirmed { record: None, reason };
    };
    let noun = noun(t.kind);
    let pending = t.fence.as_ref().and_then(|f| f.pending.as_ref()).map(PendingHandle::from_record);
    match answer {
        FenceStatus::Confirmed { detail, lsn } => {
            // A demotion that did not report its final position: the old primary's last
            // reported write position (read just before the demotion) is the floor; a clean
            // shutdown ships the rest to streaming standbys, which the designate step waits to
            // see replayed.
            let reported = lsn.is_some();
            let lsn = lsn.or_else(|| old_status.filter(|s| s.role == Role::Primary).and_then(|s| s.write_lsn));
            // History keeps `by`: say which final position the switchover waited for.
            let by = match lsn {
                Some(l) if t.kind == TransitionKind::Switchover => {
                    format!("{detail}; final LSN {l} ({})", if reported { "reported" } else { "last heartbeat" })
                }
                _ => detail.clone(),
            };
            let record = apply(record, &Action::MarkFenced { by, final_lsn: lsn }, now_ms)
                .expect("a record with a transition takes MarkFenced");
            FenceAnswer::Fenced { record, step: format!("{member} {noun} confirmed: {detail}") }
        }
        FenceStatus::Pending { handle, detail } => {
            // Remember a new handle only: the same one is already recorded.
            let record = (pending.as_ref() != Some(&handle)).then(|| {
                let mut next = record.clone();
                if let Some(t) = next.transition.as_mut() {
                    t.fence.get_or_insert_with(FenceProgress::default).pending = Some(handle.to_record());
                }
                next
            });
            FenceAnswer::Pending { record, reason: format!("{noun} of {member} pending: {detail}") }
        }
        FenceStatus::Failed { detail } | FenceStatus::Refused { detail } => {
            // Start over with the first fencer next run.
            let record = pending.is_some().then(|| {
                let mut next = record.clone();
                if let Some(f) = next.transition.as_mut().and_then(|t| t.fence.as_mut()) {
                    f.pending = None;
                }
                next
            });
            FenceAnswer::NotConfirmed { record, reason: format!("{noun} of {member} not confirmed: {detail}; retrying next run") }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::DynamicConfig;
    use crate::lsn::Lsn;
    use crate::model::{PendingFence, TransitionStep};

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn record(kind: TransitionKind, pending: Option<PendingFence>, skip: &[&str]) -> ClusterRecord {
        let mut r = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        r.term = 6;
        r.primary = None;
        let fence = (pending.is_some() || !skip.is_empty())
            .then(|| FenceProgress { pending, skip: skip.iter().map(|s| s.to_string()).collect() });
        r.transition = Some(Transition {
            kind,
            step: TransitionStep::TermBumped,
            term: 6,
            from_term: 5,
            old_primary: Some("n1".into()),
            candidate: "n2".into(),
            reason: "lease expired".into(),
            started_ms: 1_000,
            step_times_ms: BTreeMap::from([("term_bumped".to_string(), 1_000)]),
            forced: false,
            fence,
            fenced_by: None,
            final_lsn: None,
            promote_lsn: None,
        });
        r
    }

    fn ssm_pending() -> PendingFence {
        PendingHandle::new("ssm", "cmd-1").to_record()
    }

    fn primary_status(write_lsn: u64) -> MemberStatus {
        let mut s = MemberStatus::new("n1");
        s.role = Role::Primary;
        s.write_lsn = Some(Lsn(write_lsn));
        s
    }

    fn transition(r: &ClusterRecord) -> &Transition {
        r.transition.as_ref().unwrap()
    }

    #[test]
    fn next_call_resumes_the_pending_fencer_until_it_times_out() {
        let r = record(TransitionKind::Failover, Some(ssm_pending()), &["ec2"]);
        let (action, reason) = next_call("n1", transition(&r), Duration::from_secs(59), TIMEOUT);
        assert_eq!(
            action,
            Action::Fence {
                member: "n1".into(),
                term: 6,
                kind: TransitionKind::Failover,
                reason: "lease expired".into(),
                skip: vec!["ec2".into()],
                pending: Some(PendingHandle::new("ssm", "cmd-1")),
            }
        );
        assert_eq!(reason, "fence n1 for term 6");
        // Given up on: the fencer is skipped from now on.
        let (action, reason) = next_call("n1", transition(&r), TIMEOUT, TIMEOUT);
        assert_eq!(action, Action::SkipFencer { fencer: "ssm".into() });
        assert!(reason.contains("ssm still pending after 60000 ms"), "{reason}");
        let skipped = apply(&r, &action, 0).unwrap();
        let f = transition(&skipped).fence.clone().unwrap();
        assert_eq!((f.pending, f.skip), (None, vec!["ec2".to_string(), "ssm".to_string()]));
        // Nothing pending: no timeout applies.
        let fresh = record(TransitionKind::Switchover, None, &[]);
        let (action, reason) = next_call("n1", transition(&fresh), Duration::from_secs(600), TIMEOUT);
        assert!(matches!(action, Action::Fence { pending: None, .. }), "{action:?}");
        assert_eq!(reason, "demote n1 for term 6");
    }

    #[test]
    fn a_confirmation_marks_the_old_primary_fenced() {
        let r = record(TransitionKind::Failover, Some(ssm_pending()), &[]);
        let answer = FenceStatus::Confirmed { detail: "ssm: stopped".into(), lsn: None };
        let FenceAnswer::Fenced { record: next, step } = handle_answer(&r, "n1", Some(&primary_status(0x50)), answer, 9_000)
        else {
            panic!("not fenced")
        };
        assert_eq!(step, "n1 fencing confirmed: ssm: stopped");
        let t = transition(&next);
        assert_eq!(t.step, TransitionStep::Fenced);
        assert_eq!(t.step_times_ms["fenced"], 9_000);
        assert_eq!(t.fenced_by.as_deref(), Some("ssm: stopped"));
        // The last heartbeat's write position is the floor when the fencer reports none.
        assert_eq!(t.final_lsn, Some(Lsn(0x50)));
        assert_eq!(t.fence.as_ref().unwrap().pending, None, "the handle is done with");
    }

    #[test]
    fn a_demotion_says_which_final_position_the_switchover_waits_for() {
        let r = record(TransitionKind::Switchover, None, &[]);
        let reported = FenceStatus::Confirmed { detail: "http: demoted".into(), lsn: Some(Lsn(0x60)) };
        let FenceAnswer::Fenced { record: next, step } = handle_answer(&r, "n1", Some(&primary_status(0x50)), reported, 1) else {
            panic!("not fenced")
        };
        assert_eq!(step, "n1 demotion confirmed: http: demoted");
        assert_eq!(transition(&next).final_lsn, Some(Lsn(0x60)));
        assert_eq!(transition(&next).fenced_by.as_deref(), Some("http: demoted; final LSN 0/60 (reported)"));
        let silent = FenceStatus::Confirmed { detail: "http: demoted".into(), lsn: None };
        let FenceAnswer::Fenced { record: next, .. } = handle_answer(&r, "n1", Some(&primary_status(0x50)), silent.clone(), 1)
        else {
            panic!("not fenced")
        };
        assert_eq!(transition(&next).fenced_by.as_deref(), Some("http: demoted; final LSN 0/50 (last heartbeat)"));
        // A heartbeat that no longer says primary gives no floor.
        let mut replica = primary_status(0x50);
        replica.role = Role::Replica;
        let FenceAnswer::Fenced { record: next, .. } = handle_answer(&r, "n1", Some(&replica), silent, 1) else {
            panic!("not fenced")
        };
        assert_eq!(transition(&next).final_lsn, None);
        assert_eq!(transition(&next).fenced_by.as_deref(), Some("http: demoted"));
    }

    #[test]
    fn a_new_pending_handle_is_recorded_in_its_stored_form_and_the_same_one_is_not() {
        let r = record(TransitionKind::Failover, None, &["ec2"]);
        let answer = FenceStatus::Pending { handle: PendingHandle::new("ssm", "cmd-1"), detail: "ssm: InProgress".into() };
        let FenceAnswer::Pending { record: Some(next), reason } = handle_answer(&r, "n1", None, answer.clone(), 1) else {
            panic!("no record to write")
        };
        assert_eq!(reason, "fencing of n1 pending: ssm: InProgress");
        let f = transition(&next).fence.clone().unwrap();
        assert_eq!(f.pending, Some(PendingFence { fencer: "ssm".into(), handle: "ssm:cmd-1".into() }));
        assert_eq!(f.skip, vec!["ec2".to_string()]);
        assert_eq!(transition(&next).step, TransitionStep::TermBumped);
        // Asked again with the recorded handle and still pending: nothing to write.
        assert_eq!(handle_answer(&next, "n1", None, answer.clone(), 2), FenceAnswer::Pending { record: None, reason });
        // A record written before the typed handle (or with a bare handle) counts the same.
        let legacy = record(TransitionKind::Failover, Some(PendingFence { fencer: "ssm".into(), handle: "cmd-1".into() }), &[]);
        assert!(matches!(handle_answer(&legacy, "n1", None, answer, 2), FenceAnswer::Pending { record: None, .. }));
        // Another operation (another fencer or handle) replaces it.
        let other = FenceStatus::Pending { handle: PendingHandle::new("ec2", "i-1"), detail: "stopping".into() };
        let FenceAnswer::Pending { record: Some(next), .. } = handle_answer(&next, "n1", None, other, 3) else {
            panic!("no record to write")
        };
        assert_eq!(transition(&next).fence.clone().unwrap().pending.unwrap().handle, "ec2:i-1");
    }

    #[test]
    fn failures_and_refusals_forget_the_pending_handle_and_block() {
        for answer in
            [FenceStatus::Failed { detail: "unreachable".into() }, FenceStatus::Refused { detail: "unreachable".into() }]
        {
            let r = record(TransitionKind::Failover, Some(ssm_pending()), &["ec2"]);
            let FenceAnswer::NotConfirmed { record: Some(next), reason } = handle_answer(&r, "n1", None, answer.clone(), 1)
            else {
                panic!("no record to write")
            };
            assert_eq!(reason, "fencing of n1 not confirmed: unreachable; retrying next run");
            let f = transition(&next).fence.clone().unwrap();
            assert_eq!((f.pending, f.skip), (None, vec!["ec2".to_string()]));
            assert_eq!(transition(&next).step, TransitionStep::TermBumped, "never fenced by a failure");
            // Nothing pending: nothing to write.
            let r = record(TransitionKind::Switchover, None, &[]);
            let FenceAnswer::NotConfirmed { record: None, reason } = handle_answer(&r, "n1", None, answer, 1) else {
                panic!("a record to write")
            };
            assert!(reason.starts_with("demotion of n1 not confirmed"), "{reason}");
        }
    }

    #[test]
    fn an_answer_without_a_transition_confirms_nothing() {
        let r = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        let answer = FenceStatus::Confirmed { detail: "stopped".into(), lsn: None };
        assert!(matches!(handle_answer(&r, "n1", None, answer, 1), FenceAnswer::NotConfirmed { record: None, .. }));
    }
}
