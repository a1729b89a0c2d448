//! Lease logic of the DynamoDB lock client, independent of any backend.
//!
//! A lease is never judged by comparing wall clocks across hosts. A holder counts its validity
//! from the monotonic instant *before* its last successful write ([`HeldLease`]); an observer
//! counts from the monotonic instant *after* the read in which it first saw an `rvn`
//! ([`LeaseObserver`]). Both instants bracket the write itself, so the holder's deadline always
//! falls before any observer's expiry, as long as clock rates differ by less than the margin.

use std::time::Duration;

use crate::clock::Clock;
use crate::model::{LeaderLease, LeaseName};
use crate::store::{LeaseClaim, Store, StoreError};

/// What an observer may conclude about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// No lease record exists.
    Absent,
    /// Released (or ownerless): may be acquired at once.
    Free(LeaderLease),
    /// Held, and its `rvn` changed (or was first seen) `unchanged_for` ago.
    Held { lease: LeaderLease, unchanged_for: Duration },
    /// The same `rvn` has been observed for at least the lease's duration: the holder has
    /// stopped renewing and, if it follows S2, has stopped acting as holder.
    Expired(LeaderLease),
}

impl LeaseState {
    /// The lease may be claimed now, and how.
    pub fn claim(&self) -> Option<LeaseClaim<'_>> {
        match self {
            LeaseState::Absent | LeaseState::Free(_) => Some(LeaseClaim::Free),
            LeaseState::Expired(lease) => Some(LeaseClaim::Takeover { observed_rvn: &lease.rvn }),
            LeaseState::Held { .. } => None,
        }
    }

    pub fn lease(&self) -> Option<&LeaderLease> {
        match self {
            LeaseState::Absent => None,
            LeaseState::Free(l) | LeaseState::Expired(l) => Some(l),
            LeaseState::Held { lease, .. } => Some(lease),
        }
    }
}

/// Pure judge of lease expiry from observed changes of `rvn`.
///
/// Feed it every read of the lease with the monotonic time taken *after* the read returned.
/// Time counts only while the observer keeps looking: a gap of more than a lease duration between
/// two reads starts the watch over. Across such a gap (a store outage, a stalled observer) the
/// holder may have been unable to renew for the same reason, so the unchanged `rvn` proves only
/// that nobody wrote, not that the holder is gone (docs/store-outages.md).
#[derive(Debug, Clone, Default)]
pub struct LeaseObserver {
    /// The `rvn` last seen and when it was first seen.
    sighting: Option<(String, Duration)>,
    /// When the last read was fed in.
    last_read: Option<Duration>,
}

impl LeaseObserver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one observation and judges the lease.
    pub fn observe(&mut self, lease: Option<&LeaderLease>, observed_at: Duration) -> LeaseState {
        let gap = self.last_read.replace(observed_at).map(|prev| observed_at.saturating_sub(prev));
        if gap.zip(lease).is_some_and(|(gap, l)| gap > Duration::from_millis(l.lease_ms)) {
            self.sighting = None;
        }
        let Some(lease) = lease else {
            self.sighting = None;
            return LeaseState::Absent;
        };
        if lease.is_free() {
            self.sighting = None;
            return LeaseState::Free(lease.clone());
        }
        let first_seen = match &self.sighting {
            Some((rvn, at)) if *rvn == lease.rvn => *at,
            _ => {
                self.sighting = Some((lease.rvn.clone(), observed_at));
                observed_at
            }
        };
        let unchanged_for = observed_at.saturating_sub(first_seen);
        if unchanged_for >= Duration::from_millis(lease.lease_ms) {
            LeaseState::Expired(lease.clone())
        } else {
            LeaseState::Held { lease: lease.clone(), unchanged_for }
        }
    }

    /// The `rvn` being timed and the monotonic instant it was first seen (evidence for reports).
    pub fn sighting(&self) -> Option<(&str, Duration)> {
        self.sighting.as_ref().map(|(rvn, at)| (rvn.as_str(), *at))
    }

    /// Forgets what was seen (e.g. after this process wrote the lease itself, or a failed read).
    pub fn reset(&mut self) {
        self.sighting = None;
    }
}

/// A lease this process holds, with the monotonic instant taken before the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLease {
    pub lease: LeaderLease,
    /// Monotonic time taken *before* the acquire/renew call that returned `lease`.
    pub written_from: Duration,
}

impl HeldLease {
    /// The last monotonic instant at which the holder may still act as holder: the lease duration
    /// minus `safety_margin` (which absorbs clock-rate differences and the time a demotion takes).
    pub fn valid_until(&self, safety_margin: Duration) -> Duration {
        (self.written_from + Duration::from_millis(self.lease.lease_ms)).saturating_sub(safety_margin)
    }

    pub fn is_valid(&self, now: Duration, safety_margin: Duration) -> bool {
        now < self.valid_until(safety_margin)
    }
}

/// Result of one acquisition attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireOutcome {
    Acquired(HeldLease),
    /// Someone holds it and has not yet been seen idle for a full lease duration.
    HeldByOther {
        owner: String,
        term: u64,
        unchanged_for: Duration,
    },
}

/// Who claims which lease, for [`try_acquire_observed`].
pub struct Claimant<'a> {
    pub cluster: &'a str,
    pub name: LeaseName,
    pub owner: &'a str,
    pub lease_ms: u64,
}

/// One acquisition attempt by the lock-client rules, for callers that keep the observer
/// themselves ([`LeaseClient`], the agent's initialize lock): read the lease, observe it, and
/// claim it if it is free or was seen unchanged for a full duration. `term`: the fencing token
/// to claim (must exceed the stored one); `None` takes the stored term plus one.
pub async fn try_acquire_observed<S: Store + ?Sized, C: Clock>(
    store: &S,
    clock: &C,
    observer: &mut LeaseObserver,
    claimant: &Claimant<'_>,
    term: Option<u64>,
) -> Result<AcquireOutcome, StoreError> {
    let lease = store.read_lease(claimant.cluster, claimant.name).await?;
    let state = observer.observe(lease.as_ref(), clock.monotonic());
    let Some(claim) = state.claim() else {
        let LeaseState::Held { lease, unchanged_for } = state else { unreachable!("only Held has no claim") };
        return Ok(AcquireOutcome::HeldByOther { owner: lease.owner, term: lease.term, unchanged_for });
    };
    let term = match term {
        Some(t) => t,
        None => match state.lease() {
            None => 1,
            Some(l) => l.term.checked_add(1).ok_or_else(|| StoreError::Malformed {
                item: claimant.name.item_key().to_string(),
                reason: format!("term {} has no successor", l.term),
            })?,
        },
    };
    let held = acquire(store, clock, claimant, claim, term).await?;
    observer.reset();
    Ok(AcquireOutcome::Acquired(held))
}

/// Claims the lease for `term`, counting its validity from before the write (lock-client rule).
pub async fn acquire<S: Store + ?Sized, C: Clock>(
    store: &S,
    clock: &C,
    claimant: &Claimant<'_>,
    claim: LeaseClaim<'_>,
    term: u64,
) -> Result<HeldLease, StoreError> {
    let written_from = clock.monotonic();
    let lease = store.acquire_lease(claimant.cluster, claimant.name, claim, claimant.owner, term, claimant.lease_ms).await?;
    Ok(HeldLease { lease, written_from })
}

/// Renews exactly `lease` (conditional on its `rvn`), counting validity from before the write.
pub async fn renew<S: Store + ?Sized, C: Clock>(
    store: &S,
    clock: &C,
    cluster: &str,
    name: LeaseName,
    lease: &LeaderLease,
) -> Result<HeldLease, StoreError> {
    let written_from = clock.monotonic();
    let lease = store.renew_lease(cluster, name, lease).await?;
    Ok(HeldLease { lease, written_from })
}

/// After a renewal conflict: is the stored record a renewal of ours that landed after timing
/// out? A stalled store processes queued requests when it resumes (seen with DynamoDB after an
/// outage), so the record is still `owner`'s, same term, not released, with an rvn the holder
/// never saw. Only the owner writes a lease record it holds for its term, so renewing exactly
/// that record is safe; observers restarted their watch when that rvn appeared.
pub fn landed_renewal<'a>(held: &HeldLease, owner: &str, stored: Option<&'a LeaderLease>) -> Option<&'a LeaderLease> {
    stored.filter(|s| s.owner == owner && s.term == held.lease.term && !s.is_free())
}

/// Acquire/renew/release of one lease for one owner, following the lock-client rules over any
/// [`Store`]: observe, wait out a full lease duration of unchanged `rvn`, then conditionally claim.
pub struct LeaseClient<S, C> {
    store: S,
    clock: C,
    cluster: String,
    name: LeaseName,
    owner: String,
    lease_ms: u64,
    observer: LeaseObserver,
}

impl<S: Store, C: Clock> LeaseClient<S, C> {
    pub fn new(store: S, clock: C, cluster: impl Into<String>, name: LeaseName, owner: impl Into<String>, lease_ms: u64) -> Self {
        LeaseClient { store, clock, cluster: cluster.into(), name, owner: owner.into(), lease_ms, observer: LeaseObserver::new() }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Reads the lease and updates the observer.
    pub async fn observe(&mut self) -> Result<LeaseState, StoreError> {
        let lease = self.store.read_lease(&self.cluster, self.name).await?;
        let now = self.clock.monotonic();
        Ok(self.observer.observe(lease.as_ref(), now))
    }

    /// One acquisition attempt. `term`: the fencing token to claim (must exceed the stored one);
    /// `None` takes the stored term plus one.
    pub async fn try_acquire(&mut self, term: Option<u64>) -> Result<AcquireOutcome, StoreError> {
        let claimant = Claimant { cluster: &self.cluster, name: self.name, owner: &self.owner, lease_ms: self.lease_ms };
        try_acquire_observed(&self.store, &self.clock, &mut self.observer, &claimant, term).await
    }

    /// Renews `held`, timing the new validity from before the call.
    pub async fn renew(&mut self, held: &HeldLease) -> Result<HeldLease, StoreError> {
        renew(&self.store, &self.clock, &self.cluster, self.name, &held.lease).await
    }

    pub async fn release(&mut self, held: &HeldLease) -> Result<(), StoreError> {
        self.store.release_lease(&self.cluster, self.name, &held.lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(rvn: &str) -> LeaderLease {
        LeaderLease { owner: "a".into(), term: 1, rvn: rvn.into(), lease_ms: 1000, released: false }
    }

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn expiry_needs_a_full_duration_of_the_same_rvn() {
        let mut obs = LeaseObserver::new();
        assert!(matches!(obs.observe(Some(&lease("r1")), MS(0)), LeaseState::Held { .. }));
        assert!(matches!(obs.observe(Some(&lease("r1")), MS(999)), LeaseState::Held { .. }));
        // A renewal restarts the count.
        assert!(matches!(obs.observe(Some(&lease("r2")), MS(1500)), LeaseState::Held { .. }));
        assert!(matches!(obs.observe(Some(&lease("r2")), MS(2499)), LeaseState::Held { .. }));
        assert!(matches!(obs.observe(Some(&lease("r2")), MS(2500)), LeaseState::Expired(_)));
    }

    #[test]
    fn a_gap_longer_than_the_lease_between_reads_starts_the_watch_over() {
        let mut obs = LeaseObserver::new();
        obs.observe(Some(&lease("r")), MS(0));
        // Not looking for more than a lease (an outage the holder may have been in too).
        assert!(
            matches!(obs.observe(Some(&lease("r")), MS(1001)), LeaseState::Held { unchanged_for, .. } if unchanged_for == MS(0))
        );
        assert!(matches!(obs.observe(Some(&lease("r")), MS(1900)), LeaseState::Held { .. }));
        assert!(matches!(obs.observe(Some(&lease("r")), MS(2001)), LeaseState::Expired(_)));
        // Reads a lease apart at most keep counting.
        let mut obs = LeaseObserver::new();
        obs.observe(Some(&lease("r")), MS(0));
        assert!(matches!(obs.observe(Some(&lease("r")), MS(1000)), LeaseState::Expired(_)));
    }

    #[test]
    fn absent_and_released_leases_are_claimable_at_once() {
        let mut obs = LeaseObserver::new();
        assert_eq!(obs.observe(None, MS(0)), LeaseState::Absent);
        let released = LeaderLease { released: true, ..lease("r") };
        assert_eq!(obs.observe(Some(&released), MS(0)), LeaseState::Free(released.clone()));
        assert_eq!(LeaseState::Free(released).claim(), Some(LeaseClaim::Free));
    }

    #[test]
    fn wall_clock_plays_no_part() {
        // The record carries no timestamp at all; only the observer's own clock counts.
        let mut obs = LeaseObserver::new();
        obs.observe(Some(&lease("r")), MS(10_000));
        assert!(matches!(obs.observe(Some(&lease("r")), MS(10_500)), LeaseState::Held { .. }));
    }

    #[test]
    fn holder_deadline_precedes_observer_expiry() {
        let held = HeldLease { lease: lease("r"), written_from: MS(100) };
        let margin = MS(200);
        assert_eq!(held.valid_until(margin), MS(900));
        assert!(held.is_valid(MS(899), margin));
        assert!(!held.is_valid(MS(900), margin));
        // An observer that first saw the write after it began expires it no earlier than 1100.
        let mut obs = LeaseObserver::new();
        obs.observe(Some(&lease("r")), MS(101));
        assert!(matches!(obs.observe(Some(&lease("r")), MS(1100)), LeaseState::Held { .. }));
    }

    #[test]
    fn only_this_owners_unreleased_record_of_the_same_term_is_a_landed_renewal() {
        let held = HeldLease { lease: lease("r1"), written_from: MS(0) };
        let landed = lease("r2");
        assert_eq!(landed_renewal(&held, "a", Some(&landed)), Some(&landed));
        assert_eq!(landed_renewal(&held, "a", None), None);
        let other_owner = LeaderLease { owner: "b".into(), ..lease("r2") };
        assert_eq!(landed_renewal(&held, "a", Some(&other_owner)), None);
        let next_term = LeaderLease { term: 2, ..lease("r2") };
        assert_eq!(landed_renewal(&held, "a", Some(&next_term)), None);
        let released = LeaderLease { released: true, ..lease("r2") };
        assert_eq!(landed_renewal(&held, "a", Some(&released)), None);
    }
}
