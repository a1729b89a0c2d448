//! Events: every state change worth telling a human or another system about (a member going
//! down, a failover starting, a primary being fenced, ...), as one [`Event`] type shared by the
//! coordinator, the agent and the monitor.
//!
//! The flow is the same everywhere: code at a transition calls [`EventEmitter::emit`], which
//! never blocks and never fails; the emitter (the agent's dispatcher, the Lambda's collector)
//! then delivers the event to each configured [`EventSink`] (the store's event log, an SNS topic,
//! a webhook, a local command), retrying a failing sink with backoff. Delivery is therefore
//! at-least-once per sink; every event carries a unique `id` so a receiver can drop a retried
//! duplicate, which makes it exactly-once for a receiver that does.
//!
//! Health changes (member up/down, lag over threshold, role changes) are not emitted at a single
//! code site but derived by the pure [`derive_events`] from two successive [`HealthView`]s, so the
//! coordinator (member heartbeats) and the monitor (probes of unmanaged hosts) apply one rule.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::Role;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A member (or monitored endpoint) became reachable and healthy.
    MemberUp,
    /// A member stopped answering (Postgres down, heartbeat stale or gone).
    MemberDown,
    /// A replica's lag rose above the configured threshold.
    LagOverThreshold,
    /// A replica's lag fell back to or below the threshold.
    LagRecovered,
    /// A member's observed role changed (replica -> primary or back) outside a known transition.
    RoleChanged,
    /// The primary's agent could not renew its leader lease (it demotes itself).
    LeaseLost,
    /// The coordinator began an unplanned change of primary (term bumped).
    FailoverStarted,
    /// The coordinator began a planned change of primary (term bumped).
    SwitchoverStarted,
    /// The old primary was confirmed fenced (failover) or demoted (switchover).
    Fenced,
    /// The new primary reported read-write (coordinator) / this node promoted itself (agent).
    Promoted,
    /// This node's Postgres stopped accepting writes (agent).
    Demoted,
    /// A change of primary completed and was recorded in history.
    Finished,
    /// A base backup began on this member (agent; docs/backups.md).
    BackupStarted,
    /// A base backup finished and is listed in the archive.
    BackupFinished,
    /// A base backup or its retention failed (the detail says which and why).
    BackupFailed,
    /// This member's archive_command failed after its last success: WAL piles up locally.
    ArchiveFailing,
    /// This member archived a segment again after failing.
    ArchiveRecovered,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MemberUp => "member_up",
            EventKind::MemberDown => "member_down",
            EventKind::LagOverThreshold => "lag_over_threshold",
            EventKind::LagRecovered => "lag_recovered",
            EventKind::RoleChanged => "role_changed",
            EventKind::LeaseLost => "lease_lost",
            EventKind::FailoverStarted => "failover_started",
            EventKind::SwitchoverStarted => "switchover_started",
            EventKind::Fenced => "fenced",
            EventKind::Promoted => "promoted",
            EventKind::Demoted => "demoted",
            EventKind::Finished => "finished",
            EventKind::BackupStarted => "backup_started",
            EventKind::BackupFinished => "backup_finished",
            EventKind::BackupFailed => "backup_failed",
            EventKind::ArchiveFailing => "archive_failing",
            EventKind::ArchiveRecovered => "archive_recovered",
        }
    }

    /// Role changes of the local node: what a command hook configured as Patroni's
    /// `on_role_change` wants to hear.
    pub fn is_role_change(self) -> bool {
        matches!(self, EventKind::Promoted | EventKind::Demoted | EventKind::LeaseLost | EventKind::RoleChanged)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event. Serialized as JSON for every sink (webhook body, command stdin, SNS message,
/// store record). Unknown fields are ignored when read: the logged event is a stored record and
/// follows the record contract (docs/upgrading.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event (a UUID); receivers deduplicate retried deliveries by it.
    pub id: String,
    pub kind: EventKind,
    pub cluster: String,
    /// The member (or monitored endpoint) the event is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The cluster term the emitter knew when it emitted (0 when it knows none, e.g. the monitor).
    #[serde(default)]
    pub term: u64,
    /// Wall-clock time of the change, ms since the epoch (for humans and ordering in the log).
    pub time_ms: u64,
    /// Who emitted it: `coordinator`, `agent`, `monitor`.
    #[serde(default)]
    pub source: String,
    /// What happened, in words (includes the reason where there is one).
    #[serde(default)]
    pub detail: String,
    /// Unix time (s) after which DynamoDB TTL may delete the logged event; set by the store sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<u64>,
}

impl Event {
    /// A new event with a fresh id.
    pub fn new(kind: EventKind, cluster: impl Into<String>, time_ms: u64, detail: impl Into<String>) -> Self {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            cluster: cluster.into(),
            member: None,
            term: 0,
            time_ms,
            source: String::new(),
            detail: detail.into(),
            expire_at: None,
        }
    }

    pub fn member(mut self, member: impl Into<String>) -> Self {
        self.member = Some(member.into());
        self
    }

    pub fn term(mut self, term: u64) -> Self {
        self.term = term;
        self
    }

    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Checks what a store needs of an event before it is written (S6): an id usable in a key
    /// and the cluster it is logged under.
    pub fn validate(&self, cluster: &str) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > 64 || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("event id {:?} must be 1 to 64 letters, digits, '-' or '_'", self.id));
        }
        if self.cluster != cluster {
            return Err(format!("event of cluster {:?} cannot be logged under {cluster:?}", self.cluster));
        }
        Ok(())
    }

    /// One line for logs and subjects: `failover_started pg-1 (term 4): reason`.
    pub fn summary(&self) -> String {
        let member = self.member.as_deref().map(|m| format!(" {m}")).unwrap_or_default();
        format!("{}{member} (term {}): {}", self.kind, self.term, self.detail)
    }
}

/// Where the events go once emitted. Implemented by the agent's dispatcher (asynchronous
/// delivery) and by [`Collector`] (the Lambda delivers before its invocation ends).
///
/// Obligations: `emit` returns at once whatever happens to the event later: it must not wait
/// for any sink, must not fail, and must not panic. Callers emit from failover paths, which an
/// events problem must never delay (issue 9: "never blocks failover").
pub trait EventEmitter: Send + Sync {
    fn emit(&self, event: Event);
}

/// An emitter that keeps events in memory until [`Collector::drain`].
#[derive(Debug, Default)]
pub struct Collector {
    events: Mutex<Vec<Event>>,
}

impl Collector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes every event emitted so far, in emission order.
    pub fn drain(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl EventEmitter for Collector {
    fn emit(&self, event: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// Worth another attempt (timeouts, 5xx, throttling); `false` for errors that will not go
    /// away by themselves (a 4xx, an event the receiver rejects).
    pub retryable: bool,
    pub message: String,
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError { retryable: true, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError { retryable: false, message: message.into() }
    }
}

/// One destination of events (store log, SNS, webhook, command hook).
///
/// Obligations:
/// - `deliver` returns `Ok` only once the receiver has accepted the event (HTTP 2xx, exit 0,
///   durable write), and within a bounded time of its own (each sink has a timeout); it never
///   hangs.
/// - It may be called again with the same event after an `Err` (the dispatcher retries), so the
///   receiver may see an event twice; the event's `id` lets it deduplicate.
/// - It performs exactly one attempt: retrying and backoff are the caller's ([`RetryPolicy`]).
#[async_trait]
pub trait EventSink: Send + Sync {
    /// The sink's name for logs (`store`, `webhook`, `command`, `sns`).
    fn name(&self) -> &str;

    /// Whether this sink wants `event` at all (e.g. a command hook only for role changes).
    fn accepts(&self, _event: &Event) -> bool {
        true
    }

    async fn deliver(&self, event: &Event) -> Result<(), SinkError>;
}

/// Bounded retries with exponential backoff for one sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (the first one included); at least 1.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 200 ms doubling to at most 5 s: about 3 s of retrying, enough for a webhook
    /// receiver restart or a throttled API, short enough that a dead sink does not hold the
    /// queue of later events for long.
    fn default() -> Self {
        RetryPolicy { attempts: 5, first_delay: Duration::from_millis(200), max_delay: Duration::from_secs(5) }
    }
}

impl RetryPolicy {
    /// The wait before attempt `n` (1-based; attempt 1 is immediate), or `None` once the
    /// attempts are used up.
    pub fn delay_before(&self, n: u32) -> Option<Duration> {
        if n == 0 || n > self.attempts.max(1) {
            return None;
        }
        if n == 1 {
            return Some(Duration::ZERO);
        }
        let factor = 1u32.checked_shl(n - 2).unwrap_or(u32::MAX);
        Some(self.first_delay.saturating_mul(factor).min(self.max_delay))
    }
}

impl RetryPolicy {
    /// The waits between attempts, in order ([`Self::delay_before`] for attempts 2 onwards): the
    /// backoff [`deliver_with_retry`] hands to `backon`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + Sync + Unpin {
        let policy = *self;
        (2..=policy.attempts.max(1)).filter_map(move |n| policy.delay_before(n))
    }
}

/// An event given up on at one sink: the last error, after `attempts` attempts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error} (after {attempts} attempts)")]
pub struct DeliveryFailed {
    pub attempts: u32,
    pub error: SinkError,
}

/// Delivers `event` to `sink`, retrying a retryable failure after the waits of `policy` (slept
/// with `sleep`, e.g. `tokio::time::sleep`) until the attempts are used up; a permanent failure
/// ends it at once. Each retry is logged, and reported to `on_retry` with the wait before it.
/// Returns the number of attempts it took. The one retry loop of event delivery: the agent's
/// dispatcher and the Lambda both deliver through it.
pub async fn deliver_with_retry<Sl>(
    sink: &dyn EventSink,
    event: &Event,
    policy: RetryPolicy,
    sleep: Sl,
    mut on_retry: impl FnMut(&SinkError, Duration) + Send,
) -> Result<u32, DeliveryFailed>
where
    Sl: backon::Sleeper,
{
    use backon::Retryable;
    use std::sync::atomic::{AtomicU32, Ordering};

    let made = AtomicU32::new(0);
    let attempts = &made;
    let result = (move || async move {
        attempts.fetch_add(1, Ordering::SeqCst);
        sink.deliver(event).await
    })
    .retry(policy.delays())
    .sleep(sleep)
    .when(|e: &SinkError| e.retryable)
    .notify(|e: &SinkError, delay: Duration| {
        let attempt = attempts.load(Ordering::SeqCst);
        tracing::warn!(sink = sink.name(), event_id = %event.id, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "event delivery failed; retrying");
        on_retry(e, delay);
    })
    .await;
    let attempts = made.load(Ordering::SeqCst);
    result.map(|()| attempts).map_err(|error| DeliveryFailed { attempts, error })
}

/// Default retention of logged events: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The health of one member or monitored endpoint, as one observer sees it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberHealth {
    /// Reachable and answering (Postgres running, heartbeat fresh).
    pub up: bool,
    pub role: Role,
    /// Replication lag in bytes, if known.
    pub lag_bytes: Option<u64>,
}

/// Health of every member by name.
pub type HealthView = BTreeMap<String, MemberHealth>;

/// The events between two successive health views of one cluster (pure).
///
/// - a member seen for the first time: `member_up` or `member_down` ("first seen");
/// - a member gone from the view: `member_down`;
/// - up <-> down: `member_up` / `member_down`;
/// - both up with different known roles: `role_changed`;
/// - with a threshold, a lag crossing it upward: `lag_over_threshold`; back down (or the member
///   no longer lagging): `lag_recovered`.
///
/// A caller that wants a silent start (the coordinator after a cold start) keeps its first view
/// as the baseline instead of diffing it against an empty one. Events come out sorted by member
/// name, in the order of the rules above.
pub fn derive_events(
    cluster: &str,
    term: u64,
    prev: &HealthView,
    next: &HealthView,
    lag_threshold_bytes: Option<u64>,
    now_ms: u64,
) -> Vec<Event> {
    let mut out = Vec::new();
    let ev = |kind, member: &str, detail: String| Event::new(kind, cluster, now_ms, detail).member(member).term(term);
    let over = |h: &MemberHealth| match (lag_threshold_bytes, h.lag_bytes) {
        (Some(t), Some(l)) => h.up && l > t,
        _ => false,
    };
    for (name, n) in next {
        match prev.get(name) {
            None => {
                let kind = if n.up { EventKind::MemberUp } else { EventKind::MemberDown };
                out.push(ev(kind, name, format!("first seen {} ({})", if n.up { "up" } else { "down" }, role_name(n.role))));
            }
            Some(p) => {
                if p.up && !n.up {
                    out.push(ev(EventKind::MemberDown, name, format!("was up as {}", role_name(p.role))));
                } else if !p.up && n.up {
                    out.push(ev(EventKind::MemberUp, name, format!("up as {}", role_name(n.role))));
                } else if p.up && n.up && p.role != n.role && p.role != Role::Unknown && n.role != Role::Unknown {
                    out.push(ev(EventKind::RoleChanged, name, format!("{} -> {}", role_name(p.role), role_name(n.role))));
                }
            }
        }
        let was_over = prev.get(name).is_some_and(over);
        if over(n) && !was_over {
            let t = lag_threshold_bytes.unwrap_or(0);
            out.push(ev(EventKind::LagOverThreshold, name, format!("lag {} bytes > {t}", n.lag_bytes.unwrap_or(0))));
        } else if was_over && !over(n) && n.up {
            let lag = n.lag_bytes.map_or("unknown".to_string(), |l| format!("{l} bytes"));
            out.push(ev(EventKind::LagRecovered, name, format!("lag {lag}")));
        }
    }
    for (name, p) in prev {
        if !next.contains_key(name) && p.up {
            out.push(ev(EventKind::MemberDown, name, "no longer reported".into()));
        }
    }
    out
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Unknown => "unknown role",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(up: bool, role: Role, lag: Option<u64>) -> MemberHealth {
        MemberHealth { up, role, lag_bytes: lag }
    }

    fn kinds(events: &[Event]) -> Vec<(String, EventKind)> {
        events.iter().map(|e| (e.member.clone().unwrap_or_default(), e.kind)).collect()
    }

    #[test]
    fn health_changes_become_events_once() {
        let a = HealthView::from([("a".into(), h(true, Role::Primary, None)), ("b".into(), h(true, Role::Replica, Some(10)))]);
        assert!(derive_events("c", 1, &a, &a, Some(100), 5).is_empty(), "no change, no event");

        let first = derive_events("c", 1, &HealthView::new(), &a, None, 5);
        assert_eq!(kinds(&first), vec![("a".into(), EventKind::MemberUp), ("b".into(), EventKind::MemberUp)]);

        let mut b = a.clone();
        b.insert("a".into(), h(false, Role::Unknown, None));
        b.insert("b".into(), h(true, Role::Replica, Some(500)));
        let ev = derive_events("c", 2, &a, &b, Some(100), 9);
        assert_eq!(kinds(&ev), vec![("a".into(), EventKind::MemberDown), ("b".into(), EventKind::LagOverThreshold)]);
        assert!(ev.iter().all(|e| e.term == 2 && e.time_ms == 9 && e.cluster == "c"));
        assert_ne!(ev[0].id, ev[1].id);

        // b promoted while a is gone; lag no longer reported.
        let mut c = b.clone();
        c.remove("a");
        c.insert("b".into(), h(true, Role::Primary, None));
        let ev = derive_events("c", 3, &b, &c, Some(100), 10);
        assert_eq!(kinds(&ev), vec![("b".into(), EventKind::RoleChanged), ("b".into(), EventKind::LagRecovered)]);
        assert!(ev[0].detail.contains("replica -> primary"), "{}", ev[0].detail);

        // A member removed while down is not "down" twice.
        assert!(derive_events("c", 3, &b, &c, None, 10).iter().all(|e| e.kind != EventKind::MemberDown));
        let back = derive_events("c", 3, &c, &a, None, 11);
        assert_eq!(kinds(&back), vec![("a".into(), EventKind::MemberUp), ("b".into(), EventKind::RoleChanged)]);
    }

    #[test]
    fn retry_policy_backs_off_and_stops() {
        let p = RetryPolicy { attempts: 4, first_delay: Duration::from_millis(100), max_delay: Duration::from_millis(250) };
        let delays: Vec<_> = (1..=5).map(|n| p.delay_before(n)).collect();
        assert_eq!(
            delays,
            vec![
                Some(Duration::ZERO),
                Some(Duration::from_millis(100)),
                Some(Duration::from_millis(200)),
                Some(Duration::from_millis(250)),
                None
            ]
        );
        let long = RetryPolicy { attempts: 100, ..p };
        assert_eq!(long.delay_before(80), Some(Duration::from_millis(250)), "no overflow on long schedules");
    }

    /// Fails with `errors` in turn, then accepts; counts the attempts.
    struct Scripted {
        errors: Mutex<Vec<SinkError>>,
        calls: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl EventSink for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        async fn deliver(&self, _event: &Event) -> Result<(), SinkError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut errors = self.errors.lock().unwrap();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.remove(0))
            }
        }
    }

    /// Delivers one event through [`deliver_with_retry`]; returns its result, the waits slept
    /// and the waits reported to `on_retry`.
    fn deliver(errors: Vec<SinkError>, policy: RetryPolicy) -> (Result<u32, DeliveryFailed>, u32, Vec<Duration>, Vec<Duration>) {
        let sink = Scripted { errors: Mutex::new(errors), calls: Default::default() };
        let slept = std::sync::Arc::new(Mutex::new(Vec::new()));
        let sleep = {
            let slept = slept.clone();
            move |d: Duration| {
                slept.lock().unwrap().push(d);
                std::future::ready(())
            }
        };
        let mut reported = Vec::new();
        let event = Event::new(EventKind::Fenced, "c", 1, "x");
        let result = futures::executor::block_on(deliver_with_retry(&sink, &event, policy, sleep, |_, d| reported.push(d)));
        let slept = slept.lock().unwrap().clone();
        (result, sink.calls.load(std::sync::atomic::Ordering::SeqCst), slept, reported)
    }

    const POLICY: RetryPolicy =
        RetryPolicy { attempts: 4, first_delay: Duration::from_millis(100), max_delay: Duration::from_millis(250) };

    #[test]
    fn a_retryable_failure_is_retried_with_the_policy_waits() {
        let (result, calls, slept, reported) =
            deliver(vec![SinkError::retryable("503"), SinkError::retryable("timeout")], POLICY);
        assert_eq!(result, Ok(3));
        assert_eq!(calls, 3);
        assert_eq!(slept, vec![Duration::from_millis(100), Duration::from_millis(200)]);
        assert_eq!(reported, slept, "every retry is reported with its wait");
    }

    #[test]
    fn a_permanent_failure_is_not_retried() {
        let (result, calls, slept, reported) =
            deliver(vec![SinkError::retryable("503"), SinkError::permanent("HTTP 400")], POLICY);
        assert_eq!(result, Err(DeliveryFailed { attempts: 2, error: SinkError::permanent("HTTP 400") }));
        assert_eq!((calls, slept.len(), reported.len()), (2, 1, 1));
        let (result, calls, slept, _) = deliver(vec![SinkError::permanent("HTTP 400")], POLICY);
        assert_eq!(result.unwrap_err().attempts, 1);
        assert_eq!((calls, slept.len()), (1, 0));
    }

    #[test]
    fn retrying_stops_after_the_attempts_with_the_last_error() {
        let errors = (0..10).map(|i| SinkError::retryable(format!("down {i}"))).collect();
        let (result, calls, slept, _) = deliver(errors, POLICY);
        assert_eq!(result, Err(DeliveryFailed { attempts: 4, error: SinkError::retryable("down 3") }));
        assert_eq!(calls, 4);
        let want: Vec<Duration> = (2..=4).map(|n| POLICY.delay_before(n).unwrap()).collect();
        assert_eq!(slept, want);
        let once = RetryPolicy { attempts: 1, ..POLICY };
        let (result, calls, _, _) = deliver(vec![SinkError::retryable("down")], once);
        assert_eq!((result.unwrap_err().attempts, calls), (1, 1));
    }

    #[test]
    fn events_round_trip_and_bad_ones_are_refused() {
        let e = Event::new(EventKind::FailoverStarted, "c1", 42, "primary lost").member("pg-1").term(3).source("coordinator");
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"kind\":\"failover_started\""), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        assert!(e.validate("c1").is_ok());
        assert!(e.validate("c2").is_err());
        assert!(Event { id: "a/b".into(), ..e.clone() }.validate("c1").is_err());
        assert!(Event { id: String::new(), ..e.clone() }.validate("c1").is_err());
        assert_eq!(e.summary(), "failover_started pg-1 (term 3): primary lost");
    }

    #[test]
    fn collector_keeps_order() {
        let c = Collector::new();
        c.emit(Event::new(EventKind::MemberUp, "x", 1, ""));
        c.emit(Event::new(EventKind::MemberDown, "x", 2, ""));
        let got = c.drain();
        assert_eq!(got.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::MemberUp, EventKind::MemberDown]);
        assert!(c.drain().is_empty());
    }
}
