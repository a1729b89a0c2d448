//! Failsafe mode (Patroni's `failsafe_mode`): a primary that cannot reach the store keeps running
//! past its lease only while every member of its last known view acknowledges it over the peer
//! endpoint (`POST /failsafe`). The full argument is in `docs/failsafe.md`; in short:
//!
//! - An acknowledgement is a *promise*: the member will not take the leader lease (nor promote)
//!   for `valid_ms` from the moment it answered, by its own monotonic clock. It refuses when it
//!   has seen a term above the asker's, when its view names someone else primary for that term,
//!   or when it holds or is claiming the lease itself.
//! - The primary counts an acknowledgement from the instant *before* it sent the request, minus
//!   the safety margin: its deadline falls before every acknowledging member's promise ends
//!   (the same bracketing as the lease itself, `crate::lease`).
//! - Only members the primary listed in its heartbeat (`MemberStatus::failsafe_members`) may take
//!   over its lease; the primary requires acknowledgements from every member it ever listed while
//!   holding this term's lease, so whoever could replace it has promised not to.
//!
//! The coordinator bumps the term before fencing or promoting (S1/S3): members that read the new
//! term refuse, so a primary cut off from the store but not from its peers still loses failsafe
//! within one acknowledgement's validity once a failover starts.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{ClusterView, Role};

/// Body of `POST /failsafe`: a primary asks one member to acknowledge it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeRequest {
    pub cluster: String,
    /// The asking primary (member name).
    pub leader: String,
    /// The term of the leader lease it holds.
    pub term: u64,
    /// How long the member is asked to promise not to take the lease, in ms.
    pub valid_ms: u64,
}

/// A member's answer to [`FailsafeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeReply {
    pub member: String,
    pub ack: bool,
    /// How long the member promised, from when it answered (its own clock); 0 when refused.
    pub valid_ms: u64,
    /// The highest cluster term the member has seen.
    pub term: u64,
    pub reason: String,
}

/// A promise this member made: no leader lease (and so no promotion) until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafePromise {
    pub leader: String,
    pub term: u64,
    /// Monotonic instant (this agent's clock) the promise lasts until.
    pub until: Duration,
}

/// What the pure decision sees of failsafe mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailsafeInput {
    /// Every required member acknowledged the held lease's term: it may be counted on until this
    /// monotonic instant even though it was not renewed.
    pub until: Option<Duration>,
    /// The members to list in the heartbeat (`Some` while failsafe mode is on and a lease is held).
    pub members: Option<Vec<String>>,
    /// A promise in force: this member must not claim the leader lease.
    pub promise: Option<FailsafePromise>,
}

/// Asks peers for acknowledgements (HTTP in the agent, messages in a simulation).
///
/// Obligations: `ask` returns within `timeout` (an unanswered request is an `Err`, never a hang);
/// it reports the member's reply unchanged (a refusal is `Ok` with `ack == false`); it has no
/// other side effect.
#[async_trait]
pub trait FailsafePeers: Send + Sync {
    async fn ask(&self, api_url: &str, request: &FailsafeRequest, timeout: Duration) -> Result<FailsafeReply, String>;
}

/// What an asked member knows, for [`judge_request`].
#[derive(Debug, Clone)]
pub struct PeerFacts<'a> {
    pub cluster: &'a str,
    pub member: &'a str,
    /// Failsafe mode in this member's dynamic configuration.
    pub failsafe_mode: bool,
    /// This member's lease duration: the longest promise it gives.
    pub lease_ms: u64,
    /// The highest cluster term this member has seen.
    pub seen_term: u64,
    pub view: Option<&'a ClusterView>,
    /// Its Postgres role at the last probe.
    pub role: Role,
    /// It holds the leader lease or is in the middle of claiming it.
    pub holds_or_claims_lease: bool,
}

/// The member side (pure): `Ok(ms)` to promise for `ms`, or why not.
pub fn judge_request(req: &FailsafeRequest, f: &PeerFacts<'_>) -> Result<u64, String> {
    if req.cluster != f.cluster {
        return Err(format!("this member belongs to cluster {:?}, not {:?}", f.cluster, req.cluster));
    }
    if !f.failsafe_mode {
        return Err("failsafe_mode is off in this member's configuration".into());
    }
    if req.leader == f.member {
        return Err("a member does not acknowledge itself".into());
    }
    if req.term == 0 || req.valid_ms == 0 {
        return Err("term and valid_ms must be at least 1".into());
    }
    if f.holds_or_claims_lease || f.role == Role::Primary {
        return Err("this member holds or claims the leader lease, or runs read-write".into());
    }
    if f.seen_term > req.term {
        return Err(format!("this member has seen term {}, newer than {}", f.seen_term, req.term));
    }
    if let Some(view) = f.view {
        if let Some(l) = view.leader.as_ref().filter(|l| l.term > req.term) {
            return Err(format!("this member has seen a leader lease for term {} ({})", l.term, l.owner));
        }
        if let Some(r) = view.cluster.as_ref().filter(|r| r.term == req.term) {
            if r.primary.as_deref() != Some(req.leader.as_str()) {
                return Err(format!(
                    "term {} names {} primary, not {}",
                    r.term,
                    r.primary.as_deref().unwrap_or("no member"),
                    req.leader
                ));
            }
        }
    }
    Ok(req.valid_ms.min(f.lease_ms))
}

/// The result of one round of asking (primary side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Every required member acknowledged: the held lease may be counted on until `until`.
    Granted { until: Duration, members: Vec<String> },
    /// A member refused: stop counting on earlier acknowledgements at once.
    Refused { member: String, reason: String },
    /// A member did not answer: earlier acknowledgements still count until they run out.
    Unanswered { member: String, error: String },
}

/// Combines the replies of one round (pure). `sent_at`: monotonic instant taken before the first
/// request was sent; every promise started after it.
pub fn combine(
    sent_at: Duration,
    safety_margin: Duration,
    requested_ms: u64,
    replies: &[(String, Result<FailsafeReply, String>)],
) -> RoundOutcome {
    let mut shortest = requested_ms;
    for (member, reply) in replies {
        match reply {
            Err(e) => return RoundOutcome::Unanswered { member: member.clone(), error: e.clone() },
            Ok(r) if !r.ack => return RoundOutcome::Refused { member: member.clone(), reason: r.reason.clone() },
            Ok(r) if r.member != *member => {
                return RoundOutcome::Refused { member: member.clone(), reason: format!("answered as {:?}", r.member) }
            }
            Ok(r) => shortest = shortest.min(r.valid_ms),
        }
    }
    let until = (sent_at + Duration::from_millis(shortest)).saturating_sub(safety_margin);
    RoundOutcome::Granted { until, members: replies.iter().map(|(m, _)| m.clone()).collect() }
}

/// Failsafe state shared by the loop, the HTTP API and the failsafe task (inside the runtime's
/// shared state; every method is called under its mutex).
#[derive(Debug, Default)]
pub(crate) struct FailsafeState {
    /// Term of the held lease the fields below belong to (0: no lease held).
    pub(super) tenure: u64,
    /// Members whose acknowledgement is required, with their API URLs: every member seen in a
    /// view while holding this term's lease (never shrinks within the term).
    pub(super) members: BTreeMap<String, String>,
    /// A heartbeat listing `members` was stored while holding this term's lease.
    pub(super) published: bool,
    pub(super) until: Option<Duration>,
    pub(super) last_round: Option<Duration>,
    /// Our own promise to another primary.
    pub(super) promise: Option<FailsafePromise>,
    pub(super) claiming: bool,
}

impl FailsafeState {
    /// The held lease is now `term` (`None`: no lease): a new term starts a new tenure.
    pub(crate) fn note_lease(&mut self, term: Option<u64>) {
        let term = term.unwrap_or(0);
        if term != self.tenure {
            *self = FailsafeState { promise: self.promise.take(), claiming: self.claiming, tenure: term, ..Default::default() };
        }
    }

    /// A view read while holding the lease for `term`: its members join the required set.
    pub(crate) fn note_view(&mut self, me: &str, term: u64, view: &ClusterView) {
        self.note_lease(Some(term));
        for (name, m) in view.members.iter().filter(|(n, _)| n.as_str() != me) {
            self.members.insert(name.clone(), m.api_url.clone());
        }
    }

    /// A heartbeat with `failsafe_members` was stored while holding `term`.
    pub(crate) fn note_published(&mut self, term: u64) {
        if term == self.tenure && term != 0 {
            self.published = true;
        }
    }

    pub(crate) fn input(&self, now: Duration, failsafe_mode: bool, held_term: Option<u64>) -> FailsafeInput {
        let holding = held_term.is_some_and(|t| t == self.tenure);
        FailsafeInput {
            until: self.extension(held_term.unwrap_or(0), now),
            members: (failsafe_mode && holding).then(|| self.members.keys().cloned().collect()),
            promise: self.promise.clone().filter(|p| now < p.until),
        }
    }

    /// Until when acknowledgements extend the lease of `term`, if they still do at `now`.
    pub(crate) fn extension(&self, term: u64, now: Duration) -> Option<Duration> {
        self.until.filter(|u| term != 0 && term == self.tenure && now < *u)
    }

    /// Before a lease write that could make this member the holder: refused while a promise is in
    /// force; otherwise acknowledgements are refused until [`FailsafeState::end_claim`].
    pub(crate) fn begin_claim(&mut self, now: Duration) -> Result<(), String> {
        if let Some(p) = self.promise.as_ref().filter(|p| now < p.until) {
            return Err(format!(
                "refused: acknowledged {}'s failsafe for term {} ({} ms left)",
                p.leader,
                p.term,
                (p.until - now).as_millis()
            ));
        }
        self.claiming = true;
        Ok(())
    }

    pub(crate) fn end_claim(&mut self) {
        self.claiming = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterRecord, LeaderLease};
    use crate::DynamicConfig;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn req(term: u64) -> FailsafeRequest {
        FailsafeRequest { cluster: "c1".into(), leader: "n1".into(), term, valid_ms: 4000 }
    }

    fn view(term: u64, primary: &str, lease_term: u64) -> ClusterView {
        ClusterView {
            cluster: Some(ClusterRecord {
                term,
                primary: Some(primary.into()),
                ..ClusterRecord::bootstrap(primary, DynamicConfig::default())
            }),
            leader: Some(LeaderLease {
                owner: primary.into(),
                term: lease_term,
                rvn: "r".into(),
                lease_ms: 4000,
                released: false,
            }),
            ..Default::default()
        }
    }

    fn facts(v: &ClusterView) -> PeerFacts<'_> {
        PeerFacts {
            cluster: "c1",
            member: "n2",
            failsafe_mode: true,
            lease_ms: 3000,
            seen_term: 3,
            view: Some(v),
            role: Role::Replica,
            holds_or_claims_lease: false,
        }
    }

    #[test]
    fn member_acknowledges_the_primary_of_its_newest_term_for_at_most_its_lease() {
        let v = view(3, "n1", 3);
        assert_eq!(judge_request(&req(3), &facts(&v)), Ok(3000));
        // A term it has not seen yet (its store read lags) is acknowledged too.
        assert_eq!(judge_request(&req(4), &facts(&v)), Ok(3000));
    }

    #[test]
    fn member_refuses_what_it_must_not_promise() {
        let v = view(3, "n1", 3);
        type Tweak = Box<dyn Fn(&mut PeerFacts)>;
        let cases: Vec<(&str, FailsafeRequest, Tweak, &str)> = vec![
            ("newer term seen", req(2), Box::new(|_| {}), "seen term 3"),
            ("other cluster", FailsafeRequest { cluster: "c2".into(), ..req(3) }, Box::new(|_| {}), "cluster"),
            ("mode off", req(3), Box::new(|f| f.failsafe_mode = false), "off"),
            ("holds lease", req(3), Box::new(|f| f.holds_or_claims_lease = true), "holds or claims"),
            ("runs read-write", req(3), Box::new(|f| f.role = Role::Primary), "read-write"),
            ("asks itself", FailsafeRequest { leader: "n2".into(), ..req(3) }, Box::new(|_| {}), "itself"),
            ("zero validity", FailsafeRequest { valid_ms: 0, ..req(3) }, Box::new(|_| {}), "at least 1"),
        ];
        for (name, r, tweak, want) in cases {
            let mut f = facts(&v);
            tweak(&mut f);
            let got = judge_request(&r, &f);
            assert!(got.as_ref().is_err_and(|e| e.contains(want)), "{name}: {got:?}");
        }
        let other = view(3, "n3", 3);
        assert!(judge_request(&req(3), &facts(&other)).unwrap_err().contains("names n3"));
        let newer_lease = view(3, "n1", 4);
        assert!(judge_request(&req(3), &facts(&newer_lease)).unwrap_err().contains("term 4"));
    }

    fn ack(m: &str, ms: u64) -> (String, Result<FailsafeReply, String>) {
        (m.into(), Ok(FailsafeReply { member: m.into(), ack: true, valid_ms: ms, term: 3, reason: String::new() }))
    }

    #[test]
    fn a_round_is_granted_only_when_every_member_acknowledges() {
        let sent = MS(10_000);
        let g = combine(sent, MS(1500), 4000, &[ack("n2", 4000), ack("n3", 3000)]);
        // Shortest promise, counted from before sending, minus the margin.
        assert_eq!(g, RoundOutcome::Granted { until: MS(11_500), members: vec!["n2".into(), "n3".into()] });
        let refused = (
            "n3".to_string(),
            Ok(FailsafeReply { member: "n3".into(), ack: false, valid_ms: 0, term: 4, reason: "seen term 4".into() }),
        );
        assert!(
            matches!(combine(sent, MS(1500), 4000, &[ack("n2", 4000), refused]), RoundOutcome::Refused { member, .. } if member == "n3")
        );
        let silent = ("n3".to_string(), Err("timed out".to_string()));
        assert!(matches!(combine(sent, MS(1500), 4000, &[ack("n2", 4000), silent]), RoundOutcome::Unanswered { .. }));
        let impostor = ("n3".to_string(), Ok(FailsafeReply { member: "n9".into(), ..ack("n3", 4000).1.unwrap() }));
        assert!(matches!(combine(sent, MS(1500), 4000, &[impostor]), RoundOutcome::Refused { .. }));
    }

    #[test]
    fn required_members_never_shrink_within_a_term_and_reset_with_a_new_one() {
        let mut s = FailsafeState::default();
        let mut v = view(3, "n1", 3);
        for n in ["n1", "n2", "n3"] {
            v.members.insert(n.into(), crate::model::MemberStatus::new(n));
        }
        s.note_view("n1", 3, &v);
        v.members.remove("n3");
        s.note_view("n1", 3, &v);
        assert_eq!(s.input(MS(0), true, Some(3)).members, Some(vec!["n2".into(), "n3".into()]));
        s.note_published(3);
        s.until = Some(MS(5000));
        assert_eq!(s.input(MS(1000), true, Some(3)).until, Some(MS(5000)));
        assert_eq!(s.input(MS(5000), true, Some(3)).until, None, "runs out");
        s.note_lease(Some(4));
        assert_eq!(s.input(MS(1000), true, Some(4)).members, Some(vec![]));
        assert!(!s.published && s.until.is_none());
        s.note_lease(None);
        assert_eq!(s.input(MS(1000), true, None).members, None);
    }

    mod decision {
        //! The failsafe rules of the pure per-loop decision.
        use super::*;
        use crate::agent::{decide, AgentIdentity, AgentInput, StoreRead};
        use crate::lease::{HeldLease, LeaseState};
        use crate::model::MemberStatus;
        use crate::pg::{DataDirState, PgProbe};

        fn lease(owner: &str, term: u64) -> LeaderLease {
            LeaderLease { owner: owner.into(), term, rvn: "r".into(), lease_ms: 4000, released: false }
        }

        fn cluster(term: u64, primary: &str, holder: &str, lease_term: u64) -> ClusterView {
            let mut v = view(term, primary, lease_term);
            v.leader = Some(lease(holder, lease_term));
            for n in ["n1", "n2", "n3"] {
                let mut m = MemberStatus::new(n);
                m.pg_host = "127.0.0.1".into();
                m.pg_port = 5000;
                v.members.insert(n.into(), m);
            }
            v
        }

        fn probe(role: Role) -> PgProbe {
            let data = if role == Role::Primary { DataDirState::Primary } else { DataDirState::Standby };
            PgProbe { running: true, role, data, slots: vec!["n1".into(), "n2".into(), "n3".into()], ..Default::default() }
        }

        /// `now` 20 s; a held lease written at 15 s is valid until 15 + 4 - 1.5 = 17.5 s.
        fn input(me: &str, role: Role, store: StoreRead, held_term: Option<u64>) -> AgentInput {
            let lease_state = match &store {
                StoreRead::Ok(v) => v.leader.clone().map(LeaseState::Expired),
                _ => None,
            };
            AgentInput {
                identity: AgentIdentity { cluster: "c1".into(), member: me.into(), ..Default::default() },
                now: MS(20_000),
                wall_ms: 0,
                probe: probe(role),
                store,
                lease_state,
                held: held_term.map(|t| HeldLease { lease: lease(me, t), written_from: MS(15_000) }),
                config: DynamicConfig {
                    lease_ms: 4000,
                    renew_interval_ms: 1000,
                    safety_margin_ms: 1500,
                    probe_interval_ms: 500,
                    failsafe_mode: true,
                    ..Default::default()
                },
                seq: 1,
                max_term_held: held_term.unwrap_or(0),
                fenced_through: 0,
                last_rejoin_failure: None,
                primary_start_failure: None,
                last_run_request: None,
                leader_seen: None,
                primary_agent: None,
                failsafe: FailsafeInput::default(),
                departed_slots: Vec::new(),
                bootstrap: Default::default(),
                replica_not_streaming_for: None,
                last_heartbeat: None,
            }
        }

        #[test]
        fn acknowledged_primary_keeps_its_lease_past_the_deadline_while_the_store_is_down() {
            let mut i = input("n1", Role::Primary, StoreRead::Unavailable("down".into()), Some(3));
            i.failsafe.until = Some(MS(21_000));
            let d = decide(&i);
            assert_eq!(d.names(), vec!["renew_lease", "demote_if_lease_lost", "publish_heartbeat"], "{}", d.reason);
            assert!(d.reason.contains("failsafe"), "{}", d.reason);
        }

        #[test]
        fn primary_demotes_once_acknowledgements_run_out() {
            let mut i = input("n1", Role::Primary, StoreRead::Unavailable("down".into()), Some(3));
            i.failsafe.until = Some(MS(20_000));
            assert_eq!(decide(&i).names(), vec!["forget_lease", "demote", "publish_heartbeat"]);
            i.failsafe.until = None;
            assert_eq!(decide(&i).names(), vec!["forget_lease", "demote", "publish_heartbeat"]);
        }

        #[test]
        fn acknowledgements_do_not_outlast_a_newer_term_in_the_store() {
            let mut i = input("n1", Role::Primary, StoreRead::Ok(cluster(4, "n2", "n1", 3)), Some(3));
            i.failsafe.until = Some(MS(21_000));
            assert_eq!(decide(&i).names(), vec!["demote", "release_lease", "publish_heartbeat"]);
        }

        #[test]
        fn a_member_that_promised_does_not_take_the_lease_even_when_named() {
            let mut i = input("n2", Role::Replica, StoreRead::Ok(cluster(4, "n2", "n1", 3)), None);
            i.failsafe.promise = Some(FailsafePromise { leader: "n1".into(), term: 3, until: MS(20_500) });
            let d = decide(&i);
            assert_eq!(d.names(), vec!["publish_heartbeat"], "{}", d.reason);
            assert!(d.reason.contains("acknowledged n1's failsafe"), "{}", d.reason);
            i.failsafe.promise.as_mut().unwrap().until = MS(20_000);
            assert_eq!(decide(&i).names(), vec!["acquire_lease", "promote", "ensure_slots", "publish_heartbeat"]);
        }

        #[test]
        fn only_members_the_primary_asks_may_take_over_its_lease() {
            let mut v = cluster(4, "n3", "n1", 3);
            v.members.get_mut("n1").unwrap().failsafe_members = Some(vec!["n2".into()]);
            let d = decide(&input("n3", Role::Replica, StoreRead::Ok(v.clone()), None));
            assert_eq!(d.names(), vec!["publish_heartbeat"], "{}", d.reason);
            assert!(d.reason.contains("without asking this member"), "{}", d.reason);
            v.members.get_mut("n1").unwrap().failsafe_members = Some(vec!["n2".into(), "n3".into()]);
            assert!(decide(&input("n3", Role::Replica, StoreRead::Ok(v.clone()), None)).names().contains(&"promote"));
            // A primary not in failsafe mode lists nothing: the lease rules alone apply.
            v.members.get_mut("n1").unwrap().failsafe_members = None;
            assert!(decide(&input("n3", Role::Replica, StoreRead::Ok(v), None)).names().contains(&"promote"));
        }

        #[test]
        fn the_holder_lists_whom_it_asks_in_its_heartbeat() {
            let mut i = input("n1", Role::Primary, StoreRead::Ok(cluster(3, "n1", "n1", 3)), Some(3));
            i.held.as_mut().unwrap().written_from = MS(19_000);
            i.failsafe.members = Some(vec!["n2".into(), "n3".into()]);
            let d = decide(&i);
            let Some(crate::agent::AgentAction::PublishHeartbeat(m)) = d.actions.last() else { panic!("no heartbeat") };
            assert_eq!(m.failsafe_members, Some(vec!["n2".into(), "n3".into()]));
        }
    }

    #[test]
    fn a_promise_blocks_lease_claims_until_it_runs_out() {
        let mut s = FailsafeState {
            promise: Some(FailsafePromise { leader: "n1".into(), term: 3, until: MS(5000) }),
            ..Default::default()
        };
        assert!(s.begin_claim(MS(4999)).unwrap_err().contains("n1's failsafe for term 3"));
        assert!(!s.claiming);
        s.begin_claim(MS(5000)).unwrap();
        assert!(s.claiming);
        s.end_claim();
        // The promise survives a change of the held lease (it is about someone else's).
        s.promise = Some(FailsafePromise { leader: "n1".into(), term: 3, until: MS(9000) });
        s.note_lease(Some(7));
        assert!(s.input(MS(100), true, Some(7)).promise.is_some());
    }
}
