//! Checks of the configuration items beside the cluster record (`config#postgresql`,
//! `config#backup`) and the member states.

use super::{cluster_name, member, Harness};
use crate::keys;
use crate::store::{Store, StoreError};

pub async fn parameters_and_member_states_in_the_view<H: Harness>() {
    use crate::params::{ClusterParameters, MemberState};
    let h = H::start(false).await;
    let s = h.client().await;
    let c = cluster_name("params");
    let mut p = ClusterParameters::default();
    p.parameters.insert("work_mem".into(), "64MB".into());
    let v1 = s.write_parameters(&c, None, &p).await.unwrap();
    assert_eq!(v1.version, 1);
    assert!(s.write_parameters(&c, None, &p).await.unwrap_err().is_conflict(), "create-only");
    assert!(s.write_parameters(&c, Some(7), &p).await.unwrap_err().is_conflict(), "stale version");
    let state = MemberState {
        name: "a".into(),
        parameters_version: 1,
        pending_restart: vec!["shared_buffers".into()],
        ..Default::default()
    };
    s.put_member_state(&c, &state).await.unwrap();
    s.put_member(&c, &member("a", 1)).await.unwrap();
    let view = s.read_view(&c).await.unwrap();
    assert_eq!((view.parameters.as_ref(), view.states.get("a")), (Some(&v1), Some(&state)));
    assert!(view.unreadable.is_empty() && view.cluster.is_none());
    // Unreadable ones are skipped and reported, never failing the view; a state under another
    // member's name is refused.
    h.corrupt(&c, keys::PARAMETERS).await;
    h.put_raw(&c, &keys::state("b"), serde_json::to_value(&state).unwrap()).await;
    let view = s.read_view(&c).await.unwrap();
    assert!(view.parameters.is_none() && view.members.contains_key("a") && view.states.len() == 1);
    assert_eq!(view.unreadable.len(), 2, "{:?}", view.unreadable);
    // Removing a member removes its state too.
    s.remove_member(&c, "a").await.unwrap();
    let view = s.read_view(&c).await.unwrap();
    assert!(view.members.is_empty() && !view.states.contains_key("a"));
    assert!(matches!(s.put_member_state(&c, &MemberState { name: "a/b".into(), ..state }).await, Err(StoreError::Invalid(_))));
}

pub async fn backup_config_in_the_view<H: Harness>() {
    use crate::backup::{BackupConfig, RestoreSource};
    let h = H::start(false).await;
    let s = h.client().await;
    let c = cluster_name("backup");
    let restore =
        RestoreSource { cluster: "old".into(), target_time: Some("2026-12-07 09:30:00+00".into()), ..Default::default() };
    let b = BackupConfig { schedule_interval_s: 3600, retention_count: 2, restore: Some(restore), ..Default::default() };
    let v1 = s.write_backup_config(&c, None, &b).await.unwrap();
    assert_eq!(v1.version, 1);
    assert!(s.write_backup_config(&c, None, &b).await.unwrap_err().is_conflict(), "create-only");
    assert!(s.write_backup_config(&c, Some(7), &b).await.unwrap_err().is_conflict(), "stale version");
    let v2 = s.write_backup_config(&c, Some(1), &BackupConfig { restore: None, ..b }).await.unwrap();
    let view = s.read_view(&c).await.unwrap();
    assert_eq!(view.backup.as_ref(), Some(&v2));
    assert!(view.cluster.is_none() && view.parameters.is_none() && view.unreadable.is_empty());
    // A newer writer's fields are ignored; an unreadable item is skipped and reported.
    let mut newer = serde_json::to_value(&v2).unwrap();
    newer["encryption_key"] = "k".into();
    h.put_raw(&c, keys::BACKUP, newer).await;
    assert_eq!(s.read_view(&c).await.unwrap().backup, Some(v2));
    h.corrupt(&c, keys::BACKUP).await;
    let view = s.read_view(&c).await.unwrap();
    assert!(view.backup.is_none() && view.unreadable.len() == 1, "{:?}", view.unreadable);
    assert!(matches!(s.write_backup_config("bad/name", None, &BackupConfig::default()).await, Err(StoreError::Invalid(_))));
}
