//! Issue 15: who may change a node through its HTTP API. Served with `serve_with` on a real
//! loopback socket over a fake agent; every refusal is checked to have changed nothing (no
//! demotion, `fenced_through` unchanged, still primary, no failsafe promise).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use pgdaemon_agent::api_security::{ApiSecurity, ServerLimits};
use pgdaemon_agent::http::{serve_with, AgentApi, ApiState};
use pgdaemon_agent::metrics::LoopStats;
use pgdaemon_core::agent::{AgentSnapshot, DemoteError, FailsafeReply, FailsafeRequest, MaintenanceError};
use pgdaemon_core::{ClusterRecord, ClusterView, DynamicConfig, HistoryEntry, MemberStatus, Role, StoreError, SystemClock};
use serde_json::Value;

struct Fake {
    snapshot: Mutex<AgentSnapshot>,
    /// The record's term in the store (`Err`: the store cannot be read).
    store_term: Mutex<Result<u64, String>>,
    demotions: Mutex<Vec<u64>>,
    failsafe_calls: Mutex<u32>,
    wakes: Mutex<u32>,
    /// Maintenance calls that reached the agent (`restart`, `reload`, `drop-slot <member>`).
    maintenance: Mutex<Vec<String>>,
}

#[async_trait]
impl AgentApi for Fake {
    fn snapshot(&self) -> AgentSnapshot {
        self.snapshot.lock().unwrap().clone()
    }
    async fn demote(&self, term: u64, _reason: &str) -> Result<(), DemoteError> {
        self.demotions.lock().unwrap().push(term);
        let mut s = self.snapshot.lock().unwrap();
        s.role = Role::Unknown;
        s.pg_running = false;
        s.fenced_through = s.fenced_through.max(term);
        Ok(())
    }
    async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        Ok(self.snapshot().last_view.unwrap_or_default())
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(Vec::new())
    }
    async fn current_term(&self) -> Result<u64, StoreError> {
        self.store_term.lock().unwrap().clone().map_err(StoreError::Unavailable)
    }
    fn failsafe(&self, req: &FailsafeRequest) -> FailsafeReply {
        *self.failsafe_calls.lock().unwrap() += 1;
        FailsafeReply { member: "n1".into(), ack: true, valid_ms: req.valid_ms, term: req.term, reason: "ok".into() }
    }
    fn wake(&self) {
        *self.wakes.lock().unwrap() += 1;
    }
    async fn restart(&self, primary: bool) -> Result<(), MaintenanceError> {
        self.maintenance.lock().unwrap().push(if primary { "restart primary" } else { "restart" }.into());
        Err(MaintenanceError::Refused("this member is primary".into()))
    }
    async fn reload(&self) -> Result<(), MaintenanceError> {
        self.maintenance.lock().unwrap().push("reload".into());
        Ok(())
    }
    async fn drop_member_slot(&self, member: &str) -> Result<(), MaintenanceError> {
        self.maintenance.lock().unwrap().push(format!("drop-slot {member}"));
        Ok(())
    }
}

/// n1, primary in term 3 (record term 3 in its last view; n2's API on `n2_api`).
fn snapshot(n2_api: &str) -> AgentSnapshot {
    let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
    record.term = 3;
    let mut view = ClusterView { cluster: Some(record), ..Default::default() };
    let mut n2 = MemberStatus::new("n2");
    n2.role = Role::Replica;
    n2.api_url = n2_api.to_string();
    view.members.insert("n2".into(), n2);
    AgentSnapshot {
        cluster: "c1".into(),
        member: "n1".into(),
        role: Role::Primary,
        pg_running: true,
        term: 3,
        last_view: Some(view),
        ..Default::default()
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
    fake: Arc<Fake>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Api {
    async fn start(security: ApiSecurity) -> Api {
        Self::start_with(security, snapshot("http://10.9.9.9:8008"), ServerLimits::default()).await
    }

    async fn start_with(security: ApiSecurity, snap: AgentSnapshot, limits: ServerLimits) -> Api {
        let fake = Arc::new(Fake {
            snapshot: Mutex::new(snap),
            store_term: Mutex::new(Ok(3)),
            demotions: Mutex::new(Vec::new()),
            failsafe_calls: Mutex::new(0),
            wakes: Mutex::new(0),
            maintenance: Mutex::new(Vec::new()),
        });
        let clock = SystemClock::new();
        let state = ApiState {
            api: fake.clone(),
            clock: Arc::new(clock.clone()),
            stats: Arc::new(LoopStats::new(pgdaemon_core::Clock::monotonic(&clock))),
            version: "test".into(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(listener, state, security, limits, async move {
            let _ = stopped.await;
        }));
        // reqwest has no process-wide rustls provider: every client is given its TLS configuration.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(pgdaemon_dcs::tls::client_config(None, None).unwrap())
            .build()
            .unwrap();
        Api { base, http, fake, _stop: stop }
    }

    async fn post(&self, path: &str, body: &str, auth: Option<&str>) -> (u16, Value, Option<String>) {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body.to_string());
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
        (code, resp.json().await.unwrap_or(Value::Null), challenge)
    }

    async fn get(&self, path: &str, auth: Option<&str>) -> u16 {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// Nothing changed: no demotion, no fence, still primary, no failsafe promise.
    fn assert_unchanged(&self) {
        assert!(self.fake.demotions.lock().unwrap().is_empty(), "nothing may have been demoted");
        let s = self.fake.snapshot();
        assert_eq!(s.fenced_through, 0);
        assert!(s.pg_running && s.role == Role::Primary);
        assert_eq!(*self.fake.failsafe_calls.lock().unwrap(), 0, "nothing may have been promised");
        assert_eq!(*self.fake.wakes.lock().unwrap(), 0, "the loop may not have been woken");
        assert!(self.fake.maintenance.lock().unwrap().is_empty(), "no restart, reload or slot drop");
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

const FAILSAFE: &str = r#"{"cluster":"c1","leader":"n2","term":3,"valid_ms":10000}"#;
const DEMOTE: &str = r#"{"term":3,"reason":"test"}"#;
const MAX_TERM: &str = r#"{"term":18446744073709551615}"#;

fn secured() -> ApiSecurity {
    ApiSecurity::disabled().with_basic("patroni", "s3cret").with_token("t0ken")
}

#[tokio::test]
async fn state_changing_requests_without_or_with_wrong_credentials_get_401_and_change_nothing() {
    let api = Api::start(secured()).await;
    for (path, body) in [
        ("/demote", DEMOTE),
        ("/demote", MAX_TERM),
        ("/failsafe", FAILSAFE),
        ("/wake", "{}"),
        ("/wake", ""),
        ("/restart", ""),
        ("/reload", "{}"),
        ("/drop-slot", r#"{"member":"n3"}"#),
        ("/backup", ""),
        ("/switch-wal", ""),
    ] {
        for auth in [
            None,
            Some(basic("patroni", "wrong")),
            Some(basic("root", "s3cret")),
            Some("Bearer nope".into()),
            Some("s3cret".into()),
        ] {
            let (code, doc, challenge) = api.post(path, body, auth.as_deref()).await;
            assert_eq!(code, 401, "{path} {auth:?}: {doc}");
            assert!(challenge.is_some_and(|c| c.starts_with("Basic realm=")), "{path}: 401 needs WWW-Authenticate");
            assert!(doc["error"].is_string());
        }
    }
    api.assert_unchanged();
    // The backup list names what the bucket holds: credentials too.
    assert_eq!(api.get("/backups", None).await, 401);
    assert_eq!(api.get("/backups?cluster=main", Some("Bearer nope")).await, 401);
    // Health checks stay open (protect_reads = false).
    assert_eq!(api.get("/health", None).await, 200);
    assert_eq!(api.get("/patroni", None).await, 200);
}

#[tokio::test]
async fn no_credentials_configured_means_state_changing_requests_are_refused() {
    let api = Api::start(ApiSecurity::disabled()).await;
    for (path, body) in [("/demote", DEMOTE), ("/failsafe", FAILSAFE), ("/wake", "{}"), ("/restart", ""), ("/reload", "")] {
        let (code, doc, _) = api.post(path, body, Some(&basic("any", "thing"))).await;
        assert_eq!(code, 403, "{path}: {doc}");
        assert!(doc["error"].as_str().unwrap().contains("insecure = true"), "{doc}");
    }
    api.assert_unchanged();
}

#[tokio::test]
async fn peers_outside_the_allowlist_get_403_even_with_credentials() {
    let api = Api::start(secured().with_allowlist(&["10.0.0.0/16"]).unwrap()).await;
    for (path, body) in
        [("/demote", DEMOTE), ("/failsafe", FAILSAFE), ("/wake", "{}"), ("/reload", ""), ("/drop-slot", r#"{"member":"n3"}"#)]
    {
        let (code, doc, _) = api.post(path, body, Some("Bearer t0ken")).await;
        assert_eq!(code, 403, "{path}: {doc}");
        assert!(doc["error"].as_str().unwrap().contains("allowlist"), "{doc}");
    }
    api.assert_unchanged();

    // The members' API hosts from the last view are allowed with allowlist_include_members.
    let mut sec = secured().with_allowlist(&["10.0.0.0/16"]).unwrap();
    sec.include_members = true;
    let api = Api::start_with(sec, snapshot("http://127.0.0.1:8008"), ServerLimits::default()).await;
    let (code, doc, _) = api.post("/failsafe", FAILSAFE, Some("Bearer t0ken")).await;
    assert_eq!(code, 200, "{doc}");
    // ... and still need credentials.
    let (code, _, _) = api.post("/demote", DEMOTE, None).await;
    assert_eq!(code, 401);
    assert!(api.fake.demotions.lock().unwrap().is_empty());
    let (code, _, _) = api.post("/wake", "", None).await;
    assert_eq!(code, 401);
    assert_eq!(*api.fake.wakes.lock().unwrap(), 0);
    let (code, doc, _) = api.post("/wake", "", Some("Bearer t0ken")).await;
    assert_eq!((code, &doc["woken"]), (202, &Value::Bool(true)), "{doc}");
    assert_eq!(*api.fake.wakes.lock().unwrap(), 1);
}

#[tokio::test]
async fn maintenance_requests_are_checked_before_they_reach_the_agent() {
    let api = Api::start(secured()).await;
    let auth = Some("Bearer t0ken");
    // Malformed bodies, an unknown field, a bad member name, a member that still beats (n2 is
    // in the view): nothing reaches the agent.
    for (path, body, code) in [
        ("/restart", r#"{"in_place": true}"#, 400),
        ("/restart", r#"{"primary_in_place": "yes"}"#, 400),
        ("/reload", "[]", 400),
        ("/drop-slot", "{}", 400),
        ("/drop-slot", r#"{"member":"../x"}"#, 400),
        ("/drop-slot", r#"{"member":"n3","force":true}"#, 400),
        ("/drop-slot", r#"{"member":"n2"}"#, 409),
        ("/backup", "[]", 400),
        ("/backup", r#"{"now": true}"#, 400),
        ("/switch-wal", r#"{"x": 1}"#, 400),
        // This agent has no [archive]: refused, nothing started.
        ("/backup", "", 409),
        ("/switch-wal", "{}", 409),
    ] {
        let (got, doc, _) = api.post(path, body, auth).await;
        assert_eq!(got, code, "{path} {body}: {doc}");
        assert!(doc["error"].is_string(), "{doc}");
    }
    assert_eq!(api.get("/backups?cluster=../x", auth).await, 400);
    assert_eq!(api.get("/backups?bucket=x", auth).await, 400);
    assert_eq!(api.get("/backups", auth).await, 409);
    api.assert_unchanged();
    // Accepted ones reach it; a refusal in the agent's state is a 409 saying nothing changed.
    let (code, doc, _) = api.post("/restart", "", auth).await;
    assert!(code == 409 && doc["error"].as_str().unwrap().contains("nothing was changed"), "{doc}");
    assert_eq!(api.post("/restart", r#"{"primary_in_place": true}"#, auth).await.0, 409);
    assert_eq!(api.post("/reload", "", auth).await.0, 200);
    let (code, doc, _) = api.post("/drop-slot", r#"{"member":"n3"}"#, auth).await;
    assert!(code == 200 && doc["dropped"] == true, "{doc}");
    assert_eq!(*api.fake.maintenance.lock().unwrap(), ["restart", "restart primary", "reload", "drop-slot n3"]);
}

#[tokio::test]
async fn correct_credentials_demote_as_before() {
    for auth in [basic("patroni", "s3cret"), "Bearer t0ken".to_string(), "bearer t0ken".to_string()] {
        let api = Api::start(secured()).await;
        let (code, doc, _) = api.post("/demote", DEMOTE, Some(&auth)).await;
        assert_eq!(code, 200, "{auth}: {doc}");
        assert_eq!(doc["demoted"], true);
        assert_eq!(doc["member"], "n1");
        assert_eq!(doc["term"], 3);
        assert_eq!(doc["fenced_through"], 3);
        assert_eq!(*api.fake.demotions.lock().unwrap(), vec![3]);
        // The loop runs at once after a confirmed demotion (it releases the lease).
        assert_eq!(*api.fake.wakes.lock().unwrap(), 1);
        let (code, doc, _) = api.post("/failsafe", FAILSAFE, Some(&auth)).await;
        assert_eq!(code, 200, "{doc}");
    }
}

#[tokio::test]
async fn a_stale_or_future_term_is_refused_with_409() {
    let api = Api::start(secured()).await;
    let auth = Some("Bearer t0ken");
    // The store agrees with the view (3): 2 is stale, 4 and u64::MAX were never written.
    for body in [r#"{"term":2}"#, r#"{"term":4}"#, MAX_TERM] {
        let (code, doc, _) = api.post("/demote", body, auth).await;
        assert_eq!(code, 409, "{body}: {doc}");
        assert_eq!(doc["demoted"], false);
        assert_eq!(doc["current_term"], 3);
        assert!(doc["error"].as_str().unwrap().contains("nothing was changed"), "{doc}");
    }
    api.assert_unchanged();

    // The coordinator bumped the record to 4 and fences at once; the agent's view still says 3:
    // the fresh read of the record accepts it.
    *api.fake.store_term.lock().unwrap() = Ok(4);
    let (code, doc, _) = api.post("/demote", r#"{"term":4}"#, auth).await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["fenced_through"], 4);
}

#[tokio::test]
async fn without_the_store_only_the_next_term_is_accepted() {
    let api = Api::start(secured()).await;
    let auth = Some("Bearer t0ken");
    *api.fake.store_term.lock().unwrap() = Err("unreachable".into());
    for body in [r#"{"term":5}"#, MAX_TERM, r#"{"term":2}"#] {
        let (code, doc, _) = api.post("/demote", body, auth).await;
        assert_eq!(code, 409, "{body}: {doc}");
    }
    api.assert_unchanged();
    let (code, doc, _) = api.post("/demote", r#"{"term":4}"#, auth).await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(*api.fake.demotions.lock().unwrap(), vec![4]);
}

#[tokio::test]
async fn oversized_or_non_json_bodies_are_refused() {
    let api = Api::start(secured()).await;
    let auth = Some("Bearer t0ken");
    let huge = format!(r#"{{"term":3,"reason":"{}"}}"#, "x".repeat(8000));
    let (code, _, _) = api.post("/demote", &huge, auth).await;
    assert_eq!(code, 413);
    let (code, _, _) = api.post("/failsafe", &huge, auth).await;
    assert_eq!(code, 413);
    for body in ["not json", "[3]", r#"{"term":3,"force":true}"#, "3"] {
        let (code, doc, _) = api.post("/demote", body, auth).await;
        assert_eq!(code, 400, "{body}: {doc}");
        let (code, _, _) = api.post("/failsafe", body, auth).await;
        assert_eq!(code, 400, "{body}");
    }
    api.assert_unchanged();
}

#[tokio::test]
async fn protect_reads_puts_the_health_endpoints_behind_credentials_too() {
    let mut sec = secured();
    sec.protect_reads = true;
    let api = Api::start(sec).await;
    assert_eq!(api.get("/patroni", None).await, 401);
    assert_eq!(api.get("/patroni", Some("Bearer t0ken")).await, 200);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limits = ServerLimits { max_connections: 4, read_timeout: Duration::from_millis(300) };
    let api = Api::start_with(secured(), snapshot(""), limits).await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    sock.write_all(b"POST /demote HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server must close a connection whose headers never complete");
    api.assert_unchanged();
}
