//! The real [`PgControl`]: tokio-postgres for queries, `pg_ctl`, `pg_rewind` and `pg_basebackup`
//! for everything that changes the server. When the agent runs as root, every Postgres tool runs
//! as the data directory's OS user through `runuser -u <user> --` (they refuse to run as root).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgdaemon_core::pg::{slot_name, DataDirState, PgControl, PgError, PgProbe, PrimaryTarget, StopMode, SyncStandbys};
use pgdaemon_core::{ClusterParameters, Lsn};
use tokio::process::Command;

use crate::process;

mod backup;
mod cluster_conf;
mod init;
mod peers;
mod probe;
mod text;
pub use backup::{choose_backup, ArchiveConfig, BackupInfo, Barman};
pub use init::BootstrapConfig;
pub use peers::{PeerAuth, PeerTls, Purpose};
use text::{conf_quote, io_err, pg_err, query_err, shell_quote, sql_quote, tail, with_settings};
pub use text::{final_position_from_controldata, parse_conninfo};

/// One column of a row: a type or NULL surprise is an error of this call, never a panic (the
/// probe runs in the agent's loop).
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a tokio_postgres::Row, i: usize) -> Result<T, PgError> {
    row.try_get(i).map_err(|e| PgError::Query(format!("unexpected value in column {i}: {e}")))
}

/// How long a start waits for a killed postmaster to be reaped (see `wait_reaped`).
const ZOMBIE_REAP_WAIT: Duration = Duration::from_secs(5);

/// Where the local Postgres lives and how to reach and run it.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// This member's name: its `application_name` and (via [`slot_name`]) its slot on the primary.
    pub member: String,
    /// Directory of `pg_ctl`, `pg_rewind`, `pg_basebackup` (e.g. `/usr/lib/postgresql/15/bin`).
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    /// Local superuser connection: a unix socket directory (e.g. `/var/run/postgresql`) or a
    /// loopback address.
    pub connect_host: String,
    pub port: u16,
    /// Local connections only (Unix socket or loopback, peer or trust authentication).
    pub superuser: String,
    pub database: String,
    /// Roles, passwords (through a passfile) and TLS for streaming, pg_basebackup and pg_rewind.
    pub peers: PeerAuth,
    /// How a new cluster's database is made (automatic bootstrap).
    pub bootstrap: BootstrapConfig,
    /// The WAL archive and base backups (`[archive]`); `None`: none.
    pub archive: Option<Barman>,
    /// OS user to run the Postgres tools as; `None`: the agent's own user. Defaults to `postgres`
    /// when the agent runs as root.
    pub run_as: Option<String>,
    /// Server settings passed at every start (`-c name=value`), e.g. `listen_addresses`. They win
    /// over files that pg_rewind/pg_basebackup copy from another member.
    pub server_options: Vec<(String, String)>,
    /// Server log file for `pg_ctl -l` (must be writable by the run-as user); `None`: discard
    /// pg_ctl's output and rely on `logging_collector`.
    pub log_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub promote_timeout: Duration,
    /// Bound for pg_rewind and pg_basebackup.
    pub copy_timeout: Duration,
}

impl PgSettings {
    /// Defaults for a Debian-style PostgreSQL 15 host.
    pub fn new(member: impl Into<String>, data_dir: impl Into<PathBuf>, port: u16) -> Self {
        PgSettings {
            member: member.into(),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            data_dir: data_dir.into(),
            connect_host: "/var/run/postgresql".into(),
            port,
            superuser: "postgres".into(),
            database: "postgres".into(),
            peers: PeerAuth::default(),
            bootstrap: BootstrapConfig::default(),
            archive: None,
            run_as: if running_as_root() { Some("postgres".into()) } else { None },
            server_options: Vec::new(),
            log_file: None,
            connect_timeout: Duration::from_secs(3),
            start_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            promote_timeout: Duration::from_secs(30),
            copy_timeout: Duration::from_secs(3600),
        }
    }
}

/// The process runs as root (uid 0).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// [`PgControl`] over one local PostgreSQL server.
#[derive(Debug, Clone)]
pub struct LocalPostgres {
    settings: PgSettings,
}

/// PostgreSQL's compiled-in `unix_socket_directories` on Debian and the PGDG packages.
const DEFAULT_SOCKET_DIRECTORY: &str = "/var/run/postgresql";

/// `wal_keep_size` written to `postgresql.auto.conf` unless `[postgres.parameters]` sets one: a
/// backstop to the replication slots, so a rewind or a lagging replica still finds its WAL.
const DEFAULT_WAL_KEEP_SIZE: &str = "256MB";

/// `max_slot_wal_keep_size` written likewise: the most WAL one slot may hold on the primary. A
/// replica further behind loses its slot and is rebuilt by basebackup, rather than the primary
/// filling its disk (Postgres's own default is unlimited). Size it below the WAL volume's free
/// space (docs/security.md, "Replication slots").
const DEFAULT_MAX_SLOT_WAL_KEEP_SIZE: &str = "10GB";

/// Configuration files that belong to this node and that pg_rewind/pg_basebackup overwrite.
const OWN_CONFIG_FILES: [&str; 4] = ["postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf"];

impl LocalPostgres {
    pub fn new(settings: PgSettings) -> Self {
        LocalPostgres { settings }
    }

    pub fn settings(&self) -> &PgSettings {
        &self.settings
    }

    fn data(&self) -> &Path {
        &self.settings.data_dir
    }

    fn data_state(&self) -> DataDirState {
        if !self.data().join("PG_VERSION").exists() {
            DataDirState::Empty
        } else if self.data().join("standby.signal").exists() {
            DataDirState::Standby
        } else {
            DataDirState::Primary
        }
    }

    /// A command for a Postgres tool (or any program) as the run-as user.
    fn command(&self, program: &str) -> Command {
        let path = if program.contains('/') || !self.settings.bin_dir.join(program).exists() {
            PathBuf::from(program)
        } else {
            self.settings.bin_dir.join(program)
        };
        let mut cmd = match &self.settings.run_as {
            Some(user) if running_as_root() => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            _ => Command::new(path),
        };
        cmd.kill_on_drop(true).stdin(Stdio::null());
        cmd
    }

    /// Runs a tool to completion within `timeout`; `Err` carries the tail of its output.
    async fn run(&self, tool: &str, mut cmd: Command, timeout: Duration) -> Result<String, PgError> {
        tracing::debug!(tool, ?cmd, "running");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => return Err(PgError::Timeout(format!("{tool} did not finish within {timeout:?}"))),
            Ok(Err(e)) => return Err(PgError::Tool { tool: tool.into(), output: e.to_string() }),
            Ok(Ok(out)) => out,
        };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if out.status.success() {
            Ok(text)
        } else {
            Err(PgError::Tool { tool: tool.into(), output: format!("{}: {}", out.status, tail(&text)) })
        }
    }

    /// The local superuser connection (socket or loopback; peer or trust authentication).
    async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        let (host, port) = (&self.settings.connect_host, self.settings.port);
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(port)
            .user(&self.settings.superuser)
            .dbname(&self.settings.database)
            .application_name("pgdaemon-agent")
            .connect_timeout(self.settings.connect_timeout);
        let connect = cfg.connect(tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(self.settings.connect_timeout, connect)
            .await
            .map_err(|_| PgError::Timeout(format!("connecting to {host}:{port}")))?
            .map_err(|e| PgError::Query(format!("connect {host}:{port}: {}", pg_err(&e))))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// The postmaster PID that `postmaster.pid` names, if it names one.
    fn lock_file_pid(&self) -> Option<u32> {
        process::lock_file_pid(&self.data().join("postmaster.pid"))
    }

    /// A postmaster runs on the data directory (`pg_ctl status`).
    async fn postmaster_running(&self) -> Result<bool, PgError> {
        if !self.data().join("postmaster.pid").exists() {
            return Ok(false);
        }
        // A killed postmaster whose parent has not reaped it yet is a zombie: `pg_ctl status`
        // (kill 0) calls it running, and the loop would wait start_timeout for it to answer.
        if let Some(pid) = self.lock_file_pid() {
            match process::state(pid) {
                process::State::Gone => return Ok(false),
                process::State::Zombie { parent } => {
                    if parent == std::process::id() {
                        process::reap(pid);
                    }
                    return Ok(false);
                }
                process::State::Alive | process::State::Unknown => {}
            }
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(self.data());
        match self.run("pg_ctl status", cmd, Duration::from_secs(10)).await {
            Ok(_) => Ok(true),
            Err(PgError::Tool { output, .. }) if output.contains("no server running") => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn in_recovery(&self) -> Result<bool, PgError> {
        let client = self.connect().await?;
        let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(query_err)?;
        col(&row, 0)
    }

    /// Waits (bounded) until the server answers with the wanted recovery state.
    async fn wait_for(&self, want_recovery: Option<bool>, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match self.in_recovery().await {
                Ok(r) if want_recovery.is_none_or(|w| w == r) => return Ok(()),
                Ok(r) => last = format!("pg_is_in_recovery() = {r}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(PgError::NotVerified(format!("after {timeout:?}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The connection string to a peer (no password: see postgres::peers).
    fn conninfo(&self, target: &PrimaryTarget, purpose: Purpose) -> String {
        let s = &self.settings;
        s.peers.conninfo(target, purpose, &s.member, &s.superuser, &s.database, &s.data_dir)
    }

    /// Writes the passfile the connection strings name, owned by the run-as user. Called before
    /// every use, so a deleted or changed file is put back.
    pub fn ensure_passfile(&self) -> Result<(), PgError> {
        let owner = match &self.settings.run_as {
            Some(user) if running_as_root() => Some(process::user_ids(user).map_err(PgError::WrongState)?),
            _ => None,
        };
        self.settings.peers.write_passfile(&self.settings.data_dir, &self.settings.superuser, owner)
    }

    /// Sets this node's file ownership to the data directory's owner (we may be root).
    fn own(&self, path: &Path) -> Result<(), PgError> {
        let meta = std::fs::metadata(self.data()).map_err(io_err)?;
        std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).map_err(io_err)
    }

    /// Writes the standby settings into `postgresql.auto.conf` and creates `standby.signal`
    /// (server stopped). The caller has written the passfile `primary_conninfo` names.
    fn write_standby_files(&self, target: &PrimaryTarget) -> Result<(), PgError> {
        let auto = self.data().join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        let mut lines: Vec<String> = old
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                !(t.starts_with("primary_conninfo") || t.starts_with("primary_slot_name"))
            })
            .map(str::to_string)
            .collect();
        lines.push(format!("primary_conninfo = {}", conf_quote(&self.conninfo(target, Purpose::Replication))));
        lines.push(format!("primary_slot_name = {}", conf_quote(&slot_name(&self.settings.member))));
        std::fs::write(&auto, lines.join("\n") + "\n").map_err(io_err)?;
        self.own(&auto)?;
        let signal = self.data().join("standby.signal");
        std::fs::write(&signal, b"").map_err(io_err)?;
        self.own(&signal)
    }

    /// Settings that must be in this node's own files, not only on `pg_ctl`'s command line:
    /// pg_rewind's crash-recovery pass starts the server in single-user mode from the files
    /// alone, and a rewind needs `wal_log_hints` (the target's pg_control records the setting
    /// the server last ran with) and the WAL since the fork point on the source.
    fn persisted_settings(&self) -> Vec<(&'static str, String)> {
        let configured = |name: &str| self.settings.server_options.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        vec![
            ("wal_log_hints", "on".to_string()),
            ("wal_keep_size", configured("wal_keep_size").unwrap_or_else(|| DEFAULT_WAL_KEEP_SIZE.to_string())),
            (
                "max_slot_wal_keep_size",
                configured("max_slot_wal_keep_size").unwrap_or_else(|| DEFAULT_MAX_SLOT_WAL_KEEP_SIZE.to_string()),
            ),
        ]
    }

    /// Writes [`Self::persisted_settings`] into `postgresql.auto.conf` (which `ALTER SYSTEM`
    /// keeps) when they are missing or differ. No-op on an empty data directory.
    fn ensure_persisted_settings(&self) -> Result<(), PgError> {
        if self.data_state() == DataDirState::Empty {
            return Ok(());
        }
        let auto = self.data().join("postgresql.auto.conf");
        let old = std::fs::read_to_string(&auto).unwrap_or_default();
        let new = with_settings(&old, &self.persisted_settings());
        if new != old {
            std::fs::write(&auto, &new).map_err(io_err)?;
            self.own(&auto)?;
        }
        Ok(())
    }

    fn save_own_config(&self) -> Vec<(&'static str, Vec<u8>)> {
        OWN_CONFIG_FILES.iter().filter_map(|f| std::fs::read(self.data().join(f)).ok().map(|b| (*f, b))).collect()
    }

    fn restore_own_config(&self, saved: &[(&'static str, Vec<u8>)]) -> Result<(), PgError> {
        for (name, bytes) in saved {
            let path = self.data().join(name);
            std::fs::write(&path, bytes).map_err(io_err)?;
            self.own(&path)?;
        }
        Ok(())
    }

    /// A CHECKPOINT on the rewind source, so its control file names the latest timeline; through
    /// `psql` with the same connection string as pg_rewind (role, TLS, passfile).
    async fn checkpoint_source(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        let conninfo = format!(
            "{} connect_timeout={}",
            self.conninfo(source, Purpose::Rewind),
            self.settings.connect_timeout.as_secs().max(2)
        );
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"]).arg(conninfo).args(["-c", "CHECKPOINT"]);
        self.run("psql CHECKPOINT", cmd, self.settings.connect_timeout + Duration::from_secs(60)).await.map(|_| ())
    }

    /// Empties (or creates) the data directory, keeping the directory itself and its ownership.
    async fn clear_data_dir(&self) -> Result<(), PgError> {
        let data = self.data().to_path_buf();
        if !data.exists() {
            let mut cmd = self.command("mkdir");
            cmd.arg("-p").arg(&data);
            self.run("mkdir", cmd, Duration::from_secs(10)).await?;
        } else {
            for entry in std::fs::read_dir(&data).map_err(io_err)? {
                let path = entry.map_err(io_err)?.path();
                let result = if path.is_dir() && !path.is_symlink() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                result.map_err(io_err)?;
            }
        }
        let mut cmd = self.command("chmod");
        cmd.arg("0700").arg(&data);
        self.run("chmod", cmd, Duration::from_secs(10)).await.map(|_| ())
    }

    async fn start_inner(&self) -> Result<(), PgError> {
        self.start_with(&[]).await
    }

    /// Starts with `overrides` in place of the same server options.
    async fn start_with(&self, overrides: &[(&str, String)]) -> Result<(), PgError> {
        if self.data_state() == DataDirState::Empty {
            return Err(PgError::WrongState("the data directory is empty".into()));
        }
        if !self.postmaster_running().await? {
            self.wait_reaped().await?;
            self.remove_stale_socket_locks();
            self.ensure_persisted_settings()?;
            let mut opts = format!("-p {}", self.settings.port);
            let kept = self.settings.server_options.iter().filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
            for (k, v) in kept.map(|(k, v)| (k.as_str(), v)).chain(overrides.iter().map(|(k, v)| (*k, v))) {
                opts.push_str(&format!(" -c {}", shell_quote(&format!("{k}={v}"))));
            }
            let mut cmd = self.command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(self.data())
                .arg("-w")
                .arg("-t")
                .arg(self.settings.start_timeout.as_secs().max(1).to_string());
            cmd.arg("-o").arg(opts);
            if let Some(log) = &self.settings.log_file {
                cmd.arg("-l").arg(log);
                self.run("pg_ctl start", cmd, self.settings.start_timeout + Duration::from_secs(5)).await?;
            } else {
                // The postmaster inherits pg_ctl's output: never a pipe we would wait on.
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
                let status = tokio::time::timeout(self.settings.start_timeout + Duration::from_secs(5), cmd.status())
                    .await
                    .map_err(|_| PgError::Timeout("pg_ctl start".into()))?
                    .map_err(io_err)?;
                if !status.success() {
                    return Err(PgError::Tool { tool: "pg_ctl start".into(), output: status.to_string() });
                }
            }
        }
        self.wait_for(None, self.settings.start_timeout).await?;
        if self.settings.archive.is_some() {
            // PostgreSQL 15's checkpointer computes its first sleep while recovery still runs,
            // ignoring archive_timeout until something wakes it (up to checkpoint_timeout after
            // a start): a reload does, so the archive's RPO holds from the first minute.
            if let Err(e) = self.reload_conf().await {
                tracing::warn!(error = %e, "could not reload after the start (archive_timeout may lag until the next checkpoint)");
            }
        }
        Ok(())
    }

    /// Postgres refuses to start while its lock file names a PID that exists, and a killed
    /// postmaster exists as a zombie until its parent (init, usually within a second) reaps it:
    /// wait a few seconds for that, then give up with the reason (the loop hands over).
    async fn wait_reaped(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + ZOMBIE_REAP_WAIT;
        loop {
            let Some(pid) = self.lock_file_pid() else { return self.kill_orphans().await };
            let process::State::Zombie { parent } = process::state(pid) else { return self.kill_orphans().await };
            if Instant::now() >= deadline {
                return Err(PgError::WrongState(format!(
                    "the postmaster (PID {pid}) exited but its parent (PID {parent}) has not reaped it within \
                     {ZOMBIE_REAP_WAIT:?}; postgres cannot start while postmaster.pid names it"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// See [`process::remove_stale_socket_lock`]: the socket directories this server uses.
    fn remove_stale_socket_locks(&self) {
        let configured = self.settings.server_options.iter().rev().find(|(k, _)| k == "unix_socket_directories");
        let dirs = configured.map_or(DEFAULT_SOCKET_DIRECTORY, |(_, v)| v.as_str());
        for dir in dirs.split(',').map(|d| d.trim().trim_matches(['"', '\''])).filter(|d| d.starts_with('/')) {
            if let Some(pid) = process::remove_stale_socket_lock(Path::new(dir), self.settings.port) {
                tracing::warn!(
                    dir,
                    pid,
                    "removed the socket lock of a postmaster that exited (its zombie would block the start)"
                );
            }
        }
    }

    async fn kill_orphans(&self) -> Result<(), PgError> {
        process::kill_orphaned_server_processes(self.data(), ZOMBIE_REAP_WAIT).await.map_err(PgError::WrongState)
    }

    async fn stop_inner(&self, mode: StopMode) -> Result<(), PgError> {
        if self.postmaster_running().await? {
            let m = match mode {
                StopMode::Smart => "smart",
                StopMode::Fast => "fast",
                StopMode::Immediate => "immediate",
            };
            let mut cmd = self.command("pg_ctl");
            cmd.arg("stop").arg("-D").arg(self.data()).arg("-m").arg(m).arg("-w");
            cmd.arg("-t").arg(self.settings.stop_timeout.as_secs().max(1).to_string());
            let stop = self.run("pg_ctl stop", cmd, self.settings.stop_timeout + Duration::from_secs(5));
            if let Err(e) = self.stop_past_the_archiver(stop).await {
                if self.postmaster_running().await? {
                    return Err(e);
                }
            }
        }
        if self.postmaster_running().await? {
            return Err(PgError::NotVerified("a postmaster still runs on the data directory".into()));
        }
        // What comes next (pg_rewind's single-user recovery, a start) needs the shared memory free.
        self.kill_orphans().await
    }

    async fn start_as_standby_verified(&self) -> Result<(), PgError> {
        self.start_inner().await?;
        self.wait_for(Some(true), self.settings.start_timeout).await
    }
}

#[async_trait]
impl PgControl for LocalPostgres {
    async fn probe(&self) -> PgProbe {
        let mut probe = PgProbe::stopped(self.data_state());
        probe.bootstrap_leftover = init::marker_path(self.data()).exists();
        let client = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                probe.error = Some(e.to_string());
                return probe;
            }
        };
        if let Err(e) = self.probe_running(&client, &mut probe).await {
            // Answered but a query failed (starting up, shutting down): report it as not usable.
            probe = PgProbe {
                error: Some(e.to_string()),
                bootstrap_leftover: probe.bootstrap_leftover,
                ..PgProbe::stopped(self.data_state())
            };
        }
        probe
    }

    async fn start(&self) -> Result<(), PgError> {
        self.start_inner().await
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        self.stop_inner(mode).await
    }

    async fn promote(&self) -> Result<(), PgError> {
        let client = self.connect().await.map_err(|e| PgError::WrongState(format!("not running: {e}")))?;
        let recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(query_err)?.get(0);
        if recovery {
            let secs = self.settings.promote_timeout.as_secs().max(1) as i32;
            let done: bool = client.query_one("SELECT pg_promote(true, $1)", &[&secs]).await.map_err(query_err)?.get(0);
            if !done {
                return Err(PgError::NotVerified(format!("pg_promote did not finish within {secs} s")));
            }
        }
        self.wait_for(Some(false), self.settings.promote_timeout).await
    }

    async fn demote(&self) -> Result<(), PgError> {
        match self.stop_inner(StopMode::Fast).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "fast stop failed; stopping immediately");
                self.stop_inner(StopMode::Immediate).await
            }
        }
    }

    async fn final_position(&self) -> Option<Lsn> {
        if self.postmaster_running().await.unwrap_or(true) {
            return None;
        }
        let mut cmd = self.command("pg_controldata");
        // The labels are translated: read them in the C locale.
        cmd.arg(self.data()).env("LC_ALL", "C").env("LANG", "C");
        match self.run("pg_controldata", cmd, Duration::from_secs(10)).await {
            Ok(text) => final_position_from_controldata(&text),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the final WAL position");
                None
            }
        }
    }

    async fn follow(&self, primary: &PrimaryTarget) -> Result<(), PgError> {
        self.ensure_passfile()?;
        let conninfo = self.conninfo(primary, Purpose::Replication);
        let slot = slot_name(&self.settings.member);
        match self.connect().await {
            Ok(client) => {
                let recovery: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(query_err)?.get(0);
                if !recovery {
                    return Err(PgError::WrongState("running as primary: it must be demoted and rewound first".into()));
                }
                // ALTER SYSTEM cannot run in a transaction block: one statement per call.
                client
                    .batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = {}", sql_quote(&conninfo)))
                    .await
                    .map_err(query_err)?;
                client
                    .batch_execute(&format!("ALTER SYSTEM SET primary_slot_name = {}", sql_quote(&slot)))
                    .await
                    .map_err(query_err)?;
                client.batch_execute("SELECT pg_reload_conf()").await.map_err(query_err)?;
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let row = client
                        .query_one("SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name')", &[])
                        .await
                        .map_err(query_err)?;
                    if row.get::<_, String>(0) == conninfo && row.get::<_, String>(1) == slot {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(PgError::NotVerified("the reloaded primary_conninfo did not take effect".into()));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(_) if self.postmaster_running().await? => {
                Err(PgError::WrongState("postgres runs but does not answer yet".into()))
            }
            Err(_) => {
                if self.data_state() == DataDirState::Empty {
                    return Err(PgError::WrongState("the data directory is empty: it needs a basebackup".into()));
                }
                self.write_standby_files(primary)?;
                self.start_as_standby_verified().await
            }
        }
    }

    async fn rewind(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        if self.data_state() == DataDirState::Empty {
            return Err(PgError::WrongState("the data directory is empty: nothing to rewind".into()));
        }
        self.ensure_passfile()?;
        self.checkpoint_source(source).await?;
        self.stop_inner(StopMode::Fast).await?;
        self.ensure_persisted_settings()?;
        let saved = self.save_own_config();
        let src = self.conninfo(source, Purpose::Rewind);
        let mut cmd = self.command("pg_rewind");
        cmd.arg("-D").arg(self.data()).arg(format!("--source-server={src}"));
        let out = self.run("pg_rewind", cmd, self.settings.copy_timeout).await;
        // Whatever happened, this node's own configuration goes back in place.
        let restored = self.restore_own_config(&saved);
        let out = out?;
        restored?;
        tracing::info!(output = %tail(&out), "pg_rewind finished");
        self.write_standby_files(source)?;
        self.start_as_standby_verified().await
    }

    async fn basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        let methods = self.settings.archive.as_ref().map(|b| b.config.create_replica_methods.clone());
        let methods = methods.unwrap_or_else(|| vec!["basebackup".into()]);
        let mut failures = Vec::new();
        for method in &methods {
            let result = match method.as_str() {
                "backup" => self.clone_from_backup(source).await,
                _ => self.pg_basebackup(source).await,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(method = %method, error = %e, "could not create the replica this way");
                    failures.push(format!("{method}: {e}"));
                }
            }
        }
        Err(PgError::Tool { tool: "create replica".into(), output: failures.join("; ") })
    }
    async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError> {
        let client = self.connect().await?;
        let own = slot_name(&self.settings.member);
        let wanted: Vec<String> = members.iter().map(|m| slot_name(m)).filter(|s| *s != own).collect();
        for slot in &wanted {
            client
                .execute(
                    "SELECT pg_create_physical_replication_slot($1::text::name) \
                     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::text::name)",
                    &[slot],
                )
                .await
                .map_err(query_err)?;
        }
        let rows = client.query("SELECT slot_name::text FROM pg_replication_slots", &[]).await.map_err(query_err)?;
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        match wanted.iter().find(|s| !have.contains(s)) {
            Some(missing) => Err(PgError::NotVerified(format!("slot {missing} missing after creation"))),
            None => Ok(()),
        }
    }

    async fn initialize(&self, budget: Duration, restore: Option<&pgdaemon_core::backup::RestoreSource>) -> Result<(), PgError> {
        self.initialize_within(budget, restore).await
    }

    async fn initialized(&self) -> Result<(), PgError> {
        self.remove_marker()
    }

    async fn drop_slots(&self, slots: &[String]) -> Result<(), PgError> {
        let client = self.connect().await?;
        for slot in slots {
            // Only an unused physical slot: a member that came back and streams keeps its slot.
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1::text::name AND slot_type = 'physical' AND NOT active",
                    &[slot],
                )
                .await
                .map_err(query_err)?;
            tracing::info!(slot = %slot, "dropped the replication slot of a departed member");
        }
        let rows = client
            .query("SELECT slot_name::text FROM pg_replication_slots WHERE NOT active AND slot_type = 'physical'", &[])
            .await
            .map_err(query_err)?;
        let left: Vec<String> = rows.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
        match slots.iter().find(|s| left.contains(s)) {
            Some(s) => Err(PgError::NotVerified(format!("slot {s} still present after dropping it"))),
            None => Ok(()),
        }
    }

    async fn set_sync_standbys(&self, names: &SyncStandbys) -> Result<(), PgError> {
        let client = self.connect().await.map_err(|e| PgError::WrongState(format!("not running: {e}")))?;
        // Names are double-quoted identifiers inside the value (SyncStandbys::to_setting), and
        // the value is one SQL string literal: no member name can inject anything.
        let value = names.to_setting();
        client
            .batch_execute(&format!("ALTER SYSTEM SET synchronous_standby_names = {}", sql_quote(&value)))
            .await
            .map_err(query_err)?;
        client.batch_execute("SELECT pg_reload_conf()").await.map_err(query_err)?;
        // The reload is asynchronous: this session sees the new value once it handled SIGHUP.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let row = client.query_one("SELECT current_setting('synchronous_standby_names')", &[]).await.map_err(query_err)?;
            if row.get::<_, String>(0) == value {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgError::NotVerified("the reloaded synchronous_standby_names did not take effect".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn apply_parameters(&self, parameters: &ClusterParameters) -> Result<Option<Vec<String>>, PgError> {
        self.write_cluster_parameters(parameters).await
    }

    async fn reload(&self) -> Result<(), PgError> {
        self.reload_conf().await
    }

    async fn data_dir_bytes(&self) -> Option<u64> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.data_dir_size()).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_position_only_after_a_clean_primary_shutdown() {
        let out = |state: &str, loc: &str| {
            format!(
                "pg_control version number:            1300\nDatabase cluster state:               {state}\n\
                 pg_control last modified:             Sun 22 Nov 2026 05:10:00 AM UTC\n\
                 Latest checkpoint location:           {loc}\nLatest checkpoint's REDO location:    0/3000028\n"
            )
        };
        assert_eq!(final_position_from_controldata(&out("shut down", "0/3025A70")), Some("0/3025A70".parse().unwrap()));
        assert_eq!(final_position_from_controldata(&out("shut down", "1A/FF000028")), Some("1A/FF000028".parse().unwrap()));
        assert_eq!(final_position_from_controldata(&out("in production", "0/3025A70")), None);
        assert_eq!(final_position_from_controldata(&out("shut down in recovery", "0/3025A70")), None);
        assert_eq!(final_position_from_controldata(&out("shut down", "garbage")), None);
        assert_eq!(final_position_from_controldata("Database cluster state: shut down\n"), None);
        assert_eq!(final_position_from_controldata(""), None);
    }

    #[test]
    fn conninfo_round_trips_through_the_parser() {
        let pg = LocalPostgres::new(PgSettings {
            peers: PeerAuth {
                replication_user: "rep".into(),
                replication_password: Some(crate::secrets::Secret::new("p'w\\d")),
                ..Default::default()
            },
            ..PgSettings::new("node-2", "/tmp/x", 5432)
        });
        let target = PrimaryTarget { name: "n1".into(), host: "10.0.0.1".into(), port: 5433 };
        let parsed = parse_conninfo(&pg.conninfo(&target, Purpose::Replication));
        assert_eq!(parsed.host.as_deref(), Some("10.0.0.1"));
        assert_eq!(parsed.port, Some(5433));
        assert_eq!(parsed.application_name.as_deref(), Some("node-2"));
        let unquoted = parse_conninfo("user=x host=h port=1 sslmode=prefer");
        assert_eq!((unquoted.host.as_deref(), unquoted.port), (Some("h"), Some(1)));
        assert!(!format!("{:?}", pg.settings()).contains("p'w"));
    }

    #[test]
    fn persisted_settings_replace_earlier_lines_and_keep_the_rest() {
        let set = [("wal_log_hints", "on".to_string()), ("wal_keep_size", "256MB".to_string())];
        let conf = "# Do not edit\nwal_keep_size = '1GB'\nprimary_conninfo = 'host=x'\n";
        let once = with_settings(conf, &set);
        assert_eq!(once, "# Do not edit\nprimary_conninfo = 'host=x'\nwal_log_hints = 'on'\nwal_keep_size = '256MB'\n");
        assert_eq!(with_settings(&once, &set), once, "idempotent");
        assert_eq!(with_settings("", &set), "wal_log_hints = 'on'\nwal_keep_size = '256MB'\n");
    }

    #[test]
    fn quoting() {
        assert_eq!(sql_quote("a'b"), "'a''b'");
        assert_eq!(conf_quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
