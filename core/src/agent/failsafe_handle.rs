//! The agent handle's side of failsafe mode (docs/failsafe.md): answering a peer's
//! `POST /failsafe`, asking the peers while the store is unreachable, and the lease deadline those
//! answers extend. The rules themselves are pure, in [`super::failsafe`].

use std::sync::PoisonError;
use std::time::Duration;

use super::failsafe::{
    combine, judge_request, FailsafePeers, FailsafePromise, FailsafeReply, FailsafeRequest, PeerFacts, RoundOutcome,
};
use super::handle::AgentHandle;

impl AgentHandle {
    /// The member side of `POST /failsafe`: judges the request and, when acknowledging, records
    /// the promise before answering (so the loop's next lease claim sees it).
    pub fn failsafe_ack(&self, req: &FailsafeRequest) -> FailsafeReply {
        let now = self.clock.monotonic();
        let snap = self.snapshot();
        let mut fs = self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner);
        // Lock order: failsafe, then lease_deadline (the loop never holds both the other way).
        let holds = fs.claiming || self.shared.lease_deadline.lock().unwrap_or_else(PoisonError::into_inner).is_some();
        let facts = PeerFacts {
            cluster: &snap.cluster,
            member: &snap.member,
            failsafe_mode: snap.config.failsafe_mode,
            lease_ms: snap.config.lease_ms,
            seen_term: snap.term,
            view: snap.last_view.as_ref(),
            role: snap.role,
            holds_or_claims_lease: holds,
        };
        let verdict = judge_request(req, &facts);
        match verdict {
            Ok(ms) => {
                let until = now + Duration::from_millis(ms);
                let keep = fs.promise.as_ref().is_some_and(|p| p.until > until);
                if !keep {
                    fs.promise = Some(FailsafePromise { leader: req.leader.clone(), term: req.term, until });
                }
                FailsafeReply {
                    member: snap.member.clone(),
                    ack: true,
                    valid_ms: ms,
                    term: snap.term,
                    reason: "acknowledged".into(),
                }
            }
            Err(reason) => FailsafeReply { member: snap.member.clone(), ack: false, valid_ms: 0, term: snap.term, reason },
        }
    }

    /// The primary side, for a task beside the loop (every few hundred ms): when failsafe mode is
    /// on and half of the held lease's validity has passed without a renewal, asks every required
    /// member (at most once per probe interval) and records the outcome. Returns `None` when no
    /// round was due. Runs apart from the loop because a loop stuck in store calls is exactly
    /// when acknowledgements are needed.
    pub async fn failsafe_round(&self, peers: &dyn FailsafePeers) -> Option<RoundOutcome> {
        let snap = self.snapshot();
        let cfg = &snap.config;
        if !cfg.failsafe_mode {
            return None;
        }
        let now = self.clock.monotonic();
        let (term, valid_until) = (*self.shared.lease_deadline.lock().unwrap_or_else(PoisonError::into_inner))?;
        if term <= self.shared.fenced_through() {
            return None;
        }
        let window = cfg.lease().saturating_sub(cfg.safety_margin());
        if now + window / 2 < valid_until {
            return None; // renewals are on time
        }
        let members: Vec<(String, String)> = {
            let mut fs = self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner);
            if fs.tenure != term || !fs.published || fs.last_round.is_some_and(|t| now < t + cfg.probe_interval()) {
                return None;
            }
            fs.last_round = Some(now);
            fs.members.iter().map(|(n, u)| (n.clone(), u.clone())).collect()
        };
        let req = FailsafeRequest { cluster: snap.cluster.clone(), leader: snap.member.clone(), term, valid_ms: cfg.lease_ms };
        let timeout = cfg.probe_interval();
        let asks = members.iter().map(|(name, url)| {
            let req = &req;
            async move {
                let r = if url.is_empty() { Err("no API URL published".to_string()) } else { peers.ask(url, req, timeout).await };
                (name.clone(), r)
            }
        });
        let replies = futures::future::join_all(asks).await;
        let outcome = combine(now, cfg.safety_margin(), cfg.lease_ms, &replies);
        let mut fs = self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner);
        if fs.tenure == term {
            match &outcome {
                RoundOutcome::Granted { until, .. } => fs.until = Some(fs.until.map_or(*until, |u| u.max(*until))),
                RoundOutcome::Refused { .. } => fs.until = None,
                RoundOutcome::Unanswered { .. } => {}
            }
        }
        Some(outcome)
    }

    /// How much longer this agent may act as primary: the time left on its leader lease by its
    /// own clock, or on failsafe acknowledgements extending it; `None` when neither is valid
    /// (what a hardware watchdog is petted on, and how far).
    pub fn lease_valid_for(&self) -> Option<Duration> {
        let deadline = *self.shared.lease_deadline.lock().unwrap_or_else(PoisonError::into_inner);
        let (term, until) = deadline?;
        let left = self.deadline_with_failsafe(term, until).checked_sub(self.clock.monotonic())?;
        (!left.is_zero()).then_some(left)
    }

    /// `until` (the held lease's own deadline for `term`) pushed out by failsafe acknowledgements.
    pub(super) fn deadline_with_failsafe(&self, term: u64, until: Duration) -> Duration {
        let now = self.clock.monotonic();
        self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).extension(term, now).map_or(until, |f| f.max(until))
    }
}
