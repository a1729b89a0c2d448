//! Carrying out one [`AgentAction`]: the store writes and Postgres changes behind each, with the
//! checks that must run at the moment of acting (the lease still valid, no fence for the term).

use std::sync::PoisonError;

use super::{AgentRuntime, Executed};
use crate::agent::decide::AgentAction;
use crate::agent::input::{PrimaryStartFailure, PublishedHeartbeat, RejoinFailure, RejoinMethod};
use crate::clock::Clock;
use crate::lease::{self, try_acquire_observed, AcquireOutcome, Claimant, HeldLease};
use crate::model::{ClusterRecord, LeaseName};
use crate::pg::{DataDirState, PgControl, PgProbe};
use crate::store::{LeaseClaim, Store, StoreError};

impl<S, P, C> AgentRuntime<S, P, C>
where
    S: Store,
    P: PgControl + 'static,
    C: Clock + Clone + 'static,
{
    /// After a renewal conflict, re-takes a renewal that timed out but landed
    /// ([`crate::lease::landed_renewal`] says when that is safe): validity counts from before this
    /// write.
    async fn retake_landed_renewal(&self, held: &HeldLease) -> Option<HeldLease> {
        let cluster = &self.identity.cluster;
        let stored = self.store.read_lease(cluster, LeaseName::Leader).await.ok()?;
        let landed = lease::landed_renewal(held, &self.identity.member, stored.as_ref())?;
        let retaken = lease::renew(&self.store, &self.clock, cluster, LeaseName::Leader, landed).await.ok()?;
        tracing::warn!(term = retaken.lease.term, "a renewal that timed out had landed; re-took the lease record");
        Some(retaken)
    }

    /// Checks, under the Postgres lock, that a role raise for `term` is still allowed.
    fn may_raise(&self, term: u64) -> Result<(), String> {
        let fence = self.shared.fenced_through();
        if term <= fence {
            return Err(format!("refused: told to demote through term {fence}"));
        }
        match &self.held {
            Some(h) if h.lease.term == term && h.is_valid(self.clock.monotonic(), self.config.safety_margin()) => Ok(()),
            Some(h) if h.lease.term == term => Err("refused: the lease is no longer valid".into()),
            _ => Err(format!("refused: the lease for term {term} is not held")),
        }
    }

    /// Carries out one action; a guarded action whose condition does not hold is `NotNeeded`.
    pub(super) async fn execute(&mut self, action: &AgentAction, probe: &PgProbe) -> Result<Executed, String> {
        if *action == AgentAction::DemoteIfLeaseLost {
            if self.holds_valid_lease() {
                return Ok(Executed::NotNeeded);
            }
            tracing::error!("this loop's lease writes left no valid lease: demoting (S2)");
        }
        self.perform(action, probe).await.map(|()| Executed::Done)
    }

    async fn perform(&mut self, action: &AgentAction, probe: &PgProbe) -> Result<(), String> {
        let cluster = self.identity.cluster.clone();
        match action {
            AgentAction::RenewLease => {
                let Some(held) = self.held.clone() else {
                    return Err("no lease held".into());
                };
                match lease::renew(&self.store, &self.clock, &cluster, LeaseName::Leader, &held.lease).await {
                    Ok(renewed) => {
                        self.held = Some(renewed);
                        self.counters.lease_renewals += 1;
                        Ok(())
                    }
                    Err(e) => {
                        self.counters.lease_renew_failures += 1;
                        if e.is_conflict() {
                            if let Some(h) = self.retake_landed_renewal(&held).await {
                                self.held = Some(h);
                                self.counters.lease_renewals += 1;
                                return Ok(());
                            }
                            // Someone else wrote the lease: it is certainly gone.
                            self.held = None;
                        }
                        Err(e.to_string())
                    }
                }
            }
            AgentAction::AcquireLease { term, takeover_rvn } => {
                let fence = self.shared.fenced_through();
                if *term <= fence {
                    return Err(format!("refused: told to demote through term {fence}"));
                }
                // A failsafe promise to another primary forbids the claim (ended by sync_lease_deadline).
                self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).begin_claim(self.clock.monotonic())?;
                let claim = match takeover_rvn {
                    Some(rvn) => LeaseClaim::Takeover { observed_rvn: rvn },
                    None => LeaseClaim::Free,
                };
                let claimant = Claimant {
                    cluster: &cluster,
                    name: LeaseName::Leader,
                    owner: &self.identity.member,
                    lease_ms: self.config.lease_ms,
                };
                match lease::acquire(&self.store, &self.clock, &claimant, claim, *term).await {
                    Ok(acquired) => {
                        tracing::info!(term, "acquired the leader lease");
                        self.held = Some(acquired);
                        self.max_term_held = self.max_term_held.max(*term);
                        self.observer.reset();
                        self.counters.lease_acquisitions += 1;
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            AgentAction::AdoptLease { lease } => {
                self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).begin_claim(self.clock.monotonic())?;
                match lease::renew(&self.store, &self.clock, &cluster, LeaseName::Leader, lease).await {
                    Ok(adopted) => {
                        self.max_term_held = self.max_term_held.max(adopted.lease.term);
                        self.held = Some(adopted);
                        self.counters.lease_renewals += 1;
                        Ok(())
                    }
                    Err(e) => {
                        self.counters.lease_renew_failures += 1;
                        Err(e.to_string())
                    }
                }
            }
            AgentAction::ReleaseLease => {
                // We stop counting on it whatever the store says.
                let Some(held) = self.held.take() else { return Ok(()) };
                self.store.release_lease(&cluster, LeaseName::Leader, &held.lease).await.map_err(|e| e.to_string())
            }
            AgentAction::ForgetLease => {
                self.held = None;
                Ok(())
            }
            AgentAction::Start => {
                let _guard = self.shared.pg_lock.lock().await;
                let as_primary = probe.data == DataDirState::Primary;
                let term = self.held.as_ref().map_or(0, |h| h.lease.term);
                if as_primary {
                    // Starting a primary's data directory makes it writable: same rule as promote.
                    self.may_raise(term)?;
                }
                let result = self.pg.start().await.map_err(|e| e.to_string());
                if as_primary {
                    // A failure makes the next loops hand the lease over (decide).
                    self.primary_start_failure = result.as_ref().err().map(|e| {
                        tracing::error!(term, error = %e, "postgres did not restart in place as primary");
                        PrimaryStartFailure { term, at: self.clock.monotonic(), error: e.clone() }
                    });
                }
                result
            }
            AgentAction::Promote { term } => {
                let _guard = self.shared.pg_lock.lock().await;
                self.may_raise(*term)?;
                let result = self.pg.promote().await.map_err(|e| e.to_string());
                if result.is_ok() {
                    tracing::info!(term, "promoted");
                    self.counters.promotions += 1;
                }
                result
            }
            AgentAction::Demote | AgentAction::DemoteIfLeaseLost => {
                let _guard = self.shared.pg_lock.lock().await;
                let result = self.pg.demote().await.map_err(|e| e.to_string());
                if result.is_ok() {
                    tracing::warn!("demoted (postgres stopped)");
                    self.counters.demotions += 1;
                }
                result
            }
            AgentAction::Follow(target) => {
                let _guard = self.shared.pg_lock.lock().await;
                self.pg.follow(target).await.map_err(|e| e.to_string())
            }
            AgentAction::Rewind(target) => {
                let _guard = self.shared.pg_lock.lock().await;
                let _activity = self.handle().begin(format!("rewind from {}", target.name), false);
                let result = self.pg.rewind(target).await.map_err(|e| e.to_string());
                self.last_rejoin_failure = result.as_ref().err().map(|e| RejoinFailure {
                    method: RejoinMethod::Rewind,
                    source: target.name.clone(),
                    error: e.clone(),
                });
                result
            }
            AgentAction::Basebackup(target) => {
                let _guard = self.shared.pg_lock.lock().await;
                let _activity = self.handle().begin(format!("basebackup from {}", target.name), false);
                let result = self.pg.basebackup(target).await.map_err(|e| e.to_string());
                self.last_rejoin_failure = result.as_ref().err().map(|e| RejoinFailure {
                    method: RejoinMethod::Basebackup,
                    source: target.name.clone(),
                    error: e.clone(),
                });
                result
            }
            AgentAction::EnsureSlots(members) => {
                let _guard = self.shared.pg_lock.lock().await;
                self.pg.ensure_slots(members).await.map_err(|e| e.to_string())
            }
            AgentAction::Initialize => {
                let shared = self.shared.clone();
                let _guard = shared.pg_lock.lock().await;
                self.initialize(&cluster).await
            }
            AgentAction::DropSlots(slots) => {
                let _guard = self.shared.pg_lock.lock().await;
                self.pg.drop_slots(slots).await.map_err(|e| e.to_string())
            }
            AgentAction::RecordSync(record) => {
                // Compare-and-set on the version the decision read: a coordinator that changed the
                // term (or anything else) since then wins, and the Postgres change after this is
                // skipped (see agent::sync for the order).
                self.store.write_cluster(&cluster, Some(record.version), record).await.map(|_| ()).map_err(|e| e.to_string())
            }
            AgentAction::SetSyncStandbys(names) => {
                let _guard = self.shared.pg_lock.lock().await;
                self.pg.set_sync_standbys(names).await.map_err(|e| e.to_string())
            }
            AgentAction::RequestCoordinatorRun { evidence } => {
                self.last_run_request = Some(self.clock.monotonic());
                self.counters.coordinator_requests += 1;
                match &self.trigger {
                    Some(t) => t.request_run(&cluster, evidence).await.map_err(|e| e.to_string()),
                    None => Ok(()),
                }
            }
            AgentAction::PublishHeartbeat(decided) => {
                let at = self.clock.monotonic();
                // A long operation in this loop may have had the keeper publish newer beats
                // (AgentHandle::keep_alive): the sequence never goes back.
                let kept = self.shared.kept_alive_seq.load(std::sync::atomic::Ordering::Relaxed);
                let mut status = decided.clone();
                if kept >= status.seq {
                    status.seq = kept + 1;
                    self.seq = self.seq.max(status.seq);
                }
                let status = &status;
                let result = self.store.put_member(&cluster, status).await.map_err(|e| e.to_string());
                if result.is_err() {
                    self.counters.heartbeat_failures += 1;
                    return result;
                }
                if let (Some(_), Some(h)) = (&status.failsafe_members, &self.held) {
                    // Candidates can now see whom this primary asks (docs/failsafe.md).
                    self.shared.failsafe.lock().unwrap_or_else(PoisonError::into_inner).note_published(h.lease.term);
                }
                self.last_heartbeat = Some(PublishedHeartbeat { status: status.clone(), at });
                result
            }
        }
    }

    /// Automatic bootstrap (agent::bootstrap): claims the initialize lock by the lock-client
    /// rules, initialises Postgres within the lock's duration less the safety margin, then
    /// creates the cluster record naming this member primary in term 1 (create-only).
    pub(super) async fn initialize(&mut self, cluster: &str) -> Result<(), String> {
        if let Some(at) = self.init_failed_at {
            let wait = (at + self.bootstrap.lock).saturating_sub(self.clock.monotonic());
            if !wait.is_zero() {
                return Err(format!("the last initialisation failed; trying again in {} s", wait.as_secs()));
            }
        }
        let claimant = Claimant {
            cluster,
            name: LeaseName::Initialize,
            owner: &self.identity.member,
            lease_ms: u64::try_from(self.bootstrap.lock.as_millis()).unwrap_or(u64::MAX),
        };
        let held = match try_acquire_observed(&self.store, &self.clock, &mut self.init_observer, &claimant, None).await {
            Ok(AcquireOutcome::Acquired(held)) => held,
            Ok(AcquireOutcome::HeldByOther { owner, term, .. }) => {
                return Err(format!("{owner} (lock term {term}) is initialising the cluster; waiting"))
            }
            Err(e) => return Err(format!("initialize lock: {e}")),
        };
        let result = self.initialize_holding(cluster, &held).await;
        if result.is_err() {
            self.init_failed_at = Some(self.clock.monotonic());
        }
        // Done (the record exists), or failed with Postgres stopped (PgControl::initialize):
        // either way the lock can go to whoever asks next.
        if let Err(e) = self.store.release_lease(cluster, LeaseName::Initialize, &held.lease).await {
            tracing::warn!(error = %e, "could not release the initialize lock");
        }
        result
    }

    async fn initialize_holding(&mut self, cluster: &str, held: &HeldLease) -> Result<(), String> {
        let owner = self.identity.member.clone();
        let deadline = held.valid_until(self.config.safety_margin());
        tracing::info!(term = held.lease.term, "won the initialize lock: initialising a new cluster");
        // `pgdctl restore` asks for a database from a backup in the same partition: read it now,
        // under the lock, and never fall back to initdb when it cannot be read.
        let view = self.store.read_view(cluster).await.map_err(|e| format!("reading the cluster under the lock: {e}"))?;
        // The decision read the store before the lock was taken: the previous holder may have
        // created the record and released the lock in between (seen under load). Initialising
        // now would make a second database that could only be thrown away.
        if let Some(record) = &view.cluster {
            let primary = record.primary.as_deref().unwrap_or("(none)");
            tracing::info!(%primary, "the cluster record appeared before the initialize lock was won: joining instead");
            return Ok(());
        }
        if let Some(bad) = view.unreadable.iter().find(|u| u.item == crate::keys::BACKUP) {
            return Err(format!("the backup configuration cannot be read ({}); not initialising", bad.error));
        }
        let restore = view.backup.and_then(|b| b.restore);
        let budget = deadline.saturating_sub(self.clock.monotonic());
        self.pg.initialize(budget, restore.as_ref()).await.map_err(|e| format!("initialising postgres: {e}"))?;
        if !held.is_valid(self.clock.monotonic(), self.config.safety_margin()) {
            return Err("the initialize lock ran out before the cluster record could be written".into());
        }
        let record = ClusterRecord::bootstrap(owner.clone(), self.config.clone());
        match self.store.write_cluster(cluster, None, &record).await {
            Ok(_) => tracing::info!(primary = %owner, "created the cluster record: this member is the primary in term 1"),
            Err(StoreError::Conflict { .. }) => return Err("another member created the cluster record first".into()),
            Err(e) => return Err(format!("creating the cluster record: {e}")),
        }
        self.pg.initialized().await.map_err(|e| e.to_string())
    }
}
