//! Prometheus text exposition of the agent's state, rendered by hand (a handful of gauges and
//! counters does not need a metrics framework), plus the loop statistics the run loop keeps.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgdaemon_core::agent::AgentSnapshot;
use pgdaemon_core::Role;

/// Loop statistics written by the run loop and read by `/liveness` and `/metrics`.
///
/// Times are microseconds on the agent's monotonic clock (the injected `Clock`), so liveness is
/// judged with the same clock the lease is.
#[derive(Debug, Default)]
pub struct LoopStats {
    ticks: AtomicU64,
    duration_sum_us: AtomicU64,
    /// Monotonic instant the last tick ended, plus one (0: none yet).
    last_tick_end_us: AtomicU64,
    started_us: AtomicU64,
}

impl LoopStats {
    /// `started`: monotonic now, the reference for liveness before the first tick completes.
    pub fn new(started: Duration) -> Self {
        let s = LoopStats::default();
        s.started_us.store(started.as_micros() as u64, Ordering::Relaxed);
        s
    }

    /// Records one completed tick.
    pub fn record_tick(&self, ended_at: Duration, duration: Duration) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        self.duration_sum_us.fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
        self.last_tick_end_us.store(ended_at.as_micros() as u64 + 1, Ordering::Relaxed);
    }

    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    pub fn duration_sum(&self) -> Duration {
        Duration::from_micros(self.duration_sum_us.load(Ordering::Relaxed))
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

struct Writer {
    out: String,
    labels: String,
}

impl Writer {
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{}}} {value}", self.labels);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// Renders the exposition. `now`: monotonic now on the agent's clock; `lag_bytes`: as computed
/// for `/replica` (`None` when unknown: the series is then omitted rather than faked as 0).
pub fn render(s: &AgentSnapshot, stats: &LoopStats, now: Duration, lag_bytes: Option<u64>) -> String {
    let mut w = Writer {
        out: String::with_capacity(4096),
        labels: format!("scope=\"{}\",name=\"{}\"", escape(&s.cluster), escape(&s.member)),
    };
    let lease_valid = s.lease_valid_until.is_some_and(|until| now < until);
    w.metric("pgdaemon_postgres_running", "gauge", "1 if Postgres answered the last probe.", flag(s.pg_running));
    w.metric(
        "pgdaemon_primary",
        "gauge",
        "1 if Postgres is read-write and this agent holds a valid leader lease.",
        flag(s.role == Role::Primary && lease_valid),
    );
    w.metric("pgdaemon_replica", "gauge", "1 if Postgres runs in recovery.", flag(s.pg_running && s.role == Role::Replica));
    for role in [Role::Primary, Role::Replica, Role::Unknown] {
        let name = role_name(role);
        let _ = writeln!(w.out, "pgdaemon_role{{{},role=\"{name}\"}} {}", w.labels, flag(s.role == role));
    }
    w.metric(
        "pgdaemon_lease_held",
        "gauge",
        "1 while the leader lease is held and valid by this agent's clock.",
        flag(lease_valid),
    );
    w.metric("pgdaemon_term", "gauge", "Newest cluster term this agent has seen.", s.term);
    let probe = s.last_probe.as_ref();
    w.metric("pgdaemon_postgres_timeline", "gauge", "Postgres timeline (0 when unknown).", probe.map_or(0, |p| p.timeline));
    let streaming = probe.is_some_and(|p| p.streaming);
    w.metric("pgdaemon_postgres_streaming", "gauge", "1 if the WAL receiver is streaming.", flag(streaming));
    if let Some(lag) = lag_bytes {
        w.metric(
            "pgdaemon_replication_lag_bytes",
            "gauge",
            "Bytes this replica is behind the primary's last published position.",
            lag,
        );
    }
    if let Some(age) = probe.and_then(|p| p.replay_age) {
        w.metric(
            "pgdaemon_replication_lag_seconds",
            "gauge",
            "Age of the last replayed transaction (0 when caught up).",
            age.as_secs_f64(),
        );
    }
    let c = &s.counters;
    w.metric("pgdaemon_lease_acquisitions_total", "counter", "Leader lease acquisitions.", c.lease_acquisitions);
    w.metric("pgdaemon_lease_renewals_total", "counter", "Successful leader lease renewals.", c.lease_renewals);
    w.metric("pgdaemon_lease_renewal_failures_total", "counter", "Failed leader lease renewals.", c.lease_renew_failures);
    w.metric("pgdaemon_demotions_total", "counter", "Demotions carried out (self-fencing and requested).", c.demotions);
    w.metric("pgdaemon_promotions_total", "counter", "Promotions carried out.", c.promotions);
    w.metric("pgdaemon_coordinator_requests_total", "counter", "Fast-path coordinator runs requested.", c.coordinator_requests);
    w.metric("pgdaemon_heartbeat_failures_total", "counter", "Heartbeats the store did not take.", c.heartbeat_failures);
    w.metric("pgdaemon_action_failures_total", "counter", "Actions that failed.", c.action_failures);
    w.metric("pgdaemon_store_up", "gauge", "1 if the last store read succeeded.", flag(s.store_error.is_none()));
    let _ = writeln!(
        w.out,
        "# HELP pgdaemon_loop_duration_seconds Duration of the agent loop.\n# TYPE pgdaemon_loop_duration_seconds summary\n\
         pgdaemon_loop_duration_seconds_sum{{{l}}} {}\npgdaemon_loop_duration_seconds_count{{{l}}} {}",
        stats.duration_sum().as_secs_f64(),
        stats.ticks(),
        l = w.labels
    );
    w.metric(
        "pgdaemon_loop_last_duration_seconds",
        "gauge",
        "Duration of the last agent loop.",
        s.last_loop_duration.as_secs_f64(),
    );
    w.metric(
        "pgdaemon_loop_idle_seconds",
        "gauge",
        "Time since the agent loop last completed.",
        stats.idle_for(now).as_secs_f64(),
    );
    w.out
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
        let text = render(&s, &stats, Duration::from_secs(2), None);
        assert!(text.contains("pgdaemon_primary{scope=\"c1\",name=\"n1\"} 1\n"), "{text}");
        assert!(text.contains("pgdaemon_role{scope=\"c1\",name=\"n1\",role=\"primary\"} 1\n"));
        assert!(text.contains("pgdaemon_lease_renewals_total{scope=\"c1\",name=\"n1\"} 7\n"));
        assert!(text.contains("pgdaemon_lease_renewal_failures_total{scope=\"c1\",name=\"n1\"} 2\n"));
        assert!(text.contains("pgdaemon_term{scope=\"c1\",name=\"n1\"} 4\n"));
        assert!(text.contains("pgdaemon_loop_duration_seconds_count{scope=\"c1\",name=\"n1\"} 1\n"));
        assert!(!text.contains("pgdaemon_replication_lag_bytes"));
        // The lease runs out by the agent's clock: no longer primary.
        let text = render(&s, &stats, Duration::from_secs(11), Some(5));
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
