//! Configuration types, defaults with their reasons, validation, and the TOML + `PGDAEMON_*`
//! environment loader shared by every binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A configuration problem, always naming the offending key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot parse: {0}")]
    Parse(String),
    #[error("config: environment variable {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("config: `{key}` {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }
}

/// Synchronous replication mode (Patroni's `synchronous_mode` / `synchronous_mode_strict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Asynchronous replication: failover may lose up to `maximum_lag_on_failover` bytes.
    #[default]
    Off,
    /// Synchronous while a standby is available; degrades to asynchronous (and records it) otherwise.
    On,
    /// Synchronous always: commits block rather than degrade when no standby is available.
    Strict,
}

/// The dynamic configuration, stored in the cluster record and shared by every member.
///
/// Timing defaults and why (detection ~ lease, so they set the RTO):
/// - `lease_ms` 10 s: Patroni's `ttl` is 30 s; EC2 hosts on one region's network rarely stall
///   beyond a few seconds, and a shorter lease is the largest single RTO saving.
/// - `renew_interval_ms` 4 s: the holder renews once its last successful write is this old, and
///   every loop after that until a renewal succeeds: the first attempt leaves lease - margin -
///   interval = 4 s for retries (four loops), so one slow store call or a throttled request
///   never costs the lease (Patroni renews every `loop_wait` = ttl / 3). An unchanged heartbeat
///   goes out every renew interval less one probe (a change at once), well inside the
///   coordinator's heartbeat-staleness threshold of twice this value on every version. An idle
///   3-node cluster then makes about 75 store writes a minute (docs/design.md, "Store writes
///   and cost").
/// - `safety_margin_ms` 2 s: a holder stops acting as primary 2 s before any observer may take
///   over, absorbing clock-rate drift (< 1 % on EC2) and the time a demotion takes.
/// - `probe_interval_ms` 1 s: the agent's loop period, hence the cadence of the lease watch and
///   of retries; detection lags death by at most one probe after the lease.
///
/// Stored inside the cluster record, so decoding ignores unknown keys (a newer coordinator or
/// `pgdctl` may add settings). Configuration files deserialize it through [`strict`], which
/// still rejects a key it does not know (a typo).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicConfig {
    pub lease_ms: u64,
    pub renew_interval_ms: u64,
    pub safety_margin_ms: u64,
    pub probe_interval_ms: u64,
    /// A replica further behind the most advanced one than this many bytes is never promoted
    /// automatically (Patroni's default, 1 MiB).
    pub maximum_lag_on_failover: u64,
    pub synchronous_mode: SyncMode,
    /// How many synchronous standbys the primary keeps (`ANY n (...)`).
    pub synchronous_node_count: u32,
    /// Failsafe mode (Patroni's `failsafe_mode`, off by default as there): while the store is
    /// unreachable, a primary keeps running past its lease only while every member of its last
    /// known view acknowledges it over the peer endpoint (see docs/failsafe.md).
    pub failsafe_mode: bool,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            lease_ms: 10_000,
            renew_interval_ms: 4_000,
            safety_margin_ms: 2_000,
            probe_interval_ms: 1_000,
            maximum_lag_on_failover: 1024 * 1024,
            synchronous_mode: SyncMode::Off,
            synchronous_node_count: 1,
            failsafe_mode: false,
        }
    }
}

impl DynamicConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
    pub fn renew_interval(&self) -> Duration {
        Duration::from_millis(self.renew_interval_ms)
    }
    pub fn safety_margin(&self) -> Duration {
        Duration::from_millis(self.safety_margin_ms)
    }
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// Rejects timings that cannot keep a lease safely.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ms < 1000 {
            return Err(ConfigError::invalid("lease_ms", format!("is {} ms; must be at least 1000", self.lease_ms)));
        }
        if self.renew_interval_ms == 0 || self.renew_interval_ms * 2 > self.lease_ms {
            return Err(ConfigError::invalid(
                "renew_interval_ms",
                format!("is {} ms; must be above 0 and at most half of lease_ms ({} ms)", self.renew_interval_ms, self.lease_ms),
            ));
        }
        if self.safety_margin_ms + self.renew_interval_ms >= self.lease_ms {
            return Err(ConfigError::invalid(
                "safety_margin_ms",
                format!(
                    "is {} ms; safety_margin_ms + renew_interval_ms must stay below lease_ms ({} ms) or a healthy holder could not keep the lease",
                    self.safety_margin_ms, self.lease_ms
                ),
            ));
        }
        if self.safety_margin_ms * 20 < self.lease_ms {
            return Err(ConfigError::invalid(
                "safety_margin_ms",
                format!("is {} ms; must be at least 5% of lease_ms to absorb clock drift", self.safety_margin_ms),
            ));
        }
        if self.probe_interval_ms == 0 || self.probe_interval_ms > self.renew_interval_ms {
            return Err(ConfigError::invalid(
                "probe_interval_ms",
                format!("is {} ms; must be above 0 and at most renew_interval_ms", self.probe_interval_ms),
            ));
        }
        if self.synchronous_mode != SyncMode::Off && self.synchronous_node_count == 0 {
            return Err(ConfigError::invalid("synchronous_node_count", "must be at least 1 when synchronous_mode is on"));
        }
        Ok(())
    }
}

/// Which store holds the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In-process store: tests and single-process demos only. A struct variant (not a unit one) so
    /// that `deny_unknown_fields` rejects stray keys here too.
    Memory {},
    /// etcd v3. TLS and authentication are optional: without them the client speaks plain HTTP
    /// (`http://` endpoints) or TLS verified against the system's roots (`https://` endpoints).
    Etcd {
        /// e.g. `["http://127.0.0.1:2379"]`, or `https://` ones for TLS.
        endpoints: Vec<String>,
        /// Key prefix; items live under `<prefix>/<cluster>/<item>`.
        #[serde(default = "default_etcd_prefix")]
        prefix: String,
        /// PEM CA certificate(s) that verify the etcd server (default: the system's roots).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// PEM client certificate, for an etcd started with `--client-cert-auth`; needs `key_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cert_file: Option<PathBuf>,
        /// PEM private key of `cert_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key_file: Option<PathBuf>,
        /// etcd user (etcd's `auth enable`); needs `password_file`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// File holding the user's password (mode 0600 or stricter; a trailing newline is
        /// ignored). Read by the store backend when it connects, not at validation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
    },
    Dynamodb {
        #[serde(default = "default_table")]
        table: String,
        /// Defaults to the SDK's region chain (`AWS_REGION`, profile, IMDS).
        #[serde(default)]
        region: Option<String>,
        /// Defaults to `AWS_ENDPOINT_URL` (LocalStack / moto) or the real AWS endpoint.
        #[serde(default)]
        endpoint_url: Option<String>,
    },
}

fn default_etcd_prefix() -> String {
    "/pgdaemon".into()
}

fn default_table() -> String {
    "pgdaemon".into()
}

impl StoreConfig {
    /// An etcd store at `endpoints` under `prefix`, without TLS options or authentication.
    pub fn etcd(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        StoreConfig::Etcd {
            endpoints,
            prefix: prefix.into(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
        }
    }

    /// Checks the keys without reading any file (the backend reads them when it connects).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            StoreConfig::Memory {} => Ok(()),
            StoreConfig::Etcd { endpoints, prefix, ca_file, cert_file, key_file, username, password_file } => {
                if endpoints.is_empty() {
                    return Err(ConfigError::invalid("store.endpoints", "must list at least one etcd endpoint"));
                }
                if !prefix.starts_with('/') || prefix.ends_with('/') {
                    return Err(ConfigError::invalid(
                        "store.prefix",
                        format!("{prefix:?} must start with '/' and not end with it"),
                    ));
                }
                match (cert_file, key_file) {
                    (Some(_), None) => {
                        return Err(ConfigError::invalid(
                            "store.cert_file",
                            "is set without store.key_file (a client certificate needs both)",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(ConfigError::invalid(
                            "store.key_file",
                            "is set without store.cert_file (a client certificate needs both)",
                        ))
                    }
                    _ => {}
                }
                match (username, password_file) {
                    (Some(u), Some(_)) if u.is_empty() => {
                        return Err(ConfigError::invalid("store.username", "is empty"));
                    }
                    (Some(_), None) => {
                        return Err(ConfigError::invalid(
                            "store.username",
                            "is set without store.password_file (etcd authentication needs both)",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(ConfigError::invalid(
                            "store.password_file",
                            "is set without store.username (etcd authentication needs both)",
                        ))
                    }
                    _ => {}
                }
                // A TLS option with a plain-HTTP endpoint would silently not apply to it.
                let tls_key = [("store.ca_file", ca_file), ("store.cert_file", cert_file)].into_iter().find(|(_, v)| v.is_some());
                let plain = endpoints.iter().find(|e| e.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")));
                if let (Some((key, _)), Some(plain)) = (tls_key, plain) {
                    return Err(ConfigError::invalid(
                        key,
                        format!("is a TLS option, but the endpoint {plain:?} is plain http://; TLS needs https:// endpoints"),
                    ));
                }
                Ok(())
            }
            StoreConfig::Dynamodb { table, .. } => {
                if table.len() < 3 || table.len() > 255 {
                    return Err(ConfigError::invalid("store.table", "must be 3 to 255 characters"));
                }
                Ok(())
            }
        }
    }
}

/// Parses `toml_text`, applies `PGDAEMON_*` overrides from `env`, and deserializes into `T`.
///
/// An override `PGDAEMON_A__B=value` sets key `b` in table `a` (double underscore separates
/// levels, names are lower-cased). The value is read as a TOML value when it parses as one
/// (numbers, booleans, arrays) and as a string otherwise. Unknown keys are rejected by `T`'s
/// `deny_unknown_fields`, so a typo fails with the key's name instead of being ignored.
pub fn load_layered<T: DeserializeOwned>(
    toml_text: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let mut root: toml::Table = toml_text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
    let overrides: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    for (var, raw) in overrides {
        let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, reason: "empty key segment".into() });
        }
        let value = parse_env_value(&raw);
        let mut table = &mut root;
        for segment in &path[..path.len() - 1] {
            let entry = table.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => return Err(ConfigError::Env { var: var.clone(), reason: format!("`{segment}` is not a table") }),
            };
        }
        table.insert(path[path.len() - 1].clone(), value);
    }
    T::deserialize(toml::Value::Table(root)).map_err(|e| ConfigError::Parse(e.to_string()))
}

const ENV_PREFIX: &str = "PGDAEMON_";

/// `#[serde(deserialize_with = "pgdaemon_core::config::strict")]` for a configuration-file field
/// whose type is also stored (and so ignores unknown keys when read from the store):
/// [`DynamicConfig`], [`crate::model::MemberTags`]. A key the type does not have is an error
/// naming it. `T`'s keys are the ones its default value serializes, so `T` must serialize every
/// field (no `skip_serializing_if`).
pub fn strict<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Serialize + DeserializeOwned + Default,
{
    use serde::de::Error;
    let value = toml::Value::deserialize(deserializer)?;
    let known = match toml::Value::try_from(T::default()) {
        Ok(toml::Value::Table(t)) => t,
        _ => return Err(D::Error::custom("strict: the type does not serialize to a table")),
    };
    if let toml::Value::Table(given) = &value {
        if let Some(key) = given.keys().find(|k| !known.contains_key(k.as_str())) {
            let expected: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(D::Error::custom(format!("unknown field `{key}`, expected one of {}", expected.join(", "))));
        }
    }
    T::deserialize(value).map_err(D::Error::custom)
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        #[serde(default, deserialize_with = "strict")]
        dynamic: DynamicConfig,
        store: StoreConfig,
    }

    #[test]
    fn defaults_are_valid() {
        DynamicConfig::default().validate().unwrap();
    }

    #[test]
    fn impossible_timings_name_the_key() {
        let cfg = DynamicConfig { renew_interval_ms: 6000, ..Default::default() };
        assert!(matches!(cfg.validate(), Err(ConfigError::Invalid { key, .. }) if key == "renew_interval_ms"));
        let cfg = DynamicConfig { safety_margin_ms: 9000, ..Default::default() };
        assert!(matches!(cfg.validate(), Err(ConfigError::Invalid { key, .. }) if key == "safety_margin_ms"));
        let cfg = DynamicConfig { lease_ms: 10, ..Default::default() };
        assert!(matches!(cfg.validate(), Err(ConfigError::Invalid { key, .. }) if key == "lease_ms"));
    }

    #[test]
    fn env_overrides_toml() {
        let text = "name = \"a\"\n[store]\nbackend = \"etcd\"\nendpoints = [\"http://x\"]\n";
        let env = vec![
            ("PGDAEMON_NAME".to_string(), "b".to_string()),
            ("PGDAEMON_DYNAMIC__LEASE_MS".to_string(), "20000".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let s: Sample = load_layered(text, env).unwrap();
        assert_eq!(s.name, "b");
        assert_eq!(s.dynamic.lease_ms, 20000);
        assert_eq!(s.store, StoreConfig::etcd(vec!["http://x".into()], "/pgdaemon"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = "name = \"a\"\nnmae = 1\n[store]\nbackend = \"memory\"\n";
        let err = load_layered::<Sample>(text, vec![]).unwrap_err().to_string();
        assert!(err.contains("nmae"), "{err}");
        let text = "name = \"a\"\n[store]\nbackend = \"memory\"\n[dynamic]\nlease = 3\n";
        let err = load_layered::<Sample>(text, vec![]).unwrap_err().to_string();
        assert!(err.contains("lease"), "{err}");
        // A key that belongs to another backend is a mistake, not something to ignore.
        let text = "name = \"a\"\n[store]\nbackend = \"memory\"\ntable = \"t\"\n";
        let err = load_layered::<Sample>(text, vec![]).unwrap_err().to_string();
        assert!(err.contains("table"), "{err}");
    }

    #[test]
    fn stored_dynamic_config_ignores_unknown_keys_but_files_do_not() {
        let stored: DynamicConfig = serde_json::from_str(r#"{"lease_ms":20000,"future_setting":true}"#).unwrap();
        assert_eq!(stored, DynamicConfig { lease_ms: 20000, ..Default::default() });
        let text = "name = \"a\"\n[store]\nbackend = \"memory\"\n[dynamic]\nlease_ms = 20000\nfuture_setting = true\n";
        let err = load_layered::<Sample>(text, vec![]).unwrap_err().to_string();
        assert!(err.contains("future_setting"), "{err}");
        let env = vec![("PGDAEMON_DYNAMIC__LEASE_MSS".to_string(), "1".to_string())];
        let err = load_layered::<Sample>("name = \"a\"\n[store]\nbackend = \"memory\"\n", env).unwrap_err().to_string();
        assert!(err.contains("lease_mss"), "{err}");
    }

    #[test]
    fn store_config_validation() {
        assert!(StoreConfig::etcd(vec![], "/p").validate().is_err());
        assert!(StoreConfig::etcd(vec!["h".into()], "p/").validate().is_err());
        assert!(StoreConfig::Dynamodb { table: "ab".into(), region: None, endpoint_url: None }.validate().is_err());
    }

    fn etcd_store(extra: &str) -> Result<StoreConfig, ConfigError> {
        let text = format!("name = \"a\"\n[store]\nbackend = \"etcd\"\n{extra}");
        let s: Sample = load_layered(&text, vec![])?;
        s.store.validate()?;
        Ok(s.store)
    }

    fn invalid_key(r: Result<StoreConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, reason }) => format!("{key}: {reason}"),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn etcd_tls_and_auth_options_parse_and_old_configs_still_do() {
        let tls = "endpoints = [\"https://e1:2379\", \"https://e2:2379\"]\nca_file = \"/etc/pgdaemon/etcd-ca.pem\"\n\
                   cert_file = \"/etc/pgdaemon/etcd.crt\"\nkey_file = \"/etc/pgdaemon/etcd.key\"\n\
                   username = \"pgdaemon\"\npassword_file = \"/etc/pgdaemon/etcd.pass\"\n";
        let StoreConfig::Etcd { endpoints, prefix, ca_file, cert_file, key_file, username, password_file } =
            etcd_store(tls).unwrap()
        else {
            panic!("etcd")
        };
        assert_eq!((endpoints.len(), prefix.as_str()), (2, "/pgdaemon"));
        assert_eq!(ca_file, Some(PathBuf::from("/etc/pgdaemon/etcd-ca.pem")));
        assert_eq!((cert_file.is_some(), key_file.is_some()), (true, true));
        assert_eq!(username.as_deref(), Some("pgdaemon"));
        assert_eq!(password_file, Some(PathBuf::from("/etc/pgdaemon/etcd.pass")));
        // The keys of before still parse to the same store, and serialize without the new ones.
        let old = etcd_store("endpoints = [\"http://x\"]\nprefix = \"/p\"\n").unwrap();
        assert_eq!(old, StoreConfig::etcd(vec!["http://x".into()], "/p"));
        assert_eq!(
            serde_json::to_value(&old).unwrap(),
            serde_json::json!({"backend": "etcd", "endpoints": ["http://x"], "prefix": "/p"})
        );
        // https:// without any TLS option: the system's roots verify the server.
        etcd_store("endpoints = [\"https://x:2379\"]\n").unwrap();
        // Username and password over https with the system roots, or over http (loopback).
        etcd_store("endpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\npassword_file = \"/p\"\n").unwrap();
        // A typo is still refused.
        let err = etcd_store("endpoints = [\"https://x\"]\nca_fil = \"/ca\"\n").unwrap_err().to_string();
        assert!(err.contains("ca_fil"), "{err}");
    }

    #[test]
    fn etcd_tls_and_auth_mistakes_name_the_key() {
        let https = "endpoints = [\"https://x:2379\"]\n";
        let e = invalid_key(etcd_store(&format!("{https}cert_file = \"/c\"\n")));
        assert!(e.starts_with("store.cert_file:") && e.contains("store.key_file"), "{e}");
        let e = invalid_key(etcd_store(&format!("{https}key_file = \"/k\"\n")));
        assert!(e.starts_with("store.key_file:") && e.contains("store.cert_file"), "{e}");
        let e = invalid_key(etcd_store(&format!("{https}username = \"u\"\n")));
        assert!(e.starts_with("store.username:") && e.contains("store.password_file"), "{e}");
        let e = invalid_key(etcd_store(&format!("{https}password_file = \"/p\"\n")));
        assert!(e.starts_with("store.password_file:") && e.contains("store.username"), "{e}");
        let e = invalid_key(etcd_store(&format!("{https}username = \"\"\npassword_file = \"/p\"\n")));
        assert!(e.starts_with("store.username:"), "{e}");
        // TLS options with a plain-HTTP endpoint (one of several is enough).
        let mixed = "endpoints = [\"https://a:2379\", \"http://b:2379\"]\n";
        let e = invalid_key(etcd_store(&format!("{mixed}ca_file = \"/ca\"\n")));
        assert!(e.starts_with("store.ca_file:") && e.contains("http://b:2379") && e.contains("https://"), "{e}");
        let e = invalid_key(etcd_store("endpoints = [\"HTTP://b:2379\"]\ncert_file = \"/c\"\nkey_file = \"/k\"\n"));
        assert!(e.starts_with("store.cert_file:") && e.contains("plain http://"), "{e}");
    }
}
