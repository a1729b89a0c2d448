//! The coordinator hosted in the agent (deployments without the Lambda, e.g. on etcd), and the
//! two fast-path triggers the agent runtime calls when a replica sees the leader lease expire:
//!
//! - [`HostedTrigger`]: a local channel that makes the hosted coordinator run at once;
//! - [`LambdaTrigger`] (cargo feature `lambda-trigger`): an asynchronous Lambda invoke
//!   (`InvocationType=Event`) of `{"action":"evaluate","cluster":...}`.
//!
//! Every agent of a cluster may host a coordinator; the coordinator lock makes exactly one of
//! them act, and another takes over when its host dies (after the lock's lease).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pgdaemon_core::agent::{CoordinatorTrigger, TriggerError};
use pgdaemon_core::coordinator::{hosted_owner, Coordinator, CoordinatorConfig, FencingPolicy, Outcome};
use pgdaemon_core::fence::{FenceChain, Fencer};
use pgdaemon_core::{Clock, LeaseSighting, Store, SystemClock};
use pgdaemon_dcs::fence_config::FencerKind;
use pgdaemon_dcs::probe::TcpProbe;
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::wake::{HostedWaker, LoopWake};

/// How long a hosted fencer may take (HTTP demote includes the old primary's shutdown checkpoint).
const FENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between runs while a transition is under way (the agents act within one probe; each
/// run is one store read, for the few seconds a transition lasts).
const BUSY_POLL: Duration = Duration::from_millis(100);

/// Fencing policy and chain from the `[coordinator]` section, through the shared builder
/// ([`pgdaemon_dcs::fence_config`], the same checks `check-config` runs: unknown fencers, `off`
/// not alone, a fencer listed twice, `command` without `fence_command`). `authorization`: what
/// the `http` fencer sends, the cluster's shared `[api]` credentials as read once at start
/// ([`crate::api_security::ApiSecurity::client_authorization`]). Its TLS comes from `[api]`
/// as well ([`crate::api_security::ApiConfig::client_tls`]): `https://` agents are verified
/// against `tls_ca_file` (or the system's roots), and agents requiring client certificates get
/// this node's `tls_cert_file`.
pub fn fencing(
    cfg: &AgentConfig,
    authorization: Option<reqwest::header::HeaderValue>,
) -> anyhow::Result<(FencingPolicy, FenceChain)> {
    let config = cfg.coordinator.fencer_config(FENCE_TIMEOUT)?;
    let config = if config.fencing().uses(FencerKind::Http) {
        // The agents it fences require the cluster's shared `[api]` credentials, and speak TLS
        // when this node does (the cluster shares its CA).
        let tls = cfg.api.client_tls().context("config: the `http` fencer's TLS")?;
        config.with_http_tls(tls).with_http_authorization(authorization)
    } else {
        config
    };
    let chain = config.build(|_| None).map_err(|e| anyhow::anyhow!("config: `coordinator.fencing`: {e}"))?;
    Ok((config.policy(), chain))
}

/// The hosted coordinator's waker (docs/design.md section 4): this node's loop through `local`,
/// the other members through `POST /wake` with the `http` fencer's client settings (the
/// agents guard `/wake` like `/demote`): `[api]` TLS and `authorization`.
pub fn waker(
    cfg: &AgentConfig,
    authorization: Option<reqwest::header::HeaderValue>,
    local: LoopWake,
) -> anyhow::Result<HostedWaker> {
    let tls = cfg.api.client_tls().context("config: the waker's TLS")?;
    let config = cfg.coordinator.fencer_config(FENCE_TIMEOUT)?.with_http_tls(tls).with_http_authorization(authorization);
    Ok(HostedWaker::new(cfg.node.name.clone(), local, config.http_waker()))
}

/// Starts what `[coordinator]` asks for and returns the trigger for the agent runtime:
/// a hosted coordinator (`enabled = true`), a Lambda trigger (`lambda_function`), or nothing.
/// `events`: where the hosted coordinator reports failovers and member health (none: nowhere).
/// `authorization`: the `http` fencer's credentials (see [`fencing`]); `wake`: this node's loop,
/// woken directly when the hosted coordinator designates this node (see [`waker`]).
pub async fn start(
    cfg: &AgentConfig,
    store: Arc<dyn Store>,
    events: Option<Arc<dyn pgdaemon_core::events::EventEmitter>>,
    authorization: Option<reqwest::header::HeaderValue>,
    wake: LoopWake,
) -> anyhow::Result<Option<Arc<dyn CoordinatorTrigger>>> {
    let c = &cfg.coordinator;
    if c.enabled {
        let waker: Arc<dyn pgdaemon_core::coordinator::AgentWaker> = Arc::new(waker(cfg, authorization.clone(), wake)?);
        let (policy, chain) = fencing(cfg, authorization)?;
        let defaults = CoordinatorConfig::default();
        let base = CoordinatorConfig {
            fencing: policy,
            agent_down_after_ms: c.agent_down_after_ms.unwrap_or(defaults.agent_down_after_ms),
            ..defaults
        };
        base.validate()?;
        // The lock lease follows the cluster's leader lease (the record's config, which every
        // member shares; the local `[dynamic]` only stands in until the record exists): when the
        // host of the acting coordinator dies with the primary, another agent takes the lock
        // while the leader lease runs out anyway.
        let lease_ms = match tokio::time::timeout(Duration::from_secs(5), store.read_cluster(&cfg.cluster)).await {
            Ok(Ok(Some(record))) => record.config.lease_ms,
            _ => cfg.dynamic.lease_ms,
        };
        let interval = Duration::from_millis(if c.interval_ms == 0 { 1000 } else { c.interval_ms });
        let owner = hosted_owner(&cfg.node.name, &pgdaemon_core::codec::new_rvn()[..8]);
        let chain = Arc::new(chain);
        let make = {
            let owner = owner.clone();
            move |lease_ms: u64| {
                let config = CoordinatorConfig { lock_lease_ms: lock_lease_ms(lease_ms), ..base.clone() };
                let c = Coordinator::new(store.clone(), chain.clone(), SystemClock::new(), config, owner.clone())
                    .with_waker(waker.clone())
                    .with_probe(Arc::new(TcpProbe::default()));
                match &events {
                    Some(events) => c.with_events(events.clone()),
                    None => c,
                }
            }
        };
        let (trigger, rx) = HostedTrigger::new();
        // Supervised: a hosted loop that panics is started again after a logged backoff, with a
        // fresh coordinator over the same trigger channel. Restarting is safe: every step is
        // recorded in the cluster record and resumed by whichever run comes next (S5), and the
        // coordinator lock (same owner) keeps it the only one acting. Once the agent drops the
        // trigger, the loop ends and is not restarted.
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let cluster = cfg.cluster.clone();
        tokio::spawn(async move {
            crate::supervise::restarting("hosted coordinator", crate::supervise::RESTART_BACKOFF, || {
                let (make, cluster, rx) = (make.clone(), cluster.clone(), rx.clone());
                let open = rx.try_lock().map_or(true, |rx| !rx.is_closed());
                open.then_some(async move {
                    let mut rx = rx.lock().await;
                    hosted_loop_following_lease(make, lease_ms, cluster, &mut rx, interval).await
                })
            })
            .await
        });
        tracing::info!(
            owner,
            interval_ms = interval.as_millis() as u64,
            lock_lease_ms = lock_lease_ms(lease_ms),
            "hosted coordinator started"
        );
        return Ok(Some(Arc::new(trigger)));
    }
    if let Some(function) = &c.lambda_function {
        return lambda_trigger(function).await.map(Some);
    }
    Ok(None)
}

#[cfg(feature = "lambda-trigger")]
async fn lambda_trigger(function: &str) -> anyhow::Result<Arc<dyn CoordinatorTrigger>> {
    Ok(Arc::new(LambdaTrigger::from_env(function).await))
}

#[cfg(not(feature = "lambda-trigger"))]
async fn lambda_trigger(_function: &str) -> anyhow::Result<Arc<dyn CoordinatorTrigger>> {
    anyhow::bail!(
        "config: `coordinator.lambda_function` is set but this build has no Lambda client (cargo feature `lambda-trigger`)"
    )
}

/// The coordinator lock lease for a cluster leader lease of `lease_ms` (at least the minimum
/// [`CoordinatorConfig::validate`] accepts).
fn lock_lease_ms(lease_ms: u64) -> u64 {
    lease_ms.max(1000)
}

/// Runs the hosted coordinator forever: every `interval`, at once when triggered, and every
/// [`BUSY_POLL`] while a transition is under way. Never releases the lock while alive (it renews
/// it on every run); when the host dies, another agent's coordinator takes over after the lease.
pub async fn hosted_loop<S, F, C>(
    coordinator: Coordinator<S, F, C>,
    cluster: String,
    mut rx: mpsc::Receiver<()>,
    interval: Duration,
) where
    S: Store + Clone,
    F: Fencer,
    C: Clock + Clone,
{
    run_hosted(coordinator, None::<fn(u64) -> Coordinator<S, F, C>>, cluster, &mut rx, interval).await
}

/// [`hosted_loop`] whose lock lease follows the cluster record's `lease_ms`: `make(lease_ms)`
/// builds the coordinator (same owner); when the record's lease differs from the one in use, the
/// lock is released and the coordinator rebuilt (an operator's `edit-config` takes effect).
/// `rx` is borrowed so that a restarted loop listens on the same trigger channel.
pub async fn hosted_loop_following_lease<S, F, C, M>(
    make: M,
    lease_ms: u64,
    cluster: String,
    rx: &mut mpsc::Receiver<()>,
    interval: Duration,
) where
    S: Store + Clone,
    F: Fencer,
    C: Clock + Clone,
    M: Fn(u64) -> Coordinator<S, F, C>,
{
    let coordinator = make(lease_ms);
    run_hosted(coordinator, Some(make), cluster, rx, interval).await
}

async fn run_hosted<S, F, C, M>(
    mut coordinator: Coordinator<S, F, C>,
    make: Option<M>,
    cluster: String,
    rx: &mut mpsc::Receiver<()>,
    interval: Duration,
) where
    S: Store + Clone,
    F: Fencer,
    C: Clock + Clone,
    M: Fn(u64) -> Coordinator<S, F, C>,
{
    let mut last_reason = String::new();
    loop {
        let report = coordinator.run_once(&cluster).await;
        if let (Some(make), Some(record)) = (&make, &report.record) {
            let want = lock_lease_ms(record.config.lease_ms);
            if want != coordinator.config().lock_lease_ms {
                tracing::info!(
                    cluster,
                    from_ms = coordinator.config().lock_lease_ms,
                    to_ms = want,
                    "coordinator lock lease follows the cluster's lease_ms"
                );
                if let Err(e) = coordinator.release(&cluster).await {
                    tracing::warn!(cluster, error = %e, "releasing the coordinator lock before changing its lease");
                }
                coordinator = make(record.config.lease_ms);
                continue;
            }
        }
        for step in &report.steps {
            tracing::info!(cluster, step = %step, "coordinator step");
        }
        if report.reason != last_reason {
            match report.outcome {
                Outcome::Idle | Outcome::NotInCharge => {
                    tracing::debug!(cluster, outcome = ?report.outcome, reason = %report.reason, "coordinator")
                }
                Outcome::Error | Outcome::Blocked => {
                    tracing::warn!(cluster, outcome = ?report.outcome, reason = %report.reason, "coordinator")
                }
                _ => tracing::info!(cluster, outcome = ?report.outcome, reason = %report.reason, "coordinator"),
            }
            last_reason = report.reason.clone();
        }
        let busy = matches!(report.outcome, Outcome::Progressed | Outcome::Waiting)
            || !report.settled() && report.outcome != Outcome::NotInCharge;
        let wait = if busy { BUSY_POLL } else { interval };
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Fast path to the hosted coordinator: a send on a one-slot channel (a run already requested
/// counts as requested).
#[derive(Clone)]
pub struct HostedTrigger {
    tx: mpsc::Sender<()>,
}

impl HostedTrigger {
    pub fn new() -> (Self, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel(1);
        (HostedTrigger { tx }, rx)
    }
}

#[async_trait]
impl CoordinatorTrigger for HostedTrigger {
    async fn request_run(&self, cluster: &str, evidence: &LeaseSighting) -> Result<(), TriggerError> {
        tracing::info!(
            cluster,
            term = evidence.term,
            unchanged_ms = evidence.unchanged_ms,
            "asking the hosted coordinator for a run"
        );
        match self.tx.try_send(()) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(())) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(())) => Err(TriggerError("the hosted coordinator has stopped".into())),
        }
    }
}

/// Fast path to the Lambda coordinator: asynchronous invoke of `{"action":"evaluate","cluster":...}`.
#[cfg(feature = "lambda-trigger")]
pub struct LambdaTrigger {
    client: aws_sdk_lambda::Client,
    function: String,
}

#[cfg(feature = "lambda-trigger")]
impl LambdaTrigger {
    pub fn new(client: aws_sdk_lambda::Client, function: impl Into<String>) -> Self {
        LambdaTrigger { client, function: function.into() }
    }

    /// A client from the SDK's default chains (region, credentials, `AWS_ENDPOINT_URL`).
    pub async fn from_env(function: &str) -> Self {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        Self::new(aws_sdk_lambda::Client::new(&sdk), function)
    }

    /// The invoke payload for `cluster`.
    pub fn payload(cluster: &str) -> Vec<u8> {
        serde_json::json!({ "action": "evaluate", "cluster": cluster }).to_string().into_bytes()
    }
}

#[cfg(feature = "lambda-trigger")]
#[async_trait]
impl CoordinatorTrigger for LambdaTrigger {
    async fn request_run(&self, cluster: &str, evidence: &LeaseSighting) -> Result<(), TriggerError> {
        tracing::info!(cluster, term = evidence.term, unchanged_ms = evidence.unchanged_ms, function = %self.function, "invoking the coordinator Lambda");
        let call = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
            .payload(aws_sdk_lambda::primitives::Blob::new(Self::payload(cluster)))
            .send();
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(TriggerError(format!("Lambda invoke: {}", aws_sdk_lambda::error::DisplayErrorContext(e)))),
            Err(_) => Err(TriggerError("Lambda invoke timed out after 3 s".into())),
        }
    }
}

/// Used by the hook in `run.rs`; kept here so the hook stays one line.
pub async fn start_from_hook(
    cfg: &AgentConfig,
    store: Arc<dyn Store>,
    events: Option<Arc<dyn pgdaemon_core::events::EventEmitter>>,
    authorization: Option<reqwest::header::HeaderValue>,
    wake: LoopWake,
) -> anyhow::Result<Option<Arc<dyn CoordinatorTrigger>>> {
    start(cfg, store, events, authorization, wake).await.context("coordinator")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hosted_trigger_coalesces_and_reports_a_stopped_coordinator() {
        let (t, mut rx) = HostedTrigger::new();
        let ev = LeaseSighting { term: 1, rvn: "r".into(), unchanged_ms: 10_000 };
        t.request_run("c", &ev).await.unwrap();
        t.request_run("c", &ev).await.unwrap();
        assert_eq!(rx.recv().await, Some(()));
        assert!(rx.try_recv().is_err(), "two requests coalesce into one run");
        drop(rx);
        assert!(t.request_run("c", &ev).await.is_err());
    }

    /// The lock lease is the cluster record's `lease_ms`, not the one the loop started with
    /// (the agent's local `[dynamic]`), and follows an edit of the record.
    #[tokio::test]
    async fn lock_lease_follows_the_cluster_record() {
        use pgdaemon_core::memory::MemoryStore;
        use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaseName};
        let store = Arc::new(MemoryStore::new());
        let dynamic = DynamicConfig { lease_ms: 3000, renew_interval_ms: 1000, safety_margin_ms: 500, ..Default::default() };
        let record = store.write_cluster("c", None, &ClusterRecord::bootstrap("n1", dynamic)).await.unwrap();
        let make = {
            let store = store.clone();
            move |lease_ms: u64| {
                let config = CoordinatorConfig { lock_lease_ms: lock_lease_ms(lease_ms), ..CoordinatorConfig::default() };
                Coordinator::new(store.clone(), Arc::new(FenceChain::new(vec![])), SystemClock::new(), config, "agent-test")
            }
        };
        let (_trigger, mut rx) = HostedTrigger::new();
        let task = tokio::spawn(async move {
            hosted_loop_following_lease(make, 10_000, "c".into(), &mut rx, Duration::from_millis(50)).await
        });
        let lock_ms =
            || async { store.read_lease("c", LeaseName::Coordinator).await.unwrap().filter(|l| !l.released).map(|l| l.lease_ms) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock_ms().await != Some(3000) {
            assert!(std::time::Instant::now() < deadline, "lock lease {:?}, want 3000", lock_ms().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut edited = record.clone();
        edited.config.lease_ms = 5000;
        store.write_cluster("c", Some(record.version), &edited).await.unwrap();
        while lock_ms().await != Some(5000) {
            assert!(std::time::Instant::now() < deadline, "lock lease {:?}, want 5000", lock_ms().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
    }

    /// The Lambda trigger really calls Invoke (moto answers for a function that does not exist:
    /// moto cannot run functions without Docker) and reports the failure instead of hiding it.
    #[cfg(feature = "lambda-trigger")]
    #[tokio::test]
    async fn lambda_trigger_invokes_and_reports_failures() {
        use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
        use pgdaemon_testkit::engines::MotoServer;
        let payload: serde_json::Value = serde_json::from_slice(&LambdaTrigger::payload("prod")).unwrap();
        assert_eq!(payload, serde_json::json!({"action": "evaluate", "cluster": "prod"}));
        let moto = MotoServer::shared();
        let conf = aws_sdk_lambda::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(MotoServer::REGION))
            .endpoint_url(moto.endpoint())
            .credentials_provider(Credentials::new(MotoServer::ACCESS_KEY_ID, MotoServer::SECRET_ACCESS_KEY, None, None, "test"))
            .build();
        let trigger = LambdaTrigger::new(aws_sdk_lambda::Client::from_conf(conf), "pgdaemon-missing");
        let ev = LeaseSighting { term: 1, rvn: "r".into(), unchanged_ms: 10_000 };
        let started = std::time::Instant::now();
        let err = trigger.request_run("prod", &ev).await.unwrap_err();
        assert!(err.0.contains("pgdaemon-missing") || err.0.contains("ResourceNotFound"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(4), "the trigger must return quickly");
    }
}
