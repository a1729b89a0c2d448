//! `pgdctl clusters` and `pgdctl unregister`: the fleet registry a fleet coordinator evaluates
//! (lambda/src/fleet.rs). The agents register their cluster; an operator removes a cluster that
//! was taken down, so the coordinator stops evaluating it.

use std::io::Write;

use futures::StreamExt;
use pgdaemon_core::Store;
use serde_json::json;

use crate::output::{emit, Format};
use crate::table::now_ms;
use crate::CtlError;

/// Cluster records read at once for the fleet table.
const READ_CONCURRENCY: usize = 16;

/// A member that beat this recently (by its own wall clock, shown to humans) counts as running
/// for [`unregister`]'s guard.
const RECENT_MS: u64 = 10 * 60 * 1000;

/// Every registered cluster with its primary, term, member count and pause state.
pub async fn clusters(store: &dyn Store, format: Format, out: &mut impl Write) -> Result<(), CtlError> {
    let names = store.list_clusters().await?;
    let mut rows: Vec<serde_json::Value> = futures::stream::iter(names)
        .map(|name| async move {
            match store.read_view(&name).await {
                Ok(view) => json!({
                    "cluster": name,
                    "primary": view.cluster.as_ref().and_then(|c| c.primary.clone()),
                    "term": view.cluster.as_ref().map(|c| c.term),
                    "paused": view.cluster.as_ref().map(|c| c.paused),
                    "members": view.members.len(),
                }),
                Err(e) => json!({ "cluster": name, "error": e.to_string() }),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    rows.sort_by(|a, b| a["cluster"].as_str().cmp(&b["cluster"].as_str()));
    if format != Format::Table {
        return emit(out, format, &rows, || unreachable!("not a table"));
    }
    writeln!(out, "{:<32} {:<20} {:>6} {:>7} {:>6}", "CLUSTER", "PRIMARY", "TERM", "MEMBERS", "PAUSED")?;
    for r in &rows {
        let text = |k: &str| r[k].as_str().map_or_else(|| r[k].to_string(), str::to_string);
        match r.get("error") {
            Some(e) => writeln!(out, "{:<32} unreadable: {}", text("cluster"), e.as_str().unwrap_or_default())?,
            None => writeln!(
                out,
                "{:<32} {:<20} {:>6} {:>7} {:>6}",
                text("cluster"),
                r["primary"].as_str().unwrap_or("-"),
                r["term"].as_u64().map_or("-".into(), |t| t.to_string()),
                text("members"),
                r["paused"].as_bool().map_or("-", |p| if p { "yes" } else { "no" }),
            )?,
        }
    }
    writeln!(out, "{} registered", rows.len())?;
    Ok(())
}

/// Removes `cluster` from the registry. Refused while a member beat in the last ten minutes
/// (its agents would register it again at their next start, and a coordinator that finds it
/// only through the registry would stop failing it over), unless `force`.
pub async fn unregister(store: &dyn Store, cluster: &str, force: bool, out: &mut impl Write) -> Result<(), CtlError> {
    if !store.is_registered(cluster).await? {
        return Err(CtlError::Refused(format!("{cluster} is not registered")));
    }
    let view = store.read_view(cluster).await?;
    let now = now_ms();
    let recent: Vec<&str> =
        view.members.values().filter(|m| now.saturating_sub(m.updated_at_ms) < RECENT_MS).map(|m| m.name.as_str()).collect();
    if !recent.is_empty() && !force {
        return Err(CtlError::Refused(format!(
            "{cluster} still has members beating ({}): stop its agents first, or --force to unregister a running cluster (a fleet coordinator then stops evaluating it)",
            recent.join(", ")
        )));
    }
    store.unregister_cluster(cluster).await?;
    writeln!(out, "unregistered {cluster}: fleet coordinators no longer evaluate it (its items are kept)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{ClusterRecord, DynamicConfig, MemberStatus, MemoryStore};

    #[tokio::test]
    async fn the_fleet_table_and_a_guarded_unregister() {
        let store = MemoryStore::new();
        store.write_cluster("prod", None, &ClusterRecord::bootstrap("pg-1", DynamicConfig::default())).await.unwrap();
        let mut m = MemberStatus::new("pg-1");
        m.updated_at_ms = now_ms();
        store.put_member("prod", &m).await.unwrap();
        for c in ["prod", "gone"] {
            store.register_cluster(c, 1).await.unwrap();
        }
        let mut out = Vec::new();
        clusters(&store, Format::Table, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("prod") && text.contains("pg-1") && text.contains("gone") && text.contains("2 registered"),
            "{text}"
        );

        let e = unregister(&store, "prod", false, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, CtlError::Refused(_)) && e.to_string().contains("pg-1"), "{e}");
        let e = unregister(&store, "never", false, &mut Vec::new()).await.unwrap_err();
        assert!(e.to_string().contains("not registered"), "{e}");
        assert_eq!(store.list_clusters().await.unwrap(), vec!["gone", "prod"], "refusals change nothing");
        unregister(&store, "gone", false, &mut Vec::new()).await.unwrap();
        unregister(&store, "prod", true, &mut Vec::new()).await.unwrap();
        assert!(store.list_clusters().await.unwrap().is_empty());
        assert!(store.read_cluster("prod").await.unwrap().is_some(), "the cluster's items are kept");
    }
}
