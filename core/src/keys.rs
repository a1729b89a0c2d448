//! Item names inside a cluster's partition (DynamoDB sort key `item`, etcd key suffix).

pub const LEADER: &str = "leader";
pub const CLUSTER: &str = "cluster";
pub const COORDINATOR_LOCK: &str = "lock#coordinator";
/// Held by the agent initialising a new cluster (automatic bootstrap, docs/bootstrap.md).
pub const INITIALIZE_LOCK: &str = "lock#initialize";
pub const MEMBER_PREFIX: &str = "member#";
/// Cluster-wide PostgreSQL parameters ([`crate::params::ClusterParameters`]).
pub const PARAMETERS: &str = "config#postgresql";
/// Backup schedule, retention and restore source ([`crate::backup::BackupConfig`]).
pub const BACKUP: &str = "config#backup";
/// What each agent reports beside its heartbeat ([`crate::params::MemberState`]).
pub const STATE_PREFIX: &str = "state#";
pub const HISTORY_PREFIX: &str = "history#";
/// `~` sorts after every other item name (names are letters, digits, `_`, `-`, `#`), so the
/// event log is the tail of a cluster's partition and [`VIEW_END`] bounds everything else.
pub const EVENT_PREFIX: &str = "~event#";
/// Every item but the event log sorts below this: `read_view` reads `[start, VIEW_END)` and so
/// never pages through a growing log.
pub const VIEW_END: &str = "~";

pub fn member(name: &str) -> String {
    format!("{MEMBER_PREFIX}{name}")
}

pub fn state(name: &str) -> String {
    format!("{STATE_PREFIX}{name}")
}

/// History items sort by term as strings, so the term is zero-padded to 20 digits (u64::MAX).
pub fn history(term: u64) -> String {
    format!("{HISTORY_PREFIX}{term:020}")
}

/// Events sort by time, then id: `~event#<ms, 20 digits>#<id>`.
pub fn event(time_ms: u64, id: &str) -> String {
    format!("{EVENT_PREFIX}{time_ms:020}#{id}")
}

/// The (exclusive) end of the event log's key range: `$` sorts right after `#`.
pub const EVENT_END: &str = "~event$";

/// The cluster's entry in the fleet registry ([`crate::Store::register_cluster`]). It sorts
/// after the event log, outside every range a reader of any release reads (`read_view` stops at
/// [`VIEW_END`], the event log at [`EVENT_END`]), so older agents and coordinators never meet it.
pub const REGISTRATION: &str = "~registry";

/// A cluster name must be usable as a DynamoDB key and an etcd path segment.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    validate_name("cluster", name)
}

/// A member name becomes part of item keys, replication slot names and application_name.
pub fn validate_member_name(name: &str) -> Result<(), String> {
    validate_name("member", name)
}

fn validate_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("{what} name {name:?} must be 1 to 63 characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{what} name {name:?} may contain only letters, digits, '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_by_term() {
        assert!(history(9) < history(10));
        assert_eq!(member("a"), "member#a");
        for item in
            [CLUSTER, LEADER, COORDINATOR_LOCK, &member("z"), &history(u64::MAX), "term#leader", PARAMETERS, BACKUP, &state("z")]
        {
            assert!(item < VIEW_END && VIEW_END < event(0, "").as_str(), "{item}");
        }
        assert!(event(u64::MAX, "zzz").as_str() < EVENT_END);
        assert!(EVENT_END < REGISTRATION && !REGISTRATION.starts_with(EVENT_PREFIX));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_member_name("node-1_a").is_ok());
        assert!(validate_member_name("").is_err());
        assert!(validate_member_name("a/b").is_err());
        assert!(validate_cluster_name(&"x".repeat(64)).is_err());
    }
}
