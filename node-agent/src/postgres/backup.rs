//! The WAL archive, base backups and restores through barman-cloud (docs/backups.md). barman-cloud
//! (Debian's `barman-cli-cloud`, what CloudNativePG uses) does every S3 call: this module only
//! builds its command lines, runs them as the Postgres user and reads their JSON.
//!
//! Layout: `DESTINATION/CLUSTER/base/<backup id>/` and `DESTINATION/CLUSTER/wals/`, the cluster's
//! name being barman's server name.

use std::time::Duration;

use pgdaemon_core::backup::{ArchiveStatus, RestoreSource};
use pgdaemon_core::pg::{DataDirState, PgError, PrimaryTarget, StopMode};
use serde::{Deserialize, Serialize};

use super::text::{io_err, shell_quote};
use super::{LocalPostgres, Purpose};

/// `[archive]`: where this cluster's WAL and base backups go. Absent: no archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// `s3://BUCKET/PREFIX`; the cluster's name is appended by barman as its server name.
    pub destination: String,
    /// An S3-compatible endpoint (LocalStack, moto, MinIO); absent: AWS's regional endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// WAL compression: `gzip` (default), `bzip2`, `snappy` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How a new replica (and `reinit`) gets its data, first that works wins: `backup` (the
    /// newest base backup plus the archive, sparing the primary) and `basebackup` (pg_basebackup
    /// from the primary), as Patroni's `create_replica_methods`.
    #[serde(default = "default_methods")]
    pub create_replica_methods: Vec<String>,
    /// Give replicas a `restore_command`, so one whose primary no longer has the WAL it needs
    /// reads it from the archive. Off by default: Postgres then also asks the archive for the
    /// next timeline's history at every promotion, one more S3 round trip on the failover path.
    #[serde(default)]
    pub restore_on_replicas: bool,
    /// Bound on one `archive_command` or `restore_command` run (seconds): an unreachable bucket
    /// fails the command within this, it never hangs the archiver or a recovery.
    #[serde(default = "default_command_timeout_s")]
    pub command_timeout_s: u64,
    /// Postgres's `archive_timeout` (seconds): a segment is switched and archived at least this
    /// often while anything is written, which bounds the data the archive alone can lose (its
    /// RPO). Each switch costs one 16 MB segment (compressed to little when mostly empty).
    #[serde(default = "default_archive_timeout_s")]
    pub archive_timeout_s: u64,
    /// How often the agent checks whether a scheduled backup is due and the archive healthy.
    #[serde(default = "default_check_interval_s")]
    pub check_interval_s: u64,
}

fn default_compression() -> String {
    "gzip".into()
}
fn default_methods() -> Vec<String> {
    vec!["basebackup".into()]
}
fn default_command_timeout_s() -> u64 {
    60
}
fn default_archive_timeout_s() -> u64 {
    60
}
fn default_check_interval_s() -> u64 {
    60
}

impl ArchiveConfig {
    /// Value checks; names the key at fault (without the `archive.` prefix).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let bucket = self.destination.strip_prefix("s3://").map(|rest| rest.split('/').next().unwrap_or_default());
        match bucket {
            Some(b) if b.len() >= 3 && b.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c)) => {}
            _ => {
                return Err((
                    "destination",
                    format!("{:?} is not s3://BUCKET[/PREFIX] (bucket: 3+ of a-z 0-9 . -)", self.destination),
                ))
            }
        }
        if self.destination.chars().any(|c| c.is_whitespace() || "'\"\\%".contains(c)) {
            return Err(("destination", "must not contain spaces, quotes, backslashes or %".into()));
        }
        if let Some(url) = &self.endpoint_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.chars().any(|c| c.is_whitespace() || "'\"\\%".contains(c))
            {
                return Err(("endpoint_url", format!("{url:?} is not an http(s) URL")));
            }
        }
        if !["gzip", "bzip2", "snappy", "none"].contains(&self.compression.as_str()) {
            return Err(("compression", format!("{:?}: use gzip, bzip2, snappy or none", self.compression)));
        }
        if self.create_replica_methods.is_empty()
            || self.create_replica_methods.iter().any(|m| m != "backup" && m != "basebackup")
        {
            return Err((
                "create_replica_methods",
                format!("{:?}: a list of \"backup\" and \"basebackup\"", self.create_replica_methods),
            ));
        }
        if self.command_timeout_s == 0 || self.check_interval_s == 0 {
            return Err(("command_timeout_s", "command_timeout_s and check_interval_s must be above 0".into()));
        }
        Ok(())
    }
}

/// One base backup as `barman-cloud-backup-list --format json` describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub backup_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    pub status: String,
    #[serde(default)]
    pub begin_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
    #[serde(default)]
    pub begin_wal: Option<String>,
    #[serde(default)]
    pub end_wal: Option<String>,
    #[serde(default, rename = "begin_xlog")]
    pub begin_lsn: Option<String>,
    #[serde(default, rename = "end_xlog")]
    pub end_lsn: Option<String>,
    #[serde(default)]
    pub timeline: Option<u32>,
}

#[derive(Deserialize)]
struct BackupList {
    backups_list: Vec<BackupInfo>,
}

impl BackupInfo {
    /// `end_time` ("Mon Dec  7 08:51:15 2026", the server's clock, UTC on our hosts) as
    /// "2026-12-07 08:51:15", which sorts and compares like the UTC targets `pgdctl restore` takes.
    pub fn end_utc(&self) -> Option<String> {
        ctime_to_iso(self.end_time.as_deref()?)
    }
}

fn ctime_to_iso(ctime: &str) -> Option<String> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let parts: Vec<&str> = ctime.split_whitespace().collect();
    let [_, month, day, time, year] = parts.as_slice() else { return None };
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let day: u32 = day.parse().ok()?;
    Some(format!("{year}-{month:02}-{day:02} {time}"))
}

/// The newest finished backup that can reach `restore`'s target: named, or ending before the
/// target time or LSN. Times compare as UTC text to the second ("YYYY-MM-DD HH:MM:SS", barman
/// keeps no fraction): a backup ending in the target's second is not taken (it may end after it).
pub fn choose_backup<'a>(backups: &'a [BackupInfo], restore: &RestoreSource) -> Result<&'a BackupInfo, String> {
    let done = backups.iter().filter(|b| b.status == "DONE");
    if let Some(id) = &restore.backup_id {
        return done
            .clone()
            .find(|b| &b.backup_id == id || b.backup_name.as_ref() == Some(id))
            .ok_or_else(|| format!("no finished backup {id:?} of cluster {}", restore.cluster));
    }
    let lsn_before = |b: &BackupInfo, target: &str| -> bool {
        match (b.end_lsn.as_deref().and_then(|l| l.parse::<pgdaemon_core::Lsn>().ok()), target.parse::<pgdaemon_core::Lsn>()) {
            (Some(end), Ok(t)) => end <= t,
            _ => false,
        }
    };
    let usable: Vec<&BackupInfo> = done
        .filter(|b| {
            restore.target_time.as_ref().is_none_or(|t| b.end_utc().is_some_and(|e| e.as_str() < t.get(..19).unwrap_or(t)))
        })
        .filter(|b| restore.target_lsn.as_ref().is_none_or(|t| lsn_before(b, t)))
        .collect();
    // barman's ids are timestamps (YYYYMMDDTHHMMSS): the greatest is the newest.
    usable.into_iter().max_by(|a, b| a.backup_id.cmp(&b.backup_id)).ok_or_else(|| {
        format!("no finished backup of cluster {} ends before the target (list them with `pgdctl backups`)", restore.cluster)
    })
}

/// barman-cloud for one cluster: its command lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Barman {
    pub config: ArchiveConfig,
    /// This cluster's name (barman's server name).
    pub cluster: String,
}

impl Barman {
    fn common(&self) -> Vec<String> {
        match &self.config.endpoint_url {
            Some(url) => vec!["--endpoint-url".into(), url.clone()],
            None => Vec::new(),
        }
    }

    fn compression(&self) -> Vec<String> {
        match self.config.compression.as_str() {
            "gzip" => vec!["--gzip".into()],
            "bzip2" => vec!["--bzip2".into()],
            "snappy" => vec!["--snappy".into()],
            _ => Vec::new(),
        }
    }

    /// A shell command line (`archive_command`, `restore_command`), bounded by `timeout`.
    fn shell(&self, tool: &str, args: Vec<String>) -> String {
        let mut words = vec!["timeout".to_string(), self.config.command_timeout_s.to_string(), tool.to_string()];
        words.extend(args);
        let plain = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "_./:=@%+-".contains(c));
        words.iter().map(|w| if plain(w) { w.clone() } else { shell_quote(w) }).collect::<Vec<_>>().join(" ")
    }

    /// Postgres's `archive_command`: every member archives (archive_mode = always), see
    /// docs/backups.md for why.
    pub fn archive_command(&self) -> String {
        let mut args = self.common();
        args.extend(self.compression());
        args.extend([self.config.destination.clone(), self.cluster.clone(), "%p".into()]);
        self.shell("barman-cloud-wal-archive", args)
    }

    /// Postgres's `restore_command` reading `server`'s archive.
    pub fn restore_command(&self, server: &str) -> String {
        let mut args = self.common();
        args.extend([self.config.destination.clone(), server.into(), "%f".into(), "%p".into()]);
        self.shell("barman-cloud-wal-restore", args)
    }

    /// The settings every start passes when archiving is configured.
    pub fn server_options(&self) -> Vec<(String, String)> {
        let mut options = vec![
            ("archive_mode".to_string(), "always".to_string()),
            ("archive_command".into(), self.archive_command()),
            ("archive_timeout".into(), self.config.archive_timeout_s.to_string()),
        ];
        if self.config.restore_on_replicas {
            options.push(("restore_command".into(), self.restore_command(&self.cluster)));
        }
        options
    }

    /// Arguments of a barman-cloud tool run directly (no shell): common flags, then `rest`.
    fn args(&self, rest: &[&str]) -> Vec<String> {
        let mut args = self.common();
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }
}

/// How long applying one retention policy may take (it deletes a backup's objects and WAL).
const RETENTION_TIMEOUT: Duration = Duration::from_secs(600);

impl LocalPostgres {
    fn barman(&self) -> Result<&Barman, PgError> {
        self.settings.archive.as_ref().ok_or_else(|| PgError::WrongState("no [archive] is configured on this node".into()))
    }

    async fn barman_run(&self, tool: &str, args: Vec<String>, timeout: Duration) -> Result<String, PgError> {
        let mut cmd = self.command(tool);
        cmd.args(args);
        self.run(tool, cmd, timeout).await
    }

    /// `pg_stat_archiver` of the running server, and whether it archives as configured (the
    /// backup fields are left empty).
    pub async fn archiver_status(&self) -> Result<ArchiveStatus, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "SELECT last_archived_wal, (extract(epoch FROM last_archived_time) * 1000)::float8, last_failed_wal, \
                 coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false), \
                 current_setting('archive_mode'), current_setting('archive_command') FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(super::text::query_err)?;
        let b = self.barman()?;
        let (mode, command): (String, String) = (super::col(&row, 4)?, super::col(&row, 5)?);
        Ok(ArchiveStatus {
            last_archived_wal: super::col(&row, 0)?,
            last_archived_ms: super::col::<Option<f64>>(&row, 1)?.map(|ms| ms as u64),
            last_failed_wal: super::col(&row, 2)?,
            failing: super::col(&row, 3)?,
            inactive: mode != "always" || command != b.archive_command(),
            ..ArchiveStatus::default()
        })
    }

    /// A base backup on this server waits for its last WAL segment to be archived (on a
    /// standby that segment completes only when the primary switches to the next one).
    pub async fn backup_waits_for_archive(&self) -> Result<bool, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE wait_event = 'BackupWaitWalArchive')", &[])
            .await
            .map_err(super::text::query_err)?;
        super::col(&row, 0)
    }

    /// On a primary: closes the current WAL segment (so it is archived now) and names it.
    pub async fn switch_wal(&self) -> Result<String, PgError> {
        let client = self.connect().await?;
        let row = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal()) WHERE NOT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| PgError::WrongState(format!("not a primary ({})", super::text::pg_err(&e))))?;
        super::col(&row, 0)
    }

    /// The size of every database, for the backup's event (`None` when Postgres is down).
    pub async fn database_bytes(&self) -> Option<u64> {
        let client = self.connect().await.ok()?;
        let row = client.query_one("SELECT sum(pg_database_size(oid))::int8 FROM pg_database", &[]).await.ok()?;
        row.try_get::<_, i64>(0).ok().and_then(|b| u64::try_from(b).ok())
    }

    /// The finished and failed backups of `server` (this cluster's name, or another's).
    pub async fn list_backups(&self, server: &str) -> Result<Vec<BackupInfo>, PgError> {
        let b = self.barman()?;
        let args = b.args(&["--format", "json", &b.config.destination, server]);
        // Bounded like one archive command: with the bucket down, a replica being created falls
        // back to its next method (pg_basebackup) after this, not minutes later.
        let out = self.barman_run("barman-cloud-backup-list", args, Duration::from_secs(b.config.command_timeout_s)).await?;
        let json = out.lines().find(|l| l.trim_start().starts_with('{')).unwrap_or_default();
        serde_json::from_str::<BackupList>(json).map(|l| l.backups_list).map_err(|e| PgError::Tool {
            tool: "barman-cloud-backup-list".into(),
            output: format!("unexpected output ({e}): {}", super::text::tail(&out)),
        })
    }

    /// Takes a base backup of the running local server (primary or standby) named `name`, and
    /// returns it as listed.
    pub async fn take_backup(&self, name: &str) -> Result<BackupInfo, PgError> {
        let b = self.barman()?;
        let s = &self.settings;
        let port = s.port.to_string();
        let mut args = b.args(&["-h", &s.connect_host, "-p", &port, "-U", &s.superuser, "-d", &s.database]);
        args.extend(["--immediate-checkpoint".into(), "-n".into(), name.into()]);
        args.extend(b.compression().into_iter().filter(|c| c != "--snappy"));
        args.extend([b.config.destination.clone(), b.cluster.clone()]);
        self.barman_run("barman-cloud-backup", args, s.copy_timeout).await?;
        let backups = self.list_backups(&b.cluster).await?;
        backups
            .into_iter()
            .find(|x| x.backup_name.as_deref() == Some(name))
            .ok_or_else(|| PgError::NotVerified(format!("backup {name} finished but is not listed")))
    }

    /// Deletes what the retention policies no longer keep (barman deletes the WAL only those
    /// backups needed with them). Returns each policy's output.
    pub async fn apply_retention(&self, policies: &[String]) -> Result<Vec<String>, PgError> {
        let b = self.barman()?;
        let mut outputs = Vec::new();
        for policy in policies {
            let args = b.args(&["--retention-policy", policy, &b.config.destination, &b.cluster]);
            outputs.push(self.barman_run("barman-cloud-backup-delete", args, RETENTION_TIMEOUT).await?);
        }
        Ok(outputs)
    }

    /// Runs `stop` (a `pg_ctl stop`); once it has taken a second, ends the archive commands it
    /// waits for. A stopping server's archiver makes a last pass over the segments not archived
    /// yet, each tried three times, and with the bucket down every try lasts `command_timeout_s`:
    /// a switchover's demotion or a replica's re-pointing would wait minutes. The other members
    /// archive those same segments (archive_mode = always), and this one retries them at its
    /// next start, so nothing goes missing.
    pub(super) async fn stop_past_the_archiver(
        &self,
        stop: impl std::future::Future<Output = Result<String, PgError>>,
    ) -> Result<String, PgError> {
        if self.settings.archive.is_none() {
            return stop.await;
        }
        let started = std::time::Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                result = &mut stop => return result,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if started.elapsed() >= Duration::from_secs(1) {
                        let commands = crate::process::archive_commands(self.data());
                        if !commands.is_empty() {
                            tracing::warn!(?commands, "ending the archive commands a stopping server waits for (the other members archive the same segments)");
                            commands.iter().for_each(|pid| crate::process::kill(*pid));
                        }
                    }
                }
            }
        }
    }

    /// Downloads `server`'s backup `id` into the (emptied) data directory.
    async fn download_backup(&self, server: &str, id: &str) -> Result<(), PgError> {
        let b = self.barman()?;
        self.clear_data_dir().await?;
        let data = self.data().to_string_lossy().into_owned();
        let args = b.args(&[&b.config.destination, server, id, &data]);
        self.barman_run("barman-cloud-restore", args, self.settings.copy_timeout).await?;
        // A backup taken on a standby carries its signal file: this copy decides its own role.
        for signal in ["standby.signal", "recovery.signal"] {
            let _ = std::fs::remove_file(self.data().join(signal));
        }
        Ok(())
    }

    /// `create_replica_methods`' `basebackup`: a copy of `source` with pg_basebackup.
    pub(super) async fn pg_basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        self.stop_inner(StopMode::Immediate).await?;
        let saved = self.save_own_config();
        self.clear_data_dir().await?;
        // A bootstrap leftover is gone with it: this directory now holds the cluster's database.
        self.remove_marker()?;
        self.ensure_passfile()?;
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D").arg(self.data()).arg("-d").arg(self.conninfo(source, Purpose::Replication)).args([
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]);
        self.run("pg_basebackup", cmd, self.settings.copy_timeout).await?;
        self.restore_own_config(&saved)?;
        self.write_standby_files(source)?;
        self.start_as_standby_verified().await
    }

    /// `create_replica_methods`' `backup`: the newest base backup of this cluster, then the
    /// archive, then streaming from `source`.
    pub(super) async fn clone_from_backup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        let b = self.barman()?.clone();
        let backups = self.list_backups(&b.cluster).await?;
        let latest = RestoreSource { cluster: b.cluster.clone(), ..Default::default() };
        let backup = choose_backup(&backups, &latest).map_err(PgError::WrongState)?.clone();
        self.stop_inner(StopMode::Immediate).await?;
        let saved = self.save_own_config();
        self.download_backup(&b.cluster, &backup.backup_id).await?;
        self.remove_marker()?;
        self.ensure_passfile()?;
        self.restore_own_config(&saved)?;
        self.write_standby_files(source)?;
        tracing::info!(backup = %backup.backup_id, "cloned from the newest base backup; replaying the archive");
        // The archive only for this start: it catches up from the backup, then streams. Once it
        // streams it starts again without: a running standby with a restore_command asks the
        // archive for timeline history at promotion, putting S3 on the failover path.
        self.start_with(&[("restore_command", b.restore_command(&b.cluster))]).await?;
        self.wait_for(Some(true), self.settings.start_timeout).await?;
        self.wait_streaming(self.settings.copy_timeout).await?;
        self.stop_inner(StopMode::Fast).await?;
        self.start_as_standby_verified().await
    }

    /// Waits for the WAL receiver to stream.
    async fn wait_streaming(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let client = self.connect().await?;
            let row = client
                .query_one("SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')", &[])
                .await
                .map_err(super::text::query_err)?;
            if super::col::<bool>(&row, 0)? {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(PgError::Timeout(format!("the replica cloned from a backup did not stream within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Automatic bootstrap from a backup (`pgdctl restore`): downloads it, replays the source's
    /// archive to the target with Postgres on its Unix socket only, lets it promote (a new
    /// timeline) and stops it. The caller holds the initialize lock and has marked the directory.
    pub(super) async fn restore_steps(&self, restore: &RestoreSource) -> Result<(), PgError> {
        let b = self.barman()?.clone();
        let backups = self.list_backups(&restore.cluster).await?;
        let backup = choose_backup(&backups, restore).map_err(PgError::WrongState)?.clone();
        tracing::info!(from = %restore.cluster, backup = %backup.backup_id, ?restore, "restoring a new cluster from a backup");
        self.download_backup(&restore.cluster, &backup.backup_id).await?;
        self.write_access_files()?;
        std::fs::write(self.data().join("recovery.signal"), b"").map_err(io_err)?;
        self.own(&self.data().join("recovery.signal"))?;
        let listen = if self.settings.connect_host.starts_with('/') { String::new() } else { self.settings.connect_host.clone() };
        let mut overrides = vec![("listen_addresses", listen), ("restore_command", b.restore_command(&restore.cluster))];
        overrides.extend(restore.recovery_settings());
        self.start_with(&overrides).await?;
        // Recovery ends by promoting: at the target, or where the archive ends.
        self.wait_for(Some(false), self.settings.copy_timeout).await?;
        // The source's roles came with it: this cluster's replication and rewind passwords.
        self.create_roles().await?;
        self.stop_inner(StopMode::Fast).await?;
        if self.data_state() == DataDirState::Empty {
            return Err(PgError::NotVerified("the restored data directory is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ArchiveConfig {
        toml::from_str("destination = \"s3://bkt/pg\"\nendpoint_url = \"http://127.0.0.1:9\"").unwrap()
    }

    #[test]
    fn commands_are_bounded_quoted_and_name_the_cluster() {
        let b = Barman { config: config(), cluster: "main".into() };
        assert_eq!(
            b.archive_command(),
            "timeout 60 barman-cloud-wal-archive --endpoint-url http://127.0.0.1:9 --gzip s3://bkt/pg main %p"
        );
        assert_eq!(
            b.restore_command("old"),
            "timeout 60 barman-cloud-wal-restore --endpoint-url http://127.0.0.1:9 s3://bkt/pg old %f %p"
        );
        let opts = b.server_options();
        assert_eq!(opts[0], ("archive_mode".into(), "always".into()));
        assert!(!opts.iter().any(|(k, _)| k == "restore_command"), "replicas read the archive only when asked");
        let asked = Barman { config: ArchiveConfig { restore_on_replicas: true, ..config() }, cluster: "main".into() };
        assert!(asked.server_options().contains(&("restore_command".into(), asked.restore_command("main"))));
    }

    #[test]
    fn bad_archive_settings_name_their_key() {
        let bad = |f: fn(&mut ArchiveConfig)| {
            let mut c = config();
            f(&mut c);
            c.validate().unwrap_err().0
        };
        assert!(config().validate().is_ok());
        assert_eq!(bad(|c| c.destination = "bkt/pg".into()), "destination");
        assert_eq!(bad(|c| c.destination = "s3://b".into()), "destination");
        assert_eq!(bad(|c| c.destination = "s3://bkt/a b".into()), "destination");
        assert_eq!(bad(|c| c.endpoint_url = Some("ftp://x".into())), "endpoint_url");
        assert_eq!(bad(|c| c.compression = "zstd".into()), "compression");
        assert_eq!(bad(|c| c.create_replica_methods = vec!["wal-g".into()]), "create_replica_methods");
        assert!(toml::from_str::<ArchiveConfig>("destination = \"s3://bkt\"\nbucket = \"x\"").is_err(), "unknown keys");
    }

    fn backup(id: &str, end: &str, end_lsn: &str) -> BackupInfo {
        BackupInfo {
            backup_id: id.into(),
            backup_name: Some(format!("n-{id}")),
            status: "DONE".into(),
            begin_time: None,
            end_time: Some(end.into()),
            begin_wal: None,
            end_wal: None,
            begin_lsn: None,
            end_lsn: Some(end_lsn.into()),
            timeline: Some(1),
        }
    }

    #[test]
    fn the_newest_backup_ending_before_the_target_is_chosen() {
        let list = vec![
            backup("20261207T080000", "Mon Dec  7 08:00:05 2026", "0/3000000"),
            backup("20261207T090000", "Mon Dec  7 09:00:05 2026", "0/5000000"),
            BackupInfo { status: "FAILED".into(), ..backup("20261207T100000", "Mon Dec  7 10:00:05 2026", "0/7000000") },
        ];
        let r = |f: fn(&mut RestoreSource)| {
            let mut r = RestoreSource { cluster: "main".into(), ..Default::default() };
            f(&mut r);
            choose_backup(&list, &r).map(|b| b.backup_id.clone())
        };
        assert_eq!(r(|_| {}).unwrap(), "20261207T090000", "latest: the newest finished one");
        assert_eq!(r(|r| r.target_time = Some("2026-12-07 08:30:00+00".into())).unwrap(), "20261207T080000");
        assert_eq!(r(|r| r.target_lsn = Some("0/4000000".into())).unwrap(), "20261207T080000");
        assert_eq!(r(|r| r.backup_id = Some("n-20261207T080000".into())).unwrap(), "20261207T080000");
        assert!(r(|r| r.target_time = Some("2026-12-07 07:00:00+00".into())).is_err());
        assert!(r(|r| r.backup_id = Some("20261207T100000".into())).is_err(), "a failed backup is never restored");
        assert_eq!(ctime_to_iso("Mon Dec  7 08:51:15 2026").as_deref(), Some("2026-12-07 08:51:15"));
    }
}
