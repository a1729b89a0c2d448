//! Synchronous mode through the agent runtime (decision + execution) over the in-memory store and
//! a Postgres double (a mock of our own `PgControl` trait): the order of the two writes, and that
//! a lost race on the cluster record skips the Postgres change that had to follow it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pgdaemon_core::agent::{AgentIdentity, AgentRuntime, TickReport};
use pgdaemon_core::pg::{DataDirState, PgControl, PgError, PgProbe, PrimaryTarget, ReplicationRow, StopMode, SyncStandbys};
use pgdaemon_core::{
    ClusterRecord, DynamicConfig, Lsn, ManualClock, MemberStatus, MemoryStore, Role, Store, SyncMode, SyncState,
};

const CLUSTER: &str = "c1";

/// A running primary whose `pg_stat_replication` rows the test sets. `ensure_slots` can be made to
/// bump the cluster record (a coordinator writing it between the agent's read and its write).
struct FakePrimary {
    probe: Mutex<PgProbe>,
    calls: Mutex<Vec<String>>,
    bump_on_slots: Mutex<Option<Arc<MemoryStore>>>,
}

impl FakePrimary {
    fn new() -> Self {
        FakePrimary {
            probe: Mutex::new(PgProbe {
                running: true,
                role: Role::Primary,
                data: DataDirState::Primary,
                timeline: 1,
                write_lsn: Some(Lsn(0x5000)),
                flush_lsn: Some(Lsn(0x5000)),
                sync_standby_names: Some(String::new()),
                slots: vec!["n2".into(), "n3".into()],
                ..Default::default()
            }),
            calls: Mutex::new(vec![]),
            bump_on_slots: Mutex::new(None),
        }
    }
    fn rows(&self, rows: &[(&str, &str, u64)]) {
        self.probe.lock().unwrap().replication = rows
            .iter()
            .map(|(n, s, f)| ReplicationRow {
                application_name: n.to_string(),
                state: "streaming".into(),
                sync_state: s.to_string(),
                flush_lsn: Some(Lsn(*f)),
                replay_lsn: Some(Lsn(*f)),
            })
            .collect();
    }
    fn setting(&self) -> String {
        self.probe.lock().unwrap().sync_standby_names.clone().unwrap()
    }
    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

#[async_trait]
impl PgControl for FakePrimary {
    async fn probe(&self) -> PgProbe {
        self.probe.lock().unwrap().clone()
    }
    async fn start(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn stop(&self, _mode: StopMode) -> Result<(), PgError> {
        Ok(())
    }
    async fn promote(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn demote(&self) -> Result<(), PgError> {
        self.calls.lock().unwrap().push("demote".into());
        Ok(())
    }
    async fn follow(&self, _primary: &PrimaryTarget) -> Result<(), PgError> {
        Err(PgError::WrongState("primary".into()))
    }
    async fn rewind(&self, _source: &PrimaryTarget) -> Result<(), PgError> {
        Err(PgError::WrongState("primary".into()))
    }
    async fn basebackup(&self, _source: &PrimaryTarget) -> Result<(), PgError> {
        Err(PgError::WrongState("primary".into()))
    }
    async fn initialize(
        &self,
        _budget: std::time::Duration,
        _restore: Option<&pgdaemon_core::backup::RestoreSource>,
    ) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn initialized(&self) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn drop_slots(&self, _slots: &[String]) -> Result<(), PgError> {
        Err(PgError::WrongState("not in this test".into()))
    }
    async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError> {
        self.calls.lock().unwrap().push("ensure_slots".into());
        self.probe.lock().unwrap().slots = members.iter().map(|m| pgdaemon_core::pg::slot_name(m)).collect();
        let store = self.bump_on_slots.lock().unwrap().take();
        if let Some(store) = store {
            let rec = store.read_cluster(CLUSTER).await.unwrap().unwrap();
            store.write_cluster(CLUSTER, Some(rec.version), &rec).await.unwrap();
        }
        Ok(())
    }
    async fn set_sync_standbys(&self, names: &SyncStandbys) -> Result<(), PgError> {
        self.calls.lock().unwrap().push(format!("set '{}'", names.to_setting()));
        self.probe.lock().unwrap().sync_standby_names = Some(names.to_setting());
        Ok(())
    }
}

fn config() -> DynamicConfig {
    DynamicConfig {
        lease_ms: 4000,
        renew_interval_ms: 1000,
        safety_margin_ms: 1500,
        probe_interval_ms: 500,
        synchronous_mode: SyncMode::On,
        synchronous_node_count: 1,
        ..Default::default()
    }
}

async fn replica_heartbeat(store: &MemoryStore, name: &str) {
    let mut m = MemberStatus::new(name);
    m.role = Role::Replica;
    m.pg_running = true;
    m.streaming = true;
    store.put_member(CLUSTER, &m).await.unwrap();
}

/// What a loop did beyond the periodic lease renewal and heartbeat (each due once a renew interval).
fn changes(r: &TickReport) -> Vec<&'static str> {
    r.done().into_iter().filter(|a| !matches!(*a, "renew_lease" | "publish_heartbeat")).collect()
}

async fn recorded(store: &MemoryStore) -> Option<SyncState> {
    store.read_cluster(CLUSTER).await.unwrap().unwrap().sync
}

#[tokio::test]
async fn the_primary_lists_then_records_and_records_then_unlists() {
    let store = Arc::new(MemoryStore::new());
    store.write_cluster(CLUSTER, None, &ClusterRecord::bootstrap("n1", config())).await.unwrap();
    replica_heartbeat(&store, "n2").await;
    replica_heartbeat(&store, "n3").await;
    let clock = ManualClock::new(1_000_000);
    let identity = AgentIdentity {
        cluster: CLUSTER.into(),
        member: "n1".into(),
        pg_host: "127.0.0.1".into(),
        pg_port: 5001,
        ..Default::default()
    };
    let pg = Arc::new(FakePrimary::new());
    let mut rt = AgentRuntime::new(store.clone(), pg.clone(), clock.clone(), identity, config());
    macro_rules! tick {
        () => {{
            clock.advance(std::time::Duration::from_millis(500));
            rt.tick()
        }};
    }

    // No standby streams yet: mode `on` records "degraded" first; the list is already empty.
    let r = tick!().await;
    assert!(r.did("record_sync"), "{}", r.reason);
    assert_eq!(recorded(&store).await, Some(SyncState { term: 1, members: vec![], degraded: true }));

    // n2 streams: listed first, recorded only once it confirmed up to the primary's flush position.
    pg.rows(&[("n2", "async", 0x5000)]);
    let r = tick!().await;
    assert_eq!(changes(&r), vec!["set_sync_standbys"], "{}", r.reason);
    assert_eq!(pg.setting(), r#"ANY 1 ("n2")"#);
    assert!(recorded(&store).await.unwrap().degraded, "not recorded before it confirmed");
    pg.rows(&[("n2", "quorum", 0x4f00)]);
    assert!(!tick!().await.did("record_sync"), "behind the primary's flush position");
    pg.rows(&[("n2", "quorum", 0x5000)]);
    assert!(tick!().await.did("record_sync"));
    assert_eq!(recorded(&store).await, Some(SyncState { term: 1, members: vec!["n2".into()], degraded: false }));
    pg.take_calls();

    // n2 goes away, n3 streams. A coordinator writes the record between the agent's read and its
    // write: the record write loses, so the Postgres change after it must not happen.
    pg.rows(&[("n3", "async", 0x5000)]);
    pg.probe.lock().unwrap().slots = vec![];
    *pg.bump_on_slots.lock().unwrap() = Some(store.clone());
    let r = tick!().await;
    let failed: Vec<_> = r.outcomes.iter().filter(|o| o.error.is_some()).map(|o| o.action.name()).collect();
    assert_eq!(failed, vec!["record_sync", "set_sync_standbys"], "{r:?}");
    assert_eq!(pg.take_calls(), vec!["ensure_slots"]);
    assert_eq!(pg.setting(), r#"ANY 1 ("n2")"#, "the list still names the recorded standby");
    assert_eq!(recorded(&store).await.unwrap().members, vec!["n2".to_string()]);

    // Next loop: record first (n2 out), then the list.
    let r = tick!().await;
    assert_eq!(changes(&r), vec!["record_sync", "set_sync_standbys"], "{}", r.reason);
    assert_eq!(recorded(&store).await, Some(SyncState { term: 1, members: vec![], degraded: false }));
    assert_eq!(pg.setting(), r#"ANY 1 ("n3")"#);
    pg.rows(&[("n3", "quorum", 0x5000)]);
    assert!(tick!().await.did("record_sync"));
    assert_eq!(recorded(&store).await.unwrap().members, vec!["n3".to_string()]);
}
