//! The agent's side of backups (docs/backups.md): `POST /backup` and `GET /backups`, the backup
//! schedule kept in `config#backup`, retention after each backup, and the watch on this
//! member's WAL archiving (`pg_stat_archiver`), with events and metrics for each.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgdaemon_core::agent::backup_schedule::{backup_due, backup_source};
use pgdaemon_core::agent::AgentHandle;
use pgdaemon_core::backup::{ArchiveStatus, RestoreSource};
use pgdaemon_core::events::{Event, EventEmitter, EventKind};
use pgdaemon_core::{Clock, DynamicConfig, Store};

use pgdaemon_dcs::agent_client::AgentClient;

use crate::postgres::{choose_backup, BackupInfo, LocalPostgres};

/// How often a replica's backup asks the primary to switch WAL while it waits for the archive.
const NUDGE_EVERY: Duration = Duration::from_secs(5);

/// Why a backup did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("a backup is already running on this member")]
    Busy,
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// Backups and the archive watch of one agent.
pub struct Backups {
    pg: LocalPostgres,
    store: Arc<dyn Store>,
    handle: AgentHandle,
    events: Arc<dyn EventEmitter>,
    clock: Arc<dyn Clock>,
    cluster: String,
    member: String,
    dynamic: DynamicConfig,
    check_interval: Duration,
    /// This member's client of the other agents' API (the primary's `POST /switch-wal`).
    peers: AgentClient,
    busy: tokio::sync::Mutex<()>,
    status: Mutex<ArchiveStatus>,
}

impl Backups {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pg: LocalPostgres,
        store: Arc<dyn Store>,
        handle: AgentHandle,
        events: Arc<dyn EventEmitter>,
        clock: Arc<dyn Clock>,
        cluster: String,
        member: String,
        dynamic: DynamicConfig,
        check_interval: Duration,
        peers: AgentClient,
    ) -> Self {
        Backups {
            pg,
            store,
            handle,
            events,
            clock,
            cluster,
            member,
            dynamic,
            check_interval,
            peers,
            busy: tokio::sync::Mutex::new(()),
            status: Mutex::new(ArchiveStatus::default()),
        }
    }

    /// What the last checks found (published in the member state, which `/metrics` reads).
    pub fn status(&self) -> ArchiveStatus {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn update_status(&self, f: impl FnOnce(&mut ArchiveStatus)) {
        let status = {
            let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut s);
            s.clone()
        };
        self.handle.set_archive_status(Some(status));
    }

    fn emit(&self, kind: EventKind, detail: String) {
        let term = self.handle.snapshot().term;
        let event = Event::new(kind, &self.cluster, self.clock.wall_ms(), detail).member(&self.member).term(term).source("agent");
        self.events.emit(event);
    }

    /// Lists `server`'s backups (this cluster's when `None`).
    pub async fn list(&self, server: Option<&str>) -> Result<Vec<BackupInfo>, String> {
        self.pg.list_backups(server.unwrap_or(&self.cluster)).await.map_err(|e| e.to_string())
    }

    /// Takes a base backup of this member's Postgres now, then applies the retention of
    /// `config#backup`. One at a time per member.
    pub async fn backup_now(&self, why: &str) -> Result<BackupInfo, BackupError> {
        let Ok(_running) = self.busy.try_lock() else { return Err(BackupError::Busy) };
        let name = format!("{}-{}", self.member, self.clock.wall_ms());
        self.emit(EventKind::BackupStarted, format!("base backup {name} ({why})"));
        let started = Instant::now();
        let size = self.pg.database_bytes().await;
        let take = self.pg.take_backup(&name);
        tokio::pin!(take);
        let mut nudged: Option<Instant> = None;
        let taken = loop {
            tokio::select! {
                result = &mut take => break result,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if nudged.is_none_or(|at| at.elapsed() >= NUDGE_EVERY) && self.nudge_primary().await {
                        nudged = Some(Instant::now());
                    }
                }
            }
        };
        let backup = match taken {
            Ok(b) => b,
            Err(e) => {
                self.emit(EventKind::BackupFailed, format!("base backup {name}: {e}"));
                return Err(BackupError::Failed(e.to_string()));
            }
        };
        let took = started.elapsed();
        let size = size.map(|b| format!(", database {} MB", b / (1024 * 1024))).unwrap_or_default();
        self.emit(
            EventKind::BackupFinished,
            format!(
                "base backup {} ({name}) finished in {:.1} s{size}: {} to {}, timeline {}",
                backup.backup_id,
                took.as_secs_f64(),
                backup.begin_lsn.as_deref().unwrap_or("?"),
                backup.end_lsn.as_deref().unwrap_or("?"),
                backup.timeline.unwrap_or(0)
            ),
        );
        let end_ms = self.clock.wall_ms();
        self.update_status(|s| (s.last_backup, s.last_backup_ms) = (Some(backup.backup_id.clone()), Some(end_ms)));
        self.retention().await;
        Ok(backup)
    }

    /// A backup on a replica ends by waiting for its last WAL segment in the archive, which
    /// needs the primary to move to the next segment (with a quiet primary, up to
    /// `archive_timeout`, and a wait over `max_standby_streaming_delay` may be cancelled by
    /// replay): asks the primary's agent to switch now. Whether it asked.
    async fn nudge_primary(&self) -> bool {
        if self.handle.is_leader() || !self.pg.backup_waits_for_archive().await.unwrap_or(false) {
            return false;
        }
        let view = self.handle.snapshot().last_view;
        let primary = view.as_ref().and_then(|v| v.cluster.as_ref()?.primary.as_ref().and_then(|p| v.members.get(p)));
        let Some(p) = primary else { return false };
        match self.peers.call(&p.name, &p.api_url, "/switch-wal", &serde_json::json!({})).await {
            Ok(answer) => {
                tracing::info!(primary = %p.name, ?answer, "asked the primary to switch WAL for this backup's last segment")
            }
            Err(e) => {
                tracing::warn!(primary = %p.name, error = %e, "could not ask the primary to switch WAL; the backup waits for archive_timeout")
            }
        }
        true
    }

    /// `POST /switch-wal`: on the lease holder, closes the current WAL segment.
    pub async fn switch_wal(&self) -> Result<String, BackupError> {
        if !self.handle.is_leader() {
            return Err(BackupError::Refused(format!("{} is not the primary holding the lease", self.member)));
        }
        self.pg.switch_wal().await.map_err(|e| BackupError::Failed(e.to_string()))
    }

    /// Deletes what `config#backup`'s retention no longer keeps; a failure is an event, the
    /// backup stands.
    async fn retention(&self) {
        let policies = match self.store.read_view(&self.cluster).await {
            Ok(view) => view.backup.map(|b| b.retention_policies()).unwrap_or_default(),
            Err(e) => {
                self.emit(EventKind::BackupFailed, format!("retention not applied: reading config#backup: {e}"));
                return;
            }
        };
        if policies.is_empty() {
            return;
        }
        match self.pg.apply_retention(&policies).await {
            Ok(_) => tracing::info!(?policies, "retention applied"),
            Err(e) => self.emit(EventKind::BackupFailed, format!("retention {policies:?} failed: {e}")),
        }
    }

    /// Reads `pg_stat_archiver` and reports a change of health as an event.
    async fn check_archive(&self) {
        let Ok(a) = self.pg.archiver_status().await else { return };
        let before = self.status();
        // The archiver's part is read here; the newest backup stays what the schedule last saw.
        self.update_status(|s| {
            *s = ArchiveStatus { last_backup: s.last_backup.take(), last_backup_ms: s.last_backup_ms, ..a.clone() }
        });
        if a.inactive && !before.inactive {
            self.emit(
                EventKind::ArchiveFailing,
                "the running server does not archive as [archive] says (started before it was set): restart it \
                 (`pgdctl restart MEMBER`)"
                    .into(),
            );
        }
        match (before.failing, a.failing) {
            (false, true) => self.emit(
                EventKind::ArchiveFailing,
                format!(
                    "archive_command failed for {} (last archived: {}); WAL is kept locally until it succeeds",
                    a.last_failed_wal.as_deref().unwrap_or("?"),
                    a.last_archived_wal.as_deref().unwrap_or("none")
                ),
            ),
            (true, false) => self
                .emit(EventKind::ArchiveRecovered, format!("archived {} again", a.last_archived_wal.as_deref().unwrap_or("?"))),
            _ => {}
        }
    }

    /// Takes the scheduled backup when it is due and this member is the one to take it.
    async fn check_schedule(&self) -> Result<(), String> {
        // The loop's own last read (at most a probe interval old): no store read of its own.
        let Some(view) = self.handle.snapshot().last_view else { return Ok(()) };
        let Some(config) = view.backup.clone().filter(|b| b.schedule_interval_s > 0) else { return Ok(()) };
        let now = self.clock.wall_ms();
        let stale_after = 2 * self.dynamic.renew_interval_ms + self.dynamic.probe_interval_ms;
        if backup_source(&view, now, stale_after).ok().as_deref() != Some(self.member.as_str()) {
            return Ok(());
        }
        let backups = self.list(None).await?;
        let newest = choose_backup(&backups, &RestoreSource { cluster: self.cluster.clone(), ..Default::default() }).ok();
        let newest_end = newest.as_ref().and_then(|b| b.end_utc()).and_then(|t| utc_text_to_ms(&t));
        if let Some(b) = &newest {
            self.update_status(|s| (s.last_backup, s.last_backup_ms) = (Some(b.backup_id.clone()), newest_end));
        }
        if backup_due(&config, newest_end, now) {
            self.backup_now("scheduled").await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The background task: the archive watch and the schedule, every check interval.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.check_archive().await;
            if let Err(e) = self.check_schedule().await {
                tracing::warn!(error = %e, "backup schedule check");
            }
            tokio::time::sleep(self.check_interval).await;
        }
    }
}

/// "YYYY-MM-DD HH:MM:SS" (UTC) as ms since the epoch.
fn utc_text_to_ms(text: &str) -> Option<u64> {
    let (date, time) = text.split_once(' ')?;
    let d: Vec<i64> = date.split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else { return None };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000).max(0)).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_text_becomes_epoch_ms() {
        assert_eq!(super::utc_text_to_ms("1970-01-01 00:00:01"), Some(1000));
        assert_eq!(super::utc_text_to_ms("2026-12-07 08:51:15"), Some(1_796_633_475_000));
        assert_eq!(super::utc_text_to_ms("nope"), None);
    }
}
