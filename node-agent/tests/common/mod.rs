//! Test support shared by the node-agent's real-Postgres tests (each test binary uses part).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgdaemon_agent::api_security::{ApiSecurity, ServerLimits};
use pgdaemon_agent::coordinator_mode::{hosted_loop, HostedTrigger};
use pgdaemon_agent::postgres::{LocalPostgres, PeerAuth, PgSettings};
use pgdaemon_agent::run::run_with_api;
use pgdaemon_agent::wake::{HostedWaker, LoopWake};
use pgdaemon_agent::watchdog::{Watchdog, WatchdogConfig};
use pgdaemon_core::agent::{AgentIdentity, AgentRuntime};
use pgdaemon_core::coordinator::{Coordinator, CoordinatorConfig};
use pgdaemon_core::fence::{FenceChain, Fencer};
use pgdaemon_core::{ClusterView, DynamicConfig, Store, SystemClock};
use pgdaemon_dcs::fence::{CommandFencer, HttpDemoteFencer};
use pgdaemon_dcs::probe::TcpProbe;
use pgdaemon_dcs::wake::HttpWaker;
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::postgres::{PgCluster, PgNode};
use tokio::runtime::Runtime;

/// How the agent drives the test cluster's node `node`: local socket-free TCP on loopback,
/// replication as `postgres`, bounded waits.
pub fn pg_settings(pg: &PgCluster, node: &PgNode) -> PgSettings {
    PgSettings {
        bin_dir: pg.bin_dir().to_path_buf(),
        connect_host: "127.0.0.1".into(),
        peers: PeerAuth { replication_user: "postgres".into(), ..Default::default() },
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

/// One "host": an agent loop + HTTP API + hosted coordinator on etcd, in a tokio runtime of its
/// own (as separate hosts would run them), so killing the host stops all of them at once and
/// nothing is released cleanly, like a crash. The coordinator wakes agents as the agent process's
/// does: its own loop directly, the others with `POST /wake`.
pub struct Host {
    rt: Option<Runtime>,
}

impl Host {
    /// `config` is the cluster's dynamic configuration (the coordinator's lock lease follows it);
    /// `version` labels the agent in its heartbeat.
    pub fn start(pg: &PgCluster, node: &PgNode, etcd: &str, cluster: &str, config: DynamicConfig, version: &str) -> Host {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let store: Arc<dyn Store> = Arc::new(rt.block_on(EtcdStore::connect(&[etcd.to_string()], "/pgdaemon")).unwrap());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let identity = AgentIdentity {
            cluster: cluster.into(),
            member: node.name.clone(),
            pg_host: "127.0.0.1".into(),
            pg_port: node.port,
            api_url: format!("http://{}", listener.local_addr().unwrap()),
            agent_version: version.into(),
            ..Default::default()
        };
        // Fencing: the old primary's agent first; if it is gone, a command that confirms its
        // Postgres no longer answers on its port (pg_isready exit 2 = no response).
        let isready = pg.bin_dir().join("pg_isready");
        let check = format!("{} -q -h 127.0.0.1 -p \"$PGDAEMON_FENCE_PG_PORT\" -t 2; test $? -eq 2", isready.display());
        let fencers: Vec<Box<dyn Fencer>> = vec![
            Box::new(HttpDemoteFencer::new(Duration::from_secs(5))),
            Box::new(CommandFencer::new(check, Duration::from_secs(5))),
        ];
        let ccfg = CoordinatorConfig { lock_lease_ms: config.lease_ms, ..CoordinatorConfig::default() };
        let coordinator = Coordinator::new(
            store.clone(),
            Arc::new(FenceChain::new(fencers)),
            SystemClock::new(),
            ccfg,
            format!("agent-{}", node.name),
        );
        let wake = LoopWake::new();
        let coordinator = coordinator
            .with_waker(Arc::new(HostedWaker::new(node.name.clone(), wake.clone(), HttpWaker::new())))
            .with_probe(Arc::new(TcpProbe::default()));
        let (trigger, rx) = HostedTrigger::new();
        rt.spawn(hosted_loop(coordinator, cluster.to_string(), rx, Duration::from_millis(500)));
        let runtime =
            AgentRuntime::new(store.clone(), LocalPostgres::new(pg_settings(pg, node)), SystemClock::new(), identity, config)
                .with_trigger(Arc::new(trigger))
                .with_agent_probe(Arc::new(TcpProbe::default()));
        rt.spawn(async move {
            let (security, limits, device) =
                (ApiSecurity::insecure(), ServerLimits::default(), Watchdog::new(WatchdogConfig::default()));
            let pending = std::future::pending::<()>();
            if let Err(e) =
                run_with_api(runtime, store, SystemClock::new(), listener, pending, device, security, limits, wake, None).await
            {
                eprintln!("agent stopped: {e:#}");
            }
        });
        Host { rt: Some(rt) }
    }

    /// The host dies: every task of the agent and its coordinator stops at once.
    pub fn kill(&mut self) {
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

/// Polls `cond` every 50 ms until it holds; fails the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every member with a heartbeat in `before` has published at least two more in `now`: a
/// coordinator reading the store about once per heartbeat (every 500 ms here) has seen each of
/// them change, so it judges them fresh rather than not yet observed (which it waits out before
/// choosing a candidate or acting on a request).
pub fn beat_twice_since(before: &ClusterView, now: &ClusterView) -> bool {
    before.members.iter().all(|(n, m)| now.members.get(n).is_some_and(|m2| m2.seq >= m.seq + 2))
}
