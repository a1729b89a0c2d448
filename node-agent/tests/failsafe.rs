//! Failsafe mode end to end (issue 9): three real PostgreSQL 15 servers, three real
//! `pgdaemon-agent` processes (each hosting a coordinator with fencing off, so only the agents'
//! own rules keep the cluster safe), on real etcd or moto's DynamoDB. Each node has its own
//! loopback address (127.0.0.1N) for its Postgres and HTTP API.
//!
//! - A store outage shorter and longer than the lease with every node healthy: the primary keeps
//!   running (same postmaster, writable at every sample), no failover (same term). With failsafe
//!   mode turned off the same outage demotes it (the test can fail).
//! - A partitioned primary (iptables on `lo`: its agent can reach neither the store nor its peers)
//!   still demotes within the lease.
//! - A primary cut off from the store only: its peers keep acknowledging it until the coordinator
//!   (which still reaches the store) starts a failover; then they refuse, it demotes, and only
//!   then is a replica promoted.
//!
//! A sampler writes to every node every ~100 ms throughout and the tests assert that no two
//! nodes ever accepted a write in the same sample.
//!
//! The partitions match the agent process by its cgroup (v2 `-m cgroup --path`; each agent is
//! started inside a cgroup of its own): on one machine every loopback connection has the source
//! address 127.0.0.1, so only the process identifies the partitioned node's outgoing traffic.
//! Rules are removed by exact spec in a Drop guard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgdaemon_core::{ClusterRecord, ClusterView, DynamicConfig, Store, StoreConfig};
use pgdaemon_testkit::engines::{EtcdServer, MotoServer};
use pgdaemon_testkit::ports::free_port;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster};

const NODES: [&str; 3] = ["pg-1", "pg-2", "pg-3"];
const LEASE_MS: u64 = 4000;

fn dynamic(failsafe: bool) -> DynamicConfig {
    let c = DynamicConfig { failsafe_mode: failsafe, ..pgdaemon_testkit::short_timings() };
    assert_eq!(c.lease_ms, LEASE_MS);
    c
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Etcd,
    Dynamodb,
}

struct Agent {
    addr: String,
    api_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    cgroup: NodeCgroup,
}

/// Samples of which nodes accepted a write, taken by a background thread.
#[derive(Default)]
struct Samples {
    rows: Vec<(Instant, Vec<String>)>,
}

struct Cluster {
    name: String,
    store: Arc<dyn Store>,
    pg: Arc<PgCluster>,
    agents: BTreeMap<String, Agent>,
    store_port: u16,
    etcd: Option<EtcdServer>,
    moto: Option<MotoServer>,
    samples: Arc<Mutex<Samples>>,
    sampling: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

/// Node `i`'s loopback address; `ip route get` must say it is local on `lo`.
fn node_addr(i: usize) -> String {
    let addr = format!("127.0.0.{}", 11 + i);
    let out = Command::new("ip").args(["route", "get", &addr]).output().expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("local") && text.contains("dev lo"), "{addr} is not a loopback address here: {text}");
    addr
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).expect("port in endpoint")
}

impl Cluster {
    async fn start(backend: Backend, tag: &str, failsafe: bool) -> Cluster {
        let name = format!("fs-{tag}-{}", std::process::id());
        let (etcd, moto, store_config) = match backend {
            Backend::Etcd => {
                let e = EtcdServer::start().expect("etcd");
                let cfg = StoreConfig::etcd(vec![e.endpoint()], "/pgdaemon");
                (Some(e), None, cfg)
            }
            Backend::Dynamodb => {
                let m = MotoServer::start().expect("moto");
                std::env::set_var("AWS_ACCESS_KEY_ID", MotoServer::ACCESS_KEY_ID);
                std::env::set_var("AWS_SECRET_ACCESS_KEY", MotoServer::SECRET_ACCESS_KEY);
                std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
                let client = pgdaemon_dcs::dynamodb::emulator_client(
                    &m.endpoint(),
                    MotoServer::REGION,
                    MotoServer::ACCESS_KEY_ID,
                    MotoServer::SECRET_ACCESS_KEY,
                );
                pgdaemon_dcs::create_table(&client, "pgdaemon-failsafe").await.expect("table");
                let cfg = StoreConfig::Dynamodb {
                    table: "pgdaemon-failsafe".into(),
                    region: Some(MotoServer::REGION.into()),
                    endpoint_url: Some(m.endpoint()),
                };
                (None, Some(m), cfg)
            }
        };
        let store_port = match &store_config {
            StoreConfig::Etcd { endpoints, .. } => port_of(&endpoints[0]),
            StoreConfig::Dynamodb { endpoint_url, .. } => port_of(endpoint_url.as_deref().unwrap()),
            StoreConfig::Memory {} => unreachable!(),
        };
        let store = pgdaemon_dcs::connect(&store_config).await.expect("store");
        let mut pg = PgCluster::new().expect("pg cluster");
        pg.init_primary("pg-1").expect("initdb");
        // The agent starts it again with its own settings (listening on the node's address too).
        pg.stop("pg-1").expect("stop pg-1");
        pg.add_empty("pg-2").unwrap();
        pg.add_empty("pg-3").unwrap();
        store.write_cluster(&name, None, &ClusterRecord::bootstrap("pg-1", dynamic(failsafe))).await.expect("bootstrap record");
        let store_text = match &store_config {
            StoreConfig::Etcd { endpoints, .. } => format!("backend = \"etcd\"\nendpoints = [\"{}\"]\n", endpoints[0]),
            StoreConfig::Dynamodb { table, region, endpoint_url } => format!(
                "backend = \"dynamodb\"\ntable = \"{table}\"\nregion = \"{}\"\nendpoint_url = \"{}\"\n",
                region.clone().unwrap_or_default(),
                endpoint_url.clone().unwrap_or_default()
            ),
            StoreConfig::Memory {} => unreachable!(),
        };
        // The agents authenticate their failsafe requests to each other, as deployed nodes do.
        let token = pg.dir().join("api-token");
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&token).unwrap();
            std::io::Write::write_all(&mut f, format!("failsafe-test-{name}").as_bytes()).unwrap();
        }
        let mut agents = BTreeMap::new();
        for (i, n) in NODES.iter().enumerate() {
            let node = pg.node(n).clone();
            let dir = pg.dir().to_path_buf();
            let addr = node_addr(i);
            let api_port = free_port();
            let text = format!(
                "cluster = \"{name}\"\n[node]\nname = \"{n}\"\nlisten = \"{addr}:{api_port}\"\npg_host = \"{addr}\"\nimds = false\n\
                 instance_id = \"local-{n}\"\navailability_zone = \"local\"\n\
                 [postgres]\nbin_dir = \"{bin}\"\ndata_dir = \"{data}\"\nport = {port}\nconnect_host = \"{dir}/sock\"\n\
                 replication_user = \"postgres\"\nlog_file = \"{log}\"\n\
                 [postgres.parameters]\nlisten_addresses = \"127.0.0.1,{addr}\"\nunix_socket_directories = \"{dir}/sock\"\nwal_log_hints = true\n\
                 hot_standby = true\nwal_keep_size = \"256MB\"\nshared_buffers = \"16MB\"\nfsync = false\n\
                 [store]\n{store_text}[api]\ntoken_file = \"{token}\"\nallowlist = [\"127.0.0.0/8\"]\n\
                 [coordinator]\nenabled = true\nfencing = [\"off\"]\ninterval_ms = 500\n[log]\nlevel = \"info\"\n\
                 [watchdog]\nmode = \"automatic\"\ndevice = \"{dir}/{n}.watchdog\"\n",
                bin = pg.bin_dir().display(),
                data = node.data_dir.display(),
                port = node.port,
                dir = dir.display(),
                log = node.log_file.display(),
                token = token.display(),
            );
            // A regular file standing in for the watchdog device: it records pets ('1') and the
            // magic close ('V'). Never a real /dev/watchdog (it would reset the machine).
            std::fs::write(dir.join(format!("{n}.watchdog")), b"").unwrap();
            let config = dir.join(format!("{n}.toml"));
            std::fs::write(&config, text).unwrap();
            agents.insert(
                n.to_string(),
                Agent {
                    addr,
                    api_port,
                    config,
                    log: dir.join(format!("{n}.agent.log")),
                    child: None,
                    cgroup: NodeCgroup::new(n),
                },
            );
        }
        let mut c = Cluster {
            name,
            store,
            pg: Arc::new(pg),
            agents,
            store_port,
            etcd,
            moto,
            samples: Arc::default(),
            sampling: Arc::new(AtomicBool::new(false)),
            sampler: None,
        };
        for n in NODES {
            c.start_agent(n);
        }
        let p = c.wait_healthy(Duration::from_secs(120)).await;
        assert_eq!(p, "pg-1");
        c
    }

    fn start_agent(&mut self, n: &str) {
        let a = self.agents.get_mut(n).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&a.log).unwrap();
        // Into its cgroup first, then exec: every socket it (or its Postgres) opens belongs to it.
        let child = Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$1\" --config \"$2\"")
            .arg(a.cgroup.path.join("cgroup.procs"))
            .arg(env!("CARGO_BIN_EXE_pgdaemon-agent"))
            .arg(&a.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pgdaemon-agent");
        a.child = Some(child);
    }

    /// Drops `n`'s agent's TCP to the store and, with `peers`, to the other agents' APIs and
    /// everyone's TCP to `n`'s API: iptables on `lo`, matched by the agent's cgroup.
    fn cut(&self, n: &str, peers: bool) -> Partition {
        let a = &self.agents[n];
        let cg = a.cgroup.name.as_str();
        let store = self.store_port.to_string();
        let from_agent = |addr: &str, port: &str| {
            rule(&["OUTPUT", "-o", "lo", "-p", "tcp", "-m", "cgroup", "--path", cg, "-d", addr, "--dport", port, "-j", "DROP"])
        };
        let mut rules = vec![from_agent("127.0.0.1", &store)];
        if peers {
            for (_, b) in self.agents.iter().filter(|(m, _)| m.as_str() != n) {
                rules.push(from_agent(&b.addr, &b.api_port.to_string()));
            }
            let api = a.api_port.to_string();
            rules.push(rule(&["OUTPUT", "-o", "lo", "-p", "tcp", "-d", &a.addr, "--dport", &api, "-j", "DROP"]));
        }
        Partition::new(rules)
    }

    async fn view(&self) -> Option<ClusterView> {
        tokio::time::timeout(Duration::from_secs(10), self.store.read_view(&self.name)).await.ok()?.ok()
    }

    async fn wait_healthy(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.view().await.as_ref().and_then(|v| v.healthy_primary(2).map(str::to_string)) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy within {timeout:?}: {:#?}\n{}",
                self.view().await,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn record(&self) -> ClusterRecord {
        self.view().await.and_then(|v| v.cluster).expect("cluster record")
    }

    async fn set_failsafe(&self, on: bool) {
        let rec = self.record().await;
        let config = DynamicConfig { failsafe_mode: on, ..rec.config.clone() };
        self.store.write_cluster(&self.name, Some(rec.version), &ClusterRecord { config, ..rec }).await.expect("config change");
    }

    /// Over the Unix socket: no iptables rule of these tests applies to it.
    fn writable(pg: &PgCluster, n: &str) -> bool {
        let conn =
            format!("host={}/sock port={} user=postgres dbname=postgres connect_timeout=3", pg.dir().display(), pg.node(n).port);
        let sql = "CREATE TABLE IF NOT EXISTS fs_probe (x int); INSERT INTO fs_probe VALUES (1)";
        Command::new(pg.bin_dir().join("psql"))
            .arg(conn)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGOPTIONS", "-c statement_timeout=5000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts writing to every node in the background (see [`Samples`]); returns once a sample
    /// saw a node accept a write, so the sampler works and runs before the test injects a fault.
    async fn start_sampling(&mut self) {
        self.sampling.store(true, Ordering::SeqCst);
        let (pg, samples, on) = (self.pg.clone(), self.samples.clone(), self.sampling.clone());
        self.sampler = Some(std::thread::spawn(move || {
            // Bounded: the flag is cleared by the test or by Drop, and each psql has a 3 s connect timeout.
            while on.load(Ordering::SeqCst) {
                let w: Vec<String> = NODES.iter().filter(|n| Self::writable(&pg, n)).map(|n| n.to_string()).collect();
                samples.lock().unwrap().rows.push((Instant::now(), w));
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.samples.lock().unwrap().rows.iter().any(|(_, w)| !w.is_empty()) {
            assert!(Instant::now() < deadline, "no node accepted a sampler write within 30 s\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop_sampling(&mut self) -> Vec<(Instant, Vec<String>)> {
        self.sampling.store(false, Ordering::SeqCst);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        std::mem::take(&mut self.samples.lock().unwrap().rows)
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (n, a) in &self.agents {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {n} agent log (tail)\n{}\n", lines[lines.len().saturating_sub(30)..].join("\n")));
            // The server's own account of role changes (promotions, restarts), for a failure that
            // the agent logs do not explain.
            let pg_log = self.pg.log(n);
            let pg_lines: Vec<&str> = pg_log.lines().collect();
            s.push_str(&format!("--- {n} postgres log (tail)\n{}\n", pg_lines[pg_lines.len().saturating_sub(15)..].join("\n")));
        }
        s
    }

    /// Stops (etcd: SIGKILL, restarted later with its data) or freezes (moto: SIGSTOP, as it keeps
    /// its data only in memory) the store.
    fn store_down(&self) {
        match (&self.etcd, &self.moto) {
            (Some(e), _) => e.stop(),
            (_, Some(m)) => m.freeze(),
            _ => unreachable!(),
        }
    }

    fn store_up(&self) {
        match (&self.etcd, &self.moto) {
            (Some(e), _) => e.restart().expect("etcd restart"),
            (_, Some(m)) => m.thaw(),
            _ => unreachable!(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.sampling.store(false, Ordering::SeqCst);
        if let Some(t) = self.sampler.take() {
            let _ = t.join();
        }
        if let Some(m) = &self.moto {
            m.thaw();
        }
        for a in self.agents.values_mut() {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // PgCluster's own Drop stops every postmaster on its data directories; the engines stop
        // their processes on drop.
    }
}

const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A cgroup (v2) of its own for one agent, created before the agent starts: iptables matches a
/// socket by the cgroup its creator was in *when it was created*, so the agent (and everything
/// it starts) must be in it from the beginning. Emptied (processes moved back to the root) and
/// removed on drop.
struct NodeCgroup {
    name: String,
    path: PathBuf,
}

impl NodeCgroup {
    fn new(node: &str) -> NodeCgroup {
        let root = if Path::new(CGROUP2_ROOT).join("cgroup.procs").exists() { CGROUP2_ROOT } else { "/sys/fs/cgroup" };
        let name = format!("pgdaemon-failsafe-{}-{}-{node}", std::process::id(), CGROUP_SEQ.fetch_add(1, Ordering::SeqCst));
        let path = Path::new(root).join(&name);
        std::fs::create_dir_all(&path).expect("create a cgroup (needs root and cgroup v2)");
        NodeCgroup { name, path }
    }
}

static CGROUP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        let root_procs = self.path.parent().unwrap().join("cgroup.procs");
        for _ in 0..50 {
            let pids = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = std::fs::write(&root_procs, pid);
            }
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("could not remove cgroup {}", self.path.display());
    }
}

/// iptables rules on `lo`, removed by exact spec on [`Partition::heal`] or drop.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    fn new(rules: Vec<Vec<String>>) -> Partition {
        let mut p = Partition { rules: vec![] };
        for rule in rules {
            let out = Command::new("iptables").arg("-A").args(&rule).output().expect("iptables");
            assert!(out.status.success(), "iptables -A {rule:?}: {}", String::from_utf8_lossy(&out.stderr));
            p.rules.push(rule);
        }
        p
    }

    fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let out = Command::new("iptables").arg("-D").args(&rule).output();
            if !out.is_ok_and(|o| o.status.success()) {
                eprintln!("could not remove iptables rule {rule:?}");
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

fn rule(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// No sample saw two nodes accept a write.
fn assert_one_writer(samples: &[(Instant, Vec<String>)], logs: &str) {
    for (_, w) in samples {
        assert!(w.len() <= 1, "two writable nodes at once: {w:?}\n{logs}");
    }
}

/// First sample at or after `from` in which `node` was not writable.
fn first_unwritable(samples: &[(Instant, Vec<String>)], node: &str, from: Instant) -> Option<Instant> {
    samples.iter().find(|(t, w)| *t >= from && !w.iter().any(|n| n == node)).map(|(t, _)| *t)
}

/// First sample at or after `from` in which a node other than `old` was writable.
fn first_new_writer(samples: &[(Instant, Vec<String>)], old: &str, from: Instant) -> Option<(Instant, String)> {
    samples.iter().find(|(t, w)| *t >= from && w.iter().any(|n| n != old)).map(|(t, w)| (*t, w[0].clone()))
}

async fn outage_keeps_the_primary(backend: Backend) {
    if !postgres_available() {
        eprintln!("skipping: PostgreSQL 15 not installed");
        return;
    }
    let tag = match backend {
        Backend::Etcd => "outage-etcd",
        Backend::Dynamodb => "outage-ddb",
    };
    let mut c = Cluster::start(backend, tag, true).await;
    let term = c.record().await.term;
    let postmaster = c.pg.pid("pg-1").expect("pg-1 runs");
    for outage in [Duration::from_millis(LEASE_MS / 2), Duration::from_millis(LEASE_MS * 5 / 2)] {
        c.start_sampling().await;
        let t0 = Instant::now();
        c.store_down();
        tokio::time::sleep(outage).await; // the fault is held for a fixed time
        c.store_up();
        eprintln!("{backend:?}: store down for {} ms", t0.elapsed().as_millis());
        let p = c.wait_healthy(Duration::from_secs(60)).await;
        // A fixed window after the outage in which pg-1 must stay the only writer.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let samples = c.stop_sampling();
        let logs = c.logs();
        assert_one_writer(&samples, &logs);
        let during: Vec<_> = samples.iter().filter(|(t, _)| *t >= t0).collect();
        assert!(during.len() >= 10, "too few samples: {}", during.len());
        for (t, w) in &during {
            assert_eq!(
                w,
                &vec!["pg-1".to_string()],
                "at +{} ms (outage {outage:?}) writable: {w:?}\n{logs}",
                t.duration_since(t0).as_millis()
            );
        }
        assert_eq!(p, "pg-1");
        assert_eq!(c.record().await.term, term, "no failover");
        assert_eq!(c.pg.pid("pg-1"), Some(postmaster), "pg-1 was never demoted (same postmaster)");
        assert!(logs.contains("failsafe"), "the primary ran on acknowledgements:\n{logs}");
    }

    // The watchdog was petted all along (failsafe counts as a valid lease) and never disarmed;
    // replicas never armed theirs.
    let dir = c.pg.dir().to_path_buf();
    let dog = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.watchdog"))).unwrap();
    let pets = dog("pg-1");
    assert!(pets.len() > 50 && !pets.contains('V'), "pg-1 watchdog: {pets:?}");
    assert_eq!((dog("pg-2"), dog("pg-3")), (String::new(), String::new()));

    // The same long outage with failsafe mode off demotes the primary (the test can fail).
    c.set_failsafe(false).await;
    // pg-1's agent has read the change once its heartbeat no longer lists whom it would ask.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.view().await.is_none_or(|v| v.members.get("pg-1").is_none_or(|m| m.failsafe_members.is_some())) {
        assert!(Instant::now() < deadline, "pg-1 still in failsafe mode\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.start_sampling().await;
    let t0 = Instant::now();
    c.store_down();
    tokio::time::sleep(Duration::from_millis(LEASE_MS * 5 / 2)).await; // the fault is held for a fixed time
    c.store_up();
    // A fixed window after the outage, still sampled for two writers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = c.stop_sampling();
    assert_one_writer(&samples, &c.logs());
    let demoted = first_unwritable(&samples, "pg-1", t0).expect("without failsafe the primary demotes");
    eprintln!("{backend:?}: failsafe off: primary demoted {} ms into the outage", demoted.duration_since(t0).as_millis());
    assert!(demoted.duration_since(t0) < Duration::from_millis(LEASE_MS), "demoted within the lease");
    // Its lease lapsed: the watchdog was disarmed with the magic close.
    assert!(dog("pg-1").contains('V'), "pg-1 watchdog: {:?}", dog("pg-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_shorter_and_longer_than_the_lease_keeps_the_primary() {
    outage_keeps_the_primary(Backend::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_outage_shorter_and_longer_than_the_lease_keeps_the_primary() {
    outage_keeps_the_primary(Backend::Dynamodb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_demotes_within_the_lease() {
    if !postgres_available() {
        eprintln!("skipping: PostgreSQL 15 not installed");
        return;
    }
    let mut c = Cluster::start(Backend::Etcd, "partition", true).await;
    let term = c.record().await.term;
    c.start_sampling().await;
    // pg-1's agent reaches neither the store nor its peers' APIs; nobody reaches its API.
    // Postgres traffic (replication, the sampler's Unix socket) is left alone.
    let mut cut = c.cut("pg-1", true);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    let mut demoted = None;
    let mut promoted = None;
    while Instant::now() < deadline && promoted.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let rows = c.samples.lock().unwrap().rows.clone();
        demoted = demoted.or_else(|| first_unwritable(&rows, "pg-1", t0));
        promoted = first_new_writer(&rows, "pg-1", t0);
    }
    let samples = c.stop_sampling();
    let logs = c.logs();
    cut.heal();
    assert_one_writer(&samples, &logs);
    let demoted = demoted.unwrap_or_else(|| panic!("the partitioned primary never demoted\n{logs}"));
    let (promoted_at, new) = promoted.unwrap_or_else(|| panic!("no replica promoted\n{logs}"));
    let (d, p) = (demoted.duration_since(t0), promoted_at.duration_since(t0));
    eprintln!("partitioned primary: demoted after {} ms, {new} writable after {} ms", d.as_millis(), p.as_millis());
    assert!(d < Duration::from_millis(LEASE_MS), "demoted within the lease ({d:?})\n{logs}");
    assert!(c.record().await.term > term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_from_the_store_only_runs_until_a_failover_starts() {
    if !postgres_available() {
        eprintln!("skipping: PostgreSQL 15 not installed");
        return;
    }
    let mut c = Cluster::start(Backend::Etcd, "storecut", true).await;
    let term = c.record().await.term;
    c.start_sampling().await;
    // pg-1's agent cannot reach the store; its peers (and the coordinators) still can.
    let mut cut = c.cut("pg-1", false);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(90);
    let mut promoted = None;
    while Instant::now() < deadline && promoted.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        promoted = first_new_writer(&c.samples.lock().unwrap().rows, "pg-1", t0);
    }
    let samples = c.stop_sampling();
    let logs = c.logs();
    cut.heal();
    assert_one_writer(&samples, &logs);
    let demoted = first_unwritable(&samples, "pg-1", t0).unwrap_or_else(|| panic!("pg-1 never demoted\n{logs}"));
    let (promoted_at, new) = promoted.unwrap_or_else(|| panic!("no replica promoted\n{logs}"));
    let (d, p) = (demoted.duration_since(t0), promoted_at.duration_since(t0));
    eprintln!("primary cut from the store: demoted after {} ms, {new} writable after {} ms", d.as_millis(), p.as_millis());
    // It outlived its lease on its peers' acknowledgements (renewed at the latest at the cut,
    // the lease alone kept it writable at most `lease - safety margin` after it), and demoted
    // before anyone else wrote. Not `> lease`: the replicas' sighting reaches the coordinator
    // with their request, so a failover may start a lease after the last renewal, before
    // `cut + lease`.
    let lease_alone = Duration::from_millis(LEASE_MS - pgdaemon_testkit::short_timings().safety_margin_ms);
    assert!(d > lease_alone, "failsafe kept it past the lease ({d:?})\n{logs}");
    assert!(demoted < promoted_at);
    assert!(c.record().await.term > term);
}

/// The peer endpoint's HTTP contract, over a real listener with a recording [`AgentApi`].
mod endpoint {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use pgdaemon_agent::http::{serve, AgentApi, ApiState};
    use pgdaemon_agent::metrics::LoopStats;
    use pgdaemon_core::agent::{AgentSnapshot, DemoteError, FailsafeReply, FailsafeRequest};
    use pgdaemon_core::{Clock, ClusterView, HistoryEntry, StoreError, SystemClock};

    #[derive(Default)]
    struct Api {
        asked: Mutex<Vec<FailsafeRequest>>,
    }

    #[async_trait]
    impl AgentApi for Api {
        fn snapshot(&self) -> AgentSnapshot {
            AgentSnapshot { member: "pg-2".into(), term: 3, ..Default::default() }
        }
        async fn demote(&self, _term: u64, _reason: &str) -> Result<(), DemoteError> {
            unreachable!("not used")
        }
        async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
            Err(StoreError::Unavailable("not used".into()))
        }
        async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
            Ok(vec![])
        }
        fn failsafe(&self, req: &FailsafeRequest) -> FailsafeReply {
            self.asked.lock().unwrap().push(req.clone());
            let ack = req.term >= 3;
            FailsafeReply { member: "pg-2".into(), ack, valid_ms: if ack { 4000 } else { 0 }, term: 3, reason: "r".into() }
        }
    }

    #[tokio::test]
    async fn acknowledges_with_200_refuses_with_409_and_rejects_malformed_bodies() {
        let api = std::sync::Arc::new(Api::default());
        let clock = SystemClock::new();
        let state = ApiState {
            api: api.clone(),
            clock: std::sync::Arc::new(clock.clone()),
            stats: std::sync::Arc::new(LoopStats::new(clock.monotonic())),
            version: "test".into(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/failsafe", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let tls = pgdaemon_dcs::tls::client_config(None, None).unwrap();
        let client =
            reqwest::Client::builder().use_preconfigured_tls(tls).timeout(std::time::Duration::from_secs(5)).build().unwrap();
        let post = |body: String| client.post(&url).header("content-type", "application/json").body(body).send();

        let ok = post(r#"{"cluster":"c","leader":"pg-1","term":3,"valid_ms":4000}"#.into()).await.unwrap();
        assert_eq!(ok.status(), 200);
        let reply: FailsafeReply = ok.json().await.unwrap();
        assert!(reply.ack && reply.valid_ms == 4000 && reply.member == "pg-2");

        let refused = post(r#"{"cluster":"c","leader":"pg-1","term":2,"valid_ms":4000}"#.into()).await.unwrap();
        assert_eq!(refused.status(), 409);
        assert!(!refused.json::<FailsafeReply>().await.unwrap().ack);

        for bad in [
            "[3]",
            "not json",
            r#"{"cluster":"c","leader":"pg-1","term":3}"#,
            r#"{"cluster":"c","leader":"pg-1","term":3,"valid_ms":4000,"extra":1}"#,
            r#"{"cluster":"c","leader":"pg-1","term":"3","valid_ms":4000}"#,
        ] {
            let r = post(bad.into()).await.unwrap();
            assert_eq!(r.status(), 400, "{bad}");
        }
        assert_eq!(api.asked.lock().unwrap().len(), 2, "malformed requests promise nothing");
        let _ = stop.send(());
        let _ = server.await;
    }
}
