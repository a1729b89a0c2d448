//! Invoked through the agents' alias (`agent-evaluate`), the handler runs `evaluate` only: the
//! node role may invoke that alias and nothing else, so a node cannot ask for a forced failover,
//! a switchover or a pause. Invoked as the function itself, the same payloads are accepted.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use lambda_runtime::{Context, LambdaEvent};
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_core::{ClusterRecord, DynamicConfig, MemoryStore, Store, SystemClock};
use pgdaemon_lambda::config::LambdaConfig;
use pgdaemon_lambda::handler::{via_agent_alias, Handler, HandlerError, AGENT_ALIAS};
use serde_json::{json, Value};

const FUNCTION_ARN: &str = "arn:aws:lambda:eu-west-1:123456789012:function:pgdaemon-al-coordinator";

#[derive(Clone, Default)]
struct RecordingFencer {
    calls: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Fencer for RecordingFencer {
    fn name(&self) -> &str {
        "recording"
    }
    async fn fence(&self, t: &FenceTarget, _p: Option<&PendingHandle>) -> FenceStatus {
        self.calls.lock().unwrap().push(t.member.clone());
        FenceStatus::Confirmed { detail: "demoted".into(), lsn: None }
    }
}

fn handler(store: &Arc<MemoryStore>, fencer: &RecordingFencer) -> Handler<Arc<MemoryStore>, RecordingFencer, SystemClock> {
    let config = LambdaConfig::from_env(
        [
            ("PGDAEMON_CLUSTERS", "al"),
            ("PGDAEMON_FENCING", "http"),
            ("PGDAEMON_RUN_BUDGET_MS", "1000"),
            ("PGDAEMON_POLL_MS", "50"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .unwrap();
    Handler::new(store.clone(), fencer.clone(), SystemClock::new(), config, "lambda-test")
}

fn invoked_as(arn: &str, payload: Value) -> LambdaEvent<Value> {
    let mut context = Context::default();
    context.invoked_function_arn = arn.to_string();
    LambdaEvent::new(payload, context)
}

fn alias_arn() -> String {
    format!("{FUNCTION_ARN}:{AGENT_ALIAS}")
}

#[test]
fn only_the_alias_qualifier_counts() {
    assert!(via_agent_alias(&alias_arn()));
    assert!(!via_agent_alias(FUNCTION_ARN));
    assert!(!via_agent_alias(&format!("{FUNCTION_ARN}:$LATEST")));
    assert!(!via_agent_alias(&format!("{FUNCTION_ARN}:live")));
    assert!(!via_agent_alias(""), "tests and local runtimes report no ARN: the function itself");
}

#[tokio::test]
async fn the_agent_alias_refuses_everything_but_evaluate_and_changes_nothing() {
    let store = Arc::new(MemoryStore::new());
    store.write_cluster("al", None, &ClusterRecord::bootstrap("n1", DynamicConfig::default())).await.unwrap();
    let fencer = RecordingFencer::default();
    let h = handler(&store, &fencer);
    let before = store.read_cluster("al").await.unwrap();

    let refused: Vec<Value> = vec![
        json!({"action": "failover", "cluster": "al", "force": true}),
        json!({"action": "failover", "cluster": "al", "candidate": "n2"}),
        json!({"action": "switchover", "cluster": "al", "candidate": "n2"}),
        json!({"action": "pause", "cluster": "al"}),
        json!({"action": "resume", "cluster": "al"}),
        json!({"action": "status", "cluster": "al"}),
        json!({"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}}),
    ];
    for payload in refused {
        let err = h.handle(invoked_as(&alias_arn(), payload.clone())).await.expect_err(&payload.to_string());
        assert!(matches!(err, HandlerError::Refused(_)), "{payload}: {err:?}");
        let msg = err.to_string();
        assert!(msg.contains(AGENT_ALIAS) && msg.contains("only \"evaluate\""), "{payload}: {msg}");
    }
    // Malformed input is still named as such, whichever way it came.
    let err = h.handle(invoked_as(&alias_arn(), json!({"action": "explode", "cluster": "al"}))).await.unwrap_err();
    assert!(matches!(err, HandlerError::BadEvent(_)), "{err:?}");

    assert_eq!(store.read_cluster("al").await.unwrap(), before, "a refused request wrote nothing");
    assert!(fencer.calls.lock().unwrap().is_empty(), "nothing was fenced");

    // `evaluate` is what the alias is for.
    let out = h.handle(invoked_as(&alias_arn(), json!({"action": "evaluate", "cluster": "al"}))).await.unwrap();
    assert_eq!(out["action"], "evaluate", "{out:#}");
    assert_eq!(out["results"][0]["cluster"], "al", "{out:#}");
}

#[tokio::test]
async fn the_function_itself_still_takes_manual_actions() {
    let store = Arc::new(MemoryStore::new());
    store.write_cluster("al", None, &ClusterRecord::bootstrap("n1", DynamicConfig::default())).await.unwrap();
    let fencer = RecordingFencer::default();
    let h = handler(&store, &fencer);
    let out = h.handle(invoked_as(FUNCTION_ARN, json!({"action": "pause", "cluster": "al"}))).await.unwrap();
    assert_eq!(out["action"], "pause", "{out:#}");
    assert_eq!(out["accepted"], true, "{out:#}");
    assert!(store.read_cluster("al").await.unwrap().unwrap().paused);
}
