//! The fault-injecting [`Store`]: the real [`MemoryStore`] behind per-caller reachability,
//! latency, outages and lost responses, all in virtual time.
//!
//! A call picks its latency when it starts, applies its effect at a random instant inside that
//! window (if the store is still reachable then), and answers at its end. A caller cut off while
//! the call is in flight gets `Unavailable` even though the write may have landed, which is the
//! ambiguity every real backend has and the lease logic must tolerate.

use std::sync::Arc;

use async_trait::async_trait;
use pgdaemon_core::{
    ClusterParameters, ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseClaim, LeaseName, MemberState, MemberStatus,
    MemoryStore, Store, StoreError,
};

use crate::world::{Broken, Us, World, MS};

/// Who is calling: reachability is decided per caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Node(usize),
    Coordinator(usize),
}

#[derive(Clone)]
pub struct SimStore {
    world: World,
    inner: Arc<MemoryStore>,
    caller: Caller,
}

struct Plan {
    done_at: Us,
}

impl SimStore {
    pub fn new(world: World, inner: Arc<MemoryStore>, caller: Caller) -> Self {
        SimStore { world, inner, caller }
    }

    fn reachable(&self) -> bool {
        let w = self.world.lock();
        !w.store_outage
            && match self.caller {
                Caller::Node(i) => !w.nodes[i].store_cut && w.nodes[i].up,
                Caller::Coordinator(k) => !w.coord_cut[k],
            }
    }

    fn name(&self) -> String {
        let w = self.world.lock();
        match self.caller {
            Caller::Node(i) => w.nodes[i].name.clone(),
            Caller::Coordinator(k) => format!("coord{k}"),
        }
    }

    /// Waits until the call's effect point; `Err` (after a timeout) when the store is unreachable.
    async fn begin(&self) -> Result<Plan, StoreError> {
        let reachable = self.reachable();
        let (start, effect, done, fail_after) = {
            let mut w = self.world.lock();
            let start = w.now;
            let mut latency = w.rng.range(MS, 8 * MS);
            if let Some((lo, hi)) = w.store_slow {
                latency += w.rng.range(lo, hi);
            }
            let effect = w.rng.range(0, latency);
            // Unreachable: refused fast, or a client-side timeout.
            let fail_after = if w.rng.chance(0.5) { w.rng.range(MS, 5 * MS) } else { w.rng.range(1000 * MS, 3000 * MS) };
            (start, effect, latency, fail_after)
        };
        if !reachable {
            self.world.sleep_until(start + fail_after).await;
            return Err(StoreError::Unavailable("simulated: store unreachable".into()));
        }
        self.world.sleep_until(start + effect).await;
        if !self.reachable() {
            self.world.sleep_until(start + done).await;
            return Err(StoreError::Unavailable("simulated: store became unreachable".into()));
        }
        Ok(Plan { done_at: start + done })
    }

    /// Waits out the rest of the latency; a caller cut off meanwhile loses the answer.
    async fn end<T>(&self, plan: Plan, result: Result<T, StoreError>, write: Option<String>) -> Result<T, StoreError> {
        if let Some(what) = &write {
            let mut w = self.world.lock();
            w.store_dirty = true;
            if let (Caller::Coordinator(k), Ok(_)) = (self.caller, &result) {
                let p = w.coord_kill_after_write;
                if what.starts_with("cluster record") && w.rng.chance(p) {
                    let now = w.now;
                    w.schedule(now, crate::world::Event::KillCoordinator(k));
                }
            }
            let outcome = match &result {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{e}"),
            };
            drop(w);
            let who = self.name();
            self.world.lock().log(format!("store <- {who}: {what}: {outcome}"));
        }
        self.world.sleep_until(plan.done_at).await;
        if !self.reachable() {
            if write.is_some() && result.is_ok() {
                let who = self.name();
                self.world.lock().log(format!("store -> {who}: answer lost (the write landed)"));
            }
            return Err(StoreError::Unavailable("simulated: answer lost".into()));
        }
        result
    }
}

#[async_trait]
impl Store for SimStore {
    fn backend(&self) -> &'static str {
        "sim"
    }

    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.read_view(cluster).await;
        self.end(plan, r, None).await
    }

    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.read_lease(cluster, name).await;
        self.end(plan, r, None).await
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
        let plan = self.begin().await?;
        let r = self.inner.acquire_lease(cluster, name, claim, owner, term, lease_ms).await;
        let what = format!("acquire {} lease as {owner} term {term}", name.item_key());
        self.end(plan, r, Some(what)).await
    }

    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        let lie = matches!(self.caller, Caller::Node(_)) && self.world.lock().broken == Broken::SkipLeaseCheck;
        let r = match self.begin().await {
            Ok(plan) => {
                let r = self.inner.renew_lease(cluster, name, held).await;
                // Renewals are frequent: logged only when they fail.
                let what = r.is_err().then(|| format!("renew {} lease term {}", name.item_key(), held.term));
                self.end(plan, r, what).await
            }
            Err(e) => Err(e),
        };
        match r {
            // Broken on purpose: the agent is told its renewal worked, so it never notices that
            // its lease lapsed (its S2 check is skipped in effect).
            Err(_) if lie => Ok(LeaderLease { rvn: format!("fake-{}", self.world.lock().fresh_id()), ..held.clone() }),
            r => r,
        }
    }

    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.release_lease(cluster, name, held).await;
        let what = format!("release {} lease term {}", name.item_key(), held.term);
        self.end(plan, r, Some(what)).await
    }

    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.read_cluster(cluster).await;
        self.end(plan, r, None).await
    }

    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.write_cluster(cluster, expected_version, record).await;
        let what = format!("cluster record v{expected_version:?}: {}", describe_record(record));
        self.end(plan, r, Some(what)).await
    }

    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.put_member(cluster, member).await;
        if r.is_ok() {
            if let Caller::Node(i) = self.caller {
                let mut w = self.world.lock();
                let now = w.now;
                w.nodes[i].last_beat = Some((now, member.wal_position()));
            }
        }
        self.end(plan, r, None).await
    }

    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.remove_member(cluster, name).await;
        self.end(plan, r, Some(format!("remove member {name}"))).await
    }

    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.write_parameters(cluster, expected_version, parameters).await;
        self.end(plan, r, Some(format!("parameters v{expected_version:?}"))).await
    }

    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &pgdaemon_core::BackupConfig,
    ) -> Result<pgdaemon_core::BackupConfig, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.write_backup_config(cluster, expected_version, config).await;
        self.end(plan, r, None).await
    }

    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.put_member_state(cluster, state).await;
        self.end(plan, r, None).await
    }

    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.append_history(cluster, entry).await;
        let what = format!("history term {} {:?} -> {}", entry.term, entry.old_primary, entry.new_primary);
        self.end(plan, r, Some(what)).await
    }

    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.read_history(cluster).await;
        self.end(plan, r, None).await
    }

    async fn append_event(&self, cluster: &str, event: &pgdaemon_core::events::Event) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.append_event(cluster, event).await;
        self.end(plan, r, None).await
    }

    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<pgdaemon_core::events::Event>, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.read_events(cluster, since_ms).await;
        self.end(plan, r, None).await
    }

    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.register_cluster(cluster, registered_ms).await;
        self.end(plan, r, None).await
    }

    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.unregister_cluster(cluster).await;
        self.end(plan, r, None).await
    }

    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.is_registered(cluster).await;
        self.end(plan, r, None).await
    }

    async fn list_clusters(&self) -> Result<Vec<String>, StoreError> {
        let plan = self.begin().await?;
        let r = self.inner.list_clusters().await;
        self.end(plan, r, None).await
    }
}

/// One line summarizing a cluster record for the trace.
pub fn describe_record(r: &ClusterRecord) -> String {
    let mut s = format!("term {} primary {:?}", r.term, r.primary.as_deref().unwrap_or("-"));
    if let Some(t) = &r.transition {
        s.push_str(&format!(
            " transition {:?} {:?} term {} {:?}->{}",
            t.kind,
            t.step,
            t.term,
            t.old_primary.as_deref().unwrap_or("-"),
            t.candidate
        ));
        if let Some(f) = &t.fence {
            if let Some(p) = &f.pending {
                s.push_str(&format!(" fence pending {}:{}", p.fencer, p.handle));
            }
        }
    }
    if r.paused {
        s.push_str(" paused");
    }
    if let Some(q) = &r.request {
        s.push_str(&format!(" request {:?} {:?}", q.action, q.candidate));
    }
    if let Some(sy) = &r.sync {
        s.push_str(&format!(" sync t{} {:?}{}", sy.term, sy.members, if sy.degraded { " degraded" } else { "" }));
    }
    s
}
