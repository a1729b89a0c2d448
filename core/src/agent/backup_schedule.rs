//! Which member takes a scheduled base backup, and when (docs/backups.md): pure choices from
//! the view and `config#backup`; running barman-cloud is the node agent's part.

use crate::backup::BackupConfig;
use crate::model::{ClusterView, Role};

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
}
