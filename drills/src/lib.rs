//! Drill harness: a three-node cluster of real PostgreSQL 15 instances, each managed by a real
//! `pgdaemon-agent` process, on a real store (etcd or moto's DynamoDB). Every agent hosts a
//! coordinator (the lock lets one act) with the fencing chain a single host needs: HTTP demote, then a local command that
//! stops the target's Postgres by the PID in `postmaster.pid` and confirms only once its port is
//! dead. Every process started here is stopped by PID when the [`Drill`] is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgdaemon_core::{ClusterView, Store, StoreConfig};
use pgdaemon_testkit::engines::{EtcdServer, MotoServer};
use pgdaemon_testkit::ports::free_port;
use pgdaemon_testkit::postgres::PgCluster;

pub mod bench;
pub mod fleet;
pub mod writer;

/// Which store backend a drill runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Etcd,
    Dynamodb,
}

/// Short timings for drills (lease 3 s); `bench` uses the defaults.
pub fn drill_sets() -> Vec<String> {
    ["lease_ms=3000", "renew_interval_ms=1000", "safety_margin_ms=500", "probe_interval_ms=500"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// The agent a drill's member runs: its binary, and whether its configuration carries the
/// `[api]` credentials (releases before the authenticated API refuse that section).
#[derive(Debug, Clone)]
pub struct AgentBuild {
    pub binary: PathBuf,
    pub api_credentials: bool,
}

impl AgentBuild {
    /// This checkout's agent.
    pub fn current() -> Result<AgentBuild> {
        Ok(AgentBuild { binary: agent_binary()?, api_credentials: true })
    }

    /// The agent of an older commit of this repository, built once into
    /// `<target>/upgrade-from/<commit>/` from `git archive` (its own target directory, so this
    /// checkout's binaries are never overwritten). Needs the commit in the clone's history.
    pub fn from_commit(commit: &str) -> Result<AgentBuild> {
        let dir = target_dir().join("upgrade-from").join(commit);
        let binary = dir.join("pgdaemon-agent");
        if !binary.exists() {
            build_old_agent(commit, &dir, &binary)?;
        }
        Ok(AgentBuild { binary, api_credentials: false })
    }
}

fn build_old_agent(commit: &str, dir: &Path, binary: &Path) -> Result<()> {
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    let root = workspace_root();
    let mut git = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("git archive")?;
    let unpacked = Command::new("tar").arg("-x").arg("-C").arg(&src).stdin(git.stdout.take().expect("piped")).status()?;
    let archived = git.wait_with_output()?;
    if !archived.status.success() || !unpacked.success() {
        bail!(
            "cannot unpack commit {commit} of {}: {} (a shallow clone? `git fetch --unshallow`)",
            root.display(),
            String::from_utf8_lossy(&archived.stderr).trim()
        );
    }
    eprintln!("building pgdaemon-agent of {commit} (once, into {})", dir.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "--locked", "--no-default-features", "-p", "pgdaemon-agent", "--bin", "pgdaemon-agent"])
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .current_dir(&src)
        .status()
        .context("cargo build of the older agent")?;
    if !status.success() {
        bail!("building pgdaemon-agent of {commit} failed");
    }
    let partial = dir.join("pgdaemon-agent.partial");
    std::fs::copy(dir.join("target/debug/pgdaemon-agent"), &partial)?;
    std::fs::rename(&partial, binary)?;
    Ok(())
}

/// The built agent binary (built on demand; `CARGO_BIN_EXE_*` only exists inside its own package).
pub fn agent_binary() -> Result<PathBuf> {
    let root = workspace_root();
    let target = target_dir();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // `--workspace`: features resolved as scripts/check-infra and scripts/localstack-test
        // resolve them, so `make test` builds the agent once (with `-p` the AWS SDK crates were
        // compiled a second time, about four minutes on a fresh machine).
        .args(["build", "-q", "--workspace", "--bin", "pgdaemon-agent"])
        .current_dir(&root)
        .status()
        .context("cargo build --workspace --bin pgdaemon-agent")?;
    if !status.success() {
        bail!("building pgdaemon-agent failed");
    }
    Ok(target.join("debug/pgdaemon-agent"))
}

struct Agent {
    config: PathBuf,
    log: PathBuf,
    api_port: u16,
    build: AgentBuild,
    child: Option<Child>,
}

pub struct Drill {
    pub cluster: String,
    pub store: Arc<dyn Store>,
    pub store_config: StoreConfig,
    pub pg: PgCluster,
    agents: BTreeMap<String, Agent>,
    /// The agents initialise the cluster themselves ([`Drill::start_empty`]), within a lock of
    /// this many seconds.
    bootstrap: Option<u64>,
    /// TOML sections appended to every agent's configuration (e.g. `[archive]`).
    extra_config: String,
    _etcd: Option<EtcdServer>,
    _moto: Option<MotoServer>,
}

impl Drill {
    /// Starts the store, `initdb`s pg-1, writes the cluster record (drill timings), and starts
    /// three agents; returns once pg-1 leads and both replicas stream.
    pub async fn start(backend: Backend, name: &str) -> Result<Drill> {
        Drill::start_with(backend, name, &AgentBuild::current()?, &[]).await
    }

    /// [`Drill::start`] with every agent on `build` and `sets` added to the drill timings
    /// (`key=value`, as `pgdctl bootstrap --set`).
    pub async fn start_with(backend: Backend, name: &str, build: &AgentBuild, sets: &[&str]) -> Result<Drill> {
        Drill::start_configured(backend, name, build, sets, "").await
    }

    /// [`Drill::start_with`] with `extra_config` (TOML sections) in every agent's configuration.
    pub async fn start_configured(
        backend: Backend,
        name: &str,
        build: &AgentBuild,
        sets: &[&str],
        extra_config: &str,
    ) -> Result<Drill> {
        let cluster = format!("{name}-{}", std::process::id());
        let (etcd, moto, store_config) = start_store(backend).await?;
        let store = pgdaemon_dcs::connect(&store_config).await?;
        let mut pg = PgCluster::new()?;
        pg.init_primary("pg-1")?;
        pg.add_empty("pg-2")?;
        pg.add_empty("pg-3")?;
        let mut out = Vec::new();
        pgdaemon_ctl::dynconfig::bootstrap(
            store.as_ref(),
            &cluster,
            "pg-1",
            &drill_sets().into_iter().chain(sets.iter().map(|s| s.to_string())).collect::<Vec<_>>(),
            &mut out,
        )
        .await
        .map_err(|e| anyhow::anyhow!("bootstrap: {e}"))?;
        let mut drill = Drill {
            cluster,
            store,
            store_config,
            pg,
            agents: BTreeMap::new(),
            bootstrap: None,
            extra_config: extra_config.to_string(),
            _etcd: etcd,
            _moto: moto,
        };
        drill.write_fence_script()?;
        for n in ["pg-1", "pg-2", "pg-3"] {
            drill.write_agent_config(n, build.clone())?;
            drill.start_agent(n)?;
        }
        drill.wait_healthy(2, Duration::from_secs(120)).await?;
        Ok(drill)
    }

    /// Three members with empty data directories and no cluster record, their agents started at
    /// the same moment with automatic bootstrap on (`[bootstrap]`, lock 10 s; the replication
    /// role `replicator` with a password file): nothing else prepares the cluster. Returns at once.
    pub async fn start_empty(backend: Backend, name: &str) -> Result<Drill> {
        let mut drill = Drill::prepare_empty(backend, name, "", 10).await?;
        for n in ["pg-1", "pg-2", "pg-3"] {
            drill.start_agent(n)?;
        }
        Ok(drill)
    }

    /// [`Drill::start_empty`] with `extra_config` and a bootstrap lock of `lock_s`, no agent
    /// started yet ([`Drill::start_agent`]): the store can be prepared first (`pgdctl restore`).
    pub async fn prepare_empty(backend: Backend, name: &str, extra_config: &str, lock_s: u64) -> Result<Drill> {
        let cluster = format!("{name}-{}", std::process::id());
        let (etcd, moto, store_config) = start_store(backend).await?;
        let store = pgdaemon_dcs::connect(&store_config).await?;
        let mut pg = PgCluster::new()?;
        pg.sql_via_socket();
        for n in ["pg-1", "pg-2", "pg-3"] {
            pg.add_empty(n)?;
        }
        let mut drill = Drill {
            cluster,
            store,
            store_config,
            pg,
            agents: BTreeMap::new(),
            bootstrap: Some(lock_s),
            extra_config: extra_config.to_string(),
            _etcd: etcd,
            _moto: moto,
        };
        drill.write_fence_script()?;
        for n in ["pg-1", "pg-2", "pg-3"] {
            drill.write_agent_config(n, AgentBuild::current()?)?;
        }
        Ok(drill)
    }

    /// A member's agent API port (its `/primary` health check, `/metrics`).
    pub fn api_port(&self, n: &str) -> Option<u16> {
        self.agents.get(n).map(|a| a.api_port)
    }

    /// The file holding the agents' API bearer token (`pgdctl --api-token-file`).
    pub fn api_token_file(&self) -> PathBuf {
        self.pg.dir().join("api-token")
    }

    /// Every member's name and Postgres port (for a [`writer::Writer`]).
    pub fn members(&self) -> Vec<(String, u16)> {
        self.pg.nodes().iter().map(|n| (n.name.clone(), n.port)).collect()
    }

    /// A member's agent log so far.
    pub fn agent_log(&self, n: &str) -> String {
        self.agents.get(n).and_then(|a| std::fs::read_to_string(&a.log).ok()).unwrap_or_default()
    }

    fn secret_file(&self, name: &str) -> Result<PathBuf> {
        let path = self.pg.dir().join(name);
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
            let mut secret = [0u8; 16];
            std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            std::io::Write::write_all(&mut f, hex.as_bytes())?;
        }
        Ok(path)
    }
}

/// The drill's store engine, started on free loopback ports.
async fn start_store(backend: Backend) -> Result<(Option<EtcdServer>, Option<MotoServer>, StoreConfig)> {
    Ok({
        match backend {
            Backend::Etcd => {
                let e = EtcdServer::start()?;
                let cfg = StoreConfig::etcd(vec![e.endpoint()], "/pgdaemon");
                (Some(e), None, cfg)
            }
            Backend::Dynamodb => {
                let m = MotoServer::start()?;
                std::env::set_var("AWS_ACCESS_KEY_ID", MotoServer::ACCESS_KEY_ID);
                std::env::set_var("AWS_SECRET_ACCESS_KEY", MotoServer::SECRET_ACCESS_KEY);
                std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
                let client = pgdaemon_dcs::dynamodb::emulator_client(
                    &m.endpoint(),
                    MotoServer::REGION,
                    MotoServer::ACCESS_KEY_ID,
                    MotoServer::SECRET_ACCESS_KEY,
                );
                pgdaemon_dcs::create_table(&client, "pgdaemon-drills").await?;
                let cfg = StoreConfig::Dynamodb {
                    table: "pgdaemon-drills".into(),
                    region: Some(MotoServer::REGION.into()),
                    endpoint_url: Some(m.endpoint()),
                };
                (None, Some(m), cfg)
            }
        }
    })
}

impl Drill {
    fn fence_script(&self) -> PathBuf {
        self.pg.dir().join("fence.sh")
    }

    fn write_fence_script(&self) -> Result<()> {
        let bin = self.pg.bin_dir().display().to_string();
        let run_as = self.pg.run_as().map(|u| format!("runuser -u {u} -- ")).unwrap_or_default();
        let text = format!(
            "#!/bin/sh\nD=\"{dir}/$PGDAEMON_FENCE_MEMBER\"\n\
             if [ -f \"$D/postmaster.pid\" ]; then pid=$(head -1 \"$D/postmaster.pid\"); \
             if kill -0 \"$pid\" 2>/dev/null; then {run_as}{bin}/pg_ctl stop -D \"$D\" -m immediate -w -t 10 >/dev/null 2>&1 || kill -9 \"$pid\"; fi; fi\n\
             {bin}/pg_isready -h 127.0.0.1 -p \"$PGDAEMON_FENCE_PG_PORT\" -t 2 >/dev/null 2>&1\n\
             if [ $? -lt 2 ]; then echo still answering >&2; exit 1; fi\necho stopped\n",
            dir = self.pg.dir().display()
        );
        std::fs::write(self.fence_script(), text)?;
        Command::new("chmod").arg("755").arg(self.fence_script()).status()?;
        Ok(())
    }

    fn write_agent_config(&mut self, n: &str, build: AgentBuild) -> Result<()> {
        let node = self.pg.node(n).clone();
        let dir = self.pg.dir();
        let store = match &self.store_config {
            StoreConfig::Etcd { endpoints, .. } => format!("backend = \"etcd\"\nendpoints = [\"{}\"]\n", endpoints[0]),
            StoreConfig::Dynamodb { table, region, endpoint_url } => format!(
                "backend = \"dynamodb\"\ntable = \"{table}\"\nregion = \"{}\"\nendpoint_url = \"{}\"\n",
                region.clone().unwrap_or_default(),
                endpoint_url.clone().unwrap_or_default()
            ),
            StoreConfig::Memory {} => bail!("drills need a networked store"),
        };
        // Every agent hosts a coordinator (the coordinator lock lets one act), so a drill may
        // kill any member's agent and another coordinator carries on.
        let coordinator = format!(
            "enabled = true\nfencing = [\"http\", \"command\"]\nfence_command = \"{}\"\ninterval_ms = 500\n",
            self.fence_script().display()
        );
        // The API's state-changing requests need a token, as in a real deployment: the hosted
        // coordinators' HTTP fence and the failsafe requests send it.
        let token = self.secret_file("api-token")?;
        let api_access = if build.api_credentials {
            format!("[api]\ntoken_file = \"{}\"\nallowlist = [\"127.0.0.0/8\"]\n", token.display())
        } else {
            String::new()
        };
        // Bootstrapped by the agents: replication and rewind roles with passwords, pg_hba for
        // loopback, the drill timings in the record the winner writes.
        let (replication, bootstrap) = if let Some(lock_s) = self.bootstrap {
            let timings: String = drill_sets().iter().map(|s| s.replacen('=', " = ", 1) + "\n").collect();
            (
                format!(
                    "replication_user = \"replicator\"\npassword_file = \"{}\"\n\
                     rewind_user = \"rewinder\"\nrewind_password_file = \"{}\"\n",
                    self.secret_file("replication-password")?.display(),
                    self.secret_file("rewind-password")?.display()
                ),
                format!(
                    "[bootstrap]\nenabled = true\nlock_s = {lock_s}\npeer_networks = [\"127.0.0.0/8\"]\n[dynamic]\n{timings}"
                ),
            )
        } else {
            ("replication_user = \"postgres\"\n".to_string(), String::new())
        };
        // A member keeps its API address across agent restarts and upgrades.
        let api_port = self.agents.get(n).map_or_else(free_port, |a| a.api_port);
        let text = format!(
            "cluster = \"{cluster}\"\n[node]\nname = \"{n}\"\nlisten = \"127.0.0.1:{api}\"\npg_host = \"127.0.0.1\"\nimds = false\n\
             instance_id = \"local-{n}\"\navailability_zone = \"local\"\n\
             [postgres]\nbin_dir = \"{bin}\"\ndata_dir = \"{data}\"\nport = {port}\nconnect_host = \"{dir}/sock\"\n\
             {replication}log_file = \"{log}\"\n\
             [postgres.parameters]\nlisten_addresses = \"127.0.0.1\"\nunix_socket_directories = \"{dir}/sock\"\nwal_log_hints = true\n\
             hot_standby = true\nwal_keep_size = \"256MB\"\nshared_buffers = \"16MB\"\nfsync = false\n\
             [store]\n{store}{api_access}[coordinator]\n{coordinator}{bootstrap}[log]\nlevel = \"info\"\n{extra}",
            cluster = self.cluster,
            api = api_port,
            bin = self.pg.bin_dir().display(),
            data = node.data_dir.display(),
            port = node.port,
            dir = dir.display(),
            log = node.log_file.display(),
            extra = self.extra_config,
        );
        let config = dir.join(format!("{n}.toml"));
        std::fs::write(&config, text)?;
        self.agents
            .insert(n.to_string(), Agent { config, log: dir.join(format!("{n}.agent.log")), api_port, build, child: None });
        Ok(())
    }

    /// Starts (or restarts) a member's agent process.
    pub fn start_agent(&mut self, n: &str) -> Result<()> {
        let a = self.agents.get_mut(n).context("no such agent")?;
        let bin = a.build.binary.clone();
        if a.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&a.log)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&a.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn pgdaemon-agent")?;
        a.child = Some(child);
        Ok(())
    }

    /// Upgrades (or rolls back) a member's agent as an operator does: SIGTERM to the running
    /// agent, waiting for it to exit, then the other build with its configuration started.
    pub fn replace_agent(&mut self, n: &str, build: &AgentBuild) -> Result<()> {
        if let Some(mut c) = self.agents.get_mut(n).and_then(|a| a.child.take()) {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    bail!("{n}'s agent did not exit within 60 s of SIGTERM\n{}", self.logs());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.write_agent_config(n, build.clone())?;
        self.start_agent(n)
    }

    /// `kill -9` of a member's agent (its Postgres keeps running).
    pub fn kill_agent(&mut self, n: &str) {
        if let Some(mut c) = self.agents.get_mut(n).and_then(|a| a.child.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A clean stop of a member's agent (SIGTERM, as systemd stops it), waited for (bounded: a
    /// `kill -9` after 30 s).
    pub fn stop_agent(&mut self, n: &str) -> Result<()> {
        let Some(mut child) = self.agents.get_mut(n).and_then(|a| a.child.take()) else { return Ok(()) };
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                child.wait()?;
                bail!("{n}'s agent did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `kill -9` of a member's postmaster and of its agent (a host crash).
    pub fn crash(&mut self, n: &str) -> Result<()> {
        self.kill_agent(n);
        self.pg.kill9(n)
    }

    /// The store's view; a read that fails (a connection reset on a loaded machine) is retried
    /// for a few seconds before the error is returned.
    pub async fn view(&self) -> Result<ClusterView> {
        let mut attempts = 0;
        loop {
            match self.store.read_view(&self.cluster).await {
                Ok(v) => return Ok(v),
                Err(e) if attempts < 10 => {
                    attempts += 1;
                    eprintln!("read view (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub async fn wait_healthy(&self, replicas: usize, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self.view().await {
                if let Some(p) = v.healthy_primary(replicas).map(str::to_string) {
                    return Ok(p);
                }
            }
            if Instant::now() >= deadline {
                bail!("cluster not healthy within {timeout:?}: {:#?}\n{}", self.view().await.ok(), self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until every other running member has replayed the primary's current WAL position
    /// (asynchronous replication: only then may a drill expect a failover to keep every row).
    pub async fn wait_replayed(&self, primary: &str, timeout: Duration) -> Result<()> {
        let lsn = self.pg.sql(primary, "SELECT pg_current_wal_lsn()")?;
        let deadline = Instant::now() + timeout;
        loop {
            let behind: Vec<String> = self
                .pg
                .nodes()
                .iter()
                .filter(|n| n.name != primary && self.pg.pid(&n.name).is_some())
                .filter(|n| {
                    let q = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
                    self.pg.try_sql(&n.name, &q).map_or(true, |r| r.trim() != "t")
                })
                .map(|n| n.name.clone())
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{behind:?} did not replay {primary}'s WAL up to {lsn} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Members whose Postgres accepts a write right now.
    pub fn writable(&self) -> Vec<String> {
        self.pg
            .nodes()
            .iter()
            .filter(|n| {
                self.pg
                    .try_sql(&n.name, "CREATE TABLE IF NOT EXISTS drill_probe (x int); INSERT INTO drill_probe VALUES (1)")
                    .is_ok()
            })
            .map(|n| n.name.clone())
            .collect()
    }

    /// Agent logs and server logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (n, a) in &self.agents {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            s.push_str(&format!("--- {n} agent log (tail)\n{}\n", lines[lines.len().saturating_sub(25)..].join("\n")));
        }
        s
    }

    /// Runs a pgdctl command in-process against this drill's store.
    pub async fn pgdctl(&self, args: &[&str]) -> std::result::Result<String, pgdaemon_ctl::CtlError> {
        use clap_free::parse;
        let cmd = parse(args)?;
        let mut out = Vec::new();
        pgdaemon_ctl::run_store_command(self.store.clone(), &self.cluster, &cmd.api, cmd.command, &mut out).await?;
        Ok(String::from_utf8_lossy(&out).to_string())
    }
}

/// Parses pgdctl arguments without a store (the drill supplies it).
mod clap_free {
    use pgdaemon_ctl::{Cmd, CtlError};

    pub fn parse(args: &[&str]) -> Result<Cmd, CtlError> {
        use clap::Parser;
        Cmd::try_parse_from(std::iter::once("pgdctl").chain(args.iter().copied())).map_err(|e| CtlError::Usage(e.to_string()))
    }
}

impl Drop for Drill {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            if let Some(mut c) = a.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // PgCluster's own Drop stops every postmaster on its data directories.
    }
}
