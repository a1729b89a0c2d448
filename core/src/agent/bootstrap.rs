//! Automatic bootstrap: a cluster without a record gets one without an operator (docs/bootstrap.md).
//!
//! Every agent with [`BootstrapPolicy::enabled`] whose data directory is empty asks to
//! initialise ([`super::AgentAction::Initialize`]). Carrying that out, the runtime claims the
//! `lock#initialize` lease by the lock-client rules (free, or unchanged for its whole duration),
//! so exactly one agent at a time initialises; it runs initdb, creates the roles and leaves
//! Postgres stopped, all within the lock's duration less the safety margin, then creates the
//! cluster record naming itself primary in term 1 (create-only: never two records). From there
//! the ordinary rules apply: the named member takes the leader lease and starts as primary, the
//! others clone it with pg_basebackup.
//!
//! Safety: Postgres is writable during initialisation only on its Unix socket (no TCP listener),
//! before any record names it, and only while the lock is valid: no client can reach it and it
//! is never announced, so it is not a primary in the sense of S1/S2. A winner that dies leaves a
//! marker beside its data directory; the next winner (itself after a restart, or another member)
//! starts over, and a leftover directory elsewhere is rebuilt by basebackup like any stale one.
//!
//! Data is never destroyed to bootstrap: an agent only initialises an empty data directory (or
//! its own marked leftover), and not at all while another member's heartbeat shows a database
//! (Postgres running, a role or a timeline). A member whose Postgres is stopped shows none of
//! these (heartbeats carry no data-directory field: 0.1 agents refuse unknown member fields),
//! but its own agent never bootstraps over its data either (docs/bootstrap.md, "Limits").

use std::time::Duration;

use crate::model::{ClusterView, Role};
use crate::pg::{DataDirState, PgProbe};

/// Whether and how this agent may initialise a cluster that has no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPolicy {
    pub enabled: bool,
    /// Duration of the initialize lock: the winner must finish within it (less the safety
    /// margin); others take over after observing it unchanged this long.
    pub lock: Duration,
}

pub const DEFAULT_BOOTSTRAP_LOCK: Duration = Duration::from_secs(60);

impl Default for BootstrapPolicy {
    fn default() -> Self {
        BootstrapPolicy { enabled: false, lock: DEFAULT_BOOTSTRAP_LOCK }
    }
}

/// With no cluster record: `None` when this member may initialise, else why it waits.
pub(super) fn initialize_blocker(policy: &BootstrapPolicy, me: &str, probe: &PgProbe, view: &ClusterView) -> Option<String> {
    if view.cluster.is_some() {
        return Some("the cluster has a record".into());
    }
    if !policy.enabled {
        return Some(String::from(
            "no cluster record: waiting for one (`pgdctl bootstrap --primary <member>` adopts an existing database; \
             [bootstrap] enabled lets the agents initialise a new one)",
        ));
    }
    if probe.running {
        return Some(format!(
            "no cluster record and postgres runs here: adopt it with `pgdctl bootstrap --primary {me}` \
             (automatic bootstrap only initialises an empty data directory)"
        ));
    }
    if probe.data != DataDirState::Empty && !probe.bootstrap_leftover {
        return Some(format!(
            "no cluster record and the data directory holds a database: adopt it with `pgdctl bootstrap --primary {me}` \
             (automatic bootstrap only initialises an empty data directory)"
        ));
    }
    let with_data: Vec<&str> = view
        .members
        .values()
        .filter(|m| m.name != me && (m.pg_running || m.timeline > 0 || m.role != Role::Unknown))
        .map(|m| m.name.as_str())
        .collect();
    if !with_data.is_empty() {
        return Some(format!(
            "no cluster record, but {} report(s) a database: not initialising a new cluster beside it \
             (adopt it with `pgdctl bootstrap --primary <member>`)",
            with_data.join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterRecord, MemberStatus};
    use crate::DynamicConfig;

    fn on() -> BootstrapPolicy {
        BootstrapPolicy { enabled: true, ..Default::default() }
    }

    fn empty() -> PgProbe {
        PgProbe::stopped(DataDirState::Empty)
    }

    fn member(name: &str, f: impl FnOnce(&mut MemberStatus)) -> MemberStatus {
        let mut m = MemberStatus::new(name);
        f(&mut m);
        m
    }

    fn view(members: Vec<MemberStatus>) -> ClusterView {
        ClusterView { members: members.into_iter().map(|m| (m.name.clone(), m)).collect(), ..Default::default() }
    }

    #[test]
    fn an_empty_member_of_a_cluster_without_record_may_initialise() {
        let others = view(vec![member("b", |_| {}), member("c", |_| {})]);
        assert_eq!(initialize_blocker(&on(), "a", &empty(), &others), None);
        let leftover = PgProbe { bootstrap_leftover: true, ..PgProbe::stopped(DataDirState::Primary) };
        assert_eq!(initialize_blocker(&on(), "a", &leftover, &others), None);
    }

    #[test]
    fn existing_data_anywhere_or_a_record_or_the_switch_off_blocks_it() {
        let none = view(vec![]);
        assert!(initialize_blocker(&BootstrapPolicy::default(), "a", &empty(), &none).unwrap().contains("[bootstrap] enabled"));
        let own = PgProbe::stopped(DataDirState::Primary);
        assert!(initialize_blocker(&on(), "a", &own, &none).unwrap().contains("pgdctl bootstrap --primary a"));
        let running = PgProbe { running: true, ..empty() };
        assert!(initialize_blocker(&on(), "a", &running, &none).is_some());
        for other in
            [member("b", |m| m.role = Role::Replica), member("b", |m| m.pg_running = true), member("b", |m| m.timeline = 1)]
        {
            let why = initialize_blocker(&on(), "a", &empty(), &view(vec![other])).unwrap();
            assert!(why.contains("b report(s) a database"), "{why}");
        }
        let recorded = ClusterView { cluster: Some(ClusterRecord::bootstrap("b", DynamicConfig::default())), ..none };
        assert!(initialize_blocker(&on(), "a", &empty(), &recorded).is_some());
    }
}
