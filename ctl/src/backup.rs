//! `pgdctl backup`, `backups`, `backup-policy` and `restore` (docs/backups.md): the agents run
//! barman-cloud; pgdctl asks them through their API and keeps the policy in `config#backup`.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use pgdaemon_core::agent::backup_schedule::backup_source;
use pgdaemon_core::backup::{BackupConfig, RestoreSource};
use pgdaemon_core::{ClusterView, Store};
use serde_json::{json, Value};

use crate::maintenance::ApiOpts;
use crate::output::{emit, FormatArgs};
use crate::CtlError;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The member to back up (default: the least lagging streaming replica, else the primary).
    #[arg(long)]
    pub member: Option<String>,
    /// Seconds to wait for the backup to finish.
    #[arg(long, default_value_t = 3600.0, value_parser = crate::parse_positive_secs)]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct BackupsArgs {
    /// List another cluster's backups in the same archive (a restore's source).
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub output: FormatArgs,
}

#[derive(Debug, Args)]
pub struct BackupPolicyArgs {
    /// Take a base backup when the newest is this many seconds old (0: no schedule).
    #[arg(long)]
    pub schedule_interval_s: Option<u64>,
    /// Keep at most this many backups (0: no cap by count).
    #[arg(long)]
    pub retention_count: Option<u32>,
    /// Keep what recovery to any moment of the last this many days needs (0: no cap by age).
    #[arg(long)]
    pub retention_days: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The cluster whose backup and archive to restore (`--cluster` names the new one).
    #[arg(long)]
    pub from: String,
    /// A backup id or name (default: the newest that ends before the target).
    #[arg(long)]
    pub backup: Option<String>,
    /// Replay up to this UTC time ("2026-12-07 09:30:00+00"); default: the end of the archive.
    #[arg(long, conflicts_with_all = ["lsn", "restore_point"])]
    pub time: Option<String>,
    /// Replay up to this LSN.
    #[arg(long, conflicts_with = "restore_point")]
    pub lsn: Option<String>,
    /// Replay up to this named restore point (pg_create_restore_point).
    #[arg(long)]
    pub restore_point: Option<String>,
}

/// Takes a base backup now through a member's agent and waits for it.
pub async fn backup(
    store: &dyn Store,
    cluster: &str,
    api: &ApiOpts,
    args: BackupArgs,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let view = crate::view_with_record(store, cluster).await?;
    let member = match args.member {
        Some(m) => m,
        None => {
            let stale_after = 2 * view.cluster.as_ref().map_or(4_000, |c| c.config.renew_interval_ms) + 1_000;
            backup_source(&view, crate::table::now_ms(), stale_after)
                .map_err(|why| CtlError::Refused(format!("no member to back up: {why}")))?
        }
    };
    let m = view.members.get(&member).ok_or_else(|| CtlError::Usage(format!("no member {member} in cluster {cluster}")))?;
    let started = Instant::now();
    let client = api.client(Duration::from_secs_f64(args.timeout))?;
    let info = client.call(&member, &m.api_url, "/backup", &json!({})).await.map_err(|e| CtlError::Refused(e.to_string()))?;
    writeln!(
        out,
        "ok: backup {} taken on {member} in {:.1}s ({} to {}, timeline {})",
        info["backup_id"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64(),
        info["begin_xlog"].as_str().unwrap_or("?"),
        info["end_xlog"].as_str().unwrap_or("?"),
        info["timeline"]
    )?;
    Ok(())
}

/// Lists the backups through the first member whose agent answers.
pub async fn backups(
    store: &dyn Store,
    cluster: &str,
    api: &ApiOpts,
    args: BackupsArgs,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let view = crate::view_with_record(store, cluster).await?;
    let list = list_backups(&view, api, args.from.as_deref()).await?;
    emit(out, args.output.format(), &list, || Ok(table(&list)))
}

async fn list_backups(view: &ClusterView, api: &ApiOpts, from: Option<&str>) -> Result<Value, CtlError> {
    let path = match from {
        Some(c) => {
            pgdaemon_core::keys::validate_cluster_name(c).map_err(CtlError::Usage)?;
            format!("/backups?cluster={c}")
        }
        None => "/backups".into(),
    };
    let client = api.client(Duration::from_secs(120))?;
    let mut failures = Vec::new();
    for m in view.members.values() {
        match client.call_get(&m.name, &m.api_url, &path).await {
            Ok(list) => return Ok(list),
            Err(e) => failures.push(format!("{}: {e}", m.name)),
        }
    }
    Err(CtlError::Unavailable(format!("no agent listed the backups: {}", failures.join("; "))))
}

fn table(list: &Value) -> String {
    let mut t = String::from("BACKUP ID        NAME                      STATUS  BEGIN                END                  BEGIN LSN    END LSN      TL\n");
    for b in list.as_array().into_iter().flatten() {
        let s = |k: &str| b[k].as_str().unwrap_or("-").to_string();
        t.push_str(&format!(
            "{:<16} {:<25} {:<7} {:<20} {:<20} {:<12} {:<12} {}\n",
            s("backup_id"),
            s("backup_name"),
            s("status"),
            s("begin_time"),
            s("end_time"),
            s("begin_xlog"),
            s("end_xlog"),
            b["timeline"]
        ));
    }
    t
}

/// Sets the schedule and retention in `config#backup` (compare-and-set; unnamed settings kept).
pub async fn policy(store: &dyn Store, cluster: &str, args: BackupPolicyArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let view = crate::view_with_record(store, cluster).await?;
    let mut config = view.backup.clone().unwrap_or_default();
    config.schedule_interval_s = args.schedule_interval_s.unwrap_or(config.schedule_interval_s);
    config.retention_count = args.retention_count.unwrap_or(config.retention_count);
    config.retention_days = args.retention_days.unwrap_or(config.retention_days);
    config.validate().map_err(CtlError::Usage)?;
    let stored = store.write_backup_config(cluster, view.backup.as_ref().map(|b| b.version), &config).await?;
    writeln!(out, "{}", serde_json::to_string(&stored).map_err(anyhow::Error::from)?)?;
    Ok(())
}

/// Asks for a new cluster `cluster` restored from `--from`'s backup: writes the restore source
/// into its `config#backup`; its agents (with `[bootstrap] enabled` and `[archive]`) then
/// bootstrap from it. Refused when the cluster already has a record or a member with data.
pub async fn restore(store: &dyn Store, cluster: &str, args: RestoreArgs, out: &mut impl Write) -> Result<(), CtlError> {
    let source = RestoreSource {
        cluster: args.from.clone(),
        backup_id: args.backup,
        target_time: args.time,
        target_lsn: args.lsn,
        target_name: args.restore_point,
    };
    source.validate().map_err(CtlError::Usage)?;
    if args.from == cluster {
        return Err(CtlError::Usage("restore into a new cluster: --cluster must differ from --from".into()));
    }
    let view = store.read_view(cluster).await?;
    if view.cluster.is_some() {
        return Err(CtlError::Refused(format!("cluster {cluster} exists (it has a record); restore creates a new one")));
    }
    let config = BackupConfig { restore: Some(source.clone()), ..view.backup.clone().unwrap_or_default() };
    store.write_backup_config(cluster, view.backup.as_ref().map(|b| b.version), &config).await?;
    let target = source.recovery_settings().into_iter().skip(1).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
    writeln!(
        out,
        "ok: cluster {cluster} will be restored from {} ({}; {}) by the first of its agents to bootstrap",
        args.from,
        source.backup_id.as_deref().unwrap_or("newest backup before the target"),
        if target.is_empty() { "to the end of the archive".to_string() } else { target.join(", ") }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{ClusterRecord, DynamicConfig, MemoryStore};

    fn restore_args(from: &str, time: Option<&str>) -> RestoreArgs {
        RestoreArgs { from: from.into(), backup: None, time: time.map(str::to_string), lsn: None, restore_point: None }
    }

    #[tokio::test]
    async fn restore_asks_for_a_new_cluster_and_bad_targets_change_nothing() {
        let store = MemoryStore::new();
        for (cluster, args) in [
            ("new", restore_args("old", Some("yesterday"))),
            ("new", restore_args("old", Some("2026-12-07 09:30:00+02"))),
            ("new", restore_args("o/ld", None)),
            ("old", restore_args("old", None)),
        ] {
            let e = restore(&store, cluster, args, &mut Vec::new()).await.unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
        assert!(store.read_view("new").await.unwrap().backup.is_none(), "nothing written");
        let mut out = Vec::new();
        restore(&store, "new", restore_args("old", Some("2026-12-07 09:30:00.5+00")), &mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("restored from old") && text.contains("recovery_target_time=2026-12-07 09:30:00.5+00"), "{text}");
        let stored = store.read_view("new").await.unwrap().backup.unwrap();
        assert_eq!(stored.restore.unwrap().target_time.as_deref(), Some("2026-12-07 09:30:00.5+00"));
        // Once the cluster exists, a restore into it is refused.
        store.write_cluster("new", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        let e = restore(&store, "new", restore_args("old", None), &mut Vec::new()).await.unwrap_err();
        assert!(e.exit_code() == 1 && e.to_string().contains("exists"), "{e}");
    }

    #[tokio::test]
    async fn the_policy_is_validated_and_keeps_unnamed_settings() {
        let store = MemoryStore::new();
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        let set = |s, c| BackupPolicyArgs { schedule_interval_s: s, retention_count: c, retention_days: None };
        policy(&store, "c", set(Some(3600), Some(3)), &mut Vec::new()).await.unwrap();
        policy(&store, "c", set(None, Some(5)), &mut Vec::new()).await.unwrap();
        let e = policy(&store, "c", set(Some(5), None), &mut Vec::new()).await.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let b = store.read_view("c").await.unwrap().backup.unwrap();
        assert_eq!((b.schedule_interval_s, b.retention_count, b.version), (3600, 5, 2));
    }
}
