//! The coordinator's state machine over the in-memory store, with a scripted fencer and
//! minimal scripted agents (heartbeats, lease, promotion on designation), in virtual time:
//! full failovers, a crash after every step, racing coordinators, pending fencing, switchover.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::coordinator::{
    apply, evaluate, run_until_settled, Action, AgentProbe, AgentReach, AgentWaker, Coordinator, CoordinatorConfig, LockStatus,
    Outcome, WakeTarget, Watch,
};
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_core::{
    ClusterRecord, DynamicConfig, LeaderLease, LeaseClaim, LeaseName, Lsn, ManualClock, ManualRequest, MemberStatus, MemoryStore,
    PendingFence, RequestAction, Role, Store, TransitionKind, TransitionStep,
};

const CLUSTER: &str = "machine";

/// (member, term, pending handle) of one fence call.
type FenceCall = (String, u64, Option<String>);

/// A fencer that answers from a script (then confirms forever) and records every call.
#[derive(Clone, Default)]
struct ScriptedFencer {
    script: Arc<Mutex<Vec<FenceStatus>>>,
    calls: Arc<Mutex<Vec<FenceCall>>>,
}

impl ScriptedFencer {
    fn with(script: Vec<FenceStatus>) -> Self {
        ScriptedFencer { script: Arc::new(Mutex::new(script)), calls: Arc::default() }
    }
    fn calls(&self) -> Vec<FenceCall> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Fencer for ScriptedFencer {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn fence(&self, t: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        self.calls.lock().unwrap().push((t.member.clone(), t.term, pending.map(|p| p.handle.clone())));
        let mut s = self.script.lock().unwrap();
        if s.is_empty() {
            FenceStatus::Confirmed { detail: format!("{} stopped", t.member), lsn: Some(Lsn(0x5000)) }
        } else {
            s.remove(0)
        }
    }
}

/// Scripted agents: live members beat, the holder renews, the designated member takes the
/// lease for the record's term and turns primary; replicas replay everything.
struct Agents {
    store: Arc<MemoryStore>,
    members: BTreeMap<String, MemberStatus>,
    alive: BTreeMap<String, bool>,
    held: Option<LeaderLease>,
}

impl Agents {
    async fn start(store: Arc<MemoryStore>) -> Agents {
        let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        record.term = 1;
        store.write_cluster(CLUSTER, None, &record).await.unwrap();
        let held = store.acquire_lease(CLUSTER, LeaseName::Leader, LeaseClaim::Free, "n1", 1, 10_000).await.unwrap();
        let mut members = BTreeMap::new();
        for (name, lsn) in [("n1", 0x5000), ("n2", 0x5000), ("n3", 0x4f00)] {
            let mut m = MemberStatus::new(name);
            m.api_url = format!("http://{name}:8008");
            m.pg_running = true;
            m.timeline = 1;
            m.term = 1;
            if name == "n1" {
                m.role = Role::Primary;
                m.write_lsn = Some(Lsn(lsn));
            } else {
                m.role = Role::Replica;
                m.receive_lsn = Some(Lsn(lsn));
                m.replay_lsn = Some(Lsn(lsn));
            }
            members.insert(name.to_string(), m);
        }
        let alive = members.keys().map(|n| (n.clone(), true)).collect();
        let mut a = Agents { store, members, alive, held: Some(held) };
        a.tick().await;
        a
    }

    fn kill(&mut self, name: &str) {
        self.alive.insert(name.into(), false);
        if self.held.as_ref().is_some_and(|l| l.owner == name) {
            self.held = None;
        }
    }

    async fn tick(&mut self) {
        let record = self.store.read_cluster(CLUSTER).await.unwrap().unwrap();
        if let Some(h) = &self.held {
            if record.primary.as_deref() == Some(h.owner.as_str()) {
                self.held = self.store.renew_lease(CLUSTER, LeaseName::Leader, h).await.ok();
            } else {
                // Not designated any more: release and demote (what a live old primary does).
                let _ = self.store.release_lease(CLUSTER, LeaseName::Leader, h).await;
                let m = self.members.get_mut(&h.owner).unwrap();
                m.role = Role::Replica;
                self.held = None;
            }
        }
        if let Some(p) = record.primary.clone() {
            let designated_alive = self.alive[&p];
            let holds = self.held.as_ref().is_some_and(|l| l.owner == p && l.term == record.term);
            if designated_alive && !holds {
                let current = self.store.read_lease(CLUSTER, LeaseName::Leader).await.unwrap();
                // The scripted candidate takes over at once: these tests are about the
                // coordinator, the agents' own lease waiting is tested with the agent.
                let claim = match &current {
                    Some(l) if !l.is_free() => LeaseClaim::Takeover { observed_rvn: &l.rvn },
                    _ => LeaseClaim::Free,
                };
                if let Ok(l) = self.store.acquire_lease(CLUSTER, LeaseName::Leader, claim, &p, record.term, 10_000).await {
                    self.held = Some(l);
                    let m = self.members.get_mut(&p).unwrap();
                    m.role = Role::Primary;
                    m.timeline += 1;
                    m.write_lsn = m.replay_lsn;
                }
            }
        }
        for (name, m) in self.members.iter_mut() {
            if !self.alive[name] {
                continue;
            }
            m.seq += 1;
            m.term = record.term;
            self.store.put_member(CLUSTER, m).await.unwrap();
        }
    }
}

fn config() -> CoordinatorConfig {
    CoordinatorConfig { max_steps_per_run: 1, ..CoordinatorConfig::default() }
}

struct Sim {
    clock: ManualClock,
    store: Arc<MemoryStore>,
    agents: Agents,
}

impl Sim {
    async fn new() -> Sim {
        let store = Arc::new(MemoryStore::new());
        let agents = Agents::start(store.clone()).await;
        Sim { clock: ManualClock::new(1_700_000_000_000), store, agents }
    }

    fn coordinator(&self, owner: &str, fencer: ScriptedFencer) -> Coordinator<Arc<MemoryStore>, ScriptedFencer, ManualClock> {
        Coordinator::new(self.store.clone(), fencer, self.clock.clone(), config(), owner)
    }

    /// One second of virtual time: agents beat, then one coordinator run.
    async fn second(
        &mut self,
        c: &mut Coordinator<Arc<MemoryStore>, ScriptedFencer, ManualClock>,
    ) -> pgdaemon_core::coordinator::RunReport {
        self.clock.advance(Duration::from_secs(1));
        self.agents.tick().await;
        c.run_once(CLUSTER).await
    }

    async fn record(&self) -> ClusterRecord {
        self.store.read_cluster(CLUSTER).await.unwrap().unwrap()
    }
}

async fn assert_failed_over_to_n2(sim: &Sim) {
    let r = sim.record().await;
    assert_eq!(r.primary.as_deref(), Some("n2"), "{r:#?}");
    assert_eq!(r.term, 2, "{r:#?}");
    assert!(r.transition.is_none(), "{r:#?}");
    let history = sim.store.read_history(CLUSTER).await.unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    let h = &history[0];
    assert_eq!((h.term, h.old_primary.as_deref(), h.new_primary.as_str()), (2, Some("n1"), "n2"));
    assert_eq!(h.lsn, Some(Lsn(0x5000)));
    for step in ["term_bumped", "fenced", "designated", "promoted", "followed"] {
        assert!(h.step_ms.contains_key(step), "history lacks step {step}: {h:#?}");
    }
    let lease = sim.store.read_lease(CLUSTER, LeaseName::Leader).await.unwrap().unwrap();
    assert_eq!((lease.owner.as_str(), lease.term), ("n2", 2));
}

#[tokio::test]
async fn healthy_cluster_stays_untouched() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::default();
    let mut c = sim.coordinator("c1", fencer.clone());
    for _ in 0..30 {
        let r = sim.second(&mut c).await;
        assert_eq!(r.outcome, Outcome::Idle, "{r:#?}");
        assert!(r.settled());
    }
    assert!(fencer.calls().is_empty());
    assert_eq!(sim.record().await.term, 1);
}

#[tokio::test]
async fn primary_death_fails_over_through_every_step() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::default();
    let mut c = sim.coordinator("c1", fencer.clone());
    sim.second(&mut c).await;
    sim.agents.kill("n1");
    let mut steps = Vec::new();
    for _ in 0..60 {
        let r = sim.second(&mut c).await;
        steps.extend(r.steps.clone());
        if sim.record().await.transition.is_none() && sim.record().await.term == 2 {
            break;
        }
    }
    assert_failed_over_to_n2(&sim).await;
    // Fenced exactly once, for the new term, before anything was designated.
    assert_eq!(fencer.calls(), vec![("n1".to_string(), 2, None)]);
    assert_eq!(steps.len(), 6, "{steps:#?}");
    assert!(steps[0].starts_with("failover: leader lease of n1"), "{steps:#?}");
}

#[tokio::test]
async fn crash_after_every_step_is_resumed_by_a_new_coordinator() {
    // Kill the coordinator after its k-th recorded step (k = 1..=6), without releasing the lock;
    // a new coordinator (new owner, empty memory) must finish the same failover.
    for crash_after in 1..=6usize {
        let mut sim = Sim::new().await;
        let fencer = ScriptedFencer::default();
        let mut c = sim.coordinator("first", fencer.clone());
        sim.second(&mut c).await;
        sim.agents.kill("n1");
        let mut taken = 0;
        for _ in 0..60 {
            let r = sim.second(&mut c).await;
            taken += r.steps.len();
            if taken >= crash_after {
                break;
            }
        }
        assert_eq!(taken, crash_after, "crash_after={crash_after}");
        drop(c);
        let mut next = sim.coordinator("second", fencer.clone());
        for _ in 0..60 {
            sim.second(&mut next).await;
            let r = sim.record().await;
            if r.transition.is_none() && r.term == 2 {
                break;
            }
        }
        assert_failed_over_to_n2(&sim).await;
        // Fencing is idempotent; it is never reported for another term or member.
        assert!(fencer.calls().iter().all(|(m, t, _)| m == "n1" && *t == 2), "{:?}", fencer.calls());
    }
}

#[tokio::test]
async fn two_coordinators_racing_cannot_both_act() {
    let mut sim = Sim::new().await;
    let fa = ScriptedFencer::default();
    let fb = ScriptedFencer::default();
    let mut a = sim.coordinator("a", fa.clone());
    let mut b = sim.coordinator("b", fb.clone());
    sim.second(&mut a).await;
    sim.agents.kill("n1");
    for _ in 0..40 {
        let ra = sim.second(&mut a).await;
        let rb = b.run_once(CLUSTER).await;
        assert_ne!(ra.outcome, Outcome::NotInCharge, "{ra:#?}");
        assert_eq!(rb.outcome, Outcome::NotInCharge, "{rb:#?}");
        assert!(rb.steps.is_empty());
    }
    assert_failed_over_to_n2(&sim).await;
    assert!(fb.calls().is_empty());
    assert_eq!(fa.calls().len(), 1);

    // Without the lock, the record's compare-and-set still lets only one of two concurrent
    // decisions through.
    let mut sim = Sim::new().await;
    let mut c = sim.coordinator("c", ScriptedFencer::default());
    sim.second(&mut c).await;
    sim.agents.kill("n1");
    let view = sim.store.read_view(CLUSTER).await.unwrap();
    let mut w1 = Watch::new();
    let mut w2 = Watch::new();
    let cfg = CoordinatorConfig::default();
    let t0 = Duration::from_secs(100);
    let stale = cfg.stale_after(&DynamicConfig::default());
    for w in [&mut w1, &mut w2] {
        w.observe(&view, t0, stale, 0, LockStatus::Held);
    }
    // Both watched for 13 s, reading every second: n1 silent, n2/n3 beating, the lease unchanged.
    for s in 1..13 {
        sim.clock.advance(Duration::from_secs(1));
        sim.agents.tick().await;
        let v = sim.store.read_view(CLUSTER).await.unwrap();
        for w in [&mut w1, &mut w2] {
            w.observe(&v, t0 + Duration::from_secs(s), stale, 0, LockStatus::Held);
        }
    }
    sim.clock.advance(Duration::from_secs(1));
    sim.agents.tick().await;
    let view2 = sim.store.read_view(CLUSTER).await.unwrap();
    let o1 = w1.observe(&view2, t0 + Duration::from_secs(13), stale, 0, LockStatus::Held);
    let o2 = w2.observe(&view2, t0 + Duration::from_secs(13), stale, 0, LockStatus::Held);
    let d1 = evaluate(&view2, &o1, &cfg);
    let d2 = evaluate(&view2, &o2, &cfg);
    assert!(matches!(d1.action(), Some(Action::Begin { .. })), "{d1:#?}");
    assert!(matches!(d2.action(), Some(Action::Begin { .. })), "{d2:#?}");
    let rec = view2.cluster.clone().unwrap();
    let n1 = apply(&rec, d1.action().unwrap(), 0).unwrap();
    let n2 = apply(&rec, d2.action().unwrap(), 0).unwrap();
    let first = sim.store.write_cluster(CLUSTER, Some(rec.version), &n1).await;
    let second = sim.store.write_cluster(CLUSTER, Some(rec.version), &n2).await;
    assert!(first.is_ok());
    assert!(second.unwrap_err().is_conflict());
}

#[tokio::test]
async fn a_dead_coordinators_lock_is_taken_over_after_its_lease() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::default();
    let mut a = sim.coordinator("a", fencer.clone());
    sim.second(&mut a).await;
    drop(a);
    sim.agents.kill("n1");
    let mut b = sim.coordinator("b", fencer.clone());
    let mut not_in_charge = 0;
    for _ in 0..60 {
        let r = sim.second(&mut b).await;
        if r.outcome == Outcome::NotInCharge {
            not_in_charge += 1;
        }
        if sim.record().await.transition.is_none() && sim.record().await.term == 2 {
            break;
        }
    }
    // The lock lease is 10 s: b waited it out before acting.
    assert!((9..=11).contains(&not_in_charge), "{not_in_charge}");
    assert_failed_over_to_n2(&sim).await;
}

#[tokio::test]
async fn pending_fencing_is_rechecked_with_its_handle_and_survives_a_crash() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::with(vec![
        FenceStatus::Pending { handle: PendingHandle::new("scripted", "cmd-1"), detail: "SendCommand accepted".into() },
        FenceStatus::Pending { handle: PendingHandle::new("scripted", "cmd-1"), detail: "InProgress".into() },
    ]);
    let mut c = sim.coordinator("c1", fencer.clone());
    sim.second(&mut c).await;
    sim.agents.kill("n1");
    loop {
        let r = sim.second(&mut c).await;
        if r.outcome == Outcome::Waiting && r.reason.contains("pending") {
            break;
        }
        assert!(sim.clock.monotonic_secs() < 100, "{r:#?}");
    }
    let t = sim.record().await.transition.unwrap();
    assert_eq!(t.step, TransitionStep::TermBumped);
    // Stored as every version writes it: the handle prefixed with the fencer's name.
    assert_eq!(t.fence.unwrap().pending.unwrap(), PendingFence { fencer: "scripted".into(), handle: "scripted:cmd-1".into() });
    drop(c);
    let mut next = sim.coordinator("c2", fencer.clone());
    for _ in 0..60 {
        sim.second(&mut next).await;
        if sim.record().await.transition.is_none() {
            break;
        }
    }
    assert_failed_over_to_n2(&sim).await;
    let calls = fencer.calls();
    assert_eq!(calls[0].2, None);
    assert!(calls[1..].iter().all(|c| c.2.as_deref() == Some("cmd-1")), "{calls:?}");
}

#[tokio::test]
async fn unconfirmed_fencing_never_promotes() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::with((0..200).map(|_| FenceStatus::Failed { detail: "instance unreachable".into() }).collect());
    let mut c = sim.coordinator("c1", fencer.clone());
    sim.second(&mut c).await;
    sim.agents.kill("n1");
    let mut last = None;
    for _ in 0..60 {
        last = Some(sim.second(&mut c).await);
    }
    let r = sim.record().await;
    let t = r.transition.unwrap();
    assert_eq!(t.step, TransitionStep::TermBumped);
    assert_eq!(r.primary, None);
    let last = last.unwrap();
    assert_eq!(last.outcome, Outcome::Blocked);
    assert!(last.reason.contains("not confirmed: instance unreachable"), "{}", last.reason);
    assert!(sim.store.read_history(CLUSTER).await.unwrap().is_empty());
}

#[tokio::test]
async fn switchover_waits_for_catch_up_and_loses_nothing() {
    let mut sim = Sim::new().await;
    // The demotion reports the old primary's final LSN beyond what n2 has replayed.
    let fencer = ScriptedFencer::with(vec![FenceStatus::Confirmed { detail: "demoted".into(), lsn: Some(Lsn(0x6000)) }]);
    let mut c = sim.coordinator("c1", fencer.clone());
    for _ in 0..5 {
        sim.second(&mut c).await;
    }
    let mut r = sim.record().await;
    r.request = Some(ManualRequest {
        id: "s1".into(),
        action: RequestAction::Switchover,
        candidate: Some("n2".into()),
        force: false,
        requested_ms: 0,
    });
    sim.store.write_cluster(CLUSTER, Some(r.version), &r).await.unwrap();
    for _ in 0..5 {
        sim.second(&mut c).await;
    }
    let r = sim.record().await;
    let t = r.transition.clone().expect("switchover in progress");
    assert_eq!((t.kind, t.step, t.final_lsn), (TransitionKind::Switchover, TransitionStep::Fenced, Some(Lsn(0x6000))));
    assert!(r.last_request.as_ref().unwrap().accepted);
    // n2 catches up; only then is it designated.
    let n2 = sim.agents.members.get_mut("n2").unwrap();
    n2.replay_lsn = Some(Lsn(0x6000));
    n2.receive_lsn = Some(Lsn(0x6000));
    for _ in 0..10 {
        sim.second(&mut c).await;
    }
    let r = sim.record().await;
    assert!(r.transition.is_none(), "{r:#?}");
    assert_eq!(r.primary.as_deref(), Some("n2"));
    let h = sim.store.read_history(CLUSTER).await.unwrap();
    assert_eq!(h[0].kind, TransitionKind::Switchover);
    assert_eq!(h[0].lsn, Some(Lsn(0x6000)));
}

#[tokio::test]
async fn runner_loops_until_settled_within_budget() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::default();
    let mut c = sim.coordinator("c1", fencer.clone());
    sim.second(&mut c).await;
    sim.agents.kill("n1");
    // A single fresh look at a held lease says "healthy": the runner stops at once.
    let r = run_until_settled(&mut c, CLUSTER, Duration::from_secs(120), Duration::from_millis(500), |_| async {}).await;
    assert_eq!(r.outcome, Outcome::Idle, "{r:#?}");
    // Once the failover has begun, the runner takes it to the end.
    loop {
        let r = sim.second(&mut c).await;
        if !r.steps.is_empty() {
            break;
        }
        assert!(sim.clock.monotonic_secs() < 100, "{r:#?}");
    }
    // The agents only move when virtual time does, so the "sleep" advances the clock and ticks.
    let clock = sim.clock.clone();
    let agents =
        Arc::new(tokio::sync::Mutex::new(std::mem::replace(&mut sim.agents, Agents::start(Arc::new(MemoryStore::new())).await)));
    let report = run_until_settled(&mut c, CLUSTER, Duration::from_secs(120), Duration::from_millis(500), |d| {
        let clock = clock.clone();
        let agents = agents.clone();
        async move {
            clock.advance(d);
            agents.lock().await.tick().await;
        }
    })
    .await;
    assert!(report.settled(), "{report:#?}");
    assert_eq!(report.steps.len(), 5, "{report:#?}");
    sim.agents = Arc::try_unwrap(agents).ok().unwrap().into_inner();
    assert_failed_over_to_n2(&sim).await;
}

trait Secs {
    fn monotonic_secs(&self) -> u64;
}

impl Secs for ManualClock {
    fn monotonic_secs(&self) -> u64 {
        use pgdaemon_core::Clock;
        self.monotonic().as_secs()
    }
}

#[tokio::test]
async fn a_failover_emits_each_event_once_in_order() {
    use pgdaemon_core::events::{Collector, EventKind};
    let mut sim = Sim::new().await;
    let events = Arc::new(Collector::new());
    let mut c = sim.coordinator("c1", ScriptedFencer::default()).with_events(events.clone());
    // Two coordinators that do not hold the lock emit nothing.
    let mut idle = sim.coordinator("c2", ScriptedFencer::default()).with_events(events.clone());
    sim.second(&mut c).await;
    sim.second(&mut idle).await;
    assert!(events.drain().is_empty(), "a healthy start is the baseline, not news");
    sim.agents.kill("n1");
    for _ in 0..60 {
        sim.second(&mut c).await;
        sim.second(&mut idle).await;
        if sim.record().await.transition.is_none() && sim.record().await.term == 2 {
            break;
        }
    }
    assert_failed_over_to_n2(&sim).await;
    let got: Vec<(EventKind, Option<String>)> = events.drain().into_iter().map(|e| (e.kind, e.member)).collect();
    let transition: Vec<_> = got
        .iter()
        .filter(|(k, _)| !matches!(k, EventKind::MemberDown | EventKind::MemberUp | EventKind::RoleChanged))
        .cloned()
        .collect();
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        transition,
        vec![
            (EventKind::FailoverStarted, some("n2")),
            (EventKind::Fenced, some("n1")),
            (EventKind::Promoted, some("n2")),
            (EventKind::Finished, some("n2")),
        ],
        "{got:?}"
    );
    assert_eq!(got.iter().filter(|(k, m)| *k == EventKind::MemberDown && m.as_deref() == Some("n1")).count(), 1, "{got:?}");
    assert!(got.iter().any(|(k, m)| *k == EventKind::RoleChanged && m.as_deref() == Some("n2")), "{got:?}");
}

/// (member, reason, term, the record's step when the wake was sent).
type Wake = (String, String, u64, Option<TransitionStep>);

/// Records each wake with the step the stored record is at when it is called.
struct RecordingWaker {
    store: Arc<MemoryStore>,
    woken: Mutex<Vec<Wake>>,
}

impl AgentWaker for RecordingWaker {
    fn wake(&self, t: &WakeTarget) {
        // The memory store answers at once: read what the woken agent would find.
        let read = self.store.read_cluster(CLUSTER);
        let record = ready_now(read).unwrap().unwrap();
        let step = record.transition.map(|t| t.step);
        self.woken.lock().unwrap().push((t.member.clone(), t.reason.to_string(), t.term, step));
    }
}

/// Polls a future that must be ready at once (the memory store's).
fn ready_now<T>(fut: impl std::future::Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the memory store answered later"),
    }
}

#[tokio::test]
async fn the_members_are_woken_at_the_fence_the_designation_and_the_promotion() {
    let mut sim = Sim::new().await;
    let waker = Arc::new(RecordingWaker { store: sim.store.clone(), woken: Mutex::new(Vec::new()) });
    let mut c = sim.coordinator("c1", ScriptedFencer::default()).with_waker(waker.clone());
    sim.second(&mut c).await;
    assert!(waker.woken.lock().unwrap().is_empty(), "a healthy cluster wakes nobody");
    sim.agents.kill("n1");
    for _ in 0..60 {
        sim.second(&mut c).await;
        if sim.record().await.transition.is_none() && sim.record().await.term == 2 {
            break;
        }
    }
    assert_failed_over_to_n2(&sim).await;
    let woken = waker.woken.lock().unwrap().clone();
    let f = TransitionStep::Fenced;
    let d = TransitionStep::Designated;
    let p = TransitionStep::Promoted;
    assert_eq!(
        woken,
        vec![
            // The fencer's confirmation is recorded: the replicas publish their final positions.
            ("n2".to_string(), "fenced".to_string(), 2, Some(f)),
            ("n3".to_string(), "fenced".to_string(), 2, Some(f)),
            ("n2".to_string(), "designated".to_string(), 2, Some(d)),
            ("n1".to_string(), "designated".to_string(), 2, Some(d)),
            ("n3".to_string(), "designated".to_string(), 2, Some(d)),
            ("n1".to_string(), "promoted".to_string(), 2, Some(p)),
            ("n3".to_string(), "promoted".to_string(), 2, Some(p)),
        ]
    );
}

/// Refuses connections to the agents `Agents` has killed, answers the others.
struct ScriptedProbe {
    dead: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl AgentProbe for ScriptedProbe {
    async fn probe(&self, api_url: &str) -> AgentReach {
        let dead = self.dead.lock().unwrap();
        if dead.iter().any(|n| api_url == format!("http://{n}:8008")) {
            AgentReach::Refused
        } else {
            AgentReach::Answered
        }
    }
}

#[tokio::test]
async fn a_primary_whose_agent_is_gone_is_failed_over_before_its_lease_runs_out() {
    let mut sim = Sim::new().await;
    let fencer = ScriptedFencer::default();
    let dead = Arc::new(Mutex::new(Vec::new()));
    let mut c = sim.coordinator("c1", fencer.clone()).with_probe(Arc::new(ScriptedProbe { dead: dead.clone() }));
    sim.second(&mut c).await;
    sim.agents.kill("n1");
    dead.lock().unwrap().push("n1".to_string());
    let mut steps = Vec::new();
    let mut seconds = 0;
    while seconds < 60 && !(sim.record().await.transition.is_none() && sim.record().await.term == 2) {
        steps.extend(sim.second(&mut c).await.steps);
        seconds += 1;
    }
    assert_failed_over_to_n2(&sim).await;
    assert!(steps[0].starts_with("failover: n1's agent refused 2 connections in a row over 1000 ms"), "{steps:#?}");
    let released = steps.iter().position(|s| s.starts_with("released n1's leader lease")).expect("the lease was released");
    assert!(steps[released + 1].starts_with("designate n2"), "released right before the designation: {steps:#?}");
    // Refused at 1 s and 2 s, then one step a second: well within the 10 s lease.
    assert!(seconds <= 9, "took {seconds} s: {steps:#?}");
    assert_eq!(fencer.calls().len(), 1);
}

#[tokio::test]
async fn the_lock_of_a_coordinator_hosted_by_the_dead_primarys_agent_is_taken_over_at_once() {
    let mut sim = Sim::new().await;
    let dead = Arc::new(Mutex::new(Vec::new()));
    let probe = Arc::new(ScriptedProbe { dead: dead.clone() });
    // n1's agent hosts the coordinator holding the lock; n2's is waiting for it.
    let mut on_n1 = sim.coordinator("agent-n1-0a1b2c3d", ScriptedFencer::default()).with_probe(probe.clone());
    let mut on_n2 = sim.coordinator("agent-n2-4e5f6a7b", ScriptedFencer::default()).with_probe(probe);
    sim.second(&mut on_n1).await;
    assert_eq!(sim.second(&mut on_n2).await.outcome, Outcome::NotInCharge);
    sim.agents.kill("n1");
    dead.lock().unwrap().push("n1".to_string());
    let mut steps = Vec::new();
    let mut began = None;
    for second in 1..=60 {
        steps.extend(sim.second(&mut on_n2).await.steps);
        if began.is_none() && steps.iter().any(|s| s.starts_with("failover:")) {
            began = Some(second);
        }
        if sim.record().await.transition.is_none() && sim.record().await.term == 2 {
            break;
        }
    }
    assert_failed_over_to_n2(&sim).await;
    assert_eq!(steps[0], "released the coordinator lock of agent-n1-0a1b2c3d", "{steps:#?}");
    assert!(steps[1].starts_with("failover: n1's agent refused"), "{steps:#?}");
    // Refused at 1 s and 2 s: the failover begins right after, not after the 10 s lock lease
    // (one step a second here).
    assert!(began.is_some_and(|s| s <= 3), "began at {began:?} s: {steps:#?}");
}
