//! The HTTP API over a fake agent (a mock of our own `AgentApi` trait) and a manual clock: every
//! status code of every path, served on a real loopback socket and called with a real client.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_agent::http::{router, AgentApi, ApiState};
use pgdaemon_agent::metrics::LoopStats;
use pgdaemon_core::agent::{AgentSnapshot, DemoteError};
use pgdaemon_core::pg::{PgError, PgProbe, ReplicationRow};
use pgdaemon_core::{
    ClusterRecord, ClusterView, DynamicConfig, HistoryEntry, LeaderLease, Lsn, ManualClock, MemberStatus, Role, StoreError,
    TransitionKind,
};
use serde_json::Value;

const SEC: fn(u64) -> Duration = Duration::from_secs;

#[derive(Default)]
struct Fake {
    snapshot: Mutex<AgentSnapshot>,
    view: Mutex<Option<ClusterView>>,
    history: Vec<HistoryEntry>,
    demote_fails: Mutex<bool>,
    demotions: Mutex<Vec<(u64, String)>>,
    /// What `demote_with_position` reports after a successful demotion.
    final_lsn: Mutex<Option<Lsn>>,
}

#[async_trait]
impl AgentApi for Fake {
    fn snapshot(&self) -> AgentSnapshot {
        self.snapshot.lock().unwrap().clone()
    }
    async fn demote(&self, term: u64, reason: &str) -> Result<(), DemoteError> {
        self.demotions.lock().unwrap().push((term, reason.to_string()));
        if *self.demote_fails.lock().unwrap() {
            return Err(DemoteError::Pg(PgError::Timeout("pg_ctl stop".into())));
        }
        let mut s = self.snapshot.lock().unwrap();
        s.role = Role::Unknown;
        s.pg_running = false;
        s.fenced_through = term;
        Ok(())
    }
    async fn demote_with_position(&self, term: u64, reason: &str) -> Result<Option<Lsn>, DemoteError> {
        self.demote(term, reason).await?;
        Ok(*self.final_lsn.lock().unwrap())
    }
    async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        self.view.lock().unwrap().clone().ok_or_else(|| StoreError::Unavailable("etcd is down".into()))
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(self.history.clone())
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
    fake: Arc<Fake>,
    clock: ManualClock,
    stats: Arc<LoopStats>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Api {
    async fn start(snapshot: AgentSnapshot) -> Api {
        let fake = Arc::new(Fake { snapshot: Mutex::new(snapshot), history: history(), ..Default::default() });
        *fake.view.lock().unwrap() = Some(view());
        let clock = ManualClock::new(1_700_000_000_000);
        clock.advance(SEC(100));
        let stats = Arc::new(LoopStats::new(SEC(100)));
        stats.record_tick(SEC(100), Duration::from_millis(4));
        let state = ApiState { api: fake.clone(), clock: Arc::new(clock.clone()), stats: stats.clone(), version: "0.1.0".into() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, router(state)).await.unwrap();
        });
        // reqwest has no process-wide rustls provider: every client is given its TLS configuration.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(pgdaemon_dcs::tls::client_config(None, None).unwrap())
            .build()
            .unwrap();
        Api { base, http, fake, clock, stats, server }
    }

    async fn status(&self, path: &str) -> u16 {
        self.http.get(format!("{}{path}", self.base)).send().await.unwrap().status().as_u16()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    async fn method(&self, method: reqwest::Method, path: &str) -> u16 {
        self.http.request(method, format!("{}{path}", self.base)).send().await.unwrap().status().as_u16()
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self.http.post(format!("{}{path}", self.base)).body(body.to_string()).send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or(Value::Null))
    }

    /// The coordinator bumped the cluster record to `term` (the agent's last view still shows the
    /// old one): what a real fence request finds, as `/demote` accepts only the record's term.
    fn bump_store_term(&self, term: u64) {
        self.fake.view.lock().unwrap().as_mut().unwrap().cluster.as_mut().unwrap().term = term;
    }

    fn update(&self, f: impl FnOnce(&mut AgentSnapshot)) {
        f(&mut self.fake.snapshot.lock().unwrap());
    }
}

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

fn member(name: &str, role: Role, write: Option<&str>, receive: Option<&str>) -> MemberStatus {
    let mut m = MemberStatus::new(name);
    m.role = role;
    m.pg_running = true;
    m.timeline = 3;
    m.write_lsn = write.map(lsn);
    m.receive_lsn = receive.map(lsn);
    m.replay_lsn = receive.map(lsn);
    m.streaming = role == Role::Replica;
    m.pg_host = format!("10.0.0.{}", &name[1..]);
    m.pg_port = 5432;
    m.api_url = format!("http://10.0.0.{}:8008", &name[1..]);
    m
}

/// n1 primary at 0/5000 holding the lease in term 3; n2 a streaming replica at 0/4F9C (100 B behind).
fn view() -> ClusterView {
    let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
    record.term = 3;
    let mut v = ClusterView {
        cluster: Some(record),
        leader: Some(LeaderLease { owner: "n1".into(), term: 3, rvn: "r".into(), lease_ms: 10_000, released: false }),
        ..Default::default()
    };
    v.members.insert("n1".into(), member("n1", Role::Primary, Some("0/5000"), None));
    v.members.insert("n2".into(), member("n2", Role::Replica, None, Some("0/4F9C")));
    v
}

fn history() -> Vec<HistoryEntry> {
    vec![HistoryEntry {
        term: 2,
        kind: TransitionKind::Failover,
        old_primary: Some("n0".into()),
        new_primary: "n1".into(),
        lsn: Some(lsn("0/3000")),
        reason: "primary n0 lost its lease".into(),
        started_ms: 1_569_257_870_000,
        finished_ms: 1_569_257_877_000,
        step_ms: Default::default(),
        coordinator_version: None,
    }]
}

/// n1 as primary holding the term-3 lease, valid until t = 108 s on the agent clock.
fn primary_snapshot() -> AgentSnapshot {
    AgentSnapshot {
        cluster: "c1".into(),
        member: "n1".into(),
        role: Role::Primary,
        pg_running: true,
        holds_lease: true,
        lease_term: Some(3),
        lease_valid_until: Some(SEC(108)),
        term: 3,
        last_probe: Some(PgProbe {
            running: true,
            role: Role::Primary,
            timeline: 3,
            write_lsn: Some(lsn("0/5000")),
            replication: vec![ReplicationRow {
                application_name: "n2".into(),
                state: "streaming".into(),
                sync_state: "async".into(),
                flush_lsn: None,
                replay_lsn: None,
            }],
            ..Default::default()
        }),
        last_view: Some(view()),
        config: DynamicConfig::default(),
        ..Default::default()
    }
}

/// n2 as a streaming replica, 100 bytes behind n1's published position.
fn replica_snapshot() -> AgentSnapshot {
    AgentSnapshot {
        cluster: "c1".into(),
        member: "n2".into(),
        role: Role::Replica,
        pg_running: true,
        term: 3,
        last_probe: Some(PgProbe {
            running: true,
            role: Role::Replica,
            timeline: 3,
            receive_lsn: Some(lsn("0/4F9C")),
            replay_lsn: Some(lsn("0/4F00")),
            replay_age: Some(Duration::from_millis(250)),
            streaming: true,
            ..Default::default()
        }),
        last_view: Some(view()),
        config: DynamicConfig::default(),
        ..Default::default()
    }
}

const PRIMARY_PATHS: [&str; 4] = ["/", "/primary", "/read-write", "/master"];

#[tokio::test]
async fn primary_with_a_valid_lease() {
    let api = Api::start(primary_snapshot()).await;
    for path in PRIMARY_PATHS.iter().chain(&["/leader", "/read-only", "/health", "/readiness", "/liveness", "/patroni"]) {
        assert_eq!(api.status(path).await, 200, "{path}");
    }
    assert_eq!(api.status("/replica").await, 503);
    assert_eq!(api.status("/replica?lag=1GB").await, 503);
    // Load balancers probe with OPTIONS (HAProxy's Patroni example) or HEAD: same answers.
    assert_eq!(api.method(reqwest::Method::OPTIONS, "/primary").await, 200);
    assert_eq!(api.method(reqwest::Method::HEAD, "/primary").await, 200);
    assert_eq!(api.method(reqwest::Method::OPTIONS, "/replica").await, 503);
    assert_eq!(api.method(reqwest::Method::HEAD, "/replica").await, 503);

    let (_, doc) = api.get("/primary").await;
    assert_eq!(doc["role"], "primary");
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["timeline"], 3);
    assert_eq!(doc["xlog"]["location"], 0x5000);
    assert_eq!(doc["replication"][0]["application_name"], "n2");
    assert_eq!(doc["patroni"]["scope"], "c1");
    assert_eq!(doc["patroni"]["name"], "n1");
    assert_eq!(doc["pgdaemon"]["lease"]["held"], true);
    assert_eq!(doc["pgdaemon"]["lease"]["valid_for_ms"], 8000);
    assert!(doc.get("cluster_unlocked").is_none());
}

#[tokio::test]
async fn primary_stops_answering_200_when_its_lease_runs_out_by_its_own_clock() {
    let api = Api::start(primary_snapshot()).await;
    api.clock.advance(Duration::from_millis(7_999));
    assert_eq!(api.status("/primary").await, 200);
    // The loop stalled (no new snapshot): the lease is no longer valid by the agent's clock.
    api.clock.advance(Duration::from_millis(1));
    for path in PRIMARY_PATHS.iter().chain(&["/leader", "/read-only", "/readiness"]) {
        assert_eq!(api.status(path).await, 503, "{path}");
    }
    assert_eq!(api.status("/health").await, 200, "postgres itself is still up");
    let (_, doc) = api.get("/primary").await;
    assert_eq!(doc["pgdaemon"]["lease"]["held"], false);
}

#[tokio::test]
async fn primary_answers_503_from_the_moment_a_demotion_for_its_term_begins() {
    let api = Api::start(primary_snapshot()).await;
    // Postgres still runs and the lease is still valid: only the fence has arrived.
    api.update(|s| s.fenced_through = 2);
    assert_eq!(api.status("/primary").await, 200, "a fence for an older term changes nothing");
    api.update(|s| s.fenced_through = 3);
    for path in PRIMARY_PATHS {
        assert_eq!(api.status(path).await, 503, "{path}");
    }
}

#[tokio::test]
async fn writable_postgres_without_the_lease_is_not_primary() {
    let api = Api::start(primary_snapshot()).await;
    api.update(|s| {
        s.holds_lease = false;
        s.lease_valid_until = None;
    });
    for path in PRIMARY_PATHS.iter().chain(&["/leader", "/read-only", "/readiness", "/replica"]) {
        assert_eq!(api.status(path).await, 503, "{path}");
    }
    // Holding the lease while Postgres is a replica: /leader only (Patroni: the lock, whatever the role).
    api.update(|s| {
        s.holds_lease = true;
        s.lease_valid_until = Some(SEC(108));
        s.role = Role::Replica;
    });
    assert_eq!(api.status("/leader").await, 200);
    assert_eq!(api.status("/primary").await, 503);
}

#[tokio::test]
async fn streaming_replica_with_lag_bounds() {
    let api = Api::start(replica_snapshot()).await;
    for path in ["/replica", "/read-only", "/health", "/readiness", "/liveness"] {
        assert_eq!(api.status(path).await, 200, "{path}");
    }
    for path in PRIMARY_PATHS.iter().chain(&["/leader"]) {
        assert_eq!(api.status(path).await, 503, "{path}");
    }
    // 100 bytes behind n1's published write position.
    for (q, code) in [("100", 200), ("99", 503), ("1kB", 200), ("10MB", 200), ("0", 503), ("1.5kB", 200)] {
        assert_eq!(api.status(&format!("/replica?lag={q}")).await, code, "lag={q}");
        assert_eq!(api.status(&format!("/read-only?lag={q}")).await, code, "read-only lag={q}");
        assert_eq!(api.status(&format!("/readiness?lag={q}")).await, code, "readiness lag={q}");
    }
    // Patroni's tag filters and other parameters are ignored, not errors.
    assert_eq!(api.status("/replica?lag=1MB&tag_zone=a").await, 200);
    let (code, doc) = api.get("/replica?lag=10mb").await;
    assert_eq!(code, 400);
    assert!(doc["error"].as_str().unwrap().contains("10mb"));
    let (_, doc) = api.get("/replica").await;
    assert_eq!(doc["role"], "replica");
    assert_eq!(doc["xlog"]["received_location"], 0x4F9C);
    assert_eq!(doc["xlog"]["replayed_location"], 0x4F00);
    assert_eq!(doc["pgdaemon"]["lag_bytes"], 100);
    assert_eq!(doc["pgdaemon"]["lag_seconds"], 0.25);
}

#[tokio::test]
async fn replica_that_does_not_stream_or_has_unknown_lag() {
    let api = Api::start(replica_snapshot()).await;
    api.update(|s| s.last_probe.as_mut().unwrap().streaming = false);
    for path in ["/replica", "/read-only", "/readiness"] {
        assert_eq!(api.status(path).await, 503, "{path}");
    }
    assert_eq!(api.status("/health").await, 200);
    // Streaming but the primary's position is unknown: no lag bound can be met.
    api.update(|s| {
        s.last_probe.as_mut().unwrap().streaming = true;
        s.last_view = None;
    });
    assert_eq!(api.status("/replica").await, 200);
    assert_eq!(api.status("/replica?lag=1GB").await, 503);
}

#[tokio::test]
async fn postgres_down() {
    let mut snap = replica_snapshot();
    snap.role = Role::Unknown;
    snap.pg_running = false;
    snap.last_probe = Some(PgProbe { error: Some("connection refused".into()), ..Default::default() });
    let api = Api::start(snap).await;
    for path in PRIMARY_PATHS.iter().chain(&["/leader", "/replica", "/read-only", "/health", "/readiness"]) {
        assert_eq!(api.status(path).await, 503, "{path}");
    }
    assert_eq!(api.status("/liveness").await, 200, "the agent itself still loops");
    let (code, doc) = api.get("/health").await;
    assert_eq!(code, 503);
    assert_eq!(doc["state"], "stopped");
    assert_eq!(doc["pgdaemon"]["pg_error"], "connection refused");
}

#[tokio::test]
async fn liveness_follows_the_loop() {
    let api = Api::start(replica_snapshot()).await;
    assert_eq!(api.status("/liveness").await, 200);
    // A replica may be silent for 2 x lease (20 s), a primary for one lease (Patroni's rule).
    api.clock.advance(SEC(20));
    assert_eq!(api.status("/liveness").await, 200);
    api.clock.advance(SEC(1));
    let (code, doc) = api.get("/liveness").await;
    assert_eq!(code, 503);
    assert_eq!(doc["loop_idle_ms"], 21_000);
    api.stats.record_tick(SEC(121), Duration::from_millis(2));
    assert_eq!(api.status("/liveness").await, 200);
    api.update(|s| s.role = Role::Primary);
    api.clock.advance(SEC(11));
    assert_eq!(api.status("/liveness").await, 503);
}

#[tokio::test]
async fn cluster_history_and_metrics() {
    let api = Api::start(replica_snapshot()).await;
    let (code, doc) = api.get("/cluster").await;
    assert_eq!(code, 200);
    assert_eq!(doc["scope"], "c1");
    assert_eq!(doc["term"], 3);
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["name"], "n1");
    assert_eq!(members[0]["role"], "leader");
    assert_eq!(members[0]["state"], "running");
    assert_eq!(members[0]["host"], "10.0.0.1");
    assert_eq!(members[0]["port"], 5432);
    assert_eq!(members[1]["role"], "replica");
    assert_eq!(members[1]["state"], "streaming");
    assert_eq!(members[1]["lag"], 100);
    assert_eq!(members[1]["lsn"], "0/4F9C");
    assert_eq!(members[1]["api_url"], "http://10.0.0.2:8008");

    let (code, doc) = api.get("/history").await;
    assert_eq!(code, 200);
    assert_eq!(doc, serde_json::json!([[2, 0x3000, "primary n0 lost its lease", "2019-09-23T16:57:57+00:00", "n1"]]));

    let resp = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("pgdaemon_replica{scope=\"c1\",name=\"n2\"} 1\n"), "{text}");
    assert!(text.contains("pgdaemon_replication_lag_bytes{scope=\"c1\",name=\"n2\"} 100\n"));
    assert!(text.contains("pgdaemon_replication_lag_seconds{scope=\"c1\",name=\"n2\"} 0.25\n"));
    assert!(text.contains("pgdaemon_postgres_running{scope=\"c1\",name=\"n2\"} 1\n"));

    // Store down: /cluster says so with 503.
    *api.fake.view.lock().unwrap() = None;
    let (code, doc) = api.get("/cluster").await;
    assert_eq!(code, 503);
    assert!(doc["error"].as_str().unwrap().contains("etcd is down"));
}

#[tokio::test]
async fn demote_confirms_only_after_postgres_stopped_accepting_writes() {
    let api = Api::start(primary_snapshot()).await;
    api.bump_store_term(4);
    let (code, doc) = api.post("/demote", r#"{"term": 4, "reason": "failover to n2"}"#).await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["demoted"], true);
    assert_eq!(doc["term"], 4);
    assert_eq!(doc["member"], "n1");
    assert_eq!(doc["fenced_through"], 4);
    assert!(doc.get("lsn").is_none(), "no final position known: no lsn field: {doc}");
    assert_eq!(*api.fake.demotions.lock().unwrap(), vec![(4, "failover to n2".to_string())]);
}

#[tokio::test]
async fn demote_reports_the_final_wal_position_when_known() {
    let api = Api::start(primary_snapshot()).await;
    *api.fake.final_lsn.lock().unwrap() = Some("1A/3025A70".parse().unwrap());
    api.bump_store_term(5);
    let (code, doc) = api.post("/demote", r#"{"term": 5}"#).await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["demoted"], true);
    assert_eq!(doc["term"], 5);
    assert_eq!(doc["lsn"], "1A/3025A70");
    // The coordinator's fencer reads it back as the same position.
    assert_eq!(doc["lsn"].as_str().unwrap().parse::<Lsn>().unwrap(), Lsn(0x1A_0302_5A70));
}

#[tokio::test]
async fn demote_rejects_malformed_bodies_and_changes_nothing() {
    let api = Api::start(primary_snapshot()).await;
    for body in
        ["", "not json", "{}", r#"{"term": "4"}"#, r#"{"term": -1}"#, r#"{"term": 0}"#, r#"{"term": 4, "force": true}"#, "[4]"]
    {
        let (code, doc) = api.post("/demote", body).await;
        assert_eq!(code, 400, "{body:?}: {doc}");
        assert!(doc["error"].as_str().is_some_and(|e| !e.is_empty()), "{body:?}");
    }
    let long = format!(r#"{{"term": 4, "reason": "{}"}}"#, "x".repeat(2000));
    assert_eq!(api.post("/demote", &long).await.0, 400);
    assert!(api.fake.demotions.lock().unwrap().is_empty(), "nothing may have been demoted");
    assert_eq!(api.status("/primary").await, 200);
    assert_eq!(api.method(reqwest::Method::GET, "/demote").await, 405);
}

#[tokio::test]
async fn failed_demotion_is_not_reported_as_fenced() {
    let api = Api::start(primary_snapshot()).await;
    *api.fake.demote_fails.lock().unwrap() = true;
    api.bump_store_term(4);
    let (code, doc) = api.post("/demote", r#"{"term": 4}"#).await;
    assert_eq!(code, 503);
    assert_eq!(doc["demoted"], false);
    assert!(doc["error"].as_str().unwrap().contains("timed out"));
    assert_eq!(api.fake.demotions.lock().unwrap()[0].1, "demotion requested over HTTP");
}
