//! The agent's `/metrics`: a Prometheus text exposition (format 0.0.4) encoded by the Prometheus
//! project's own Rust client (`prometheus-client`) from one snapshot per scrape, plus the loop
//! statistics the run loop keeps.
//!
//! Series follow Patroni's `/metrics` where the agent has the data: the same meaning under the
//! `pgdaemon_` prefix (`patroni_xlog_location` is `pgdaemon_xlog_location`). Every series carries
//! HELP and TYPE and the labels `scope` (cluster) and `name` (member), as Patroni's do; counters
//! end in `_total`. node-agent/README.md lists them with their Patroni equivalents and the ones
//! not exported yet.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use pgdaemon_core::agent::AgentSnapshot;
use pgdaemon_core::{Lsn, Role, SyncMode};

/// The `Content-Type` of [`render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the loop duration histogram's buckets: a tick takes milliseconds
/// when nothing changes and seconds while Postgres is stopped, promoted or rewound.
const LOOP_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Loop statistics written by the run loop and read by `/liveness` and `/metrics`.
///
/// Times are microseconds on the agent's monotonic clock (the injected `Clock`), so liveness is
/// judged with the same clock the lease is.
#[derive(Debug)]
pub struct LoopStats {
    ticks: AtomicU64,
    /// Tick durations in seconds (`pgdaemon_loop_duration_seconds`).
    durations: Histogram,
    /// Monotonic instant the last tick ended, plus one (0: none yet).
    last_tick_end_us: AtomicU64,
    started_us: AtomicU64,
}

impl LoopStats {
    /// `started`: monotonic now, the reference for liveness before the first tick completes.
    pub fn new(started: Duration) -> Self {
        LoopStats {
            ticks: AtomicU64::new(0),
            durations: Histogram::new(LOOP_BUCKETS),
            last_tick_end_us: AtomicU64::new(0),
            started_us: AtomicU64::new(started.as_micros() as u64),
        }
    }

    /// Records one completed tick.
    pub fn record_tick(&self, ended_at: Duration, duration: Duration) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.durations.observe(duration.as_secs_f64());
        self.last_tick_end_us.store(ended_at.as_micros() as u64 + 1, Ordering::Relaxed);
    }

    /// Ticks completed since the agent started.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// When the last tick ended (`None`: no tick completed yet).
    pub fn last_tick_end(&self) -> Option<Duration> {
        match self.last_tick_end_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us - 1)),
        }
    }

    /// Time since the loop last showed life (since start if no tick completed yet).
    pub fn idle_for(&self, now: Duration) -> Duration {
        let reference = self.last_tick_end().unwrap_or(Duration::from_micros(self.started_us.load(Ordering::Relaxed)));
        now.saturating_sub(reference)
    }
}

/// Renders the exposition. `now`: monotonic now on the agent's clock; `lag_bytes`: as computed
/// for `/replica` (`None` when unknown: the series is then omitted rather than faked as 0);
/// `version`: the agent's version (`pgdaemon_version{version}`).
pub fn render(s: &AgentSnapshot, stats: &LoopStats, now: Duration, lag_bytes: Option<u64>, version: &str) -> String {
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail, and the registry holds nothing else that could.
    let _ = prometheus_text::encode(&mut out, &registry(s, stats, now, lag_bytes, version));
    out
}

/// One scrape's series: Patroni's first, in the order of its `/metrics`, then pgdaemon's own.
/// Help texts have no full stop: the client adds it.
fn registry(s: &AgentSnapshot, stats: &LoopStats, now: Duration, lag_bytes: Option<u64>, version: &str) -> Registry {
    let labels = [(Cow::Borrowed("scope"), Cow::Owned(s.cluster.clone())), (Cow::Borrowed("name"), Cow::Owned(s.member.clone()))];
    let mut r = Registry::with_prefix_and_labels("pgdaemon", labels.into_iter());
    let probe = s.last_probe.as_ref().filter(|p| p.running);
    let view = s.last_view.as_ref();
    let record = view.and_then(|v| v.cluster.as_ref());
    let lease_valid = s.lease_valid_until.is_some_and(|until| now < until);
    let primary_pg = probe.filter(|p| p.role == Role::Primary);
    let replica_pg = probe.filter(|p| p.role == Role::Replica);

    let versions = Family::<[(&'static str, String); 1], Gauge>::default();
    versions.get_or_create(&[("version", version.to_string())]).set(1);
    r.register("version", "Always 1: the version label is this agent's version", versions);
    flag(&mut r, "postgres_running", "1 if Postgres answered the last probe", s.pg_running);
    flag(
        &mut r,
        "primary",
        "1 if Postgres is read-write and this agent holds a valid leader lease",
        s.role == Role::Primary && lease_valid,
    );
    let location = primary_pg.and_then(|p| p.flush_lsn.or(p.write_lsn));
    lsn(&mut r, "xlog_location", "Flushed WAL position (pg_current_wal_flush_lsn) in bytes, 0 unless read-write", location);
    flag(&mut r, "replica", "1 if Postgres runs in recovery", s.pg_running && s.role == Role::Replica);
    let sync_listed = record
        .and_then(|c| c.sync.as_ref().filter(|sync| sync.term == c.term))
        .is_some_and(|sync| sync.members.contains(&s.member));
    let sync_standby = replica_pg.is_some() && s.config.synchronous_mode != SyncMode::Off && sync_listed;
    flag(&mut r, "sync_standby", "1 if this replica is in the recorded synchronous standby set", sync_standby);
    let received = replica_pg.and_then(|p| p.receive_lsn.or(p.replay_lsn));
    lsn(&mut r, "xlog_received_location", "Received WAL position in bytes, 0 unless in recovery", received);
    let replayed = replica_pg.and_then(|p| p.replay_lsn);
    lsn(&mut r, "xlog_replayed_location", "Replayed WAL position in bytes, 0 unless in recovery", replayed);
    let streaming = replica_pg.is_some_and(|p| p.streaming);
    flag(&mut r, "postgres_streaming", "1 if the WAL receiver is streaming", streaming);
    let unlocked = view.is_none_or(|v| v.leader.as_ref().is_none_or(|l| l.is_free()));
    flag(&mut r, "cluster_unlocked", "1 if no member holds the leader lease in the last store read", unlocked);
    flag(&mut r, "failsafe_mode_enabled", "1 if failsafe mode is enabled in the dynamic configuration", s.config.failsafe_mode);
    let timeline = s.last_probe.as_ref().map_or(0, |p| p.timeline);
    r.register("postgres_timeline", "Postgres timeline (0 when unknown)", ConstGauge::new(i64::from(timeline)));
    flag(&mut r, "is_paused", "1 if the cluster is paused (no automatic failover)", record.is_some_and(|c| c.paused));
    let pending = s.last_probe.as_ref().is_some_and(|p| !p.pending_restart.is_empty());
    flag(&mut r, "pending_restart", "1 if a changed setting takes effect only after a Postgres restart", pending);

    let roles = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    for role in [Role::Primary, Role::Replica, Role::Unknown] {
        roles.get_or_create(&[("role", role_name(role))]).set(i64::from(s.role == role));
    }
    r.register("role", "1 for the role of the last probe (primary, replica or unknown), 0 for the others", roles);
    flag(&mut r, "lease_held", "1 while the leader lease is held and valid by this agent's clock", lease_valid);
    r.register("term", "Newest cluster term this agent has seen", ConstGauge::new(s.term));
    if let Some(lag) = lag_bytes {
        r.register(
            "replication_lag_bytes",
            "Bytes this replica is behind the primary's last published position",
            ConstGauge::new(lag),
        );
    }
    if let Some(age) = s.last_probe.as_ref().and_then(|p| p.replay_age) {
        r.register(
            "replication_lag_seconds",
            "Age of the last replayed transaction (0 when caught up)",
            ConstGauge::new(age.as_secs_f64()),
        );
    }
    if let Some(a) = view.and_then(|v| v.states.get(&s.member)).and_then(|st| st.archive.as_ref()) {
        let help =
            "1 if this member is not archiving: its archive_command failed after its last success, or the server runs without it";
        flag(&mut r, "archive_failing", help, a.failing || a.inactive);
        let seconds = |ms: Option<u64>| ConstGauge::new(ms.map_or(0.0, |ms| ms as f64 / 1000.0));
        let help = "Unix time this member last archived a WAL segment (0: never); alert on time() minus it";
        r.register("archive_last_success_timestamp_seconds", help, seconds(a.last_archived_ms));
        let help = "Unix time the newest base backup of the cluster finished as this member last saw it (0: none)";
        r.register("backup_last_finished_timestamp_seconds", help, seconds(a.last_backup_ms));
    }
    let c = &s.counters;
    counter(&mut r, "lease_acquisitions", "Leader lease acquisitions", c.lease_acquisitions);
    counter(&mut r, "lease_renewals", "Successful leader lease renewals", c.lease_renewals);
    counter(&mut r, "lease_renewal_failures", "Failed leader lease renewals", c.lease_renew_failures);
    counter(&mut r, "demotions", "Demotions carried out (self-fencing and requested)", c.demotions);
    counter(&mut r, "promotions", "Promotions carried out", c.promotions);
    counter(&mut r, "coordinator_requests", "Fast-path coordinator runs requested", c.coordinator_requests);
    counter(&mut r, "heartbeat_failures", "Heartbeats the store did not take", c.heartbeat_failures);
    counter(&mut r, "action_failures", "Actions that failed", c.action_failures);
    flag(&mut r, "store_up", "1 if the last store read succeeded", s.store_error.is_none());
    r.register("loop_duration_seconds", "Duration of the agent loop", stats.durations.clone());
    let last = ConstGauge::new(s.last_loop_duration.as_secs_f64());
    r.register("loop_last_duration_seconds", "Duration of the last agent loop", last);
    r.register(
        "loop_idle_seconds",
        "Time since the agent loop last completed",
        ConstGauge::new(stats.idle_for(now).as_secs_f64()),
    );
    r
}

/// A 0/1 gauge.
fn flag(r: &mut Registry, name: &str, help: &str, value: bool) {
    r.register(name, help, ConstGauge::new(i64::from(value)));
}

/// A WAL position as Patroni shows it: bytes from 0/0, 0 when not applicable.
fn lsn(r: &mut Registry, name: &str, help: &str, value: Option<Lsn>) {
    r.register(name, help, ConstGauge::new(value.map_or(0, |l| l.0)));
}

/// A counter from the snapshot's totals; the client appends `_total` to the name.
fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    r.register(name, help, ConstCounter::new(value));
}

/// Patroni's role names (`primary`, `replica`), `unknown` when Postgres did not answer.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_role_lease_and_counters() {
        let mut s = AgentSnapshot {
            cluster: "c1".into(),
            member: "n1".into(),
            role: Role::Primary,
            pg_running: true,
            ..Default::default()
        };
        s.lease_valid_until = Some(Duration::from_secs(10));
        s.counters.lease_renewals = 7;
        s.counters.lease_renew_failures = 2;
        s.term = 4;
        let stats = LoopStats::new(Duration::ZERO);
        stats.record_tick(Duration::from_secs(1), Duration::from_millis(3));
        let text = render(&s, &stats, Duration::from_secs(2), None, "0.2.0");
        assert!(text.contains("pgdaemon_primary{scope=\"c1\",name=\"n1\"} 1\n"), "{text}");
        assert!(text.contains("pgdaemon_role{scope=\"c1\",name=\"n1\",role=\"primary\"} 1\n"));
        assert!(text.contains("pgdaemon_lease_renewals_total{scope=\"c1\",name=\"n1\"} 7\n"));
        assert!(text.contains("pgdaemon_lease_renewal_failures_total{scope=\"c1\",name=\"n1\"} 2\n"));
        assert!(text.contains("pgdaemon_term{scope=\"c1\",name=\"n1\"} 4\n"));
        assert!(text.contains("pgdaemon_loop_duration_seconds_count{scope=\"c1\",name=\"n1\"} 1\n"));
        assert!(text.contains("pgdaemon_version{scope=\"c1\",name=\"n1\",version=\"0.2.0\"} 1\n"));
        assert!(text.contains("# TYPE pgdaemon_lease_renewals_total counter\n"));
        assert!(text.contains("# HELP pgdaemon_role 1 for the role of the last probe"));
        assert!(!text.contains("pgdaemon_replication_lag_bytes"));
        // The lease runs out by the agent's clock: no longer primary.
        let text = render(&s, &stats, Duration::from_secs(11), Some(5), "0.2.0");
        assert!(text.contains("pgdaemon_primary{scope=\"c1\",name=\"n1\"} 0\n"));
        assert!(text.contains("pgdaemon_replication_lag_bytes{scope=\"c1\",name=\"n1\"} 5\n"));
    }

    #[test]
    fn loop_stats_track_idleness() {
        let stats = LoopStats::new(Duration::from_secs(5));
        assert_eq!(stats.last_tick_end(), None);
        assert_eq!(stats.idle_for(Duration::from_secs(7)), Duration::from_secs(2));
        stats.record_tick(Duration::ZERO, Duration::from_millis(1));
        assert_eq!(stats.last_tick_end(), Some(Duration::ZERO));
        assert_eq!(stats.idle_for(Duration::from_secs(9)), Duration::from_secs(9));
    }
}
