//! Day-2 verbs that act on members through their agents' authenticated API (`POST /restart`,
//! `/reinit`, `/reload`, `/drop-slot`): `restart`, `reinit`, `reload`, `remove`; and the read-only `topology` and
//! `version`. The store says who the members are and where their agents listen; every change of
//! primary goes through the coordinator (a switchover), never through an agent directly.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use pgdaemon_core::{ClusterView, RequestAction, Role, Store};
use pgdaemon_dcs::agent_client::AgentClient;
use serde_json::json;

use crate::output::{emit, Format};
use crate::{request, view_with_record, CtlError};

/// How pgdctl reaches the agents' API.
#[derive(Debug, Clone, Args)]
pub struct ApiOpts {
    /// File holding the agents' API bearer token (the token their `[api]` section accepts).
    /// Without it, `PGDAEMON_API_TOKEN` is used, else `[api] token_file` of `--config`, else no
    /// credentials (agents then answer 401).
    #[arg(long, global = true, env = "PGDCTL_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// PEM CA that verifies `https://` agent APIs (default: `[api] tls_ca_file` of `--config`,
    /// else the system's roots).
    #[arg(long, global = true, env = "PGDCTL_API_CA_FILE")]
    pub api_ca_file: Option<PathBuf>,
}

impl ApiOpts {
    /// Fills in `[api] token_file` and `tls_ca_file` from an agent configuration file
    /// (`--config`) where neither a flag nor the environment gave them: on a node, pgdctl then
    /// reaches the agents with the credentials they use among themselves.
    pub fn with_config(mut self, config: Option<&Path>) -> Result<Self, CtlError> {
        let Some(path) = config else { return Ok(self) };
        let text = std::fs::read_to_string(path).map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| CtlError::Usage(format!("{}: {e}", path.display())))?;
        let api = table.get("api").and_then(toml::Value::as_table);
        let file = |key: &str| api.and_then(|a| a.get(key)).and_then(toml::Value::as_str).map(PathBuf::from);
        let token_in_env = std::env::var("PGDAEMON_API_TOKEN").is_ok_and(|t| !t.is_empty());
        if self.api_token_file.is_none() && !token_in_env {
            self.api_token_file = file("token_file");
        }
        if self.api_ca_file.is_none() {
            self.api_ca_file = file("tls_ca_file");
        }
        Ok(self)
    }

    /// A client whose calls may each take up to `timeout`.
    pub fn client(&self, timeout: Duration) -> Result<AgentClient, CtlError> {
        let token = match &self.api_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| CtlError::Usage(format!("--api-token-file {}: {e}", path.display())))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("PGDAEMON_API_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        let client = AgentClient::new(Duration::from_secs(2), Some(timeout))
            .with_tls(self.api_ca_file.as_deref(), None)
            .map_err(|e| CtlError::Usage(e.to_string()))?;
        Ok(client.with_bearer(token.as_deref()))
    }
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The member to restart (or `--all`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub member: Option<String>,
    /// Every member: replicas one at a time, the primary last (through a switchover unless
    /// `--in-place`).
    #[arg(long)]
    pub all: bool,
    /// Only members with a setting waiting for a restart (`pgdctl list` shows them).
    #[arg(long)]
    pub pending: bool,
    /// Restart the primary in place instead of switching over: its agent stops Postgres and
    /// starts it again under its lease. Writes stop for the restart's length; no failover.
    #[arg(long)]
    pub in_place: bool,
    /// Seconds to wait for each member to stream again (and for the switchover).
    #[arg(long, default_value_t = 120.0, value_parser = crate::parse_positive_secs)]
    pub timeout: f64,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReinitArgs {
    /// The replica to re-clone from the primary.
    pub member: String,
    /// Seconds to wait for the copy and for the member to stream again.
    #[arg(long, default_value_t = 3600.0, value_parser = crate::parse_positive_secs)]
    pub timeout: f64,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The member to reload (default: every member).
    pub member: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The member to remove: its agent must be stopped, and it must not be the primary.
    pub member: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub force: bool,
}

/// Asks `question` on a terminal; without one, only `--force` confirms.
pub(crate) fn confirm(question: &str, force: bool) -> Result<(), CtlError> {
    if force {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CtlError::Refused(format!("{question} Not confirmed: stdin is not a terminal; add --force")));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CtlError::Refused("not confirmed; nothing was changed".into()))
    }
}

fn known_member(view: &ClusterView, member: &str) -> Result<(), CtlError> {
    if view.members.contains_key(member) {
        return Ok(());
    }
    let known: Vec<&str> = view.members.keys().map(String::as_str).collect();
    Err(CtlError::Usage(format!("{member} is not a member of this cluster (members: {})", known.join(", "))))
}

fn primary_of(view: &ClusterView) -> Option<String> {
    view.cluster.as_ref().and_then(|r| r.primary.clone())
}

/// `restart`: replicas in name order, each restarted by its agent and awaited until it streams
/// again; the primary last, by a switchover (its demotion stops and restarts it as a replica),
/// or with `--in-place` by its agent under its lease. Stops at the first member that fails,
/// saying which are done.
pub async fn restart(
    store: &dyn Store,
    cluster: &str,
    api: &ApiOpts,
    args: RestartArgs,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let view = view_with_record(store, cluster).await?;
    let mut targets: Vec<String> = match &args.member {
        Some(m) => {
            known_member(&view, m)?;
            vec![m.clone()]
        }
        None => view.members.keys().cloned().collect(),
    };
    if args.pending {
        targets.retain(|m| view.states.get(m).is_some_and(|s| !s.pending_restart.is_empty()));
        if targets.is_empty() {
            writeln!(out, "no member has a pending restart; nothing to do")?;
            return Ok(());
        }
    }
    let primary = primary_of(&view);
    let (with_primary, replicas): (Vec<String>, Vec<String>) = targets.into_iter().partition(|m| Some(m) == primary.as_ref());
    let switchover = !with_primary.is_empty() && !args.in_place;
    if switchover && !view.members.values().any(|m| Some(&m.name) != primary.as_ref() && m.streaming) {
        return Err(CtlError::Refused(
            "the primary can only be restarted by a switchover, and no replica streams to take over; nothing was changed".into(),
        ));
    }
    let how = if args.in_place { "in place: writes stop meanwhile" } else { "by a switchover" };
    let plan = replicas.iter().cloned().chain(with_primary.iter().map(|p| format!("{p} (primary: {how})"))).collect::<Vec<_>>();
    confirm(&format!("Restart {} in cluster {cluster}?", plan.join(", ")), args.force)?;
    let client = api.client(timeout)?;
    let started = Instant::now();
    let mut done = Vec::new();
    for member in &replicas {
        let url = view.members[member].api_url.clone();
        let t = Instant::now();
        client.call(member, &url, "/restart", &json!({})).await.map_err(|e| stopped_at(&done, member, e.to_string()))?;
        wait_streaming(store, cluster, member, Instant::now() + timeout).await.map_err(|e| stopped_at(&done, member, e))?;
        writeln!(out, "restarted {member}: streaming again after {:.1}s", t.elapsed().as_secs_f64())?;
        done.push(member.clone());
    }
    if let Some(old) = with_primary.first().filter(|_| args.in_place) {
        let (t, term) = (Instant::now(), view.cluster.as_ref().map_or(0, |c| c.term));
        let url = view.members[old].api_url.clone();
        client
            .call(old, &url, "/restart", &json!({ "primary_in_place": true }))
            .await
            .map_err(|e| stopped_at(&done, old, e.to_string()))?;
        // The agent answers once its loop started Postgres again as primary under its lease.
        let record = store.read_cluster(cluster).await?;
        if record.as_ref().is_some_and(|r| r.term != term || r.primary.as_deref() != Some(old.as_str())) {
            return Err(stopped_at(&done, old, "the cluster moved on to another term while it restarted".into()));
        }
        writeln!(out, "restarted {old} in place: primary again after {:.1}s", t.elapsed().as_secs_f64())?;
        done.push(old.clone());
    } else if let Some(old) = with_primary.first() {
        writeln!(out, "switching over from {old} (the primary restarts as a replica)")?;
        request::act(store, cluster, RequestAction::Switchover, None, false, timeout, out).await?;
        wait_streaming(store, cluster, old, Instant::now() + timeout).await.map_err(|e| stopped_at(&done, old, e))?;
        writeln!(out, "restarted {old}: streaming from the new primary")?;
        done.push(old.clone());
    }
    writeln!(out, "ok: restarted {} in {:.1}s", done.join(", "), started.elapsed().as_secs_f64())?;
    Ok(())
}

fn stopped_at(done: &[String], member: &str, why: String) -> CtlError {
    let done = if done.is_empty() { "none".to_string() } else { done.join(", ") };
    CtlError::Refused(format!("restarting {member}: {why} (restarted before it: {done}; the rest were not touched)"))
}

/// Waits until a heartbeat of `member` newer than the one stored now shows a running replica
/// streaming from the primary (the stored one may predate the restart it waits for).
async fn wait_streaming(store: &dyn Store, cluster: &str, member: &str, deadline: Instant) -> Result<(), String> {
    let floor = store.read_view(cluster).await.ok().and_then(|v| v.members.get(member).map(|m| m.seq)).unwrap_or(0);
    loop {
        let last = match store.read_view(cluster).await {
            Ok(view) => match view.members.get(member) {
                Some(m) if m.seq > floor && m.pg_running && m.role == Role::Replica && m.streaming => return Ok(()),
                Some(m) => format!("running {}, role {:?}, streaming {}", m.pg_running, m.role, m.streaming),
                None => "no heartbeat".into(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("not streaming within the timeout (last seen: {last})"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `reinit`: the replica's agent replaces its data directory with a copy of the primary's; then
/// waits until it streams. Refused for the primary (and by the agent, for the lease holder).
pub async fn reinit(
    store: &dyn Store,
    cluster: &str,
    api: &ApiOpts,
    args: ReinitArgs,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let member = args.member.as_str();
    let view = view_with_record(store, cluster).await?;
    known_member(&view, member)?;
    if primary_of(&view).as_deref() == Some(member) {
        return Err(CtlError::Refused(format!(
            "{member} is the primary: only a replica is re-cloned (switch over first); nothing was changed"
        )));
    }
    confirm(
        &format!("Re-clone {member} in cluster {cluster}? Its data directory is replaced by a copy of the primary's."),
        args.force,
    )?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let started = Instant::now();
    let client = api.client(timeout)?;
    client
        .call(member, &view.members[member].api_url, "/reinit", &json!({}))
        .await
        .map_err(|e| CtlError::Refused(e.to_string()))?;
    wait_streaming(store, cluster, member, started + timeout).await.map_err(CtlError::Timeout)?;
    writeln!(out, "ok: {member} re-cloned and streaming after {:.1}s", started.elapsed().as_secs_f64())?;
    Ok(())
}

/// `reload`: `pg_reload_conf()` on one member or all; reports each, fails if any failed.
pub async fn reload(
    store: &dyn Store,
    cluster: &str,
    api: &ApiOpts,
    member: Option<String>,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let view = view_with_record(store, cluster).await?;
    if let Some(m) = &member {
        known_member(&view, m)?;
    }
    let client = api.client(Duration::from_secs(10))?;
    let mut failed = Vec::new();
    for m in view.members.values().filter(|m| member.as_ref().is_none_or(|only| *only == m.name)) {
        match client.call(&m.name, &m.api_url, "/reload", &json!({})).await {
            Ok(_) => writeln!(out, "reloaded {}", m.name)?,
            Err(e) => failed.push(format!("{}: {e}", m.name)),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CtlError::Refused(format!("reload failed on {}", failed.join("; "))))
    }
}

/// `remove`: refused for the primary (or the lease holder) and while the member's heartbeat
/// still changes; then deletes its heartbeat and state and has the primary drop its slot.
pub async fn remove(
    store: &dyn Store,
    cluster: &str,
    api: &ApiOpts,
    args: RemoveArgs,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let member = args.member.as_str();
    pgdaemon_core::keys::validate_member_name(member).map_err(CtlError::Usage)?;
    let view = view_with_record(store, cluster).await?;
    known_member(&view, member)?;
    let lease_owner = view.leader.as_ref().filter(|l| !l.is_free()).map(|l| l.owner.as_str());
    if primary_of(&view).as_deref() == Some(member) || lease_owner == Some(member) {
        return Err(CtlError::Refused(format!("{member} is the primary: switch over first; nothing was changed")));
    }
    // Liveness by the heartbeat's change, never by its timestamp: watch it for as long as a live
    // agent may go without beating.
    let config = &view.cluster.as_ref().expect("checked").config;
    let watch = Duration::from_millis(config.renew_interval_ms.max(config.probe_interval_ms) * 2);
    writeln!(out, "checking that {member}'s agent is stopped ({:.0}s)", watch.as_secs_f64())?;
    tokio::time::sleep(watch).await;
    let again = store.read_view(cluster).await?;
    let (before, after) = (view.members.get(member).map(|m| m.seq), again.members.get(member).map(|m| m.seq));
    if after.is_some() && after != before {
        return Err(CtlError::Refused(format!("{member}'s agent is still beating: stop it first; nothing was changed")));
    }
    confirm(&format!("Remove {member} from cluster {cluster} (its heartbeat, state and replication slot)?"), args.force)?;
    store.remove_member(cluster, member).await?;
    writeln!(out, "removed {member}'s heartbeat and state")?;
    let primary = primary_of(&again).and_then(|p| again.members.get(&p).cloned());
    let Some(primary) = primary else {
        return Err(CtlError::Refused(format!(
            "{member} removed, but there is no primary to drop its replication slot on: run `pgdctl remove` again later or drop slot {} by hand",
            pgdaemon_core::pg::slot_name(member)
        )));
    };
    let client = api.client(Duration::from_secs(30))?;
    client
        .call(&primary.name, &primary.api_url, "/drop-slot", &json!({ "member": member }))
        .await
        .map_err(|e| CtlError::Refused(format!("{member} removed, but its replication slot was not dropped: {e}")))?;
    writeln!(out, "ok: dropped slot {} on {}", pgdaemon_core::pg::slot_name(member), primary.name)?;
    Ok(())
}

/// One member in `topology`.
#[derive(Debug, serde::Serialize)]
struct Node {
    member: String,
    state: String,
    /// The member it streams from (every replica follows the primary: pgdaemon does not cascade).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_bytes: Option<u64>,
}

/// `topology`: the primary and the members streaming from it (every replica follows the
/// primary directly: pgdaemon does not cascade).
pub fn topology(view: &ClusterView, format: Format, out: &mut impl Write) -> Result<(), CtlError> {
    let primary = primary_of(view);
    let node = |name: &str| {
        let m = view.members.get(name);
        let state = match m.map(|m| (m.pg_running, m.role, m.streaming)) {
            None => "no heartbeat".to_string(),
            Some((false, _, _)) => "stopped".to_string(),
            Some((true, Role::Primary, _)) => format!("primary, timeline {}", m.map_or(0, |m| m.timeline)),
            Some((true, Role::Replica, true)) => "streaming".to_string(),
            Some((true, _, _)) => "running, not streaming".to_string(),
        };
        let streaming = m.is_some_and(|m| m.streaming);
        let upstream = (Some(name) != primary.as_deref() && streaming).then(|| primary.clone()).flatten();
        Node { member: name.to_string(), state, upstream, lag_bytes: m.and_then(|m| m.lag_bytes).filter(|_| streaming) }
    };
    let mut nodes: Vec<Node> = primary.iter().map(|p| node(p)).collect();
    nodes.extend(view.members.keys().filter(|m| Some(*m) != primary.as_ref()).map(|m| node(m)));
    emit(out, format, &nodes, || {
        let describe = |n: &Node| match n.lag_bytes {
            Some(lag) => format!("{} ({}, lag {lag} bytes)", n.member, n.state),
            None => format!("{} ({})", n.member, n.state),
        };
        let mut s = if primary.is_some() { format!("{}\n", describe(&nodes[0])) } else { "(no primary)\n".to_string() };
        let replicas = &nodes[usize::from(primary.is_some())..];
        for (i, n) in replicas.iter().enumerate() {
            let branch = if i + 1 == replicas.len() { "└──" } else { "├──" };
            s.push_str(&format!("{branch} {}\n", describe(n)));
        }
        Ok(s)
    })
}

/// One member in `version`.
#[derive(Debug, serde::Serialize)]
struct Versions<'a> {
    member: &'a str,
    agent: &'a str,
    /// `server_version` as the member's agent last reported it (member state).
    postgres: Option<&'a str>,
}

/// `version`: pgdctl's, every agent's (from the heartbeats) and every Postgres server's (from the
/// member states).
pub fn versions(view: &ClusterView, format: Format, out: &mut impl Write) -> Result<(), CtlError> {
    let members: Vec<Versions> = view
        .members
        .values()
        .map(|m| Versions {
            member: &m.name,
            agent: if m.agent_version.is_empty() { "unknown" } else { &m.agent_version },
            postgres: view.states.get(&m.name).and_then(|s| s.postgres_version.as_deref()),
        })
        .collect();
    let doc = json!({ "pgdctl": pgdaemon_core::VERSION, "members": members });
    emit(out, format, &doc, || {
        let mut s = format!("pgdctl {}\n", pgdaemon_core::VERSION);
        for m in &members {
            s.push_str(&format!("{}: pgdaemon-agent {}, PostgreSQL {}\n", m.member, m.agent, m.postgres.unwrap_or("unknown")));
        }
        Ok(s)
    })
}
