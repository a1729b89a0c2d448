//! `show-config` / `edit-config`: the dynamic configuration inside the cluster record, and the
//! cluster-wide PostgreSQL parameters (`postgresql.parameters.NAME`, their own item: see
//! [`pgdaemon_core::params`]). Edits are validated first ([`DynamicConfig::validate`],
//! [`params::validate`]) and written by compare-and-set, re-applied to the freshest record on a
//! conflict so a concurrent coordinator step is never overwritten.

use std::io::Write;

use pgdaemon_core::params::{self, Context};
use pgdaemon_core::{keys, ClusterParameters, DynamicConfig, Store, StoreError};

use crate::output::{emit, Format};
use crate::{view_with_record, CtlError};

const CAS_ATTEMPTS: usize = 8;

/// `--set postgresql.parameters.NAME=VALUE` sets a cluster-wide parameter (an empty value
/// removes it).
pub const PARAMETER_PREFIX: &str = "postgresql.parameters.";

/// One checked parameter edit: Postgres's spelling of the name, the value (`None`: remove) and
/// how it takes effect.
#[derive(Debug, Clone, PartialEq)]
pub struct ParameterSet {
    pub name: String,
    pub value: Option<String>,
    pub context: Option<Context>,
}

/// Splits `sets` into dynamic-config sets and checked parameter sets. A bad parameter is a usage
/// error naming it.
pub fn split_sets(sets: &[String]) -> Result<(Vec<String>, Vec<ParameterSet>), CtlError> {
    let (mut config, mut parameters) = (Vec::new(), Vec::new());
    for set in sets {
        let Some(rest) = set.trim_start().strip_prefix(PARAMETER_PREFIX) else {
            config.push(set.clone());
            continue;
        };
        let (name, value) = rest.split_once('=').ok_or_else(|| CtlError::Usage(format!("--set {set:?}: expected key=value")))?;
        let (name, value) = (name.trim(), value.trim());
        let value = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
        if value.is_empty() {
            if name.is_empty() {
                return Err(CtlError::Usage(format!("--set {set:?}: no parameter name")));
            }
            parameters.push(ParameterSet { name: name.to_string(), value: None, context: None });
            continue;
        }
        let (name, context) = params::validate(name, value).map_err(|e| CtlError::Usage(format!("--set {set:?}: {e}")))?;
        parameters.push(ParameterSet { name, value: Some(value.to_string()), context: Some(context) });
    }
    Ok((config, parameters))
}

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

/// The dynamic configuration, and the cluster-wide parameters as `postgresql.parameters`.
pub async fn show(store: &dyn Store, cluster: &str, format: Format, out: &mut impl Write) -> Result<(), CtlError> {
    let view = view_with_record(store, cluster).await?;
    let record = view.cluster.expect("checked");
    let mut doc = serde_json::to_value(&record.config).map_err(anyhow::Error::from)?;
    let parameters = view.parameters.map(|p: ClusterParameters| p.parameters).unwrap_or_default();
    if !parameters.is_empty() {
        doc["postgresql"] = serde_json::json!({ "parameters": parameters });
    }
    // The table form is TOML, as `--set` and the agents' `[dynamic]` section take it.
    emit(out, format, &doc, || {
        let table: toml::Value = serde_json::from_value(doc.clone()).map_err(anyhow::Error::from)?;
        Ok(toml::to_string(&table).map_err(anyhow::Error::from)?)
    })
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
    let (sets, parameters) = split_sets(sets)?;
    apply_unvalidated(&DynamicConfig::default(), &sets)?;
    if !sets.is_empty() {
        edit_config(store, cluster, &sets, dry_run, out).await?;
    }
    if !parameters.is_empty() {
        edit_parameters(store, cluster, &parameters, dry_run, out).await?;
    }
    Ok(())
}

/// Says "no change", or what a dry run would set; `true` when the changes are to be written.
fn announce(changes: &[String], dry_run: bool, out: &mut impl Write) -> Result<bool, CtlError> {
    if changes.is_empty() {
        writeln!(out, "no change")?;
        return Ok(false);
    }
    if dry_run {
        for c in changes {
            writeln!(out, "would set {c}")?;
        }
        return Ok(false);
    }
    Ok(true)
}

fn written(changes: &[String], out: &mut impl Write) -> Result<(), CtlError> {
    for c in changes {
        writeln!(out, "set {c}")?;
    }
    Ok(())
}

async fn edit_config(
    store: &dyn Store,
    cluster: &str,
    sets: &[String],
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    for _ in 0..CAS_ATTEMPTS {
        let mut record = store.read_cluster(cluster).await?.ok_or_else(|| CtlError::no_record(cluster))?;
        let new = apply_sets(&record.config, sets)?;
        let changes = diff(&record.config, &new);
        if !announce(&changes, dry_run, out)? {
            return Ok(());
        }
        let version = record.version;
        record.config = new;
        match store.write_cluster(cluster, Some(version), &record).await {
            Ok(_) => return written(&changes, out),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::Refused(format!("the cluster record kept changing; tried {CAS_ATTEMPTS} times")))
}

/// Writes the parameter edits by compare-and-set on the parameters item.
async fn edit_parameters(
    store: &dyn Store,
    cluster: &str,
    edits: &[ParameterSet],
    dry_run: bool,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    for _ in 0..CAS_ATTEMPTS {
        let view = view_with_record(store, cluster).await?;
        if let Some(bad) = view.unreadable.iter().find(|u| u.item == keys::PARAMETERS) {
            return Err(CtlError::Unavailable(format!("the stored parameters cannot be read: {}", bad.error)));
        }
        let mut new = view.parameters.clone().unwrap_or_default();
        let mut changes = Vec::new();
        for edit in edits {
            // A removal names the parameter as it was set, in any case.
            let stored = new.parameters.keys().find(|k| k.eq_ignore_ascii_case(&edit.name)).cloned();
            let old = stored.as_ref().and_then(|k| new.parameters.remove(k));
            if let Some(v) = &edit.value {
                new.parameters.insert(edit.name.clone(), v.clone());
            }
            let name = if edit.value.is_none() { stored.as_ref().unwrap_or(&edit.name) } else { &edit.name };
            if old != edit.value {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                let restart = if edit.context == Some(Context::Postmaster) {
                    " (takes effect after a restart: pgdctl restart --all --pending)"
                } else {
                    ""
                };
                changes.push(format!("{PARAMETER_PREFIX}{name}: {} -> {}{restart}", show(&old), show(&edit.value)));
            }
        }
        if !announce(&changes, dry_run, out)? {
            return Ok(());
        }
        match store.write_parameters(cluster, view.parameters.as_ref().map(|p| p.version), &new).await {
            Ok(_) => return written(&changes, out),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::Refused(format!("the parameters kept changing; tried {CAS_ATTEMPTS} times")))
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
    async fn cluster_wide_parameters_are_checked_written_shown_and_removed() {
        let store = MemoryStore::new();
        let mut out = Vec::new();
        let refused = edit(&store, "c", &sets(&["postgresql.parameters.work_mem=64MB"]), false, &mut out).await.unwrap_err();
        assert_eq!(refused.exit_code(), 1, "no record yet: {refused}");
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        edit(
            &store,
            "c",
            &sets(&[
                "postgresql.parameters.work_mem=64MB",
                "postgresql.parameters.shared_buffers='256MB'",
                "maximum_lag_on_failover=4096",
            ]),
            false,
            &mut out,
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(
            text.contains("work_mem: - -> 64MB") && text.contains("shared_buffers: - -> 256MB (takes effect after a restart"),
            "{text}"
        );
        let view = store.read_view("c").await.unwrap();
        let p = view.parameters.unwrap();
        assert_eq!((p.version, p.parameters.len(), view.cluster.unwrap().config.maximum_lag_on_failover), (1, 2, 4096));
        let mut shown = Vec::new();
        show(&store, "c", Format::Table, &mut shown).await.unwrap();
        let shown = String::from_utf8_lossy(&shown).to_string();
        assert!(shown.contains("[postgresql.parameters]") && shown.contains("work_mem = \"64MB\""), "{shown}");
        // Bad input changes nothing, even beside a good edit.
        for bad in [
            "postgresql.parameters.work_mme=1MB",
            "postgresql.parameters.primary_conninfo=host=x",
            "postgresql.parameters.wal_level=loud",
        ] {
            let e =
                edit(&store, "c", &sets(&["postgresql.parameters.work_mem=1MB", bad]), false, &mut Vec::new()).await.unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
        assert_eq!(store.read_view("c").await.unwrap().parameters.unwrap().version, 1);
        let mut out = Vec::new();
        edit(&store, "c", &sets(&["postgresql.parameters.WORK_MEM="]), false, &mut out).await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("work_mem: 64MB -> -"));
        let p = store.read_view("c").await.unwrap().parameters.unwrap();
        assert_eq!((p.version, p.parameters.keys().map(String::as_str).collect::<Vec<_>>()), (2, vec!["shared_buffers"]));
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
