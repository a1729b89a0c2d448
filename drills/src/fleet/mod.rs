//! The fleet benchmark (issue 20): many registered clusters of three members in a real store,
//! evaluated by the Lambda coordinator's own handler in scheduled runs.
//!
//! 1. Every cluster is written as a healthy three-member cluster (record, leader lease held by
//!    `m1`, three heartbeats) and registered, as its agents would.
//! 2. **Steady run**: a scheduled run over the whole fleet in a new container (no observations
//!    carried over): its time, and the store reads and writes it consumed.
//! 3. **Failover run**: the primaries of `dead` clusters die as the schedule fires (their lease
//!    is renewed one last time, then never again; their heartbeat is frozen); the two replicas
//!    of each run the real agent runtime over [`standin::StandInPostgres`], and ask the
//!    coordinator for a run when they see the lease lapse (the agents' fast path, through the
//!    agent alias, as `[coordinator] lambda_function` does). A scheduled run in a new
//!    container evaluates the fleet meanwhile. Reported: the scheduled run's time, the time
//!    until every healthy cluster was evaluated once, each dead cluster's time from its
//!    primary's death to the new primary's promotion, and the store reads and writes of the
//!    scheduled run and the fast-path runs together.
//!
//! Fencing is the EC2 fencer's, stood in by [`standin::StoppedInstanceFencer`] (a dead node's
//! instance reports stopped), so a dead cluster's failover takes the lease as its replicas see
//! it, the fast-path request, the fence and the promotion. `PGDAEMON_FENCING=off` in the
//! environment measures the same without fencing (the coordinator then watches the lease lapse
//! itself).

pub mod counting;
pub mod standin;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use lambda_runtime::{Context as LambdaContext, LambdaEvent};
use pgdaemon_core::agent::{AgentHandle, AgentIdentity, AgentRuntime, CoordinatorTrigger, TriggerError};
use pgdaemon_core::coordinator::{AgentWaker, WakeTarget};
use pgdaemon_core::fence::FenceChain;
use pgdaemon_core::{
    ClusterRecord, DynamicConfig, LeaseClaim, LeaseName, LeaseSighting, Lsn, MemberStatus, Role, Store, SystemClock,
};
use pgdaemon_lambda::config::LambdaConfig;
use pgdaemon_lambda::handler::{Handler, AGENT_ALIAS};
use serde::Serialize;
use tokio::sync::Notify;

use counting::{CountingStore, Counts};
use standin::StandInPostgres;

/// What to build and how the coordinator runs.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub clusters: usize,
    /// Clusters whose primary is dead in the failover run.
    pub dead: usize,
    /// Every cluster's dynamic configuration (timings).
    pub config: DynamicConfig,
    /// Lambda settings besides the fleet defaults (`PGDAEMON_*` names and values).
    pub lambda_env: Vec<(String, String)>,
}

/// One scheduled run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub seconds: f64,
    pub clusters_evaluated: usize,
    /// Outcome name -> clusters.
    pub outcomes: BTreeMap<String, usize>,
    pub store: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub backend: String,
    pub clusters: usize,
    pub dead: usize,
    pub populate_seconds: f64,
    pub steady: RunFigures,
    pub failover: RunFigures,
    /// Scheduled run start -> the last healthy cluster's evaluation done.
    pub healthy_evaluated_seconds: f64,
    /// Dead cluster -> its primary's death to its promotion (history's finish).
    pub failover_seconds: BTreeMap<String, f64>,
    /// Dead cluster -> its primary's death to the failover's start (detection).
    pub detection_seconds: BTreeMap<String, f64>,
    /// Dead cluster -> the failover's steps, ms from its start (history's `step_ms`).
    pub failover_steps: BTreeMap<String, BTreeMap<String, u64>>,
}

const MEMBERS: [&str; 3] = ["m1", "m2", "m3"];
/// The stand-in primary's address (nothing listens there: no connection is ever made).
const PRIMARY_PORT: u16 = 1;
const POSITION: Lsn = Lsn(0x3000_0000);

pub fn cluster_name(i: usize) -> String {
    format!("fleet-{i:05}")
}

/// Which clusters lose their primary: spread over the fleet.
pub fn dead_clusters(spec: &FleetSpec) -> Vec<String> {
    let step = spec.clusters / spec.dead.max(1);
    (0..spec.dead.min(spec.clusters)).map(|k| cluster_name(k * step.max(1))).collect()
}

fn member(name: &str, cluster_term: u64) -> MemberStatus {
    let mut m = MemberStatus::new(name);
    m.pg_running = true;
    m.timeline = 1;
    m.term = cluster_term;
    m.seq = 1;
    m.pg_host = "127.0.0.1".into();
    m.pg_port = PRIMARY_PORT + MEMBERS.iter().position(|n| *n == name).unwrap_or(0) as u16;
    m.updated_at_ms = pgdaemon_ctl::table::now_ms();
    if name == "m1" {
        m.role = Role::Primary;
        m.write_lsn = Some(POSITION);
        m.flush_lsn = Some(POSITION);
    } else {
        m.role = Role::Replica;
        m.streaming = true;
        m.receive_lsn = Some(POSITION);
        m.replay_lsn = Some(POSITION);
        m.flush_lsn = Some(POSITION);
    }
    m
}

/// Writes every cluster as a healthy one and registers it (bounded concurrency).
pub async fn populate(store: &dyn Store, spec: &FleetSpec) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..spec.clusters)
        .map(|i| async move {
            let c = cluster_name(i);
            store.write_cluster(&c, None, &ClusterRecord::bootstrap("m1", spec.config.clone())).await?;
            store.acquire_lease(&c, LeaseName::Leader, LeaseClaim::Free, "m1", 1, spec.config.lease_ms).await?;
            for name in MEMBERS {
                store.put_member(&c, &member(name, 1)).await?;
            }
            store.register_cluster(&c, 1).await?;
            Ok(())
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>().context("populating the fleet")?;
    Ok(())
}

fn handler(store: CountingStore, spec: &FleetSpec, owner: &str, waker: Arc<InProcessWaker>) -> anyhow::Result<FleetHandler> {
    let mut env: Vec<(String, String)> = vec![("PGDAEMON_FENCING".into(), "ec2".into())];
    env.extend(spec.lambda_env.iter().cloned());
    let config = LambdaConfig::from_env(env)?;
    let fencer = Arc::new(FenceChain::new(vec![Box::new(standin::StoppedInstanceFencer)]));
    Ok(Handler::new(store, fencer, SystemClock::new(), config, owner).with_waker(waker))
}

type FleetHandler = Handler<CountingStore, Arc<FenceChain>, SystemClock>;

async fn scheduled_run(h: &FleetHandler, store: &CountingStore) -> anyhow::Result<(RunFigures, Instant)> {
    store.reset();
    let event = serde_json::json!({"detail-type": "Scheduled Event", "source": "aws.events"});
    let started = Instant::now();
    let answer = h.handle(LambdaEvent::new(event, LambdaContext::default())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let results = answer["results"].as_array().context("a scheduled run's answer has results")?;
    let mut outcomes = BTreeMap::new();
    for r in results {
        *outcomes.entry(r["outcome"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    Ok((RunFigures { seconds, clusters_evaluated: results.len(), outcomes, store: store.counts() }, started))
}

/// The agents' fast path: an `evaluate` of the cluster through the agent alias, not awaited by
/// the agent (the Lambda trigger invokes asynchronously too).
struct AliasTrigger(Arc<FleetHandler>);

#[async_trait::async_trait]
impl CoordinatorTrigger for AliasTrigger {
    async fn request_run(&self, cluster: &str, _evidence: &LeaseSighting) -> Result<(), TriggerError> {
        let (handler, cluster) = (self.0.clone(), cluster.to_string());
        tokio::spawn(async move {
            let mut context = LambdaContext::default();
            context.invoked_function_arn = format!("arn:aws:lambda:us-east-1:000000000000:function:bench:{AGENT_ALIAS}");
            let event = serde_json::json!({"action": "evaluate", "cluster": cluster});
            if let Err(e) = handler.handle(LambdaEvent::new(event, context)).await {
                eprintln!("bench-fleet: fast-path run of {cluster}: {e}");
            }
        });
        Ok(())
    }
}

/// Wakes the benchmark's agents as `POST /wake` does (the agent publishes its heartbeat and runs
/// its loop at once), in process instead of over HTTP.
#[derive(Default)]
pub struct InProcessWaker {
    agents: std::sync::Mutex<BTreeMap<(String, String), WakeableAgent>>,
}

/// An agent's handle and the signal that runs its loop at once.
type WakeableAgent = (AgentHandle, Arc<Notify>);

impl AgentWaker for InProcessWaker {
    fn wake(&self, target: &WakeTarget) {
        let agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((handle, loop_now)) = agents.get(&(target.cluster.clone(), target.member.clone())) {
            handle.woken();
            loop_now.notify_one();
        }
    }
}

/// The two replicas of a dead cluster, each the real agent loop over a stand-in Postgres.
struct Replicas {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    postgres: Vec<(String, String, Arc<StandInPostgres>)>,
}

impl Replicas {
    fn start(
        store: Arc<dyn Store>,
        clusters: &[String],
        config: &DynamicConfig,
        trigger: Arc<dyn CoordinatorTrigger>,
        waker: &InProcessWaker,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut postgres = Vec::new();
        for cluster in clusters {
            for (k, name) in ["m2", "m3"].into_iter().enumerate() {
                let pg = Arc::new(StandInPostgres::replica(&format!("127.0.0.1:{PRIMARY_PORT}"), POSITION));
                postgres.push((cluster.clone(), name.to_string(), pg.clone()));
                let identity = AgentIdentity {
                    cluster: cluster.clone(),
                    member: name.into(),
                    pg_host: "127.0.0.1".into(),
                    pg_port: 2 + k as u16,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                };
                let mut agent = AgentRuntime::new(store.clone(), pg, SystemClock::new(), identity, config.clone())
                    .with_trigger(trigger.clone());
                let loop_now = Arc::new(Notify::new());
                waker
                    .agents
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((cluster.clone(), name.to_string()), (agent.handle(), loop_now.clone()));
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        agent.tick().await;
                        tokio::select! {
                            _ = tokio::time::sleep(agent.interval()) => {}
                            _ = loop_now.notified() => {}
                        }
                    }
                }));
            }
        }
        Replicas { stop, tasks, postgres }
    }

    /// Stops the agent loops; the stand-ins stay for inspection.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// Builds the fleet in `store` and runs both scheduled runs.
pub async fn run(store: Arc<dyn Store>, spec: &FleetSpec) -> anyhow::Result<FleetReport> {
    let backend = store.backend().to_string();
    let started = Instant::now();
    populate(store.as_ref(), spec).await?;
    let populate_seconds = started.elapsed().as_secs_f64();
    let counting = CountingStore::new(store.clone());
    let waker = Arc::new(InProcessWaker::default());
    let (steady, _) = scheduled_run(&handler(counting.clone(), spec, "bench-steady", waker.clone())?, &counting).await?;

    let dead = dead_clusters(spec);
    let coordinator = Arc::new(handler(counting.clone(), spec, "bench-failover", waker.clone())?);
    // The dead primaries' last renewal: they die now.
    for c in &dead {
        let held = store.read_lease(c, LeaseName::Leader).await?.context("the dead primary's lease")?;
        store.renew_lease(c, LeaseName::Leader, &held).await?;
    }
    let killed_ms = pgdaemon_ctl::table::now_ms();
    let mut replicas = Replicas::start(store.clone(), &dead, &spec.config, Arc::new(AliasTrigger(coordinator.clone())), &waker);
    let (mut failover, run_started) = scheduled_run(&coordinator, &counting).await?;
    let deadline = Instant::now() + run_budget(&spec.config);
    let mut failover_seconds = BTreeMap::new();
    let mut detection_seconds = BTreeMap::new();
    let mut failover_steps = BTreeMap::new();
    while failover_seconds.len() < dead.len() && Instant::now() < deadline {
        for c in &dead {
            if failover_seconds.contains_key(c) {
                continue;
            }
            // A slow engine (moto at a thousand clusters) may time out: ask again next round.
            let Ok(history) = store.read_history(c).await else { continue };
            match history.as_slice() {
                [] => {}
                [entry] if entry.old_primary.as_deref() == Some("m1") && ["m2", "m3"].contains(&entry.new_primary.as_str()) => {
                    failover_seconds.insert(c.clone(), entry.finished_ms.saturating_sub(killed_ms) as f64 / 1000.0);
                    detection_seconds.insert(c.clone(), entry.started_ms.saturating_sub(killed_ms) as f64 / 1000.0);
                    failover_steps.insert(c.clone(), entry.step_ms.clone());
                }
                other => bail!("{c}: expected one promotion from m1 to a replica, history has {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The promoted agents' next loop turns their Postgres primary.
    tokio::time::sleep(spec.config.probe_interval() * 3).await;
    replicas.stop().await;
    failover.store = counting.counts();
    if let Some(c) = dead.iter().find(|c| !failover_seconds.contains_key(*c)) {
        bail!("{c}: no promotion within {:?} of its primary's death", run_budget(&spec.config));
    }
    for (c, name, pg) in &replicas.postgres {
        let record = store.read_cluster(c).await?.context("record")?;
        let should_lead = record.primary.as_deref() == Some(name.as_str());
        if should_lead != (pg.role() == Role::Primary) {
            bail!("{c}/{name}: the record names {:?} but its Postgres is {:?}", record.primary, pg.role());
        }
    }
    let healthy_evaluated_seconds = counting
        .coordinator_releases()
        .iter()
        .filter(|(c, _)| !dead.contains(c))
        .map(|(_, at)| at.saturating_duration_since(run_started).as_secs_f64())
        .fold(0.0, f64::max);
    Ok(FleetReport {
        backend,
        clusters: spec.clusters,
        dead: dead.len(),
        populate_seconds,
        steady,
        failover,
        healthy_evaluated_seconds,
        failover_seconds,
        detection_seconds,
        failover_steps,
    })
}

/// Short timings for the small run in `make test`.
pub fn quick_config() -> DynamicConfig {
    DynamicConfig {
        lease_ms: 4000,
        renew_interval_ms: 1000,
        safety_margin_ms: 1500,
        probe_interval_ms: 500,
        ..Default::default()
    }
}

/// The per-run budget a spec needs: the lease, promotion and margin.
pub fn run_budget(config: &DynamicConfig) -> Duration {
    Duration::from_millis(config.lease_ms * 4 + 20_000)
}

/// The engine a fleet run uses, kept alive (and stopped when dropped) by the caller.
pub enum FleetEngine {
    Etcd(pgdaemon_testkit::engines::EtcdServer),
    Moto(pgdaemon_testkit::engines::MotoServer),
}

/// Starts a private engine for `backend` (`etcd` or `dynamodb`, the latter on moto server) and
/// connects a store to it (a new table, or a new prefix).
pub async fn start_store(backend: &str) -> anyhow::Result<(FleetEngine, Arc<dyn Store>)> {
    use pgdaemon_testkit::engines::{EtcdServer, MotoServer};
    match backend {
        "etcd" => {
            let etcd = tokio::task::spawn_blocking(EtcdServer::start).await??;
            let store = pgdaemon_dcs::EtcdStore::connect(&[etcd.endpoint()], "/pgdaemon-fleet").await?;
            Ok((FleetEngine::Etcd(etcd), Arc::new(store)))
        }
        "dynamodb" => {
            let moto = tokio::task::spawn_blocking(MotoServer::start).await??;
            let client = pgdaemon_dcs::dynamodb::emulator_client(
                &moto.endpoint(),
                MotoServer::REGION,
                MotoServer::ACCESS_KEY_ID,
                MotoServer::SECRET_ACCESS_KEY,
            );
            pgdaemon_dcs::create_table(&client, "pgdaemon-fleet").await?;
            Ok((FleetEngine::Moto(moto), Arc::new(pgdaemon_dcs::DynamoDbStore::new(client, "pgdaemon-fleet"))))
        }
        other => bail!("unknown store {other} (etcd, dynamodb)"),
    }
}

/// A few lines for a human.
pub fn summary(r: &FleetReport) -> String {
    let failovers: Vec<f64> = r.failover_seconds.values().copied().collect();
    let (min, max) = failovers.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let per = |f: &RunFigures| {
        format!("{:.2} s, {} reads, {} writes, outcomes {:?}", f.seconds, f.store.reads, f.store.writes, f.outcomes)
    };
    format!(
        "{} | {} clusters ({} dead) | populate {:.1} s\n  steady run:   {}\n  failover run: {} | healthy clusters evaluated after {:.2} s | failovers {:.2}-{:.2} s after the primary died",
        r.backend,
        r.clusters,
        r.dead,
        r.populate_seconds,
        per(&r.steady),
        per(&r.failover),
        r.healthy_evaluated_seconds,
        if failovers.is_empty() { 0.0 } else { min },
        max,
    )
}
