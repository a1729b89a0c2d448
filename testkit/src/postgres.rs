//! PostgreSQL clusters on loopback for tests: a primary made by `initdb` (with `wal_log_hints` so
//! pg_rewind works), replicas made by `pg_basebackup`, each on a free port in one temporary
//! directory. Postgres tools run as the OS user `postgres` when the tests run as root (initdb and
//! pg_ctl refuse root). Dropping the [`PgCluster`] stops every postmaster running on one of its
//! data directories (by the PID in `postmaster.pid`) and deletes the directory.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ports::free_port;

/// The default Debian/Ubuntu location of PostgreSQL 15; override with `PGDAEMON_PG_BIN`.
pub fn default_bin_dir() -> PathBuf {
    std::env::var_os("PGDAEMON_PG_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// PostgreSQL binaries are installed (tests skip with a message otherwise).
pub fn postgres_available() -> bool {
    default_bin_dir().join("pg_ctl").exists()
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// One Postgres node of a test cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgNode {
    pub name: String,
    pub data_dir: PathBuf,
    pub port: u16,
    /// Server log (`pg_ctl -l`), outside the data directory so rewinds and basebackups keep it.
    pub log_file: PathBuf,
}

/// A set of Postgres nodes in one temporary directory.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    run_as: Option<String>,
    nodes: Vec<PgNode>,
    sql_via_socket: bool,
}

impl PgCluster {
    /// An empty cluster directory (owned by `postgres` when running as root).
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("pgdaemon-pg-").tempdir_in(std::env::temp_dir()).context("temp dir")?;
        let run_as = running_as_root().then(|| "postgres".to_string());
        if let Some(user) = &run_as {
            let status = Command::new("chown").arg(format!("{user}:")).arg(dir.path()).status()?;
            if !status.success() {
                bail!("chown {user} {}", dir.path().display());
            }
        }
        std::fs::create_dir_all(dir.path().join("sock"))?;
        if let Some(user) = &run_as {
            Command::new("chown").arg(format!("{user}:")).arg(dir.path().join("sock")).status()?;
        }
        Ok(PgCluster { dir, bin_dir: default_bin_dir(), run_as, nodes: Vec::new(), sql_via_socket: false })
    }

    /// [`PgCluster::sql`] connects through the Unix socket directory (`<dir>/sock`, which the
    /// nodes must use) instead of TCP: for nodes whose pg_hba lets the superuser in by `peer`
    /// only, as the agent's automatic bootstrap writes it.
    pub fn sql_via_socket(&mut self) {
        self.sql_via_socket = true;
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The OS user the Postgres tools run as (`Some("postgres")` when the tests run as root).
    pub fn run_as(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn nodes(&self) -> &[PgNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> &PgNode {
        self.nodes.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Server settings every start passes on the command line (the agent passes the same), so
    /// configuration files copied between nodes never carry another node's address.
    pub fn server_options(&self) -> Vec<(String, String)> {
        vec![("listen_addresses".into(), "127.0.0.1".into())]
    }

    fn tool(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let path = if path.exists() { path } else { PathBuf::from(program) };
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    fn run(&self, what: &str, mut cmd: Command) -> Result<Output> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    fn new_node(&self, name: &str) -> PgNode {
        PgNode {
            name: name.to_string(),
            data_dir: self.dir.path().join(name),
            port: free_port(),
            log_file: self.dir.path().join(format!("{name}.log")),
        }
    }

    /// `initdb` a primary (trust authentication on loopback, `wal_log_hints = on`) and start it.
    pub fn init_primary(&mut self, name: &str) -> Result<PgNode> {
        let node = self.new_node(name);
        let mut cmd = self.tool("initdb");
        cmd.arg("-D").arg(&node.data_dir).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]);
        self.run("initdb", cmd)?;
        let sock = self.dir.path().join("sock");
        let conf = format!(
            "\n# pgdaemon test harness\nunix_socket_directories = '{}'\nwal_log_hints = on\nfsync = off\nfull_page_writes = on\n\
             max_wal_senders = 10\nmax_replication_slots = 10\nwal_keep_size = '256MB'\nhot_standby = on\nshared_buffers = '16MB'\n\
             wal_retrieve_retry_interval = '500ms'\nwal_receiver_status_interval = '1s'\nlog_min_messages = 'info'\n",
            sock.display()
        );
        let path = node.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        self.nodes.push(node.clone());
        self.start(name)?;
        Ok(node)
    }

    /// A replica of `from` made with `pg_basebackup -R` (streaming with `application_name` =
    /// `name`, no slot), started.
    pub fn add_replica(&mut self, name: &str, from: &str) -> Result<PgNode> {
        let source = self.node(from).clone();
        let node = self.new_node(name);
        let mut cmd = self.tool("pg_basebackup");
        cmd.arg("-D")
            .arg(&node.data_dir)
            .arg("-d")
            .arg(format!("host=127.0.0.1 port={} user=postgres application_name={name}", source.port))
            .args(["-X", "stream", "-c", "fast", "-R", "--no-sync"]);
        self.run("pg_basebackup", cmd)?;
        self.nodes.push(node.clone());
        self.start(name)?;
        Ok(node)
    }

    /// A node with a reserved port and an empty data directory (to be bootstrapped).
    pub fn add_empty(&mut self, name: &str) -> Result<PgNode> {
        let node = self.new_node(name);
        let mut cmd = self.tool("mkdir");
        cmd.arg("-m").arg("0700").arg(&node.data_dir);
        self.run("mkdir", cmd)?;
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// `pg_ctl start` with the harness's command-line settings.
    pub fn start(&self, name: &str) -> Result<()> {
        let node = self.node(name);
        let mut opts = format!("-p {}", node.port);
        for (k, v) in self.server_options() {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&node.data_dir)
            .arg("-w")
            .args(["-t", "60"])
            .arg("-l")
            .arg(&node.log_file)
            .arg("-o")
            .arg(opts);
        self.run("pg_ctl start", cmd).map(|_| ())
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self, name: &str) -> Result<()> {
        let node = self.node(name);
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&node.data_dir).args(["-m", "fast", "-w", "-t", "30"]);
        self.run("pg_ctl stop", cmd).map(|_| ())
    }

    /// The PID of the postmaster running on the node's data directory, if one runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        postmaster_pid(&self.node(name).data_dir)
    }

    /// `kill -9` of the node's postmaster (a crash); waits until it is gone.
    pub fn kill9(&self, name: &str) -> Result<()> {
        let pid = self.pid(name).with_context(|| format!("{name} has no running postmaster"))?;
        signal(pid, "KILL");
        wait_gone(pid, Duration::from_secs(10))
    }

    /// Runs SQL through `psql` on a node; `Ok` is the unaligned, tuples-only output.
    pub fn sql(&self, name: &str, sql: &str) -> Result<String> {
        self.try_sql(name, sql).map_err(|e| anyhow::anyhow!("{name}: {e}"))
    }

    /// Like [`PgCluster::sql`], with the error text (tests assert on failures).
    pub fn try_sql(&self, name: &str, sql: &str) -> std::result::Result<String, String> {
        let node = self.node(name);
        let host = if self.sql_via_socket { self.dir.path().join("sock").display().to_string() } else { "127.0.0.1".into() };
        let out = Command::new(self.bin_dir.join("psql"))
            .arg(format!("host={host} port={} user=postgres dbname=postgres connect_timeout=3", node.port))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGOPTIONS", "-c statement_timeout=10000")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The node's server log (for failure messages).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(&self.node(name).log_file).unwrap_or_default()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.nodes.iter().filter_map(|n| postmaster_pid(&n.data_dir)).collect();
        for pid in &pids {
            // SIGQUIT: immediate shutdown, the postmaster takes its children with it.
            signal(*pid, "QUIT");
        }
        for pid in pids {
            if wait_gone(pid, Duration::from_secs(5)).is_err() {
                signal(pid, "KILL");
                let _ = wait_gone(pid, Duration::from_secs(5));
            }
        }
    }
}

/// The PID in `postmaster.pid`, if that process is alive.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    alive(pid).then_some(pid)
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

fn wait_gone(pid: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            bail!("process {pid} still alive after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
