//! Which store and cluster a command talks to: flags (or `PGDCTL_*` variables), else the
//! `cluster` and `[store]` of an agent configuration file (`--config`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use pgdaemon_core::keys::validate_cluster_name;
use pgdaemon_core::StoreConfig;

use crate::CtlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Etcd,
    Dynamodb,
}

/// Store and cluster selection, accepted by every command.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreOpts {
    /// An agent configuration file: its `cluster` and `[store]` are used unless flags say otherwise.
    #[arg(long, global = true, env = "PGDCTL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Store backend (overrides the config file's `[store]`).
    #[arg(long = "store", global = true, env = "PGDCTL_STORE", value_enum)]
    pub backend: Option<Backend>,
    /// etcd endpoints, comma separated (e.g. `http://127.0.0.1:2379`).
    #[arg(long, global = true, env = "PGDCTL_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// etcd key prefix.
    #[arg(long, global = true, env = "PGDCTL_PREFIX")]
    pub prefix: Option<String>,
    /// DynamoDB table (default `pgdaemon`).
    #[arg(long, global = true, env = "PGDCTL_TABLE")]
    pub table: Option<String>,
    /// DynamoDB endpoint (LocalStack, moto). Default: `AWS_ENDPOINT_URL`, else AWS itself.
    #[arg(long, global = true, env = "PGDCTL_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// AWS region. Default: the SDK's chain (`AWS_REGION`, profile).
    #[arg(long, global = true, env = "PGDCTL_REGION")]
    pub region: Option<String>,
    /// Cluster name (overrides the config file's `cluster`).
    #[arg(long, short = 'c', global = true, env = "PGDCTL_CLUSTER")]
    pub cluster: Option<String>,
}

impl StoreOpts {
    /// The store configuration and cluster name, validated. Bad input is a usage error (exit 2).
    pub fn resolve(&self) -> Result<(StoreConfig, String), CtlError> {
        let (store, file_cluster) = self.resolve_store()?;
        let cluster = self
            .cluster
            .clone()
            .or(file_cluster)
            .ok_or_else(|| CtlError::Usage("no cluster given: use --cluster NAME (or --config FILE)".into()))?;
        validate_cluster_name(&cluster).map_err(CtlError::Usage)?;
        Ok((store, cluster))
    }

    /// The store alone (commands about the fleet), and the configuration file's cluster if any.
    pub fn resolve_store(&self) -> Result<(StoreConfig, Option<String>), CtlError> {
        let (file_store, file_cluster) = match &self.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))?;
                from_config_text(&text).map_err(|e| CtlError::Usage(format!("{}: {e}", path.display())))?
            }
            None => (None, None),
        };
        let store = match self.backend {
            Some(Backend::Etcd) => StoreConfig::etcd(
                if self.endpoints.is_empty() {
                    return Err(CtlError::Usage("--store etcd needs --endpoints URL[,URL...]".into()));
                } else {
                    self.endpoints.clone()
                },
                self.prefix.clone().unwrap_or_else(|| "/pgdaemon".into()),
            ),
            Some(Backend::Dynamodb) => StoreConfig::Dynamodb {
                table: self.table.clone().unwrap_or_else(|| "pgdaemon".into()),
                region: self.region.clone(),
                endpoint_url: self.endpoint_url.clone(),
            },
            None => file_store.ok_or_else(|| {
                CtlError::Usage(
                    "no store given: use --store etcd --endpoints URL, --store dynamodb [--table T --endpoint-url URL], or --config FILE"
                        .into(),
                )
            })?,
        };
        if matches!(store, StoreConfig::Memory {}) {
            return Err(CtlError::Usage("the memory store lives inside one process; pgdctl cannot reach it".into()));
        }
        store.validate().map_err(|e| CtlError::Usage(e.to_string()))?;
        Ok((store, file_cluster))
    }
}

/// `cluster` and `[store]` from an agent configuration file; other sections are ignored.
fn from_config_text(text: &str) -> Result<(Option<StoreConfig>, Option<String>), String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let cluster = match table.get("cluster") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`cluster` must be a string".into()),
    };
    let store = match table.get("store") {
        None => None,
        Some(v) => Some(StoreConfig::deserialize(v.clone()).map_err(|e| format!("[store]: {e}"))?),
    };
    Ok((store, cluster))
}

use serde::Deserialize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_an_etcd_store() {
        let opts = StoreOpts {
            backend: Some(Backend::Etcd),
            endpoints: vec!["http://127.0.0.1:2379".into()],
            cluster: Some("demo".into()),
            ..Default::default()
        };
        let (store, cluster) = opts.resolve().unwrap();
        assert_eq!(cluster, "demo");
        assert_eq!(store, StoreConfig::etcd(vec!["http://127.0.0.1:2379".into()], "/pgdaemon"));
    }

    #[test]
    fn missing_parts_are_usage_errors() {
        let no_store = StoreOpts { cluster: Some("demo".into()), ..Default::default() };
        assert_eq!(no_store.resolve().unwrap_err().exit_code(), 2);
        let no_endpoints = StoreOpts { backend: Some(Backend::Etcd), cluster: Some("d".into()), ..Default::default() };
        assert!(no_endpoints.resolve().unwrap_err().to_string().contains("--endpoints"));
        let bad_cluster = StoreOpts { backend: Some(Backend::Dynamodb), cluster: Some("a/b".into()), ..Default::default() };
        assert_eq!(bad_cluster.resolve().unwrap_err().exit_code(), 2);
    }

    #[test]
    fn config_file_supplies_store_and_cluster_and_flags_win() {
        let text = "cluster = \"main\"\n[node]\nname = \"x\"\n[store]\nbackend = \"dynamodb\"\ntable = \"tbl\"\nendpoint_url = \"http://127.0.0.1:5000\"\n";
        let (store, cluster) = from_config_text(text).unwrap();
        assert_eq!(cluster.as_deref(), Some("main"));
        assert_eq!(
            store,
            Some(StoreConfig::Dynamodb { table: "tbl".into(), region: None, endpoint_url: Some("http://127.0.0.1:5000".into()) })
        );
        let dir = tempfile_path("pgdctl-config");
        std::fs::write(&dir, text).unwrap();
        let opts = StoreOpts { config: Some(dir.clone()), cluster: Some("other".into()), ..Default::default() };
        let (_, cluster) = opts.resolve().unwrap();
        assert_eq!(cluster, "other");
        let _ = std::fs::remove_file(dir);
        assert!(from_config_text("[store]\nbackend = \"etcd\"\nendpoints = 3\n").unwrap_err().contains("[store]"));
    }

    fn tempfile_path(prefix: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{prefix}-{}.toml", uuid::Uuid::new_v4()))
    }
}
