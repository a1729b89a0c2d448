//! The agent runtime against real PostgreSQL 15 servers on loopback and the in-memory store.
//!
//! Each test builds its own cluster (`testkit::postgres::PgCluster`), runs one agent per node in
//! its own task (ticking every probe interval, as the agent's main loop does) and plays the
//! coordinator by writing the cluster record. Timings are short (lease 4 s) and every wait is
//! bounded.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg_settings;
use pgdaemon_agent::postgres::LocalPostgres;
use pgdaemon_core::agent::{AgentHandle, AgentIdentity, AgentRuntime, AgentSnapshot};
use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaseName, MemoryStore, Role, Store, SystemClock};
use pgdaemon_testkit::postgres::{postgres_available, PgCluster, PgNode};

fn config() -> DynamicConfig {
    pgdaemon_testkit::short_timings()
}

fn cluster_name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// One agent ticking in its own task.
struct RunningAgent {
    name: String,
    handle: AgentHandle,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    fn snap(&self) -> AgentSnapshot {
        self.handle.snapshot()
    }

    fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in [self.task.take(), self.watchdog.take()].into_iter().flatten() {
            t.abort();
        }
    }
}

fn spawn_agent<S: Store + 'static>(pg: &PgCluster, node: &PgNode, store: S, cluster: &str) -> RunningAgent {
    let identity = AgentIdentity {
        cluster: cluster.into(),
        member: node.name.clone(),
        pg_host: "127.0.0.1".into(),
        pg_port: node.port,
        api_url: format!("http://127.0.0.1:0/{}", node.name),
        agent_version: "test".into(),
        ..Default::default()
    };
    let mut rt = AgentRuntime::new(store, LocalPostgres::new(pg_settings(pg, node)), SystemClock::new(), identity, config());
    let handle = rt.handle();
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (p, s, name) = (paused.clone(), stop.clone(), node.name.clone());
    let task = tokio::spawn(async move {
        let mut last_reason = String::new();
        while !s.load(Ordering::SeqCst) {
            if !p.load(Ordering::SeqCst) {
                let report = rt.tick().await;
                if report.reason != last_reason || !report.errors.is_empty() {
                    eprintln!("[{name}] {} | done {:?} | errors {:?}", report.reason, report.done(), report.errors);
                    last_reason = report.reason.clone();
                }
            }
            tokio::time::sleep(rt.interval()).await;
        }
    });
    // The lease watchdog runs beside the loop, as in the agent binary.
    let (h, p, s, name) = (handle.clone(), paused.clone(), stop.clone(), node.name.clone());
    let watchdog = tokio::spawn(async move {
        while !s.load(Ordering::SeqCst) {
            // A paused agent models a hung process: its watchdog is paused too.
            let result = if p.load(Ordering::SeqCst) { Ok(false) } else { h.enforce_lease_deadline().await };
            match result {
                Ok(true) => eprintln!("[{name}] watchdog demoted: lease deadline passed while the loop was stuck"),
                Ok(false) => {}
                Err(e) => eprintln!("[{name}] watchdog demotion failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    RunningAgent { name: node.name.clone(), handle, paused, stop, task: Some(task), watchdog: Some(watchdog) }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_streaming_from(agent: &RunningAgent, port: u16) -> bool {
    let s = agent.snap();
    s.last_probe.as_ref().is_some_and(|p| {
        p.is_replica()
            && p.streaming
            && p.upstream.as_ref().is_some_and(|u| u.port == Some(port) && u.slot.as_deref() == Some(agent.name.as_str()))
    })
}

fn is_lease_holding_primary(agent: &RunningAgent, term: u64) -> bool {
    let s = agent.snap();
    s.role == Role::Primary && s.lease_term == Some(term)
}

async fn bootstrap_record(store: &MemoryStore, cluster: &str, primary: &str) {
    store.write_cluster(cluster, None, &ClusterRecord::bootstrap(primary, config())).await.unwrap();
}

/// The coordinator's part of a failover, after fencing: bump the term and name `primary`.
async fn designate(store: &MemoryStore, cluster: &str, primary: &str) -> u64 {
    let rec = store.read_cluster(cluster).await.unwrap().unwrap();
    let next = ClusterRecord { term: rec.term + 1, primary: Some(primary.into()), ..rec.clone() };
    store.write_cluster(cluster, Some(rec.version), &next).await.unwrap().term
}

macro_rules! require_postgres {
    () => {
        if !postgres_available() {
            eprintln!("skipped: PostgreSQL binaries not found (set PGDAEMON_PG_BIN)");
            return;
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reflect_real_lsns_and_lag() {
    require_postgres!();
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let n2 = pg.add_replica("n2", "n1").unwrap();
    let store = Arc::new(MemoryStore::new());
    let cluster = cluster_name("hb");
    bootstrap_record(&store, &cluster, "n1").await;
    let a1 = spawn_agent(&pg, &n1, store.clone(), &cluster);
    let a2 = spawn_agent(&pg, &n2, store.clone(), &cluster);

    wait_until("n1 primary with the lease, n2 streaming through its slot", Duration::from_secs(20), || {
        is_lease_holding_primary(&a1, 1) && is_streaming_from(&a2, n1.port)
    })
    .await;

    pg.sql("n1", "CREATE TABLE t (v text); INSERT INTO t SELECT 'row' || g FROM generate_series(1, 5000) g").unwrap();
    let written: pgdaemon_core::Lsn = pg.sql("n1", "SELECT pg_current_wal_lsn()").unwrap().parse().unwrap();
    let seq_before = store.read_view(&cluster).await.unwrap().members["n2"].seq;

    let deadline = Instant::now() + Duration::from_secs(15);
    let (m1, m2) = loop {
        let view = store.read_view(&cluster).await.unwrap();
        let (m1, m2) = (view.members["n1"].clone(), view.members["n2"].clone());
        if m1.write_lsn.is_some_and(|l| l >= written) && m2.replay_lsn.is_some_and(|l| l >= written) && m2.lag_bytes.is_some() {
            break (m1, m2);
        }
        assert!(Instant::now() < deadline, "replay never reached {written}: n1 {m1:?} n2 {m2:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m1.role, Role::Primary);
    assert_eq!(m2.role, Role::Replica);
    assert!(m2.streaming);
    assert!(m2.seq > seq_before, "seq must increase");
    assert_eq!(m2.term, 1);
    assert!(m1.timeline >= 1 && m2.timeline == m1.timeline);
    assert!(m2.receive_lsn.unwrap() >= m2.replay_lsn.unwrap());
    assert_eq!(m2.pg_port, n2.port);
    // The primary's probe sees n2 in pg_stat_replication with its application_name.
    let probe = a1.snap().last_probe.unwrap();
    assert!(probe.replication.iter().any(|r| r.application_name == "n2"), "{:?}", probe.replication);
    assert!(probe.slots.contains(&"n2".to_string()));
    drop((a1, a2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_demotes_itself_when_the_store_is_unreachable() {
    require_postgres!();
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let store = Arc::new(MemoryStore::new());
    let cluster = cluster_name("outage");
    bootstrap_record(&store, &cluster, "n1").await;
    let a1 = spawn_agent(&pg, &n1, store.clone(), &cluster);
    wait_until("n1 holds the lease", Duration::from_secs(15), || is_lease_holding_primary(&a1, 1)).await;
    pg.sql("n1", "CREATE TABLE t (v int); INSERT INTO t VALUES (1)").unwrap();

    let outage = Instant::now();
    store.set_available(false);
    wait_until("n1 stops accepting writes", Duration::from_secs(10), || pg.pid("n1").is_none()).await;
    let took = outage.elapsed();
    let lease = Duration::from_millis(config().lease_ms);
    eprintln!("demoted {took:?} after the store became unreachable (lease {lease:?})");
    assert!(took < lease, "demotion took {took:?}, longer than the lease {lease:?}");
    assert!(pg.try_sql("n1", "INSERT INTO t VALUES (2)").is_err(), "a write succeeded after the demotion");
    // The snapshot is published at the end of the loop that demoted.
    wait_until("the snapshot shows the lease gone", Duration::from_secs(5), || !a1.snap().holds_lease).await;
    let snap = a1.snap();
    assert!(snap.counters.lease_renew_failures > 0);
    assert!(snap.last_reason.contains("store unavailable"), "{}", snap.last_reason);

    // Still demoted a while later: without the store it must not come back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(pg.pid("n1").is_none());
    drop(a1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demote_now_stops_writes_and_refuses_the_lease() {
    require_postgres!();
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let store = Arc::new(MemoryStore::new());
    let cluster = cluster_name("fence");
    bootstrap_record(&store, &cluster, "n1").await;
    let a1 = spawn_agent(&pg, &n1, store.clone(), &cluster);
    wait_until("n1 holds the lease", Duration::from_secs(15), || is_lease_holding_primary(&a1, 1)).await;

    a1.handle.demote_now(1, "test fencer").await.unwrap();
    assert!(pg.pid("n1").is_none(), "postgres still runs after demote_now returned");
    assert!(pg.try_sql("n1", "SELECT 1").is_err());
    // The next loop releases the lease, and the agent never takes term 1 again.
    wait_until("the lease is released", Duration::from_secs(5), || !a1.snap().holds_lease).await;
    let lease = store.read_lease(&cluster, LeaseName::Leader).await.unwrap().unwrap();
    assert!(lease.released, "{lease:?}");
    // A fixed window in which the fenced member must not start Postgres again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(pg.pid("n1").is_none(), "a fenced member started postgres again");
    assert_eq!(a1.snap().fenced_through, 1);
    drop(a1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_on_instruction_repoint_and_rewind_of_the_old_primary() {
    require_postgres!();
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let n2 = pg.add_replica("n2", "n1").unwrap();
    let n3 = pg.add_replica("n3", "n1").unwrap();
    let store = Arc::new(MemoryStore::new());
    let cluster = cluster_name("failover");
    bootstrap_record(&store, &cluster, "n1").await;
    let a1 = spawn_agent(&pg, &n1, store.clone(), &cluster);
    let a2 = spawn_agent(&pg, &n2, store.clone(), &cluster);
    let a3 = spawn_agent(&pg, &n3, store.clone(), &cluster);
    wait_until("n1 primary, n2 and n3 streaming from it through their slots", Duration::from_secs(30), || {
        is_lease_holding_primary(&a1, 1) && is_streaming_from(&a2, n1.port) && is_streaming_from(&a3, n1.port)
    })
    .await;
    pg.sql("n1", "CREATE TABLE t (v text); INSERT INTO t VALUES ('before')").unwrap();
    wait_until("'before' replicated", Duration::from_secs(10), || {
        ["n2", "n3"].iter().all(|n| pg.try_sql(n, "SELECT count(*) FROM t").as_deref() == Ok("1"))
    })
    .await;

    // n1's agent hangs and its Postgres crashes; the coordinator names n2 for term 2.
    a1.pause(true);
    pg.kill9("n1").unwrap();
    let n3_pid = pg.pid("n3").unwrap();
    let term = designate(&store, &cluster, "n2").await;
    assert_eq!(term, 2);
    let started = Instant::now();
    wait_until("n2 acquires the lease for term 2 and promotes", Duration::from_secs(20), || is_lease_holding_primary(&a2, 2))
        .await;
    eprintln!("n2 promoted {:?} after being named (lease expiry observed first)", started.elapsed());
    pg.sql("n2", "INSERT INTO t VALUES ('after')").expect("writes succeed on the new primary");

    wait_until("n3 re-points to n2", Duration::from_secs(20), || is_streaming_from(&a3, n2.port)).await;
    assert_eq!(pg.pid("n3"), Some(n3_pid), "n3 was restarted to re-point");
    wait_until("'after' reaches n3", Duration::from_secs(10), || {
        pg.try_sql("n3", "SELECT count(*) FROM t WHERE v = 'after'").as_deref() == Ok("1")
    })
    .await;

    // n1 comes back on its own (say, the host rebooted) while its agent still hangs: a stale
    // primary on timeline 1 takes writes that nobody else gets.
    pg.start("n1").unwrap();
    pg.sql("n1", "INSERT INTO t SELECT 'divergent' FROM generate_series(1, 100)").unwrap();
    assert_eq!(pg.sql("n1", "SELECT count(*) FROM t WHERE v = 'divergent'").unwrap(), "100");

    // The agent wakes up: its lease ran out long ago, so it demotes, then rewinds onto n2.
    a1.pause(false);
    wait_until("n1 rejoins as a replica of n2", Duration::from_secs(40), || is_streaming_from(&a1, n2.port)).await;
    assert_eq!(pg.sql("n1", "SELECT pg_is_in_recovery()").unwrap(), "t");
    assert_eq!(pg.sql("n1", "SELECT count(*) FROM t WHERE v = 'divergent'").unwrap(), "0", "divergent rows survived the rewind");
    pg.sql("n2", "INSERT INTO t VALUES ('later')").unwrap();
    wait_until("n1 replays n2's new writes", Duration::from_secs(10), || {
        pg.try_sql("n1", "SELECT count(*) FROM t WHERE v = 'later'").as_deref() == Ok("1")
    })
    .await;
    // pg_rewind copied n2's configuration; n1 must still run on its own port with its own name.
    let apps =
        pg.sql("n2", "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication").unwrap();
    assert_eq!(apps, "n1,n3");
    let snap = a1.snap();
    assert!(snap.counters.demotions >= 1);
    drop((a1, a2, a3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_node_bootstraps_as_a_replica() {
    require_postgres!();
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    pg.sql("n1", "CREATE TABLE t (v text); INSERT INTO t VALUES ('seed')").unwrap();
    let n4 = pg.add_empty("n4").unwrap();
    let store = Arc::new(MemoryStore::new());
    let cluster = cluster_name("bootstrap");
    bootstrap_record(&store, &cluster, "n1").await;
    let a1 = spawn_agent(&pg, &n1, store.clone(), &cluster);
    let a4 = spawn_agent(&pg, &n4, store.clone(), &cluster);
    wait_until("n4 bootstraps and streams from n1", Duration::from_secs(40), || is_streaming_from(&a4, n1.port)).await;
    assert_eq!(pg.sql("n4", "SELECT v FROM t").unwrap(), "seed");
    assert_eq!(pg.sql("n4", "SELECT pg_is_in_recovery()").unwrap(), "t");
    assert_eq!(pg.sql("n4", "SHOW port").unwrap(), n4.port.to_string());
    drop((a1, a4));
}

/// The same self-fencing against a real etcd that stops answering (SIGSTOP: connections stay
/// open, calls hang until the client's timeout, longer than the lease here): the watchdog demotes
/// while the loop is stuck in a store call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_demotes_itself_when_etcd_hangs() {
    require_postgres!();
    let etcd = pgdaemon_testkit::engines::EtcdServer::start().unwrap();
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let cluster = cluster_name("etcd-hang");
    let store = Arc::new(pgdaemon_dcs::EtcdStore::connect(&[etcd.endpoint()], "/pgdaemon-test").await.unwrap());
    store.write_cluster(&cluster, None, &ClusterRecord::bootstrap("n1", config())).await.unwrap();
    let a1 = spawn_agent(&pg, &n1, store.clone(), &cluster);
    wait_until("n1 holds the lease in etcd", Duration::from_secs(15), || is_lease_holding_primary(&a1, 1)).await;
    pg.sql("n1", "CREATE TABLE t (v int)").unwrap();

    let frozen = Instant::now();
    etcd.freeze();
    wait_until("n1 stops accepting writes", Duration::from_secs(10), || pg.pid("n1").is_none()).await;
    let took = frozen.elapsed();
    etcd.thaw();
    let lease = Duration::from_millis(config().lease_ms);
    eprintln!("demoted {took:?} after etcd froze (lease {lease:?})");
    assert!(took < lease, "demotion took {took:?}, longer than the lease {lease:?}");
    assert!(pg.try_sql("n1", "INSERT INTO t VALUES (1)").is_err());
    drop(a1);
}
