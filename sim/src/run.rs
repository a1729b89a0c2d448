//! One simulated run: build the cluster from a seed, drive every actor and fault in virtual time,
//! check the invariants after every event, and report.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use pgdaemon_core::agent::{AgentIdentity, AgentRuntime, BootstrapPolicy};
use pgdaemon_core::coordinator::{Coordinator, CoordinatorConfig, FencingPolicy};
use pgdaemon_core::{
    ClusterRecord, DynamicConfig, ManualRequest, MemberTags, MemoryStore, RequestAction, Store, SyncMode, TransitionStep,
};

use crate::actors::{
    fence_chain, instance_id, probe, trigger, waker, AgentActor, CoordActor, FailsafeActor, ProbeFrom, SimFailsafePeers,
    WatchdogActor, FAILSAFE_EVERY, WATCHDOG_EVERY,
};
use crate::check::Checker;
use crate::faults::{script, FaultKind, FaultPlan, Target};
use crate::pgctl::{SimPgControl, PG_PORT};
use crate::rng::Rng;
use crate::simpg::SimPg;
use crate::store::{Caller, SimStore};
use crate::world::{
    api_url, run_now, Actor, ActorId, Broken, Event, Heal, Node, Shared, SimClock, StepEnd, Task, Us, World, MS, SEC,
};

mod checks;
mod cluster;
mod inject;
mod options;
mod wake;

pub use options::{Options, RunResult};

pub const CLUSTER: &str = "sim";
/// Coordinator slots: the usual one and a concurrent second invocation.
const COORD_SLOTS: usize = 2;
/// EventBridge fires the coordinator once a minute.
const SCHEDULE_EVERY: Us = 60 * SEC;
/// The hosted coordinator runs every second (docs/design.md section 4).
const HOSTED_EVERY: Us = SEC;

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
    /// Agents: when the last step started, regular steps to drop (a woken step took their
    /// place), and a wake that came during a step (sim/src/run/wake.rs).
    started: Us,
    skip_steps: u32,
    wake_pending: bool,
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
    /// The agents initialise the cluster themselves (Options::bootstrap, drawn once).
    bootstrap: bool,
    /// Options::hosted and Options::command_fencer, drawn once.
    hosted: bool,
    command_fencer: bool,
}

/// Runs one seed.
pub fn run(opts: &Options) -> RunResult {
    let mut sim = Sim::new(opts.clone());
    sim.main_loop();
    sim.result()
}

impl Sim {
    fn new(opts: Options) -> Self {
        let mut rng = Rng::new(opts.seed ^ 0x5eed_0fc1_u64);
        let n = opts.nodes.unwrap_or_else(|| match rng.below(10) {
            0..=1 => 2,
            2..=7 => 3,
            8 => 4,
            _ => 5,
        });
        let fencing = opts.fencing.unwrap_or(if rng.chance(0.8) { FencingPolicy::Required } else { FencingPolicy::Off });
        let nofailover = if n >= 3 && rng.chance(0.2) { Some(1 + rng.below(n as u64 - 1) as usize) } else { None };
        let window = rng.range(60, 300) * SEC;
        // Drawn from its own stream (other draws unchanged); faults then start while the agents
        // still bootstrap, so winners die during initdb and before the record.
        let bootstrap = opts.bootstrap.unwrap_or_else(|| Rng::new(opts.seed ^ 0xb007_5747).chance(0.5));
        let plan = FaultPlan {
            start: if bootstrap { SEC } else { 15 * SEC },
            window,
            count: opts.faults.unwrap_or_else(|| rng.range(1, 10) as usize),
            max_drift_ppm: opts.max_drift_ppm,
        };
        let script = script(&mut rng, n, &plan);
        // Drawn from its own stream so that adding the option left every other draw unchanged.
        let failsafe_mode = opts.failsafe.unwrap_or_else(|| Rng::new(opts.seed ^ 0xfa11_5afe).chance(0.5));
        // Each drawn from its own stream, as the failsafe mode.
        let hosted = opts.hosted.unwrap_or_else(|| Rng::new(opts.seed ^ 0x4057_ed01).chance(0.5));
        let command_fencer = opts.command_fencer.unwrap_or_else(|| Rng::new(opts.seed ^ 0xc0de_fe4c).chance(0.5));
        let config = DynamicConfig { synchronous_mode: opts.sync_mode, failsafe_mode, ..DynamicConfig::default() };
        let coord_config = CoordinatorConfig { fencing, ..CoordinatorConfig::default() };

        let initial: Vec<u64> = (1..=10).collect();
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let pg = if bootstrap {
                    SimPg::new_empty()
                } else {
                    let mut pg = if i == 0 { SimPg::new_primary() } else { SimPg::new_replica(0) };
                    pg.wal = initial.clone();
                    pg.replayed = initial.len();
                    pg
                };
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
        shared.wake = opts.wake;
        shared.sync_required = opts.sync_mode != SyncMode::Off;
        shared.max_lag = config.maximum_lag_on_failover;
        shared.lease_ms = config.lease_ms;
        shared.trace = crate::world::Trace::new(opts.trace_lines);
        shared.coord_kill_after_write = if rng.chance(0.3) { 0.25 } else { 0.0 };
        let world = World::new(shared);

        let store = Arc::new(MemoryStore::new());
        if !bootstrap {
            let record = ClusterRecord::bootstrap("n1", config.clone());
            run_now(store.write_cluster(CLUSTER, None, &record))
                .expect("memory store answers at once")
                .expect("bootstrap record");
        }

        // Agents, coordinators, then each agent process's lease watchdog task, then its failsafe
        // task.
        let slots = (0..n + COORD_SLOTS + n + n)
            .map(|_| Slot {
                inc: 0,
                state: SlotState::Down,
                hung: false,
                deferred: vec![],
                wake_at: None,
                parked: false,
                started: 0,
                skip_steps: 0,
                wake_pending: false,
            })
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
            last_writer: if bootstrap { None } else { Some(0) },
            recovered_at: None,
            recovered_for_heal: 0,

            hard_end: end_at + 3600 * SEC,
            bootstrap,
            hosted,
            command_fencer,
        };
        {
            let mut w = sim.world.lock();
            let names: Vec<String> =
                w.nodes.iter().map(|x| format!("{}{}", x.name, if x.nofailover { "(nofailover)" } else { "" })).collect();
            let line = format!(
                "seed {}: {} nodes {:?}, fencing {:?} ({}), sync {:?}, failsafe {}, {} faults, coordinator kill after write p={}{}",
                sim.opts.seed,
                n,
                names,
                fencing,
                if command_fencer { "http, command, ec2" } else { "http, ec2" },
                sim.opts.sync_mode,
                sim.config.failsafe_mode,
                sim.script.len(),
                w.coord_kill_after_write,
                if hosted { ", coordinator also runs every second" } else { "" }
            );
            w.log(line);
            for i in 0..n {
                let at = w.rng.range(0, 1000 * MS);
                w.schedule(at, Event::Step(ActorId { slot: i, inc: 1 }));
            }
            let first = w.rng.range(1, 60) * SEC;
            w.schedule(first, Event::Schedule);
            if hosted {
                let at = w.rng.range(0, HOSTED_EVERY);
                w.schedule(at, Event::HostedTick);
            }
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
        slot.skip_steps = 0;
        slot.wake_pending = false;
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
            api_url: api_url(&name),
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
        let mut rt = AgentRuntime::new(store, pg, clock, identity, self.config.clone())
            .with_trigger(trigger(&self.world, i))
            .with_agent_probe(probe(&self.world, ProbeFrom::Node(i)));
        if self.bootstrap {
            rt = rt.with_bootstrap(BootstrapPolicy { enabled: true, lock: Duration::from_secs(30) });
        }
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
        slot.skip_steps = 0;
        slot.wake_pending = false;
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
        let fencer = fence_chain(&self.world, k, self.command_fencer);
        let coord = Coordinator::new(store, fencer, clock, self.coord_config.clone(), owner)
            .with_waker(waker(&self.world))
            .with_probe(probe(&self.world, ProbeFrom::Coordinator(k)));
        Box::new(CoordActor {
            coord,
            world: self.world.clone(),
            slot: k,
            cluster: CLUSTER.into(),
            budget: Duration::from_secs(50),
            // The Lambda's default PGDAEMON_POLL_MS.
            poll: Duration::from_millis(100),
            keeps_lock: self.is_hosted(k),
        })
    }

    /// Coordinator slot `k` is the long-lived hosted coordinator (Options::hosted): it keeps its
    /// lock and its observations between runs and never starts cold unless it was killed.
    fn is_hosted(&self, k: usize) -> bool {
        self.hosted && k == 0
    }

    /// Invokes coordinator slot `k` now unless it is already running; a cold start sometimes
    /// (a new process: its lock and its observations start over), always when it is down.
    fn invoke_coordinator(&mut self, k: usize) -> bool {
        let s = self.n + k;
        if matches!(self.slots[s].state, SlotState::Busy(_)) {
            return false;
        }
        let cold_chance = if self.is_hosted(k) { 0.0 } else { 0.1 };
        let cold = matches!(self.slots[s].state, SlotState::Down) || self.world.lock().rng.chance(cold_chance);
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
        if slot.skip_steps > 0 {
            // A regular step a woken one already took the place of.
            slot.skip_steps -= 1;
            return;
        }
        self.start_step(id);
    }

    /// Starts the actor's next step now (unless it is hung, busy or down).
    fn start_step(&mut self, id: ActorId) {
        let now = self.world.now();
        let slot = &mut self.slots[id.slot];
        if slot.hung {
            slot.deferred.push(Event::Step(id));
            return;
        }
        match std::mem::replace(&mut slot.state, SlotState::Down) {
            SlotState::Idle(actor) => {
                slot.started = now;
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
                    let mut at = w.now + d;
                    if std::mem::take(&mut slot.wake_pending) {
                        // Woken during this step: the next one at once, rate-limited.
                        at = at.min(slot.started + wake::MIN_WAKE_GAP).max(w.now);
                        w.counters.woken_ticks += 1;
                    }
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
                Event::WakeAgent { node } => self.wake_agent(node),
                Event::HostedTick => {
                    // A tick while it runs is skipped.
                    self.invoke_coordinator(0);
                    let mut w = self.world.lock();
                    let at = w.now + HOSTED_EVERY;
                    w.schedule(at, Event::HostedTick);
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

    fn result(self) -> RunResult {
        let w = self.world.lock();
        RunResult {
            seed: self.opts.seed,
            nodes: self.n,
            fencing: self.coord_config.fencing,
            failsafe: self.config.failsafe_mode,
            bootstrap: self.bootstrap,
            hosted: self.hosted,
            command_fencer: self.command_fencer,
            violation: w.violation.clone(),
            sim_error: w.sim_error.clone(),
            trace: w.trace.render(),
            counters: w.counters.clone(),
            detect_to_writable: self.checker.detect_to_writable.clone(),
            write_outages: self.checker.write_outages.clone(),
            designate_to_writable: self.checker.designate_to_writable.clone(),
            early_detect_to_writable: self.checker.early_detect_to_writable.clone(),
            early_write_outages: self.checker.early_write_outages.clone(),
            recovery_after_heal: self.recovered_at.map(|r| r.saturating_sub(w.last_heal)),
            sim_time: w.now,
        }
    }
}
