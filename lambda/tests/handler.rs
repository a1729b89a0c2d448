//! The Lambda handler called with `LambdaEvent` values over the in-memory store, a scripted
//! fencer and scripted agents beating in the background (real time, short timings).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lambda_runtime::{Context, LambdaEvent};
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_core::{
    ClusterRecord, DynamicConfig, LeaderLease, LeaseClaim, LeaseName, Lsn, MemberStatus, MemoryStore, Role, Store, SystemClock,
};
use pgdaemon_lambda::config::LambdaConfig;
use pgdaemon_lambda::handler::Handler;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct ConfirmingFencer {
    calls: Arc<Mutex<Vec<(String, u64)>>>,
}

#[async_trait]
impl Fencer for ConfirmingFencer {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn fence(&self, t: &FenceTarget, _p: Option<&PendingHandle>) -> FenceStatus {
        self.calls.lock().unwrap().push((t.member.clone(), t.term));
        FenceStatus::Confirmed { detail: "demoted".into(), lsn: None }
    }
}

/// Background agents for `cluster`: beat every 50 ms, the designated member takes the lease for
/// the record's term and turns primary, a no-longer-designated holder releases and demotes.
struct Agents {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn bootstrap(store: &Arc<MemoryStore>, cluster: &str) -> Agents {
    store.write_cluster(cluster, None, &ClusterRecord::bootstrap("n1", DynamicConfig::default())).await.unwrap();
    let mut held = Some(store.acquire_lease(cluster, LeaseName::Leader, LeaseClaim::Free, "n1", 1, 10_000).await.unwrap());
    let mut members = BTreeMap::new();
    for (name, lsn) in [("n1", 0x5000u64), ("n2", 0x5000), ("n3", 0x4000)] {
        let mut m = MemberStatus::new(name);
        m.pg_running = true;
        m.timeline = 1;
        m.role = if name == "n1" { Role::Primary } else { Role::Replica };
        m.write_lsn = (name == "n1").then_some(Lsn(lsn));
        m.receive_lsn = (name != "n1").then_some(Lsn(lsn));
        m.replay_lsn = (name != "n1").then_some(Lsn(lsn));
        members.insert(name.to_string(), m);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (store_c, cluster_c, flag) = (store.clone(), cluster.to_string(), stop.clone());
    let task = tokio::spawn(async move {
        let (store, cluster) = (store_c, cluster_c);
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            let record = store.read_cluster(&cluster).await.unwrap().unwrap();
            if let Some(h) = held.clone() {
                if record.primary.as_deref() == Some(h.owner.as_str()) {
                    held = store.renew_lease(&cluster, LeaseName::Leader, &h).await.ok();
                } else {
                    let _ = store.release_lease(&cluster, LeaseName::Leader, &h).await;
                    members.get_mut(&h.owner).unwrap().role = Role::Replica;
                    held = None;
                }
            }
            if let Some(p) = record.primary.clone() {
                if held.as_ref().is_none_or(|l: &LeaderLease| l.owner != p) {
                    let current = store.read_lease(&cluster, LeaseName::Leader).await.unwrap();
                    if current.as_ref().is_none_or(|l| l.is_free()) {
                        if let Ok(l) =
                            store.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, &p, record.term, 10_000).await
                        {
                            held = Some(l);
                            let m = members.get_mut(&p).unwrap();
                            m.role = Role::Primary;
                            m.write_lsn = m.replay_lsn;
                        }
                    }
                }
            }
            for m in members.values_mut() {
                m.seq += 1;
                m.term = record.term;
                store.put_member(&cluster, m).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Wait (bounded) for the first heartbeats.
    let mut beating = false;
    for _ in 0..50 {
        if store.read_view(cluster).await.unwrap().members.len() == 3 {
            beating = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(beating, "the agents of {cluster} never beat");
    Agents { stop, task: Some(task) }
}

fn config(clusters: &str) -> LambdaConfig {
    LambdaConfig::from_env(
        [
            ("PGDAEMON_CLUSTERS", clusters),
            ("PGDAEMON_FENCING", "http"),
            ("PGDAEMON_HEARTBEAT_STALE_MS", "400"),
            ("PGDAEMON_RUN_BUDGET_MS", "8000"),
            ("PGDAEMON_POLL_MS", "100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap()
}

type TestHandler = Handler<Arc<MemoryStore>, ConfirmingFencer, SystemClock>;

fn handler(store: &Arc<MemoryStore>, clusters: &str) -> (TestHandler, ConfirmingFencer) {
    let fencer = ConfirmingFencer::default();
    (Handler::new(store.clone(), fencer.clone(), SystemClock::new(), config(clusters), "lambda-test"), fencer)
}

fn event(v: Value) -> LambdaEvent<Value> {
    LambdaEvent::new(v, Context::default())
}

#[tokio::test]
async fn malformed_payloads_are_named_and_change_nothing() {
    let store = Arc::new(MemoryStore::new());
    let _agents = bootstrap(&store, "hm").await;
    let (h, fencer) = handler(&store, "hm");
    let before = store.read_cluster("hm").await.unwrap();
    let cases: Vec<(Value, &str)> = vec![
        (json!("evaluate"), "expected a JSON object"),
        (json!([1, 2]), "expected a JSON object"),
        (json!({}), "expected an EventBridge scheduled event"),
        (json!({"action": "explode", "cluster": "hm"}), "unknown action \"explode\""),
        (json!({"action": 7}), "invalid action payload"),
        (json!({"action": "failover", "cluster": "hm", "surprise": 1}), "unknown field `surprise`"),
        (json!({"action": "failover", "cluster": "hm", "force": "yes"}), "invalid action payload"),
        (json!({"action": "failover"}), "needs \"cluster\""),
        (json!({"action": "failover", "cluster": "elsewhere"}), "not known here"),
        (json!({"action": "failover", "cluster": "bad name!"}), "cluster"),
        (json!({"action": "pause", "cluster": "hm", "candidate": "n2"}), "takes no \"candidate\""),
        (json!({"action": "failover", "cluster": "hm", "candidate": "../n2"}), "candidate"),
        (json!({"action": "status", "cluster": "hm", "force": true}), "takes only \"cluster\""),
        (json!({"detail-type": "Scheduled Event", "source": "evil.example"}), "unexpected source"),
    ];
    for (payload, needle) in cases {
        let err = h.handle(event(payload.clone())).await.expect_err(&payload.to_string()).to_string();
        assert!(err.contains(needle), "{payload}: {err}");
    }
    // Record untouched (the agents only write heartbeats and the lease).
    assert_eq!(store.read_cluster("hm").await.unwrap(), before);
    assert!(fencer.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn scheduled_event_evaluates_every_configured_cluster() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "sa").await;
    let _b = bootstrap(&store, "sb").await;
    let (h, fencer) = handler(&store, "sa,sb");
    let out = h
        .handle(event(json!({"version":"0","id":"x","detail-type":"Scheduled Event","source":"aws.events","account":"1","time":"2026-11-22T00:00:00Z","region":"us-east-1","resources":[],"detail":{}})))
        .await
        .unwrap();
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{out:#}");
    for (r, name) in results.iter().zip(["sa", "sb"]) {
        assert_eq!(r["cluster"], name);
        assert_eq!(r["outcome"], "idle", "{out:#}");
        assert!(r["reason"].as_str().unwrap().contains("primary n1 healthy"), "{out:#}");
    }
    assert!(fencer.calls.lock().unwrap().is_empty());
    // The lock is handed back at the end of the invocation.
    let lock = store.read_lease("sa", LeaseName::Coordinator).await.unwrap().unwrap();
    assert!(lock.released);
}

#[tokio::test]
async fn status_reports_members_and_record() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "st").await;
    let (h, _) = handler(&store, "st");
    let out = h.handle(event(json!({"action": "status", "cluster": "st"}))).await.unwrap();
    let c = &out["clusters"][0];
    assert_eq!(c["record"]["primary"], "n1");
    assert_eq!(c["members"].as_array().unwrap().len(), 3);
    assert_eq!(c["leader"]["owner"], "n1");
}

#[tokio::test]
async fn pause_and_resume_go_through_the_record() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "pr").await;
    let (h, _) = handler(&store, "pr");
    let out = h.handle(event(json!({"action": "pause", "cluster": "pr", "id": "p-1"}))).await.unwrap();
    assert_eq!(out["accepted"], true, "{out:#}");
    assert_eq!(out["request_id"], "p-1");
    assert!(store.read_cluster("pr").await.unwrap().unwrap().paused);
    // While paused, a manual failover is refused with the reason.
    let out = h.handle(event(json!({"action": "failover", "cluster": "pr"}))).await.unwrap();
    assert_eq!(out["accepted"], false, "{out:#}");
    assert!(out["request_reason"].as_str().unwrap().contains("paused"), "{out:#}");
    let out = h.handle(event(json!({"action": "resume", "cluster": "pr"}))).await.unwrap();
    assert_eq!(out["accepted"], true, "{out:#}");
    let r = store.read_cluster("pr").await.unwrap().unwrap();
    assert!(!r.paused && r.request.is_none());
}

#[tokio::test]
async fn manual_failover_runs_to_completion_and_records_history() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "mf").await;
    let (h, fencer) = handler(&store, "mf");
    let out = h.handle(event(json!({"action": "failover", "cluster": "mf", "candidate": "n2"}))).await.unwrap();
    assert_eq!(out["accepted"], true, "{out:#}");
    assert_eq!(out["outcome"], "idle", "{out:#}");
    assert_eq!(out["primary"], "n2", "{out:#}");
    assert_eq!(out["term"], 2, "{out:#}");
    assert_eq!(*fencer.calls.lock().unwrap(), vec![("n1".to_string(), 2)]);
    let history = store.read_history("mf").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].old_primary.as_deref(), history[0].new_primary.as_str()), (Some("n1"), "n2"));
}

#[tokio::test]
async fn ineligible_candidate_is_refused_unless_forced() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "ic").await;
    let (h, fencer) = handler(&store, "ic");
    // n3 is 4 KiB behind n2 with a 1 KiB limit.
    let mut r = store.read_cluster("ic").await.unwrap().unwrap();
    r.config.maximum_lag_on_failover = 1024;
    store.write_cluster("ic", Some(r.version), &r).await.unwrap();
    let out = h.handle(event(json!({"action": "switchover", "cluster": "ic", "candidate": "n3"}))).await.unwrap();
    assert_eq!(out["accepted"], false, "{out:#}");
    assert!(out["request_reason"].as_str().unwrap().contains("behind the most advanced replica"), "{out:#}");
    assert_eq!(store.read_cluster("ic").await.unwrap().unwrap().term, 1);
    assert!(fencer.calls.lock().unwrap().is_empty());
    let out = h.handle(event(json!({"action": "failover", "cluster": "ic", "candidate": "n3", "force": true}))).await.unwrap();
    assert_eq!(out["accepted"], true, "{out:#}");
    assert_eq!(out["primary"], "n3", "{out:#}");
}

#[tokio::test]
async fn a_waiting_request_is_not_overwritten() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "wq").await;
    let (h, _) = handler(&store, "wq");
    let mut r = store.read_cluster("wq").await.unwrap().unwrap();
    r.request = Some(pgdaemon_core::ManualRequest {
        id: "someone-else".into(),
        action: pgdaemon_core::RequestAction::Pause,
        candidate: None,
        force: false,
        requested_ms: 0,
    });
    store.write_cluster("wq", Some(r.version), &r).await.unwrap();
    let before = store.read_cluster("wq").await.unwrap();
    let err = h.handle(event(json!({"action": "failover", "cluster": "wq"}))).await.unwrap_err().to_string();
    assert!(err.contains("someone-else"), "{err}");
    assert_eq!(store.read_cluster("wq").await.unwrap(), before);
}

/// A fleet coordinator: no `PGDAEMON_CLUSTERS`, the registry names the clusters.
fn fleet_handler(store: &Arc<MemoryStore>, per_invocation: usize) -> TestHandler {
    let mut config = config("unused");
    config.clusters.clear();
    config.clusters_per_invocation = per_invocation;
    Handler::new(store.clone(), ConfirmingFencer::default(), SystemClock::new(), config, "lambda-fleet")
}

/// Records the shards handed over; fails the ones listed.
#[derive(Default)]
struct RecordingInvoker {
    handed: Mutex<Vec<pgdaemon_lambda::fleet::Shard>>,
    failing: Vec<usize>,
}

#[async_trait]
impl pgdaemon_lambda::fleet::ShardInvoker for RecordingInvoker {
    async fn invoke_shard(&self, shard: pgdaemon_lambda::fleet::Shard) -> Result<(), String> {
        if self.failing.contains(&shard.index) {
            return Err(format!("shard {} refused by the test", shard.index));
        }
        self.handed.lock().unwrap().push(shard);
        Ok(())
    }
}

fn evaluated(answer: &Value) -> Vec<String> {
    answer["results"].as_array().unwrap().iter().map(|r| r["cluster"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_fleet_coordinator_finds_registered_clusters_and_acts_on_them() {
    let store = Arc::new(MemoryStore::new());
    let _a = bootstrap(&store, "fa").await;
    let _b = bootstrap(&store, "fb").await;
    for c in ["fa", "fb"] {
        store.register_cluster(c, 1).await.unwrap();
    }
    let h = fleet_handler(&store, 250);
    let out = h.handle(event(json!({"detail-type": "Scheduled Event", "source": "aws.events"}))).await.unwrap();
    assert_eq!(
        (evaluated(&out), out["clusters"].clone(), out["shards"].clone()),
        (vec!["fa".into(), "fb".into()], json!(2), json!(1))
    );
    // A registered cluster takes manual requests; an unknown one is refused and nothing written.
    let out = h.handle(event(json!({"action": "switchover", "cluster": "fb", "candidate": "n2"}))).await.unwrap();
    assert_eq!(out["accepted"], json!(true), "{out}");
    let e = h.handle(event(json!({"action": "pause", "cluster": "fc"}))).await.unwrap_err();
    assert_eq!(e.error_type(), "UnknownCluster", "{e}");
    assert!(store.read_cluster("fc").await.unwrap().is_none());
}

#[tokio::test]
async fn a_big_scheduled_run_hands_shards_to_parallel_invocations() {
    let store = Arc::new(MemoryStore::new());
    let names: Vec<String> = (0..10).map(|i| format!("fleet-{i}")).collect();
    for n in &names {
        store.register_cluster(n, 1).await.unwrap();
    }
    let invoker = Arc::new(RecordingInvoker { failing: vec![2], ..Default::default() });
    let h = fleet_handler(&store, 4).with_shard_invoker(invoker.clone());
    let out = h.handle(event(json!({"detail-type": "Scheduled Event", "source": "aws.events"}))).await.unwrap();
    assert_eq!((out["clusters"].clone(), out["shards"].clone()), (json!(10), json!(3)), "{out}");
    let handed = invoker.handed.lock().unwrap().clone();
    assert_eq!(handed, vec![pgdaemon_lambda::fleet::Shard { index: 1, of: 3 }]);
    assert_eq!(out["fanout_errors"].as_array().unwrap().len(), 1, "{out}");
    // This run covered shard 0 and the shard it could not hand over; the parallel one the rest.
    let here = evaluated(&out);
    let parallel = evaluated(&h.handle(event(handed[0].event())).await.unwrap());
    let mut all: Vec<String> = here.iter().chain(&parallel).cloned().collect();
    all.sort();
    assert_eq!(all, names, "every cluster once: here {here:?}, parallel {parallel:?}");
    // Shard events are checked like any other.
    for bad in [
        json!({"action": "evaluate", "shard": 3, "shards": 3}),
        json!({"action": "evaluate", "shard": 0}),
        json!({"action": "evaluate", "cluster": "fleet-1", "shard": 0, "shards": 2}),
        json!({"action": "status", "shard": 0, "shards": 2}),
    ] {
        let e = h.handle(event(bad.clone())).await.unwrap_err();
        assert_eq!(e.error_type(), "BadEvent", "{bad}: {e}");
    }
}
