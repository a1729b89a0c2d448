//! The AWS path end to end, against the endpoint in `AWS_ENDPOINT_URL` (moto server or
//! LocalStack) and the stack `scripts/localstack-test` deployed there with the Terraform example:
//! three real PostgreSQL 15 servers, three real agents (`pgdaemon-agent`) on the DynamoDB store,
//! each on one of the Auto Scaling group's (fake) EC2 instances tagged with the cluster, and the
//! real coordinator Lambda binary behind a local Lambda runtime API emulator, with the deployed
//! function's environment. The scenarios run in order on one cluster (each starts from the state
//! the previous one left, as an operator's day would):
//!
//! 1. the deployed schedule is `rate(1 minute)`; a scheduled event on a healthy cluster does nothing;
//! 2. malformed events are errors and change nothing;
//! 3. manual switchover and failover with `aws lambda invoke` payloads;
//! 4. the primary's host dies: a replica's agent invokes the coordinator (fast path), which stops
//!    the old primary's instance (DescribeInstances says so), promotes the most advanced replica,
//!    publishes the event to SNS and writes the history item;
//! 5. the AWS endpoint goes away for longer than the lease and comes back: never two writable
//!    primaries, no promotion while it is away, and after it the former primary re-takes its own
//!    lease in the same term (docs/store-outages.md);
//! 6. the coordinator refuses to fence an instance without the cluster tag (and so promotes nobody).
//!
//! Without the script's `PGDAEMON_LST_*` variables the test says so and passes vacuously (the
//! crate is not a default member: `make test` runs it through the script).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgdaemon_core::{ClusterRecord, ClusterView, HistoryEntry, Store, StoreConfig};
use pgdaemon_localstack_tests::{wait_until, LocalLambda, Proc, Relay, Stack};
use pgdaemon_testkit::ports::free_port;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster, PgNode};
use serde_json::{json, Value};

const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// One agent process and what it was started with.
struct Agent {
    name: String,
    api: String,
    instance_id: String,
    config: PathBuf,
    proc: Option<Proc>,
}

struct World {
    stack: Stack,
    pg: PgCluster,
    store: Arc<dyn Store>,
    relay: Relay,
    lambda: LocalLambda,
    agents: BTreeMap<String, Agent>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    started: Instant,
}

impl World {
    fn log(&self, msg: impl AsRef<str>) {
        eprintln!("[{:>6.1}s] {}", self.started.elapsed().as_secs_f64(), msg.as_ref());
    }

    async fn view(&self) -> Result<ClusterView> {
        Ok(self.store.read_view(&self.stack.cluster).await?)
    }

    async fn record(&self) -> Result<ClusterRecord> {
        self.view().await?.cluster.context("no cluster record")
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>> {
        Ok(self.store.read_history(&self.stack.cluster).await?)
    }

    /// Waits until the history holds exactly `count` items (failing at once on more).
    async fn wait_for_history(&self, count: usize, timeout: Duration) -> Result<Vec<HistoryEntry>> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.history().await?;
            ensure!(entries.len() <= count, "expected {count} history items, have {entries:?}");
            if entries.len() == count {
                return Ok(entries);
            }
            ensure!(Instant::now() < deadline, "expected {count} history items within {timeout:?}, have {entries:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn status(&self, node: &str, path: &str) -> Option<u16> {
        let a = &self.agents[node];
        let r = self.http.get(format!("{}{path}", a.api)).timeout(Duration::from_secs(2)).send().await.ok()?;
        Some(r.status().as_u16())
    }

    /// The node's Postgres accepts writes (not in recovery), by asking it.
    fn writable(&self, node: &str) -> bool {
        self.pg.try_sql(node, "select pg_is_in_recovery()").is_ok_and(|s| s == "f")
    }

    /// The node's WAL receiver is streaming and has received WAL of `timeline`, by asking Postgres.
    fn streams_timeline(&self, node: &str, timeline: u32) -> bool {
        self.pg
            .try_sql(node, "select status || ':' || received_tli from pg_stat_wal_receiver")
            .is_ok_and(|s| s == format!("streaming:{timeline}"))
    }

    /// `node` holds the lease in the record's term, says so on `/primary`, and its Postgres writes.
    async fn is_primary(&self, node: &str) -> bool {
        let Ok(view) = self.view().await else { return false };
        let (Some(rec), Some(lease)) = (view.cluster, view.leader) else { return false };
        rec.primary.as_deref() == Some(node)
            && lease.owner == node
            && lease.term == rec.term
            && self.status(node, "/primary").await == Some(200)
            && self.writable(node)
    }

    /// Waits until one of `nodes` is the lease-holding primary, checking all along that at most
    /// one of them accepts writes.
    async fn wait_for_primary(&self, nodes: &[String], timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let writable: Vec<&String> = nodes.iter().filter(|n| self.writable(n)).collect();
            ensure!(writable.len() <= 1, "two writable primaries: {writable:?}");
            for n in nodes {
                if self.is_primary(n).await {
                    return Ok(n.clone());
                }
            }
            if Instant::now() > deadline {
                bail!("no lease-holding primary among {nodes:?} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_healthy(&self, primary: &str, replicas: &[&str], timeout: Duration) -> Result<()> {
        let what = format!("{primary} lease-holding primary, {replicas:?} healthy replicas");
        let this = self;
        wait_until(&what, timeout, move || async move {
            if !this.is_primary(primary).await {
                return false;
            }
            // Replicas on the primary's timeline (a replica still on an older one is not a
            // failover candidate yet: it is being rewound or re-pointed).
            let Ok(view) = this.view().await else { return false };
            let Some(timeline) = view.members.get(primary).map(|m| m.timeline) else { return false };
            for r in replicas {
                // The agent's heartbeat says it streams on the primary's timeline...
                if view.members.get(*r).is_none_or(|m| m.timeline != timeline || !m.streaming || m.receive_lsn.is_none()) {
                    return false;
                }
                // ...and Postgres agrees: its WAL receiver streams that timeline.
                if !this.streams_timeline(r, timeline) {
                    return false;
                }
                if this.status(r, "/replica").await != Some(200) || this.writable(r) {
                    return false;
                }
            }
            true
        })
        .await
    }

    fn agent_config(&self, node: &PgNode, instance_id: &str, api_port: u16) -> String {
        let pg_bin = self.pg.bin_dir().display().to_string();
        let run_as = self.pg.run_as().map(|u| format!("run_as = \"{u}\"\n")).unwrap_or_default();
        let d = pgdaemon_testkit::short_timings();
        format!(
            r#"cluster = "{cluster}"

[node]
name = "{name}"
listen = "127.0.0.1:{api_port}"
api_url = "http://127.0.0.1:{api_port}"
pg_host = "127.0.0.1"
instance_id = "{instance_id}"
availability_zone = "{region}a"
imds = false

[postgres]
bin_dir = "{pg_bin}"
data_dir = "{data}"
port = {port}
connect_host = "127.0.0.1"
superuser = "postgres"
replication_user = "postgres"
log_file = "{log}"
{run_as}
[postgres.parameters]
listen_addresses = "127.0.0.1"

[store]
backend = "dynamodb"
table = "{table}"
region = "{region}"
endpoint_url = "{endpoint}"

[dynamic]
lease_ms = {lease}
renew_interval_ms = {renew}
safety_margin_ms = {margin}
probe_interval_ms = {probe}

[coordinator]
lambda_function = "{function}"

[log]
level = "info"
"#,
            cluster = self.stack.cluster,
            name = node.name,
            region = self.stack.region,
            data = node.data_dir.display(),
            port = node.port,
            log = node.log_file.display(),
            table = self.stack.table,
            endpoint = self.relay.url(),
            lease = d.lease_ms,
            renew = d.renew_interval_ms,
            margin = d.safety_margin_ms,
            probe = d.probe_interval_ms,
            function = self.stack.function,
        )
    }

    /// Starts (or restarts) the agent of `node` on `instance_id`.
    fn start_agent(&mut self, node: &str, instance_id: &str) -> Result<()> {
        if let Some(mut old) = self.agents.get_mut(node).and_then(|a| a.proc.take()) {
            old.stop(Duration::from_secs(10));
        }
        let pg_node = self.pg.node(node).clone();
        let api_port = free_port();
        let config = self.dir.path().join(format!("{node}.toml"));
        std::fs::write(&config, self.agent_config(&pg_node, instance_id, api_port))?;
        let mut cmd = Command::new(self.stack.bin_dir.join("pgdaemon-agent"));
        cmd.arg("--config")
            .arg(&config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", &self.stack.region)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            // Every AWS call through the relay; Lambda invokes to the local Lambda (moto's
            // Lambda would need Docker to run the function; LocalStack's would run it itself).
            .env("AWS_ENDPOINT_URL", self.relay.url())
            .env("AWS_ENDPOINT_URL_LAMBDA", self.lambda.url())
            .env_remove("RUST_LOG");
        let proc = Proc::spawn(&format!("agent {node}"), cmd, &self.dir.path().join(format!("{node}.agent.log")))?;
        self.agents.insert(
            node.to_string(),
            Agent {
                name: node.to_string(),
                api: format!("http://127.0.0.1:{api_port}"),
                instance_id: instance_id.to_string(),
                config,
                proc: Some(proc),
            },
        );
        Ok(())
    }

    async fn invoke(&mut self, payload: Value) -> Result<Value> {
        let t = Instant::now();
        let r = self.lambda.invoke(&payload).await;
        self.log(format!(
            "invoke {payload} -> {} ({:.1}s)",
            match &r {
                Ok(v) => v.to_string(),
                Err(e) => format!("ERROR {e:#}"),
            },
            t.elapsed().as_secs_f64()
        ));
        r
    }

    /// Members whose agent process is running.
    fn live(&mut self) -> Vec<String> {
        self.agents.values_mut().filter_map(|a| a.proc.as_mut().is_some_and(|p| p.alive()).then(|| a.name.clone())).collect()
    }

    /// Starts every cluster instance that a scenario stopped (an operator bringing hosts back).
    fn start_stopped_instances(&self) -> Result<()> {
        for a in self.agents.values() {
            let s = self.stack.instance_state(&a.instance_id)?;
            if s != "running" {
                self.stack.aws(&["start", &a.instance_id])?;
            }
        }
        Ok(())
    }

    fn failure_context(&self) -> String {
        let mut out = String::new();
        for a in self.agents.values() {
            if let Some(p) = &a.proc {
                out.push_str(&format!("\n--- {} (agent {}) ---\n{}", a.name, a.config.display(), p.log_tail(25)));
            }
        }
        out.push_str(&format!("\n--- coordinator Lambda ---\n{}", self.lambda.bootstrap.log_tail(40)));
        out
    }
}

fn scheduled_event() -> Value {
    json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
        "source": "aws.events", "account": "123456789012", "time": "2026-11-22T00:00:00Z", "region": "eu-west-1",
        "resources": ["arn:aws:events:eu-west-1:123456789012:rule/pgdaemon-coordinator-schedule"], "detail": {}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aws_path_end_to_end() {
    let Some(stack) = Stack::from_env() else {
        eprintln!("skipped: run through scripts/localstack-test (it deploys the stack and sets PGDAEMON_LST_*)");
        return;
    };
    if !postgres_available() {
        panic!("PostgreSQL 15 is not installed (scripts/setup)");
    }
    let mut world = match setup(stack).await {
        Ok(w) => w,
        Err(e) => panic!("setup: {e:#}"),
    };
    let result = scenarios(&mut world).await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", world.failure_context());
    }
    world.log("all scenarios passed");
}

async fn setup(stack: Stack) -> Result<World> {
    let started = Instant::now();
    let instances: Vec<String> = serde_json::from_value(stack.aws(&["instances", &stack.tag_key, &stack.cluster])?)?;
    ensure!(
        instances.len() >= 3,
        "expected the Auto Scaling group's 3 instances tagged {}={}, found {instances:?}",
        stack.tag_key,
        stack.cluster
    );
    for id in &instances {
        if stack.instance_state(id)? != "running" {
            stack.aws(&["start", id])?;
        }
    }
    let relay = Relay::new(&stack.endpoint).await?;
    let store = pgdaemon_dcs::connect(&StoreConfig::Dynamodb {
        table: stack.table.clone(),
        region: Some(stack.region.clone()),
        endpoint_url: Some(stack.endpoint.clone()),
    })
    .await
    .context("store")?;

    // The coordinator's environment: what Terraform deployed, plus the local wiring and shorter
    // waits (the test's lease is 4 s, not 10 s).
    let deployed: BTreeMap<String, String> = serde_json::from_value(stack.aws(&["function-env", &stack.function])?)?;
    ensure!(deployed.get("PGDAEMON_TABLE") == Some(&stack.table), "deployed PGDAEMON_TABLE {:?}", deployed.get("PGDAEMON_TABLE"));
    let mut env = deployed.clone();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", stack.region.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL", &relay.url()),
        // A run (one invocation) is resumable; 10 s covers a failover with the test's 4 s lease
        // and ends an invocation during the endpoint outage well within the outage.
        ("PGDAEMON_RUN_BUDGET_MS", "10000"),
        ("PGDAEMON_POLL_MS", "250"),
        ("PGDAEMON_HTTP_TIMEOUT_MS", "5000"),
        ("PGDAEMON_LOCK_LEASE_MS", "5000"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    let lambda = LocalLambda::start(&stack, &env).await?;

    let mut pg = PgCluster::new()?;
    pg.init_primary("n1")?;
    pg.add_replica("n2", "n1")?;
    pg.add_replica("n3", "n1")?;
    // The cluster record, as `pgdctl` bootstraps it: n1 is the primary of term 1.
    let cluster = stack.cluster.clone();
    let mut bootstrap = ClusterRecord::bootstrap("n1", pgdaemon_testkit::short_timings());
    if let Some(old) = store.read_cluster(&cluster).await? {
        bail!("the table already holds cluster {cluster} (term {}): use a fresh stack", old.term);
    }
    bootstrap.version = 0;
    store.write_cluster(&cluster, None, &bootstrap).await.context("bootstrap record")?;

    let dir = tempfile::Builder::new().prefix("pgdaemon-lst-").tempdir()?;
    // reqwest has no process-wide rustls provider: every client is given its TLS configuration.
    let http = reqwest::Client::builder().use_preconfigured_tls(pgdaemon_dcs::tls::client_config(None, None)?).build()?;
    let mut world = World { stack, pg, store, relay, lambda, agents: BTreeMap::new(), dir, http, started };
    for (node, id) in NODES.iter().zip(&instances) {
        world.start_agent(node, id)?;
        world.log(format!("agent {node} on instance {id}"));
    }
    world
        .wait_healthy("n1", &["n2", "n3"], Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}{}", world.failure_context()))?;
    world.log("cluster healthy: n1 primary, n2 and n3 replicas");
    Ok(world)
}

async fn scenarios(w: &mut World) -> Result<()> {
    scheduled_evaluation_of_a_healthy_cluster_does_nothing(w).await.context("scenario: scheduled evaluation")?;
    malformed_events_are_errors_and_change_nothing(w).await.context("scenario: malformed events")?;
    manual_switchover_and_failover(w).await.context("scenario: manual switchover and failover")?;
    primary_host_dies(w).await.context("scenario: the primary's host dies")?;
    endpoint_outage_is_safe(w).await.context("scenario: AWS endpoint outage")?;
    untagged_instance_is_not_fenced(w).await.context("scenario: untagged instance")?;
    Ok(())
}

async fn scheduled_evaluation_of_a_healthy_cluster_does_nothing(w: &mut World) -> Result<()> {
    // moto and LocalStack store EventBridge rules without firing them on time: check the rule,
    // then deliver what it would deliver.
    let rule = w.stack.aws(&["rule", &w.stack.rule])?;
    ensure!(rule["schedule_expression"] == "rate(1 minute)", "deployed schedule: {rule}");
    ensure!(rule["state"] == "ENABLED", "deployed rule: {rule}");
    let before = w.record().await?;
    let history = w.history().await?.len();
    let out = w.invoke(scheduled_event()).await?;
    let results = out["results"].as_array().context("no results")?;
    ensure!(results.len() == 1 && results[0]["cluster"] == w.stack.cluster.as_str(), "{out}");
    ensure!(results[0]["steps"].as_array().is_none_or(|s| s.is_empty()), "steps on a healthy cluster: {out}");
    let after = w.record().await?;
    ensure!(
        after.term == before.term && after.primary == before.primary && after.transition.is_none(),
        "record changed: {after:?}"
    );
    ensure!(w.history().await?.len() == history, "history grew");
    for a in w.agents.values() {
        ensure!(w.stack.instance_state(&a.instance_id)? == "running", "{} was touched", a.instance_id);
    }
    w.wait_healthy("n1", &["n2", "n3"], Duration::from_secs(5)).await
}

async fn malformed_events_are_errors_and_change_nothing(w: &mut World) -> Result<()> {
    let cluster = w.stack.cluster.clone();
    let before = w.record().await?;
    let cases = [
        json!("evaluate"),
        json!([1, 2]),
        json!({}),
        json!({"action": "explode", "cluster": cluster}),
        json!({"action": "failover"}),
        json!({"action": "failover", "cluster": "someone-else"}),
        json!({"action": "switchover", "cluster": cluster, "candidate": "bad name!"}),
        json!({"action": "switchover", "cluster": cluster, "candidate": "n2", "surprise": true}),
        json!({"action": "pause", "cluster": cluster, "candidate": "n2"}),
        json!({"action": 7, "cluster": cluster}),
        json!({"detail-type": "Scheduled Event", "source": "evil.example"}),
    ];
    for payload in cases {
        // The function error's payload names the refusal with a stable errorType.
        let want = if payload.get("cluster") == Some(&json!("someone-else")) { "\"UnknownCluster\"" } else { "\"BadEvent\"" };
        match w.invoke(payload.clone()).await {
            Ok(v) => bail!("accepted {payload}: {v}"),
            Err(e) => ensure!(e.to_string().contains(want), "{payload}: expected errorType {want}, got {e:#}"),
        }
    }
    let after = w.record().await?;
    ensure!(after.version == before.version, "the record changed: {before:?} -> {after:?}");
    ensure!(w.lambda.bootstrap.alive(), "the function died");
    Ok(())
}

async fn manual_switchover_and_failover(w: &mut World) -> Result<()> {
    let cluster = w.stack.cluster.clone();
    let term = w.record().await?.term;
    let out = w.invoke(json!({"action": "switchover", "cluster": cluster, "candidate": "n2"})).await?;
    ensure!(out["accepted"] != json!(false), "switchover refused: {out}");
    w.wait_healthy("n2", &["n1", "n3"], Duration::from_secs(60)).await?;
    let rec = w.record().await?;
    ensure!(rec.term > term, "term did not increase: {} -> {}", term, rec.term);
    let last = w.history().await?.into_iter().max_by_key(|h| h.term).context("no history")?;
    ensure!(last.new_primary == "n2" && last.old_primary.as_deref() == Some("n1") && last.term == rec.term, "history: {last:?}");
    w.log(format!("switchover done: {last:?}"));
    w.start_stopped_instances()?;

    let term = rec.term;
    let out = w.invoke(json!({"action": "failover", "cluster": cluster, "candidate": "n3"})).await?;
    ensure!(out["accepted"] != json!(false), "failover refused: {out}");
    w.wait_healthy("n3", &["n1", "n2"], Duration::from_secs(60)).await?;
    let rec = w.record().await?;
    ensure!(rec.term > term, "term did not increase");
    let last = w.history().await?.into_iter().max_by_key(|h| h.term).context("no history")?;
    ensure!(last.new_primary == "n3" && last.old_primary.as_deref() == Some("n2"), "history: {last:?}");
    w.log(format!("failover done: {last:?}; n2's instance is {}", w.stack.instance_state(&w.agents["n2"].instance_id)?));
    w.start_stopped_instances()?;
    Ok(())
}

async fn primary_host_dies(w: &mut World) -> Result<()> {
    let queue = w.stack.aws(&["subscribe", &w.stack.topic_arn])?.as_str().context("queue url")?.to_string();
    let rec = w.record().await?;
    let old = rec.primary.clone().context("no primary")?;
    let replicas: Vec<String> = NODES.iter().filter(|n| **n != old).map(|n| n.to_string()).collect();
    let old_instance = w.agents[&old].instance_id.clone();
    ensure!(w.stack.instance_state(&old_instance)? == "running", "{old_instance} not running before the test");
    // The most advanced replica by what it has received, as the coordinator will judge it.
    let history = w.history().await?.len();
    let t0 = Instant::now();
    w.log(format!("killing {old}'s host: agent and Postgres (kill -9)"));
    if let Some(p) = w.agents.get_mut(&old).and_then(|a| a.proc.as_mut()) {
        p.kill9();
    }
    w.pg.kill9(&old)?;
    // No scheduled event is sent: only the agents' fast path can start the coordinator.
    let new = w.wait_for_primary(&replicas, Duration::from_secs(60)).await.context("a replica promoted by the fast path")?;
    w.log(format!("{new} promoted {:.1}s after {old} died", t0.elapsed().as_secs_f64()));
    let state = w.stack.instance_state(&old_instance)?;
    ensure!(state == "stopped" || state == "stopping", "the old primary's instance {old_instance} is {state}, not stopped");
    let invoked = w.agents.values().filter(|a| a.name != old).any(|a| {
        a.proc
            .as_ref()
            .is_some_and(|p| std::fs::read_to_string(&p.log).unwrap_or_default().contains("invoking the coordinator Lambda"))
    });
    ensure!(invoked, "no agent logged a fast-path invoke");
    // The coordinator writes the history item once it has seen the promotion (S5: the steps up to
    // it are in the cluster record), so it follows the new primary by a poll or two.
    let entries = w.wait_for_history(history + 1, Duration::from_secs(20)).await?;
    let last = entries.iter().max_by_key(|h| h.term).unwrap();
    ensure!(last.old_primary.as_deref() == Some(old.as_str()) && last.new_primary == new, "history: {last:?}");
    // The other replica follows the new primary.
    let other: Vec<&str> = replicas.iter().filter(|r| **r != new).map(String::as_str).collect();
    w.wait_healthy(&new, &other, Duration::from_secs(60)).await?;
    // The failover event on the cluster's SNS topic.
    let mut events = Vec::new();
    wait_until("the failover event on SNS", Duration::from_secs(15), || {
        if let Ok(Value::Array(got)) = w.stack.aws(&["receive", &queue]) {
            events.extend(got);
        }
        let found = events.iter().any(|e| e.to_string().contains(&new) && e.to_string().contains(&old));
        async move { found }
    })
    .await
    .with_context(|| format!("SNS messages seen: {events:?}"))?;
    w.log(format!("SNS: {events:?}"));

    // The operator brings the host back: instance started, agent restarted. Its Postgres, a
    // crashed former primary on the old timeline, rejoins by the agent's own decision (pg_rewind).
    let t = Instant::now();
    w.stack.aws(&["start", &old_instance])?;
    w.start_agent(&old, &old_instance)?;
    let followers: Vec<&str> = other.iter().copied().chain([old.as_str()]).collect();
    w.wait_healthy(&new, &followers, Duration::from_secs(90)).await.context("the old primary rejoins")?;
    let log = std::fs::read_to_string(&w.agents[&old].proc.as_ref().context("agent")?.log).unwrap_or_default();
    let how = if log.contains("pg_rewind") {
        "pg_rewind"
    } else if log.contains("basebackup") {
        "basebackup"
    } else {
        "following"
    };
    w.log(format!("{old} back as a replica of {new} ({how}) {:.1}s after its host was started", t.elapsed().as_secs_f64()));
    Ok(())
}

async fn endpoint_outage_is_safe(w: &mut World) -> Result<()> {
    const OUTAGE: Duration = Duration::from_secs(12);
    let rec = w.record().await?;
    let primary = rec.primary.clone().context("no primary")?;
    let live = w.live();
    ensure!(live.len() == NODES.len(), "expected every agent running before the outage, have {live:?}");
    let history = w.history().await?.len();
    w.log(format!("AWS endpoint away for {OUTAGE:?} (primary {primary}, live {live:?})"));
    let evaluate = w.lambda.invoke_detached(&json!({"action": "evaluate", "cluster": w.stack.cluster}));
    w.relay.stop();
    let t = Instant::now();
    let check = |w: &World| -> Result<()> {
        let writable: Vec<&String> = live.iter().filter(|n| w.writable(n)).collect();
        ensure!(writable.len() <= 1, "{writable:?} writable while the store is unreachable");
        Ok(())
    };
    let mut invoke = None;
    while t.elapsed() < OUTAGE {
        check(w)?;
        if t.elapsed() > Duration::from_secs(1) {
            // A coordinator run while it can reach neither the store nor EC2: it must act on nothing.
            invoke = Some(tokio::spawn(evaluate));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let invoke = invoke.context("the invoke was not sent")?;
    while t.elapsed() < OUTAGE {
        check(w)?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The run's answer, before the endpoint comes back (its budget is 10 s).
    let answer = tokio::time::timeout(Duration::from_secs(60), invoke).await.context("the invoke during the outage hung")??;
    w.log(format!(
        "invoke during the outage -> {} ({:.1}s into it)",
        match &answer {
            Ok(v) => v.to_string(),
            Err(e) => format!("ERROR {e:#}"),
        },
        t.elapsed().as_secs_f64()
    ));
    if let Ok(v) = &answer {
        ensure!(v["results"][0]["steps"].as_array().is_none_or(|s| s.is_empty()), "acted during the outage: {v}");
        ensure!(v["results"][0]["outcome"] != "idle", "claims a healthy cluster without a store: {v}");
    }
    // S2: the primary cannot renew, so it stops accepting writes within its lease.
    ensure!(!w.writable(&primary), "{primary} still writable {:.1}s into the outage", t.elapsed().as_secs_f64());
    w.log(format!("endpoint back after {:.1}s", t.elapsed().as_secs_f64()));
    w.relay.start().await?;
    let others: Vec<&str> = live.iter().filter(|n| **n != primary).map(String::as_str).collect();
    let t = Instant::now();
    let now_primary =
        w.wait_for_primary(&live, Duration::from_secs(60)).await.context("one lease-holding primary after the outage")?;
    let writable = live.iter().filter(|n| w.writable(n)).count();
    ensure!(writable == 1, "{writable} writable primaries after the outage");
    // The promise (docs/store-outages.md): every observer starts watching the lease afresh once
    // the store answers again, so the former primary, alive all along, re-takes its own lease
    // (same term, no failover) long before anyone could see it unchanged for a lease.
    ensure!(now_primary == primary, "{now_primary} became primary after the outage instead of {primary} re-taking its lease");
    let rec2 = w.record().await?;
    ensure!(rec2.term == rec.term, "the term moved across the outage: {} -> {}", rec.term, rec2.term);
    let entries = w.history().await?;
    ensure!(entries.len() == history, "history grew across the outage: {entries:?}");
    w.log(format!("recovered in {:.1}s: {now_primary} re-took its lease (term {})", t.elapsed().as_secs_f64(), rec2.term));
    w.wait_healthy(&now_primary, &others, Duration::from_secs(60)).await?;
    // Nothing was fenced or failed over late either.
    ensure!(w.history().await?.len() == history && w.record().await?.term == rec.term, "a failover followed the outage");
    for a in w.agents.values() {
        ensure!(w.stack.instance_state(&a.instance_id)? == "running", "{} was stopped across the outage", a.instance_id);
    }
    Ok(())
}

async fn untagged_instance_is_not_fenced(w: &mut World) -> Result<()> {
    let untagged = w.stack.aws(&["run-untagged"])?.as_str().context("instance id")?.to_string();
    let rec = w.record().await?;
    let primary = rec.primary.clone().context("no primary")?;
    let history = w.history().await?.len();
    let replicas: Vec<String> = w.live().into_iter().filter(|n| *n != primary).collect();
    ensure!(!replicas.is_empty(), "no live replica left");
    // The primary's agent now reports an instance outside the cluster (a wrong or forged member
    // record). The agent crashes and comes back (kill -9: a clean stop would demote and release
    // the lease); Postgres keeps running and the new agent re-takes its own lease.
    w.log(format!("{primary}'s agent killed and restarted on untagged instance {untagged}"));
    if let Some(p) = w.agents.get_mut(&primary).and_then(|a| a.proc.as_mut()) {
        p.kill9();
    }
    w.start_agent(&primary, &untagged)?;
    {
        let (world, primary, untagged) = (&*w, &primary, &untagged);
        wait_until("the primary's heartbeat names the untagged instance", Duration::from_secs(30), move || async move {
            world
                .view()
                .await
                .is_ok_and(|v| v.members.get(primary).and_then(|m| m.instance_id.clone()).as_deref() == Some(untagged.as_str()))
        })
        .await?;
    }
    w.wait_healthy(&primary, &replicas.iter().map(String::as_str).collect::<Vec<_>>(), Duration::from_secs(30)).await?;
    if let Some(p) = w.agents.get_mut(&primary).and_then(|a| a.proc.as_mut()) {
        p.kill9();
    }
    w.pg.kill9(&primary)?;
    // No scheduled event: the replicas' fast path starts the coordinator once the lease runs out.
    // Its refusal is in the run's answer, which the agents' async invoke does not keep: read it in
    // the function's log. (An explicit invoke here would queue behind the fast-path runs in the
    // emulator, which runs one invocation at a time where AWS runs them side by side.)
    let t = Instant::now();
    let refusal = format!("instance {untagged} has no {} tag", w.stack.tag_key);
    let mut log = String::new();
    while t.elapsed() < Duration::from_secs(45) {
        for r in &replicas {
            ensure!(!w.writable(r), "{r} was promoted although its old primary could not be fenced");
        }
        log = std::fs::read_to_string(&w.lambda.bootstrap.log).unwrap_or_default();
        if log.lines().any(|l| l.contains("coordinator run") && l.contains(&refusal)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let run = log.lines().rfind(|l| l.contains("coordinator run") && l.contains(&refusal));
    let run = run.with_context(|| format!("no coordinator run refused {untagged} within 45 s"))?;
    w.log(format!("refused {:.1}s after the kill: {}", t.elapsed().as_secs_f64(), run.chars().take(400).collect::<String>()));
    // One more fast-path round (a lease duration) must not change the answer.
    tokio::time::sleep(Duration::from_millis(pgdaemon_testkit::short_timings().lease_ms)).await;
    let state = w.stack.instance_state(&untagged)?;
    ensure!(state == "running", "the untagged instance was touched: {state}");
    for r in &replicas {
        ensure!(!w.writable(r), "{r} was promoted although its old primary could not be fenced");
    }
    let rec2 = w.record().await?;
    ensure!(rec2.primary.as_deref() == Some(primary.as_str()) || rec2.primary.is_none(), "a new primary was named: {rec2:?}");
    ensure!(w.history().await?.len() == history, "history grew");
    ensure!(log.contains(&untagged), "the coordinator log does not name the refused instance");
    Ok(())
}
