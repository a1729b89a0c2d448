//! What the coordinator has *observed* on its own monotonic clock: lease changes (rvn) and
//! heartbeat changes (seq). Liveness is judged only by observed change, never by timestamps
//! written on other hosts (S3).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::lease::{LeaseObserver, LeaseState};
use crate::lsn::Lsn;
use crate::model::{ClusterView, Role};

use super::probe::AgentReach;

/// How a member's heartbeat looks to this coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Its `seq` changed while observed, most recently less than the stale threshold ago.
    Fresh,
    /// Its `seq` has not changed for at least the stale threshold (or it has no heartbeat record
    /// at all, `unchanged_for` zero then).
    Stale { unchanged_for: Duration },
    /// Watched for less than the stale threshold without a change yet: no conclusion possible.
    Unknown,
}

/// One member as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberObservation {
    pub liveness: Liveness,
    /// How long its heartbeats have continuously reported Postgres not running.
    pub pg_down_for: Option<Duration>,
    /// While its Postgres is down: the timeline and WAL position it last reported as a running
    /// replica (seen by this coordinator). The WAL is still on its disk, so it still bounds a
    /// candidate's lag (S4) although the heartbeat carries no position now.
    pub last_replica_position: Option<(u32, Lsn)>,
    /// How long ago this coordinator last saw its `seq` change (`None`: not yet seen changing).
    pub changed_ago: Option<Duration>,
}

impl MemberObservation {
    /// Fresh, its heartbeat seen changing just now.
    pub fn fresh() -> Self {
        MemberObservation {
            liveness: Liveness::Fresh,
            pg_down_for: None,
            last_replica_position: None,
            changed_ago: Some(Duration::ZERO),
        }
    }
    pub fn is_fresh(&self) -> bool {
        self.liveness == Liveness::Fresh
    }
}

/// Whether this coordinator holds the coordinator lock for the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockStatus {
    Held,
    Other { owner: String },
}

/// Everything `evaluate` needs besides the store snapshot, all taken by this coordinator.
#[derive(Debug, Clone, PartialEq)]
pub struct Observations {
    /// Wall clock, only for records shown to humans (transition and history times).
    pub now_wall_ms: u64,
    /// The leader lease judged by this coordinator's own observer.
    pub leader: LeaseState,
    /// Members by name (members without a heartbeat record are absent).
    pub members: BTreeMap<String, MemberObservation>,
    /// How long this coordinator has seen the current transition in its current step (with the
    /// same pending fence handle); `None` when no transition is in progress.
    pub step_age: Option<Duration>,
    pub lock: LockStatus,
    /// This run's probe of the primary's agent (the old primary's during a transition), if one
    /// was made.
    pub agent: Option<AgentSighting>,
}

/// What this coordinator's probes of one member's agent showed ([`super::probe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSighting {
    pub member: String,
    /// This run's answer, taken after the snapshot was read.
    pub reach: AgentReach,
    /// Consecutive refused probes, this one included (0 unless `reach` is `Refused`).
    pub refused_probes: u32,
    /// Time since the first of those refusals.
    pub refused_for: Duration,
}

impl AgentSighting {
    /// Refused now, by at least two consecutive probes spanning `at_least`.
    pub fn refused_for_at_least(&self, member: &str, at_least: Duration) -> bool {
        self.member == member && self.reach == AgentReach::Refused && self.refused_probes >= 2 && self.refused_for >= at_least
    }

    /// This run's probe of `member`'s agent was refused.
    pub fn refused_now(&self, member: &str) -> bool {
        self.member == member && self.reach == AgentReach::Refused
    }
}

impl Observations {
    /// The observation of `name`; a member without a heartbeat record counts as stale.
    pub fn member(&self, name: &str) -> MemberObservation {
        self.members.get(name).copied().unwrap_or(MemberObservation {
            liveness: Liveness::Stale { unchanged_for: Duration::ZERO },
            pg_down_for: None,
            last_replica_position: None,
            changed_ago: None,
        })
    }
}

#[derive(Debug, Clone)]
struct SeqWatch {
    seq: u64,
    first_seen: Duration,
    last_change: Option<Duration>,
    pg_down_since: Option<Duration>,
    last_replica_position: Option<(u32, Lsn)>,
}

/// Turns successive snapshots of one cluster into [`Observations`].
#[derive(Debug, Clone, Default)]
pub struct Watch {
    leader: LeaseObserver,
    members: BTreeMap<String, SeqWatch>,
    step: Option<(String, Duration)>,
    /// The probed member, its consecutive refusals and when the first of them was seen.
    refusals: Option<(String, u32, Duration)>,
}

impl Watch {
    pub fn new() -> Self {
        Self::default()
    }

    /// A read of the cluster failed. The primary may be cut off by the same outage and unable to
    /// renew (and in failsafe mode legitimately keeps running on its peers' acknowledgements), so
    /// an rvn seen unchanged across the outage proves nothing: lease watching starts over. After
    /// an outage the former primary re-takes its own lease first; a dead one is failed over one
    /// lease duration after the store answers again (docs/store-outages.md).
    pub fn lost_sight(&mut self) {
        self.leader.reset();
    }

    /// Records one snapshot read that returned at monotonic time `now`.
    pub fn observe(
        &mut self,
        view: &ClusterView,
        now: Duration,
        stale_after: Duration,
        now_wall_ms: u64,
        lock: LockStatus,
    ) -> Observations {
        self.observe_with_probe(view, now, stale_after, now_wall_ms, lock, None)
    }

    /// [`Self::observe`] with this run's probe of `probe.0`'s agent, made after `view` was read.
    pub fn observe_with_probe(
        &mut self,
        view: &ClusterView,
        now: Duration,
        stale_after: Duration,
        now_wall_ms: u64,
        lock: LockStatus,
        probe: Option<(&str, AgentReach)>,
    ) -> Observations {
        // Refusals count only across consecutive runs that probed.
        let agent = match probe {
            Some((member, reach)) => Some(self.count_refusals(member, reach, now)),
            None => {
                self.refusals = None;
                None
            }
        };
        let leader = self.leader.observe(view.leader.as_ref(), now);
        self.members.retain(|name, _| view.members.contains_key(name));
        let mut members = BTreeMap::new();
        for (name, status) in &view.members {
            let w = self.members.entry(name.clone()).or_insert_with(|| SeqWatch {
                seq: status.seq,
                first_seen: now,
                last_change: None,
                pg_down_since: None,
                last_replica_position: None,
            });
            if status.seq != w.seq {
                w.seq = status.seq;
                w.last_change = Some(now);
            }
            if status.pg_running {
                w.pg_down_since = None;
                w.last_replica_position = match (status.role, status.wal_position()) {
                    (Role::Replica, Some(pos)) => Some((status.timeline, pos)),
                    _ => None,
                };
            } else if w.pg_down_since.is_none() {
                w.pg_down_since = Some(now);
            }
            let unchanged_for = now.saturating_sub(w.last_change.unwrap_or(w.first_seen));
            let liveness = if unchanged_for >= stale_after {
                Liveness::Stale { unchanged_for }
            } else if w.last_change.is_some() {
                Liveness::Fresh
            } else {
                Liveness::Unknown
            };
            let pg_down_for = w.pg_down_since.map(|s| now.saturating_sub(s));
            let last_replica_position = if status.pg_running { None } else { w.last_replica_position };
            let changed_ago = w.last_change.map(|c| now.saturating_sub(c));
            members.insert(name.clone(), MemberObservation { liveness, pg_down_for, last_replica_position, changed_ago });
        }
        let step_age = view.cluster.as_ref().and_then(|c| c.transition.as_ref()).map(|t| {
            let key =
                format!("{}/{:?}/{:?}", t.term, t.step, t.fence.as_ref().and_then(|f| f.pending.as_ref()).map(|p| &p.handle));
            match &self.step {
                Some((k, since)) if *k == key => now.saturating_sub(*since),
                _ => {
                    self.step = Some((key, now));
                    Duration::ZERO
                }
            }
        });
        if step_age.is_none() {
            self.step = None;
        }
        Observations { now_wall_ms, leader, members, step_age, lock, agent }
    }

    fn count_refusals(&mut self, member: &str, reach: AgentReach, now: Duration) -> AgentSighting {
        let (refused_probes, refused_for) = if reach == AgentReach::Refused {
            let entry = match self.refusals.take() {
                Some((m, n, since)) if m == member => (m, n + 1, since),
                _ => (member.to_string(), 1, now),
            };
            let counted = (entry.1, now.saturating_sub(entry.2));
            self.refusals = Some(entry);
            counted
        } else {
            self.refusals = None;
            (0, Duration::ZERO)
        };
        AgentSighting { member: member.to_string(), reach, refused_probes, refused_for }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MemberStatus;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn view(seq: u64, running: bool) -> ClusterView {
        let mut m = MemberStatus::new("n1");
        m.seq = seq;
        m.pg_running = running;
        let mut v = ClusterView::default();
        v.members.insert("n1".into(), m);
        v
    }

    #[test]
    fn liveness_needs_an_observed_change() {
        let mut w = Watch::new();
        let stale = MS(3000);
        let o = |w: &mut Watch, seq, at| w.observe(&view(seq, true), MS(at), stale, 0, LockStatus::Held).member("n1").liveness;
        assert_eq!(o(&mut w, 5, 0), Liveness::Unknown);
        assert_eq!(o(&mut w, 5, 2999), Liveness::Unknown);
        assert_eq!(o(&mut w, 6, 3100), Liveness::Fresh);
        assert_eq!(o(&mut w, 6, 6099), Liveness::Fresh);
        assert_eq!(o(&mut w, 6, 6100), Liveness::Stale { unchanged_for: MS(3000) });
        let mut w2 = Watch::new();
        assert_eq!(o(&mut w2, 1, 0), Liveness::Unknown);
        assert_eq!(o(&mut w2, 1, 3000), Liveness::Stale { unchanged_for: MS(3000) });
    }

    #[test]
    fn a_failed_read_restarts_lease_watching_with_or_without_failsafe() {
        use crate::config::DynamicConfig;
        use crate::model::{ClusterRecord, LeaderLease};
        let stale = MS(3000);
        let lease = LeaderLease { owner: "n1".into(), term: 1, rvn: "r".into(), lease_ms: 4000, released: false };
        for failsafe in [false, true] {
            let mut v = view(1, true);
            v.cluster = Some(ClusterRecord::bootstrap("n1", DynamicConfig { failsafe_mode: failsafe, ..Default::default() }));
            v.leader = Some(lease.clone());
            let mut w = Watch::new();
            for t in 0..=4 {
                w.observe(&v, MS(t * 1000), stale, 0, LockStatus::Held);
            }
            // Read every second without a failure, 4 s of the same rvn is an expired lease.
            assert!(matches!(w.clone().observe(&v, MS(4000), stale, 0, LockStatus::Held).leader, LeaseState::Expired(_)));
            w.lost_sight(); // the store was unreachable for a moment
            let o = w.observe(&v, MS(5000), stale, 0, LockStatus::Held);
            assert!(matches!(o.leader, LeaseState::Held { .. }), "failsafe {failsafe}: {:?}", o.leader);
        }
    }

    #[test]
    fn a_replica_position_is_remembered_while_its_postgres_is_down() {
        let mut w = Watch::new();
        let stale = MS(3000);
        let mut v = view(1, true);
        let m = v.members.get_mut("n1").unwrap();
        m.role = Role::Replica;
        m.timeline = 2;
        m.receive_lsn = Some(Lsn(0x5000));
        assert_eq!(
            w.observe(&v, MS(0), stale, 0, LockStatus::Held).member("n1").last_replica_position,
            None,
            "running: its heartbeat says it"
        );
        let o = w.observe(&view(2, false), MS(1000), stale, 0, LockStatus::Held);
        assert_eq!(o.member("n1").last_replica_position, Some((2, Lsn(0x5000))));
        // Running again (here as a primary): the old replica position no longer applies.
        let mut p = view(3, true);
        p.members.get_mut("n1").unwrap().role = Role::Primary;
        w.observe(&p, MS(2000), stale, 0, LockStatus::Held);
        assert_eq!(w.observe(&view(4, false), MS(3000), stale, 0, LockStatus::Held).member("n1").last_replica_position, None);
    }

    #[test]
    fn refusals_count_only_while_consecutive_and_for_one_member() {
        let mut w = Watch::new();
        let stale = MS(3000);
        let mut probe = |member: &str, reach, at| {
            w.observe_with_probe(&view(1, true), MS(at), stale, 0, LockStatus::Held, Some((member, reach))).agent.unwrap()
        };
        let first = probe("n1", AgentReach::Refused, 0);
        assert_eq!((first.refused_probes, first.refused_for), (1, MS(0)));
        assert!(first.refused_now("n1") && !first.refused_for_at_least("n1", MS(0)), "one refusal is not enough");
        let second = probe("n1", AgentReach::Refused, 700);
        assert!(second.refused_for_at_least("n1", MS(700)) && !second.refused_for_at_least("n1", MS(701)));
        assert!(!second.refused_for_at_least("n2", MS(0)));
        // An answer (or silence) in between starts the count over.
        assert_eq!(probe("n1", AgentReach::NoAnswer, 900).refused_probes, 0);
        assert_eq!(probe("n1", AgentReach::Refused, 1000).refused_for, MS(0));
        // So does a different member.
        assert_eq!(probe("n2", AgentReach::Refused, 1500).refused_probes, 1);
        assert_eq!(probe("n2", AgentReach::Refused, 2500).refused_for, MS(1000));
    }

    #[test]
    fn pg_down_duration_resets_when_it_runs_again() {
        let mut w = Watch::new();
        let stale = MS(3000);
        w.observe(&view(1, false), MS(0), stale, 0, LockStatus::Held);
        let o = w.observe(&view(2, false), MS(1000), stale, 0, LockStatus::Held);
        assert_eq!(o.member("n1").pg_down_for, Some(MS(1000)));
        let o = w.observe(&view(3, true), MS(2000), stale, 0, LockStatus::Held);
        assert_eq!(o.member("n1").pg_down_for, None);
    }
}
