//! The one conformance suite every [`Store`] backend runs unchanged.
//!
//! A backend's test file implements [`Harness`] and expands [`conformance_suite!`], which emits one
//! `#[tokio::test]` per check with the same names for every backend. Each check works in its own
//! randomly named cluster, so checks sharing one engine do not interfere; the outage check asks
//! for an engine of its own.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;

use crate::clock::ManualClock;
use crate::lease::{AcquireOutcome, LeaseClient};
use crate::model::{ClusterRecord, HistoryEntry, LeaseName, MemberStatus, Role, TransitionKind};
use crate::store::{LeaseClaim, Store, StoreError};
use crate::{codec, keys, DynamicConfig};

mod config_items;
pub use config_items::*;

/// What a backend's test setup provides.
#[async_trait]
pub trait Harness: Sized + Send + Sync + 'static {
    type S: Store + 'static;

    /// Connects to a running engine; with `own_engine`, to one no other check uses (it may be
    /// stopped).
    async fn start(own_engine: bool) -> Self;

    /// A new client of the engine (contenders use separate clients, as separate hosts would).
    async fn client(&self) -> Self::S;

    /// Stops the engine so that it no longer answers.
    async fn stop_engine(&self);

    /// Starts the engine again after [`Harness::stop_engine`].
    async fn restart_engine(&self);

    /// Stores bytes that do not decode as the record `item` of `cluster`, bypassing the backend's
    /// encoder.
    async fn corrupt(&self, cluster: &str, item: &str);

    /// Stores `record` (a JSON object) as item `item` of `cluster` the way the backend stores a
    /// record of that kind, bypassing the backend's encoder: what a newer (or broken) writer
    /// would leave behind.
    async fn put_raw(&self, cluster: &str, item: &str, record: serde_json::Value);

    /// Whether the engine itself removes a lease record whose holder stopped renewing (etcd: the
    /// key is attached to an etcd lease with a TTL). `false`: the record stays as written until
    /// someone takes it over or it is released (DynamoDB, memory); only observers' own clocks
    /// (`rvn` unchanged for a full lease) make it free.
    const LEASE_EXPIRES_IN_ENGINE: bool;
}

/// Emits the suite's tests for one harness type.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:ty) => {
        $crate::conformance_suite!(@tests $harness;
            racing_contenders_exactly_one_wins,
            renewal_by_non_owner_is_rejected,
            takeover_waits_for_a_full_lease_of_unchanged_rvn,
            term_strictly_increases_across_takeovers,
            released_lease_is_free_at_once,
            cluster_record_cas_exactly_one_writer_wins,
            member_heartbeats_in_one_consistent_view,
            history_appends_once_per_term_in_order,
            events_log_once_in_order_apart_from_the_view,
            stopped_engine_is_unavailable_never_success,
            malformed_records_are_named,
            records_with_unknown_fields_and_newer_formats_are_read,
            unreadable_member_history_and_event_items_are_skipped_and_reported,
            records_for_newer_readers_are_refused_where_they_matter,
            unrenewed_lease_lapses_only_where_the_engine_expires_it,
            invalid_requests_change_nothing,
            clusters_are_isolated,
            registry_lists_registered_clusters_apart_from_their_items,
            parameters_and_member_states_in_the_view,
            backup_config_in_the_view,
        );
    };
    (@tests $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name::<$harness>().await;
            }
        )*
    };
}

const LEASE_MS: u64 = 5_000;
/// Upper bound on any single store call in the outage check: a call may fail, never hang.
const CALL_BOUND: Duration = Duration::from_secs(30);

fn cluster_name(check: &str) -> String {
    format!(
        "{}-{}",
        check.replace('_', "-").chars().take(40).collect::<String>(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn member(name: &str, seq: u64) -> MemberStatus {
    let mut m = MemberStatus::new(name);
    m.role = Role::Replica;
    m.pg_running = true;
    m.timeline = 1;
    m.receive_lsn = Some(crate::Lsn(seq * 100));
    m.seq = seq;
    m
}

fn history(term: u64) -> HistoryEntry {
    HistoryEntry {
        term,
        kind: TransitionKind::Failover,
        old_primary: Some("a".into()),
        new_primary: format!("n{term}"),
        lsn: Some(crate::Lsn(term)),
        reason: "test".into(),
        started_ms: 1,
        finished_ms: 2,
        step_ms: Default::default(),
        coordinator_version: None,
    }
}

pub async fn racing_contenders_exactly_one_wins<H: Harness>() {
    let h = H::start(false).await;
    let cluster = cluster_name("race");
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(h.client().await);
    }
    let attempts = clients.iter().enumerate().map(|(i, s)| {
        let cluster = cluster.clone();
        async move { s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, &format!("n{i}"), 1, LEASE_MS).await }
    });
    let results = join_all(attempts).await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one contender must win: {results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(e.is_conflict(), "a loser sees a conflict, not an error: {e}");
        }
    }
    let stored = clients[0].read_lease(&cluster, LeaseName::Leader).await.unwrap().unwrap();
    assert_eq!(&stored, winners[0]);

    // The coordinator lock is a separate lease with the same rules.
    let results = join_all(clients.iter().map(|s| {
        let cluster = cluster.clone();
        async move { s.acquire_lease(&cluster, LeaseName::Coordinator, LeaseClaim::Free, "coord", 1, LEASE_MS).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");

    // So is the bootstrap's initialize lock, which the view does not show.
    let results = join_all(clients.iter().enumerate().map(|(i, s)| {
        let cluster = cluster.clone();
        async move { s.acquire_lease(&cluster, LeaseName::Initialize, LeaseClaim::Free, &format!("n{i}"), 1, LEASE_MS).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    let view = clients[0].read_view(&cluster).await.unwrap();
    assert_eq!(view.leader.as_ref(), Some(&stored), "the initialize lock is not the leader lease");
    assert!(view.members.is_empty() && view.unreadable.is_empty(), "{view:?}");
}

pub async fn renewal_by_non_owner_is_rejected<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("renew");
    let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, LEASE_MS).await.unwrap();

    let impostor = crate::LeaderLease { owner: "b".into(), ..held.clone() };
    let err = s.renew_lease(&cluster, LeaseName::Leader, &impostor).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let err = s.release_lease(&cluster, LeaseName::Leader, &impostor).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");

    let renewed = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap();
    assert_ne!(renewed.rvn, held.rvn, "every renewal writes a new rvn");
    assert_eq!((renewed.owner.as_str(), renewed.term, renewed.lease_ms), ("a", 1, LEASE_MS));

    // The owner itself cannot renew from a stale rvn (its earlier renewal won, or someone took over).
    let err = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(s.read_lease(&cluster, LeaseName::Leader).await.unwrap(), Some(renewed));
}

pub async fn takeover_waits_for_a_full_lease_of_unchanged_rvn<H: Harness>() {
    let h = H::start(false).await;
    let cluster = cluster_name("takeover");
    let clock_a = ManualClock::new(0);
    let clock_b = ManualClock::new(0);
    let mut a = LeaseClient::new(h.client().await, clock_a.clone(), &cluster, LeaseName::Leader, "a", LEASE_MS);
    let mut b = LeaseClient::new(h.client().await, clock_b.clone(), &cluster, LeaseName::Leader, "b", LEASE_MS);
    let AcquireOutcome::Acquired(held_a) = a.try_acquire(Some(1)).await.unwrap() else { panic!("free lease") };

    let outcome = b.try_acquire(Some(2)).await.unwrap();
    assert!(matches!(outcome, AcquireOutcome::HeldByOther { ref owner, term: 1, .. } if owner == "a"), "{outcome:?}");
    clock_b.advance(Duration::from_millis(LEASE_MS - 1));
    assert!(matches!(b.try_acquire(Some(2)).await.unwrap(), AcquireOutcome::HeldByOther { .. }), "refused before a full lease");

    // A renewal restarts the observer's count from the moment it sees the new rvn.
    let held_a = a.renew(&held_a).await.unwrap();
    clock_b.advance(Duration::from_millis(LEASE_MS));
    let outcome = b.try_acquire(Some(2)).await.unwrap();
    assert!(
        matches!(outcome, AcquireOutcome::HeldByOther { unchanged_for: Duration::ZERO, .. }),
        "renewal must restart the count: {outcome:?}"
    );
    clock_b.advance(Duration::from_millis(LEASE_MS - 1));
    assert!(matches!(b.try_acquire(Some(2)).await.unwrap(), AcquireOutcome::HeldByOther { .. }), "refused before a full lease");
    clock_b.advance(Duration::from_millis(1));
    let AcquireOutcome::Acquired(held_b) = b.try_acquire(Some(2)).await.unwrap() else {
        panic!("a full lease of unchanged rvn has passed")
    };
    assert_eq!((held_b.lease.owner.as_str(), held_b.lease.term), ("b", 2));

    // The old holder's next renewal fails: it has lost the lease.
    assert!(a.renew(&held_a).await.unwrap_err().is_conflict());

    // A takeover based on a stale observation loses.
    let s = h.client().await;
    let err = s
        .acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Takeover { observed_rvn: &held_a.lease.rvn }, "c", 3, LEASE_MS)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
}

pub async fn term_strictly_increases_across_takeovers<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("terms");
    let mut terms = Vec::new();
    let mut held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "n0", 1, LEASE_MS).await.unwrap();
    terms.push(held.term);
    for i in 1..5u64 {
        // A claim that does not raise the term is refused whatever else holds.
        let err = s
            .acquire_lease(
                &cluster,
                LeaseName::Leader,
                LeaseClaim::Takeover { observed_rvn: &held.rvn },
                "x",
                held.term,
                LEASE_MS,
            )
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        held = if i % 2 == 0 {
            s.release_lease(&cluster, LeaseName::Leader, &held).await.unwrap();
            let released = s.read_lease(&cluster, LeaseName::Leader).await.unwrap().unwrap();
            assert!(released.released && released.term == held.term, "release keeps the term: {released:?}");
            s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, &format!("n{i}"), held.term + 1, LEASE_MS)
                .await
                .unwrap()
        } else {
            s.acquire_lease(
                &cluster,
                LeaseName::Leader,
                LeaseClaim::Takeover { observed_rvn: &held.rvn },
                &format!("n{i}"),
                held.term + 1 + i,
                LEASE_MS,
            )
            .await
            .unwrap()
        };
        terms.push(held.term);
    }
    assert!(terms.windows(2).all(|w| w[0] < w[1]), "terms must strictly increase: {terms:?}");
}

pub async fn released_lease_is_free_at_once<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("release");
    let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, LEASE_MS).await.unwrap();
    let err = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "b", 2, LEASE_MS).await.unwrap_err();
    assert!(err.is_conflict(), "a held lease is not free: {err}");
    s.release_lease(&cluster, LeaseName::Leader, &held).await.unwrap();
    assert!(s.release_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err().is_conflict(), "double release");
    assert!(s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err().is_conflict(), "renew after release");

    let clock = ManualClock::new(0);
    let mut b = LeaseClient::new(h.client().await, clock, &cluster, LeaseName::Leader, "b", LEASE_MS);
    let AcquireOutcome::Acquired(got) = b.try_acquire(None).await.unwrap() else { panic!("released lease must be free at once") };
    assert_eq!((got.lease.owner.as_str(), got.lease.term), ("b", 2));
}

pub async fn cluster_record_cas_exactly_one_writer_wins<H: Harness>() {
    let h = H::start(false).await;
    let cluster = cluster_name("cas");
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(h.client().await);
    }
    assert_eq!(clients[0].read_cluster(&cluster).await.unwrap(), None);

    // Creation races: exactly one creates.
    let results =
        join_all(
            clients.iter().enumerate().map(|(i, s)| {
                let cluster = cluster.clone();
                async move {
                    s.write_cluster(&cluster, None, &ClusterRecord::bootstrap(format!("n{i}"), DynamicConfig::default())).await
                }
            }),
        )
        .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(StoreError::is_conflict), "{results:?}");
    let created = results.into_iter().find_map(Result::ok).unwrap();
    assert_eq!(created.version, 1);

    // Updates race on the same version: exactly one wins, losers see a conflict.
    let results = join_all(clients.iter().enumerate().map(|(i, s)| {
        let cluster = cluster.clone();
        let mut next = created.clone();
        next.term = 2;
        next.primary = Some(format!("winner{i}"));
        async move { s.write_cluster(&cluster, Some(1), &next).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(StoreError::is_conflict), "{results:?}");
    let winner = results.into_iter().find_map(Result::ok).unwrap();
    assert_eq!(winner.version, 2);
    let stored = clients[0].read_cluster(&cluster).await.unwrap().unwrap();
    assert_eq!(stored, winner);

    // A stale version and a second creation both lose.
    assert!(clients[1].write_cluster(&cluster, Some(1), &stored).await.unwrap_err().is_conflict());
    assert!(clients[1].write_cluster(&cluster, None, &stored).await.unwrap_err().is_conflict());
    assert_eq!(clients[1].read_cluster(&cluster).await.unwrap().unwrap().version, 2);
}

pub async fn member_heartbeats_in_one_consistent_view<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("view");
    let record = s.write_cluster(&cluster, None, &ClusterRecord::bootstrap("m0", DynamicConfig::default())).await.unwrap();
    let lease = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "m0", 1, LEASE_MS).await.unwrap();
    for seq in 1..=3 {
        for name in ["m0", "m1", "m2"] {
            s.put_member(&cluster, &member(name, seq)).await.unwrap();
        }
    }
    s.append_history(&cluster, &history(1)).await.unwrap();
    let view = s.read_view(&cluster).await.unwrap();
    assert_eq!(view.cluster, Some(record));
    assert_eq!(view.leader, Some(lease));
    assert_eq!(view.coordinator, None);
    assert_eq!(view.members.keys().cloned().collect::<Vec<_>>(), ["m0", "m1", "m2"]);
    assert!(view.members.values().all(|m| m.seq == 3), "every member's latest beat: {view:?}");
    assert_eq!(view.members["m1"], member("m1", 3));

    s.remove_member(&cluster, "m1").await.unwrap();
    s.remove_member(&cluster, "m1").await.unwrap();
    let view = s.read_view(&cluster).await.unwrap();
    assert_eq!(view.members.keys().cloned().collect::<BTreeSet<_>>(), BTreeSet::from(["m0".to_string(), "m2".to_string()]));
}

pub async fn history_appends_once_per_term_in_order<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("history");
    assert!(s.read_history(&cluster).await.unwrap().is_empty());
    for term in [3, 1, 12, 2] {
        s.append_history(&cluster, &history(term)).await.unwrap();
    }
    let err = s.append_history(&cluster, &history(12)).await.unwrap_err();
    assert!(err.is_conflict(), "a second record for one term: {err}");
    let terms: Vec<u64> = s.read_history(&cluster).await.unwrap().iter().map(|e| e.term).collect();
    assert_eq!(terms, [1, 2, 3, 12]);
    assert_eq!(s.read_history(&cluster).await.unwrap()[3], history(12));
}

pub async fn events_log_once_in_order_apart_from_the_view<H: Harness>() {
    use crate::events::{Event, EventKind};
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("events");
    assert!(s.read_events(&cluster, 0).await.unwrap().is_empty());
    s.write_cluster(&cluster, None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
    let ev = |kind, t| Event::new(kind, cluster.as_str(), t, format!("at {t}")).member("a").term(1).source("test");
    let (late, early, same_time) =
        (ev(EventKind::MemberDown, 2_000), ev(EventKind::MemberUp, 1_000), ev(EventKind::Fenced, 2_000));
    for e in [&late, &early, &same_time] {
        s.append_event(&cluster, e).await.unwrap();
    }
    // A retried append (same id and time) is accepted and logs nothing new.
    s.append_event(&cluster, &late).await.unwrap();
    let all = s.read_events(&cluster, 0).await.unwrap();
    let mut at_2000 = vec![late.clone(), same_time.clone()];
    at_2000.sort_by(|a, b| a.id.cmp(&b.id));
    let expected: Vec<Event> = std::iter::once(early.clone()).chain(at_2000.clone()).collect();
    assert_eq!(all, expected, "once each, by time then id");
    assert_eq!(s.read_events(&cluster, 1_001).await.unwrap(), at_2000, "since_ms filters");
    assert!(s.read_events(&cluster, 2_001).await.unwrap().is_empty());

    // The log is not part of the view (which still holds every other item), and another
    // cluster's log is separate.
    s.put_member(&cluster, &member("a", 1)).await.unwrap();
    s.append_history(&cluster, &history(1)).await.unwrap();
    let view = s.read_view(&cluster).await.unwrap();
    assert!(view.cluster.is_some() && view.members.keys().eq(["a"]), "{view:?}");
    assert_eq!(s.read_history(&cluster).await.unwrap(), vec![history(1)], "history is no event");
    assert_eq!(s.read_events(&cluster, 0).await.unwrap().len(), 3, "heartbeats and history are no events");
    let other = cluster_name("events-other");
    assert!(s.read_events(&other, 0).await.unwrap().is_empty());

    // Bad events change nothing.
    let err = s.append_event(&other, &early).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "an event of another cluster: {err}");
    let bad_id = Event { id: "x/y".into(), ..early.clone() };
    assert!(matches!(s.append_event(&cluster, &bad_id).await, Err(StoreError::Invalid(_))));
    assert_eq!(s.read_events(&cluster, 0).await.unwrap().len(), 3);
}

pub async fn stopped_engine_is_unavailable_never_success<H: Harness>() {
    let h = H::start(true).await;
    let s = h.client().await;
    let cluster = cluster_name("outage");
    let record = s.write_cluster(&cluster, None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
    let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, LEASE_MS).await.unwrap();

    h.stop_engine().await;
    macro_rules! unavailable {
        ($call:expr) => {{
            let result = tokio::time::timeout(CALL_BOUND, $call).await.expect("a call to a stopped engine must fail, not hang");
            match result {
                Err(StoreError::Unavailable(_)) => {}
                other => panic!("{} with the engine stopped gave {:?}", stringify!($call), other),
            }
        }};
    }
    unavailable!(s.renew_lease(&cluster, LeaseName::Leader, &held));
    unavailable!(s.read_lease(&cluster, LeaseName::Leader));
    unavailable!(s.read_view(&cluster));
    unavailable!(s.acquire_lease(&cluster, LeaseName::Coordinator, LeaseClaim::Free, "c", 1, LEASE_MS));
    unavailable!(s.write_cluster(&cluster, Some(record.version), &record));
    unavailable!(s.put_member(&cluster, &member("a", 1)));
    unavailable!(s.append_history(&cluster, &history(1)));
    unavailable!(s.read_history(&cluster));
    unavailable!(s.read_events(&cluster, 0));

    h.restart_engine().await;
    // The same client recovers once the engine answers again.
    let mut recovered = None;
    for _ in 0..60 {
        match s.read_view(&cluster).await {
            Ok(view) => {
                recovered = Some(view);
                break;
            }
            Err(e) => {
                assert!(e.is_unavailable(), "only unavailability while restarting: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    assert!(recovered.is_some(), "the client must recover after the engine restarts");
    s.put_member(&cluster, &member("a", 2)).await.unwrap();
}

pub async fn malformed_records_are_named<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("malformed");
    s.write_cluster(&cluster, None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
    s.put_member(&cluster, &member("a", 1)).await.unwrap();

    fn named(result: Result<impl std::fmt::Debug, StoreError>, item: &str) {
        match result {
            Err(StoreError::Malformed { item: got, reason }) => {
                assert_eq!(got, item);
                assert!(!reason.is_empty());
            }
            other => panic!("expected a decode error naming {item}, got {other:?}"),
        }
    }

    h.corrupt(&cluster, keys::LEADER).await;
    named(s.read_lease(&cluster, LeaseName::Leader).await, keys::LEADER);
    named(s.read_view(&cluster).await, keys::LEADER);
    // A corrupt lease is never silently treated as absent, so nobody may claim it.
    let claim = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "b", 5, LEASE_MS).await;
    assert!(claim.is_err(), "claiming over an undecodable lease: {claim:?}");

    h.corrupt(&cluster, keys::CLUSTER).await;
    named(s.read_cluster(&cluster).await, keys::CLUSTER);

    // A corrupt member or history item does not fail its read: it is skipped and reported
    // (see unreadable_member_history_and_event_items_are_skipped_and_reported).
    let item = keys::member("b");
    let other = cluster_name("malformed-member");
    s.put_member(&other, &member("a", 1)).await.unwrap();
    h.corrupt(&other, &item).await;
    let view = s.read_view(&other).await.unwrap();
    assert!(view.members.keys().eq(["a"]), "{view:?}");
    assert_eq!(view.unreadable.iter().map(|u| u.item.as_str()).collect::<Vec<_>>(), [item.as_str()]);

    let item = keys::history(7);
    h.corrupt(&other, &item).await;
    assert!(s.read_history(&other).await.unwrap().is_empty());
}

/// `record` as JSON with what a newer writer adds: an unknown field (nested too), a newer
/// format, a minimum reader this build meets.
fn from_the_future<T: serde::Serialize>(record: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(record).unwrap();
    let o = v.as_object_mut().unwrap();
    o.insert("future_field".into(), serde_json::json!({"nested": [1, 2], "flag": true}));
    o.insert(codec::FORMAT_FIELD.into(), serde_json::json!(codec::RECORD_FORMAT + 1));
    o.insert(codec::MIN_READER_FIELD.into(), serde_json::json!(codec::RECORD_FORMAT));
    v
}

/// `record` declaring a minimum reader format newer than this build's.
fn for_newer_readers<T: serde::Serialize>(record: &T) -> serde_json::Value {
    let mut v = serde_json::to_value(record).unwrap();
    v.as_object_mut().unwrap().insert(codec::MIN_READER_FIELD.into(), serde_json::json!(codec::RECORD_FORMAT + 1));
    v
}

fn lease(owner: &str, term: u64) -> crate::LeaderLease {
    crate::LeaderLease { owner: owner.into(), term, rvn: format!("rvn-{owner}-{term}"), lease_ms: LEASE_MS, released: false }
}

pub async fn records_with_unknown_fields_and_newer_formats_are_read<H: Harness>() {
    use crate::events::{Event, EventKind};
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("future");
    let mut record = ClusterRecord::bootstrap("a", DynamicConfig::default());
    record.version = 1;
    let mut raw_record = from_the_future(&record);
    raw_record["config"]["future_setting"] = serde_json::json!(5);
    h.put_raw(&cluster, keys::CLUSTER, raw_record).await;
    let (leader, lock) = (lease("a", 1), lease("coord", 1));
    h.put_raw(&cluster, keys::LEADER, from_the_future(&leader)).await;
    h.put_raw(&cluster, keys::COORDINATOR_LOCK, from_the_future(&lock)).await;
    let mut a = member("a", 1);
    a.agent_version = "9.9.9".into();
    let mut raw_member = from_the_future(&a);
    raw_member["tags"]["future_tag"] = serde_json::json!("x");
    h.put_raw(&cluster, &keys::member("a"), raw_member).await;
    let mut entry = history(1);
    entry.coordinator_version = Some("9.9.9".into());
    h.put_raw(&cluster, &keys::history(1), from_the_future(&entry)).await;
    let event = Event::new(EventKind::MemberUp, cluster.as_str(), 1_000, "up").member("a").term(1).source("agent");
    h.put_raw(&cluster, &keys::event(event.time_ms, &event.id), from_the_future(&event)).await;

    let view = s.read_view(&cluster).await.unwrap();
    assert_eq!(view.cluster.as_ref(), Some(&record));
    assert_eq!(view.leader.as_ref(), Some(&leader));
    assert_eq!(view.coordinator.as_ref(), Some(&lock));
    assert_eq!(view.members.get("a"), Some(&a));
    assert!(view.unreadable.is_empty(), "{:?}", view.unreadable);
    assert_eq!(s.read_cluster(&cluster).await.unwrap(), Some(record.clone()));
    assert_eq!(s.read_lease(&cluster, LeaseName::Leader).await.unwrap(), Some(leader.clone()));
    assert_eq!(s.read_history(&cluster).await.unwrap(), vec![entry]);
    assert_eq!(s.read_events(&cluster, 0).await.unwrap(), vec![event]);

    // Conditional writes work on them as on this build's own records.
    let renewed = s.renew_lease(&cluster, LeaseName::Leader, &leader).await.unwrap();
    assert_eq!((renewed.owner.as_str(), renewed.term), ("a", 1));
    let mut next = record.clone();
    next.paused = true;
    assert_eq!(s.write_cluster(&cluster, Some(1), &next).await.unwrap().version, 2);
}

pub async fn unreadable_member_history_and_event_items_are_skipped_and_reported<H: Harness>() {
    use crate::events::{Event, EventKind};
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("unreadable");
    let record = s.write_cluster(&cluster, None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
    let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, LEASE_MS).await.unwrap();
    s.put_member(&cluster, &member("a", 1)).await.unwrap();
    s.put_member(&cluster, &member("b", 1)).await.unwrap();
    h.corrupt(&cluster, &keys::member("garbage")).await;
    h.put_raw(&cluster, &keys::member("newer"), for_newer_readers(&member("newer", 1))).await;
    // A record stored under another member's key: it must not stand in for either.
    h.put_raw(&cluster, &keys::member("c"), serde_json::to_value(member("b", 99)).unwrap()).await;

    let view = s.read_view(&cluster).await.unwrap();
    assert_eq!(view.cluster, Some(record), "the rest of the view is read");
    assert_eq!(view.leader, Some(held));
    assert!(view.members.keys().eq(["a", "b"]), "{:?}", view.members.keys());
    assert_eq!(view.members["b"], member("b", 1), "the record under the wrong key replaced nothing");
    let mut unreadable: Vec<_> = view.unreadable.iter().map(|u| (u.item.as_str(), u.error.as_str())).collect();
    unreadable.sort();
    assert_eq!(
        unreadable.iter().map(|u| u.0).collect::<Vec<_>>(),
        [keys::member("c"), keys::member("garbage"), keys::member("newer")],
        "{unreadable:?}"
    );
    assert!(unreadable[0].1.contains("own name"), "{unreadable:?}");
    assert!(!unreadable[1].1.is_empty());
    assert!(unreadable[2].1.contains(&format!("record format {}", codec::RECORD_FORMAT + 1)), "{unreadable:?}");

    // History and the event log skip theirs too.
    s.append_history(&cluster, &history(1)).await.unwrap();
    h.corrupt(&cluster, &keys::history(2)).await;
    h.put_raw(&cluster, &keys::history(3), for_newer_readers(&history(3))).await;
    s.append_history(&cluster, &history(4)).await.unwrap();
    assert_eq!(s.read_history(&cluster).await.unwrap(), vec![history(1), history(4)]);
    let good = Event::new(EventKind::MemberUp, cluster.as_str(), 1_000, "up").source("agent");
    let newer = Event::new(EventKind::MemberDown, cluster.as_str(), 1_001, "down").source("agent");
    s.append_event(&cluster, &good).await.unwrap();
    h.put_raw(&cluster, &keys::event(newer.time_ms, &newer.id), for_newer_readers(&newer)).await;
    h.corrupt(&cluster, &keys::event(1_002, "garbage")).await;
    assert_eq!(s.read_events(&cluster, 0).await.unwrap(), vec![good]);

    // Writes go on: a member whose item was unreadable may heartbeat again and is read.
    s.put_member(&cluster, &member("newer", 2)).await.unwrap();
    let view = s.read_view(&cluster).await.unwrap();
    assert!(view.members.keys().eq(["a", "b", "newer"]), "{:?}", view.members.keys());
    assert_eq!(view.unreadable.len(), 2, "{:?}", view.unreadable);
}

pub async fn records_for_newer_readers_are_refused_where_they_matter<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("newer-readers");
    let mut record = ClusterRecord::bootstrap("a", DynamicConfig::default());
    record.version = 1;
    h.put_raw(&cluster, keys::CLUSTER, for_newer_readers(&record)).await;
    s.put_member(&cluster, &member("a", 1)).await.unwrap();
    let expect = format!("readers of record format {}", codec::RECORD_FORMAT + 1);
    let refused = |r: Result<String, StoreError>, item: &str| match r {
        Err(StoreError::Malformed { item: got, reason }) => {
            assert_eq!(got, item);
            assert!(reason.contains(&expect) && reason.contains("upgrade"), "a clear error: {reason}");
        }
        other => panic!("expected {item} refused for newer readers, got {other:?}"),
    };
    refused(s.read_cluster(&cluster).await.map(|r| format!("{r:?}")), keys::CLUSTER);
    refused(s.read_view(&cluster).await.map(|v| format!("{v:?}")), keys::CLUSTER);
    // Nothing is decided on it: a compare-and-set over it does not succeed.
    let write = s.write_cluster(&cluster, Some(1), &record).await;
    assert!(write.is_err(), "a write over a record this build cannot read: {write:?}");

    let other = cluster_name("newer-readers-lease");
    h.put_raw(&other, keys::LEADER, for_newer_readers(&lease("a", 3))).await;
    refused(s.read_lease(&other, LeaseName::Leader).await.map(|r| format!("{r:?}")), keys::LEADER);
    refused(s.read_view(&other).await.map(|v| format!("{v:?}")), keys::LEADER);
    let claim = s.acquire_lease(&other, LeaseName::Leader, LeaseClaim::Free, "b", 9, LEASE_MS).await;
    assert!(claim.is_err(), "claiming over a lease this build cannot read: {claim:?}");
}

/// The backends differ here (docs/upgrading.md): etcd removes the record of a holder that
/// stopped renewing once its etcd lease's TTL runs out (it then reads as free, keeping its term);
/// DynamoDB and memory keep the record as written forever, and it is free only to a claimant
/// that observed its `rvn` unchanged for a full lease (a `Takeover`).
pub async fn unrenewed_lease_lapses_only_where_the_engine_expires_it<H: Harness>() {
    const SHORT_MS: u64 = 1_000;
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("lapse");
    let started = std::time::Instant::now();
    let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 4, SHORT_MS).await.unwrap();
    if H::LEASE_EXPIRES_IN_ENGINE {
        let lapsed = loop {
            let lease = s.read_lease(&cluster, LeaseName::Leader).await.unwrap().expect("the record or its term");
            if lease.is_free() {
                break lease;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "an unrenewed lease must lapse in this engine");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(started.elapsed() >= Duration::from_millis(SHORT_MS), "lapsed after {:?}", started.elapsed());
        assert_eq!((lapsed.owner.as_str(), lapsed.term, lapsed.released), ("", 4, false));
        assert!(s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err().is_conflict());
        let b = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "b", 5, SHORT_MS).await.unwrap();
        assert_eq!(b.term, 5);
    } else {
        tokio::time::sleep(Duration::from_millis(3 * SHORT_MS)).await;
        assert_eq!(s.read_lease(&cluster, LeaseName::Leader).await.unwrap(), Some(held.clone()), "the record stays as written");
        let err = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "b", 5, SHORT_MS).await.unwrap_err();
        assert!(err.is_conflict(), "never free by itself: {err}");
        // The holder may still renew: only an observer's own clock ends a lease here.
        let renewed = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap();
        let b = s
            .acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Takeover { observed_rvn: &renewed.rvn }, "b", 5, SHORT_MS)
            .await
            .unwrap();
        assert_eq!((b.owner.as_str(), b.term), ("b", 5));
    }
}

pub async fn invalid_requests_change_nothing<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let cluster = cluster_name("invalid");
    for (owner, term, lease_ms) in [("", 1, LEASE_MS), ("a", 0, LEASE_MS), ("a", 1, 0)] {
        let err = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, owner, term, lease_ms).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    }
    assert_eq!(s.read_lease(&cluster, LeaseName::Leader).await.unwrap(), None);
    let err = s.put_member(&cluster, &member("bad/name", 1)).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let err = s.read_view("bad/cluster").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(s.read_view(&cluster).await.unwrap().members.is_empty());
}

pub async fn clusters_are_isolated<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let (a, b) = (cluster_name("iso-a"), cluster_name("iso-b"));
    s.acquire_lease(&a, LeaseName::Leader, LeaseClaim::Free, "x", 1, LEASE_MS).await.unwrap();
    s.put_member(&a, &member("x", 1)).await.unwrap();
    s.append_history(&a, &history(1)).await.unwrap();
    let view = s.read_view(&b).await.unwrap();
    assert_eq!(view, crate::ClusterView::default());
    assert!(s.read_history(&b).await.unwrap().is_empty());
    s.acquire_lease(&b, LeaseName::Leader, LeaseClaim::Free, "y", 1, LEASE_MS).await.unwrap();
}

pub async fn registry_lists_registered_clusters_apart_from_their_items<H: Harness>() {
    let h = H::start(false).await;
    let s = h.client().await;
    let (a, b) = (cluster_name("reg-a"), cluster_name("reg-b"));
    s.write_cluster(&a, None, &ClusterRecord::bootstrap("x", DynamicConfig::default())).await.unwrap();
    let view_before = s.read_view(&a).await.unwrap();
    for c in [&a, &b, &a] {
        s.register_cluster(c, 7).await.unwrap();
    }
    // Other checks share the engine: look only at this check's clusters.
    let listed = |all: Vec<String>| all.into_iter().filter(|c| *c == a || *c == b).collect::<Vec<_>>();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    let all = s.list_clusters().await.unwrap();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted, each once: {all:?}");
    assert_eq!(listed(all), both);
    assert!(s.is_registered(&a).await.unwrap() && !s.is_registered(&cluster_name("reg-none")).await.unwrap());
    // The registration is not one of the cluster's items for any reader.
    assert_eq!(s.read_view(&a).await.unwrap(), view_before);
    assert!(s.read_history(&a).await.unwrap().is_empty() && s.read_events(&a, 0).await.unwrap().is_empty());
    s.unregister_cluster(&b).await.unwrap();
    s.unregister_cluster(&b).await.unwrap();
    assert_eq!(listed(s.list_clusters().await.unwrap()), vec![a.clone()]);
    assert!(!s.is_registered(&b).await.unwrap());
    assert!(s.read_cluster(&a).await.unwrap().is_some(), "unregistering leaves the cluster alone");
    let err = s.register_cluster("bad/name", 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}
