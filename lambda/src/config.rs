//! The Lambda's configuration, from environment variables only (validated at cold start; a bad
//! value fails the init with the variable's name, so nothing runs on a bad configuration).
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PGDAEMON_TABLE` | `pgdaemon` | DynamoDB table |
//! | `PGDAEMON_CLUSTERS` | (none) | comma-separated cluster names evaluated besides the registered ones (required with `PGDAEMON_DISCOVERY=off`) |
//! | `PGDAEMON_DISCOVERY` | `registry` | `registry`: also evaluate every cluster the agents registered (fleet mode, `crate::fleet`); `off`: only `PGDAEMON_CLUSTERS` |
//! | `PGDAEMON_CLUSTERS_PER_INVOCATION` | 250 | a scheduled run with more clusters evaluates a shard itself and invokes this function asynchronously for each other shard (needs `lambda:InvokeFunction` on itself) |
//! | `PGDAEMON_FENCING` | `ec2,ssm,http` | fencers in order (`ec2`, `ssm`, `http`), or `off` (S3 by lease expiry only) |
//! | `PGDAEMON_CLUSTER_TAG_KEY` | `pgdaemon:cluster` | EC2 tag that must equal the cluster name before an instance is fenced |
//! | `PGDAEMON_SSM_COMMAND` | stop agent and Postgres, verify | shell run by SSM `AWS-RunShellScript` |
//! | `PGDAEMON_HTTP_TIMEOUT_MS` | 15000 | agent `POST /demote` timeout (connecting: at most 1 s of it) |
//! | `PGDAEMON_FENCE_TIMEOUT_MS` | 60000 | give up on a fencer pending this long |
//! | `PGDAEMON_PROMOTE_TIMEOUT_MS` | 30000 | replace a designated candidate that died before promoting |
//! | `PGDAEMON_AGENT_DOWN_AFTER_MS` | 1000 | the primary's agent refusing connections this long (its process is gone) starts a failover before the lease runs out, and a fenced old primary's lease is released for the candidate (docs/design.md section 4, "Early failover on evidence"); 0: off, failovers wait for the lease |
//! | `PGDAEMON_LOCK_LEASE_MS` | 10000 | coordinator lock lease |
//! | `PGDAEMON_HEARTBEAT_STALE_MS` | derived | heartbeat age (by observed seq) that counts as down |
//! | `PGDAEMON_RUN_BUDGET_MS` | 50000 | time one invocation spends driving a cluster (keep below the function timeout) |
//! | `PGDAEMON_POLL_MS` | 100 | pause between runs while a transition is under way (each run is one read of the cluster: a transition of a few seconds costs tens of reads, and every step the agents take is seen within this) |
//! | `PGDAEMON_CONCURRENCY` | 16 | clusters evaluated at once (a cluster in a failover keeps its slot until it settles, so a few failing clusters must not stall the fleet's evaluation) |
//! | `PGDAEMON_SNS_TOPIC_ARN` | (none) | SNS topic for change-of-primary events (see `events`) |
//! | `PGDAEMON_API_TOKEN_PARAMETER` | (none) | absolute name of the SSM SecureString holding the agents' API bearer token (`/pgdaemon/<cluster>/api-token`, the agents' `[api] token_ssm_parameter`); `{cluster}` in the name is replaced by each cluster's name (a fleet coordinator, one token per cluster); the `http` fencer sends `Authorization: Bearer <token>`. Read with decryption at the first HTTP fence, never at init; while it cannot be read the `http` fencer fails (the chain moves on). Unset: no credentials, and agents answer 401 |
//! | `PGDAEMON_API_CA_FILE` | (none) | PEM CA verifying `https://` agents (`[api] tls_cert_file`), a path inside the deployment package (`/var/task/...`) or a layer (`/opt/...`); read at init, an unusable file fails it. Unset: the system's roots. No client certificate is sent: agents with `tls_client_ca_file` refuse this fencer |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pgdaemon_core::coordinator::CoordinatorConfig;
use pgdaemon_core::keys::validate_cluster_name;
use pgdaemon_core::ConfigError;
pub use pgdaemon_dcs::fence_config::{FencerKind, Fencing};
use pgdaemon_dcs::fence_config::{LAMBDA_DEFAULT, LAMBDA_FENCERS};

/// Default SSM fencing script: stop the agent (so it cannot restart Postgres) and Postgres, then
/// succeed only if no postgres process is left.
pub const DEFAULT_SSM_COMMAND: &str = "systemctl stop pgdaemon-agent postgresql || true; \
pkill -9 -x postgres || true; sleep 1; if pgrep -x postgres >/dev/null; then echo 'postgres still running' >&2; exit 1; fi; echo fenced";

#[derive(Debug, Clone, PartialEq)]
pub struct LambdaConfig {
    pub table: String,
    /// `PGDAEMON_CLUSTERS`: always evaluated.
    pub clusters: Vec<String>,
    /// `PGDAEMON_DISCOVERY=registry`: the registered clusters are evaluated too.
    pub discovery: bool,
    /// `PGDAEMON_CLUSTERS_PER_INVOCATION`.
    pub clusters_per_invocation: usize,
    /// `PGDAEMON_FENCING`: the fencers in order, or off.
    pub fencing: Fencing,
    pub cluster_tag_key: String,
    pub ssm_command: String,
    pub http_timeout: Duration,
    pub coordinator: CoordinatorConfig,
    pub run_budget: Duration,
    pub poll: Duration,
    pub concurrency: usize,
    /// `PGDAEMON_API_TOKEN_PARAMETER`: SSM parameter holding the agents' API bearer token.
    pub api_token_parameter: Option<String>,
    /// `PGDAEMON_API_CA_FILE`: CA verifying the agents' API certificates (`https://` URLs).
    pub api_ca_file: Option<PathBuf>,
}

const KNOWN: &[&str] = &[
    "PGDAEMON_TABLE",
    "PGDAEMON_CLUSTERS",
    "PGDAEMON_DISCOVERY",
    "PGDAEMON_CLUSTERS_PER_INVOCATION",
    "PGDAEMON_FENCING",
    "PGDAEMON_CLUSTER_TAG_KEY",
    "PGDAEMON_SSM_COMMAND",
    "PGDAEMON_HTTP_TIMEOUT_MS",
    "PGDAEMON_FENCE_TIMEOUT_MS",
    "PGDAEMON_PROMOTE_TIMEOUT_MS",
    "PGDAEMON_AGENT_DOWN_AFTER_MS",
    "PGDAEMON_LOCK_LEASE_MS",
    "PGDAEMON_HEARTBEAT_STALE_MS",
    "PGDAEMON_RUN_BUDGET_MS",
    "PGDAEMON_POLL_MS",
    "PGDAEMON_CONCURRENCY",
    // Read by `events` (SNS topic of change-of-primary events; unset: none published).
    "PGDAEMON_SNS_TOPIC_ARN",
    "PGDAEMON_API_TOKEN_PARAMETER",
    "PGDAEMON_API_CA_FILE",
];

fn env_err(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Env { var: var.to_string(), reason: reason.into() }
}

impl LambdaConfig {
    /// Reads and validates the configuration from `vars` (normally `std::env::vars()`).
    /// Unknown `PGDAEMON_*` variables are rejected, so a typo is named instead of ignored.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("PGDAEMON_")).collect();
        if let Some(unknown) = vars.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(env_err(unknown, format!("unknown setting; known: {}", KNOWN.join(", "))));
        }
        let get = |k: &str| vars.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let ms = |k: &str, default: u64, min: u64| -> Result<u64, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => {
                    let n: u64 = v.parse().map_err(|_| env_err(k, format!("{v:?} is not a whole number of milliseconds")))?;
                    if n < min {
                        return Err(env_err(k, format!("{n} is below the minimum {min}")));
                    }
                    Ok(n)
                }
            }
        };
        let table = get("PGDAEMON_TABLE").unwrap_or_else(|| "pgdaemon".into());
        if table.len() < 3 || table.len() > 255 {
            return Err(env_err("PGDAEMON_TABLE", "must be 3 to 255 characters"));
        }
        let discovery = match get("PGDAEMON_DISCOVERY").as_deref() {
            None | Some("registry") => true,
            Some("off") => false,
            Some(other) => return Err(env_err("PGDAEMON_DISCOVERY", format!("{other:?} is not one of registry, off"))),
        };
        let clusters_raw = get("PGDAEMON_CLUSTERS");
        if clusters_raw.is_none() && !discovery {
            return Err(env_err("PGDAEMON_CLUSTERS", "is required with PGDAEMON_DISCOVERY=off: comma-separated cluster names"));
        }
        let mut clusters = Vec::new();
        for c in clusters_raw.iter().flat_map(|raw| raw.split(',')).map(str::trim) {
            validate_cluster_name(c).map_err(|e| env_err("PGDAEMON_CLUSTERS", e))?;
            if clusters.iter().any(|x| x == c) {
                return Err(env_err("PGDAEMON_CLUSTERS", format!("{c:?} is listed twice")));
            }
            clusters.push(c.to_string());
        }
        let names: Vec<String> = get("PGDAEMON_FENCING").map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
        let fencing =
            Fencing::parse(&names, LAMBDA_FENCERS, LAMBDA_DEFAULT).map_err(|e| env_err("PGDAEMON_FENCING", e.to_string()))?;
        let cluster_tag_key = get("PGDAEMON_CLUSTER_TAG_KEY").unwrap_or_else(|| "pgdaemon:cluster".into());
        if cluster_tag_key.len() > 128 {
            return Err(env_err("PGDAEMON_CLUSTER_TAG_KEY", "EC2 tag keys are at most 128 characters"));
        }
        let ssm_command = get("PGDAEMON_SSM_COMMAND").unwrap_or_else(|| DEFAULT_SSM_COMMAND.into());
        let coordinator = CoordinatorConfig {
            fencing: fencing.policy(),
            lock_lease_ms: ms("PGDAEMON_LOCK_LEASE_MS", 10_000, 1000)?,
            heartbeat_stale_ms: match get("PGDAEMON_HEARTBEAT_STALE_MS") {
                None => None,
                Some(_) => Some(ms("PGDAEMON_HEARTBEAT_STALE_MS", 0, 100)?),
            },
            fence_pending_timeout_ms: ms("PGDAEMON_FENCE_TIMEOUT_MS", 60_000, 1000)?,
            promote_timeout_ms: ms("PGDAEMON_PROMOTE_TIMEOUT_MS", 30_000, 1000)?,
            agent_down_after_ms: ms("PGDAEMON_AGENT_DOWN_AFTER_MS", 1_000, 0)?,
            max_steps_per_run: 8,
        };
        coordinator.validate()?;
        let run_budget = Duration::from_millis(ms("PGDAEMON_RUN_BUDGET_MS", 50_000, 1000)?);
        if run_budget > Duration::from_secs(890) {
            return Err(env_err("PGDAEMON_RUN_BUDGET_MS", "must stay below the 900 s Lambda maximum"));
        }
        let poll = Duration::from_millis(ms("PGDAEMON_POLL_MS", 100, 50)?);
        let concurrency = ms("PGDAEMON_CONCURRENCY", 16, 1)? as usize;
        let clusters_per_invocation = ms("PGDAEMON_CLUSTERS_PER_INVOCATION", 250, 1)? as usize;
        let api_token_parameter = get("PGDAEMON_API_TOKEN_PARAMETER");
        if let Some(name) = &api_token_parameter {
            // `{cluster}` (a fleet coordinator: one token per cluster) is the only placeholder.
            let bare = name.replace(crate::api_token::CLUSTER_PLACEHOLDER, "x");
            let ok_chars = bare.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
            if !name.starts_with('/') || name.len() > 2048 || !ok_chars {
                return Err(env_err(
                    "PGDAEMON_API_TOKEN_PARAMETER",
                    format!("{name:?} is not an absolute SSM parameter name like /pgdaemon/<cluster>/api-token"),
                ));
            }
        }
        let api_ca_file = get("PGDAEMON_API_CA_FILE").map(PathBuf::from);
        if let Some(path) = &api_ca_file {
            pgdaemon_dcs::tls::root_store(Some(path)).map_err(|e| env_err("PGDAEMON_API_CA_FILE", e.to_string()))?;
        }
        Ok(LambdaConfig {
            table,
            clusters,
            discovery,
            clusters_per_invocation,
            fencing,
            cluster_tag_key,
            ssm_command,
            http_timeout: Duration::from_millis(ms("PGDAEMON_HTTP_TIMEOUT_MS", 15_000, 100)?),
            coordinator,
            run_budget,
            poll,
            concurrency,
            api_token_parameter,
            api_ca_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::coordinator::FencingPolicy;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_with_clusters() {
        let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "a, b"), ("PATH", "/bin")])).unwrap();
        assert_eq!(c.clusters, vec!["a", "b"]);
        assert!(c.discovery && c.clusters_per_invocation == 250);
        assert_eq!(c.fencing, Fencing::Chain(vec![FencerKind::Ec2, FencerKind::Ssm, FencerKind::Http]));
        assert_eq!(c.coordinator.fencing, FencingPolicy::Required);
        assert_eq!(c.table, "pgdaemon");
    }

    #[test]
    fn a_fleet_coordinator_needs_no_cluster_list() {
        let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS_PER_INVOCATION", "100")])).unwrap();
        assert!(c.clusters.is_empty() && c.discovery && c.clusters_per_invocation == 100);
        let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_DISCOVERY", "off")])).unwrap();
        assert!(!c.discovery);
    }

    #[test]
    fn fencing_off_is_explicit() {
        let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_FENCING", "off")])).unwrap();
        assert_eq!(c.fencing, Fencing::Off);
        assert_eq!(c.coordinator.fencing, FencingPolicy::Off);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("PGDAEMON_DISCOVERY", "off")], "PGDAEMON_CLUSTERS"),
            (&[("PGDAEMON_DISCOVERY", "dns")], "PGDAEMON_DISCOVERY"),
            (&[("PGDAEMON_CLUSTERS_PER_INVOCATION", "0")], "PGDAEMON_CLUSTERS_PER_INVOCATION"),
            (&[("PGDAEMON_CLUSTERS", "a,,b")], "PGDAEMON_CLUSTERS"),
            (&[("PGDAEMON_CLUSTERS", "a,a")], "listed twice"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_FENCING", "ec2,stonith")], "stonith"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_FENCING", "ec2,ec2")], "listed twice"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_FENCING", "command")], "unknown fencer \"command\""),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_POLL_MS", "fast")], "PGDAEMON_POLL_MS"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_LOCK_LEASE_MS", "10")], "PGDAEMON_LOCK_LEASE_MS"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_AGENT_DOWN_AFTER_MS", "soon")], "PGDAEMON_AGENT_DOWN_AFTER_MS"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_AGENT_DOWN_AFTER_MS", "50")], "agent_down_after_ms"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_TABEL", "x")], "PGDAEMON_TABEL"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_RUN_BUDGET_MS", "1000000")], "900 s"),
            (&[("PGDAEMON_CLUSTERS", "a"), ("PGDAEMON_API_CA_FILE", "/nonexistent/ca.pem")], "PGDAEMON_API_CA_FILE"),
            (&[("PGDAEMON_API_TOKEN_PARAMETER", "/pgdaemon/{name}/api-token")], "PGDAEMON_API_TOKEN_PARAMETER"),
        ];
        for (vars, needle) in cases {
            let err = LambdaConfig::from_env(env(vars)).unwrap_err().to_string();
            assert!(err.contains(needle), "{vars:?}: {err}");
        }
    }
}
