//! A [`Store`] that counts the calls a coordinator makes (the fleet benchmark's reads and
//! writes) and notes when each cluster's coordinator lock was first handed back (the end of
//! that cluster's evaluation).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use async_trait::async_trait;
use pgdaemon_core::events::Event;
use pgdaemon_core::{
    ClusterParameters, ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseClaim, LeaseName, MemberState, MemberStatus,
    Store, StoreError,
};
use serde::Serialize;

/// Calls by kind since the last reset.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
}

#[derive(Default)]
struct Inner {
    reads: AtomicU64,
    writes: AtomicU64,
    releases: Mutex<BTreeMap<String, Instant>>,
}

#[derive(Clone)]
pub struct CountingStore {
    store: Arc<dyn Store>,
    inner: Arc<Inner>,
}

impl CountingStore {
    pub fn new(store: Arc<dyn Store>) -> Self {
        CountingStore { store, inner: Arc::default() }
    }

    pub fn reset(&self) {
        self.inner.reads.store(0, Ordering::Relaxed);
        self.inner.writes.store(0, Ordering::Relaxed);
        self.inner.releases.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    pub fn counts(&self) -> Counts {
        Counts { reads: self.inner.reads.load(Ordering::Relaxed), writes: self.inner.writes.load(Ordering::Relaxed) }
    }

    /// Cluster -> when its coordinator lock was first released since the last reset.
    pub fn coordinator_releases(&self) -> BTreeMap<String, Instant> {
        self.inner.releases.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn read(&self) {
        self.inner.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn write(&self) {
        self.inner.writes.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for CountingStore {
    fn backend(&self) -> &'static str {
        self.store.backend()
    }
    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        self.read();
        self.store.read_view(cluster).await
    }
    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        self.read();
        self.store.read_lease(cluster, name).await
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
        self.write();
        self.store.acquire_lease(cluster, name, claim, owner, term, lease_ms).await
    }
    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        self.write();
        self.store.renew_lease(cluster, name, held).await
    }
    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        self.write();
        let result = self.store.release_lease(cluster, name, held).await;
        if name == LeaseName::Coordinator {
            self.inner
                .releases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(cluster.to_string())
                .or_insert_with(Instant::now);
        }
        result
    }
    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        self.read();
        self.store.read_cluster(cluster).await
    }
    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        self.write();
        self.store.write_cluster(cluster, expected_version, record).await
    }
    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        self.write();
        self.store.put_member(cluster, member).await
    }
    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        self.write();
        self.store.remove_member(cluster, name).await
    }
    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError> {
        self.write();
        self.store.write_parameters(cluster, expected_version, parameters).await
    }
    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &pgdaemon_core::BackupConfig,
    ) -> Result<pgdaemon_core::BackupConfig, StoreError> {
        self.write();
        self.store.write_backup_config(cluster, expected_version, config).await
    }
    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError> {
        self.write();
        self.store.put_member_state(cluster, state).await
    }
    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        self.write();
        self.store.append_history(cluster, entry).await
    }
    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        self.read();
        self.store.read_history(cluster).await
    }
    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError> {
        self.write();
        self.store.append_event(cluster, event).await
    }
    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        self.read();
        self.store.read_events(cluster, since_ms).await
    }
    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError> {
        self.write();
        self.store.register_cluster(cluster, registered_ms).await
    }
    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        self.write();
        self.store.unregister_cluster(cluster).await
    }
    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError> {
        self.read();
        self.store.is_registered(cluster).await
    }
    async fn list_clusters(&self) -> Result<Vec<String>, StoreError> {
        self.read();
        self.store.list_clusters().await
    }
}
