//! Replication slots of members that left.
//!
//! A primary keeps one physical slot per member ([`slot_name`]); the slot holds WAL until its
//! member streams it. A member that leaves for good (removed, or its instance replaced under a
//! new name) never streams again, so its slot would hold WAL until the primary's disk is full.
//! [`DepartedSlots`] tracks, on the primary, since when each slot has had neither a member in the
//! cluster view nor a connected walsender; a slot that stays so for the retention is handed to
//! the decision to drop ([`super::AgentAction::DropSlots`]).
//!
//! Conservative by construction: only physical slots that look like pgdaemon's are considered
//! (the probe lists physical slots only); absence is timed by this agent from when it first saw
//! it as primary, so a new primary waits a whole retention again; a store that cannot be read
//! neither starts nor clears a count; a member that reappears, or streams, resets its slot.
//! `max_slot_wal_keep_size` bounds the WAL a slot can hold before the retention runs out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::pg::{slot_name, PgProbe};

/// Default time a departed member's slot is kept: long enough for a node to be rebooted or
/// its agent upgraded, short enough that WAL does not pile up for days.
pub const DEFAULT_DEPARTED_SLOT_RETENTION: Duration = Duration::from_secs(30 * 60);

/// Since when each slot of this primary has had no member (monotonic agent time).
#[derive(Debug, Clone)]
pub struct DepartedSlots {
    retention: Duration,
    orphaned_since: BTreeMap<String, Duration>,
}

impl DepartedSlots {
    pub fn new(retention: Duration) -> Self {
        DepartedSlots { retention, orphaned_since: BTreeMap::new() }
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Updates the tracking from this loop's probe and, when the store was read, the members
    /// in the view (`None`: not read). Returns the slots whose member has been gone, and which
    /// nobody streamed from, for at least the retention.
    pub fn observe<'a>(
        &mut self,
        now: Duration,
        probe: &PgProbe,
        me: &str,
        members: Option<impl IntoIterator<Item = &'a String>>,
    ) -> Vec<String> {
        if !probe.is_primary() {
            self.orphaned_since.clear();
            return Vec::new();
        }
        let Some(members) = members else {
            return Vec::new();
        };
        // Our own name's slot is nobody's: no member streams from itself.
        let wanted: BTreeSet<String> = members.into_iter().filter(|m| m.as_str() != me).map(|m| slot_name(m)).collect();
        let orphans: BTreeSet<&String> =
            probe.slots.iter().filter(|s| !wanted.contains(*s) && !probe.active_slots.contains(s)).collect();
        self.orphaned_since.retain(|slot, _| orphans.contains(slot));
        for slot in orphans {
            self.orphaned_since.entry(slot.clone()).or_insert(now);
        }
        self.orphaned_since
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= self.retention)
            .map(|(slot, _)| slot.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn primary(slots: &[&str], active: &[&str]) -> PgProbe {
        PgProbe {
            running: true,
            role: Role::Primary,
            slots: slots.iter().map(|s| s.to_string()).collect(),
            active_slots: active.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    const R: Duration = Duration::from_secs(60);

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_departed_members_slot_is_returned_once_the_retention_passed() {
        let mut t = DepartedSlots::new(R);
        let members = names(&["pg-1", "pg-2"]);
        let probe = primary(&["pg_2", "pg_3"], &["pg_2"]);
        assert!(t.observe(at(0), &probe, "pg-1", Some(&members)).is_empty());
        assert!(t.observe(at(59), &probe, "pg-1", Some(&members)).is_empty());
        assert_eq!(t.observe(at(60), &probe, "pg-1", Some(&members)), names(&["pg_3"]));
    }

    #[test]
    fn a_member_that_returns_or_streams_resets_its_count() {
        let mut t = DepartedSlots::new(R);
        let without = names(&["pg-1"]);
        let with = names(&["pg-1", "pg-3"]);
        let idle = primary(&["pg_3"], &[]);
        t.observe(at(0), &idle, "pg-1", Some(&without));
        t.observe(at(30), &idle, "pg-1", Some(&with));
        assert!(t.observe(at(70), &idle, "pg-1", Some(&without)).is_empty(), "counted again from 70");
        t.observe(at(100), &primary(&["pg_3"], &["pg_3"]), "pg-1", Some(&without));
        assert!(t.observe(at(150), &idle, "pg-1", Some(&without)).is_empty(), "counted again from 150");
        assert_eq!(t.observe(at(210), &idle, "pg-1", Some(&without)), names(&["pg_3"]));
    }

    #[test]
    fn an_unread_store_neither_starts_nor_ends_a_count() {
        let mut t = DepartedSlots::new(R);
        let members = names(&["pg-1"]);
        let probe = primary(&["pg_3"], &[]);
        assert!(t.observe(at(0), &probe, "pg-1", None::<&Vec<String>>).is_empty());
        assert!(t.observe(at(10), &probe, "pg-1", Some(&members)).is_empty());
        assert!(t.observe(at(100), &probe, "pg-1", None::<&Vec<String>>).is_empty());
        assert_eq!(t.observe(at(101), &probe, "pg-1", Some(&members)), names(&["pg_3"]));
    }

    #[test]
    fn only_a_primary_counts_and_a_new_primary_starts_over() {
        let mut t = DepartedSlots::new(R);
        let members = names(&["pg-1"]);
        t.observe(at(0), &primary(&["pg_3"], &[]), "pg-1", Some(&members));
        let replica = PgProbe { running: true, role: Role::Replica, slots: names(&["pg_3"]), ..Default::default() };
        assert!(t.observe(at(61), &replica, "pg-1", Some(&members)).is_empty());
        assert!(t.observe(at(62), &primary(&["pg_3"], &[]), "pg-1", Some(&members)).is_empty());
        assert_eq!(t.observe(at(122), &primary(&["pg_3"], &[]), "pg-1", Some(&members)), names(&["pg_3"]));
    }

    #[test]
    fn the_primarys_own_name_is_not_a_reason_to_keep_a_slot() {
        let mut t = DepartedSlots::new(R);
        let members = names(&["pg-1", "pg-2"]);
        let probe = primary(&["pg_1", "pg_2"], &[]);
        t.observe(at(0), &probe, "pg-1", Some(&members));
        assert_eq!(t.observe(at(60), &probe, "pg-1", Some(&members)), names(&["pg_1"]));
    }
}
