//! Which members the coordinator may promote (S4, docs/design.md section 3), and the best of them.

use super::observe::{Liveness, Observations};
use super::CoordinatorConfig;
use crate::config::SyncMode;
use crate::lsn::Lsn;
use crate::model::{ClusterRecord, ClusterView, MemberStatus, Role};

/// S4: which members may be promoted, and the best of them.
pub struct Eligibility<'a> {
    view: &'a ClusterView,
    record: &'a ClusterRecord,
    obs: &'a Observations,
    config: &'a CoordinatorConfig,
    sync_term: u64,
    exclude: &'a [&'a str],
    timeline: u32,
    most_advanced: Option<Lsn>,
}

impl<'a> Eligibility<'a> {
    /// `sync_term`: the term whose synchronous standbys are eligible in synchronous mode (the
    /// current one before a transition, the transition's `from_term` during one).
    pub fn new(
        view: &'a ClusterView,
        record: &'a ClusterRecord,
        obs: &'a Observations,
        config: &'a CoordinatorConfig,
        sync_term: u64,
        exclude: &'a [&'a str],
    ) -> Self {
        let reachable = |m: &&MemberStatus| obs.member(&m.name).is_fresh() && m.pg_running && m.role == Role::Replica;
        // The current timeline: the old primary's last reported one, or the newest any
        // reachable replica reports.
        let primary_tl = record.primary.as_ref().and_then(|p| view.members.get(p)).map_or(0, |s| s.timeline);
        let timeline = view.members.values().filter(reachable).map(|m| m.timeline).fold(primary_tl, u32::max);
        // Every replica's last reported position counts, whatever its liveness: one not yet
        // judged may be alive, and a stale heartbeat means its agent stopped reporting, not that
        // its Postgres lost the WAL it reported (it usually keeps running). Promoting further
        // behind it would lose that WAL silently (S4); an operator's forced failover, or the
        // member reporting again, ends the wait. Old timelines are left out just below, so a
        // member that stopped reporting long ago never holds back a later failover.
        let maybe_reachable = |m: &&MemberStatus| m.pg_running && m.role == Role::Replica;
        // Only the current timeline's positions compare: WAL an old-timeline replica holds past
        // the switch point was discarded by an earlier failover, and before it it is just behind.
        let reported =
            view.members.values().filter(maybe_reachable).filter(|m| m.timeline >= timeline).filter_map(|m| m.wal_position());
        // A replica whose Postgres is down (a crash, a restart) reports no position; the one
        // this coordinator saw before still holds, the WAL being on its disk.
        let remembered = view
            .members
            .values()
            .filter(|m| !m.pg_running)
            .filter_map(|m| obs.member(&m.name).last_replica_position)
            .filter(|(tl, _)| *tl >= timeline)
            .map(|(_, pos)| pos);
        let most_advanced = reported.chain(remembered).max();
        Eligibility { view, record, obs, config, sync_term, exclude, timeline, most_advanced }
    }

    /// Members not yet observed long enough to judge (excluded ones aside).
    pub fn unknown_members(&self) -> Vec<String> {
        self.view
            .members
            .keys()
            .filter(|n| !self.exclude.contains(&n.as_str()) && self.obs.member(n).liveness == Liveness::Unknown)
            .cloned()
            .collect()
    }

    /// Why `m` may not be promoted, if it may not.
    pub fn check(&self, m: &MemberStatus) -> Result<(), String> {
        if self.exclude.contains(&m.name.as_str()) {
            return Err("it is the primary being replaced".into());
        }
        match self.obs.member(&m.name).liveness {
            Liveness::Fresh => {}
            Liveness::Unknown => return Err("heartbeat not yet observed changing".into()),
            Liveness::Stale { unchanged_for } => return Err(format!("heartbeat stale for {} ms", unchanged_for.as_millis())),
        }
        if !m.pg_running {
            return Err("Postgres not running".into());
        }
        if m.role != Role::Replica {
            return Err(format!("not in recovery (role {:?})", m.role).to_lowercase());
        }
        if m.tags.nofailover {
            return Err("tagged nofailover".into());
        }
        if m.timeline < self.timeline {
            return Err(format!("on timeline {} behind the current {}", m.timeline, self.timeline));
        }
        if self.record.config.synchronous_mode != SyncMode::Off {
            // Every recorded member holds every acknowledged commit (agent::sync keeps it so). A
            // term recorded `degraded` (mode `on`, commits acknowledged asynchronously) has no
            // member: no automatic failover out of it (S4, as Patroni); the old primary resumes
            // when it returns, or an operator forces a failover.
            let listed = self.record.sync.as_ref().is_some_and(|s| s.term == self.sync_term && s.members.contains(&m.name));
            if !listed {
                return Err(format!("synchronous mode: not a synchronous standby of term {}", self.sync_term));
            }
        }
        if m.wal_position().is_none() {
            return Err("reports no WAL position".into());
        }
        if let Some(why) = self.overtaken(m) {
            return Err(why);
        }
        let _ = self.config;
        Ok(())
    }

    /// `m` is further behind the most advanced replica than `maximum_lag_on_failover` (S4).
    pub fn overtaken(&self, m: &MemberStatus) -> Option<String> {
        let (pos, best) = (m.wal_position()?, self.most_advanced?);
        let behind = best.bytes_ahead_of(pos);
        let max = self.record.config.maximum_lag_on_failover;
        (behind > max).then(|| format!("{behind} bytes behind the most advanced replica (maximum_lag_on_failover {max})"))
    }

    /// The best eligible member (S4 ties: received LSN, replayed LSN, priority, name), or why
    /// there is none (every member's reason).
    pub fn best(&self) -> Result<String, String> {
        let mut eligible = Vec::new();
        let mut why = Vec::new();
        for m in self.view.members.values() {
            if self.exclude.contains(&m.name.as_str()) {
                continue;
            }
            match self.check(m) {
                Ok(()) => eligible.push(m),
                Err(e) => why.push(format!("{}: {e}", m.name)),
            }
        }
        eligible
            .into_iter()
            .max_by(|a, b| {
                let key = |m: &MemberStatus| (m.receive_lsn.or(m.replay_lsn), m.replay_lsn, m.tags.priority);
                key(a).cmp(&key(b)).then_with(|| b.name.cmp(&a.name))
            })
            .map(|m| m.name.clone())
            .ok_or_else(|| if why.is_empty() { "no other members".to_string() } else { why.join("; ") })
    }
}
