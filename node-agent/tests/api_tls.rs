//! Issue 15: the agent API over TLS (`[api] tls_cert_file`/`tls_key_file`) and mTLS
//! (`tls_client_ca_file`), served with `serve_with` on a real loopback socket over a fake agent,
//! with certificates from a test CA (`TestPki`); and the `http` fencer against it. Every refusal
//! is checked to have changed nothing (no demotion, still primary).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_agent::api_security::{ApiConfig, ApiSecurity, ServerLimits};
use pgdaemon_agent::config::AgentConfig;
use pgdaemon_agent::http::{serve_with, AgentApi, ApiState};
use pgdaemon_agent::metrics::LoopStats;
use pgdaemon_core::agent::{AgentSnapshot, DemoteError};
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer};
use pgdaemon_core::{ClusterRecord, ClusterView, DynamicConfig, HistoryEntry, Role, StoreError, SystemClock, TransitionKind};
use pgdaemon_dcs::fence::HttpDemoteFencer;
use pgdaemon_dcs::tls::{client_config, ClientIdentity};
use pgdaemon_testkit::tls::{IssuedCert, TestPki};

/// n1, primary in term 3 (the record's term too); records the demotions asked of it.
struct Fake {
    snapshot: Mutex<AgentSnapshot>,
    demotions: Mutex<Vec<u64>>,
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
        s.fenced_through = term;
        Ok(())
    }
    async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        Ok(self.snapshot().last_view.unwrap_or_default())
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(Vec::new())
    }
}

/// A CA, the agent's certificate (127.0.0.1) and a client certificate, in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    pki: TestPki,
    node: IssuedCert,
    client: IssuedCert,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path()).unwrap();
    let node = pki.issue("n1", &["127.0.0.1"]).unwrap();
    let client = pki.issue("coordinator", &[]).unwrap();
    Pki { _dir: dir, pki, node, client }
}

/// The agent's `[api]`: TLS with `cert`, and mTLS against the test CA when `mtls`.
fn api_config(p: &Pki, cert: &IssuedCert, mtls: bool) -> ApiConfig {
    ApiConfig {
        tls_cert_file: Some(cert.cert.clone()),
        tls_key_file: Some(cert.key.clone()),
        tls_client_ca_file: mtls.then(|| p.pki.ca_file()),
        ..Default::default()
    }
}

struct Agent {
    /// `https://127.0.0.1:<port>`
    url: String,
    fake: Arc<Fake>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Agent {
    /// Serves the API with the TLS files of `cfg` read as at start ([`ApiSecurity::load`]) and a
    /// bearer token for the state-changing requests.
    async fn start(cfg: &ApiConfig, limits: ServerLimits) -> Agent {
        let security = ApiSecurity::load(cfg).await.unwrap().with_token("t0ken");
        let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        record.term = 3;
        let snapshot = AgentSnapshot {
            cluster: "c1".into(),
            member: "n1".into(),
            role: Role::Primary,
            pg_running: true,
            term: 3,
            last_view: Some(ClusterView { cluster: Some(record), ..Default::default() }),
            ..Default::default()
        };
        let fake = Arc::new(Fake { snapshot: Mutex::new(snapshot), demotions: Mutex::new(Vec::new()) });
        let clock = SystemClock::new();
        let state = ApiState {
            api: fake.clone(),
            clock: Arc::new(clock.clone()),
            stats: Arc::new(LoopStats::new(pgdaemon_core::Clock::monotonic(&clock))),
            version: "test".into(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(listener, state, security, limits, async move {
            let _ = stopped.await;
        }));
        Agent { url, fake, _stop: stop }
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// Nothing changed: no demotion, still primary.
    fn assert_unchanged(&self) {
        assert!(self.fake.demotions.lock().unwrap().is_empty(), "nothing may have been demoted");
        let s = self.fake.snapshot();
        assert!(s.pg_running && s.role == Role::Primary && s.fenced_through == 0);
    }
}

fn identity(cert: &IssuedCert) -> ClientIdentity {
    ClientIdentity { cert_file: cert.cert.clone(), key_file: cert.key.clone() }
}

/// A client trusting `ca` (none: the system's roots), presenting `cert` when asked for one.
fn client(ca: Option<&Path>, cert: Option<&IssuedCert>) -> reqwest::Client {
    let tls = client_config(ca, cert.map(identity).as_ref()).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(5)).build().unwrap()
}

const DEMOTE: &str = r#"{"term":3,"reason":"test"}"#;

async fn demote(http: &reqwest::Client, agent: &Agent, auth: Option<&str>) -> Result<u16, reqwest::Error> {
    let mut req = http.post(format!("{}/demote", agent.url)).body(DEMOTE);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    req.send().await.map(|r| r.status().as_u16())
}

/// `e` and its sources, for assertion messages.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        text = format!("{text}: {x}");
        s = x.source();
    }
    text
}

#[tokio::test]
async fn every_endpoint_is_served_over_tls_only() {
    let p = pki();
    let agent = Agent::start(&api_config(&p, &p.node, false), ServerLimits::default()).await;
    let trusted = client(Some(&p.pki.ca_file()), None);
    for path in ["/health", "/patroni", "/cluster", "/metrics"] {
        let resp = trusted.get(format!("{}{path}", agent.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(demote(&trusted, &agent, Some("Bearer t0ken")).await.unwrap(), 200);
    assert_eq!(*agent.fake.demotions.lock().unwrap(), vec![3]);

    // Plain HTTP to the TLS port: the handshake fails, no answer.
    let plain = client(None, None);
    let e = plain.get(format!("http://{}/health", agent.addr())).send().await.unwrap_err();
    assert!(!e.is_status(), "{}", chain(&e));
    // A client that does not trust the agent's CA (the system's roots) refuses it.
    let e = plain.get(format!("{}/health", agent.url)).send().await.unwrap_err();
    assert!(chain(&e).contains("certificate"), "{}", chain(&e));
}

#[tokio::test]
async fn with_mtls_a_client_without_a_trusted_certificate_fails_the_handshake_and_changes_nothing() {
    let p = pki();
    let agent = Agent::start(&api_config(&p, &p.node, true), ServerLimits::default()).await;
    let ca = p.pki.ca_file();
    let untrusted = p.pki.issue_untrusted("intruder", &[]).unwrap();
    for (who, http) in
        [("no certificate", client(Some(&ca), None)), ("untrusted certificate", client(Some(&ca), Some(&untrusted)))]
    {
        // Correct credentials do not help: the request never reaches a handler.
        let r = demote(&http, &agent, Some("Bearer t0ken")).await;
        assert!(r.is_err(), "{who}: {r:?}");
        let r = http.get(format!("{}/health", agent.url)).send().await;
        assert!(r.is_err(), "{who}: health checks need a certificate too");
    }
    agent.assert_unchanged();

    // A trusted certificate still needs the credentials, and then demotes.
    let http = client(Some(&ca), Some(&p.client));
    assert_eq!(http.get(format!("{}/health", agent.url)).send().await.unwrap().status(), 200);
    assert_eq!(demote(&http, &agent, None).await.unwrap(), 401);
    agent.assert_unchanged();
    assert_eq!(demote(&http, &agent, Some("Bearer t0ken")).await.unwrap(), 200);
    assert_eq!(*agent.fake.demotions.lock().unwrap(), vec![3]);
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_blocks_nobody_and_is_dropped() {
    use tokio::io::AsyncReadExt;
    let p = pki();
    let limits = ServerLimits { max_connections: 2, read_timeout: Duration::from_secs(2) };
    let agent = Agent::start(&api_config(&p, &p.node, false), limits).await;
    // Connected, sends nothing: holds one of the two slots, for the read timeout at most.
    let mut stalled = tokio::net::TcpStream::connect(agent.addr()).await.unwrap();
    let http = client(Some(&p.pki.ca_file()), None);
    let started = std::time::Instant::now();
    assert_eq!(http.get(format!("{}/health", agent.url)).send().await.unwrap().status(), 200);
    assert!(started.elapsed() < Duration::from_millis(1500), "served while the other handshake was pending");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(6), stalled.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the stalled connection is dropped after the read timeout: {closed:?}");
}

fn target(agent: &Agent) -> FenceTarget {
    let mut t = FenceTarget::new("c1", "n1", None, 3, TransitionKind::Failover, "test");
    t.api_url = agent.url.clone();
    t
}

#[tokio::test]
async fn the_http_fencer_fences_a_tls_agent_only_when_it_trusts_its_certificate() {
    let p = pki();
    let auth = Some(reqwest::header::HeaderValue::from_static("Bearer t0ken"));
    let ca = p.pki.ca_file();

    // mTLS agent: without a client certificate, no confirmation; with the CA and one, fenced.
    let agent = Agent::start(&api_config(&p, &p.node, true), ServerLimits::default()).await;
    let no_cert =
        HttpDemoteFencer::new(Duration::from_secs(5)).with_tls(Some(&ca), None).unwrap().with_authorization(auth.clone());
    assert!(matches!(no_cert.fence(&target(&agent), None).await, FenceStatus::Failed { .. }));
    agent.assert_unchanged();
    let fencer = HttpDemoteFencer::new(Duration::from_secs(5))
        .with_tls(Some(&ca), Some(&identity(&p.client)))
        .unwrap()
        .with_authorization(auth.clone());
    match fencer.fence(&target(&agent), None).await {
        FenceStatus::Confirmed { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(*agent.fake.demotions.lock().unwrap(), vec![3]);

    // An agent whose certificate the fencer's CA did not sign: refused before any request.
    let impostor = p.pki.issue_untrusted("n1", &["127.0.0.1"]).unwrap();
    let agent = Agent::start(&api_config(&p, &impostor, false), ServerLimits::default()).await;
    match fencer.fence(&target(&agent), None).await {
        FenceStatus::Failed { detail } => assert!(detail.contains("certificate"), "{detail}"),
        other => panic!("an untrusted agent must not count as fenced: {other:?}"),
    }
    agent.assert_unchanged();
    // Nor with the system's roots (no CA configured).
    let system = HttpDemoteFencer::new(Duration::from_secs(5)).with_authorization(auth);
    assert!(matches!(system.fence(&target(&agent), None).await, FenceStatus::Failed { .. }));
    agent.assert_unchanged();
}

#[test]
fn the_advertised_api_url_says_https_with_tls() {
    let base = "cluster = \"c1\"\n[node]\nname = \"n1\"\npg_host = \"10.0.0.1\"\nlisten = \"0.0.0.0:8443\"\n\
                [postgres]\nbin_dir = \"/usr/lib/postgresql/15/bin\"\ndata_dir = \"/var/lib/postgresql/15/main\"\n\
                [store]\nbackend = \"memory\"\n";
    assert_eq!(AgentConfig::parse(base, &[]).unwrap().advertised_api_url(), "http://10.0.0.1:8443");
    let tls = format!("{base}[api]\ntls_cert_file = \"/etc/pgdaemon/api.crt\"\ntls_key_file = \"/etc/pgdaemon/api.key\"\n");
    assert_eq!(AgentConfig::parse(&tls, &[]).unwrap().advertised_api_url(), "https://10.0.0.1:8443");
    // An explicit node.api_url is taken as written.
    let explicit = tls.replace("listen = ", "api_url = \"https://pg-1.internal:8443\"\nlisten = ");
    assert_eq!(AgentConfig::parse(&explicit, &[]).unwrap().advertised_api_url(), "https://pg-1.internal:8443");
}
