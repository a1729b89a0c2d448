//! Virtual time, the event queue, the shared world state and the executor that drives the real
//! (async) decision code deterministically.
//!
//! Every actor (an agent incarnation, a coordinator invocation) is a boxed future. The executor
//! polls it with a no-op waker; the only way such a future may return `Pending` is a
//! [`Sleep`] on virtual time (a store call's latency, a Postgres operation's duration), which
//! registers a wake-up in the queue. A `Pending` without a registered wake-up is reported as a
//! simulation failure: it would mean real I/O or a real timer leaked into the code under test.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pgdaemon_core::Clock;

use crate::rng::Rng;
use crate::simpg::SimPg;

/// Virtual time in microseconds since the start of the run.
pub type Us = u64;
pub const MS: Us = 1000;
pub const SEC: Us = 1_000_000;

/// Wall clock (ms since epoch) at virtual time zero: 2026-01-01.
pub const WALL_START_MS: u64 = 1_767_225_600_000;

/// A boxed actor step: returns the actor for its next step, or `None` when it ended.
pub type Task = Pin<Box<dyn Future<Output = StepEnd>>>;

/// What an actor wants after a step.
pub struct StepEnd {
    pub actor: Option<Box<dyn Actor>>,
    /// Start the next step this long after this one ended (`None`: wait to be triggered).
    pub next_in: Option<Us>,
}

/// One simulated process loop (an agent, a coordinator).
pub trait Actor {
    /// One iteration of the loop, owning the actor for its duration.
    fn step(self: Box<Self>) -> Task;
}

/// Identifies one incarnation of an actor slot; events for older incarnations are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorId {
    pub slot: usize,
    pub inc: u64,
}

/// Everything that can happen at a virtual instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// Resume an actor's suspended step.
    Wake(ActorId),
    /// Start an actor's next step.
    Step(ActorId),
    /// WAL streaming and synchronous acknowledgement.
    Replicate,
    /// A client write to whichever server accepts it.
    ClientWrite,
    /// A scripted fault or heal (index into the run's fault script).
    Fault(usize),
    /// An EC2 stop requested by a fencer takes effect on a node.
    InstanceStopped { node: usize },
    /// A node's instance boots: after a crash, or (`after_fence`) an operator starts it again
    /// after a fencer stopped it.
    Boot { node: usize, after_fence: bool },
    /// A fault's end.
    Heal(Heal),
    /// Kill coordinator slot `k` (its in-flight invocation and its warm state).
    KillCoordinator(usize),
    /// The coordinator's schedule (EventBridge) fires.
    Schedule,
    /// A fast-path trigger reaches the coordinator.
    Trigger,
    /// The coordinator's `POST /wake` reaches node `node`'s agent (sim/src/run/wake.rs).
    WakeAgent { node: usize },
    /// The hosted coordinator's one-second run (seeds with the hosted schedule).
    HostedTick,
    /// End of the run.
    End,
}

/// The end of a fault.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Heal {
    AgentStart(usize),
    Unhang(usize),
    StoreUncut(usize),
    NetUncut(usize, usize),
    CoordUncut(usize),
    StoreFast,
    StoreUp,
    MsgDelayOff,
    ClockRate(usize),
    Unstall(usize),
    TwoCoordinatorsOff,
    Resume,
}

/// Clock state of one host: rate drift and wall offset, anchored so changes keep it continuous.
#[derive(Debug, Clone)]
pub struct HostClock {
    /// Rate error in parts per million (positive: runs fast).
    pub rate_ppm: i64,
    pub base_mono: Us,
    pub anchor: Us,
    /// Wall clock offset (jumps), in ms.
    pub wall_offset_ms: i64,
}

impl HostClock {
    pub fn new() -> Self {
        HostClock { rate_ppm: 0, base_mono: 0, anchor: 0, wall_offset_ms: 0 }
    }

    pub fn mono(&self, now: Us) -> Us {
        let elapsed = now.saturating_sub(self.anchor) as i128;
        let scaled = elapsed * (1_000_000 + self.rate_ppm as i128) / 1_000_000;
        self.base_mono + scaled.max(0) as Us
    }

    pub fn set_rate(&mut self, now: Us, ppm: i64) {
        self.base_mono = self.mono(now);
        self.anchor = now;
        self.rate_ppm = ppm;
    }

    pub fn wall_ms(&self, now: Us) -> u64 {
        (WALL_START_MS as i64 + (self.mono(now) / MS) as i64 + self.wall_offset_ms).max(0) as u64
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// The instance runs (not crashed, not stopped by a fencer).
    pub up: bool,
    pub pg: SimPg,
    /// Cut off from the store.
    pub store_cut: bool,
    /// The agent stopped looping (its pending events are held back) while Postgres runs on.
    pub agent_hung: bool,
    /// Tagged `nofailover`.
    pub nofailover: bool,
    /// Last successful heartbeat's reported WAL position and when it landed.
    pub last_beat: Option<(Us, Option<pgdaemon_core::Lsn>)>,
    /// A fencer's EC2 stop in flight: (handle, completes at).
    pub stopping: Option<(String, Us)>,
    pub stopped_by_fence: bool,
    /// The WAL receiver makes no progress (lag grows).
    pub stalled: bool,
}

/// Counters reported per run and summed over seeds.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub faults: BTreeMap<String, u64>,
    /// Databases made by automatic bootstrap (more than one per run when a winner died).
    pub initialisations: u64,
    pub events: u64,
    pub writes: u64,
    pub acked: u64,
    pub promotions: u64,
    pub ec2_stops: u64,
    /// Runs that ended with a failover blocked by `maximum_lag_on_failover`: every candidate is
    /// further behind a replica that really holds the newer WAL than allowed (S4 over S5, by
    /// configuration; an operator's forced failover is the way out).
    pub blocked_by_lag: u64,
    /// Failsafe rounds by outcome, acknowledgements given (promises), and agent ticks that kept
    /// a primary past its own lease deadline on acknowledgements.
    pub failsafe_granted: u64,
    pub failsafe_refused: u64,
    pub failsafe_unanswered: u64,
    pub failsafe_acks: u64,
    pub failsafe_kept_ticks: u64,
    /// Wakes sent (the coordinator's, and `/demote` waking its own loop), lost on the way (node
    /// down, agent hung, partition, message faults), and the early agent loops they caused.
    pub wakes_sent: u64,
    pub wakes_lost: u64,
    pub woken_ticks: u64,
    /// Early failover on evidence: failovers started because the primary's agent refused
    /// connections, old primaries' leases released by the coordinator (`BreakLease`), probes of
    /// an agent answered "refused", and Postgres servers stopped by the `command` fencer.
    pub early_failovers: u64,
    pub lease_breaks: u64,
    pub probes_refused: u64,
    pub command_stops: u64,
    /// Failovers and switchovers by the fencer that confirmed them (`http`, `command`, `ec2`).
    pub fenced_by: BTreeMap<String, u64>,
}

/// Rules of the game that a test may deliberately break to prove the checker can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Broken {
    #[default]
    None,
    /// Every fencer answers "confirmed" without touching the node (promote without fencing).
    FenceLies,
    /// The first primary's agent clock runs at a quarter of real speed, so its own lease check
    /// (S2) is worthless.
    SlowAgentClock,
    /// Promotion requests are carried out even when the simulated Postgres would refuse them
    /// because another server is still writable (replaces the candidate's knowledge).
    SkipLeaseCheck,
    /// Members answer failsafe requests with an acknowledgement without promising anything (the
    /// request never reaches their agent): a primary cut off from the store keeps running while
    /// a replacement may take over.
    FailsafeLies,
}

/// The world every handle (store wrapper, clock, Postgres control, fencer) shares.
pub struct Shared {
    pub now: Us,
    pub rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<(Us, u64, Event)>>,
    /// The actor being polled, and the wake-up its sleep asked for.
    pub current: Option<ActorId>,
    pub wake_req: Option<Us>,
    pub nodes: Vec<Node>,
    /// Clocks by host: nodes first, then coordinators.
    pub clocks: Vec<HostClock>,
    /// Coordinator slots cut off from the store.
    pub coord_cut: Vec<bool>,
    /// Blocked node pairs (both directions), as (min, max).
    pub net_cut: Vec<(usize, usize)>,
    pub store_outage: bool,
    /// Store latency spike: (min, max) added per call.
    pub store_slow: Option<(Us, Us)>,
    /// Coordinator-to-agent (HTTP) messages are delayed by this much.
    pub msg_delay: Us,
    pub trace: Trace,
    pub counters: Counters,
    pub next_id: u64,
    /// Acknowledged write ids (ascending).
    pub acked: Vec<u64>,
    pub broken: Broken,
    /// Store writes happened since the last invariant check.
    pub store_dirty: bool,
    /// First violation found.
    pub violation: Option<String>,
    /// A fatal simulation problem (not a finding about the code under test).
    pub sim_error: Option<String>,
    /// Promotions as (time, node).
    pub promotions: Vec<(Us, usize)>,
    pub sync_required: bool,
    pub max_lag: u64,
    pub lease_ms: u64,
    /// "Demote now" handles of the running agents, by node (the HTTP fencer's way in).
    pub agent_handles: Vec<Option<pgdaemon_core::agent::AgentHandle>>,
    /// When each node's hardware watchdog fires unless petted again (`None`: disarmed), as the
    /// node agent's lease watchdog task last set it.
    pub watchdog_fires_at: Vec<Option<Us>>,
    /// Chance that a coordinator is killed right after each cluster-record write it makes.
    pub coord_kill_after_write: f64,
    /// Time of the last heal (liveness is judged from here).
    pub last_heal: Us,
    /// Agents are woken (the coordinator's waker, `/demote`); off: they wait for their tick.
    pub wake: bool,
}

impl Shared {
    pub fn new(seed: u64, nodes: Vec<Node>, coordinators: usize) -> Self {
        let hosts = nodes.len() + coordinators;
        Shared {
            now: 0,
            rng: Rng::new(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            current: None,
            wake_req: None,
            nodes,
            clocks: vec![HostClock::new(); hosts],
            coord_cut: vec![false; coordinators],
            net_cut: Vec::new(),
            store_outage: false,
            store_slow: None,
            msg_delay: 0,
            trace: Trace::new(4000),
            counters: Counters::default(),
            next_id: 1,
            acked: Vec::new(),
            broken: Broken::None,
            store_dirty: false,
            violation: None,
            sim_error: None,
            promotions: Vec::new(),
            sync_required: false,
            max_lag: 0,
            lease_ms: 0,
            agent_handles: vec![None; hosts - coordinators],
            watchdog_fires_at: vec![None; hosts - coordinators],
            coord_kill_after_write: 0.0,
            last_heal: 0,
            wake: true,
        }
    }

    pub fn schedule(&mut self, at: Us, ev: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at.max(self.now), self.seq, ev)));
    }

    pub fn pop(&mut self) -> Option<(Us, Event)> {
        self.queue.pop().map(|Reverse((t, _, e))| (t, e))
    }

    pub fn log(&mut self, line: impl AsRef<str>) {
        let now = self.now;
        self.trace.push(now, line.as_ref());
    }

    pub fn count_fault(&mut self, kind: &str) {
        *self.counters.faults.entry(kind.to_string()).or_default() += 1;
    }

    pub fn violate(&mut self, what: impl Into<String>) {
        if self.violation.is_none() {
            let what = what.into();
            self.log(format!("VIOLATION: {what}"));
            self.violation = Some(what);
        }
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node an agent API URL (`http://<node>:8008`, as the sim's agents publish) names.
    pub fn node_by_api_url(&self, url: &str) -> Option<usize> {
        self.nodes.iter().position(|n| api_url(&n.name) == url)
    }

    /// Coordinator slot `slot` can reach node `node` over the network (its API port, the SSM
    /// agent): the node is up, neither is cut off (a node cut off from the store is cut off from
    /// the AWS side the coordinator runs on, as for its wakes).
    pub fn coord_reaches(&self, slot: usize, node: usize) -> bool {
        self.nodes[node].up && !self.nodes[node].store_cut && !self.coord_cut[slot]
    }

    pub fn cut_between(&self, a: usize, b: usize) -> bool {
        a != b && self.net_cut.contains(&(a.min(b), a.max(b)))
    }

    /// Nodes whose Postgres accepts writes now.
    pub fn writable(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].up && self.nodes[i].pg.writable()).collect()
    }
}

/// The agent API base URL of node `name` (its heartbeat's `api_url`).
pub fn api_url(name: &str) -> String {
    format!("http://{name}:8008")
}

/// The shared world, locked briefly by each handle. Never held across an `.await` or a call
/// into the code under test; re-entry is a simulator bug and panics instead of deadlocking.
#[derive(Clone)]
pub struct World(Arc<Mutex<Shared>>);

impl World {
    pub fn new(shared: Shared) -> Self {
        World(Arc::new(Mutex::new(shared)))
    }

    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        match self.0.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                panic!("simulator bug: world locked re-entrantly")
            }
        }
    }

    pub fn now(&self) -> Us {
        self.lock().now
    }

    /// Suspends the current actor until virtual time `until`.
    pub fn sleep_until(&self, until: Us) -> Sleep {
        Sleep { world: self.clone(), until }
    }

    pub fn sleep(&self, d: Us) -> Sleep {
        let until = self.now() + d;
        self.sleep_until(until)
    }
}

/// A wait on virtual time; completes once the executor resumes the actor at `until`.
pub struct Sleep {
    world: World,
    until: Us,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        let mut w = self.world.lock();
        if w.now >= self.until {
            return Poll::Ready(());
        }
        if w.current.is_none() {
            w.sim_error.get_or_insert_with(|| "a sleep was polled outside any actor".into());
        }
        // Several sleeps polled at once (e.g. `join_all` over peers): wake at the earliest.
        let until = w.wake_req.map_or(self.until, |at| at.min(self.until));
        w.wake_req = Some(until);
        Poll::Pending
    }
}

/// Polls a future once with a waker that does nothing (the executor knows when to poll again).
pub fn poll_once<T>(fut: Pin<&mut (dyn Future<Output = T> + '_)>) -> Poll<T> {
    let mut cx = Context::from_waker(Waker::noop());
    fut.poll(&mut cx)
}

/// Runs a future that must complete without waiting on virtual time (e.g. a raw store read by
/// the checker). `None` if it did not.
pub fn run_now<T>(fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    match poll_once(fut.as_mut()) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// A host's [`Clock`] over virtual time: drifting monotonic clock, jumping wall clock. Each
/// process incarnation gets its own origin, as a restarted process would.
#[derive(Clone)]
pub struct SimClock {
    world: World,
    host: usize,
    origin: Us,
    /// Multiplier on elapsed time (1.0 normally; the `SlowAgentClock` broken variant lowers it).
    slow_pct: u64,
}

impl SimClock {
    pub fn new(world: World, host: usize, slow_pct: u64) -> Self {
        let (origin, _) = {
            let w = world.lock();
            (w.clocks[host].mono(w.now), ())
        };
        SimClock { world, host, origin, slow_pct }
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> Duration {
        let w = self.world.lock();
        let us = w.clocks[self.host].mono(w.now).saturating_sub(self.origin);
        // A process's monotonic clock starts at an arbitrary value; 1000 s keeps it far from zero.
        Duration::from_micros(1_000 * SEC + us * self.slow_pct / 100)
    }

    fn wall_ms(&self) -> u64 {
        let w = self.world.lock();
        w.clocks[self.host].wall_ms(w.now)
    }
}

/// The readable event trace: the last `cap` lines (a failure's cause is near its end).
#[derive(Debug, Clone)]
pub struct Trace {
    lines: VecDeque<String>,
    cap: usize,
    dropped: u64,
}

impl Trace {
    pub fn new(cap: usize) -> Self {
        Trace { lines: VecDeque::new(), cap, dropped: 0 }
    }

    pub fn push(&mut self, now: Us, line: &str) {
        if self.lines.len() == self.cap {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(format!("{:>9.3}s  {line}", now as f64 / SEC as f64));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.dropped > 0 {
            out.push_str(&format!("... {} earlier lines dropped\n", self.dropped));
        }
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    pub fn lines(&self) -> impl Iterator<Item = &String> {
        self.lines.iter()
    }
}
