//! Agent footprint benchmark (not a test): an idle 3-node cluster (real PostgreSQL 15, real etcd,
//! three `pgdaemon-agent` processes built with the bench profile), then the agents' resident
//! memory (`VmRSS` from /proc/<pid>/status) and CPU time per probe loop ((utime + stime) / loops,
//! loops counted by each agent's own `/metrics`), as medians over several measurement windows.
//!
//!   cargo bench -p pgdaemon-agent --bench agent_bench
//!   BENCH_SECONDS=20 BENCH_RUNS=5 cargo bench -p pgdaemon-agent --bench agent_bench
//!
//! Every process it starts is stopped by PID (agents with SIGTERM, then SIGKILL after a bound).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgdaemon_core::{ClusterRecord, DynamicConfig, Store, StoreConfig};
use pgdaemon_testkit::engines::EtcdServer;
use pgdaemon_testkit::ports::free_port;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster, PgNode};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const CLUSTER: &str = "bench";

/// A spawned agent, killed by PID when dropped (SIGTERM first: the clean shutdown path).
struct Agent {
    name: String,
    child: Child,
    api: String,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(node: &PgNode, pg: &PgCluster, etcd: &str, api_port: u16, dynamic: &DynamicConfig) -> String {
    let sock = pg.dir().join("sock");
    // The test cluster has only the `postgres` role (trust on loopback); the default replication
    // user `replicator` does not exist there, so a standby pointed at it never streams.
    let run_as = pg.run_as().map(|u| format!("run_as = \"{u}\"\n")).unwrap_or_default();
    let params: String = pg.server_options().iter().map(|(k, v)| format!("{k} = \"{v}\"\n")).collect();
    format!(
        r#"cluster = "{CLUSTER}"
[node]
name = "{name}"
listen = "127.0.0.1:{api_port}"
pg_host = "127.0.0.1"
imds = false
instance_id = "i-bench-{name}"
availability_zone = "local"
[postgres]
bin_dir = "{bin}"
data_dir = "{data}"
port = {port}
connect_host = "{sock}"
replication_user = "postgres"
log_file = "{log}"
{run_as}[postgres.parameters]
{params}[store]
backend = "etcd"
endpoints = ["{etcd}"]
[dynamic]
lease_ms = {lease}
renew_interval_ms = {renew}
safety_margin_ms = {margin}
probe_interval_ms = {probe}
[log]
level = "warn"
"#,
        name = node.name,
        bin = pg.bin_dir().display(),
        data = node.data_dir.display(),
        port = node.port,
        sock = sock.display(),
        log = node.log_file.display(),
        lease = dynamic.lease_ms,
        renew = dynamic.renew_interval_ms,
        margin = dynamic.safety_margin_ms,
        probe = dynamic.probe_interval_ms,
    )
}

fn http_status(url: &str) -> Option<u16> {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}", url]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn http_text(url: &str) -> Result<String> {
    let out = Command::new("curl").args(["-sf", "-m", "2", url]).output().context("curl")?;
    if !out.status.success() {
        bail!("GET {url} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Completed loops as the agent counts them.
fn loops(agent: &Agent) -> Result<u64> {
    let text = http_text(&format!("{}/metrics", agent.api))?;
    text.lines()
        .find(|l| l.starts_with("pgdaemon_loop_duration_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .context("no loop count in /metrics")
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = clock_ticks_per_second();
    Ok(ticks / hz)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn wait_healthy(agents: &[Agent], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let primary = http_status(&format!("{}/primary", agents[0].api)) == Some(200);
        let replicas = agents[1..].iter().all(|a| http_status(&format!("{}/replica", a.api)) == Some(200));
        if primary && replicas {
            return Ok(());
        }
        if Instant::now() > deadline {
            let states: Vec<String> = agents
                .iter()
                .map(|a| format!("{}: {}", a.name, http_text(&format!("{}/patroni", a.api)).unwrap_or_else(|e| e.to_string())))
                .collect();
            bail!("cluster not healthy after {timeout:?}:\n{}", states.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument other than ours means "not this bench".
    if std::env::args().skip(1).any(|a| !a.starts_with("--")) {
        return Ok(());
    }
    if !postgres_available() {
        println!("agent_bench: PostgreSQL binaries not found; skipped");
        return Ok(());
    }
    let seconds = env_u64("BENCH_SECONDS", 20);
    let runs = env_u64("BENCH_RUNS", 5).max(1);
    let agent_bin = PathBuf::from(env!("CARGO_BIN_EXE_pgdaemon-agent"));
    let dynamic = DynamicConfig::default();

    let etcd = EtcdServer::start()?;
    let mut pg = PgCluster::new()?;
    pg.init_primary("n1")?;
    pg.add_replica("n2", "n1")?;
    pg.add_replica("n3", "n1")?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let store_cfg = StoreConfig::etcd(vec![etcd.endpoint()], "/pgdaemon");
    rt.block_on(async {
        let store = pgdaemon_dcs::connect(&store_cfg).await?;
        store.write_cluster(CLUSTER, None, &ClusterRecord::bootstrap("n1", dynamic.clone())).await?;
        anyhow::Ok(())
    })?;

    let conf_dir = tempfile::tempdir()?;
    let mut agents = Vec::new();
    for name in NODES {
        let node = pg.node(name).clone();
        let api_port = free_port();
        let path = conf_dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config(&node, &pg, &etcd.endpoint(), api_port, &dynamic))?;
        let log = std::fs::File::create(conf_dir.path().join(format!("{name}.agent.log")))?;
        let child = Command::new(&agent_bin)
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", agent_bin.display()))?;
        agents.push(Agent { name: name.to_string(), child, api: format!("http://127.0.0.1:{api_port}") });
    }
    if let Err(e) = wait_healthy(&agents, Duration::from_secs(90)) {
        print_agent_logs(conf_dir.path());
        return Err(e);
    }
    // Let the re-pointing (slots, primary_conninfo) settle before measuring an idle cluster.
    std::thread::sleep(Duration::from_secs(3));
    // Again after the re-pointing: replicas still streaming over the harness's own connection
    // answer /replica 200 for one loop before they switch to their slots.
    if let Err(e) = wait_healthy(&agents, Duration::from_secs(30)) {
        print_agent_logs(conf_dir.path());
        return Err(e);
    }

    println!(
        "agent_bench: idle 3-node cluster (PostgreSQL 15, etcd), probe interval {} ms, {runs} windows of {seconds} s",
        dynamic.probe_interval_ms
    );
    let mut per_agent: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); agents.len()];
    for run in 0..runs {
        let start: Vec<(f64, u64)> = agents.iter().map(|a| Ok((cpu_seconds(a.pid())?, loops(a)?))).collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_secs(seconds));
        for (i, a) in agents.iter().enumerate() {
            let (cpu0, loops0) = start[i];
            let (cpu1, loops1) = (cpu_seconds(a.pid())?, loops(a)?);
            let dl = loops1.saturating_sub(loops0).max(1);
            let cpu_ms_per_loop = (cpu1 - cpu0) * 1000.0 / dl as f64;
            let rss = rss_kib(a.pid())? as f64;
            per_agent[i].0.push(rss);
            per_agent[i].1.push(cpu_ms_per_loop);
            per_agent[i].2.push(dl as f64 / seconds as f64);
            println!(
                "  window {run} {}: rss {:.1} MiB, cpu {:.3} ms/loop, {:.2} loops/s",
                a.name,
                rss / 1024.0,
                cpu_ms_per_loop,
                dl as f64 / seconds as f64
            );
        }
    }
    println!("medians:");
    println!("  {:<4} {:>10} {:>14} {:>9}", "node", "rss MiB", "cpu ms/loop", "loops/s");
    let (mut all_rss, mut all_cpu) = (Vec::new(), Vec::new());
    for (a, (rss, cpu, rate)) in agents.iter().zip(&per_agent) {
        println!(
            "  {:<4} {:>10.1} {:>14.3} {:>9.2}",
            a.name,
            median(rss.clone()) / 1024.0,
            median(cpu.clone()),
            median(rate.clone())
        );
        all_rss.extend(rss);
        all_cpu.extend(cpu);
    }
    println!("  all  {:>10.1} {:>14.3}   (role: n1 primary, n2/n3 replicas)", median(all_rss) / 1024.0, median(all_cpu));
    drop(agents);
    Ok(())
}

fn print_agent_logs(dir: &Path) {
    for name in NODES {
        let text = std::fs::read_to_string(dir.join(format!("{name}.agent.log"))).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        eprintln!("--- {name} agent log (last lines) ---");
        for line in tail.into_iter().rev() {
            eprintln!("{line}");
        }
    }
}
