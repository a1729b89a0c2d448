//! The real code under test wrapped as simulated processes: [`AgentRuntime`] (one tick per
//! step), the [`Coordinator`] (one invocation per step, looping `run_until_settled` on virtual
//! sleeps), plus the simulated fencers and the fast-path trigger they are wired to.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::agent::{AgentHandle, AgentRuntime, CoordinatorTrigger, TriggerError};
use pgdaemon_core::coordinator::{run_until_settled, Coordinator};
use pgdaemon_core::fence::{FenceChain, FenceStatus, FenceTarget, Fencer};
use pgdaemon_core::LeaseSighting;

use crate::pgctl::SimPgControl;
use crate::store::SimStore;
use crate::world::{Actor, Broken, Event, SimClock, StepEnd, Task, World, MS, SEC};

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
            // PGDAEMON_SIM_VERBOSE=1 also traces renewals, heartbeats and store errors.
            let verbose = std::env::var_os("PGDAEMON_SIM_VERBOSE").is_some();
            let done: Vec<&str> = report
                .done()
                .into_iter()
                .filter(|a| verbose || !matches!(*a, "renew_lease" | "publish_heartbeat"))
                .collect();
            let errors: Vec<&String> = report
                .errors
                .iter()
                .filter(|e| {
                    verbose || (!e.starts_with("publish_heartbeat") && !e.contains("simulated"))
                })
                .collect();
            if !done.is_empty() || !errors.is_empty() {
                let mut w = self.world.lock();
                let name = w.nodes[self.node].name.clone();
                w.log(format!(
                    "agent {name}: did {done:?} errors {errors:?} ({})",
                    report.reason
                ));
            }
            let next = self.rt.interval().as_micros() as u64;
            StepEnd {
                actor: Some(self as Box<dyn Actor>),
                next_in: Some(next),
            }
        })
    }
}

/// The agent process's lease watchdog task (node-agent runs it every 200 ms beside the loop):
/// demotes a read-write Postgres whose lease deadline passed while a tick is stuck in store calls.
pub struct WatchdogActor {
    pub handle: AgentHandle,
    pub world: World,
    pub node: usize,
}

/// node-agent's `WATCHDOG_PERIOD`.
pub const WATCHDOG_EVERY: u64 = 200 * MS;

impl Actor for WatchdogActor {
    fn step(self: Box<Self>) -> Task {
        Box::pin(async move {
            let result = self.handle.enforce_lease_deadline().await;
            if !matches!(result, Ok(false)) {
                let mut w = self.world.lock();
                let name = w.nodes[self.node].name.clone();
                w.log(format!("agent {name}: lease watchdog: {result:?}"));
            }
            StepEnd {
                actor: Some(self as Box<dyn Actor>),
                next_in: Some(WATCHDOG_EVERY),
            }
        })
    }
}

pub struct CoordActor {
    pub coord: SimCoordinator,
    pub world: World,
    pub slot: usize,
    pub cluster: String,
    pub budget: Duration,
    pub poll: Duration,
}

impl Actor for CoordActor {
    fn step(mut self: Box<Self>) -> Task {
        Box::pin(async move {
            let world = self.world.clone();
            let sleep = move |d: Duration| world.sleep(d.as_micros() as u64);
            let cluster = self.cluster.clone();
            let report =
                run_until_settled(&mut self.coord, &cluster, self.budget, self.poll, sleep).await;
            {
                let mut w = self.world.lock();
                let slot = self.slot;
                if !report.steps.is_empty()
                    || !matches!(report.outcome, pgdaemon_core::coordinator::Outcome::Idle)
                {
                    w.log(format!(
                        "coord{slot}: {:?} steps {:?} ({})",
                        report.outcome, report.steps, report.reason
                    ));
                }
            }
            StepEnd {
                actor: Some(self as Box<dyn Actor>),
                next_in: None,
            }
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
    async fn request_run(
        &self,
        _cluster: &str,
        evidence: &LeaseSighting,
    ) -> Result<(), TriggerError> {
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

/// The agent's HTTP "demote now" endpoint, reached over the simulated network.
pub struct SimHttpFencer {
    pub world: World,
}

#[async_trait]
impl Fencer for SimHttpFencer {
    fn name(&self) -> &str {
        "http"
    }

    async fn fence(&self, target: &FenceTarget, _pending: Option<&str>) -> FenceStatus {
        let (handle, delay, hung) = {
            let mut w = self.world.lock();
            let Some(node) = w.node_index(&target.member) else {
                return FenceStatus::Refused {
                    detail: "unknown member".into(),
                };
            };
            if w.broken == Broken::FenceLies {
                return FenceStatus::Confirmed {
                    detail: "simulated lie".into(),
                    lsn: None,
                };
            }
            let delay = w.rng.range(MS, 20 * MS) + w.msg_delay;
            let handle: Option<AgentHandle> = if w.nodes[node].up {
                w.agent_handles[node].clone()
            } else {
                None
            };
            (handle, delay, w.nodes[node].agent_hung)
        };
        let Some(handle) = handle else {
            self.world.sleep(delay).await;
            return FenceStatus::Failed {
                detail: "connection refused".into(),
            };
        };
        if hung {
            // The whole agent process is stuck: the request times out.
            self.world.sleep(delay + 3 * SEC).await;
            return FenceStatus::Failed {
                detail: "timed out".into(),
            };
        }
        self.world.sleep(delay).await;
        let reason = format!("{:?} for term {}", target.kind, target.term);
        match handle.demote_now_with_position(target.term, &reason).await {
            Ok(lsn) => {
                // The agent's `/demote` answer: a clean demotion reports the final WAL position.
                self.world.sleep(delay).await;
                FenceStatus::Confirmed {
                    detail: "agent demoted".into(),
                    lsn,
                }
            }
            Err(e) => FenceStatus::Failed {
                detail: e.to_string(),
            },
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

    async fn fence(&self, target: &FenceTarget, pending: Option<&str>) -> FenceStatus {
        let latency = {
            let mut w = self.world.lock();
            w.rng.range(50 * MS, 400 * MS)
        };
        self.world.sleep(latency).await;
        let mut w = self.world.lock();
        let Some(id) = target.instance_id.as_deref() else {
            return FenceStatus::Refused {
                detail: "no instance id".into(),
            };
        };
        let Some(node) = w.nodes.iter().position(|n| instance_id(&n.name) == id) else {
            return FenceStatus::Refused {
                detail: format!("instance {id} not tagged for this cluster"),
            };
        };
        if w.broken == Broken::FenceLies {
            return FenceStatus::Confirmed {
                detail: "simulated lie".into(),
                lsn: None,
            };
        }
        if w.rng.chance(0.03) {
            return FenceStatus::Failed {
                detail: "simulated API error".into(),
            };
        }
        if w.nodes[node].stopped_by_fence && !w.nodes[node].up {
            return FenceStatus::Confirmed {
                detail: format!("{id} stopped"),
                lsn: None,
            };
        }
        if let Some((h, _)) = &w.nodes[node].stopping {
            if pending.is_none_or(|p| p == h) {
                return FenceStatus::Pending {
                    handle: h.clone(),
                    detail: format!("{id} stopping"),
                };
            }
        }
        let handle = format!("stop-{}", w.fresh_id());
        let done = w.now + w.rng.range(2 * SEC, 40 * SEC);
        w.nodes[node].stopping = Some((handle.clone(), done));
        w.schedule(done, Event::InstanceStopped { node });
        w.log(format!(
            "ec2: StopInstances {id} for term {} ({:?}), handle {handle}",
            target.term, target.kind
        ));
        w.counters.ec2_stops += 1;
        FenceStatus::Pending {
            handle,
            detail: format!("{id} stopping"),
        }
    }
}

pub fn instance_id(node: &str) -> String {
    format!("i-{node}")
}

pub fn fence_chain(world: &World) -> FenceChain {
    FenceChain::new(vec![
        Box::new(SimHttpFencer {
            world: world.clone(),
        }),
        Box::new(SimEc2Fencer {
            world: world.clone(),
        }),
    ])
}

pub fn trigger(world: &World, node: usize) -> Arc<dyn CoordinatorTrigger> {
    Arc::new(SimTrigger {
        world: world.clone(),
        node,
    })
}
