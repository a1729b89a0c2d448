//! The Lambda handler, generic over the store, the fencer and the clock so tests call it with
//! `LambdaEvent` values over the in-memory store and a scripted fencer.
//!
//! Events:
//! - an EventBridge scheduled event (`"detail-type": "Scheduled Event"`): evaluate every
//!   cluster (configured or registered, [`crate::fleet`]), at most `concurrency` at once,
//!   spread over parallel invocations when there are more than one takes;
//! - `{"action": "status"|"evaluate"|"failover"|"switchover"|"pause"|"resume", "cluster": ...,
//!   "candidate": ..., "force": bool, "id": ...}`. `status` and `evaluate` without `cluster`
//!   cover every cluster (`evaluate` may name a `"shard"` of `"shards"`: what a scheduled run
//!   hands to a parallel invocation); the others need one. Manual actions are written into the
//!   cluster record as a request (compare-and-set) and carried out by the coordinator run that
//!   follows - the same path `pgdctl` uses - so they are refused or accepted by the same rules.
//!
//! Anything else (unknown action, unknown field, wrong type, a cluster neither configured nor
//! registered) is an error naming the problem, and nothing is written.
//!
//! Invoked through the agents' alias ([`AGENT_ALIAS`]), the handler carries out `evaluate` only
//! and refuses everything else, scheduled events included: the node role may invoke that alias
//! and nothing else (infra/), so a compromised node can ask for a coordinator run, which decides
//! by the same rules as the schedule, but cannot request a forced failover, a switchover or a
//! pause.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use lambda_runtime::LambdaEvent;
use pgdaemon_core::coordinator::{run_until_settled, Coordinator, RunReport};
use pgdaemon_core::fence::Fencer;
use pgdaemon_core::keys::{validate_cluster_name, validate_member_name};
use pgdaemon_core::request::{Check, SubmitError};
use pgdaemon_core::{Clock, ManualRequest, RequestAction, Store, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::LambdaConfig;
use crate::fleet::{merge, shards_needed, Shard, ShardInvoker};

/// Why an event was not handled. Nothing was changed in any case. A caller of `aws lambda
/// invoke` sees [`HandlerError::error_type`] as the payload's `errorType` and the message as
/// `errorMessage` (infra/README.md, section 8).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("bad event: {0}")]
    BadEvent(String),
    #[error("{0}")]
    UnknownCluster(String),
    #[error("{cluster}: {error}")]
    Store { cluster: String, error: StoreError },
    #[error("{0}")]
    Refused(String),
}

impl HandlerError {
    /// The stable name scripts match on: `BadEvent` (fix the payload), `UnknownCluster` (neither
    /// registered nor in `PGDAEMON_CLUSTERS`), `Refused` (valid, but not now or not through this alias: read the
    /// message), `StoreUnavailable` (try again), `StoreError` (a record could not be used).
    pub fn error_type(&self) -> &'static str {
        match self {
            HandlerError::BadEvent(_) => "BadEvent",
            HandlerError::UnknownCluster(_) => "UnknownCluster",
            HandlerError::Refused(_) => "Refused",
            HandlerError::Store { error: StoreError::Unavailable(_), .. } => "StoreUnavailable",
            HandlerError::Store { .. } => "StoreError",
        }
    }
}

impl From<HandlerError> for lambda_runtime::Diagnostic {
    fn from(e: HandlerError) -> Self {
        lambda_runtime::Diagnostic { error_type: e.error_type().to_string(), error_message: e.to_string() }
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Scheduled,
    Status {
        cluster: Option<String>,
    },
    /// `shard`: only the clusters of that shard (a scheduled run's fan-out).
    Evaluate {
        cluster: Option<String>,
        shard: Option<Shard>,
    },
    Manual {
        cluster: String,
        action: RequestAction,
        candidate: Option<String>,
        force: bool,
        id: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionPayload {
    action: String,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    candidate: Option<String>,
    #[serde(default)]
    force: Option<bool>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    shard: Option<usize>,
    #[serde(default)]
    shards: Option<usize>,
}

const ACTIONS: &str = "status, evaluate, failover, switchover, pause, resume";

/// The Lambda alias the agents invoke for the fast path (`[coordinator] lambda_function =
/// "<function>:agent-evaluate"`); the infrastructure lets the node role invoke only this alias.
pub const AGENT_ALIAS: &str = "agent-evaluate";

/// Whether an invocation came through [`AGENT_ALIAS`], judged by the ARN Lambda reports in the
/// context (`arn:aws:lambda:<region>:<account>:function:<name>:agent-evaluate`). A function
/// itself named like the alias is treated the same way: the check fails towards refusing.
pub fn via_agent_alias(invoked_function_arn: &str) -> bool {
    invoked_function_arn.ends_with(&format!(":{AGENT_ALIAS}"))
}

/// Refuses any request but `evaluate` when invoked through [`AGENT_ALIAS`].
pub fn check_invoked_via(request: &Request, invoked_function_arn: &str) -> Result<(), HandlerError> {
    if !via_agent_alias(invoked_function_arn) || matches!(request, Request::Evaluate { .. }) {
        return Ok(());
    }
    let what = match request {
        Request::Scheduled => "a scheduled event".to_string(),
        Request::Status { .. } => "\"status\"".to_string(),
        Request::Manual { action, .. } => format!("\"{action}\""),
        Request::Evaluate { .. } => unreachable!("allowed above"),
    };
    Err(HandlerError::Refused(format!(
        "the {AGENT_ALIAS} alias carries only \"evaluate\": {what} refused (invoke the function itself, with an operator's rights)"
    )))
}

/// Most shards one scheduled run may fan out to (far beyond any fleet at the default size).
const MAX_SHARDS: usize = 1000;

/// Parses and validates an event. Whether a named cluster is known is checked by the handler
/// (it may be registered).
pub fn parse_event(event: &Value) -> Result<Request, HandlerError> {
    let bad = |m: String| HandlerError::BadEvent(m);
    let Some(obj) = event.as_object() else {
        return Err(bad(format!("expected a JSON object, got {}", short(event))));
    };
    if obj.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event") {
        if obj.get("source").and_then(Value::as_str).is_some_and(|s| s != "aws.events" && s != "aws.scheduler") {
            return Err(bad(format!("scheduled event from unexpected source {}", short(&obj["source"]))));
        }
        return Ok(Request::Scheduled);
    }
    if !obj.contains_key("action") {
        return Err(bad(format!(
            "expected an EventBridge scheduled event or {{\"action\": one of {ACTIONS}, ...}}; got {}",
            short(event)
        )));
    }
    let p: ActionPayload = serde_json::from_value(event.clone()).map_err(|e| bad(format!("invalid action payload: {e}")))?;
    if let Some(c) = &p.cluster {
        validate_cluster_name(c).map_err(|e| bad(format!("cluster: {e}")))?;
    }
    if let Some(c) = &p.candidate {
        validate_member_name(c).map_err(|e| bad(format!("candidate: {e}")))?;
    }
    if let Some(id) = &p.id {
        if id.is_empty() || id.len() > 128 {
            return Err(bad("id must be 1 to 128 characters".into()));
        }
    }
    let manual = |action: RequestAction, allow_candidate: bool| -> Result<Request, HandlerError> {
        let Some(cluster) = p.cluster.clone() else {
            return Err(bad(format!("action {:?} needs \"cluster\"", p.action)));
        };
        if !allow_candidate && (p.candidate.is_some() || p.force.is_some()) {
            return Err(bad(format!("action {:?} takes no \"candidate\" or \"force\"", p.action)));
        }
        Ok(Request::Manual { cluster, action, candidate: p.candidate.clone(), force: p.force.unwrap_or(false), id: p.id.clone() })
    };
    let shard = match (p.shard, p.shards) {
        (None, None) => None,
        (Some(index), Some(of)) if p.action == "evaluate" && p.cluster.is_none() => {
            if of == 0 || of > MAX_SHARDS || index >= of {
                return Err(bad(format!("shard {index} of {of}: need 0 <= shard < shards <= {MAX_SHARDS}")));
            }
            Some(Shard { index, of })
        }
        _ => return Err(bad("\"shard\" and \"shards\" go together, with action \"evaluate\" and no \"cluster\"".into())),
    };
    let no_extras = |what: &str| -> Result<(), HandlerError> {
        if p.candidate.is_some() || p.force.is_some() || p.id.is_some() {
            return Err(bad(format!("action {what:?} takes only \"cluster\"")));
        }
        Ok(())
    };
    match p.action.as_str() {
        "status" => no_extras("status").map(|_| Request::Status { cluster: p.cluster.clone() }),
        "evaluate" => no_extras("evaluate").map(|_| Request::Evaluate { cluster: p.cluster.clone(), shard }),
        "failover" => manual(RequestAction::Failover, true),
        "switchover" => manual(RequestAction::Switchover, true),
        "pause" => manual(RequestAction::Pause, false),
        "resume" => manual(RequestAction::Resume, false),
        other => Err(bad(format!("unknown action {other:?}: expected one of {ACTIONS}"))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 200 {
        format!("{}...", &s[..s.char_indices().take_while(|(i, _)| *i < 200).last().map_or(0, |(i, c)| i + c.len_utf8())])
    } else {
        s
    }
}

type Shared<S, F, C> = Arc<tokio::sync::Mutex<Coordinator<S, F, C>>>;

/// The Lambda's state: clients built once per cold start, and one coordinator per cluster met
/// (kept across warm invocations, so their observations carry over).
pub struct Handler<S: Store + Clone, F: Fencer, C: Clock + Clone> {
    store: S,
    fencer: F,
    clock: C,
    config: LambdaConfig,
    owner: String,
    coordinators: std::sync::Mutex<BTreeMap<String, Shared<S, F, C>>>,
    events: Option<Arc<dyn pgdaemon_core::events::EventEmitter>>,
    waker: Option<Arc<dyn pgdaemon_core::coordinator::AgentWaker>>,
    probe: Option<Arc<dyn pgdaemon_core::coordinator::AgentProbe>>,
    invoker: Option<Arc<dyn ShardInvoker>>,
    /// Every run report since the last [`Handler::take_reports`] (the invocation's metrics).
    reports: std::sync::Mutex<Vec<RunReport>>,
}

/// The clusters one run covers, and why some may be missing.
struct Discovered {
    clusters: Vec<String>,
    /// The registry could not be read: only the configured clusters are covered.
    error: Option<StoreError>,
}

impl<S, F, C> Handler<S, F, C>
where
    S: Store + Clone + 'static,
    F: Fencer + Clone + 'static,
    C: Clock + Clone + 'static,
{
    /// `owner`: this container's name in the coordinator locks (unique per cold start).
    pub fn new(store: S, fencer: F, clock: C, config: LambdaConfig, owner: &str) -> Self {
        Handler {
            store,
            fencer,
            clock,
            config,
            owner: owner.to_string(),
            coordinators: Default::default(),
            events: None,
            waker: None,
            probe: None,
            invoker: None,
            reports: Default::default(),
        }
    }

    pub fn config(&self) -> &LambdaConfig {
        &self.config
    }

    /// The store the coordinators use.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Takes the reports of every coordinator run since the last call (see `crate::emf`).
    pub fn take_reports(&self) -> Vec<RunReport> {
        std::mem::take(&mut *self.reports.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Every cluster's coordinator reports its events to `events` (see `crate::events`).
    pub fn with_events(mut self, events: Arc<dyn pgdaemon_core::events::EventEmitter>) -> Self {
        self.events = Some(events);
        self
    }

    /// Every cluster's coordinator wakes the agents with `waker` (see
    /// [`pgdaemon_core::coordinator::wake`]); without it they notice on their next loop.
    pub fn with_waker(mut self, waker: Arc<dyn pgdaemon_core::coordinator::AgentWaker>) -> Self {
        self.waker = Some(waker);
        self
    }

    /// Every cluster's coordinator probes the primary's agent with `probe` (see
    /// [`pgdaemon_core::coordinator::probe`]); without it failovers wait for the lease.
    pub fn with_probe(mut self, probe: Arc<dyn pgdaemon_core::coordinator::AgentProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Scheduled runs with more than `PGDAEMON_CLUSTERS_PER_INVOCATION` clusters hand the other
    /// shards to `invoker`; without one, a run evaluates every cluster itself.
    pub fn with_shard_invoker(mut self, invoker: Arc<dyn ShardInvoker>) -> Self {
        self.invoker = Some(invoker);
        self
    }

    fn coordinator(&self, cluster: &str) -> Shared<S, F, C> {
        let mut all = self.coordinators.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(cluster.to_string())
            .or_insert_with(|| {
                let mut c = Coordinator::new(
                    self.store.clone(),
                    self.fencer.clone(),
                    self.clock.clone(),
                    self.config.coordinator.clone(),
                    self.owner.clone(),
                );
                if let Some(events) = &self.events {
                    c = c.with_events(events.clone());
                }
                if let Some(waker) = &self.waker {
                    c = c.with_waker(waker.clone());
                }
                if let Some(probe) = &self.probe {
                    c = c.with_probe(probe.clone());
                }
                Arc::new(tokio::sync::Mutex::new(c))
            })
            .clone()
    }

    /// The configured clusters and, with discovery, the registered ones.
    async fn discover(&self) -> Discovered {
        if !self.config.discovery {
            return Discovered { clusters: self.config.clusters.clone(), error: None };
        }
        match self.store.list_clusters().await {
            Ok(registered) => Discovered { clusters: merge(&self.config.clusters, registered), error: None },
            Err(e) => {
                tracing::error!(error = %e, "reading the fleet registry: evaluating only PGDAEMON_CLUSTERS");
                Discovered { clusters: self.config.clusters.clone(), error: Some(e) }
            }
        }
    }

    /// Refuses a cluster that is neither configured nor registered.
    async fn check_known(&self, cluster: &str) -> Result<(), HandlerError> {
        if self.config.clusters.iter().any(|c| c == cluster) {
            return Ok(());
        }
        if self.config.discovery
            && self
                .store
                .is_registered(cluster)
                .await
                .map_err(|error| HandlerError::Store { cluster: cluster.to_string(), error })?
        {
            return Ok(());
        }
        let configured = if self.config.clusters.is_empty() { "none".to_string() } else { self.config.clusters.join(", ") };
        let registry = if self.config.discovery { "not registered" } else { "discovery is off" };
        Err(HandlerError::UnknownCluster(format!(
            "cluster {cluster:?} is not known here ({registry}; PGDAEMON_CLUSTERS: {configured})"
        )))
    }

    /// Handles one event; the JSON answer carries each cluster's outcome and reason.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, HandlerError> {
        let request = parse_event(&event.payload)?;
        if let Err(e) = check_invoked_via(&request, &event.context.invoked_function_arn) {
            tracing::warn!(request_id = %event.context.request_id, invoked = %event.context.invoked_function_arn, ?request, "refused: {e}");
            return Err(e);
        }
        tracing::info!(request_id = %event.context.request_id, ?request, "event");
        let named = match &request {
            Request::Status { cluster } | Request::Evaluate { cluster, .. } => cluster.as_deref(),
            Request::Manual { cluster, .. } => Some(cluster.as_str()),
            Request::Scheduled => None,
        };
        if let Some(cluster) = named {
            self.check_known(cluster).await?;
        }
        match request {
            Request::Scheduled => Ok(self.scheduled().await),
            Request::Evaluate { cluster: Some(c), .. } => {
                Ok(json!({ "action": "evaluate", "results": self.evaluate_all(vec![c]).await }))
            }
            Request::Evaluate { cluster: None, shard } => {
                let shard = shard.unwrap_or(Shard::WHOLE);
                let found = self.discover().await;
                let clusters: Vec<String> = found.clusters.into_iter().filter(|c| shard.contains(c)).collect();
                Ok(json!({
                    "action": "evaluate",
                    "shard": shard,
                    "discovery_error": found.error.map(|e| e.to_string()),
                    "results": self.evaluate_all(clusters).await,
                }))
            }
            Request::Status { cluster } => {
                let clusters = match cluster {
                    Some(c) => vec![c],
                    None => self.discover().await.clusters,
                };
                let mut out: Vec<Value> = futures::stream::iter(clusters)
                    .map(|c| async move { self.status(&c).await })
                    .buffer_unordered(self.config.concurrency)
                    .collect()
                    .await;
                out.sort_by(|a, b| a["cluster"].as_str().cmp(&b["cluster"].as_str()));
                Ok(json!({ "action": "status", "clusters": out }))
            }
            Request::Manual { cluster, action, candidate, force, id } => {
                self.manual(&cluster, action, candidate, force, id).await
            }
        }
    }

    /// A scheduled run: every cluster, the shards beyond the first handed to parallel
    /// invocations (any that cannot be handed over are evaluated here, after this run's own).
    async fn scheduled(&self) -> Value {
        let found = self.discover().await;
        let total = found.clusters.len();
        let of = match &self.invoker {
            Some(_) => shards_needed(total, self.config.clusters_per_invocation),
            None => 1,
        };
        let mut fanout_errors = Vec::new();
        let mut kept = vec![0];
        if let Some(invoker) = self.invoker.as_ref().filter(|_| of > 1) {
            let calls = (1..of).map(|index| async move { (index, invoker.invoke_shard(Shard { index, of }).await) });
            for (index, result) in futures::future::join_all(calls).await {
                if let Err(e) = result {
                    tracing::error!(shard = index, shards = of, error = %e, "handing a shard to a parallel invocation: evaluating it here");
                    fanout_errors.push(e);
                    kept.push(index);
                }
            }
        }
        let clusters: Vec<String> =
            found.clusters.into_iter().filter(|c| kept.iter().any(|&index| Shard { index, of }.contains(c))).collect();
        tracing::info!(clusters = total, shards = of, evaluated_here = clusters.len(), "scheduled run");
        json!({
            "action": "scheduled",
            "clusters": total,
            "shards": of,
            "fanout_errors": fanout_errors,
            "discovery_error": found.error.map(|e| e.to_string()),
            "results": self.evaluate_all(clusters).await,
        })
    }

    async fn evaluate_all(&self, clusters: Vec<String>) -> Vec<Value> {
        let mut results: Vec<Value> = futures::stream::iter(clusters)
            .map(|c| async move { report_json(&self.drive(&c).await) })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        results.sort_by(|a, b| a["cluster"].as_str().cmp(&b["cluster"].as_str()));
        results
    }

    /// Runs the cluster's coordinator until settled or out of budget, then hands the lock back.
    async fn drive(&self, cluster: &str) -> RunReport {
        let coordinator = self.coordinator(cluster);
        let mut c = coordinator.lock().await;
        let report = run_until_settled(&mut c, cluster, self.config.run_budget, self.config.poll, tokio::time::sleep).await;
        if let Err(e) = c.release(cluster).await {
            tracing::warn!(cluster, error = %e, "releasing the coordinator lock");
        }
        tracing::info!(cluster, outcome = ?report.outcome, reason = %report.reason, steps = ?report.steps, "coordinator run");
        self.reports.lock().unwrap_or_else(|p| p.into_inner()).push(report.clone());
        report
    }

    async fn manual(
        &self,
        cluster: &str,
        action: RequestAction,
        candidate: Option<String>,
        force: bool,
        id: Option<String>,
    ) -> Result<Value, HandlerError> {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let request = ManualRequest { id: id.clone(), action, candidate, force, requested_ms: self.clock.wall_ms() };
        submit_request(&self.store, cluster, &request).await?;
        let report = self.drive(cluster).await;
        let mut out = report_json(&report);
        let answered = report.record.as_ref().and_then(|r| r.last_request.as_ref()).filter(|o| o.id == id);
        out["action"] = json!(action.to_string());
        out["request_id"] = json!(id);
        match answered {
            Some(o) => {
                out["accepted"] = json!(o.accepted);
                out["request_reason"] = json!(o.reason);
            }
            None => {
                out["accepted"] = Value::Null;
                out["request_reason"] = json!("queued: not yet taken by a coordinator (see the reason)");
            }
        }
        Ok(out)
    }

    async fn status(&self, cluster: &str) -> Value {
        let view = match self.store.read_view(cluster).await {
            Ok(v) => v,
            Err(e) => return json!({ "cluster": cluster, "error": e.to_string() }),
        };
        let history = self.store.read_history(cluster).await.unwrap_or_default();
        let tail: Vec<_> = history.iter().rev().take(5).collect();
        json!({
            "cluster": cluster,
            "record": view.cluster,
            "leader": view.leader,
            "coordinator_lock": view.coordinator,
            "members": view.members.values().collect::<Vec<_>>(),
            "history": tail,
        })
    }
}

/// Writes `request` into the cluster record by compare-and-set
/// ([`pgdaemon_core::request::submit`]). Refuses (changing nothing) when the cluster has no
/// record or another request is still waiting; everything else is the coordinator's to answer.
pub async fn submit_request<S: Store>(store: &S, cluster: &str, request: &ManualRequest) -> Result<(), HandlerError> {
    match pgdaemon_core::request::submit(store, cluster, request, Check::Record, CAS_ATTEMPTS).await {
        Ok(_) => Ok(()),
        Err(SubmitError::Store(error)) => Err(HandlerError::Store { cluster: cluster.to_string(), error }),
        Err(SubmitError::KeptChanging { .. }) => {
            Err(HandlerError::Refused(format!("{cluster}: the cluster record kept changing; try again")))
        }
        Err(e @ (SubmitError::NoRecord | SubmitError::Pending(_) | SubmitError::Refused(_))) => {
            Err(HandlerError::Refused(format!("{cluster}: {e}")))
        }
    }
}

/// Compare-and-set attempts of [`submit_request`] against concurrent writers of the record.
const CAS_ATTEMPTS: usize = 5;

fn report_json(r: &RunReport) -> Value {
    json!({
        "cluster": r.cluster,
        "outcome": r.outcome,
        "reason": r.reason,
        "steps": r.steps,
        "term": r.record.as_ref().map(|c| c.term),
        "primary": r.record.as_ref().and_then(|c| c.primary.clone()),
        "paused": r.record.as_ref().map(|c| c.paused),
        "transition": r.record.as_ref().and_then(|c| c.transition.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_stable_error_type_and_its_message() {
        let cases = [
            (HandlerError::BadEvent("x".into()), "BadEvent"),
            (HandlerError::UnknownCluster("cluster \"z\" is not configured here".into()), "UnknownCluster"),
            (HandlerError::Refused("paused".into()), "Refused"),
            (HandlerError::Store { cluster: "c".into(), error: StoreError::Unavailable("timeout".into()) }, "StoreUnavailable"),
            (HandlerError::Store { cluster: "c".into(), error: StoreError::malformed("cluster", "bad json") }, "StoreError"),
        ];
        for (e, want) in cases {
            let message = e.to_string();
            let d = lambda_runtime::Diagnostic::from(e);
            assert_eq!((d.error_type.as_str(), d.error_message), (want, message));
        }
    }

    /// The shared submission's refusals keep the Lambda's words and errorTypes.
    #[tokio::test]
    async fn request_submission_refusals_keep_their_messages_and_types() {
        use pgdaemon_core::{ClusterRecord, DynamicConfig, MemoryStore};
        let q = |id: &str| ManualRequest {
            id: id.into(),
            action: RequestAction::Failover,
            candidate: None,
            force: false,
            requested_ms: 1,
        };
        let store = MemoryStore::new();
        let e = submit_request(&store, "c", &q("a")).await.unwrap_err();
        assert_eq!((e.error_type(), e.to_string()), ("Refused", "c: no cluster record (the cluster is not bootstrapped)".into()));
        store.write_cluster("c", None, &ClusterRecord::bootstrap("n1", DynamicConfig::default())).await.unwrap();
        submit_request(&store, "c", &q("a")).await.unwrap();
        let e = submit_request(&store, "c", &q("b")).await.unwrap_err();
        assert_eq!(
            (e.error_type(), e.to_string()),
            ("Refused", "c: request a (Failover) is still waiting for a coordinator".into())
        );
        store.set_available(false);
        let e = submit_request(&store, "c", &q("b")).await.unwrap_err();
        assert_eq!(e.error_type(), "StoreUnavailable", "{e}");
    }

    #[test]
    fn an_unknown_cluster_is_named_as_such() {
        let config = LambdaConfig::from_env([("PGDAEMON_CLUSTERS".to_string(), "a,b".to_string())]).unwrap();
        let store = Arc::new(pgdaemon_core::MemoryStore::new());
        let fencer = Arc::new(pgdaemon_core::fence::FenceChain::new(vec![]));
        let handler = Handler::new(store, fencer, pgdaemon_core::SystemClock::new(), config, "t");
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let e = rt.block_on(handler.check_known("z")).unwrap_err();
        assert_eq!(e.error_type(), "UnknownCluster", "{e}");
        assert!(e.to_string().contains("a, b") && e.to_string().contains("not registered"), "{e}");
        rt.block_on(handler.store().register_cluster("z", 1)).unwrap();
        rt.block_on(handler.check_known("z")).unwrap();
    }
}
