//! `run::run` end to end over the in-memory store and a fake Postgres (a mock of our own
//! `PgControl` trait): the loop ticks, the API answers from it, and a clean shutdown of a primary
//! demotes Postgres before it releases the lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_agent::run::{run, RunSummary};
use pgdaemon_core::agent::{AgentIdentity, AgentRuntime};
use pgdaemon_core::pg::{DataDirState, PgControl, PgError, PgProbe, PrimaryTarget, StopMode, SyncStandbys};
use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaseName, MemoryStore, Role, Store, SystemClock};

#[derive(Default)]
struct FakePg {
    /// (running, role); data directory is a primary's.
    state: Mutex<(bool, Role)>,
    calls: Mutex<Vec<&'static str>>,
}

#[async_trait]
impl PgControl for FakePg {
    async fn probe(&self) -> PgProbe {
        let (running, role) = *self.state.lock().unwrap();
        PgProbe {
            running,
            role: if running { role } else { Role::Unknown },
            data: DataDirState::Primary,
            timeline: 1,
            write_lsn: running.then(|| "0/3000".parse().unwrap()),
            ..Default::default()
        }
    }
    async fn start(&self) -> Result<(), PgError> {
        self.calls.lock().unwrap().push("start");
        self.state.lock().unwrap().0 = true;
        Ok(())
    }
    async fn stop(&self, _mode: StopMode) -> Result<(), PgError> {
        self.calls.lock().unwrap().push("stop");
        self.state.lock().unwrap().0 = false;
        Ok(())
    }
    async fn promote(&self) -> Result<(), PgError> {
        self.calls.lock().unwrap().push("promote");
        self.state.lock().unwrap().1 = Role::Primary;
        Ok(())
    }
    async fn demote(&self) -> Result<(), PgError> {
        self.calls.lock().unwrap().push("demote");
        self.state.lock().unwrap().0 = false;
        Ok(())
    }
    async fn follow(&self, _primary: &PrimaryTarget) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn rewind(&self, _source: &PrimaryTarget) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn basebackup(&self, _source: &PrimaryTarget) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn ensure_slots(&self, _members: &[String]) -> Result<(), PgError> {
        Ok(())
    }
    async fn initialize(&self, _budget: std::time::Duration) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn initialized(&self) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn drop_slots(&self, _slots: &[String]) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn set_sync_standbys(&self, _names: &SyncStandbys) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
}

/// reqwest has no process-wide rustls provider: every client is given its TLS configuration.
fn http() -> reqwest::Client {
    reqwest::Client::builder().use_preconfigured_tls(pgdaemon_dcs::tls::client_config(None, None).unwrap()).build().unwrap()
}

async fn status(base: &str, path: &str) -> u16 {
    http().get(format!("{base}{path}")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test]
async fn primary_serves_then_demotes_before_releasing_on_shutdown() {
    let dynamic = DynamicConfig {
        lease_ms: 1000,
        renew_interval_ms: 200,
        safety_margin_ms: 100,
        probe_interval_ms: 100,
        ..Default::default()
    };
    dynamic.validate().unwrap();
    let store = Arc::new(MemoryStore::new());
    store.write_cluster("c1", None, &ClusterRecord::bootstrap("n1", dynamic.clone())).await.unwrap();
    let pg = Arc::new(FakePg { state: Mutex::new((true, Role::Primary)), ..Default::default() });
    let identity = AgentIdentity {
        cluster: "c1".into(),
        member: "n1".into(),
        pg_host: "127.0.0.1".into(),
        pg_port: 5432,
        api_url: "http://127.0.0.1:1".into(),
        ..Default::default()
    };
    let clock = SystemClock::new();
    let runtime = AgentRuntime::new(store.clone(), pg.clone(), clock.clone(), identity, dynamic);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store_dyn: Arc<dyn Store> = store.clone();
    let task = tokio::spawn(run(runtime, store_dyn, clock, listener, async move {
        let _ = stopped.await;
    }));

    // Bounded wait for the lease and a 200 on /primary.
    let mut ok = false;
    for _ in 0..100 {
        if status(&base, "/primary").await == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "never became primary");
    assert_eq!(status(&base, "/liveness").await, 200);
    assert_eq!(status(&base, "/replica").await, 503);
    let lease = store.read_lease("c1", LeaseName::Leader).await.unwrap().unwrap();
    assert_eq!((lease.owner.as_str(), lease.term, lease.released), ("n1", 1, false));
    let history = http().get(format!("{base}/cluster")).send().await.unwrap().text().await.unwrap();
    assert!(history.contains("\"leader\""), "{history}");

    stop.send(()).unwrap();
    let summary: RunSummary = tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
    assert!(summary.demoted_on_exit);
    assert!(summary.ticks >= 1);
    // Postgres stopped accepting writes, and only then was the lease handed back.
    assert!(!pg.state.lock().unwrap().0, "postgres still running");
    assert!(pg.calls.lock().unwrap().contains(&"demote"));
    let lease = store.read_lease("c1", LeaseName::Leader).await.unwrap().unwrap();
    assert!(lease.released, "lease not released: {lease:?}");
    assert_eq!(status(&base, "/primary").await, 0, "the API stopped with the agent");
}
