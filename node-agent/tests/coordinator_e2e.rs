//! End to end: three real PostgreSQL 15 servers, three agents (each in its own tokio runtime,
//! with its HTTP API and an agent-hosted coordinator, as separate hosts would run them), real
//! etcd. The primary's postmaster is killed with SIGKILL and its agent stopped; a replica must be
//! promoted, take writes, the other replica must follow it and history must record it.
//!
//! Prints the time from the kill to the first successful write on the new primary. Runs once by
//! default; `PGDAEMON_E2E_RUNS=5` repeats it (fresh cluster each time) and prints the median.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdaemon_agent::coordinator_mode::{hosted_loop, HostedTrigger};
use pgdaemon_agent::postgres::{LocalPostgres, PgSettings, ReplicationAuth};
use pgdaemon_agent::run::run;
use pgdaemon_core::agent::{AgentIdentity, AgentRuntime};
use pgdaemon_core::coordinator::{Coordinator, CoordinatorConfig};
use pgdaemon_core::fence::{FenceChain, Fencer};
use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaseName, Role, Store, SystemClock, TransitionKind};
use pgdaemon_dcs::fence::{CommandFencer, HttpDemoteFencer};
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::engines::EtcdServer;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster, PgNode};
use tokio::runtime::Runtime;

fn config() -> DynamicConfig {
    let c = DynamicConfig { lease_ms: 4000, renew_interval_ms: 1000, safety_margin_ms: 1500, probe_interval_ms: 500, ..Default::default() };
    c.validate().unwrap();
    c
}

fn settings(pg: &PgCluster, node: &PgNode) -> PgSettings {
    PgSettings {
        bin_dir: pg.bin_dir().to_path_buf(),
        connect_host: "127.0.0.1".into(),
        replication: ReplicationAuth { user: "postgres".into(), password: None },
        run_as: pg.run_as().map(str::to_string),
        server_options: pg.server_options(),
        log_file: Some(node.log_file.clone()),
        start_timeout: Duration::from_secs(30),
        stop_timeout: Duration::from_secs(10),
        promote_timeout: Duration::from_secs(10),
        copy_timeout: Duration::from_secs(60),
        ..PgSettings::new(&node.name, &node.data_dir, node.port)
    }
}

/// One "host": an agent loop + HTTP API + hosted coordinator in a runtime of its own, so
/// stopping the host stops all of them at once (nothing is released cleanly, like a crash).
struct Host {
    rt: Option<Runtime>,
}

impl Host {
    fn start(pg: &PgCluster, node: &PgNode, etcd: &str, cluster: &str) -> Host {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store: Arc<dyn Store> = Arc::new(rt.block_on(EtcdStore::connect(&[etcd.to_string()], "/pgdaemon")).unwrap());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        let identity = AgentIdentity {
            cluster: cluster.into(),
            member: node.name.clone(),
            pg_host: "127.0.0.1".into(),
            pg_port: node.port,
            api_url,
            agent_version: "e2e".into(),
            ..Default::default()
        };
        // Fencing: the old primary's agent first; if it is gone, a command that confirms its
        // Postgres no longer answers on its port (pg_isready exit 2 = no response).
        let isready = pg.bin_dir().join("pg_isready");
        let check = format!("{} -q -h 127.0.0.1 -p \"$PGDAEMON_FENCE_PG_PORT\" -t 2; test $? -eq 2", isready.display());
        let fencers: Vec<Box<dyn Fencer>> =
            vec![Box::new(HttpDemoteFencer::new(Duration::from_secs(5))), Box::new(CommandFencer::new(check, Duration::from_secs(5)))];
        let ccfg = CoordinatorConfig { lock_lease_ms: config().lease_ms, ..CoordinatorConfig::default() };
        let coordinator = Coordinator::new(store.clone(), Arc::new(FenceChain::new(fencers)), SystemClock::new(), ccfg, format!("agent-{}", node.name));
        let (trigger, rx) = HostedTrigger::new();
        rt.spawn(hosted_loop(coordinator, cluster.to_string(), rx, Duration::from_millis(500)));
        let runtime = AgentRuntime::new(store.clone(), LocalPostgres::new(settings(pg, node)), SystemClock::new(), identity, config())
            .with_trigger(Arc::new(trigger));
        rt.spawn(async move {
            if let Err(e) = run(runtime, store, SystemClock::new(), listener, std::future::pending::<()>()).await {
                eprintln!("agent stopped: {e:#}");
            }
        });
        Host { rt: Some(rt) }
    }

    /// The host dies: every task of the agent and its coordinator stops at once.
    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn one_failover(etcd: &EtcdServer, run: usize) -> Duration {
    let cluster = format!("e2e-{}-{run}", std::process::id());
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let n2 = pg.add_replica("n2", "n1").unwrap();
    let n3 = pg.add_replica("n3", "n1").unwrap();
    let main = Runtime::new().unwrap();
    let store = main.block_on(EtcdStore::connect(&[etcd.endpoint()], "/pgdaemon")).unwrap();
    main.block_on(store.write_cluster(&cluster, None, &ClusterRecord::bootstrap("n1", config()))).unwrap();
    let mut hosts: Vec<Host> = [&n1, &n2, &n3].iter().map(|n| Host::start(&pg, n, &etcd.endpoint(), &cluster)).collect();

    let view = |store: &EtcdStore| main.block_on(store.read_view(&cluster)).unwrap();
    wait_until("n1 holds the lease; n2 and n3 stream from it", Duration::from_secs(60), || {
        let v = view(&store);
        v.leader.as_ref().is_some_and(|l| l.owner == "n1" && l.term == 1 && !l.released)
            && ["n2", "n3"].iter().all(|n| v.members.get(*n).is_some_and(|m| m.role == Role::Replica && m.streaming))
            && v.coordinator.as_ref().is_some_and(|c| !c.released)
    });
    pg.sql("n1", "CREATE TABLE t (v text); INSERT INTO t SELECT 'before' FROM generate_series(1, 1000)").unwrap();
    wait_until("'before' replicated to n2 and n3", Duration::from_secs(20), || {
        ["n2", "n3"].iter().all(|n| pg.try_sql(n, "SELECT count(*) FROM t").as_deref() == Ok("1000"))
    });
    // Let every coordinator see the heartbeats beat (fresh candidates) before the crash.
    std::thread::sleep(Duration::from_secs(3));
    let lock_holder = view(&store).coordinator.map(|c| c.owner).unwrap_or_default();

    // The primary's host dies: agent (and its coordinator) gone, postmaster killed with SIGKILL.
    hosts[0].kill();
    let killed = Instant::now();
    pg.kill9("n1").unwrap();
    let mut new_primary = None;
    let deadline = killed + Duration::from_secs(90);
    while new_primary.is_none() {
        for n in ["n2", "n3"] {
            if pg.try_sql(n, "INSERT INTO t VALUES ('after')").is_ok() {
                new_primary = Some(n);
                break;
            }
        }
        assert!(Instant::now() < deadline, "no replica took writes within 90 s: {:#?}", view(&store));
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = killed.elapsed();
    let new_primary = new_primary.unwrap();
    let other = if new_primary == "n2" { "n3" } else { "n2" };
    eprintln!("run {run}: kill -> first write on {new_primary}: {took:?} (coordinator lock was held by {lock_holder})");

    // The coordinator finishes: history, record, lease.
    wait_until("the failover is recorded in history", Duration::from_secs(30), || {
        main.block_on(store.read_history(&cluster)).unwrap().iter().any(|h| h.term >= 2)
    });
    let history = main.block_on(store.read_history(&cluster)).unwrap();
    let h = history.iter().find(|h| h.term >= 2).unwrap();
    assert_eq!((h.kind, h.old_primary.as_deref(), h.new_primary.as_str()), (TransitionKind::Failover, Some("n1"), new_primary));
    assert!(h.lsn.is_some(), "{h:#?}");
    assert!(h.reason.contains("fenced: command"), "fenced by the command fencer after the HTTP one failed: {h:#?}");
    eprintln!("history: {h:?}");
    wait_until("record settled", Duration::from_secs(10), || {
        let r = main.block_on(store.read_cluster(&cluster)).unwrap().unwrap();
        r.transition.is_none() && r.primary.as_deref() == Some(new_primary)
    });
    let lease = main.block_on(store.read_lease(&cluster, LeaseName::Leader)).unwrap().unwrap();
    assert_eq!(lease.owner, new_primary);

    // The other replica follows the new primary and receives its writes.
    let new_port = pg.node(new_primary).port;
    wait_until(&format!("{other} streams from {new_primary}"), Duration::from_secs(30), || {
        pg.try_sql(other, "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'").as_deref() == Ok(new_port.to_string().as_str())
    });
    pg.sql(new_primary, "INSERT INTO t VALUES ('later')").unwrap();
    wait_until(&format!("'later' reaches {other}"), Duration::from_secs(15), || {
        pg.try_sql(other, "SELECT count(*) FROM t WHERE v IN ('after', 'later')").as_deref() == Ok("2")
    });
    assert!(pg.pid("n1").is_none(), "the old primary must still be down");
    drop(hosts);
    drop(main);
    took
}

#[test]
fn kill_primary_hosted_coordinator_on_etcd_promotes_a_replica() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found");
        return;
    }
    let runs: usize = std::env::var("PGDAEMON_E2E_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 20);
    let etcd = EtcdServer::start().expect("etcd");
    let mut times: Vec<Duration> = (0..runs).map(|i| one_failover(&etcd, i)).collect();
    times.sort();
    eprintln!("kill -> first write over {runs} run(s): {times:?}; median {:?}", times[runs / 2]);
}
