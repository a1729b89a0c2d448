//! The real code under test wrapped as simulated processes: [`AgentRuntime`] (one tick per
//! step), the [`Coordinator`] (one invocation per step, looping `run_until_settled` on virtual
//! sleeps), plus the simulated fencers and the fast-path trigger they are wired to.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::agent::{
    AgentHandle, AgentRuntime, CoordinatorTrigger, FailsafePeers, FailsafeReply, FailsafeRequest, RoundOutcome, TriggerError,
};
use pgdaemon_core::coordinator::{run_until_settled, AgentProbe, AgentReach, AgentWaker, Coordinator, WakeTarget};
use pgdaemon_core::fence::{FenceChain, FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_core::LeaseSighting;

use crate::pgctl::{stop_server, SimPgControl};
use crate::store::SimStore;
use crate::world::{Actor, Broken, Event, SimClock, StepEnd, Task, Us, World, MS, SEC};

pub type SimAgent = AgentRuntime<SimStore, SimPgControl, SimClock>;
pub type SimCoordinator = Coordinator<SimStore, FenceChain, SimClock>;

pub struct AgentActor {
    pub rt: SimAgent,
    pub world: World,
    pub node: usize,
}

impl Actor for AgentActor {
    fn step(mut self: Box<Self>) -> Task {
        Box::pin(async move {
            let report = self.rt.tick().await;
            if report.reason.contains("on every member's acknowledgement") {
                self.world.lock().counters.failsafe_kept_ticks += 1;
            }
            // PGDAEMON_SIM_VERBOSE=1 also traces renewals, heartbeats and store errors.
            let verbose = std::env::var_os("PGDAEMON_SIM_VERBOSE").is_some();
            let done: Vec<&str> =
                report.done().into_iter().filter(|a| verbose || !matches!(*a, "renew_lease" | "publish_heartbeat")).collect();
            let errors: Vec<&String> = report
                .errors
                .iter()
                .filter(|e| verbose || (!e.starts_with("publish_heartbeat") && !e.contains("simulated")))
                .collect();
            if !done.is_empty() || !errors.is_empty() {
                let mut w = self.world.lock();
                let name = w.nodes[self.node].name.clone();
                w.log(format!("agent {name}: did {done:?} errors {errors:?} ({})", report.reason));
            }
            let next = self.rt.interval().as_micros() as u64;
            StepEnd { actor: Some(self as Box<dyn Actor>), next_in: Some(next) }
        })
    }
}

/// The agent process's lease watchdog task (node-agent runs it every 200 ms beside the loop):
/// demotes a read-write Postgres whose lease deadline passed while a tick is stuck in store calls.
pub struct WatchdogActor {
    pub handle: AgentHandle,
    pub world: World,
    pub node: usize,
    /// The cluster's `safety_margin_ms`: the device fires by half of it past the deadline.
    pub safety_margin: std::time::Duration,
}

/// node-agent's `WATCHDOG_PERIOD`.
pub const WATCHDOG_EVERY: u64 = 200 * MS;

impl Actor for WatchdogActor {
    fn step(self: Box<Self>) -> Task {
        Box::pin(async move {
            let result = self.handle.enforce_lease_deadline().await;
            let left = self.handle.lease_valid_for();
            let mut w = self.world.lock();
            if !matches!(result, Ok(false)) {
                let name = w.nodes[self.node].name.clone();
                w.log(format!("agent {name}: lease watchdog: {result:?}"));
            }
            // The hardware watchdog as node-agent/src/watchdog.rs drives it: disarmed when this
            // agent may not lead; else petted to fire by half a margin past its deadline (whole
            // seconds), and not petted once that is under a second.
            match left {
                None => w.watchdog_fires_at[self.node] = None,
                Some(left) => {
                    let secs = (left + self.safety_margin / 2).as_secs();
                    if secs >= 1 {
                        let at = w.now + secs * SEC;
                        w.watchdog_fires_at[self.node] = Some(at);
                    }
                }
            }
            drop(w);
            StepEnd { actor: Some(self as Box<dyn Actor>), next_in: Some(WATCHDOG_EVERY) }
        })
    }
}

/// The agent process's failsafe task (node-agent's `failsafe_task`, every 100 ms beside the loop):
/// asks every required member to acknowledge a held lease that was not renewed in time.
pub struct FailsafeActor {
    pub handle: AgentHandle,
    pub peers: SimFailsafePeers,
    pub world: World,
    pub node: usize,
    /// Kind of the last outcome logged (node-agent logs changes, not every round).
    pub last: Option<&'static str>,
}

/// node-agent's failsafe `CHECK_PERIOD`.
pub const FAILSAFE_EVERY: u64 = 100 * MS;

impl Actor for FailsafeActor {
    fn step(mut self: Box<Self>) -> Task {
        Box::pin(async move {
            if let Some(outcome) = self.handle.failsafe_round(&self.peers).await {
                let kind = match &outcome {
                    RoundOutcome::Granted { .. } => "granted",
                    RoundOutcome::Refused { .. } => "refused",
                    RoundOutcome::Unanswered { .. } => "unanswered",
                };
                let verbose = std::env::var_os("PGDAEMON_SIM_VERBOSE").is_some();
                if verbose || self.last != Some(kind) {
                    let mut w = self.world.lock();
                    let name = w.nodes[self.node].name.clone();
                    let detail = match &outcome {
                        RoundOutcome::Granted { until, members } => {
                            format!("granted by {members:?} until {} ms (own clock)", until.as_millis())
                        }
                        RoundOutcome::Refused { member, reason } => {
                            format!("refused by {member}: {reason}")
                        }
                        RoundOutcome::Unanswered { member, error } => {
                            format!("{member} did not answer: {error}")
                        }
                    };
                    w.log(format!("agent {name}: failsafe round {detail}"));
                }
                self.last = Some(kind);
                let mut w = self.world.lock();
                match kind {
                    "granted" => w.counters.failsafe_granted += 1,
                    "refused" => w.counters.failsafe_refused += 1,
                    _ => w.counters.failsafe_unanswered += 1,
                }
            }
            StepEnd { actor: Some(self as Box<dyn Actor>), next_in: Some(FAILSAFE_EVERY) }
        })
    }
}

/// `POST /failsafe` over the simulated network: subject to node-node cuts, message delay, the
/// target's node and agent being down or hung. The request can land (and the promise be made)
/// although the reply comes too late for the asker, as over HTTP.
pub struct SimFailsafePeers {
    pub world: World,
    /// The asking node.
    pub node: usize,
}

impl SimFailsafePeers {
    /// The target can take the request now: node up, agent running and not hung, no cut.
    fn reachable(&self, target: usize) -> Option<AgentHandle> {
        let w = self.world.lock();
        let n = &w.nodes[target];
        if !n.up || n.agent_hung || w.cut_between(self.node, target) {
            return None;
        }
        w.agent_handles[target].clone()
    }
}

#[async_trait]
impl FailsafePeers for SimFailsafePeers {
    async fn ask(&self, api_url: &str, request: &FailsafeRequest, timeout: Duration) -> Result<FailsafeReply, String> {
        let (start, deadline, target, there, back) = {
            let mut w = self.world.lock();
            let start = w.now;
            let deadline = start + timeout.as_micros() as u64;
            let target = w.node_by_api_url(api_url);
            let there = w.rng.range(MS, 20 * MS) + w.msg_delay;
            let back = w.rng.range(MS, 20 * MS) + w.msg_delay;
            (start, deadline, target, there, back)
        };
        let Some(target) = target else {
            return Err(format!("{api_url}: unknown host"));
        };
        let timed_out = || format!("{api_url}: no answer within {} ms", timeout.as_millis());
        if start + there >= deadline {
            self.world.sleep_until(deadline).await;
            return Err(timed_out());
        }
        self.world.sleep(there).await;
        let Some(handle) = self.reachable(target) else {
            // Down, hung or cut off: the request goes unanswered until the client gives up.
            self.world.sleep_until(deadline).await;
            return Err(timed_out());
        };
        let lie = self.world.lock().broken == Broken::FailsafeLies;
        let reply = if lie {
            FailsafeReply {
                member: self.world.lock().nodes[target].name.clone(),
                ack: true,
                valid_ms: request.valid_ms,
                term: request.term,
                reason: "simulated lie: nothing promised".into(),
            }
        } else {
            handle.failsafe_ack(request)
        };
        {
            let mut w = self.world.lock();
            if reply.ack {
                w.counters.failsafe_acks += 1;
            }
            let name = w.nodes[target].name.clone();
            if reply.ack || std::env::var_os("PGDAEMON_SIM_VERBOSE").is_some() {
                w.log(format!(
                    "agent {name}: failsafe ack {} to {} term {}: {} ms ({})",
                    reply.ack, request.leader, request.term, reply.valid_ms, reply.reason
                ));
            }
        }
        let now = self.world.now();
        if now + back >= deadline {
            self.world.sleep_until(deadline).await;
            return Err(timed_out());
        }
        self.world.sleep(back).await;
        if self.world.lock().cut_between(self.node, target) {
            self.world.sleep_until(deadline).await;
            return Err(timed_out());
        }
        Ok(reply)
    }
}

pub struct CoordActor {
    pub coord: SimCoordinator,
    pub world: World,
    pub slot: usize,
    pub cluster: String,
    pub budget: Duration,
    pub poll: Duration,
    /// A long-lived (hosted) coordinator keeps its lock between runs, renewing it as it goes; a
    /// Lambda invocation releases it at the end.
    pub keeps_lock: bool,
}

impl Actor for CoordActor {
    fn step(mut self: Box<Self>) -> Task {
        Box::pin(async move {
            let world = self.world.clone();
            let sleep = move |d: Duration| world.sleep(d.as_micros() as u64);
            let cluster = self.cluster.clone();
            let report = run_until_settled(&mut self.coord, &cluster, self.budget, self.poll, sleep).await;
            // As the Lambda's handler does: the next invocation (a new owner after a cold start)
            // need not wait out this one's lock. A killed run never gets here.
            let released = if self.keeps_lock { Ok(()) } else { self.coord.release(&cluster).await };
            {
                let mut w = self.world.lock();
                let slot = self.slot;
                w.counters.lease_breaks += report.steps.iter().filter(|s| s.starts_with("released ")).count() as u64;
                if !report.steps.is_empty() || !matches!(report.outcome, pgdaemon_core::coordinator::Outcome::Idle) {
                    w.log(format!("coord{slot}: {:?} steps {:?} ({})", report.outcome, report.steps, report.reason));
                }
                if let Err(e) = released {
                    w.log(format!("coord{slot}: releasing the coordinator lock: {e}"));
                }
            }
            StepEnd { actor: Some(self as Box<dyn Actor>), next_in: None }
        })
    }
}

/// The fast path: an asynchronous invoke that reaches the coordinator after a network delay.
pub struct SimTrigger {
    pub world: World,
    pub node: usize,
}

#[async_trait]
impl CoordinatorTrigger for SimTrigger {
    async fn request_run(&self, _cluster: &str, evidence: &LeaseSighting) -> Result<(), TriggerError> {
        let mut w = self.world.lock();
        if w.nodes[self.node].store_cut {
            return Err(TriggerError("simulated: AWS API unreachable".into()));
        }
        let at = w.now + w.rng.range(50 * MS, 400 * MS) + w.msg_delay;
        let name = w.nodes[self.node].name.clone();
        w.log(format!(
            "agent {name}: asks for a coordinator run (lease term {} unchanged {} ms)",
            evidence.term, evidence.unchanged_ms
        ));
        w.schedule(at, Event::Trigger);
        Ok(())
    }
}

/// The coordinator's waker (`POST /wake`, node-agent/src/wake.rs) over the simulated network:
/// the request reaches the agent 1-20 ms later plus any injected message delay, and is lost when
/// the node is down, its agent hung or dead, with a chance of one in two while the node is
/// partitioned (from the store or a peer: its network is in trouble), one in five under message
/// faults, and one in a hundred otherwise. Never waits: the delivery is an event
/// ([`Event::WakeAgent`]), where the agent runs a loop at once (sim/src/run/wake.rs).
pub struct SimWaker {
    pub world: World,
}

impl AgentWaker for SimWaker {
    fn wake(&self, target: &WakeTarget) {
        let mut w = self.world.lock();
        let Some(node) = w.node_index(&target.member).filter(|_| w.wake) else { return };
        w.counters.wakes_sent += 1;
        let partitioned = w.nodes[node].store_cut || w.net_cut.iter().any(|&(a, b)| a == node || b == node);
        let loss = if partitioned {
            0.5
        } else if w.msg_delay > 0 {
            0.2
        } else {
            0.01
        };
        let n = &w.nodes[node];
        let name = n.name.clone();
        if !n.up || n.agent_hung || w.agent_handles[node].is_none() || w.rng.chance(loss) {
            w.counters.wakes_lost += 1;
            w.log(format!("wake {name} ({}): lost", target.describe()));
            return;
        }
        let at = w.now + w.rng.range(MS, 20 * MS) + w.msg_delay;
        w.schedule(at, Event::WakeAgent { node });
    }
}

pub fn waker(world: &World) -> Arc<dyn AgentWaker> {
    Arc::new(SimWaker { world: world.clone() })
}

/// The agent's HTTP "demote now" endpoint, reached over the simulated network.
pub struct SimHttpFencer {
    pub world: World,
}

#[async_trait]
impl Fencer for SimHttpFencer {
    fn name(&self) -> &str {
        "http"
    }

    async fn fence(&self, target: &FenceTarget, _pending: Option<&PendingHandle>) -> FenceStatus {
        let (node, handle, delay, hung) = {
            let mut w = self.world.lock();
            let Some(node) = w.node_index(&target.member) else {
                return FenceStatus::Refused { detail: "unknown member".into() };
            };
            if w.broken == Broken::FenceLies {
                return FenceStatus::Confirmed { detail: "simulated lie".into(), lsn: None };
            }
            let delay = w.rng.range(MS, 20 * MS) + w.msg_delay;
            let handle: Option<AgentHandle> = if w.nodes[node].up { w.agent_handles[node].clone() } else { None };
            (node, handle, delay, w.nodes[node].agent_hung)
        };
        let Some(handle) = handle else {
            self.world.sleep(delay).await;
            return FenceStatus::Failed { detail: "connection refused".into() };
        };
        if hung {
            // The whole agent process is stuck: the request times out.
            self.world.sleep(delay + 3 * SEC).await;
            return FenceStatus::Failed { detail: "timed out".into() };
        }
        self.world.sleep(delay).await;
        let reason = format!("{:?} for term {}", target.kind, target.term);
        match handle.demote_now_with_position(target.term, &reason).await {
            Ok(lsn) => {
                // The `/demote` handler wakes the agent's loop (it releases the lease at once).
                {
                    let mut w = self.world.lock();
                    if w.wake {
                        let now = w.now;
                        w.counters.wakes_sent += 1;
                        w.schedule(now, Event::WakeAgent { node });
                    }
                }
                // The agent's `/demote` answer: a clean demotion reports the final WAL position.
                self.world.sleep(delay).await;
                FenceStatus::Confirmed { detail: "agent demoted".into(), lsn }
            }
            Err(e) => FenceStatus::Failed { detail: e.to_string() },
        }
    }
}

/// EC2 StopInstances: the instance stops (Postgres with it) some seconds after the call;
/// confirmed only once it is stopped.
pub struct SimEc2Fencer {
    pub world: World,
}

#[async_trait]
impl Fencer for SimEc2Fencer {
    fn name(&self) -> &str {
        "ec2"
    }

    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        let latency = {
            let mut w = self.world.lock();
            w.rng.range(50 * MS, 400 * MS)
        };
        self.world.sleep(latency).await;
        let mut w = self.world.lock();
        let Some(id) = target.instance_id.as_deref() else {
            return FenceStatus::Refused { detail: "no instance id".into() };
        };
        let Some(node) = w.nodes.iter().position(|n| instance_id(&n.name) == id) else {
            return FenceStatus::Refused { detail: format!("instance {id} not tagged for this cluster") };
        };
        if w.broken == Broken::FenceLies {
            return FenceStatus::Confirmed { detail: "simulated lie".into(), lsn: None };
        }
        if w.rng.chance(0.03) {
            return FenceStatus::Failed { detail: "simulated API error".into() };
        }
        if w.nodes[node].stopped_by_fence && !w.nodes[node].up {
            return FenceStatus::Confirmed { detail: format!("{id} stopped"), lsn: None };
        }
        if let Some((h, _)) = &w.nodes[node].stopping {
            if pending.is_none_or(|p| p.handle == *h) {
                return FenceStatus::Pending {
                    handle: PendingHandle::new(self.name(), h.clone()),
                    detail: format!("{id} stopping"),
                };
            }
        }
        let handle = format!("stop-{}", w.fresh_id());
        let done = w.now + w.rng.range(2 * SEC, 40 * SEC);
        w.nodes[node].stopping = Some((handle.clone(), done));
        w.schedule(done, Event::InstanceStopped { node });
        w.log(format!("ec2: StopInstances {id} for term {} ({:?}), handle {handle}", target.term, target.kind));
        w.counters.ec2_stops += 1;
        FenceStatus::Pending { handle: PendingHandle::new(self.name(), handle), detail: format!("{id} stopping") }
    }
}

pub fn instance_id(node: &str) -> String {
    format!("i-{node}")
}

/// The coordinator's fence chain: `http`, then (`command`) the command fencer, then `ec2`.
/// `slot`: the coordinator slot whose network the fencers use.
pub fn fence_chain(world: &World, slot: usize, command: bool) -> FenceChain {
    let mut fencers: Vec<Box<dyn Fencer>> = vec![Box::new(SimHttpFencer { world: world.clone() })];
    if command {
        fencers.push(Box::new(SimCommandFencer { world: world.clone(), slot }));
    }
    fencers.push(Box::new(SimEc2Fencer { world: world.clone() }));
    FenceChain::new(fencers)
}

pub fn trigger(world: &World, node: usize) -> Arc<dyn CoordinatorTrigger> {
    Arc::new(SimTrigger { world: world.clone(), node })
}

/// The probe's connect timeout: a slower answer counts as none.
const PROBE_TIMEOUT: Us = 300 * MS;

/// Where a probe is made from.
#[derive(Debug, Clone, Copy)]
pub enum ProbeFrom {
    /// Coordinator slot `k` (see [`crate::world::Shared::coord_reaches`]).
    Coordinator(usize),
    /// Node `i`'s agent (a replica probing the primary's agent): both nodes up, no cut between.
    Node(usize),
}

/// An [`AgentProbe`] over the simulated network: a TCP connect to the agent's API port from
/// `from`. Refused when the node is up and reachable and no agent process listens (crashed, not
/// yet restarted); answered by a live agent, hung or not (the kernel accepts); no answer when the
/// node is down or cut off, when messages are delayed past the connect timeout, and one in a
/// hundred times otherwise. 1-5 ms each way plus any injected message delay.
pub struct SimProbe {
    pub world: World,
    pub from: ProbeFrom,
}

#[async_trait]
impl AgentProbe for SimProbe {
    async fn probe(&self, api_url: &str) -> AgentReach {
        let (node, there, back) = {
            let mut w = self.world.lock();
            let there = w.rng.range(MS, 5 * MS) + w.msg_delay;
            let back = w.rng.range(MS, 5 * MS) + w.msg_delay;
            (w.node_by_api_url(api_url), there, back)
        };
        let Some(node) = node.filter(|_| there + back <= PROBE_TIMEOUT) else {
            self.world.sleep(PROBE_TIMEOUT).await;
            return AgentReach::NoAnswer;
        };
        self.world.sleep(there).await;
        let reach = {
            let mut w = self.world.lock();
            let reaches = match self.from {
                ProbeFrom::Coordinator(slot) => w.coord_reaches(slot, node),
                ProbeFrom::Node(i) => w.nodes[i].up && w.nodes[node].up && !w.cut_between(i, node),
            };
            if !reaches || w.rng.chance(0.01) {
                AgentReach::NoAnswer
            } else if w.agent_handles[node].is_none() {
                w.counters.probes_refused += 1;
                AgentReach::Refused
            } else {
                AgentReach::Answered
            }
        };
        if reach == AgentReach::NoAnswer {
            self.world.sleep(PROBE_TIMEOUT - there).await;
        } else {
            self.world.sleep(back).await;
        }
        reach
    }
}

pub fn probe(world: &World, from: ProbeFrom) -> Arc<dyn AgentProbe> {
    Arc::new(SimProbe { world: world.clone(), from })
}

/// A fence command run against the target's host (SSM RunCommand, a local command over ssh):
/// stops its Postgres at once (an immediate stop, WAL kept) and confirms "stopped" once Postgres
/// is not running. Fails when the node is down or cut off from the coordinator, and three times in
/// a hundred anyway. The agent is not told: a live agent may start its Postgres again (a start
/// already in flight fails, see [`crate::simpg::SimPg::killed`]); the checker judges what follows.
pub struct SimCommandFencer {
    pub world: World,
    pub slot: usize,
}

#[async_trait]
impl Fencer for SimCommandFencer {
    fn name(&self) -> &str {
        "command"
    }

    async fn fence(&self, target: &FenceTarget, _pending: Option<&PendingHandle>) -> FenceStatus {
        let (node, run, verify) = {
            let mut w = self.world.lock();
            let Some(node) = w.node_index(&target.member) else {
                return FenceStatus::Refused { detail: "unknown member".into() };
            };
            if w.broken == Broken::FenceLies {
                return FenceStatus::Confirmed { detail: "simulated lie".into(), lsn: None };
            }
            (node, w.rng.range(50 * MS, 300 * MS) + w.msg_delay, w.rng.range(10 * MS, 100 * MS) + w.msg_delay)
        };
        self.world.sleep(run).await;
        {
            let mut w = self.world.lock();
            if !w.coord_reaches(self.slot, node) {
                return FenceStatus::Failed { detail: "fence command failed: host unreachable".into() };
            }
            if w.rng.chance(0.03) {
                return FenceStatus::Failed { detail: "fence command failed: simulated error".into() };
            }
            w.nodes[node].pg.killed += 1;
            w.counters.command_stops += 1;
            let why = format!("fence command for term {}", target.term);
            stop_server(&mut w, node, &why, false);
        }
        // The command verifies before it answers: nothing may run on the port.
        self.world.sleep(verify).await;
        let w = self.world.lock();
        if !w.coord_reaches(self.slot, node) {
            return FenceStatus::Failed { detail: "fence command failed: no answer from the host".into() };
        }
        if w.nodes[node].pg.running {
            return FenceStatus::Failed { detail: "fence command failed: postgres running again".into() };
        }
        FenceStatus::Confirmed { detail: "fence command succeeded: stopped".into(), lsn: None }
    }
}
