//! Base backups, the WAL archive and restores (docs/backups.md): the cluster-wide `config#backup`
//! item, its checks, and the pure choices made from it (which member takes the scheduled backup,
//! and when). Running barman-cloud is the agent's part.

use serde::{Deserialize, Serialize};

use crate::model::{ClusterView, Role};

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
            if time.is_empty() || !time.chars().all(|c| c.is_ascii_alphanumeric() || " :.+-_/".contains(c)) {
                return Err(format!("restore.target_time {time:?} is not a timestamp such as 2026-12-07 09:30:00+00"));
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

/// The member that takes a backup now: the healthy replica streaming with the least lag (the
/// primary keeps its I/O for clients), else the primary. `None` when no member is fit, with the
/// reason. Every agent computes it from its own view; two that disagree take one backup each,
/// which retention absorbs.
pub fn backup_source(view: &ClusterView, now_ms: u64, stale_after_ms: u64) -> Result<String, String> {
    let fresh = |updated: u64| now_ms.saturating_sub(updated) <= stale_after_ms;
    let primary = view.cluster.as_ref().and_then(|c| c.primary.as_deref());
    let mut replicas: Vec<_> = view
        .members
        .values()
        .filter(|m| m.role == Role::Replica && m.pg_running && m.streaming && fresh(m.updated_at_ms))
        .filter(|m| Some(m.name.as_str()) != primary)
        .collect();
    replicas.sort_by_key(|m| (m.lag_bytes.unwrap_or(u64::MAX), m.name.clone()));
    if let Some(r) = replicas.first() {
        return Ok(r.name.clone());
    }
    match primary.and_then(|p| view.members.get(p)) {
        Some(p) if p.role == Role::Primary && p.pg_running && fresh(p.updated_at_ms) => Ok(p.name.clone()),
        Some(p) => Err(format!("no replica streams and the primary {} does not report a running primary", p.name)),
        None => Err("no replica streams and no primary is known".into()),
    }
}

/// Whether the schedule asks for a backup: it is on and the newest backup finished at least one
/// interval ago (or there is none).
pub fn backup_due(config: &BackupConfig, newest_end_ms: Option<u64>, now_ms: u64) -> bool {
    config.schedule_interval_s > 0
        && newest_end_ms.is_none_or(|end| now_ms.saturating_sub(end) >= config.schedule_interval_s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterRecord, MemberStatus};
    use crate::DynamicConfig;

    fn member(name: &str, role: Role, lag: u64, updated: u64) -> MemberStatus {
        let mut m = MemberStatus::new(name);
        (m.role, m.pg_running, m.streaming, m.lag_bytes, m.updated_at_ms) =
            (role, true, role == Role::Replica, Some(lag), updated);
        m
    }

    fn view(members: Vec<MemberStatus>) -> ClusterView {
        ClusterView {
            cluster: Some(ClusterRecord::bootstrap("a", DynamicConfig::default())),
            members: members.into_iter().map(|m| (m.name.clone(), m)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_least_lagging_fresh_replica_takes_the_backup_else_the_primary() {
        let v = view(vec![
            member("a", Role::Primary, 0, 100),
            member("b", Role::Replica, 50, 100),
            member("c", Role::Replica, 10, 100),
        ]);
        assert_eq!(backup_source(&v, 100, 10), Ok("c".into()));
        let v = view(vec![
            member("a", Role::Primary, 0, 100),
            member("b", Role::Replica, 50, 100),
            member("c", Role::Replica, 10, 1),
        ]);
        assert_eq!(backup_source(&v, 100, 10), Ok("b".into()), "c's heartbeat is stale");
        let v = view(vec![member("a", Role::Primary, 0, 100)]);
        assert_eq!(backup_source(&v, 100, 10), Ok("a".into()));
        let v = view(vec![member("a", Role::Primary, 0, 1)]);
        assert!(backup_source(&v, 100, 10).unwrap_err().contains("primary a"));
        assert!(backup_source(&ClusterView::default(), 100, 10).is_err());
    }

    #[test]
    fn a_backup_is_due_one_interval_after_the_newest_and_never_without_a_schedule() {
        let c = BackupConfig { schedule_interval_s: 3600, ..Default::default() };
        assert!(backup_due(&c, None, 0));
        assert!(!backup_due(&c, Some(1_000), 3_600_999));
        assert!(backup_due(&c, Some(1_000), 3_601_000));
        assert!(!backup_due(&BackupConfig::default(), None, 0));
    }

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
