//! etcd backend: items are JSON documents ([`pgdaemon_core::codec`]) under
//! `<prefix>/<cluster>/<item>`; every conditional write is one transaction conditioned on the
//! revisions read just before (read, check with the shared rules, then a txn that succeeds only
//! if nothing changed in between - never an unconditional write).
//!
//! Leases: the `leader` and `lock#coordinator` keys are attached to an etcd lease whose TTL
//! (whole seconds, rounded up) is at least the record's `lease_ms`, kept alive on every renewal.
//! A holder that stops renewing therefore disappears from the store on its own. Because a key
//! that expired carries no term any more, each lease key has a companion `term#<item>` key (no
//! etcd lease) written in the same transaction with the same record: an expired lease reads as
//! that record without an owner (free), and the next acquisition must still raise its term.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use pgdaemon_core::codec::{self, check_acquire, check_cluster, decode, encode};
use pgdaemon_core::events::Event;
use pgdaemon_core::{
    keys, ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseClaim, LeaseName, MemberStatus, Store, StoreError,
};

/// Per-request gRPC deadline. A few seconds: a lease holder renews once per agent loop (every
/// probe interval, 1 s by default) and must learn of an outage well within its lease.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on establishing a connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Outer bound on one store call (a call may issue several requests); also covers requests that
/// wait in the client's balancer for an endpoint that never comes back.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Revoking a lease after a lost race or a release is cleanup only: it gets a short bound.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);

/// The etcd [`Store`]. Cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
}

/// The prefix of the key that keeps a lease's last record when its etcd lease expires.
const TERM_PREFIX: &str = "term#";

fn term_item(item: &str) -> String {
    format!("{TERM_PREFIX}{item}")
}

/// One consistent read of a lease key and its term companion.
struct LeaseSnapshot {
    /// The live record, if its key exists.
    record: Option<LeaderLease>,
    record_rev: i64,
    /// The etcd lease the record is attached to (0: none).
    etcd_lease: i64,
    /// The last record written, kept after the live one expired.
    last: Option<LeaderLease>,
    last_rev: i64,
}

impl LeaseSnapshot {
    /// What the store reports: the live record, or the expired one as ownerless (free) with its
    /// term, so that terms keep increasing.
    fn current(&self) -> Option<LeaderLease> {
        self.record.clone().or_else(|| self.last.clone().map(|l| LeaderLease { owner: String::new(), ..l }))
    }
}

impl EtcdStore {
    /// A client of the etcd cluster at `endpoints` (e.g. `http://127.0.0.1:2379`) keeping items
    /// under `prefix`. Connects lazily: a stopped etcd shows up as `Unavailable` on the calls.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("at least one etcd endpoint is needed".into()));
        }
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(StoreError::Invalid(format!("etcd prefix {prefix:?} must start with '/' and not end with it")));
        }
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = tokio::time::timeout(CALL_TIMEOUT, Client::connect(endpoints, Some(options)))
            .await
            .map_err(|_| StoreError::Unavailable("etcd: connecting timed out".into()))?
            .map_err(|e| match e {
                etcd_client::Error::InvalidUri(_) | etcd_client::Error::InvalidArgs(_) => {
                    StoreError::Invalid(format!("etcd endpoints {endpoints:?}: {e}"))
                }
                e => StoreError::Unavailable(format!("etcd: connect: {e}")),
            })?;
        Ok(EtcdStore { client, prefix: prefix.to_string() })
    }

    fn key(&self, cluster: &str, item: &str) -> String {
        format!("{}/{cluster}/{item}", self.prefix)
    }

    fn cluster_prefix(&self, cluster: &str) -> String {
        format!("{}/{cluster}/", self.prefix)
    }

    /// Runs one etcd request under [`CALL_TIMEOUT`], mapping transport failures to `Unavailable`.
    async fn call<T, F>(&self, what: &str, request: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        match tokio::time::timeout(CALL_TIMEOUT, request).await {
            Err(_) => Err(StoreError::Unavailable(format!("etcd {what}: no answer within {CALL_TIMEOUT:?}"))),
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(map_error(what, e)),
        }
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        let mut client = self.client.clone();
        self.call(what, client.txn(txn)).await
    }

    async fn get_one(&self, cluster: &str, item: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut client = self.client.clone();
        let mut resp = self.call(&format!("get {item}"), client.get(self.key(cluster, item), None)).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    async fn lease_snapshot(&self, cluster: &str, item: &str) -> Result<LeaseSnapshot, StoreError> {
        let (key, last_key) = (self.key(cluster, item), self.key(cluster, &term_item(item)));
        let txn = Txn::new().and_then([TxnOp::get(key, None), TxnOp::get(last_key, None)]);
        let resp = self.txn(&format!("read {item}"), txn).await?;
        let mut kvs = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        });
        let (record_kv, last_kv) = (kvs.next().flatten(), kvs.next().flatten());
        let record = record_kv.as_ref().map(|kv| decode::<LeaderLease>(item, kv.value())).transpose()?;
        let last = last_kv.as_ref().map(|kv| decode::<LeaderLease>(&term_item(item), kv.value())).transpose()?;
        Ok(LeaseSnapshot {
            record,
            record_rev: record_kv.as_ref().map_or(0, KeyValue::mod_revision),
            etcd_lease: record_kv.as_ref().map_or(0, KeyValue::lease),
            last,
            last_rev: last_kv.as_ref().map_or(0, KeyValue::mod_revision),
        })
    }

    /// Grants an etcd lease that outlives `lease_ms` (TTL in whole seconds, rounded up).
    async fn grant(&self, lease_ms: u64) -> Result<i64, StoreError> {
        let ttl = i64::try_from(lease_ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let mut client = self.client.clone();
        Ok(self.call("lease grant", client.lease_grant(ttl, None)).await?.id())
    }

    /// Best effort: an etcd lease left behind expires on its own, so failures are only logged.
    async fn revoke(&self, id: i64) {
        if id == 0 {
            return;
        }
        let mut client = self.client.clone();
        match tokio::time::timeout(CLEANUP_TIMEOUT, client.lease_revoke(id)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(lease = id, error = %e, "etcd lease revoke failed (it will expire)"),
            Err(_) => tracing::debug!(lease = id, "etcd lease revoke timed out (it will expire)"),
        }
    }

    /// Writes `lease` as the live record (attached to `etcd_lease`, or to none) and as the term
    /// companion, only if neither changed since `snap` was read.
    async fn put_lease(
        &self,
        cluster: &str,
        item: &str,
        snap: &LeaseSnapshot,
        lease: &LeaderLease,
        etcd_lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (key, last_key) = (self.key(cluster, item), self.key(cluster, &term_item(item)));
        let text = encode(item, lease)?;
        let options = etcd_lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, snap.record_rev),
                Compare::mod_revision(last_key.clone(), CompareOp::Equal, snap.last_rev),
            ])
            .and_then([TxnOp::put(key, text.clone(), options), TxnOp::put(last_key, text, None)]);
        Ok(self.txn(&format!("write {item}"), txn).await?.succeeded())
    }

    /// Checks that `held` still is the live record, as renewal and release require.
    fn check_held(snap: &LeaseSnapshot, item: &str, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        if snap.record.is_none() && snap.last.as_ref().is_some_and(|l| !l.released) {
            return Err(StoreError::conflict(item, "the lease expired (its etcd lease ran out)"));
        }
        codec::check_held(snap.record.as_ref(), held).map_err(|d| StoreError::conflict(item, d))?;
        Ok(snap.record.clone().expect("checked by check_held"))
    }
}

/// Transport and server failures are `Unavailable`: the write may or may not have happened.
/// Decodes the records of a prefix or range read (history, events), each named by its key below
/// `base` (the cluster's prefix). An unreadable one is skipped and logged.
fn decode_items<T: serde::de::DeserializeOwned>(cluster: &str, base: &str, kvs: Vec<KeyValue>) -> Vec<T> {
    kvs.iter()
        .filter_map(|kv| {
            let item = String::from_utf8_lossy(&kv.key()[base.len()..]).into_owned();
            decode(&item, kv.value()).map_err(|e| codec::warn_unreadable(cluster, &e)).ok()
        })
        .collect()
}

fn map_error(what: &str, e: etcd_client::Error) -> StoreError {
    match &e {
        // gRPC INVALID_ARGUMENT (3): etcd refused the request itself (e.g. too large).
        etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 3 => StoreError::Invalid(format!("etcd {what}: {}", s.message())),
        _ => StoreError::Unavailable(format!("etcd {what}: {e}")),
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        check_cluster(cluster)?;
        let base = self.cluster_prefix(cluster);
        // One range read is one revision: a consistent snapshot of the whole cluster.
        let mut client = self.client.clone();
        // Up to `VIEW_END`: everything but the event log, which only grows.
        let end = format!("{base}{}", keys::VIEW_END);
        let mut resp = self.call("read view", client.get(base.clone(), Some(GetOptions::new().with_range(end)))).await?;
        let mut view = ClusterView::default();
        let (mut last_leader, mut last_coordinator) = (None, None);
        let (leader_term, coordinator_term) = (term_item(keys::LEADER), term_item(keys::COORDINATOR_LOCK));
        for kv in resp.take_kvs() {
            let Some(item) = kv.key().strip_prefix(base.as_bytes()).and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            match item {
                keys::CLUSTER => view.cluster = Some(decode(item, kv.value())?),
                keys::LEADER => view.leader = Some(decode(item, kv.value())?),
                keys::COORDINATOR_LOCK => view.coordinator = Some(decode(item, kv.value())?),
                i if i == leader_term => last_leader = Some(decode::<LeaderLease>(item, kv.value())?),
                i if i == coordinator_term => last_coordinator = Some(decode::<LeaderLease>(item, kv.value())?),
                // An unreadable member is skipped and reported, never failing the view (S6).
                i if i.starts_with(keys::MEMBER_PREFIX) => match codec::decode_member(item, kv.value()) {
                    Ok(member) => {
                        view.members.insert(member.name.clone(), member);
                    }
                    Err(e) => codec::skip_unreadable(&mut view.unreadable, cluster, e),
                },
                // History is not part of the view; unknown items are left for newer versions.
                _ => {}
            }
        }
        let ownerless = |l: LeaderLease| LeaderLease { owner: String::new(), ..l };
        view.leader = view.leader.or(last_leader.map(ownerless));
        view.coordinator = view.coordinator.or(last_coordinator.map(ownerless));
        Ok(view)
    }

    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        check_cluster(cluster)?;
        Ok(self.lease_snapshot(cluster, name.item_key()).await?.current())
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
        let item = name.item_key();
        let snap = self.lease_snapshot(cluster, item).await?;
        check_acquire(snap.current().as_ref(), claim, term).map_err(|d| StoreError::conflict(item, d))?;
        let lease = LeaderLease { owner: owner.into(), term, rvn: codec::new_rvn(), lease_ms, released: false };
        let id = self.grant(lease_ms).await?;
        match self.put_lease(cluster, item, &snap, &lease, Some(id)).await {
            Ok(true) => {
                // A taken-over record's etcd lease no longer holds any key.
                self.revoke(snap.etcd_lease).await;
                Ok(lease)
            }
            Ok(false) => {
                self.revoke(id).await;
                Err(StoreError::conflict(item, "changed by another writer since it was read"))
            }
            Err(e) => Err(e),
        }
    }

    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        check_cluster(cluster)?;
        let item = name.item_key();
        let snap = self.lease_snapshot(cluster, item).await?;
        let current = Self::check_held(&snap, item, held)?;
        // Keep-alive first: the holder times its validity from before this call, so the etcd
        // lease must be extended no earlier than that instant and before the record changes.
        let id = if snap.etcd_lease == 0 {
            self.grant(current.lease_ms).await?
        } else {
            let mut client = self.client.clone();
            match tokio::time::timeout(CALL_TIMEOUT, client.lease_keep_alive(snap.etcd_lease)).await {
                Err(_) => return Err(StoreError::Unavailable(format!("etcd keep-alive {item}: no answer"))),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m.contains("not found") => {
                    return Err(StoreError::conflict(item, "the lease expired (its etcd lease ran out)"));
                }
                Ok(Err(e)) => return Err(map_error(&format!("keep-alive {item}"), e)),
                Ok(Ok(_)) => snap.etcd_lease,
            }
        };
        let lease = LeaderLease { rvn: codec::new_rvn(), ..current };
        if self.put_lease(cluster, item, &snap, &lease, Some(id)).await? {
            Ok(lease)
        } else {
            Err(StoreError::conflict(item, "changed by another writer since it was read"))
        }
    }

    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let item = name.item_key();
        let snap = self.lease_snapshot(cluster, item).await?;
        let current = Self::check_held(&snap, item, held)?;
        // A released record is kept (no etcd lease) so that its term stays visible.
        let lease = LeaderLease { rvn: codec::new_rvn(), released: true, ..current };
        if !self.put_lease(cluster, item, &snap, &lease, None).await? {
            return Err(StoreError::conflict(item, "changed by another writer since it was read"));
        }
        self.revoke(snap.etcd_lease).await;
        Ok(())
    }

    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        check_cluster(cluster)?;
        self.get_one(cluster, keys::CLUSTER).await?.map(|kv| decode(keys::CLUSTER, kv.value())).transpose()
    }

    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        check_cluster(cluster)?;
        let item = keys::CLUSTER;
        let kv = self.get_one(cluster, item).await?;
        let current: Option<ClusterRecord> = kv.as_ref().map(|kv| decode(item, kv.value())).transpose()?;
        let stored_version = current.as_ref().map(|c| c.version);
        if stored_version != expected_version {
            return Err(StoreError::conflict(item, format!("expected version {expected_version:?}, stored {stored_version:?}")));
        }
        let stored = ClusterRecord { version: stored_version.unwrap_or(0) + 1, ..record.clone() };
        let key = self.key(cluster, item);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.as_ref().map_or(0, KeyValue::mod_revision))])
            .and_then([TxnOp::put(key, encode(item, &stored)?, None)]);
        if self.txn("write cluster", txn).await?.succeeded() {
            Ok(stored)
        } else {
            Err(StoreError::conflict(item, format!("version {stored_version:?} was replaced by another writer")))
        }
    }

    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&member.name).map_err(StoreError::Invalid)?;
        let item = keys::member(&member.name);
        let text = encode(&item, member)?;
        let mut client = self.client.clone();
        self.call(&format!("put {item}"), client.put(self.key(cluster, &item), text, None)).await?;
        Ok(())
    }

    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(name).map_err(StoreError::Invalid)?;
        let item = keys::member(name);
        let mut client = self.client.clone();
        self.call(&format!("delete {item}"), client.delete(self.key(cluster, &item), None)).await?;
        Ok(())
    }

    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let item = keys::history(entry.term);
        let key = self.key(cluster, &item);
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            encode(&item, entry)?,
            None,
        )]);
        if self.txn(&format!("append {item}"), txn).await?.succeeded() {
            Ok(())
        } else {
            Err(StoreError::conflict(item, "a history record for this term exists"))
        }
    }

    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        check_cluster(cluster)?;
        let base = self.cluster_prefix(cluster);
        let mut client = self.client.clone();
        // Keys sort by term: history items carry it zero-padded.
        let mut resp = self
            .call("read history", client.get(format!("{base}{}", keys::HISTORY_PREFIX), Some(GetOptions::new().with_prefix())))
            .await?;
        Ok(decode_items(cluster, &base, resp.take_kvs()))
    }

    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError> {
        let item = codec::event_item(cluster, event)?;
        let key = self.key(cluster, &item);
        // Put only if absent: a retried append of a logged event changes nothing and is `Ok`.
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            encode(&item, event)?,
            None,
        )]);
        self.txn(&format!("append {item}"), txn).await?;
        Ok(())
    }

    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        check_cluster(cluster)?;
        let base = self.cluster_prefix(cluster);
        let mut client = self.client.clone();
        let from = self.key(cluster, &keys::event(since_ms, ""));
        let end = self.key(cluster, keys::EVENT_END);
        let mut resp = self.call("read events", client.get(from, Some(GetOptions::new().with_range(end)))).await?;
        Ok(decode_items(cluster, &base, resp.take_kvs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_lease_reads_as_free_with_its_term() {
        let last = LeaderLease { owner: "a".into(), term: 7, rvn: "r".into(), lease_ms: 5000, released: false };
        let snap = LeaseSnapshot { record: None, record_rev: 0, etcd_lease: 0, last: Some(last), last_rev: 3 };
        let current = snap.current().unwrap();
        assert!(current.is_free());
        assert_eq!(current.term, 7);
        // The next claim must raise the term even though the live key is gone.
        assert!(check_acquire(Some(&current), LeaseClaim::Free, 7).is_err());
        assert!(check_acquire(Some(&current), LeaseClaim::Free, 8).is_ok());
    }

    #[tokio::test]
    async fn bad_endpoints_and_prefixes_are_invalid() {
        assert!(matches!(EtcdStore::connect(&[], "/p").await, Err(StoreError::Invalid(_))));
        assert!(matches!(EtcdStore::connect(&["http://127.0.0.1:1".into()], "p/").await, Err(StoreError::Invalid(_))));
    }
}
