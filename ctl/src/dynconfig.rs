//! `show-config` / `edit-config`: the dynamic configuration inside the cluster record.
//! Edits are validated with [`DynamicConfig::validate`] and written by compare-and-set, re-applied
//! to the freshest record on a conflict so a concurrent coordinator step is never overwritten.

use std::io::Write;

use pgdaemon_core::{DynamicConfig, Store, StoreError};

use crate::CtlError;

const CAS_ATTEMPTS: usize = 8;

/// Applies `key=value` settings to `base`. Values are read as TOML (`3000`, `true`, `"on"`) and,
/// when they are not valid TOML, as plain strings (`synchronous_mode=on`). Unknown keys, wrong
/// types and timings that fail validation are usage errors naming the key.
pub fn apply_sets(base: &DynamicConfig, sets: &[String]) -> Result<DynamicConfig, CtlError> {
    let cfg = apply_unvalidated(base, sets)?;
    cfg.validate().map_err(|e| CtlError::Usage(e.to_string()))?;
    Ok(cfg)
}

/// Syntax, key names and value types only.
fn apply_unvalidated(base: &DynamicConfig, sets: &[String]) -> Result<DynamicConfig, CtlError> {
    let mut table = match toml::Value::try_from(base).map_err(anyhow::Error::from)? {
        toml::Value::Table(t) => t,
        _ => unreachable!("a struct serializes to a table"),
    };
    for set in sets {
        let (key, raw) = set.split_once('=').ok_or_else(|| CtlError::Usage(format!("--set {set:?}: expected key=value")))?;
        let key = key.trim();
        if !table.contains_key(key) {
            let known: Vec<&str> = table.keys().map(String::as_str).collect();
            return Err(CtlError::Usage(format!("--set {set:?}: unknown key `{key}` (known: {})", known.join(", "))));
        }
        let raw = raw.trim();
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        table.insert(key.to_string(), value);
    }
    let cfg: DynamicConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| CtlError::Usage(format!("dynamic config: {}", e.message())))?;
    Ok(cfg)
}

/// `key: old -> new` for every changed key.
pub fn diff(old: &DynamicConfig, new: &DynamicConfig) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) = (toml::Value::try_from(old), toml::Value::try_from(new)) else {
        return vec![];
    };
    b.iter()
        .filter(|(k, v)| a.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {} -> {v}", a.get(k).map_or("-".into(), |x| x.to_string())))
        .collect()
}

pub async fn show(store: &dyn Store, cluster: &str, json: bool, out: &mut impl Write) -> Result<(), CtlError> {
    let record = store
        .read_cluster(cluster)
        .await?
        .ok_or_else(|| CtlError::Refused(format!("cluster {cluster} has no record yet: it was never bootstrapped")))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&record.config).map_err(anyhow::Error::from)?)?;
    } else {
        write!(out, "{}", toml::to_string(&record.config).map_err(anyhow::Error::from)?)?;
    }
    Ok(())
}

pub async fn edit(
    store: &dyn Store,
    cluster: &str,
    sets: &[String],
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    // Check the input once before touching the store: bad input changes nothing.
    // (Timings are validated against the stored values they combine with, below.)
    apply_unvalidated(&DynamicConfig::default(), sets)?;
    for _ in 0..CAS_ATTEMPTS {
        let mut record = store
            .read_cluster(cluster)
            .await?
            .ok_or_else(|| CtlError::Refused(format!("cluster {cluster} has no record yet: it was never bootstrapped")))?;
        let new = apply_sets(&record.config, sets)?;
        let changes = diff(&record.config, &new);
        if changes.is_empty() {
            writeln!(out, "no change")?;
            return Ok(());
        }
        if dry_run {
            for c in &changes {
                writeln!(out, "would set {c}")?;
            }
            return Ok(());
        }
        let version = record.version;
        record.config = new;
        match store.write_cluster(cluster, Some(version), &record).await {
            Ok(_) => {
                for c in &changes {
                    writeln!(out, "set {c}")?;
                }
                return Ok(());
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::Refused(format!("the cluster record kept changing; tried {CAS_ATTEMPTS} times")))
}

/// Creates the cluster record (create-only compare-and-set).
pub async fn bootstrap(
    store: &dyn Store,
    cluster: &str,
    primary: &str,
    sets: &[String],
    out: &mut impl Write,
) -> Result<(), CtlError> {
    pgdaemon_core::keys::validate_member_name(primary).map_err(CtlError::Usage)?;
    let config = apply_sets(&DynamicConfig::default(), sets)?;
    let record = pgdaemon_core::ClusterRecord::bootstrap(primary, config);
    match store.write_cluster(cluster, None, &record).await {
        Ok(r) => {
            writeln!(out, "created cluster {cluster}: {primary} is the primary in term {}", r.term)?;
            Ok(())
        }
        Err(StoreError::Conflict { .. }) => Err(CtlError::Refused(format!("cluster {cluster} already has a record"))),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{ClusterRecord, MemoryStore, SyncMode};

    fn sets(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn sets_parse_numbers_and_bare_words() {
        let cfg = apply_sets(
            &DynamicConfig::default(),
            &sets(&[
                "lease_ms=3000",
                "renew_interval_ms=1000",
                "safety_margin_ms=500",
                "probe_interval_ms=500",
                "synchronous_mode=on",
            ]),
        )
        .unwrap();
        assert_eq!(cfg.lease_ms, 3000);
        assert_eq!(cfg.synchronous_mode, SyncMode::On);
    }

    #[test]
    fn bad_sets_name_the_problem() {
        let d = DynamicConfig::default();
        let e = apply_sets(&d, &sets(&["lease"])).unwrap_err();
        assert!(e.to_string().contains("key=value"), "{e}");
        let e = apply_sets(&d, &sets(&["lease=3"])).unwrap_err();
        assert!(e.to_string().contains("unknown key `lease`"), "{e}");
        let e = apply_sets(&d, &sets(&["lease_ms=soon"])).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        let e = apply_sets(&d, &sets(&["lease_ms=3000"])).unwrap_err();
        assert!(e.to_string().contains("renew_interval_ms"), "validated: {e}");
    }

    #[tokio::test]
    async fn edit_writes_by_cas_and_invalid_edit_changes_nothing() {
        let store = MemoryStore::new();
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        let mut out = Vec::new();
        edit(&store, "c", &sets(&["maximum_lag_on_failover=2048"]), false, &mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("maximum_lag_on_failover: 1048576 -> 2048"));
        let r = store.read_cluster("c").await.unwrap().unwrap();
        assert_eq!(r.config.maximum_lag_on_failover, 2048);
        assert_eq!(r.version, 2);
        assert!(edit(&store, "c", &sets(&["lease_ms=500"]), false, &mut Vec::new()).await.is_err());
        assert_eq!(store.read_cluster("c").await.unwrap().unwrap().version, 2);
    }

    #[tokio::test]
    async fn bootstrap_creates_once() {
        let store = MemoryStore::new();
        bootstrap(
            &store,
            "b",
            "pg-1",
            &sets(&["lease_ms=3000", "renew_interval_ms=1000", "safety_margin_ms=500", "probe_interval_ms=500"]),
            &mut Vec::new(),
        )
        .await
        .unwrap();
        let r = store.read_cluster("b").await.unwrap().unwrap();
        assert_eq!((r.primary.as_deref(), r.config.lease_ms), (Some("pg-1"), 3000));
        let again = bootstrap(&store, "b", "pg-2", &[], &mut Vec::new()).await.unwrap_err();
        assert_eq!(again.exit_code(), 1);
    }
}
