//! Record encoding for document stores (memory, etcd) and the lease conditions every backend
//! applies, so backends differ only in how they make a check-and-write atomic.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::LeaderLease;
use crate::store::{LeaseClaim, StoreError};

pub fn encode<T: Serialize>(item: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("cannot encode {item}: {e}")))
}

/// The record format this build writes and reads (see docs/upgrading.md, "Record contract").
///
/// Every stored record may carry two optional envelope fields, both omitted while they are 1 so
/// that records stay readable by releases that predate the contract (they refuse unknown fields):
/// - [`FORMAT_FIELD`]: the format the writer used;
/// - [`MIN_READER_FIELD`]: the oldest reader format that may act on the record. A writer raises
///   it only for a change an older reader would misread (not for an added field, which older
///   readers ignore).
pub const RECORD_FORMAT: u64 = 1;
pub const FORMAT_FIELD: &str = "format_version";
pub const MIN_READER_FIELD: &str = "min_reader_version";

/// Decodes a stored record: unknown fields are ignored (forward compatible), a record that
/// declares a minimum reader format above [`RECORD_FORMAT`] is refused as malformed with an
/// error saying so, and so is anything that does not decode as `T`.
pub fn decode<T: DeserializeOwned>(item: &str, text: &[u8]) -> Result<T, StoreError> {
    decode_value(item, parse(item, text)?)
}

/// The JSON value of a stored record's text (malformed when it is not JSON).
pub fn parse(item: &str, text: &[u8]) -> Result<serde_json::Value, StoreError> {
    serde_json::from_slice(text).map_err(|e| StoreError::malformed(item, e))
}

/// [`decode`] of an already parsed JSON value (DynamoDB items become one first).
pub fn decode_value<T: DeserializeOwned>(item: &str, value: serde_json::Value) -> Result<T, StoreError> {
    check_reader_version(item, &value)?;
    serde_json::from_value(value).map_err(|e| StoreError::malformed(item, e))
}

/// Refuses a record this build may not act on because it declares a newer minimum reader.
pub fn check_reader_version(item: &str, value: &serde_json::Value) -> Result<(), StoreError> {
    let Some(declared) = value.get(MIN_READER_FIELD) else { return Ok(()) };
    match declared.as_u64() {
        Some(v) if v <= RECORD_FORMAT => Ok(()),
        Some(v) => Err(StoreError::malformed(
            item,
            format!(
                "written for readers of record format {v} or newer; this pgdaemon {} reads format {RECORD_FORMAT}: \
                 upgrade it (docs/upgrading.md)",
                crate::VERSION
            ),
        )),
        None => Err(StoreError::malformed(item, format!("{MIN_READER_FIELD} is not a whole number: {declared}"))),
    }
}

/// A member record must be stored under its own name: `member#<name>`. A record under another
/// key (a copy, a hand edit, a bug) is refused, so it can never stand in for another member.
pub fn check_member_key(item: &str, member: &crate::model::MemberStatus) -> Result<(), StoreError> {
    match item.strip_prefix(crate::keys::MEMBER_PREFIX) {
        Some(name) if name == member.name => Ok(()),
        _ => Err(StoreError::malformed(
            item,
            format!("holds the record of member {:?}: a member record must be stored under its own name", member.name),
        )),
    }
}

/// Decodes a member heartbeat stored as `item` (`member#<name>`), checking key and name agree.
pub fn decode_member(item: &str, text: &[u8]) -> Result<crate::model::MemberStatus, StoreError> {
    let member = decode(item, text)?;
    check_member_key(item, &member)?;
    Ok(member)
}

/// Adds the parameters item, the backup item or a `state#<name>` item to `view` (`value` parses the stored
/// record; it is called only for those); one that cannot be read is skipped and reported like a
/// member ([`skip_unreadable`]). Other items are ignored.
pub fn read_optional_item(
    view: &mut crate::model::ClusterView,
    cluster: &str,
    item: &str,
    value: impl FnOnce() -> Result<serde_json::Value, StoreError>,
) {
    use crate::params::{ClusterParameters, MemberState};
    let read = if item == crate::keys::PARAMETERS {
        value().and_then(|v| decode_value::<ClusterParameters>(item, v)).map(|p| view.parameters = Some(p))
    } else if item == crate::keys::BACKUP {
        value().and_then(|v| decode_value::<crate::backup::BackupConfig>(item, v)).map(|b| view.backup = Some(b))
    } else if let Some(name) = item.strip_prefix(crate::keys::STATE_PREFIX) {
        value().and_then(|v| decode_value::<MemberState>(item, v)).and_then(|s| {
            if s.name != name {
                return Err(StoreError::malformed(item, format!("holds the state of member {:?}", s.name)));
            }
            view.states.insert(s.name.clone(), s);
            Ok(())
        })
    } else {
        Ok(())
    };
    if let Err(e) = read {
        skip_unreadable(&mut view.unreadable, cluster, e);
    }
}

/// The version check of a compare-and-set write: `Conflict` unless `stored == expected`.
pub fn check_version(item: &str, expected: Option<u64>, stored: Option<u64>) -> Result<(), StoreError> {
    if stored == expected {
        Ok(())
    } else {
        Err(StoreError::conflict(item, format!("expected version {expected:?}, stored {stored:?}")))
    }
}

/// Logs an unreadable history or event item that a read skipped.
pub fn warn_unreadable(cluster: &str, error: &StoreError) {
    tracing::warn!(cluster, error = %error, "store record unreadable: skipped (docs/upgrading.md)");
}

/// Records a member, history or event item that could not be read: it is skipped (never
/// blocking the rest of the read), logged, and returned to the caller to show.
pub fn skip_unreadable(out: &mut Vec<crate::model::UnreadableItem>, cluster: &str, error: StoreError) {
    warn_unreadable(cluster, &error);
    let (item, error) = match error {
        StoreError::Malformed { item, reason } => (item, reason),
        other => (String::new(), other.to_string()),
    };
    out.push(crate::model::UnreadableItem { item, error });
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
