//! pgdctl's commands. `main` only parses and sets up logging; everything else is here, so tests
//! call [`run`] (or the binary) directly.
//!
//! Exit codes (scripts may rely on them; see [`CtlError::exit_code`]):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done: the read succeeded, or the coordinator accepted (and finished) the action |
//! | 1 | refused: by the coordinator or by pgdctl's own checks; the message says why |
//! | 2 | usage or bad input (unknown flag, bad `key=value`, invalid config); nothing was changed |
//! | 3 | the store (or the Lambda) is unavailable, or holds a record that cannot be read |
//! | 4 | timed out: no coordinator answered (the request was withdrawn), or the change it started did not finish within `--timeout` |

pub mod backup;
pub mod dynconfig;
pub mod fleet;
pub mod invoke;
pub mod maintenance;
pub mod output;
pub mod request;
pub mod store_opts;
pub mod table;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use output::{emit, FormatArgs};
use pgdaemon_core::{RequestAction, Store, StoreError};
use pgdaemon_dcs::dynamodb::client_from_env;
use pgdaemon_dcs::{create_table, TableOutcome};

pub use maintenance::ApiOpts;
pub use store_opts::StoreOpts;

/// Operate pgdaemon clusters: the member table, history, planned and forced changes of primary,
/// pause/resume, the dynamic configuration, and the same actions through the Lambda.
///
/// Exit codes: 0 ok, 1 refused (the message says why), 2 usage/bad input, 3 store unavailable,
/// 4 timed out.
#[derive(Debug, Parser)]
#[command(name = "pgdctl", version, about, long_about = None)]
pub struct Cmd {
    #[command(flatten)]
    pub store: StoreOpts,
    #[command(flatten)]
    pub api: ApiOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The member table: name, host, role, state, timeline, lag in MB, tags.
    List(ListArgs),
    /// Every promotion so far (term, kind, old and new primary, LSN, duration, reason).
    History(FormatArgs),
    /// The cluster's event log (member up/down, lag, lease lost, failover steps, role changes),
    /// oldest first.
    Events(EventsArgs),
    /// Planned change of primary without data loss: the primary is demoted, the candidate
    /// catches up and is promoted. Waits for the outcome.
    Switchover(SwitchoverArgs),
    /// Forced change of primary: the current primary is fenced and the candidate (or the most
    /// advanced eligible replica) promoted. Waits for the outcome.
    Failover(FailoverArgs),
    /// Stop automatic failover (agents keep their roles). Waits for the coordinator's answer.
    Pause(WaitArgs),
    /// Resume automatic failover. Waits for the coordinator's answer.
    Resume(WaitArgs),
    /// Print the cluster's dynamic configuration (timings, lag limit, synchronous mode).
    ShowConfig(FormatArgs),
    /// Change the dynamic configuration: `--set key=value`, validated, written by compare-and-set.
    EditConfig(EditConfigArgs),
    /// Send an action to the coordinator Lambda (payload as `aws lambda invoke` takes it).
    Invoke(invoke::InvokeArgs),
    /// Create the cluster record naming the first primary (its Postgres must already run there):
    /// agents only follow a record, they never invent one. Refused if the record exists.
    Bootstrap(BootstrapArgs),
    /// Every cluster in the fleet registry (what a fleet coordinator evaluates), with its
    /// primary, term, member count and pause state. Needs no `--cluster`.
    Clusters(FormatArgs),
    /// Remove the cluster from the fleet registry (a cluster taken down). Refused while any of
    /// its members beat in the last ten minutes, unless `--force`. Its items are kept.
    Unregister(UnregisterArgs),
    /// Restart Postgres on a member or on every member (`--all`), optionally only where a setting
    /// waits for it (`--pending`): replicas one at a time, each awaited until it streams again,
    /// the primary last through a switchover. Through the agents' API.
    Restart(maintenance::RestartArgs),
    /// Re-clone a replica: its agent replaces the data directory with a fresh copy of the
    /// primary's (pg_basebackup) and it streams again. Refused for the primary.
    Reinit(maintenance::ReinitArgs),
    /// Reload Postgres's configuration on a member or on every member, through the agents' API.
    Reload(maintenance::ReloadArgs),
    /// Remove a member whose agent is stopped: its heartbeat and state leave the store and the
    /// primary drops its replication slot. Refused for the primary and while its agent beats.
    Remove(maintenance::RemoveArgs),
    /// Take a base backup now (barman-cloud, through a member's agent; docs/backups.md).
    Backup(backup::BackupArgs),
    /// The cluster's base backups (or `--from` another cluster's): times, LSNs, timeline.
    Backups(backup::BackupsArgs),
    /// Set the backup schedule and retention (`config#backup`).
    BackupPolicy(backup::BackupPolicyArgs),
    /// Create the new cluster `--cluster` from `--from`'s backup and archive, to a point in time:
    /// its agents bootstrap from it instead of running initdb.
    Restore(backup::RestoreArgs),
    /// Who streams from whom.
    Topology(FormatArgs),
    /// pgdctl's version and every member's agent and PostgreSQL version.
    Version(FormatArgs),
    /// Create the DynamoDB table pgdaemon keeps its state in (on-demand billing, TTL on
    /// `expire_at`). Succeeds without change when the table exists. Uses `--table`,
    /// `--endpoint-url`, `--region`.
    CreateTable,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Redraw the table every `--interval` seconds until interrupted (or `--count` draws).
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// Seconds between redraws with `--watch`.
    #[arg(long, default_value_t = 1.0, value_parser = parse_positive_secs)]
    pub interval: f64,
    /// Stop after this many draws with `--watch`.
    #[arg(long)]
    pub count: Option<u64>,
    /// `json`/`yaml`: the cluster record, the lease, every heartbeat and member state.
    #[command(flatten)]
    pub output: FormatArgs,
}

#[derive(Debug, Args)]
pub struct UnregisterArgs {
    /// Unregister even though members are beating: a fleet coordinator stops evaluating the
    /// cluster, so it gets no automatic failover until an agent restarts and registers it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events from the last this many seconds.
    #[arg(long, default_value_t = 3600.0, value_parser = parse_positive_secs)]
    pub since: f64,
    #[command(flatten)]
    pub output: FormatArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Seconds to wait for the coordinator's answer (and, for switchover/failover, for the new
    /// primary). An unanswered request is withdrawn when the wait ends.
    #[arg(long, default_value_t = 60.0, value_parser = parse_positive_secs)]
    pub timeout: f64,
}

#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The member to promote (default: the coordinator picks the most advanced eligible replica).
    #[arg(long)]
    pub candidate: Option<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The member to promote (default: the coordinator picks the most advanced eligible replica).
    #[arg(long)]
    pub candidate: Option<String>,
    /// Promote the candidate even if it fails the eligibility checks (lag, timeline, tags):
    /// data written after its position is lost.
    #[arg(long, requires = "candidate")]
    pub allow_data_loss: bool,
    /// Do not ask for confirmation (as in patronictl; it never allows data loss).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// The member whose Postgres is the first primary.
    #[arg(long)]
    pub primary: String,
    /// Dynamic config settings (`key=value`, repeatable) instead of the defaults.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EditConfigArgs {
    /// `key=value`, repeatable (e.g. `--set lease_ms=15000 --set synchronous_mode=on`).
    #[arg(long = "set", value_name = "KEY=VALUE", required = true)]
    pub sets: Vec<String>,
    /// Validate and show the change without writing it.
    #[arg(long)]
    pub dry_run: bool,
}

pub(crate) fn parse_positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(v > 0.0 && v <= 86_400.0) {
        return Err(format!("{s} must be above 0 and at most 86400 seconds"));
    }
    Ok(v)
}

/// Why a command did not succeed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The coordinator or pgdctl's own checks refused the action.
    #[error("refused: {0}")]
    Refused(String),
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Usage(String),
    /// The store (or Lambda) did not answer, or answered with a record that cannot be read.
    #[error("{0}")]
    Unavailable(String),
    /// The wait ended first.
    #[error("timed out: {0}")]
    Timeout(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CtlError {
    /// The cluster has no record: nothing to show or change yet.
    pub fn no_record(cluster: &str) -> Self {
        CtlError::Refused(format!("cluster {cluster} has no record yet: it was never bootstrapped"))
    }

    /// The process exit code (see the crate docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused(_) | CtlError::Other(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unavailable(_) => 3,
            CtlError::Timeout(_) => 4,
        }
    }
}

impl From<StoreError> for CtlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Malformed { .. } => CtlError::Unavailable(e.to_string()),
            StoreError::Invalid(m) => CtlError::Usage(m),
            StoreError::Conflict { .. } => CtlError::Refused(e.to_string()),
        }
    }
}

impl From<std::io::Error> for CtlError {
    fn from(e: std::io::Error) -> Self {
        CtlError::Other(e.into())
    }
}

/// Runs one command, writing its human-readable result to `out`.
pub async fn run(cmd: Cmd, out: &mut impl Write) -> Result<(), CtlError> {
    match cmd.command {
        Command::CreateTable => create_table_cmd(&cmd.store, out).await,
        Command::Invoke(args) => invoke::run(&cmd.store, args, out).await,
        Command::Clusters(args) => {
            let (config, _) = cmd.store.resolve_store()?;
            let store = pgdaemon_dcs::connect(&config).await?;
            fleet::clusters(store.as_ref(), args.format(), out).await
        }
        command => {
            let (config, cluster) = cmd.store.resolve()?;
            let store = pgdaemon_dcs::connect(&config).await?;
            let api = cmd.api.clone().with_config(cmd.store.config.as_deref())?;
            run_store_command(store, &cluster, &api, command, out).await
        }
    }
}

/// The commands that talk to the store of one cluster.
pub async fn run_store_command(
    store: Arc<dyn Store>,
    cluster: &str,
    api: &ApiOpts,
    command: Command,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let store = store.as_ref();
    match command {
        Command::List(args) => list_cmd(store, cluster, args, out).await,
        Command::History(args) => {
            let history = store.read_history(cluster).await?;
            emit(out, args.format(), &history, || Ok(table::history_table(&history)))
        }
        Command::Events(args) => {
            let since_ms = table::now_ms().saturating_sub(secs(args.since).as_millis() as u64);
            let events = store.read_events(cluster, since_ms).await?;
            emit(out, args.output.format(), &events, || Ok(table::events_table(&events)))
        }
        Command::Switchover(args) => {
            request::act(store, cluster, RequestAction::Switchover, args.candidate, false, secs(args.wait.timeout), out).await
        }
        Command::Failover(args) => {
            let to = args.candidate.as_deref().map_or("the most advanced eligible replica".to_string(), |c| c.to_string());
            let loss = if args.allow_data_loss { ", allowing data loss" } else { "" };
            maintenance::confirm(&format!("Fail over cluster {cluster} to {to}{loss}?"), args.force)?;
            let timeout = secs(args.wait.timeout);
            request::act(store, cluster, RequestAction::Failover, args.candidate, args.allow_data_loss, timeout, out).await
        }
        Command::Pause(args) => request::act(store, cluster, RequestAction::Pause, None, false, secs(args.timeout), out).await,
        Command::Resume(args) => request::act(store, cluster, RequestAction::Resume, None, false, secs(args.timeout), out).await,
        Command::ShowConfig(args) => dynconfig::show(store, cluster, args.format(), out).await,
        Command::EditConfig(args) => dynconfig::edit(store, cluster, &args.sets, args.dry_run, out).await,
        Command::Bootstrap(args) => dynconfig::bootstrap(store, cluster, &args.primary, &args.sets, out).await,
        Command::Unregister(args) => fleet::unregister(store, cluster, args.force, out).await,
        Command::Restart(args) => maintenance::restart(store, cluster, api, args, out).await,
        Command::Reinit(args) => maintenance::reinit(store, cluster, api, args, out).await,
        Command::Reload(args) => maintenance::reload(store, cluster, api, args.member, out).await,
        Command::Remove(args) => maintenance::remove(store, cluster, api, args, out).await,
        Command::Backup(args) => backup::backup(store, cluster, api, args, out).await,
        Command::Backups(args) => backup::backups(store, cluster, api, args, out).await,
        Command::BackupPolicy(args) => backup::policy(store, cluster, args, out).await,
        Command::Restore(args) => backup::restore(store, cluster, args, out).await,
        Command::Topology(args) => maintenance::topology(&store.read_view(cluster).await?, args.format(), out),
        Command::Version(args) => maintenance::versions(&store.read_view(cluster).await?, args.format(), out),
        Command::Invoke(_) | Command::CreateTable | Command::Clusters(_) => {
            unreachable!("handled before connecting to the store")
        }
    }
}

/// The cluster's view, refused when it has no record.
pub(crate) async fn view_with_record(store: &dyn Store, cluster: &str) -> Result<pgdaemon_core::ClusterView, CtlError> {
    let view = store.read_view(cluster).await?;
    if view.cluster.is_none() {
        return Err(CtlError::no_record(cluster));
    }
    Ok(view)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

async fn list_cmd(store: &dyn Store, cluster: &str, args: ListArgs, out: &mut impl Write) -> Result<(), CtlError> {
    if !args.watch {
        let view = store.read_view(cluster).await?;
        return print_view(cluster, &view, args.output.format(), out);
    }
    let mut drawn = 0u64;
    loop {
        // Clear the screen and home the cursor, like `watch`.
        write!(out, "\x1b[2J\x1b[H")?;
        match store.read_view(cluster).await {
            Ok(view) => print_view(cluster, &view, args.output.format(), out)?,
            Err(e) => writeln!(out, "{} {e}", table::now_hms())?,
        }
        out.flush()?;
        drawn += 1;
        if args.count.is_some_and(|c| drawn >= c) {
            return Ok(());
        }
        tokio::time::sleep(secs(args.interval)).await;
    }
}

fn print_view(
    cluster: &str,
    view: &pgdaemon_core::ClusterView,
    format: output::Format,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    emit(out, format, &table::view_json(cluster, view), || Ok(table::member_table(cluster, view, table::now_ms())))
}

async fn create_table_cmd(opts: &StoreOpts, out: &mut impl Write) -> Result<(), CtlError> {
    let table = opts.table.clone().unwrap_or_else(|| "pgdaemon".into());
    validate_table_name(&table)?;
    let client = client_from_env(opts.region.as_deref(), opts.endpoint_url.as_deref()).await;
    let outcome = create_table(&client, &table).await.map_err(|e| match CtlError::from(e) {
        CtlError::Unavailable(m) => CtlError::Unavailable(format!("creating table {table:?}: {m}")),
        other => other,
    })?;
    match outcome {
        TableOutcome::Created => writeln!(out, "created table {table} (TTL on expire_at, fleet index)")?,
        TableOutcome::AlreadyExisted => writeln!(out, "table {table} already exists; nothing to do")?,
    }
    Ok(())
}

/// DynamoDB's naming rule, checked before any request (bad input changes nothing).
fn validate_table_name(name: &str) -> Result<(), CtlError> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !(3..=255).contains(&name.len()) || !ok_chars {
        return Err(CtlError::Usage(format!(
            "table name {name:?} must be 3 to 255 characters of letters, digits, '_', '-' and '.'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cmd::command().debug_assert();
    }

    #[test]
    fn every_command_has_help() {
        let cmd = Cmd::command();
        for sub in cmd.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help text", sub.get_name());
            let help = Cmd::try_parse_from(["pgdctl", sub.get_name(), "--help"]).unwrap_err();
            assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp, "{}", sub.get_name());
        }
    }

    #[test]
    fn create_table_defaults() {
        let cmd = Cmd::try_parse_from(["pgdctl", "create-table"]).unwrap();
        assert!(matches!(cmd.command, Command::CreateTable));
        assert_eq!(cmd.store.table, None);
        assert_eq!(cmd.store.endpoint_url, None);
    }

    #[test]
    fn data_loss_needs_a_candidate_and_timeouts_must_be_positive() {
        assert!(Cmd::try_parse_from(["pgdctl", "failover", "--allow-data-loss"]).is_err());
        assert!(Cmd::try_parse_from(["pgdctl", "failover", "--allow-data-loss", "--candidate", "b"]).is_ok());
        let Command::Failover(f) = Cmd::try_parse_from(["pgdctl", "failover", "--force"]).unwrap().command else { panic!() };
        assert!(f.force && !f.allow_data_loss, "--force only skips the question");
        assert!(Cmd::try_parse_from(["pgdctl", "invoke", "failover", "--force", "--candidate", "b"]).is_ok(), "the old name");
        assert!(Cmd::try_parse_from(["pgdctl", "pause", "--timeout", "0"]).is_err());
        assert!(Cmd::try_parse_from(["pgdctl", "edit-config"]).is_err(), "--set is required");
    }

    #[tokio::test]
    async fn bad_table_name_is_refused_before_any_request() {
        let cmd =
            Cmd::try_parse_from(["pgdctl", "create-table", "--table", "a/b", "--endpoint-url", "http://127.0.0.1:1"]).unwrap();
        let err = run(cmd, &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("table name"), "{err:#}");
    }

    #[tokio::test]
    async fn events_lists_the_log_and_rejects_a_bad_window() {
        use pgdaemon_core::events::{Event, EventKind};
        use pgdaemon_core::MemoryStore;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let now = table::now_ms();
        let old = Event::new(EventKind::MemberDown, "demo", now - 7_200_000, "two hours ago");
        let recent = Event::new(EventKind::Promoted, "demo", now - 1_000, "pg-2 is writable");
        store.append_event("demo", &old).await.unwrap();
        store.append_event("demo", &recent).await.unwrap();
        let cmd = Cmd::try_parse_from(["pgdctl", "events"]).unwrap();
        let mut out = Vec::new();
        run_store_command(store.clone(), "demo", &cmd.api, cmd.command, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("promoted") && text.contains("pg-2 is writable"), "{text}");
        assert!(!text.contains("two hours ago"), "outside the default hour: {text}");
        let cmd = Cmd::try_parse_from(["pgdctl", "events", "--since", "86400", "--json"]).unwrap();
        let mut out = Vec::new();
        run_store_command(store, "demo", &cmd.api, cmd.command, &mut out).await.unwrap();
        let events: Vec<Event> = serde_json::from_slice(&out).unwrap();
        assert_eq!(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [old.id.as_str(), recent.id.as_str()]);
        assert!(Cmd::try_parse_from(["pgdctl", "events", "--since", "-5"]).is_err());
    }

    #[tokio::test]
    async fn destructive_verbs_without_a_terminal_need_force_and_change_nothing() {
        use pgdaemon_core::{ClusterRecord, DynamicConfig, MemberStatus, MemoryStore};
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        for m in ["a", "b"] {
            store.put_member("c", &MemberStatus::new(m)).await.unwrap();
        }
        for args in [vec!["failover", "--candidate", "b"], vec!["reinit", "b"], vec!["restart", "b"]] {
            let cmd = Cmd::try_parse_from(std::iter::once("pgdctl").chain(args.iter().copied())).unwrap();
            let err = run_store_command(store.clone(), "c", &cmd.api, cmd.command, &mut Vec::new()).await.unwrap_err();
            assert!(err.exit_code() == 1 && err.to_string().contains("add --force"), "{args:?}: {err}");
        }
        let record = store.read_cluster("c").await.unwrap().unwrap();
        assert!(record.request.is_none() && record.version == 1, "nothing was asked of the coordinator");
    }

    #[test]
    fn api_credentials_come_from_the_agent_configuration_unless_given() {
        let dir = std::env::temp_dir().join(format!("pgdctl-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("agent.toml");
        std::fs::write(&config, "cluster = \"c\"\n[api]\ntoken_file = \"/etc/t\"\ntls_ca_file = \"/etc/ca.pem\"\n").unwrap();
        let opts = |args: &[&str]| Cmd::try_parse_from(["pgdctl"].iter().chain(args).chain(&["topology"])).unwrap().api;
        if std::env::var("PGDAEMON_API_TOKEN").is_err() {
            let api = opts(&[]).with_config(Some(&config)).unwrap();
            assert_eq!(api.api_token_file.as_deref(), Some(std::path::Path::new("/etc/t")));
            assert_eq!(api.api_ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        }
        let api = opts(&["--api-token-file", "/mine", "--api-ca-file", "/ca"]).with_config(Some(&config)).unwrap();
        assert_eq!((api.api_token_file.unwrap(), api.api_ca_file.unwrap()), ("/mine".into(), "/ca".into()), "flags win");
        assert!(opts(&[]).with_config(Some(&dir.join("missing.toml"))).unwrap_err().exit_code() == 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn store_errors_map_to_documented_exit_codes() {
        assert_eq!(CtlError::from(StoreError::Unavailable("x".into())).exit_code(), 3);
        assert_eq!(CtlError::from(StoreError::malformed("cluster", "bad")).exit_code(), 3);
        assert_eq!(CtlError::from(StoreError::Invalid("x".into())).exit_code(), 2);
        assert_eq!(CtlError::from(StoreError::conflict("cluster", "x")).exit_code(), 1);
    }
}
