//! One simulated run: build the cluster from a seed, drive every actor and fault in virtual time,
//! check the invariants after every event, and report.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use pgdaemon_core::agent::{AgentIdentity, AgentRuntime};
use pgdaemon_core::coordinator::{Coordinator, CoordinatorConfig, FencingPolicy};
use pgdaemon_core::{
    ClusterRecord, DynamicConfig, ManualRequest, MemberTags, MemoryStore, RequestAction, Store, SyncMode, TransitionStep,
};

use crate::actors::{
    fence_chain, instance_id, trigger, AgentActor, CoordActor, FailsafeActor, SimFailsafePeers, WatchdogActor, FAILSAFE_EVERY,
    WATCHDOG_EVERY,
};
use crate::check::Checker;
use crate::faults::{script, FaultKind, FaultPlan, Target};
use crate::pgctl::{SimPgControl, PG_PORT};
use crate::rng::Rng;
use crate::simpg::SimPg;
use crate::store::{Caller, SimStore};
use crate::world::{
    run_now, Actor, ActorId, Broken, Counters, Event, Heal, Node, Shared, SimClock, StepEnd, Task, Us, World, MS, SEC,
};

pub const CLUSTER: &str = "sim";
/// Coordinator slots: the usual one and a concurrent second invocation.
const COORD_SLOTS: usize = 2;
/// EventBridge fires the coordinator once a minute.
const SCHEDULE_EVERY: Us = 60 * SEC;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub broken: Broken,
    /// Cluster size (default: drawn from the seed, 2 to 5).
    pub nodes: Option<usize>,
    /// Fencing policy (default: drawn from the seed, mostly `Required`).
    pub fencing: Option<FencingPolicy>,
    pub sync_mode: SyncMode,
    /// Failsafe mode (docs/failsafe.md) in the dynamic configuration (default: off; `None`:
    /// drawn from the seed, half the seeds).
    pub failsafe: Option<bool>,
    /// Number of faults (default: drawn from the seed, 1 to 10).
    pub faults: Option<usize>,
    /// After the last fault heals, a writable designated primary must exist within this long.
    pub liveness_bound: Us,
    /// Largest clock rate error injected (ppm). The design assumes < 1 %.
    pub max_drift_ppm: i64,
    pub trace_lines: usize,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Options {
            seed,
            broken: Broken::None,
            nodes: None,
            fencing: None,
            sync_mode: SyncMode::Off,
            failsafe: Some(false),
            faults: None,
            liveness_bound: 180 * SEC,
            max_drift_ppm: 10_000,
            trace_lines: 4000,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub seed: u64,
    pub nodes: usize,
    pub fencing: FencingPolicy,
    pub failsafe: bool,
    pub violation: Option<String>,
    /// The simulator itself failed (e.g. a future pending on something that is not virtual time).
    pub sim_error: Option<String>,
    pub trace: String,
    pub counters: Counters,
    /// Failover transition recorded (detection) to the candidate accepting writes, µs.
    pub detect_to_writable: Vec<Us>,
    /// No server accepted writes, until a different one did (the outage a client sees), µs.
    pub write_outages: Vec<Us>,
    /// Last fault healed to a writable primary, µs.
    pub recovery_after_heal: Option<Us>,
    pub sim_time: Us,
}

impl RunResult {
    pub fn failed(&self) -> bool {
        self.violation.is_some() || self.sim_error.is_some()
    }

    /// A safety invariant was violated (S1/S2, terms, S4, lost writes), as opposed to liveness
    /// (S5, no writable primary after the faults healed).
    pub fn safety_violation(&self) -> Option<&str> {
        self.violation.as_deref().filter(|v| !is_liveness(v))
    }

    pub fn liveness_violation(&self) -> Option<&str> {
        self.violation.as_deref().filter(|v| is_liveness(v))
    }
}

fn is_liveness(v: &str) -> bool {
    v.starts_with("S5") || v.starts_with("liveness")
}

enum SlotState {
    Down,
    Idle(Box<dyn Actor>),
    Busy(Task),
}

struct Slot {
    inc: u64,
    state: SlotState,
    hung: bool,
    deferred: Vec<Event>,
    wake_at: Option<Us>,
    /// Last poll returned Pending without a virtual-time wake: waiting on a waker.
    parked: bool,
}

/// Wakers of the actors: a wake-up (e.g. an async mutex released by another actor) queues the
/// actor to be polled again at the current instant.
struct ActorWaker {
    id: ActorId,
    woken: Arc<Mutex<Vec<ActorId>>>,
}

impl Wake for ActorWaker {
    fn wake(self: Arc<Self>) {
        self.woken.lock().unwrap().push(self.id);
    }
}

struct Sim {
    opts: Options,
    world: World,
    store: Arc<MemoryStore>,
    slots: Vec<Slot>,
    n: usize,
    checker: Checker,
    script: Vec<(Us, FaultKind)>,
    woken: Arc<Mutex<Vec<ActorId>>>,
    config: DynamicConfig,
    coord_config: CoordinatorConfig,
    two_coordinators: bool,
    unwritable_since: Option<Us>,
    last_writer: Option<usize>,
    recovered_at: Option<Us>,
    recovered_for_heal: Us,
    hard_end: Us,
}

/// Runs one seed.
pub fn run(opts: &Options) -> RunResult {
    let mut sim = Sim::new(opts.clone());
    sim.main_loop();
    sim.result()
}

impl Sim {
    fn new(opts: Options) -> Self {
        let mut rng = Rng::new(opts.seed ^ 0x5eed_0f_c1u64);
        let n = opts.nodes.unwrap_or_else(|| match rng.below(10) {
            0..=1 => 2,
            2..=7 => 3,
            8 => 4,
            _ => 5,
        });
        let fencing = opts.fencing.unwrap_or(if rng.chance(0.8) { FencingPolicy::Required } else { FencingPolicy::Off });
        let nofailover = if n >= 3 && rng.chance(0.2) { Some(1 + rng.below(n as u64 - 1) as usize) } else { None };
        let window = rng.range(60, 300) * SEC;
        let plan = FaultPlan {
            start: 15 * SEC,
            window,
            count: opts.faults.unwrap_or_else(|| rng.range(1, 10) as usize),
            max_drift_ppm: opts.max_drift_ppm,
        };
        let script = script(&mut rng, n, &plan);
        // Drawn from its own stream so that adding the option left every other draw unchanged.
        let failsafe_mode = opts.failsafe.unwrap_or_else(|| Rng::new(opts.seed ^ 0xfa11_5afe).chance(0.5));
        let config = DynamicConfig { synchronous_mode: opts.sync_mode, failsafe_mode, ..DynamicConfig::default() };
        let coord_config = CoordinatorConfig { fencing, ..CoordinatorConfig::default() };

        let initial: Vec<u64> = (1..=10).collect();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let mut pg = if i == 0 { SimPg::new_primary() } else { SimPg::new_replica(0) };
                pg.wal = initial.clone();
                pg.replayed = initial.len();
                Node {
                    name: format!("n{}", i + 1),
                    up: true,
                    pg,
                    store_cut: false,
                    agent_hung: false,
                    nofailover: nofailover == Some(i),
                    last_beat: None,
                    stopping: None,
                    stopped_by_fence: false,
                    stalled: false,
                }
            })
            .collect();
        let mut shared = Shared::new(opts.seed, nodes, COORD_SLOTS);
        shared.next_id = 100;
        shared.broken = opts.broken;
        shared.sync_required = opts.sync_mode != SyncMode::Off;
        shared.max_lag = config.maximum_lag_on_failover;
        shared.lease_ms = config.lease_ms;
        shared.trace = crate::world::Trace::new(opts.trace_lines);
        shared.coord_kill_after_write = if rng.chance(0.3) { 0.25 } else { 0.0 };
        let world = World::new(shared);

        let store = Arc::new(MemoryStore::new());
        let record = ClusterRecord::bootstrap("n1", config.clone());
        run_now(store.write_cluster(CLUSTER, None, &record)).expect("memory store answers at once").expect("bootstrap record");

        // Agents, coordinators, then each agent process's lease watchdog task, then its failsafe
        // task.
        let slots = (0..n + COORD_SLOTS + n + n)
            .map(|_| Slot { inc: 0, state: SlotState::Down, hung: false, deferred: vec![], wake_at: None, parked: false })
            .collect();
        let fault_end = plan.start + plan.window;
        let end_at = fault_end + opts.liveness_bound;
        let mut sim = Sim {
            opts,
            world,
            store,
            slots,
            n,
            checker: Checker::default(),
            script,
            woken: Arc::new(Mutex::new(Vec::new())),
            config,
            coord_config,
            two_coordinators: false,
            unwritable_since: None,
            last_writer: Some(0),
            recovered_at: None,
            recovered_for_heal: 0,

            hard_end: end_at + 3600 * SEC,
        };
        {
            let mut w = sim.world.lock();
            let names: Vec<String> =
                w.nodes.iter().map(|x| format!("{}{}", x.name, if x.nofailover { "(nofailover)" } else { "" })).collect();
            let line = format!(
                "seed {}: {} nodes {:?}, fencing {:?}, sync {:?}, failsafe {}, {} faults, coordinator kill after write p={}",
                sim.opts.seed,
                n,
                names,
                fencing,
                sim.opts.sync_mode,
                sim.config.failsafe_mode,
                sim.script.len(),
                w.coord_kill_after_write
            );
            w.log(line);
            for i in 0..n {
                let at = w.rng.range(0, 1000 * MS);
                w.schedule(at, Event::Step(ActorId { slot: i, inc: 1 }));
            }
            let first = w.rng.range(1, 60) * SEC;
            w.schedule(first, Event::Schedule);
            w.schedule(100 * MS, Event::Replicate);
            w.schedule(200 * MS, Event::ClientWrite);
            for (k, (at, _)) in sim.script.iter().enumerate() {
                w.schedule(*at, Event::Fault(k));
            }
            w.schedule(end_at, Event::End);
        }
        for i in 0..n {
            sim.start_agent(i, false);
        }
        sim
    }

    // ----- actors -------------------------------------------------------------------------

    fn start_agent(&mut self, i: usize, schedule: bool) {
        let slot = &mut self.slots[i];
        slot.inc += 1;
        slot.hung = false;
        slot.deferred.clear();
        slot.wake_at = None;
        let inc = slot.inc;
        let (name, nofailover) = {
            let mut w = self.world.lock();
            w.nodes[i].agent_hung = false;
            (w.nodes[i].name.clone(), w.nodes[i].nofailover)
        };
        let identity = AgentIdentity {
            cluster: CLUSTER.into(),
            member: name.clone(),
            pg_host: name.clone(),
            pg_port: PG_PORT,
            api_url: format!("http://{name}:8008"),
            instance_id: Some(instance_id(&name)),
            availability_zone: None,
            tags: MemberTags { nofailover, priority: 0 },
            agent_version: "sim".into(),
        };
        // Broken on purpose: the first primary's clock crawls, so its own lease check lets it
        // act as primary long after others may take over.
        let slow = if self.opts.broken == Broken::SlowAgentClock && i == 0 { 25 } else { 100 };
        let clock = SimClock::new(self.world.clone(), i, slow);
        let store = SimStore::new(self.world.clone(), self.store.clone(), Caller::Node(i));
        let pg = SimPgControl::new(self.world.clone(), i);
        let rt = AgentRuntime::new(store, pg, clock, identity, self.config.clone()).with_trigger(trigger(&self.world, i));
        let handle = rt.handle();
        self.slots[i].state = SlotState::Idle(Box::new(AgentActor { rt, world: self.world.clone(), node: i }));
        let ws = self.watchdog_slot(i);
        let wd = &mut self.slots[ws];
        wd.inc += 1;
        wd.hung = false;
        wd.deferred.clear();
        wd.wake_at = None;
        wd.parked = false;
        wd.state = SlotState::Idle(Box::new(WatchdogActor {
            handle: handle.clone(),
            world: self.world.clone(),
            node: i,
            safety_margin: self.config.safety_margin(),
        }));
        let wd_id = ActorId { slot: ws, inc: wd.inc };
        let fs_id = if self.config.failsafe_mode {
            let fss = self.failsafe_slot(i);
            let fs = &mut self.slots[fss];
            fs.inc += 1;
            fs.hung = false;
            fs.deferred.clear();
            fs.wake_at = None;
            fs.parked = false;
            fs.state = SlotState::Idle(Box::new(FailsafeActor {
                handle: handle.clone(),
                peers: SimFailsafePeers { world: self.world.clone(), node: i },
                world: self.world.clone(),
                node: i,
                last: None,
            }));
            Some(ActorId { slot: fss, inc: fs.inc })
        } else {
            None
        };
        let mut w = self.world.lock();
        w.agent_handles[i] = Some(handle);
        let at = w.now + WATCHDOG_EVERY;
        w.schedule(at, Event::Step(wd_id));
        if let Some(id) = fs_id {
            let at = w.now + FAILSAFE_EVERY;
            w.schedule(at, Event::Step(id));
        }
        if schedule {
            let at = w.now + w.rng.range(100 * MS, 1000 * MS);
            w.schedule(at, Event::Step(ActorId { slot: i, inc }));
            w.log(format!("agent {name}: started"));
        }
    }

    /// How long until node `i`'s hardware watchdog fires if its agent stops petting now (as the
    /// agent's lease watchdog task last set it); `None` when it is disarmed.
    fn watchdog_fires_after(&self, i: usize) -> Option<Us> {
        let w = self.world.lock();
        w.watchdog_fires_at[i].map(|at| at.saturating_sub(w.now))
    }

    /// The slot of agent `i`'s lease watchdog task (same process: killed and hung with it).
    fn watchdog_slot(&self, i: usize) -> usize {
        self.n + COORD_SLOTS + i
    }

    /// The slot of agent `i`'s failsafe task (same process: killed and hung with it).
    fn failsafe_slot(&self, i: usize) -> usize {
        self.n + COORD_SLOTS + self.n + i
    }

    fn kill_slot(&mut self, s: usize) {
        if s < self.n {
            for ts in [self.watchdog_slot(s), self.failsafe_slot(s)] {
                let t = &mut self.slots[ts];
                t.inc += 1;
                t.state = SlotState::Down;
                t.hung = false;
                t.deferred.clear();
                t.wake_at = None;
                t.parked = false;
            }
        }
        let slot = &mut self.slots[s];
        slot.inc += 1;
        slot.state = SlotState::Down;
        slot.hung = false;
        slot.deferred.clear();
        slot.wake_at = None;
        slot.parked = false;
        if s < self.n {
            let mut w = self.world.lock();
            w.agent_handles[s] = None;
            // A restarted agent opens the device afresh (the reset already scheduled stands).
            w.watchdog_fires_at[s] = None;
            w.nodes[s].agent_hung = false;
        }
    }

    fn new_coordinator(&mut self, k: usize) -> Box<dyn Actor> {
        let s = self.n + k;
        let clock = SimClock::new(self.world.clone(), s, 100);
        let store = SimStore::new(self.world.clone(), self.store.clone(), Caller::Coordinator(k));
        let owner = format!("coord{k}-{}", self.slots[s].inc);
        let coord = Coordinator::new(store, fence_chain(&self.world), clock, self.coord_config.clone(), owner);
        Box::new(CoordActor {
            coord,
            world: self.world.clone(),
            slot: k,
            cluster: CLUSTER.into(),
            budget: Duration::from_secs(50),
            poll: self.config.probe_interval(),
        })
    }

    /// Invokes coordinator slot `k` now unless it is already running; a cold start sometimes.
    fn invoke_coordinator(&mut self, k: usize) -> bool {
        let s = self.n + k;
        if matches!(self.slots[s].state, SlotState::Busy(_)) {
            return false;
        }
        let cold = matches!(self.slots[s].state, SlotState::Down) || self.world.lock().rng.chance(0.1);
        if cold {
            self.slots[s].inc += 1;
            let actor = self.new_coordinator(k);
            self.slots[s].state = SlotState::Idle(actor);
        }
        let id = ActorId { slot: s, inc: self.slots[s].inc };
        self.step(id);
        true
    }

    fn step(&mut self, id: ActorId) {
        let slot = &mut self.slots[id.slot];
        if slot.inc != id.inc {
            return;
        }
        if slot.hung {
            slot.deferred.push(Event::Step(id));
            return;
        }
        match std::mem::replace(&mut slot.state, SlotState::Down) {
            SlotState::Idle(actor) => {
                let task = actor.step();
                self.poll(id, task);
            }
            other => slot.state = other,
        }
    }

    fn wake(&mut self, id: ActorId, at_timer: bool) {
        let now = self.world.now();
        let slot = &mut self.slots[id.slot];
        if slot.inc != id.inc {
            return;
        }
        if slot.hung {
            slot.deferred.push(Event::Wake(id));
            return;
        }
        if at_timer && slot.wake_at == Some(now) {
            slot.wake_at = None;
        }
        match std::mem::replace(&mut slot.state, SlotState::Down) {
            SlotState::Busy(task) => self.poll(id, task),
            other => slot.state = other,
        }
    }

    fn poll(&mut self, id: ActorId, mut task: Task) {
        {
            let mut w = self.world.lock();
            w.current = Some(id);
            w.wake_req = None;
        }
        let waker = Waker::from(Arc::new(ActorWaker { id, woken: self.woken.clone() }));
        let mut cx = Context::from_waker(&waker);
        let result = task.as_mut().poll(&mut cx);
        let wake_req = {
            let mut w = self.world.lock();
            w.current = None;
            w.wake_req.take()
        };
        let slot = &mut self.slots[id.slot];
        match result {
            Poll::Ready(StepEnd { actor, next_in }) => {
                slot.parked = false;
                slot.wake_at = None;
                match actor {
                    Some(a) => slot.state = SlotState::Idle(a),
                    None => slot.state = SlotState::Down,
                }
                if let Some(d) = next_in {
                    let mut w = self.world.lock();
                    let at = w.now + d;
                    w.schedule(at, Event::Step(id));
                }
            }
            Poll::Pending => {
                slot.state = SlotState::Busy(task);
                match wake_req {
                    Some(at) => {
                        slot.parked = false;
                        if slot.wake_at != Some(at) {
                            slot.wake_at = Some(at);
                            self.world.lock().schedule(at, Event::Wake(id));
                        }
                    }
                    None => slot.parked = true,
                }
            }
        }
        let woken: Vec<ActorId> = std::mem::take(&mut *self.woken.lock().unwrap());
        if !woken.is_empty() {
            let mut w = self.world.lock();
            let now = w.now;
            for id in woken {
                w.schedule(now, Event::Wake(id));
            }
        }
    }

    fn set_hung(&mut self, i: usize, hung: bool) {
        if self.slots[i].hung == hung || matches!(self.slots[i].state, SlotState::Down) {
            return;
        }
        self.slots[i].hung = hung;
        let mut deferred = std::mem::take(&mut self.slots[i].deferred);
        // The whole agent process hangs, its watchdog and failsafe tasks with it.
        for ts in [self.watchdog_slot(i), self.failsafe_slot(i)] {
            self.slots[ts].hung = hung;
            deferred.extend(std::mem::take(&mut self.slots[ts].deferred));
        }
        let mut w = self.world.lock();
        w.nodes[i].agent_hung = hung;
        let now = w.now;
        for ev in deferred {
            w.schedule(now, ev);
        }
    }

    // ----- the simulated cluster ----------------------------------------------------------

    fn replicate(&mut self) {
        let mut w = self.world.lock();
        let n = w.nodes.len();
        for j in 0..n {
            let (up, running, replica, upstream) = {
                let x = &w.nodes[j];
                (x.up, x.pg.running, x.pg.role == crate::simpg::PgRole::Replica, x.pg.upstream)
            };
            if !up || !running || !replica {
                continue;
            }
            // Replay trails receipt by one step, whether or not streaming continues.
            w.nodes[j].pg.replayed = w.nodes[j].pg.wal.len();
            let Some(u) = upstream else {
                w.nodes[j].pg.streaming = false;
                continue;
            };
            let ok =
                w.nodes[u].up && w.nodes[u].pg.running && !w.cut_between(j, u) && w.nodes[j].pg.is_prefix_of(&w.nodes[u].pg.wal);
            if !ok {
                w.nodes[j].pg.streaming = false;
                continue;
            }
            if w.nodes[j].stalled {
                continue;
            }
            let src_len = w.nodes[u].pg.wal.len();
            let lag = if w.rng.chance(0.1) { w.rng.range(0, 20) as usize } else { 0 };
            let target = src_len.saturating_sub(lag).max(w.nodes[j].pg.wal.len());
            let have = w.nodes[j].pg.wal.len();
            let add: Vec<u64> = w.nodes[u].pg.wal[have..target].to_vec();
            let pg = &mut w.nodes[j].pg;
            pg.wal.extend(add);
            pg.streaming = true;
        }
        // Synchronous acknowledgement.
        for p in 0..n {
            if w.nodes[p].pg.pending.is_empty() || !w.nodes[p].pg.writable() {
                continue;
            }
            let sync = w.nodes[p].pg.sync.clone();
            let pending = std::mem::take(&mut w.nodes[p].pg.pending);
            let mut still = Vec::new();
            for (id, idx) in pending {
                let confirmed = (0..n)
                    .filter(|&k| {
                        let x = &w.nodes[k];
                        k != p
                            && x.up
                            && x.pg.running
                            && x.pg.streaming
                            && x.pg.upstream == Some(p)
                            && (sync.any || sync.members.contains(&k))
                            && x.pg.wal.get(idx) == Some(&id)
                    })
                    .count();
                if confirmed as u32 >= sync.count {
                    w.acked.push(id);
                    w.counters.acked += 1;
                } else {
                    still.push((id, idx));
                }
            }
            w.nodes[p].pg.pending = still;
        }
        let now = w.now;
        w.schedule(now + 100 * MS, Event::Replicate);
    }

    fn client_write(&mut self) {
        let mut w = self.world.lock();
        let writable = w.writable();
        if !writable.is_empty() {
            let p = *w.rng.pick(&writable);
            let id = w.fresh_id();
            w.counters.writes += 1;
            let pg = &mut w.nodes[p].pg;
            pg.wal.push(id);
            let idx = pg.wal.len() - 1;
            if pg.sync.is_sync() {
                pg.pending.push((id, idx));
            } else {
                w.acked.push(id);
                w.counters.acked += 1;
            }
        }
        let at = w.now + w.rng.range(50 * MS, 250 * MS);
        w.schedule(at, Event::ClientWrite);
    }

    fn resolve(&self, w: &mut Shared, t: Target) -> usize {
        match t {
            Target::Node(i) => i.min(self.n - 1),
            Target::Primary => match w.writable().first() {
                Some(&p) => p,
                None => w.rng.below(self.n as u64) as usize,
            },
            Target::Replica => {
                let writable = w.writable();
                let others: Vec<usize> = (0..self.n).filter(|i| !writable.contains(i)).collect();
                if others.is_empty() {
                    w.rng.below(self.n as u64) as usize
                } else {
                    *w.rng.pick(&others)
                }
            }
        }
    }

    fn heal_at(&self, w: &mut Shared, after: Us, heal: Heal) {
        let at = w.now + after;
        w.schedule(at, Event::Heal(heal));
    }

    fn crash_node(&mut self, i: usize, why: &str) {
        self.kill_slot(i);
        let mut w = self.world.lock();
        let n = &mut w.nodes[i];
        n.up = false;
        n.pg.crash();
        let name = n.name.clone();
        w.log(format!("node {name}: DOWN ({why})"));
    }

    fn fault(&mut self, k: usize) {
        let kind = self.script[k].1.clone();
        let mut w = self.world.lock();
        w.count_fault(kind.name());
        let fencing_off = self.coord_config.fencing == FencingPolicy::Off;
        match kind {
            FaultKind::AgentCrash { target, down_for } => {
                let i = self.resolve(&mut w, target);
                if !w.nodes[i].up {
                    return;
                }
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT agent {name} crashes for {}s", down_for / SEC));
                self.heal_at(&mut w, down_for, Heal::AgentStart(i));
                drop(w);
                if fencing_off {
                    // Without fencing only the hardware watchdog stops the Postgres of a dead
                    // agent ([watchdog] in the node agent, assumed enabled when fencing is off).
                    if let Some(after) = self.watchdog_fires_after(i) {
                        let mut w = self.world.lock();
                        let at = w.now + after;
                        w.schedule(at, Event::Boot { node: usize::MAX - i, after_fence: false });
                    }
                }
                self.kill_slot(i);
            }
            FaultKind::PgCrash { target, restart_fails_for } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT postgres {name} crashes (cannot restart for {}s)", restart_fails_for / SEC));
                w.nodes[i].pg.crash();
                w.nodes[i].pg.start_fails_until = w.now + restart_fails_for;
            }
            FaultKind::NodeCrash { target, down_for } => {
                let i = self.resolve(&mut w, target);
                if !w.nodes[i].up {
                    return;
                }
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT node {name} crashes for {}s", down_for / SEC));
                let at = w.now + down_for;
                w.schedule(at, Event::Boot { node: i, after_fence: false });
                drop(w);
                self.crash_node(i, "crash");
            }
            FaultKind::AgentHang { target, hung_for } => {
                let i = self.resolve(&mut w, target);
                if !w.nodes[i].up || w.nodes[i].agent_hung {
                    return;
                }
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT agent {name} hangs for {}s", hung_for / SEC));
                // Without fencing, the hardware watchdog the agent pets is the only thing that
                // stops a hung primary.
                drop(w);
                let watchdog = if fencing_off { self.watchdog_fires_after(i) } else { None };
                let mut w = self.world.lock();
                if let Some(watchdog) = watchdog.filter(|d| hung_for > *d) {
                    let at = w.now + watchdog;
                    w.schedule(at, Event::Heal(Heal::Unhang(i)));
                    w.schedule(at, Event::Boot { node: usize::MAX - i, after_fence: false });
                } else {
                    self.heal_at(&mut w, hung_for, Heal::Unhang(i));
                }
                drop(w);
                self.set_hung(i, true);
            }
            FaultKind::StorePartition { target, for_ } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT {name} cut off from the store for {}s", for_ / SEC));
                w.nodes[i].store_cut = true;
                self.heal_at(&mut w, for_, Heal::StoreUncut(i));
            }
            FaultKind::NodePartition { target, other, for_ } => {
                let a = self.resolve(&mut w, target);
                let b = self.resolve(&mut w, other);
                if a == b {
                    return;
                }
                let (x, y) = (a.min(b), a.max(b));
                let line = format!("FAULT network cut {} <-> {} for {}s", w.nodes[x].name, w.nodes[y].name, for_ / SEC);
                w.log(line);
                w.net_cut.push((x, y));
                self.heal_at(&mut w, for_, Heal::NetUncut(x, y));
            }
            FaultKind::CoordinatorPartition { slot, for_ } => {
                w.log(format!("FAULT coord{slot} cut off from the store for {}s", for_ / SEC));
                w.coord_cut[slot] = true;
                self.heal_at(&mut w, for_, Heal::CoordUncut(slot));
            }
            FaultKind::StoreLatency { min, max, for_ } => {
                w.log(format!("FAULT store latency {}..{} ms for {}s", min / MS, max / MS, for_ / SEC));
                w.store_slow = Some((min, max));
                self.heal_at(&mut w, for_, Heal::StoreFast);
            }
            FaultKind::StoreOutage { for_ } => {
                w.log(format!("FAULT store outage for {}s", for_ / SEC));
                w.store_outage = true;
                self.heal_at(&mut w, for_, Heal::StoreUp);
            }
            FaultKind::MessageDelay { delay, for_ } => {
                w.log(format!("FAULT messages delayed {} ms for {}s", delay / MS, for_ / SEC));
                w.msg_delay = delay;
                self.heal_at(&mut w, for_, Heal::MsgDelayOff);
            }
            FaultKind::ClockDrift { target, ppm, for_ } => {
                let i = self.resolve(&mut w, target);
                let now = w.now;
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT clock of {name} drifts {ppm} ppm for {}s", for_ / SEC));
                w.clocks[i].set_rate(now, ppm);
                self.heal_at(&mut w, for_, Heal::ClockRate(i));
            }
            FaultKind::WallJump { target, by_ms } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT wall clock of {name} jumps {by_ms} ms"));
                w.clocks[i].wall_offset_ms += by_ms;
            }
            FaultKind::CoordinatorKill => {
                w.log("FAULT coordinator killed");
                let now = w.now;
                w.schedule(now, Event::KillCoordinator(0));
            }
            FaultKind::TwoCoordinators { for_ } => {
                w.log(format!("FAULT two coordinators run at once for {}s", for_ / SEC));
                self.heal_at(&mut w, for_, Heal::TwoCoordinatorsOff);
                drop(w);
                self.two_coordinators = true;
                self.invoke_coordinator(0);
                self.invoke_coordinator(1);
            }
            FaultKind::ReplicaStall { target, for_ } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                w.log(format!("FAULT WAL receiver of {name} stalls for {}s", for_ / SEC));
                w.nodes[i].stalled = true;
                self.heal_at(&mut w, for_, Heal::Unstall(i));
            }
            FaultKind::BadRecords { target } => {
                let i = self.resolve(&mut w, target);
                let name = w.nodes[i].name.clone();
                let id = w.fresh_id();
                w.log(format!(
                    "FAULT records of a newer version and garbage appear ({name}'s heartbeat rewritten as format 2, unreadable items zz-*-{id})"
                ));
                w.store_dirty = true;
                drop(w);
                self.bad_records(&name, id);
            }
            FaultKind::ManualRequest { action, candidate } => {
                let candidate = candidate.map(|t| {
                    let i = self.resolve(&mut w, t);
                    w.nodes[i].name.clone()
                });
                if action == RequestAction::Pause {
                    let after = w.rng.range(10, 60) * SEC;
                    self.heal_at(&mut w, after, Heal::Resume);
                }
                drop(w);
                self.request(action, candidate);
            }
        }
    }

    /// Writes what a newer version or a broken writer would leave behind (FaultKind::BadRecords),
    /// straight into the store as another writer would.
    fn bad_records(&self, name: &str, id: u64) {
        use pgdaemon_core::keys;
        let newer_fields = "{\"future_field\":{\"nested\":[1,2]},\"format_version\":2,\"min_reader_version\":1,";
        let own = keys::member(name);
        if let Some(text) = self.store.get_raw(CLUSTER, &own) {
            // Readable: a newer agent's heartbeat of a live member (its agent overwrites it).
            self.store.put_raw(CLUSTER, &own, &text.replacen('{', newer_fields, 1));
            // Unreadable: the same record under another member's key.
            self.store.put_raw(CLUSTER, &keys::member(&format!("zz-stray-{id}")), &text);
        }
        self.store.put_raw(CLUSTER, &keys::member(&format!("zz-garbage-{id}")), "{\"name\": \"zz-garbage\", \"role\": ");
        self.store.put_raw(
            CLUSTER,
            &keys::member(&format!("zz-newer-{id}")),
            &format!("{{\"min_reader_version\":2,\"name\":\"zz-newer-{id}\",\"role\":\"witness\"}}"),
        );
        let term = u64::MAX - 2 * id;
        self.store.put_raw(CLUSTER, &keys::history(term), "not json");
        self.store.put_raw(
            CLUSTER,
            &keys::history(term - 1),
            &format!(
                "{newer_fields}\"term\":{},\"kind\":\"failover\",\"new_primary\":\"{name}\",\"reason\":\"newer\",\"started_ms\":0,\"finished_ms\":0}}",
                term - 1
            ),
        );
        self.store.put_raw(CLUSTER, &keys::event(0, &format!("garbage-{id}")), "[1,");
        self.store.put_raw(
            CLUSTER,
            &keys::event(0, &format!("newer-{id}")),
            &format!("{{\"min_reader_version\":2,\"id\":\"newer-{id}\",\"kind\":\"witness_joined\"}}"),
        );
    }

    /// An operator's request, written like pgdctl does (compare-and-set), then a coordinator run.
    fn request(&mut self, action: RequestAction, candidate: Option<String>) -> bool {
        let record = match run_now(self.store.read_cluster(CLUSTER)) {
            Some(Ok(Some(r))) => r,
            _ => return false,
        };
        let mut w = self.world.lock();
        if record.request.is_some() {
            w.log(format!("operator: {action:?} not sent, a request is pending"));
            return false;
        }
        let id = format!("req-{}", w.fresh_id());
        let wall = w.clocks[0].wall_ms(w.now);
        let mut next = record.clone();
        next.request =
            Some(ManualRequest { id: id.clone(), action, candidate: candidate.clone(), force: false, requested_ms: wall });
        let ok = matches!(run_now(self.store.write_cluster(CLUSTER, Some(record.version), &next)), Some(Ok(_)));
        w.log(format!("operator: {action:?} candidate {candidate:?} ({id}): {}", if ok { "sent" } else { "lost the race" }));
        w.store_dirty = true;
        let now = w.now;
        let at = now + w.rng.range(50 * MS, 500 * MS);
        w.schedule(at, Event::Trigger);
        ok
    }

    fn heal(&mut self, h: Heal) {
        let mut w = self.world.lock();
        let now = w.now;
        w.last_heal = now;
        match h {
            Heal::AgentStart(i) => {
                let up = w.nodes[i].up;
                drop(w);
                if up && matches!(self.slots[i].state, SlotState::Down) {
                    self.start_agent(i, true);
                }
            }
            Heal::Unhang(i) => {
                let name = w.nodes[i].name.clone();
                w.log(format!("HEAL agent {name} resumes"));
                drop(w);
                self.set_hung(i, false);
            }
            Heal::StoreUncut(i) => {
                w.nodes[i].store_cut = false;
                let name = w.nodes[i].name.clone();
                w.log(format!("HEAL {name} reaches the store again"));
            }
            Heal::NetUncut(a, b) => {
                w.net_cut.retain(|p| *p != (a, b));
                w.log("HEAL network cut repaired");
            }
            Heal::CoordUncut(k) => {
                w.coord_cut[k] = false;
                w.log(format!("HEAL coord{k} reaches the store again"));
            }
            Heal::StoreFast => {
                w.store_slow = None;
                w.log("HEAL store latency normal");
            }
            Heal::StoreUp => {
                w.store_outage = false;
                w.log("HEAL store available");
            }
            Heal::MsgDelayOff => w.msg_delay = 0,
            Heal::Unstall(i) => w.nodes[i].stalled = false,
            Heal::ClockRate(i) => w.clocks[i].set_rate(now, 0),
            Heal::TwoCoordinatorsOff => {
                drop(w);
                self.two_coordinators = false;
            }
            Heal::Resume => {
                drop(w);
                if !self.request(RequestAction::Resume, None) {
                    let mut w = self.world.lock();
                    let at = w.now + SEC;
                    w.schedule(at, Event::Heal(Heal::Resume));
                }
            }
        }
    }

    fn boot(&mut self, node: usize, after_fence: bool) {
        let mut w = self.world.lock();
        if node >= self.n {
            // The watchdog of node `usize::MAX - i` fires: a reset, then a boot.
            let i = usize::MAX - node;
            if !w.nodes[i].up {
                return;
            }
            let at = w.now + w.rng.range(10, 40) * SEC;
            w.schedule(at, Event::Boot { node: i, after_fence: false });
            drop(w);
            self.crash_node(i, "watchdog reset");
            return;
        }
        let n = &mut w.nodes[node];
        if n.up || (n.stopped_by_fence && !after_fence) {
            return;
        }
        n.up = true;
        n.stopped_by_fence = false;
        n.stopping = None;
        let name = n.name.clone();
        let now = w.now;
        w.last_heal = now;
        w.log(format!("node {name}: boots{}", if after_fence { " (operator starts the fenced instance)" } else { "" }));
        drop(w);
        self.start_agent(node, true);
    }

    fn instance_stopped(&mut self, node: usize) {
        let mut w = self.world.lock();
        if w.nodes[node].stopping.is_none() {
            return;
        }
        w.nodes[node].stopping = None;
        w.nodes[node].stopped_by_fence = true;
        let at = w.now + w.rng.range(20, 120) * SEC;
        w.schedule(at, Event::Boot { node, after_fence: true });
        let was_up = w.nodes[node].up;
        drop(w);
        if was_up {
            self.crash_node(node, "EC2 instance stopped by the fencer");
        } else {
            self.world.lock().log(format!("node {}: instance stopped by the fencer", node + 1));
        }
    }

    // ----- main loop ----------------------------------------------------------------------

    fn main_loop(&mut self) {
        loop {
            let Some((t, ev)) = self.world.lock().pop() else {
                self.world.lock().sim_error = Some("event queue ran dry".into());
                return;
            };
            {
                let mut w = self.world.lock();
                w.now = t;
                w.counters.events += 1;
            }
            if t > self.hard_end {
                self.world.lock().sim_error = Some("the run did not end".into());
                return;
            }
            let mut end = false;
            match ev {
                Event::Step(id) => self.step(id),
                Event::Wake(id) => self.wake(id, true),
                Event::Replicate => self.replicate(),
                Event::ClientWrite => self.client_write(),
                Event::Fault(k) => self.fault(k),
                Event::Heal(h) => self.heal(h),
                Event::InstanceStopped { node } => self.instance_stopped(node),
                Event::Boot { node, after_fence } => self.boot(node, after_fence),
                Event::KillCoordinator(k) => {
                    let s = self.n + k;
                    if !matches!(self.slots[s].state, SlotState::Down) {
                        let mut w = self.world.lock();
                        w.log(format!("coord{k}: KILLED"));
                        w.count_fault("coordinator_kill");
                        // A fault like any other: liveness is judged from its end (at once).
                        w.last_heal = w.now;
                        drop(w);
                        self.kill_slot(s);
                    }
                }
                Event::Schedule => {
                    self.invoke_coordinator(0);
                    if self.two_coordinators {
                        self.invoke_coordinator(1);
                    }
                    let mut w = self.world.lock();
                    let at = w.now + SCHEDULE_EVERY;
                    w.schedule(at, Event::Schedule);
                }
                Event::Trigger => {
                    let started = self.invoke_coordinator(0);
                    if !started || self.two_coordinators {
                        // Lambda runs a concurrent invocation when one is in flight.
                        self.invoke_coordinator(1);
                    }
                }
                Event::End => {
                    let last_heal = self.world.lock().last_heal;
                    let due = last_heal + self.opts.liveness_bound;
                    if t < due {
                        self.world.lock().schedule(due, Event::End);
                    } else {
                        end = true;
                    }
                }
            }
            self.after_event();
            let stop = {
                let w = self.world.lock();
                w.violation.is_some() || w.sim_error.is_some()
            };
            if stop {
                return;
            }
            if end {
                self.final_checks();
                return;
            }
        }
    }

    fn after_event(&mut self) {
        let mut w = self.world.lock();
        let promos = w.promotions.len();
        self.checker.check(&mut w, &self.store, CLUSTER);
        let _ = promos;
        let writable = w.writable();
        let now = w.now;
        match writable.first() {
            None => {
                if self.unwritable_since.is_none() {
                    self.unwritable_since = Some(now);
                }
            }
            Some(&p) => {
                if let Some(since) = self.unwritable_since.take() {
                    if self.last_writer != Some(p) {
                        self.checker.write_outages.push(now - since);
                    }
                }
                if self.last_writer != Some(p) {
                    let name = w.nodes[p].name.clone();
                    self.checker.on_promotion(now, &name);
                }
                self.last_writer = Some(p);
            }
        }
        if self.recovered_for_heal != w.last_heal {
            self.recovered_for_heal = w.last_heal;
            self.recovered_at = None;
        }
        if self.recovered_at.is_none() && !writable.is_empty() {
            self.recovered_at = Some(now);
        }
    }

    fn final_checks(&mut self) {
        let parked: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].parked && matches!(self.slots[s].state, SlotState::Busy(_)))
            .collect();
        let mut w = self.world.lock();
        if !parked.is_empty() {
            w.sim_error =
                Some(format!("actor slots {parked:?} wait on something that is neither virtual time nor another actor"));
            return;
        }
        let record = run_now(self.store.read_cluster(CLUSTER)).and_then(|r| r.ok()).flatten();
        let writable = w.writable();
        let names: Vec<String> = writable.iter().map(|&i| w.nodes[i].name.clone()).collect();
        let bound = self.opts.liveness_bound / SEC;
        let Some(record) = record else {
            w.violate("liveness: no cluster record at the end");
            return;
        };
        if let Some(t) = &record.transition {
            if t.step == TransitionStep::Fenced {
                if let Some(why) = blocked_by_lag(&w) {
                    w.counters.blocked_by_lag += 1;
                    w.log(format!("END: failover blocked by maximum_lag_on_failover, as configured: {why}"));
                    return;
                }
            }
            w.violate(format!(
                "S5: a {:?} to {} (term {}, step {:?}) neither finished nor rolled back {bound}s after the last heal",
                t.kind, t.candidate, t.term, t.step
            ));
            return;
        }
        if writable.len() != 1 || record.primary.as_deref() != Some(names[0].as_str()) {
            w.violate(format!(
                "liveness: {bound}s after the last heal, writable {names:?} but the record names {:?} (term {}, paused {})",
                record.primary, record.term, record.paused
            ));
        }
    }

    fn result(self) -> RunResult {
        let w = self.world.lock();
        RunResult {
            seed: self.opts.seed,
            nodes: self.n,
            fencing: self.coord_config.fencing,
            failsafe: self.config.failsafe_mode,
            violation: w.violation.clone(),
            sim_error: w.sim_error.clone(),
            trace: w.trace.render(),
            counters: w.counters.clone(),
            detect_to_writable: self.checker.detect_to_writable.clone(),
            write_outages: self.checker.write_outages.clone(),
            recovery_after_heal: self.recovered_at.map(|r| r.saturating_sub(w.last_heal)),
            sim_time: w.now,
        }
    }
}

/// Ground truth for a failover left blocked: every member that may be promoted (up, a replica,
/// not tagged nofailover) lacks more than `maximum_lag_on_failover` of WAL that another replica
/// holds on the same history. Promoting any of them would lose that WAL (S4), so waiting for an
/// operator is the configured behaviour, not a liveness failure.
fn blocked_by_lag(w: &Shared) -> Option<String> {
    let max_records = w.max_lag / crate::simpg::REC_BYTES;
    let candidates: Vec<usize> = (0..w.nodes.len())
        .filter(|&i| {
            let n = &w.nodes[i];
            n.up && !n.nofailover && n.pg.role == crate::simpg::PgRole::Replica
        })
        .collect();
    for (j, holder) in w.nodes.iter().enumerate() {
        // A holder that may itself be promoted is no excuse for staying blocked.
        if holder.pg.role != crate::simpg::PgRole::Replica || candidates.contains(&j) {
            continue;
        }
        let ahead_of_all = candidates.iter().all(|&c| {
            let cand = &w.nodes[c].pg;
            cand.is_prefix_of(&holder.pg.wal) && holder.pg.wal.len() as u64 > cand.wal.len() as u64 + max_records
        });
        if ahead_of_all && !candidates.is_empty() {
            return Some(format!(
                "{}{} holds {} records, every candidate more than {} fewer",
                holder.name,
                if holder.nofailover { " (nofailover)" } else { "" },
                holder.pg.wal.len(),
                max_records
            ));
        }
    }
    None
}
