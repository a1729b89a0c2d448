//! Monitor-only mode (`pgdaemon-agent monitor -c monitor.toml`): watches Postgres endpoints that
//! pgdaemon does not manage (RDS, any host) and reports their health changes as events, without
//! ever fencing, promoting or writing anything but events.
//!
//! Every `interval_ms` each target gets a fresh libpq connection and `SELECT pg_is_in_recovery()`
//! (a fresh connection per probe, so a restart between probes is seen as the server answering
//! again, and a hung server is bounded by `connect_timeout_ms`). The results form a
//! [`HealthView`]; [`derive_events`] turns two successive views into `member_up`, `member_down`
//! and `role_changed` events (the same rule the coordinator applies to heartbeats), which go to
//! the store's event log (under `cluster`) and the `[events]` sinks. The first round reports each
//! target as "first seen up/down", so the log starts with the state the monitor found.
//!
//! ```toml
//! cluster = "rds-watch"            # name the events are logged under
//! [store]                          # optional: without it events go to the other sinks only
//! backend = "etcd"
//! endpoints = ["http://127.0.0.1:2379"]
//! [monitor]
//! interval_ms = 5000
//! connect_timeout_ms = 3000
//! [[monitor.targets]]
//! name = "orders"
//! dsn = "host=orders.abc.eu-west-1.rds.amazonaws.com port=5432 user=monitor dbname=postgres sslmode=require"
//! password_file = "/etc/pgdaemon/monitor.pass"
//! ca_file = "/etc/pgdaemon/rds-global-bundle.pem"   # TLS verified against it (default: system roots)
//! [events]
//! webhook_url = "https://hooks.example/pg"
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pgdaemon_core::config::load_layered;
use pgdaemon_core::events::{derive_events, EventEmitter, HealthView, MemberHealth};
use pgdaemon_core::keys::{validate_cluster_name, validate_member_name};
use pgdaemon_core::{Clock, ConfigError, Role, StoreConfig, SystemClock};
use serde::{Deserialize, Serialize};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::LogConfig;
use crate::events::EventsConfig;

/// The monitor's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// The name events are logged and sent under (a store partition, like a cluster's).
    pub cluster: String,
    /// Where the event log lives; none: events go to the `[events]` sinks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
    pub monitor: MonitorSection,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSection {
    /// Time between probe rounds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Bound on one probe (connect and query); a target that takes longer counts as down.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    pub targets: Vec<MonitorTarget>,
}

/// One watched endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorTarget {
    /// Name in events (`member`).
    pub name: String,
    /// libpq connection string (`host=... port=... user=... dbname=...` or a `postgresql://` URL)
    /// without a password.
    pub dsn: String,
    /// File holding the password (a trailing newline is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) the server's certificate must chain to (e.g. the RDS
    /// global bundle). Default: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_interval_ms() -> u64 {
    5_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}

/// Top-level keys `PGDAEMON_<SECTION>__<KEY>` may override in the monitor's file.
const SECTIONS: [&str; 5] = ["cluster", "store", "monitor", "events", "log"];

impl MonitorConfig {
    /// Parses and validates (no filesystem access).
    pub fn parse(toml_text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let overrides = env
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix("PGDAEMON_")
                    .and_then(|r| r.split("__").next())
                    .is_some_and(|s| SECTIONS.contains(&s.to_ascii_lowercase().as_str()))
            })
            .cloned();
        let cfg: MonitorConfig = load_layered(toml_text, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text, env)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cluster_name(&self.cluster).map_err(|r| ConfigError::invalid("cluster", r))?;
        if let Some(store) = &self.store {
            store.validate()?;
        }
        self.events.validate()?;
        let m = &self.monitor;
        if m.interval_ms < 100 {
            return Err(ConfigError::invalid("monitor.interval_ms", "must be at least 100"));
        }
        if m.connect_timeout_ms == 0 || m.connect_timeout_ms > m.interval_ms.max(1_000) * 10 {
            return Err(ConfigError::invalid("monitor.connect_timeout_ms", "must be above 0 and at most ten intervals"));
        }
        if m.targets.is_empty() {
            return Err(ConfigError::invalid("monitor.targets", "lists no endpoint to watch"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in m.targets.iter().enumerate() {
            let key = |k: &str| format!("monitor.targets[{i}].{k}");
            validate_member_name(&t.name).map_err(|r| ConfigError::invalid(key("name"), r))?;
            if !seen.insert(t.name.clone()) {
                return Err(ConfigError::invalid(key("name"), format!("{:?} is listed twice", t.name)));
            }
            let parsed = tokio_postgres::Config::from_str(&t.dsn)
                .map_err(|e| ConfigError::invalid(key("dsn"), format!("is not a libpq connection string: {e}")))?;
            if parsed.get_password().is_some() {
                return Err(ConfigError::invalid(key("dsn"), "must not hold a password (use password_file)"));
            }
            if parsed.get_hosts().is_empty() {
                return Err(ConfigError::invalid(key("dsn"), "names no host"));
            }
        }
        Ok(())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Up(Role),
    Down(String),
}

/// One target ready to probe (password and CA file read once at start).
struct Target {
    name: String,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// The TLS connector of the probes: server certificates are verified (chain and host name)
/// against `ca_file`, or the system's roots without one. Whether TLS is used at all follows the
/// DSN's `sslmode`: `disable`, `prefer` (the default: TLS when the server offers it) or `require`.
pub fn tls_connector(ca_file: Option<&Path>) -> anyhow::Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(pgdaemon_dcs::tls::client_config(ca_file, None)?))
}

/// The monitor: probes every target, keeps the last view, emits what changed.
pub struct Monitor {
    cluster: String,
    targets: Vec<Target>,
    timeout: Duration,
    events: Arc<dyn EventEmitter>,
    clock: SystemClock,
    last: HealthView,
    /// Why each target is down (for logs), as of the last round.
    down_reasons: std::collections::BTreeMap<String, String>,
}

impl Monitor {
    /// Reads the targets' password files and prepares their connection settings.
    pub fn new(cfg: &MonitorConfig, events: Arc<dyn EventEmitter>) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(cfg.monitor.connect_timeout_ms);
        let mut targets = Vec::new();
        for t in &cfg.monitor.targets {
            let mut config = tokio_postgres::Config::from_str(&t.dsn).with_context(|| format!("monitor target {}", t.name))?;
            config.connect_timeout(timeout);
            if config.get_application_name().is_none() {
                config.application_name("pgdaemon-monitor");
            }
            if let Some(file) = &t.password_file {
                let p = std::fs::read_to_string(file)
                    .with_context(|| format!("monitor target {}: password file {}", t.name, file.display()))?;
                config.password(p.trim_end_matches(['\n', '\r']));
            }
            let tls = tls_connector(t.ca_file.as_deref()).with_context(|| format!("monitor target {}", t.name))?;
            targets.push(Target { name: t.name.clone(), config, tls });
        }
        Ok(Monitor {
            cluster: cfg.cluster.clone(),
            targets,
            timeout,
            events,
            clock: SystemClock::new(),
            last: HealthView::new(),
            down_reasons: Default::default(),
        })
    }

    /// The health found by the last round.
    pub fn last(&self) -> &HealthView {
        &self.last
    }

    /// One round: probe every target concurrently, emit the changes, keep the new view.
    /// Returns the number of events emitted.
    pub async fn round(&mut self) -> usize {
        let mut probes = tokio::task::JoinSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let (config, tls, timeout) = (t.config.clone(), t.tls.clone(), self.timeout);
            probes.spawn(async move { (i, probe(&config, tls, timeout).await) });
        }
        let mut next = HealthView::new();
        while let Some(joined) = probes.join_next().await {
            let Ok((i, result)) = joined else { continue };
            let name = self.targets[i].name.clone();
            let health = match result {
                ProbeResult::Up(role) => {
                    self.down_reasons.remove(&name);
                    MemberHealth { up: true, role, lag_bytes: None }
                }
                ProbeResult::Down(why) => {
                    if self.down_reasons.get(&name) != Some(&why) {
                        tracing::debug!(target = %name, reason = %why, "monitor probe failed");
                    }
                    self.down_reasons.insert(name.clone(), why);
                    MemberHealth { up: false, role: Role::Unknown, lag_bytes: None }
                }
            };
            next.insert(name, health);
        }
        let now = self.clock.wall_ms();
        let events = derive_events(&self.cluster, 0, &self.last, &next, None, now);
        let n = events.len();
        for mut e in events {
            if e.kind == pgdaemon_core::events::EventKind::MemberDown {
                if let Some(why) = e.member.as_ref().and_then(|m| self.down_reasons.get(m)) {
                    e.detail = format!("{}: {why}", e.detail);
                }
            }
            self.events.emit(e.source("monitor"));
        }
        self.last = next;
        n
    }

    /// Rounds every `interval` until `shutdown` resolves.
    pub async fn run(mut self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = ticker.tick() => { self.round().await; }
            }
        }
    }
}

/// Connects, asks `pg_is_in_recovery()`, disconnects; bounded by `timeout` as a whole.
pub async fn probe(config: &tokio_postgres::Config, tls: MakeRustlsConnect, timeout: Duration) -> ProbeResult {
    let attempt = async {
        let (client, conn) = config.connect(tls).await.map_err(|e| format!("connect: {}", pgdaemon_dcs::error_chain(&e)))?;
        let conn = tokio::spawn(conn);
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| format!("query: {}", pgdaemon_dcs::error_chain(&e)));
        drop(client);
        conn.abort();
        let in_recovery: bool = row?.try_get(0).map_err(|e| format!("query: {e}"))?;
        Ok::<_, String>(if in_recovery { Role::Replica } else { Role::Primary })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(role)) => ProbeResult::Up(role),
        Ok(Err(e)) => ProbeResult::Down(e),
        Err(_) => ProbeResult::Down(format!("no answer within {timeout:?}")),
    }
}

/// `pgdaemon-agent monitor`: connect the store (if any), start the sinks, probe until `shutdown`.
pub async fn start(cfg: MonitorConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let store = match &cfg.store {
        Some(s) => Some(pgdaemon_dcs::connect(s).await.context("store")?),
        None => None,
    };
    let events = cfg.events.start(store).context("events")?;
    let monitor = Monitor::new(&cfg, events.clone())?;
    tracing::info!(cluster = %cfg.cluster, targets = cfg.monitor.targets.len(), sinks = ?events.sink_names(), "monitor starting (never fences or promotes)");
    monitor.run(Duration::from_millis(cfg.monitor.interval_ms), shutdown).await;
    if !events.flush(Duration::from_secs(5)).await {
        tracing::warn!(stats = ?events.stats(), "events still undelivered at exit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "watch"
[monitor]
[[monitor.targets]]
name = "db1"
dsn = "host=127.0.0.1 port=5432 user=monitor dbname=postgres"
"#;

    #[test]
    fn parses_with_defaults_and_names_bad_keys() {
        let c = MonitorConfig::parse(GOOD, &[]).unwrap();
        assert_eq!((c.monitor.interval_ms, c.monitor.connect_timeout_ms), (5_000, 3_000));
        assert!(c.store.is_none() && c.events.store);
        let env = [("PGDAEMON_MONITOR__INTERVAL_MS".to_string(), "1000".to_string())];
        assert_eq!(MonitorConfig::parse(GOOD, &env).unwrap().monitor.interval_ms, 1000);
        for (bad, key) in [
            (GOOD.replace("port=5432", "port=5432 password=x"), "monitor.targets[0].dsn"),
            (GOOD.replace("host=127.0.0.1 port", "hostaddr=nope port"), "monitor.targets[0].dsn"),
            (GOOD.replace("name = \"db1\"", "name = \"a/b\""), "monitor.targets[0].name"),
            (GOOD.replace("[monitor]", "[monitor]\ninterval_ms = 5"), "monitor.interval_ms"),
            (GOOD.replace("cluster = \"watch\"", "cluster = \"\""), "cluster"),
            (GOOD.replace("[monitor]", "[events]\nwebhook_url = \"x\"\n[monitor]"), "events.webhook_url"),
            (format!("{GOOD}[[monitor.targets]]\nname = \"db1\"\ndsn = \"host=x\"\n"), "monitor.targets[1].name"),
        ] {
            let err = MonitorConfig::parse(&bad, &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}\n=> {err}");
        }
        let err = MonitorConfig::parse("cluster = \"w\"\n[monitor]\ntargets = []\n", &[]).unwrap_err().to_string();
        assert!(err.contains("monitor.targets"), "{err}");
        assert!(MonitorConfig::parse(&format!("{GOOD}surprise = 1\n"), &[]).is_err());
    }

    #[test]
    fn the_example_file_is_valid() {
        let c = MonitorConfig::parse(include_str!("../config/monitor.example.toml"), &[]).unwrap();
        assert_eq!(c.monitor.targets.len(), 2);
    }
}
