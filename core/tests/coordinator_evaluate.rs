//! Table-driven tests of the coordinator's pure `evaluate`: one named situation per row, each
//! asserting the actions and the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use pgdaemon_core::coordinator::{
    evaluate, Action, AgentReach, AgentSighting, CoordinatorConfig, Decision, FencingPolicy, Liveness, LockStatus,
    MemberObservation, Observations, Verdict,
};
use pgdaemon_core::{
    ClusterRecord, ClusterView, DynamicConfig, FenceProgress, LeaderLease, LeaseSighting, LeaseState, Lsn, ManualRequest,
    MemberStatus, PendingFence, RequestAction, Role, SyncMode, SyncState, Transition, TransitionKind, TransitionStep,
};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn lsn(x: u64) -> Option<Lsn> {
    Some(Lsn(x))
}

fn lease(owner: &str, term: u64) -> LeaderLease {
    LeaderLease { owner: owner.into(), term, rvn: format!("rvn-{owner}-{term}"), lease_ms: 10_000, released: false }
}

fn replica(name: &str, receive: u64, replay: u64) -> MemberStatus {
    let mut m = MemberStatus::new(name);
    m.role = Role::Replica;
    m.pg_running = true;
    m.timeline = 3;
    m.receive_lsn = lsn(receive);
    m.replay_lsn = lsn(replay);
    m.streaming = true;
    m.seq = 10;
    m.term = 5;
    m
}

/// n1 primary in term 5 holding the lease; n2 and n3 fresh replicas, n2 ahead.
struct World {
    view: ClusterView,
    obs: Observations,
    config: CoordinatorConfig,
}

impl World {
    fn healthy() -> World {
        let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        record.term = 5;
        record.version = 7;
        let mut p = MemberStatus::new("n1");
        p.role = Role::Primary;
        p.pg_running = true;
        p.timeline = 3;
        p.write_lsn = lsn(0x5000);
        p.seq = 10;
        p.term = 5;
        let mut members = BTreeMap::new();
        members.insert("n1".to_string(), p);
        members.insert("n2".to_string(), replica("n2", 0x4000, 0x3f00));
        members.insert("n3".to_string(), replica("n3", 0x3000, 0x3000));
        let obs_members = members.keys().map(|n| (n.clone(), MemberObservation::fresh())).collect();
        let l = lease("n1", 5);
        World {
            view: ClusterView {
                cluster: Some(record),
                leader: Some(l.clone()),
                coordinator: None,
                members,
                ..Default::default()
            },
            obs: Observations {
                now_wall_ms: 1_000_000,
                leader: LeaseState::Held { lease: l, unchanged_for: MS(500) },
                members: obs_members,
                step_age: None,
                lock: LockStatus::Held,
                agent: None,
            },
            config: CoordinatorConfig::default(),
        }
    }

    /// The primary n1 died: its lease observed unchanged for a full duration, heartbeat stale.
    fn primary_dead() -> World {
        let mut w = World::healthy();
        w.obs.leader = LeaseState::Expired(lease("n1", 5));
        w.set_live("n1", Liveness::Stale { unchanged_for: MS(12_000) });
        w
    }

    fn record(&mut self) -> &mut ClusterRecord {
        self.view.cluster.as_mut().unwrap()
    }

    fn member(&mut self, name: &str) -> &mut MemberStatus {
        self.view.members.get_mut(name).unwrap()
    }

    fn set_live(&mut self, name: &str, liveness: Liveness) {
        self.obs.members.get_mut(name).unwrap().liveness = liveness;
    }

    fn in_transition(mut self, kind: TransitionKind, step: TransitionStep) -> World {
        let t = Transition {
            kind,
            step,
            term: 6,
            from_term: 5,
            old_primary: Some("n1".into()),
            candidate: "n2".into(),
            reason: "test".into(),
            started_ms: 900_000,
            step_times_ms: BTreeMap::from([("term_bumped".to_string(), 900_000)]),
            forced: false,
            fence: None,
            fenced_by: None,
            final_lsn: None,
            promote_lsn: None,
        };
        let r = self.record();
        r.term = 6;
        r.primary = if step >= TransitionStep::Designated { Some("n2".into()) } else { None };
        r.transition = Some(t);
        self.obs.step_age = Some(MS(100));
        self
    }

    /// This run's probe of `member`'s agent: `refused` consecutive refusals over `for_ms`.
    fn probed(mut self, member: &str, reach: AgentReach, refused: u32, for_ms: u64) -> World {
        self.obs.agent = Some(AgentSighting { member: member.into(), reach, refused_probes: refused, refused_for: MS(for_ms) });
        self
    }

    fn transition(&mut self) -> &mut Transition {
        self.record().transition.as_mut().unwrap()
    }

    fn request(&mut self, action: RequestAction, candidate: Option<&str>, force: bool) {
        self.record().request =
            Some(ManualRequest { id: "req-1".into(), action, candidate: candidate.map(String::from), force, requested_ms: 0 });
    }

    fn eval(&self) -> Decision {
        evaluate(&self.view, &self.obs, &self.config)
    }
}

/// What a row expects.
enum Expect {
    Idle(&'static str),
    Wait(&'static str),
    Blocked(&'static str),
    /// A new transition of this kind with this candidate and old primary.
    Begin {
        kind: TransitionKind,
        candidate: &'static str,
        old: Option<&'static str>,
        reason: &'static str,
    },
    /// A request answered (accepted?) without a transition; reason fragment.
    Answer {
        accepted: bool,
        paused: Option<bool>,
        reason: &'static str,
    },
    Fence {
        member: &'static str,
        pending: Option<&'static str>,
    },
    SkipFencer(&'static str),
    MarkFenced(&'static str),
    ChangeCandidate(&'static str),
    /// Reason fragment.
    ContinueAsFailover(&'static str),
    /// The lease of this owner is released on its behalf.
    BreakLease(&'static str),
    Designate,
    MarkPromoted(Option<Lsn>),
    MarkFollowed,
    Finish {
        new_primary: &'static str,
    },
}

fn check(name: &str, d: &Decision, expect: &Expect) {
    let ctx = format!("situation `{name}`: got {d:#?}");
    let reason_has = |frag: &str| assert!(d.reason.contains(frag), "{ctx}\nreason should contain {frag:?}");
    match expect {
        Expect::Idle(r) => {
            assert_eq!(d.verdict, Verdict::Idle, "{ctx}");
            reason_has(r);
        }
        Expect::Wait(r) => {
            assert_eq!(d.verdict, Verdict::Wait, "{ctx}");
            reason_has(r);
        }
        Expect::Blocked(r) => {
            assert_eq!(d.verdict, Verdict::Blocked, "{ctx}");
            reason_has(r);
        }
        other => {
            let Verdict::Act(a) = &d.verdict else { panic!("{ctx}\nexpected one action") };
            match (other, a) {
                (Expect::Begin { kind, candidate, old, reason }, Action::Begin { transition, .. }) => {
                    assert_eq!(transition.kind, *kind, "{ctx}");
                    assert_eq!(transition.candidate, *candidate, "{ctx}");
                    assert_eq!(transition.old_primary.as_deref(), *old, "{ctx}");
                    assert_eq!(transition.step, TransitionStep::TermBumped, "{ctx}");
                    reason_has(reason);
                }
                (Expect::Answer { accepted, paused: p, reason }, Action::Answer { outcome, paused }) => {
                    assert_eq!(outcome.accepted, *accepted, "{ctx}");
                    assert_eq!(paused, p, "{ctx}");
                    assert!(outcome.reason.contains(reason), "{ctx}");
                }
                (Expect::Fence { member: m, pending: p }, Action::Fence { member, pending, .. }) => {
                    assert_eq!(member, m, "{ctx}");
                    // Compared in the stored form, `fencer:handle`.
                    assert_eq!(pending.as_ref().map(|h| h.to_string()).as_deref(), *p, "{ctx}");
                }
                (Expect::SkipFencer(f), Action::SkipFencer { fencer }) => assert_eq!(fencer, f, "{ctx}"),
                (Expect::MarkFenced(by), Action::MarkFenced { by: b, .. }) => assert!(b.contains(by), "{ctx}"),
                (Expect::ChangeCandidate(c), Action::ChangeCandidate { candidate, .. }) => assert_eq!(candidate, c, "{ctx}"),
                (Expect::ContinueAsFailover(why), Action::ContinueAsFailover { why: w }) => assert!(w.contains(why), "{ctx}"),
                (Expect::BreakLease(owner), Action::BreakLease { lease }) => assert_eq!(lease.owner, *owner, "{ctx}"),
                (Expect::Designate, Action::Designate) => {}
                (Expect::MarkPromoted(l), Action::MarkPromoted { lsn }) => assert_eq!(lsn, l, "{ctx}"),
                (Expect::MarkFollowed, Action::MarkFollowed { .. }) => {}
                (Expect::Finish { new_primary }, Action::Finish(h)) => {
                    assert_eq!(h.new_primary, *new_primary, "{ctx}");
                    assert_eq!(h.term, 6, "{ctx}");
                }
                _ => panic!("{ctx}\nunexpected action kind"),
            }
        }
    }
}

fn situations() -> Vec<(&'static str, World, Expect)> {
    use Expect::*;
    use TransitionKind::{Failover as FO, Switchover as SO};
    use TransitionStep::*;
    let mut rows: Vec<(&'static str, World, Expect)> = Vec::new();

    rows.push(("healthy primary", World::healthy(), Idle("primary n1 healthy")));

    rows.push((
        "no cluster record",
        {
            let mut w = World::healthy();
            w.view.cluster = None;
            w
        },
        Idle("no cluster record"),
    ));

    rows.push((
        "stale coordinator: another holds the lock",
        {
            let mut w = World::primary_dead();
            w.obs.lock = LockStatus::Other { owner: "lambda-old".into() };
            w
        },
        Idle("lambda-old holds the coordinator lock"),
    ));

    rows.push((
        "primary lease expired -> failover to most advanced",
        World::primary_dead(),
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "unchanged for at least 10000 ms" },
    ));

    rows.push((
        "primary lease released and heartbeat stale",
        {
            let mut w = World::primary_dead();
            w.obs.leader = LeaseState::Free(LeaderLease { released: true, ..lease("n1", 5) });
            w
        },
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "holds no leader lease and its heartbeat is stale" },
    ));

    rows.push((
        "primary lease absent and primary reports itself demoted",
        {
            let mut w = World::healthy();
            w.obs.leader = LeaseState::Absent;
            w.member("n1").role = Role::Replica;
            w
        },
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "reports itself in recovery" },
    ));

    rows.push((
        "primary lease absent, primary heartbeat not yet judged",
        {
            let mut w = World::healthy();
            w.obs.leader = LeaseState::Absent;
            w.set_live("n1", Liveness::Unknown);
            w
        },
        Wait("watching its heartbeat"),
    ));

    rows.push((
        "replica's sighting proves the lease expired (fencing on)",
        {
            let mut w = World::healthy();
            w.set_live("n1", Liveness::Stale { unchanged_for: MS(5000) });
            w.member("n3").leader_seen = Some(LeaseSighting { term: 5, rvn: "rvn-n1-5".into(), unchanged_ms: 10_500 });
            w
        },
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "n3 observed the leader lease" },
    ));

    rows.push((
        "replica's sighting is not enough with fencing off: the coordinator keeps watching itself",
        {
            let mut w = World::healthy();
            w.config.fencing = FencingPolicy::Off;
            w.member("n3").leader_seen = Some(LeaseSighting { term: 5, rvn: "rvn-n1-5".into(), unchanged_ms: 10_500 });
            w
        },
        Wait("watches it lapse itself"),
    ));

    rows.push((
        "sighting of an older rvn proves nothing",
        {
            let mut w = World::healthy();
            w.member("n3").leader_seen = Some(LeaseSighting { term: 5, rvn: "an-older-rvn".into(), unchanged_ms: 60_000 });
            w
        },
        Idle("healthy"),
    ));

    rows.push((
        "primary reports Postgres down for longer than the stale threshold",
        {
            let mut w = World::healthy();
            w.member("n1").pg_running = false;
            w.obs.members.get_mut("n1").unwrap().pg_down_for = Some(MS(5000));
            w
        },
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "reports Postgres down" },
    ));

    rows.push((
        "primary reports Postgres down only briefly",
        {
            let mut w = World::healthy();
            w.member("n1").pg_running = false;
            w.obs.members.get_mut("n1").unwrap().pg_down_for = Some(MS(1000));
            w
        },
        Idle("healthy"),
    ));

    rows.push((
        "paused cluster with a dead primary",
        {
            let mut w = World::primary_dead();
            w.record().paused = true;
            w
        },
        Idle("paused"),
    ));

    rows.push((
        "most advanced is nofailover -> next best",
        {
            let mut w = World::primary_dead();
            w.member("n2").tags.nofailover = true;
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "candidate n3" },
    ));

    rows.push((
        "lagging candidate beyond maximum_lag_on_failover, leader nofailover -> blocked",
        {
            let mut w = World::primary_dead();
            w.member("n2").tags.nofailover = true;
            w.member("n3").receive_lsn = lsn(0x1000);
            w.member("n3").replay_lsn = lsn(0x1000);
            w.record().config.maximum_lag_on_failover = 0x800;
            w
        },
        Blocked("n3: 12288 bytes behind the most advanced replica"),
    ));

    rows.push((
        "lagging replica skipped, one within the limit chosen",
        {
            let mut w = World::primary_dead();
            w.record().config.maximum_lag_on_failover = 0x100;
            w.member("n2").receive_lsn = lsn(0x9000);
            w.member("n3").receive_lsn = lsn(0x8f80);
            w.member("n3").tags.priority = 10;
            w.member("n2").tags.nofailover = true;
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "candidate n3" },
    ));

    rows.push((
        "candidate on an older timeline is not eligible",
        {
            let mut w = World::primary_dead();
            w.member("n2").timeline = 2;
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "candidate n3" },
    ));

    rows.push((
        "synchronous mode: only the synchronous standby of the term",
        {
            let mut w = World::primary_dead();
            w.record().config.synchronous_mode = SyncMode::On;
            w.record().sync = Some(SyncState { term: 5, members: vec!["n3".into()], degraded: false });
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "candidate n3" },
    ));

    rows.push((
        "synchronous mode: sync state of an older term -> no candidate",
        {
            let mut w = World::primary_dead();
            w.record().config.synchronous_mode = SyncMode::Strict;
            w.record().sync = Some(SyncState { term: 4, members: vec!["n2".into(), "n3".into()], degraded: false });
            w
        },
        Blocked("not a synchronous standby of term 5"),
    ));

    rows.push((
        "synchronous mode on, degraded in this term: no automatic failover (RPO 0, as Patroni)",
        {
            let mut w = World::primary_dead();
            w.record().config.synchronous_mode = SyncMode::On;
            w.record().sync = Some(SyncState { term: 5, members: vec![], degraded: true });
            w
        },
        Blocked("not a synchronous standby of term 5"),
    ));

    rows.push((
        "no candidate: every replica stale or down",
        {
            let mut w = World::primary_dead();
            w.set_live("n2", Liveness::Stale { unchanged_for: MS(9000) });
            w.member("n3").pg_running = false;
            w
        },
        Blocked("no eligible candidate (n2: heartbeat stale for 9000 ms; n3: Postgres not running)"),
    ));

    rows.push((
        "a replica not yet observed -> wait before choosing",
        {
            let mut w = World::primary_dead();
            w.set_live("n3", Liveness::Unknown);
            w
        },
        Wait("watching heartbeats of n3"),
    ));

    rows.push((
        "tie on received LSN: replayed LSN decides",
        {
            let mut w = World::primary_dead();
            w.member("n3").receive_lsn = lsn(0x4000);
            w.member("n3").replay_lsn = lsn(0x4000);
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "candidate n3" },
    ));

    rows.push((
        "tie on LSNs: priority then name decide",
        {
            let mut w = World::primary_dead();
            for n in ["n2", "n3"] {
                w.member(n).receive_lsn = lsn(0x4000);
                w.member(n).replay_lsn = lsn(0x4000);
            }
            w.member("n3").tags.priority = 1;
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "candidate n3" },
    ));

    rows.push((
        "full tie: lowest name wins",
        {
            let mut w = World::primary_dead();
            for n in ["n2", "n3"] {
                w.member(n).receive_lsn = lsn(0x4000);
                w.member(n).replay_lsn = lsn(0x4000);
            }
            w
        },
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "candidate n2" },
    ));

    // Failover in progress, one row per step.
    rows.push((
        "in progress: term bumped -> fence old primary",
        World::primary_dead().in_transition(FO, TermBumped),
        Fence { member: "n1", pending: None },
    ));

    rows.push((
        "in progress: fencing pending -> ask the same fencer again",
        {
            let mut w = World::primary_dead().in_transition(FO, TermBumped);
            w.transition().fence = Some(FenceProgress {
                pending: Some(PendingFence { fencer: "ssm".into(), handle: "ssm:cmd-1".into() }),
                skip: vec![],
            });
            w
        },
        Fence { member: "n1", pending: Some("ssm:cmd-1") },
    ));

    rows.push((
        "in progress: fencing pending too long -> skip that fencer",
        {
            let mut w = World::primary_dead().in_transition(FO, TermBumped);
            w.transition().fence = Some(FenceProgress {
                pending: Some(PendingFence { fencer: "ssm".into(), handle: "ssm:cmd-1".into() }),
                skip: vec![],
            });
            w.obs.step_age = Some(MS(61_000));
            w
        },
        SkipFencer("ssm"),
    ));

    rows.push((
        "in progress, fencing off: lease not yet seen expired -> wait",
        {
            let mut w = World::primary_dead().in_transition(FO, TermBumped);
            w.config.fencing = FencingPolicy::Off;
            w.obs.leader = LeaseState::Held { lease: lease("n1", 5), unchanged_for: MS(3000) };
            w
        },
        Wait("fencing off: waiting for n1's lease"),
    ));

    rows.push((
        "in progress, fencing off: lease observed expired -> fenced",
        {
            let mut w = World::primary_dead().in_transition(FO, TermBumped);
            w.config.fencing = FencingPolicy::Off;
            w
        },
        MarkFenced("fencing off: lease of n1"),
    ));

    rows.push(("in progress: fenced -> designate candidate", World::primary_dead().in_transition(FO, Fenced), Designate));

    rows.push((
        "fenced, a replica not heard from since the fence -> wait for its final position (S4)",
        {
            let mut w = World::primary_dead().in_transition(FO, Fenced);
            w.obs.members.get_mut("n3").unwrap().changed_ago = Some(MS(900));
            w
        },
        Wait("waiting for the first heartbeat after the fence from n3"),
    ));

    rows.push((
        "in progress: fenced but candidate died -> choose another",
        {
            let mut w = World::primary_dead().in_transition(FO, Fenced);
            w.set_live("n2", Liveness::Stale { unchanged_for: MS(5000) });
            w
        },
        ChangeCandidate("n3"),
    ));

    rows.push((
        "switchover: candidate has not replayed the final LSN -> wait",
        {
            let mut w = World::healthy().in_transition(SO, Fenced);
            w.transition().final_lsn = lsn(0x5000);
            w
        },
        Wait("replay up to 0/5000"),
    ));

    rows.push((
        "switchover whose old primary's final LSN is unknown continues as a failover (S5)",
        World::healthy().in_transition(SO, Fenced),
        ContinueAsFailover("the final LSN of n1 is unknown"),
    ));

    rows.push((
        "switchover: candidate never received the final LSN within the promote timeout -> failover rules",
        {
            let mut w = World::healthy().in_transition(SO, Fenced);
            w.transition().final_lsn = lsn(0x5000);
            w.obs.step_age = Some(MS(30_000));
            w
        },
        ContinueAsFailover("did not receive up to n1's final LSN 0/5000"),
    ));

    rows.push((
        "switchover: candidate received the final LSN, replay slow past the timeout -> still wait",
        {
            let mut w = World::healthy().in_transition(SO, Fenced);
            w.transition().final_lsn = lsn(0x5000);
            w.member("n2").receive_lsn = lsn(0x5000);
            w.obs.step_age = Some(MS(60_000));
            w
        },
        Wait("replay up to 0/5000"),
    ));

    rows.push((
        "switchover whose candidate just became ineligible waits (a restart is brief)",
        {
            let mut w = World::healthy().in_transition(SO, Fenced);
            w.member("n2").pg_running = false;
            w
        },
        Wait("switchover: candidate n2 is not eligible yet (Postgres not running)"),
    ));

    rows.push((
        "switchover whose candidate stays ineligible past the promote timeout continues as a failover",
        {
            let mut w = World::healthy().in_transition(SO, Fenced);
            w.set_live("n2", Liveness::Stale { unchanged_for: MS(35_000) });
            w.obs.step_age = Some(MS(30_000));
            w
        },
        ContinueAsFailover("candidate n2 is not eligible"),
    ));

    rows.push((
        "a replica whose Postgres is down still bounds the lag with the position seen before (S4)",
        {
            let mut w = World::primary_dead();
            let n2 = w.member("n2");
            n2.pg_running = false;
            n2.role = Role::Unknown;
            n2.receive_lsn = None;
            n2.replay_lsn = None;
            w.obs.members.get_mut("n2").unwrap().last_replica_position = Some((3, Lsn(0x20_0000)));
            w
        },
        Blocked("n3: 2084864 bytes behind the most advanced replica"),
    ));

    rows.push((
        "a stale replica's last reported position still bounds the candidate's lag (S4)",
        {
            let mut w = World::primary_dead();
            w.member("n2").receive_lsn = lsn(0x20_0000);
            w.set_live("n2", Liveness::Stale { unchanged_for: MS(5000) });
            w
        },
        Blocked("n3: 2084864 bytes behind the most advanced replica"),
    ));

    rows.push((
        "a replica on an old timeline does not count as most advanced",
        {
            let mut w = World::primary_dead();
            w.member("n2").receive_lsn = lsn(0x20_0000);
            w.member("n2").timeline = 2;
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "unchanged for at least 10000 ms" },
    ));

    // Early failover on evidence (docs/design.md section 4).
    rows.push((
        "primary's agent refused twice over a second -> failover before the lease runs out",
        World::healthy().probed("n1", AgentReach::Refused, 2, 1000),
        Begin { kind: FO, candidate: "n2", old: Some("n1"), reason: "n1's agent refused 2 connections in a row over 1000 ms" },
    ));
    rows.push((
        "one refusal is no evidence yet: keep watching",
        World::healthy().probed("n1", AgentReach::Refused, 1, 0),
        Wait("n1's agent refused 1 connection(s) over 0 ms; failing over once that lasts 1000 ms"),
    ));
    rows.push((
        "refusals for less than agent_down_after_ms are no evidence yet (an agent restart)",
        World::healthy().probed("n1", AgentReach::Refused, 3, 999),
        Wait("n1's agent refused 3 connection(s) over 999 ms"),
    ));
    rows.push((
        "an agent that does not answer (timeout, partition) is no evidence",
        World::healthy().probed("n1", AgentReach::NoAnswer, 0, 0),
        Idle("primary n1 healthy"),
    ));
    rows.push((
        "refusals are no evidence with fencing off: nothing would confirm",
        {
            let mut w = World::healthy().probed("n1", AgentReach::Refused, 5, 5000);
            w.config.fencing = FencingPolicy::Off;
            w
        },
        Idle("primary n1 healthy"),
    ));
    rows.push((
        "refusals are no evidence with early failover off",
        {
            let mut w = World::healthy().probed("n1", AgentReach::Refused, 5, 5000);
            w.config.agent_down_after_ms = 0;
            w
        },
        Idle("primary n1 healthy"),
    ));
    rows.push((
        "fenced while its lease runs and its agent refuses -> release the lease first",
        {
            let mut w = World::healthy().in_transition(FO, Fenced).probed("n1", AgentReach::Refused, 1, 0);
            w.transition().fenced_by = Some("fence command succeeded: stopped".into());
            w
        },
        BreakLease("n1"),
    ));
    rows.push((
        "fenced while its lease runs, its agent answers -> designate; the candidate waits for the lease",
        World::healthy().in_transition(FO, Fenced).probed("n1", AgentReach::Answered, 0, 0),
        Designate,
    ));
    rows.push((
        "fenced, agent refuses, lease already released -> designate",
        {
            let mut w = World::healthy().in_transition(FO, Fenced).probed("n1", AgentReach::Refused, 1, 0);
            w.obs.leader = LeaseState::Free(LeaderLease { released: true, ..lease("n1", 5) });
            w
        },
        Designate,
    ));
    rows.push((
        "fenced, but the refusing agent is another member's -> designate",
        World::healthy().in_transition(FO, Fenced).probed("n3", AgentReach::Refused, 1, 0),
        Designate,
    ));

    rows.push((
        "switchover: candidate caught up -> designate",
        {
            let mut w = World::healthy().in_transition(SO, Fenced);
            w.transition().final_lsn = lsn(0x5000);
            w.member("n2").replay_lsn = lsn(0x5000);
            w.member("n2").receive_lsn = lsn(0x5000);
            w
        },
        Designate,
    ));

    rows.push((
        "in progress: designated, not yet read-write -> wait",
        {
            let mut w = World::primary_dead().in_transition(FO, Designated);
            w.obs.leader = LeaseState::Absent;
            w
        },
        Wait("waiting for n2 to report read-write in term 6"),
    ));

    rows.push((
        "in progress (left by a dead coordinator): designated and now read-write -> promoted",
        {
            let mut w = World::primary_dead().in_transition(FO, Designated);
            w.obs.step_age = Some(MS(0));
            w.obs.leader = LeaseState::Held { lease: lease("n2", 6), unchanged_for: MS(0) };
            let n2 = w.member("n2");
            n2.role = Role::Primary;
            n2.term = 6;
            n2.write_lsn = lsn(0x4100);
            w
        },
        MarkPromoted(lsn(0x4100)),
    ));

    rows.push((
        "in progress: a live candidate overtaken after its designation -> new failover from it (S4)",
        {
            let mut w = World::primary_dead().in_transition(FO, Designated);
            w.obs.leader = LeaseState::Absent;
            w.obs.step_age = Some(MS(31_000));
            // n3's position reached the store late: 2 MiB beyond n2's.
            w.member("n3").receive_lsn = lsn(0x5000 + 0x20_0000);
            w
        },
        Begin {
            kind: FO,
            candidate: "n3",
            old: Some("n2"),
            reason: "did not report read-write within 31000 ms and is 2101248 bytes behind",
        },
    ));
    rows.push((
        "in progress: a live candidate overtaken, within the promote timeout -> wait",
        {
            let mut w = World::primary_dead().in_transition(FO, Designated);
            w.obs.leader = LeaseState::Absent;
            w.obs.step_age = Some(MS(5_000));
            w.member("n3").receive_lsn = lsn(0x5000 + 0x20_0000);
            w
        },
        Wait("waiting for n2 to report read-write in term 6"),
    ));

    rows.push((
        "in progress: designated candidate died -> new failover from it",
        {
            let mut w = World::primary_dead().in_transition(FO, Designated);
            w.obs.leader = LeaseState::Absent;
            w.obs.step_age = Some(MS(31_000));
            w.set_live("n2", Liveness::Stale { unchanged_for: MS(20_000) });
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n2"), reason: "designated candidate n2 did not report read-write" },
    ));

    rows.push((
        "in progress: promoted -> tell the others to follow",
        World::primary_dead().in_transition(FO, Promoted),
        MarkFollowed,
    ));

    rows.push((
        "in progress: followed -> history and finish",
        World::primary_dead().in_transition(FO, Followed),
        Finish { new_primary: "n2" },
    ));

    // Manual requests.
    rows.push((
        "manual failover to a nofailover member is refused",
        {
            let mut w = World::healthy();
            w.member("n3").tags.nofailover = true;
            w.request(RequestAction::Failover, Some("n3"), false);
            w
        },
        Answer { accepted: false, paused: None, reason: "candidate n3 is not eligible: tagged nofailover" },
    ));

    rows.push((
        "manual failover to an ineligible member with force",
        {
            let mut w = World::healthy();
            w.member("n3").tags.nofailover = true;
            w.request(RequestAction::Failover, Some("n3"), true);
            w
        },
        Begin { kind: FO, candidate: "n3", old: Some("n1"), reason: "manual failover requested (req-1), forced" },
    ));

    rows.push((
        "manual failover to an unknown member is refused",
        {
            let mut w = World::healthy();
            w.request(RequestAction::Failover, Some("n9"), true);
            w
        },
        Answer { accepted: false, paused: None, reason: "n9 is not a member" },
    ));

    rows.push((
        "manual switchover without candidate picks the best",
        {
            let mut w = World::healthy();
            w.request(RequestAction::Switchover, None, false);
            w
        },
        Begin { kind: SO, candidate: "n2", old: Some("n1"), reason: "manual switchover requested" },
    ));

    rows.push((
        "manual switchover with a dead primary is refused",
        {
            let mut w = World::primary_dead();
            w.request(RequestAction::Switchover, Some("n2"), false);
            w
        },
        Answer { accepted: false, paused: None, reason: "switchover needs a healthy primary" },
    ));

    rows.push((
        "manual failover while paused is refused",
        {
            let mut w = World::healthy();
            w.record().paused = true;
            w.request(RequestAction::Failover, None, false);
            w
        },
        Answer { accepted: false, paused: None, reason: "paused" },
    ));

    rows.push((
        "manual request before heartbeats were observed -> wait, not refuse",
        {
            let mut w = World::healthy();
            w.set_live("n2", Liveness::Unknown);
            w.request(RequestAction::Failover, Some("n2"), false);
            w
        },
        Wait("watching heartbeats of n2 before acting on request req-1"),
    ));

    rows.push((
        "pause request",
        {
            let mut w = World::healthy();
            w.request(RequestAction::Pause, None, false);
            w
        },
        Answer { accepted: true, paused: Some(true), reason: "paused" },
    ));

    rows.push((
        "resume request during a transition is answered at once",
        {
            let mut w = World::primary_dead().in_transition(FO, Designated);
            w.record().paused = true;
            w.request(RequestAction::Resume, None, false);
            w
        },
        Answer { accepted: true, paused: Some(false), reason: "resumed" },
    ));

    rows.push((
        "failover request during a transition is refused",
        {
            let mut w = World::primary_dead().in_transition(FO, Fenced);
            w.request(RequestAction::Failover, Some("n3"), false);
            w
        },
        Answer { accepted: false, paused: None, reason: "in progress" },
    ));

    rows
}

#[test]
fn evaluate_situations() {
    let rows = situations();
    assert!(rows.len() >= 25, "only {} situations", rows.len());
    let mut names = std::collections::BTreeSet::new();
    for (name, world, expect) in &rows {
        assert!(names.insert(*name), "duplicate situation name {name}");
        check(name, &world.eval(), expect);
    }
}

#[test]
fn new_term_exceeds_record_and_lease_terms() {
    let mut w = World::primary_dead();
    // A lease left with a higher term than the record (e.g. a lease written by an older tool).
    w.view.leader = Some(lease("n1", 9));
    let d = w.eval();
    let Verdict::Act(Action::Begin { transition, .. }) = &d.verdict else { panic!("{d:?}") };
    assert_eq!(transition.term, 10);
    assert_eq!(transition.from_term, 5);
}

#[test]
fn a_stored_term_without_successor_blocks_instead_of_wrapping() {
    let mut w = World::primary_dead();
    w.view.leader = Some(lease("n1", u64::MAX));
    let d = w.eval();
    assert_eq!(d.verdict, Verdict::Blocked, "{d:?}");
    assert!(d.reason.contains("no term after 18446744073709551615"), "{}", d.reason);
    w.view.leader = Some(lease("n1", 5));
    w.record().term = u64::MAX;
    w.request(RequestAction::Failover, None, false);
    let d = w.eval();
    let Verdict::Act(Action::Answer { outcome, .. }) = &d.verdict else { panic!("{d:?}") };
    assert!(!outcome.accepted && outcome.reason.contains("stored term is corrupt"), "{outcome:?}");
}

#[test]
fn refusals_and_decisions_name_every_reason() {
    let mut w = World::primary_dead();
    w.member("n2").tags.nofailover = true;
    w.member("n3").timeline = 1;
    let d = w.eval();
    assert_eq!(d.verdict, Verdict::Blocked);
    assert!(d.reason.contains("n2: tagged nofailover"), "{}", d.reason);
    assert!(d.reason.contains("n3: on timeline 1 behind the current 3"), "{}", d.reason);
}

#[test]
fn only_a_hosted_coordinator_whose_agent_is_gone_loses_its_lock() {
    let locked_by = |owner: &str| {
        let mut w = World::healthy().probed("n1", AgentReach::Refused, 2, 1000);
        w.obs.lock = LockStatus::Other { owner: owner.into() };
        w.view.coordinator =
            Some(LeaderLease { owner: owner.into(), term: 3, rvn: "lock-rvn".into(), lease_ms: 10_000, released: false });
        w
    };
    let d = locked_by("agent-n1-0a1b2c3d").eval();
    match d.action() {
        Some(Action::BreakCoordinatorLock { lock }) => assert_eq!(lock.rvn, "lock-rvn", "{d:#?}"),
        other => panic!("{other:?}: {d:#?}"),
    }
    assert!(d.reason.contains("hosted by n1's agent, which refused 2 connections"), "{d:#?}");
    // A Lambda's lock, another member's coordinator, too few refusals: wait for the lock.
    for (name, w) in [
        ("lambda", locked_by("lambda-5d9e")),
        ("other member's", locked_by("agent-n2-0a1b2c3d")),
        ("one refusal", locked_by("agent-n1-0a1b2c3d").probed("n1", AgentReach::Refused, 1, 0)),
    ] {
        assert_eq!(w.eval().verdict, Verdict::Idle, "{name}");
    }
}
