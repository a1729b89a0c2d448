//! Base backups, the WAL archive and restores (docs/backups.md): the cluster-wide `config#backup`
//! item, its checks, and the pure choices made from it (which member takes the scheduled backup,
//! and when). Running barman-cloud is the agent's part.

use serde::{Deserialize, Serialize};

/// The `config#backup` item: the backup schedule and retention, and for a cluster that does not
/// exist yet, the backup it is to be restored from. Its own item (not a field of the cluster
/// record) for the reason `config#postgresql` is: every release's coordinator rewrites the
/// cluster record through its own struct and would drop a setting it does not know.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackupConfig {
    /// A base backup is due once the newest one finished this long ago (0: no schedule; `pgdctl
    /// backup` still takes one).
    #[serde(default)]
    pub schedule_interval_s: u64,
    /// Keep at most this many backups (barman's `REDUNDANCY`; 0: no cap by count).
    #[serde(default)]
    pub retention_count: u32,
    /// Keep what point-in-time recovery to any moment of the last this many days needs (barman's
    /// `RECOVERY WINDOW`; 0: no cap by age). With both set, each cap deletes what it would alone.
    #[serde(default)]
    pub retention_days: u32,
    /// Set by `pgdctl restore` before a new cluster exists: its first member restores this
    /// instead of running initdb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSource>,
    /// Stamped by the store on every write (compare-and-set).
    pub version: u64,
}

/// Where a new cluster's database comes from, and how far recovery replays.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestoreSource {
    /// The cluster whose archive holds the backup (barman's server name).
    pub cluster: String,
    /// A backup id or name; `None`: the newest backup that finished before the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Replay stops here; `None` everywhere: the end of the archive (latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_name: Option<String>,
}

impl BackupConfig {
    /// Value checks, naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.schedule_interval_s != 0 && self.schedule_interval_s < 60 {
            return Err(format!("schedule_interval_s is {}; use 0 (off) or at least 60", self.schedule_interval_s));
        }
        if let Some(r) = &self.restore {
            r.validate()?;
        }
        Ok(())
    }

    /// barman's retention policies, in the order they are applied.
    pub fn retention_policies(&self) -> Vec<String> {
        let mut policies = Vec::new();
        if self.retention_count > 0 {
            policies.push(format!("REDUNDANCY {}", self.retention_count));
        }
        if self.retention_days > 0 {
            policies.push(format!("RECOVERY WINDOW OF {} DAYS", self.retention_days));
        }
        policies
    }
}

impl RestoreSource {
    pub fn validate(&self) -> Result<(), String> {
        crate::keys::validate_cluster_name(&self.cluster).map_err(|e| format!("restore.cluster: {e}"))?;
        let targets = [&self.target_time, &self.target_lsn, &self.target_name].iter().filter(|t| t.is_some()).count();
        if targets > 1 {
            return Err("restore: give at most one of target_time, target_lsn, target_name".into());
        }
        if let Some(lsn) = &self.target_lsn {
            lsn.parse::<crate::Lsn>().map_err(|_| format!("restore.target_lsn {lsn:?} is not an LSN such as 0/3000060"))?;
        }
        if let Some(time) = &self.target_time {
            // UTC only: the chosen backup must end before it, compared with barman's UTC times.
            let shape = time.len() >= 19
                && time.char_indices().take(19).all(|(i, c)| match i {
                    4 | 7 => c == '-',
                    10 => c == ' ',
                    13 | 16 => c == ':',
                    _ => c.is_ascii_digit(),
                })
                && time[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit()).trim_end_matches("+00").is_empty();
            if !shape {
                return Err(format!("restore.target_time {time:?} is not a UTC time such as 2026-12-07 09:30:00[.123]+00"));
            }
        }
        let plain = |s: &String| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
        if let Some(bad) = self.target_name.iter().chain(&self.backup_id).find(|s| !plain(s)) {
            return Err(format!("restore: {bad:?} is not a backup id or restore point name (letters, digits, . _ - :)"));
        }
        Ok(())
    }

    /// The recovery settings that make Postgres replay to the target and then promote.
    pub fn recovery_settings(&self) -> Vec<(&'static str, String)> {
        let mut settings = vec![("recovery_target_timeline", "latest".to_string())];
        if let Some(t) = &self.target_time {
            settings.push(("recovery_target_time", t.clone()));
        } else if let Some(l) = &self.target_lsn {
            settings.push(("recovery_target_lsn", l.clone()));
        } else if let Some(n) = &self.target_name {
            settings.push(("recovery_target_name", n.clone()));
        }
        if settings.len() > 1 {
            settings.push(("recovery_target_action", "promote".into()));
        }
        settings
    }
}

/// One member's view of the WAL archive (`pg_stat_archiver`) and of the newest backup, in its
/// member state. Times are ms since the epoch; they change only when a segment is archived or a
/// backup finishes, so the state item is not rewritten while nothing happens.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArchiveStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_wal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_ms: Option<u64>,
    /// The last attempt failed after the last success: archiving is failing now.
    #[serde(default)]
    pub failing: bool,
    /// The running server does not archive as configured (started before `[archive]` was set,
    /// or by hand): it does from its next start (`pgdctl restart MEMBER`).
    #[serde(default)]
    pub inactive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_wal: Option<String>,
    /// The newest finished base backup of the cluster (id, end time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_and_targets_become_recovery_settings() {
        assert!(BackupConfig { schedule_interval_s: 5, ..Default::default() }.validate().is_err());
        let r = |f: fn(&mut RestoreSource)| {
            let mut r = RestoreSource { cluster: "main".into(), ..Default::default() };
            f(&mut r);
            r
        };
        assert!(r(|r| r.cluster = "a/b".into()).validate().is_err());
        assert!(r(|r| (r.target_lsn, r.target_name) = (Some("0/1".into()), Some("x".into()))).validate().is_err());
        assert!(r(|r| r.target_lsn = Some("nope".into())).validate().is_err());
        assert!(r(|r| r.target_time = Some("2026-12-07'; DROP".into())).validate().is_err());
        assert!(r(|r| r.backup_id = Some("../x y".into())).validate().is_err());
        assert_eq!(r(|_| {}).recovery_settings(), vec![("recovery_target_timeline", "latest".to_string())]);
        let t = r(|r| r.target_time = Some("2026-12-07 09:30:00+00".into()));
        assert!(t.validate().is_ok());
        assert_eq!(
            t.recovery_settings()[1..],
            [("recovery_target_time", "2026-12-07 09:30:00+00".to_string()), ("recovery_target_action", "promote".to_string())]
        );
        let both = BackupConfig { retention_count: 3, retention_days: 7, ..Default::default() };
        assert_eq!(both.retention_policies(), ["REDUNDANCY 3", "RECOVERY WINDOW OF 7 DAYS"]);
    }
}
