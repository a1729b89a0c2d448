//! The agent's configuration: one TOML file plus `PGDAEMON_*` environment overrides (double
//! underscore for nesting, e.g. `PGDAEMON_NODE__NAME=pg-2`), validated at start. Every rejection
//! names the offending key, and a rejected configuration starts nothing.
//!
//! The file never holds a password: the replication password comes from a file or an SSM
//! parameter (see [`crate::secrets`]), so the configuration can be printed and logged as it is.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pgdaemon_core::config::load_layered;
use pgdaemon_core::keys::{validate_cluster_name, validate_member_name};
use pgdaemon_core::{ConfigError, DynamicConfig, MemberTags, StoreConfig};
use pgdaemon_dcs::fence_config::{FenceConfigError, FencerConfig, Fencing, AGENT_DEFAULT, AGENT_FENCERS};
use serde::{Deserialize, Serialize};

pub use crate::logging::LogFormat;
use crate::postgres::PeerTls;
use crate::secrets::{load_ssm_secret, read_password_file, Secret, SecretError};

/// The whole agent configuration (the top level of the TOML file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Cluster name: the DynamoDB partition / etcd path segment shared by all members.
    pub cluster: String,
    pub node: NodeConfig,
    pub postgres: PostgresConfig,
    pub store: StoreConfig,
    /// Written into the cluster record only when this agent bootstraps the cluster; afterwards
    /// the record's copy (changed with `pgdctl`) is the one every member follows.
    /// Strict: the stored copy ignores unknown keys, a file must not (a typo is an error).
    #[serde(default, deserialize_with = "pgdaemon_core::config::strict")]
    pub dynamic: DynamicConfig,
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    /// Where events go (store log, webhook, command hook); see `crate::events`.
    #[serde(default)]
    pub events: crate::events::EventsConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Hardware watchdog (`/dev/watchdog`), off by default.
    #[serde(default)]
    pub watchdog: crate::watchdog::WatchdogConfig,
    /// Who may change this node through its HTTP API (see `crate::api_security`).
    #[serde(default)]
    pub api: crate::api_security::ApiConfig,
    /// Automatic bootstrap of a cluster without a record (docs/bootstrap.md), off by default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub bootstrap: crate::postgres::BootstrapConfig,
    /// The WAL archive and base backups in S3 through barman-cloud (docs/backups.md); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::postgres::ArchiveConfig>,
}

/// This member's identity and how peers reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Member name: part of store keys, replication slot names and `application_name`.
    pub name: String,
    /// Where the HTTP API listens (Patroni's `restapi.listen`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The API's URL as other hosts and load balancers reach it. Default: `http://<pg_host>:<listen port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Host name or address peers use to reach this Postgres (Patroni's `postgresql.connect_address`).
    pub pg_host: String,
    /// Port peers use to reach this Postgres. Default: `postgres.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_port: Option<u16>,
    /// EC2 instance id. Set it on hosts without IMDS; on EC2 it is read from IMDSv2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Availability zone. Set it on hosts without IMDS; on EC2 it is read from IMDSv2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    /// Ask the EC2 instance metadata service (IMDSv2) for whatever is not set above.
    #[serde(default = "default_true")]
    pub imds: bool,
    /// IMDS base URL (tests point it at a local server).
    #[serde(default = "default_imds_endpoint")]
    pub imds_endpoint: String,
    /// Strict like `dynamic`: stored in heartbeats (lenient there), typed by hand here.
    #[serde(default, deserialize_with = "pgdaemon_core::config::strict")]
    pub tags: MemberTags,
}

/// The local Postgres and how the agent controls it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Directory holding `pg_ctl`, `postgres`, `initdb`, `pg_basebackup`, `pg_rewind`.
    pub bin_dir: PathBuf,
    /// The data directory (created by bootstrap or pg_basebackup when absent).
    pub data_dir: PathBuf,
    /// The port Postgres listens on.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Where the agent connects to its own Postgres: a Unix socket directory or a host name.
    #[serde(default = "default_connect_host")]
    pub connect_host: String,
    /// Superuser the agent connects as (local trust/peer authentication expected).
    #[serde(default = "default_superuser")]
    pub superuser: String,
    /// Database the agent connects to.
    #[serde(default = "default_database")]
    pub database: String,
    /// Role replicas use to stream from the primary.
    #[serde(default = "default_replication_user")]
    pub replication_user: String,
    /// File holding the replication password (mode 0600 or stricter; a trailing newline is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// SSM Parameter Store name of a SecureString holding the replication password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssm_parameter: Option<String>,
    /// OS user the Postgres tools run as (they refuse root). Default: `postgres` when the agent
    /// runs as root, else the agent's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Server log file for `pg_ctl -l` (writable by `run_as`). Default: none (use `logging_collector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<PathBuf>,
    /// Server settings passed at every start (`-c name=value`); they win over the configuration
    /// files pg_rewind and pg_basebackup copy from another member (e.g. `listen_addresses`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, ParamValue>,
    /// Role for pg_rewind and the CHECKPOINT before it on the source (default: `superuser`); it
    /// needs the grants in docs/security.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_user: Option<String>,
    /// File (mode 0600 or stricter) or SSM SecureString holding the rewind role's password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewind_ssm_parameter: Option<String>,
    /// Where the agent writes the passfile its connections to peers name (default:
    /// `<data_dir>.pgpass`, beside the data directory); passwords are never on a command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passfile: Option<PathBuf>,
    /// libpq TLS settings for streaming, pg_basebackup and pg_rewind (`sslmode`, `sslrootcert`,
    /// `sslcert`, `sslkey`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: PeerTls,
    /// Seconds the primary keeps the replication slot of a member that left the cluster and
    /// streams from nowhere before dropping it; 0 keeps such slots forever.
    #[serde(default = "default_departed_slot_retention_s")]
    pub departed_slot_retention_s: u64,
}

impl PostgresConfig {
    /// The replication password as configured: `Ok(None)` when neither source is set (trust or
    /// certificate authentication).
    pub async fn replication_password(&self) -> Result<Option<Secret>, SecretError> {
        read_secret(self.password_file.as_deref(), self.ssm_parameter.as_deref()).await
    }

    /// The rewind role's password as configured (`Ok(None)`: none).
    pub async fn rewind_password(&self) -> Result<Option<Secret>, SecretError> {
        read_secret(self.rewind_password_file.as_deref(), self.rewind_ssm_parameter.as_deref()).await
    }

    /// How long a departed member's slot is kept (`None`: forever).
    pub fn departed_slot_retention(&self) -> Option<std::time::Duration> {
        (self.departed_slot_retention_s > 0).then(|| std::time::Duration::from_secs(self.departed_slot_retention_s))
    }
}

async fn read_secret(file: Option<&Path>, ssm_parameter: Option<&str>) -> Result<Option<Secret>, SecretError> {
    if let Some(path) = file {
        return read_password_file(path).map(Some);
    }
    match ssm_parameter {
        None => Ok(None),
        Some(name) => load_ssm_secret(name).await.map(Some),
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_departed_slot_retention_s() -> u64 {
    pgdaemon_core::agent::DEFAULT_DEPARTED_SLOT_RETENTION.as_secs()
}

/// A server setting's value as written in TOML (`max_connections = 100`, `wal_level = "replica"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(b) => write!(f, "{}", if *b { "on" } else { "off" }),
            ParamValue::Int(i) => write!(f, "{i}"),
            ParamValue::Float(x) => write!(f, "{x}"),
            ParamValue::Text(t) => f.write_str(t),
        }
    }
}

/// The agent-hosted coordinator, for deployments without the Lambda.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Run the coordinator inside this agent (see `coordinator_mode`). Off by default: the
    /// Lambda is the coordinator.
    #[serde(default)]
    pub enabled: bool,
    /// Hosted coordinator's fencers, in order: `http` (the old primary's agent `POST /demote`),
    /// `command` (needs `fence_command`), or `["off"]` (promote only after the old primary's
    /// lease was observed unchanged for a full lease). Empty means `["http"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fencing: Vec<String>,
    /// Shell command of the `command` fencer (exit 0 = confirmed fenced; target in
    /// `PGDAEMON_FENCE_*` environment variables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence_command: Option<String>,
    /// Hosted coordinator's evaluation interval without a trigger (ms). 0 means 1000.
    #[serde(default)]
    pub interval_ms: u64,
    /// The primary's agent refusing connections this long (its process is gone) starts a
    /// failover before the lease runs out (docs/design.md section 4, "Early failover on
    /// evidence"). Unset: 1000; 0: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_down_after_ms: Option<u64>,
    /// Not hosting: fast-path runs go to this Lambda function (name or ARN) by asynchronous
    /// invoke. Unset and not hosting: no fast path (the schedule alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_function: Option<String>,
}

impl CoordinatorConfig {
    /// The hosted coordinator's fencers as the shared builder describes them ([`FencerConfig`]),
    /// checked: known names for this place, `off` alone, none twice, `command` with a command.
    /// `timeout` bounds each `http` request and `command` run.
    pub fn fencer_config(&self, timeout: std::time::Duration) -> Result<FencerConfig, ConfigError> {
        let fencing = Fencing::parse(&self.fencing, AGENT_FENCERS, AGENT_DEFAULT)
            .map_err(|e| ConfigError::invalid("coordinator.fencing", format!("is invalid: {e}")))?;
        FencerConfig::new(fencing, timeout, self.fence_command.clone()).map_err(|e| match e {
            FenceConfigError::NoCommand => ConfigError::invalid("coordinator.fence_command", format!("is required: {e}")),
            other => ConfigError::invalid("coordinator.fencing", format!("is invalid: {other}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `pgdaemon_agent=debug,info`); `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: default_level() }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8008".into()
}
fn default_true() -> bool {
    true
}
fn default_imds_endpoint() -> String {
    "http://169.254.169.254".into()
}
fn default_pg_port() -> u16 {
    5432
}
fn default_connect_host() -> String {
    "/var/run/postgresql".into()
}
fn default_superuser() -> String {
    "postgres".into()
}
fn default_database() -> String {
    "postgres".into()
}
fn default_replication_user() -> String {
    "replicator".into()
}
fn default_level() -> String {
    "info".into()
}

/// Top-level keys an environment override may address. Other `PGDAEMON_*` variables (the
/// Makefile's `PGDAEMON_VENV`, say) are not configuration and are left alone.
const SECTIONS: [&str; 12] = [
    "api",
    "cluster",
    "node",
    "postgres",
    "store",
    "dynamic",
    "coordinator",
    "events",
    "log",
    "watchdog",
    "bootstrap",
    "archive",
];

/// Programs a node needs in `postgres.bin_dir` for every role change it may carry out.
pub const REQUIRED_PROGRAMS: [&str; 6] = ["pg_ctl", "postgres", "initdb", "pg_basebackup", "pg_rewind", "psql"];

/// Environment variables that look like overrides but address no configuration section. They are
/// not applied; the caller logs them so a typo (`PGDAEMON_NDOE__NAME`) does not go unnoticed.
pub fn ignored_env_vars(env: &[(String, String)]) -> Vec<String> {
    env.iter().filter(|(k, _)| k.starts_with("PGDAEMON_") && !is_config_var(k)).map(|(k, _)| k.clone()).collect()
}

fn is_config_var(var: &str) -> bool {
    let rest = &var["PGDAEMON_".len()..];
    let first = rest.split("__").next().unwrap_or_default().to_ascii_lowercase();
    SECTIONS.contains(&first.as_str())
}

impl AgentConfig {
    /// Parses and validates the configuration without touching the filesystem.
    pub fn parse(toml_text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let overrides = env.iter().filter(|(k, _)| k.starts_with("PGDAEMON_") && is_config_var(k)).cloned();
        let cfg: AgentConfig = load_layered(toml_text, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads `path`, applies `env` overrides, validates values and checks the paths it names.
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
        let cfg = Self::parse(&text, env)?;
        cfg.check_paths()?;
        Ok(cfg)
    }

    /// Value checks (no filesystem access).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cluster_name(&self.cluster).map_err(|r| ConfigError::invalid("cluster", r))?;
        self.events.validate()?;
        self.api.validate()?;
        let node = &self.node;
        validate_member_name(&node.name).map_err(|r| ConfigError::invalid("node.name", r))?;
        node.listen_addr()?;
        if let Some(url) = &node.api_url {
            check_http_url("node.api_url", url)?;
        }
        if node.pg_host.trim().is_empty() || node.pg_host.contains(char::is_whitespace) {
            return Err(ConfigError::invalid("node.pg_host", format!("{:?} must be a host name or address", node.pg_host)));
        }
        if node.pg_port == Some(0) {
            return Err(ConfigError::invalid("node.pg_port", "must be between 1 and 65535"));
        }
        for (key, value) in [("node.instance_id", &node.instance_id), ("node.availability_zone", &node.availability_zone)] {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError::invalid(key, "must not be empty (leave it out to read it from IMDS)"));
            }
        }
        check_http_url("node.imds_endpoint", &node.imds_endpoint)?;

        let pg = &self.postgres;
        if pg.port == 0 {
            return Err(ConfigError::invalid("postgres.port", "must be between 1 and 65535"));
        }
        for (key, value) in [
            ("postgres.connect_host", &pg.connect_host),
            ("postgres.superuser", &pg.superuser),
            ("postgres.database", &pg.database),
            ("postgres.replication_user", &pg.replication_user),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::invalid(key, "must not be empty"));
            }
        }
        if pg.run_as.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(ConfigError::invalid("postgres.run_as", "must not be empty (leave it out for the default)"));
        }
        if let Some(path) = pg.log_file.as_ref().filter(|p| !p.is_absolute()) {
            return Err(ConfigError::invalid("postgres.log_file", format!("{} must be an absolute path", path.display())));
        }
        for name in pg.parameters.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(ConfigError::invalid(format!("postgres.parameters.{name}"), "is not a PostgreSQL setting name"));
            }
        }
        if !pg.bin_dir.is_absolute() {
            return Err(ConfigError::invalid("postgres.bin_dir", format!("{} must be an absolute path", pg.bin_dir.display())));
        }
        if !pg.data_dir.is_absolute() {
            return Err(ConfigError::invalid("postgres.data_dir", format!("{} must be an absolute path", pg.data_dir.display())));
        }
        check_secret_source(("postgres.password_file", &pg.password_file), ("postgres.ssm_parameter", &pg.ssm_parameter))?;
        check_secret_source(
            ("postgres.rewind_password_file", &pg.rewind_password_file),
            ("postgres.rewind_ssm_parameter", &pg.rewind_ssm_parameter),
        )?;
        if pg.rewind_user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(ConfigError::invalid("postgres.rewind_user", "must not be empty (leave it out to use the superuser)"));
        }
        if let Some(path) = pg.passfile.as_ref().filter(|p| !p.is_absolute()) {
            return Err(ConfigError::invalid("postgres.passfile", format!("{} must be an absolute path", path.display())));
        }
        pg.tls.validate().map_err(|(key, reason)| ConfigError::invalid(format!("postgres.tls.{key}"), reason))?;
        for (key, path) in [("sslrootcert", &pg.tls.sslrootcert), ("sslcert", &pg.tls.sslcert), ("sslkey", &pg.tls.sslkey)] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err(ConfigError::invalid(
                    format!("postgres.tls.{key}"),
                    format!("{} must be an absolute path", path.display()),
                ));
            }
        }

        self.bootstrap.validate().map_err(|(key, reason)| ConfigError::invalid(format!("bootstrap.{key}"), reason))?;
        if let Some(archive) = &self.archive {
            archive.validate().map_err(|(key, reason)| ConfigError::invalid(format!("archive.{key}"), reason))?;
            // The agent owns these while it archives: a second value would silently lose.
            if let Some(own) = ["archive_mode", "archive_command", "archive_timeout", "restore_command"]
                .iter()
                .find(|k| pg.parameters.contains_key(**k))
            {
                return Err(ConfigError::invalid(
                    format!("postgres.parameters.{own}"),
                    "is set by the agent from [archive]; remove it here",
                ));
            }
        }
        if self.bootstrap.enabled {
            // What a bootstrapped cluster needs for its replicas to clone the primary at all.
            if pg.replication_user == pg.superuser {
                return Err(ConfigError::invalid(
                    "postgres.replication_user",
                    "automatic bootstrap creates a dedicated replication role: name one other than the superuser",
                ));
            }
            if pg.password_file.is_none() && pg.ssm_parameter.is_none() {
                return Err(ConfigError::invalid(
                    "postgres.password_file",
                    "automatic bootstrap needs the replication role's password (password_file or ssm_parameter): \
                     its pg_hba lets peers in with scram-sha-256 only",
                ));
            }
            if self.bootstrap.peer_networks.is_empty() {
                return Err(ConfigError::invalid(
                    "bootstrap.peer_networks",
                    "list the members' networks (CIDR): pg_hba lets the replication and rewind roles in from them only",
                ));
            }
        }
        self.dynamic.validate().map_err(|e| prefix_key("dynamic", e))?;
        self.store.validate()?;
        if self.coordinator.enabled {
            // The same checks the hosted coordinator's start runs (the timeout is not checked).
            self.coordinator.fencer_config(std::time::Duration::from_secs(1))?;
        }
        crate::logging::validate_filter(&self.log.level).map_err(|r| ConfigError::invalid("log.level", r))?;
        Ok(())
    }

    /// Filesystem checks: the programs in `bin_dir`, a usable `data_dir`, the password file.
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        let pg = &self.postgres;
        if !pg.bin_dir.is_dir() {
            return Err(ConfigError::invalid("postgres.bin_dir", format!("{} is not a directory", pg.bin_dir.display())));
        }
        for program in REQUIRED_PROGRAMS {
            let path = pg.bin_dir.join(program);
            if !is_executable(&path) {
                return Err(ConfigError::invalid(
                    "postgres.bin_dir",
                    format!("{} has no executable {program}", pg.bin_dir.display()),
                ));
            }
        }
        if pg.data_dir.exists() {
            if !pg.data_dir.is_dir() {
                return Err(ConfigError::invalid(
                    "postgres.data_dir",
                    format!("{} exists and is not a directory", pg.data_dir.display()),
                ));
            }
        } else if !pg.data_dir.parent().is_some_and(Path::is_dir) {
            return Err(ConfigError::invalid(
                "postgres.data_dir",
                format!("neither {} nor its parent directory exists", pg.data_dir.display()),
            ));
        }
        for (key, path) in [
            ("postgres.password_file", &pg.password_file),
            ("postgres.rewind_password_file", &pg.rewind_password_file),
            ("postgres.tls.sslrootcert", &pg.tls.sslrootcert),
            ("postgres.tls.sslcert", &pg.tls.sslcert),
            ("postgres.tls.sslkey", &pg.tls.sslkey),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_file()) {
                return Err(ConfigError::invalid(key, format!("{} is not a readable file", path.display())));
            }
        }
        Ok(())
    }

    /// The port peers use to reach this Postgres.
    pub fn advertised_pg_port(&self) -> u16 {
        self.node.pg_port.unwrap_or(self.postgres.port)
    }

    /// The API URL written into the heartbeat: `node.api_url`, or `https://` (API over TLS,
    /// `[api] tls_cert_file`) or `http://` with `pg_host` and the listen port. The coordinators'
    /// `http` fencer and the failsafe peers call this URL.
    pub fn advertised_api_url(&self) -> String {
        match &self.node.api_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let port = self.node.listen_addr().map(|a| a.port()).unwrap_or(8008);
                let host =
                    if self.node.pg_host.contains(':') { format!("[{}]", self.node.pg_host) } else { self.node.pg_host.clone() };
                let scheme = if self.api.tls_enabled() { "https" } else { "http" };
                format!("{scheme}://{host}:{port}")
            }
        }
    }

    /// The configuration as TOML, for `check-config`. It holds no secret values (only where
    /// they are read from), so nothing needs masking.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

impl NodeConfig {
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid("node.listen", format!("{:?} is not an address:port like 0.0.0.0:8008", self.listen))
        })
    }
}

/// A secret comes from a file (absolute path) or an SSM parameter, not both.
fn check_secret_source(file: (&str, &Option<PathBuf>), ssm: (&str, &Option<String>)) -> Result<(), ConfigError> {
    match (file.1, ssm.1) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(ssm.0, format!("set either {} or {}, not both", file.0, ssm.0))),
        (_, Some(name)) => {
            if !cfg!(feature = "ssm") {
                return Err(ConfigError::invalid(
                    ssm.0,
                    format!("this agent was built without the `ssm` feature; use {}", file.0),
                ));
            }
            crate::secrets::check_ssm_parameter_name(name).map_err(|r| ConfigError::invalid(ssm.0, r))
        }
        (Some(path), None) if !path.is_absolute() => {
            Err(ConfigError::invalid(file.0, format!("{} must be an absolute path", path.display())))
        }
        _ => Ok(()),
    }
}

fn check_http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(char::is_whitespace) => Ok(()),
        _ => Err(ConfigError::invalid(key, format!("{url:?} must be an http:// or https:// URL with a host"))),
    }
}

fn prefix_key(section: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { key, reason } => ConfigError::Invalid { key: format!("{section}.{key}"), reason },
        other => other,
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The process environment as pairs, for [`AgentConfig::parse`].
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// A config file path relative to the working directory, as given on the command line.
pub fn default_config_path() -> PathBuf {
    PathBuf::from("/etc/pgdaemon/pgdaemon.toml")
}
