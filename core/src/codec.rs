//! Record encoding for document stores (memory, etcd) and the lease conditions every backend
//! applies, so backends differ only in how they make a check-and-write atomic.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::LeaderLease;
use crate::store::{LeaseClaim, StoreError};

pub fn encode<T: Serialize>(item: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("cannot encode {item}: {e}")))
}

pub fn decode<T: DeserializeOwned>(item: &str, text: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(text).map_err(|e| StoreError::malformed(item, e))
}

/// Whether `claim` with `term` may replace `current`. `Err` carries the conflict's detail.
pub fn check_acquire(current: Option<&LeaderLease>, claim: LeaseClaim<'_>, term: u64) -> Result<(), String> {
    match (claim, current) {
        (LeaseClaim::Free, Some(c)) if !c.is_free() => {
            return Err(format!("held by {} in term {}", c.owner, c.term));
        }
        (LeaseClaim::Takeover { observed_rvn }, Some(c)) if c.rvn != observed_rvn => {
            return Err(format!("changed since observed (now held by {:?}, term {})", c.owner, c.term));
        }
        (LeaseClaim::Takeover { .. }, None) => return Err("no lease to take over".into()),
        _ => {}
    }
    match current {
        Some(c) if term <= c.term => Err(format!("term {term} is not above the stored term {}", c.term)),
        _ => Ok(()),
    }
}

/// Whether the holder of `held` may renew or release `current`.
pub fn check_held(current: Option<&LeaderLease>, held: &LeaderLease) -> Result<(), String> {
    match current {
        None => Err("no lease record".into()),
        Some(c) if c.released => Err("already released".into()),
        Some(c) if c.owner != held.owner => Err(format!("owned by {:?}, not {:?}", c.owner, held.owner)),
        Some(c) if c.rvn != held.rvn => Err("rvn changed: the lease was renewed or taken by someone else".into()),
        Some(_) => Ok(()),
    }
}

pub fn new_rvn() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Every backend refuses a cluster name that cannot be a key, before touching the engine.
pub fn check_cluster(cluster: &str) -> Result<(), StoreError> {
    crate::keys::validate_cluster_name(cluster).map_err(StoreError::Invalid)
}

/// Argument checks shared by every backend: refused before anything is written.
pub fn validate_acquire(cluster: &str, owner: &str, term: u64, lease_ms: u64) -> Result<(), StoreError> {
    check_cluster(cluster)?;
    if owner.is_empty() {
        return Err(StoreError::Invalid("lease owner must not be empty".into()));
    }
    if term == 0 {
        return Err(StoreError::Invalid("lease term must be at least 1".into()));
    }
    if lease_ms == 0 {
        return Err(StoreError::Invalid("lease duration must be above 0".into()));
    }
    Ok(())
}

/// Checks an event before any backend writes it, and returns its item key.
pub fn event_item(cluster: &str, event: &crate::events::Event) -> Result<String, StoreError> {
    check_cluster(cluster)?;
    event.validate(cluster).map_err(StoreError::Invalid)?;
    Ok(crate::keys::event(event.time_ms, &event.id))
}
