//! In-process [`Store`] for tests and the simulation. Records are kept encoded, exactly like the
//! networked backends, so decoding and malformed-record handling are exercised too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use crate::backup::BackupConfig;
use crate::codec::{self, check_acquire, check_cluster, check_held, decode, encode};
use crate::events::Event;
use crate::keys;
use crate::model::{ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseName, MemberStatus, Registration};
use crate::params::{ClusterParameters, MemberState};
use crate::store::{LeaseClaim, Store, StoreError};

/// Every stored item by (cluster, item key), as its JSON text.
type Items = BTreeMap<(String, String), String>;

#[derive(Debug, Default)]
pub struct MemoryStore {
    /// (cluster, item) -> encoded record.
    items: Mutex<Items>,
    unavailable: AtomicBool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates an outage: every call fails with `Unavailable` until set back.
    pub fn set_available(&self, available: bool) {
        self.unavailable.store(!available, Ordering::SeqCst);
    }

    /// Writes raw text as an item (tests of malformed records).
    pub fn put_raw(&self, cluster: &str, item: &str, text: &str) {
        self.items.lock().unwrap().insert((cluster.into(), item.into()), text.into());
    }

    /// The raw text of an item, as stored (tests and the simulation's bad-record fault).
    pub fn get_raw(&self, cluster: &str, item: &str) -> Option<String> {
        self.items.lock().unwrap().get(&(cluster.to_string(), item.to_string())).cloned()
    }

    /// Compare-and-set of a versioned item (the parameters, the backup configuration): `make`
    /// builds the stored value from its new version.
    fn write_versioned<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        cluster: &str,
        item: &str,
        expected_version: Option<u64>,
        version_of: impl Fn(&T) -> u64,
        make: impl FnOnce(u64) -> T,
    ) -> Result<T, StoreError> {
        check_cluster(cluster)?;
        let mut items = self.lock()?;
        let stored_version = get::<T>(&items, cluster, item)?.as_ref().map(version_of);
        codec::check_version(item, expected_version, stored_version)?;
        let stored = make(stored_version.unwrap_or(0) + 1);
        items.insert((cluster.into(), item.into()), encode(item, &stored)?);
        Ok(stored)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Items>, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store is switched off".into()));
        }
        Ok(self.items.lock().unwrap())
    }
}

fn get<T: serde::de::DeserializeOwned>(items: &Items, cluster: &str, item: &str) -> Result<Option<T>, StoreError> {
    items.get(&(cluster.to_string(), item.to_string())).map(|t| decode(item, t.as_bytes())).transpose()
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        check_cluster(cluster)?;
        let items = self.lock()?;
        let mut view = ClusterView {
            cluster: get(&items, cluster, keys::CLUSTER)?,
            leader: get(&items, cluster, keys::LEADER)?,
            coordinator: get(&items, cluster, keys::COORDINATOR_LOCK)?,
            ..ClusterView::default()
        };
        for ((c, item), text) in items.range((cluster.to_string(), keys::MEMBER_PREFIX.to_string())..) {
            if c != cluster || !item.starts_with(keys::MEMBER_PREFIX) {
                break;
            }
            // An unreadable member is skipped and reported, never failing the view (S6).
            match codec::decode_member(item, text.as_bytes()) {
                Ok(member) => {
                    view.members.insert(member.name.clone(), member);
                }
                Err(e) => codec::skip_unreadable(&mut view.unreadable, cluster, e),
            }
        }
        for item in [keys::PARAMETERS, keys::BACKUP] {
            if let Some(text) = items.get(&(cluster.to_string(), item.to_string())) {
                codec::read_optional_item(&mut view, cluster, item, || codec::parse(item, text.as_bytes()));
            }
        }
        for ((c, item), text) in items.range((cluster.to_string(), keys::STATE_PREFIX.to_string())..) {
            if c != cluster || !item.starts_with(keys::STATE_PREFIX) {
                break;
            }
            codec::read_optional_item(&mut view, cluster, item, || codec::parse(item, text.as_bytes()));
        }
        Ok(view)
    }

    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        check_cluster(cluster)?;
        let items = self.lock()?;
        get(&items, cluster, name.item_key())
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
        codec::validate_acquire(cluster, owner, term, lease_ms)?;
        let mut items = self.lock()?;
        let item = name.item_key();
        let current: Option<LeaderLease> = get(&items, cluster, item)?;
        check_acquire(current.as_ref(), claim, term).map_err(|d| StoreError::conflict(item, d))?;
        let lease = LeaderLease { owner: owner.into(), term, rvn: codec::new_rvn(), lease_ms, released: false };
        items.insert((cluster.into(), item.into()), encode(item, &lease)?);
        Ok(lease)
    }

    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        check_cluster(cluster)?;
        let mut items = self.lock()?;
        let item = name.item_key();
        let current: Option<LeaderLease> = get(&items, cluster, item)?;
        check_held(current.as_ref(), held).map_err(|d| StoreError::conflict(item, d))?;
        let lease = LeaderLease { rvn: codec::new_rvn(), ..current.expect("checked") };
        items.insert((cluster.into(), item.into()), encode(item, &lease)?);
        Ok(lease)
    }

    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let mut items = self.lock()?;
        let item = name.item_key();
        let current: Option<LeaderLease> = get(&items, cluster, item)?;
        check_held(current.as_ref(), held).map_err(|d| StoreError::conflict(item, d))?;
        let lease = LeaderLease { rvn: codec::new_rvn(), released: true, ..current.expect("checked") };
        items.insert((cluster.into(), item.into()), encode(item, &lease)?);
        Ok(())
    }

    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        check_cluster(cluster)?;
        let items = self.lock()?;
        get(&items, cluster, keys::CLUSTER)
    }

    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        check_cluster(cluster)?;
        let mut items = self.lock()?;
        let current: Option<ClusterRecord> = get(&items, cluster, keys::CLUSTER)?;
        let stored_version = current.as_ref().map(|c| c.version);
        codec::check_version(keys::CLUSTER, expected_version, stored_version)?;
        let stored = ClusterRecord { version: stored_version.unwrap_or(0) + 1, ..record.clone() };
        items.insert((cluster.into(), keys::CLUSTER.into()), encode(keys::CLUSTER, &stored)?);
        Ok(stored)
    }

    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&member.name).map_err(StoreError::Invalid)?;
        let item = keys::member(&member.name);
        let text = encode(&item, member)?;
        self.lock()?.insert((cluster.into(), item), text);
        Ok(())
    }

    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let mut items = self.lock()?;
        items.remove(&(cluster.to_string(), keys::member(name)));
        items.remove(&(cluster.to_string(), keys::state(name)));
        Ok(())
    }

    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError> {
        self.write_versioned(
            cluster,
            keys::PARAMETERS,
            expected_version,
            |p: &ClusterParameters| p.version,
            |version| ClusterParameters { version, ..parameters.clone() },
        )
    }

    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &BackupConfig,
    ) -> Result<BackupConfig, StoreError> {
        self.write_versioned(
            cluster,
            keys::BACKUP,
            expected_version,
            |b: &BackupConfig| b.version,
            |version| BackupConfig { version, ..config.clone() },
        )
    }

    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&state.name).map_err(StoreError::Invalid)?;
        let item = keys::state(&state.name);
        let text = encode(&item, state)?;
        self.lock()?.insert((cluster.into(), item), text);
        Ok(())
    }

    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let item = keys::history(entry.term);
        let text = encode(&item, entry)?;
        let mut items = self.lock()?;
        let key = (cluster.to_string(), item.clone());
        if items.contains_key(&key) {
            return Err(StoreError::conflict(item, "a history record for this term exists"));
        }
        items.insert(key, text);
        Ok(())
    }

    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        check_cluster(cluster)?;
        let items = self.lock()?;
        let mut out = Vec::new();
        for ((c, item), text) in items.range((cluster.to_string(), keys::HISTORY_PREFIX.to_string())..) {
            if c != cluster || !item.starts_with(keys::HISTORY_PREFIX) {
                break;
            }
            match decode(item, text.as_bytes()) {
                Ok(entry) => out.push(entry),
                Err(e) => codec::warn_unreadable(cluster, &e),
            }
        }
        Ok(out)
    }

    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError> {
        let item = codec::event_item(cluster, event)?;
        let text = encode(&item, event)?;
        // Already logged (a retried append): keep the first copy.
        self.lock()?.entry((cluster.to_string(), item)).or_insert(text);
        Ok(())
    }

    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        check_cluster(cluster)?;
        let items = self.lock()?;
        let mut out = Vec::new();
        for ((c, item), text) in items.range((cluster.to_string(), keys::event(since_ms, ""))..) {
            if c != cluster || !item.starts_with(keys::EVENT_PREFIX) {
                break;
            }
            match decode(item, text.as_bytes()) {
                Ok(event) => out.push(event),
                Err(e) => codec::warn_unreadable(cluster, &e),
            }
        }
        Ok(out)
    }

    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let text = encode(keys::REGISTRATION, &Registration { registered_ms })?;
        self.lock()?.entry((cluster.to_string(), keys::REGISTRATION.to_string())).or_insert(text);
        Ok(())
    }

    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        self.lock()?.remove(&(cluster.to_string(), keys::REGISTRATION.to_string()));
        Ok(())
    }

    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError> {
        check_cluster(cluster)?;
        Ok(self.lock()?.contains_key(&(cluster.to_string(), keys::REGISTRATION.to_string())))
    }

    async fn list_clusters(&self) -> Result<Vec<String>, StoreError> {
        // Keys are sorted by cluster first, so the names come out sorted.
        Ok(self.lock()?.keys().filter(|(_, item)| item == keys::REGISTRATION).map(|(c, _)| c.clone()).collect())
    }
}
