//! The narrow control surface over one local PostgreSQL server ([`PgControl`]), and what a probe
//! of it reports ([`PgProbe`]). The real implementation (tokio-postgres + pg_ctl, pg_rewind,
//! pg_basebackup) lives in the agent crate; the simulation implements it in memory.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::backup::RestoreSource;
use crate::lsn::Lsn;
use crate::model::Role;
use crate::params::ClusterParameters;

/// How to stop Postgres (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMode {
    /// Wait for clients to disconnect.
    Smart,
    /// Abort transactions, disconnect clients, clean shutdown checkpoint (the demotion default).
    Fast,
    /// No checkpoint: crash-like; recovery runs at the next start.
    Immediate,
}

/// The primary a standby should stream from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrimaryTarget {
    /// Member name of the primary (for logs and slot bookkeeping).
    pub name: String,
    /// libpq host and port of the primary's Postgres.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for PrimaryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}:{})", self.name, self.host, self.port)
    }
}

/// Where a standby is configured to stream from (`primary_conninfo`, `primary_slot_name`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UpstreamConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub application_name: Option<String>,
    pub slot: Option<String>,
}

impl UpstreamConfig {
    /// The configuration points at `target` with this node's own slot.
    pub fn matches(&self, target: &PrimaryTarget, own_slot: &str) -> bool {
        self.host.as_deref() == Some(target.host.as_str())
            && self.port.unwrap_or(5432) == target.port
            && self.slot.as_deref() == Some(own_slot)
    }
}

/// One row of `pg_stat_replication` on a primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationRow {
    pub application_name: String,
    /// `streaming`, `catchup`, `startup`, ...
    pub state: String,
    /// `async`, `sync`, `potential`, `quorum`.
    pub sync_state: String,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
}

/// What is on disk in the data directory (readable whether Postgres runs or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataDirState {
    /// Missing or empty: the node must be bootstrapped (basebackup).
    #[default]
    Empty,
    /// An initialized cluster without `standby.signal`: it starts as a primary.
    Primary,
    /// An initialized cluster with `standby.signal`: it starts as a standby.
    Standby,
}

/// One observation of the local Postgres. Fields that do not apply to the current role are `None`
/// or empty; every field is best effort except `running`, `role` and `data`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PgProbe {
    /// Postgres accepted a connection and answered (pg_isready plus one query).
    pub running: bool,
    /// `pg_is_in_recovery()`: `Replica` when true, `Primary` when false, `Unknown` when not running.
    pub role: Role,
    pub data: DataDirState,
    /// Current timeline (0 when unknown).
    pub timeline: u32,
    /// Primary: `pg_current_wal_lsn()`.
    pub write_lsn: Option<Lsn>,
    /// Primary: `pg_current_wal_flush_lsn()`.
    pub flush_lsn: Option<Lsn>,
    /// Primary: `pg_stat_replication`.
    pub replication: Vec<ReplicationRow>,
    /// Primary: names of the physical replication slots.
    pub slots: Vec<String>,
    /// The data directory is what an interrupted automatic bootstrap of this node left (its
    /// marker is there): it may be emptied and initialised again (agent::bootstrap).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap_leftover: bool,
    /// Primary: the physical slots a walsender streams from now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_slots: Vec<String>,
    /// Primary: `synchronous_standby_names` as in effect for the probing session, read before
    /// `flush_lsn` and `replication` (the synchronous-mode catch-up check relies on that order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_standby_names: Option<String>,
    /// Replica: `pg_last_wal_receive_lsn()`.
    pub receive_lsn: Option<Lsn>,
    /// Replica: `pg_last_wal_replay_lsn()`.
    pub replay_lsn: Option<Lsn>,
    /// Replica: age of `pg_last_xact_replay_timestamp()`, zero when everything received is replayed.
    pub replay_age: Option<Duration>,
    /// Replica: the WAL receiver is streaming.
    pub streaming: bool,
    /// Replica: `host:port` the WAL receiver streams from.
    pub streaming_from: Option<String>,
    /// Replica: the configured upstream.
    pub upstream: Option<UpstreamConfig>,
    /// Settings changed in the configuration files that take effect only after a restart
    /// (`pg_settings.pending_restart`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// `server_version`, e.g. "15.18".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Why the probe could not connect or query (for logs and the snapshot).
    pub error: Option<String>,
}

impl PgProbe {
    /// Postgres answers and is read-write.
    pub fn is_primary(&self) -> bool {
        self.running && self.role == Role::Primary
    }

    /// Postgres answers and is in recovery.
    pub fn is_replica(&self) -> bool {
        self.running && self.role == Role::Replica
    }

    /// A probe of a stopped server with the given data directory state.
    pub fn stopped(data: DataDirState) -> Self {
        PgProbe { data, ..Default::default() }
    }
}

/// The physical replication slot a member streams through: member names may contain `-` and
/// capitals, slot names only lower-case letters, digits and `_`.
pub fn slot_name(member: &str) -> String {
    member.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

/// `synchronous_standby_names` as pgdaemon sets it: `ANY count (names)`, or empty (commits do not
/// wait for any standby). Names are member names, which equal the standbys' `application_name`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncStandbys {
    pub count: u32,
    pub names: Vec<String>,
}

impl SyncStandbys {
    /// Asynchronous commits (the empty setting).
    pub fn none() -> Self {
        SyncStandbys::default()
    }

    /// `ANY count (names)`.
    pub fn any(count: u32, names: Vec<String>) -> Self {
        SyncStandbys { count, names }
    }

    /// Commits wait for no standby.
    pub fn is_empty(&self) -> bool {
        self.count == 0 || self.names.is_empty()
    }

    /// The setting's text, e.g. `ANY 2 ("n2", "n3")`, or `""`. Every name is double-quoted (a
    /// `"` inside doubled), so any member name is one case-preserved identifier.
    pub fn to_setting(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let names: Vec<String> = self.names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
        format!("ANY {} ({})", self.count, names.join(", "))
    }

    /// Parses a `synchronous_standby_names` value: `ANY n (..)`, `FIRST n (..)`, `n (..)`, a
    /// plain list (one synchronous standby) or empty. FIRST is read as ANY: callers only use the
    /// result to see which names are listed, and compare the text with [`Self::to_setting`].
    /// `None`: not parseable.
    pub fn parse(text: &str) -> Option<SyncStandbys> {
        let t = text.trim();
        if t.is_empty() {
            return Some(SyncStandbys::none());
        }
        let (count, list) = match t.find('(') {
            Some(open) => {
                let head = t[..open].trim();
                let list = t[open + 1..].trim_end().strip_suffix(')')?;
                let num = match head.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [kw, n] if kw.eq_ignore_ascii_case("any") || kw.eq_ignore_ascii_case("first") => *n,
                    [n] => *n,
                    _ => return None,
                };
                (num.parse::<u32>().ok()?, list)
            }
            None => (1, t),
        };
        let mut names = Vec::new();
        let mut chars = list.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut name = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        '"' => break,
                        c => name.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' || c.is_whitespace() {
                        break;
                    }
                    name.push(c);
                    chars.next();
                }
                if name.is_empty() {
                    return None;
                }
            }
            names.push(name);
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            match chars.next() {
                None => break,
                Some(',') => continue,
                Some(_) => return None,
            }
        }
        Some(SyncStandbys { count, names })
    }
}

/// Why a Postgres operation failed. Each variant says what is known about the server afterwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// Could not connect or a query failed.
    #[error("postgres query failed: {0}")]
    Query(String),
    /// A tool (pg_ctl, pg_rewind, pg_basebackup) failed; `output` is its last lines.
    #[error("{tool} failed: {output}")]
    Tool { tool: String, output: String },
    /// The operation ran but the verification afterwards did not see the expected state.
    #[error("not verified: {0}")]
    NotVerified(String),
    /// The server is in a role or state the operation does not apply to; nothing was changed.
    #[error("wrong state: {0}")]
    WrongState(String),
    /// Local files (data directory, configuration) could not be read or written.
    #[error("io: {0}")]
    Io(String),
    /// The call took longer than allowed; the server's state is unknown until the next probe.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// Control of the one local PostgreSQL server an agent is responsible for.
///
/// Obligations common to every method:
/// - Idempotent: calling it again after success (or after a partial failure) converges to the same
///   end state and succeeds.
/// - Verified: `Ok` only after the end state was observed (a query or `pg_ctl status`), never
///   merely because a command exited 0.
/// - Bounded: every wait inside a call has a timeout; the agent's loop never waits outside them.
/// - Safe to call concurrently with `probe` and with [`PgControl::demote`] (the runtime serializes
///   state-changing calls itself, but a probe may overlap with anything).
#[async_trait]
pub trait PgControl: Send + Sync {
    /// Observes the server: never fails; a server that does not answer is `running: false` with
    /// `error` set. Reads the data directory state even when the server is down.
    async fn probe(&self) -> PgProbe;

    /// Starts the server in whatever role its data directory says (standby when
    /// `standby.signal` exists). `Ok` once it accepts connections. Already running: `Ok`.
    async fn start(&self) -> Result<(), PgError>;

    /// Stops the server. `Ok` once no postmaster runs on the data directory. Not running: `Ok`.
    async fn stop(&self, mode: StopMode) -> Result<(), PgError>;

    /// Promotes a standby (`pg_promote`) and waits until it is read-write, verified with
    /// `pg_is_in_recovery() = false`. Already primary: `Ok`. Not running: `WrongState`.
    async fn promote(&self) -> Result<(), PgError>;

    /// Self-fence: the server stops accepting writes at once. A fast stop (immediate if the fast
    /// one does not finish in time); the server is left stopped, so a diverged former primary
    /// can be rewound before it serves again. `Ok` only once no postmaster runs. Stopped: `Ok`.
    async fn demote(&self) -> Result<(), PgError>;

    /// The final WAL position of a server that was last stopped cleanly as a primary: the start
    /// of its shutdown checkpoint record (`pg_controldata`'s "Latest checkpoint location").
    /// Everything it ever acknowledged precedes it, and a standby that streamed until the
    /// shutdown replays past it (to the record's end), so a switchover may wait for it. `None`
    /// when running, stopped by a crash or an immediate stop, stopped as a standby, or unknown.
    /// Read-only. Default: `None` (a demotion then reports no position).
    async fn final_position(&self) -> Option<Lsn> {
        None
    }

    /// Points this standby at `primary`, streaming through this member's own slot with this
    /// member's `application_name`. Running standby: `ALTER SYSTEM` + `pg_reload_conf()` without
    /// a restart, verified through `SHOW`. Stopped: writes the settings and `standby.signal`,
    /// then starts. Running primary: `WrongState` (a former primary must be rewound).
    async fn follow(&self, primary: &PrimaryTarget) -> Result<(), PgError>;

    /// Rejoins a diverged former primary: `CHECKPOINT` on the source, stop (fast) if running,
    /// `pg_rewind` from the source, restore this node's own configuration files (pg_rewind copies
    /// the source's), write the standby settings for `source` and `standby.signal`, start, and
    /// verify it runs in recovery.
    async fn rewind(&self, source: &PrimaryTarget) -> Result<(), PgError>;

    /// Replaces the data directory with a fresh copy of `source` (`pg_basebackup`, WAL streamed,
    /// `application_name` in the connection string), configured as a standby of `source`; starts
    /// and verifies it runs in recovery. Destroys whatever the data directory held.
    async fn basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError>;

    /// On a running primary, creates a physical replication slot ([`slot_name`]) for each of
    /// `members` that lacks one; never drops slots. Verified by reading `pg_replication_slots`.
    async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError>;

    /// On a running primary, drops each of these physical slots that no walsender uses; a slot
    /// in use or already gone is left alone. Verified by reading `pg_replication_slots`: a slot
    /// still present and unused afterwards is an error.
    async fn drop_slots(&self, slots: &[String]) -> Result<(), PgError>;

    /// Creates the database of a new cluster (automatic bootstrap): in an empty data directory,
    /// or one an interrupted `initialize` of this node left (marked, see
    /// [`PgProbe::bootstrap_leftover`]), emptied first. Marks the directory, runs initdb, writes
    /// the access rules, creates the replication and rewind roles with Postgres reachable on its
    /// Unix socket only, and leaves it stopped. A directory holding anything else is
    /// `WrongState` and left untouched. Returns within `budget` (the initialize lock's time
    /// left), with Postgres stopped either way: `Timeout` past it.
    ///
    /// With `restore` (`pgdctl restore`), the database comes from that base backup and archive
    /// instead of initdb: recovery replays to the target and promotes, still reachable on the
    /// Unix socket only, and the server is left stopped as after initdb (docs/backups.md).
    async fn initialize(&self, budget: Duration, restore: Option<&RestoreSource>) -> Result<(), PgError>;

    /// The cluster record naming this node exists: removes the bootstrap marker, so the data
    /// directory is never again taken for a leftover.
    async fn initialized(&self) -> Result<(), PgError>;

    /// Sets `synchronous_standby_names` to `names` (empty: commits wait for no standby), so that
    /// it survives a restart (`ALTER SYSTEM`) and applies without one (`pg_reload_conf()`);
    /// verified by reading the setting back. Works on a standby too (it applies once promoted).
    /// Not running: `WrongState`.
    async fn set_sync_standbys(&self, names: &SyncStandbys) -> Result<(), PgError>;

    /// Makes `parameters` this server's cluster-wide settings (replacing what an earlier call
    /// wrote; see [`crate::params`]) and reloads a running server. `Ok(None)`: nothing to write
    /// into yet (no data directory; the call is repeated later). `Ok(Some(errors))`: written,
    /// with the values Postgres refused when it read them. Writing what is already there changes
    /// nothing and reloads nothing. Default: `Ok(None)` (no cluster-wide parameters).
    async fn apply_parameters(&self, _parameters: &ClusterParameters) -> Result<Option<Vec<String>>, PgError> {
        Ok(None)
    }

    /// `pg_reload_conf()` on the running server. Not running: `WrongState`. Default: `Ok`.
    async fn reload(&self) -> Result<(), PgError> {
        Ok(())
    }

    /// Bytes in the data directory now: how far a basebackup got. Best effort, read-only.
    /// Default: `None` (unknown).
    async fn data_dir_bytes(&self) -> Option<u64> {
        None
    }
}

#[async_trait]
impl<P: PgControl + ?Sized> PgControl for std::sync::Arc<P> {
    async fn probe(&self) -> PgProbe {
        (**self).probe().await
    }
    async fn start(&self) -> Result<(), PgError> {
        (**self).start().await
    }
    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        (**self).stop(mode).await
    }
    async fn promote(&self) -> Result<(), PgError> {
        (**self).promote().await
    }
    async fn demote(&self) -> Result<(), PgError> {
        (**self).demote().await
    }
    async fn final_position(&self) -> Option<Lsn> {
        (**self).final_position().await
    }
    async fn follow(&self, primary: &PrimaryTarget) -> Result<(), PgError> {
        (**self).follow(primary).await
    }
    async fn rewind(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        (**self).rewind(source).await
    }
    async fn basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        (**self).basebackup(source).await
    }
    async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError> {
        (**self).ensure_slots(members).await
    }
    async fn drop_slots(&self, slots: &[String]) -> Result<(), PgError> {
        (**self).drop_slots(slots).await
    }
    async fn initialize(&self, budget: Duration, restore: Option<&RestoreSource>) -> Result<(), PgError> {
        (**self).initialize(budget, restore).await
    }
    async fn initialized(&self) -> Result<(), PgError> {
        (**self).initialized().await
    }
    async fn set_sync_standbys(&self, names: &SyncStandbys) -> Result<(), PgError> {
        (**self).set_sync_standbys(names).await
    }
    async fn apply_parameters(&self, parameters: &ClusterParameters) -> Result<Option<Vec<String>>, PgError> {
        (**self).apply_parameters(parameters).await
    }
    async fn reload(&self) -> Result<(), PgError> {
        (**self).reload().await
    }
    async fn data_dir_bytes(&self) -> Option<u64> {
        (**self).data_dir_bytes().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_postgres_safe() {
        assert_eq!(slot_name("Node-1_a"), "node_1_a");
    }

    #[test]
    fn sync_standbys_round_trip_and_quote_names() {
        let s = SyncStandbys::any(2, vec!["n2".into(), "Node \"3\"".into()]);
        assert_eq!(s.to_setting(), r#"ANY 2 ("n2", "Node ""3""")"#);
        assert_eq!(SyncStandbys::parse(&s.to_setting()), Some(s));
        assert_eq!(SyncStandbys::none().to_setting(), "");
        assert_eq!(SyncStandbys::parse(""), Some(SyncStandbys::none()));
        assert_eq!(SyncStandbys::parse("first 1 (a, b)"), Some(SyncStandbys::any(1, vec!["a".into(), "b".into()])));
        assert_eq!(SyncStandbys::parse("a,b"), Some(SyncStandbys::any(1, vec!["a".into(), "b".into()])));
        assert_eq!(SyncStandbys::parse("2 (*)"), Some(SyncStandbys::any(2, vec!["*".into()])));
        assert_eq!(SyncStandbys::parse("ANY x (a)"), None);
        assert_eq!(SyncStandbys::parse("ANY 1 (\"a)"), None);
    }

    #[test]
    fn upstream_matching_needs_host_port_and_slot() {
        let t = PrimaryTarget { name: "n1".into(), host: "10.0.0.1".into(), port: 5432 };
        let mut u = UpstreamConfig { host: Some("10.0.0.1".into()), port: None, application_name: None, slot: Some("n2".into()) };
        assert!(u.matches(&t, "n2"));
        assert!(!u.matches(&t, "n3"));
        u.port = Some(5433);
        assert!(!u.matches(&t, "n2"));
    }
}
