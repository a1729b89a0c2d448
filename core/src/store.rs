//! The state store ("DCS") contract. Every backend (memory, DynamoDB, etcd) implements [`Store`]
//! and must pass the one conformance suite in [`crate::conformance`].

use std::time::Duration;

use async_trait::async_trait;

use crate::backup::BackupConfig;
use crate::events::{Event, EventSink, SinkError};
use crate::model::{ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseName, MemberStatus};
use crate::params::{ClusterParameters, MemberState};

/// Why a store call did not succeed. Callers must treat the three kinds differently: a
/// [`StoreError::Conflict`] is an answer (someone else won; re-read and decide again), an
/// [`StoreError::Unavailable`] is the absence of an answer (the write may or may not have happened;
/// a lease holder must count it as a failed renewal), and [`StoreError::Malformed`] means a record
/// cannot be trusted, so nothing may be decided from it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A condition did not hold: another writer got there first or the record changed since it
    /// was read. Patroni's `False` from a DCS write.
    #[error("lost the race on {item}: {detail}")]
    Conflict { item: String, detail: String },
    /// The engine did not answer (down, unreachable, throttled, timed out). Patroni's `DCSError`.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("malformed record {item:?}: {reason}")]
    Malformed { item: String, reason: String },
    /// The request itself was invalid (bad name, impossible argument); nothing was written.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl StoreError {
    pub fn conflict(item: impl Into<String>, detail: impl Into<String>) -> Self {
        StoreError::Conflict { item: item.into(), detail: detail.into() }
    }

    pub fn malformed(item: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        StoreError::Malformed { item: item.into(), reason: reason.to_string() }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// How a lease is being claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseClaim<'a> {
    /// Only if no lease record exists or it was released.
    Free,
    /// Only if the record still carries this `rvn`: the caller has observed it unchanged for a
    /// full lease duration on its own monotonic clock (see [`crate::lease::LeaseObserver`]).
    Takeover { observed_rvn: &'a str },
}

/// The coordination state of many clusters, each in its own partition/prefix.
///
/// Obligations common to every method:
/// - Reads are strongly consistent: they reflect every write that completed before they began.
/// - A method returns `Ok` only when the write is durable in the engine; on `Unavailable` the
///   write may or may not have happened and the caller must assume either.
/// - Conditional writes are atomic compare-and-set in the engine (DynamoDB condition
///   expressions, etcd transactions), never a read followed by an unconditional write.
/// - A record that cannot be decoded (garbage, or one declaring a minimum reader format newer
///   than this build's, see [`crate::codec::decode`]) is never a default value and never a
///   panic: a lease or the cluster record yields [`StoreError::Malformed`] naming the item; a
///   member, history or event item is skipped and reported (in [`ClusterView::unreadable`],
///   or logged), so one bad item never blocks a failover (S6, docs/upgrading.md).
/// - Unknown fields of a record are ignored (records are forward compatible).
#[async_trait]
pub trait Store: Send + Sync {
    /// The backend's name for logs (`memory`, `etcd`, `dynamodb`).
    fn backend(&self) -> &'static str;

    /// One consistent snapshot of a cluster: its record, both leases, every member heartbeat, the
    /// cluster-wide parameters and the member states. History is not included. A malformed
    /// cluster record or lease fails the whole read; an unreadable member item (including a
    /// record whose `name` is not its key's) is left out of `members` and listed in
    /// `unreadable`; so is an unreadable parameters or state item (`parameters` stays `None`):
    /// neither is needed to keep or change a primary.
    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError>;

    /// Reads one lease record (strongly consistent).
    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError>;

    /// Compare-and-set acquisition. Succeeds only if (a) the claim's condition holds (`Free`: no
    /// record or a released one; `Takeover`: the record's `rvn` equals the observed one) and (b)
    /// `term` is strictly greater than the stored record's term, so terms never repeat. Writes a
    /// fresh `rvn`. A failed condition is `Conflict`.
    async fn acquire_lease(
        &self,
        cluster: &str,
        name: LeaseName,
        claim: LeaseClaim<'_>,
        owner: &str,
        term: u64,
        lease_ms: u64,
    ) -> Result<LeaderLease, StoreError>;

    /// Renews a held lease: succeeds only if the record still has `held.rvn` and `held.owner` and
    /// is not released; writes a fresh `rvn` (same term, owner and duration). Otherwise `Conflict`.
    /// Callers take their monotonic timestamp *before* calling (lock-client rule).
    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError>;

    /// Releases a held lease under the same condition as renewal, keeping its term so the next
    /// acquisition still increases it. Releasing an already released lease is `Conflict`.
    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError>;

    /// Reads the cluster record (strongly consistent).
    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError>;

    /// Compare-and-set of the cluster record. `expected_version: None` creates it only if absent;
    /// `Some(v)` replaces it only if its stored version is `v`. The stored version becomes the
    /// old one plus one (1 on creation), whatever `record.version` says; the stored record is
    /// returned. A failed condition is `Conflict`.
    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError>;

    /// Upserts a member's heartbeat. Unconditional: each member writes only its own record.
    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError>;

    /// Deletes a member's heartbeat and state (a member that left the cluster). Deleting nothing
    /// is `Ok`.
    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError>;

    /// Compare-and-set of the cluster-wide parameters, with the cluster record's rules:
    /// `expected_version: None` creates the item only if absent, `Some(v)` replaces it only if its
    /// stored version is `v`; the stored version becomes the old one + 1 (1 on creation) and the
    /// stored value is returned. `Conflict` otherwise, with nothing written.
    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError>;

    /// Compare-and-set of the backup configuration, with [`Store::write_parameters`]' rules.
    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &BackupConfig,
    ) -> Result<BackupConfig, StoreError>;

    /// Upserts a member's state. Unconditional: each member writes only its own.
    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError>;

    /// Appends the history record of a promotion. Conditional on no record existing for
    /// `entry.term` (`Conflict` otherwise), so a resumed coordinator never writes two.
    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError>;

    /// All readable history records, ordered by term (unreadable ones are skipped and logged).
    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Appends an event to the cluster's event log ([`crate::keys::event`], kept apart from the
    /// cluster's items so `read_view` never reads it). Idempotent by `(time_ms, id)`: appending
    /// an event that is already logged is `Ok` and stores nothing (a retry after `Unavailable`
    /// never logs it twice). An event whose id cannot be a key, or of another cluster, is
    /// `Invalid` and nothing is written.
    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError>;

    /// The logged events with `time_ms >= since_ms`, ordered by time then id (unreadable ones are
    /// skipped and logged).
    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError>;

    /// Adds `cluster` to the fleet registry unless it is there: idempotent, the first
    /// `registered_ms` is kept. The entry lives with the cluster's own items
    /// ([`crate::keys::REGISTRATION`]), so whoever may write a cluster may register it and
    /// nothing else. An invalid name is `Invalid` and nothing is written.
    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError>;

    /// Removes `cluster` from the registry; the cluster's other items are left alone. Removing
    /// what is not registered is `Ok`.
    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError>;

    /// Whether `cluster` is registered: a strongly consistent read of its one entry (the way to
    /// ask about one cluster in a large fleet).
    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError>;

    /// The names of every registered cluster, sorted. Unlike every other read this one may lag a
    /// registration briefly (DynamoDB lists it from a secondary index, typically within a
    /// second); a coordinator only uses it to find clusters, never to decide about one.
    async fn list_clusters(&self) -> Result<Vec<String>, StoreError>;
}

#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        (**self).read_view(cluster).await
    }
    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        (**self).read_lease(cluster, name).await
    }
    async fn acquire_lease(
        &self,
        cluster: &str,
        name: LeaseName,
        claim: LeaseClaim<'_>,
        owner: &str,
        term: u64,
        lease_ms: u64,
    ) -> Result<LeaderLease, StoreError> {
        (**self).acquire_lease(cluster, name, claim, owner, term, lease_ms).await
    }
    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        (**self).renew_lease(cluster, name, held).await
    }
    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        (**self).release_lease(cluster, name, held).await
    }
    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        (**self).read_cluster(cluster).await
    }
    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        (**self).write_cluster(cluster, expected_version, record).await
    }
    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        (**self).put_member(cluster, member).await
    }
    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        (**self).remove_member(cluster, name).await
    }
    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError> {
        (**self).write_parameters(cluster, expected_version, parameters).await
    }
    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &BackupConfig,
    ) -> Result<BackupConfig, StoreError> {
        (**self).write_backup_config(cluster, expected_version, config).await
    }
    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError> {
        (**self).put_member_state(cluster, state).await
    }
    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        (**self).append_history(cluster, entry).await
    }
    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        (**self).read_history(cluster).await
    }
    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError> {
        (**self).append_event(cluster, event).await
    }
    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        (**self).read_events(cluster, since_ms).await
    }
    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError> {
        (**self).register_cluster(cluster, registered_ms).await
    }
    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        (**self).unregister_cluster(cluster).await
    }
    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError> {
        (**self).is_registered(cluster).await
    }
    async fn list_clusters(&self) -> Result<Vec<String>, StoreError> {
        (**self).list_clusters().await
    }
}

/// The store's event log as a sink ([`Store::append_event`]). Logged events get a TTL of
/// `retention` (DynamoDB deletes them after it; other backends keep them).
pub struct StoreSink<S> {
    store: S,
    retention: Duration,
}

impl<S: Store> StoreSink<S> {
    pub fn new(store: S, retention: Duration) -> Self {
        StoreSink { store, retention }
    }
}

#[async_trait]
impl<S: Store> EventSink for StoreSink<S> {
    fn name(&self) -> &str {
        "store"
    }

    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let mut e = event.clone();
        if e.expire_at.is_none() {
            e.expire_at = Some(e.time_ms / 1000 + self.retention.as_secs());
        }
        match self.store.append_event(&event.cluster, &e).await {
            Ok(()) => Ok(()),
            Err(err @ StoreError::Unavailable(_)) => Err(SinkError::retryable(err.to_string())),
            Err(err) => Err(SinkError::permanent(err.to_string())),
        }
    }
}
