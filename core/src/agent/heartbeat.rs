//! The member heartbeat: what this agent publishes about itself, and when.
//!
//! Every heartbeat is a store write. An idle member publishes once per [`period`], one probe
//! interval short of `renew_interval_ms`, and at once when anything an observer acts on changed
//! (role, running, timeline, WAL positions, streaming, term, the lease it sees, failsafe). The
//! coordinator's staleness threshold is at least two renew intervals on every version, and an
//! observer reading every second sees a `seq` unchanged for less than the period plus its own
//! read interval: well inside it.

use std::time::Duration;

use super::input::{AgentInput, StoreRead};
use crate::config::DynamicConfig;
use crate::model::{MemberStatus, Role};
use crate::pg::PgProbe;

/// Heartbeat records expire (DynamoDB TTL garbage collection only) a day after the last beat.
const HEARTBEAT_TTL_S: u64 = 24 * 3600;

/// The heartbeat for this loop, from the probe (state before this loop's actions).
pub(super) fn heartbeat(input: &AgentInput) -> MemberStatus {
    let id = &input.identity;
    let probe = &input.probe;
    let mut m = MemberStatus::new(id.member.clone());
    m.role = if probe.running { probe.role } else { Role::Unknown };
    m.pg_running = probe.running;
    m.timeline = probe.timeline;
    m.write_lsn = probe.write_lsn;
    m.receive_lsn = probe.receive_lsn;
    m.replay_lsn = probe.replay_lsn;
    m.streaming = probe.streaming;
    m.seq = input.seq;
    m.instance_id = id.instance_id.clone();
    m.availability_zone = id.availability_zone.clone();
    m.tags = id.tags.clone();
    m.agent_version = id.agent_version.clone();
    m.api_url = id.api_url.clone();
    m.pg_host = id.pg_host.clone();
    m.pg_port = id.pg_port;
    m.updated_at_ms = input.wall_ms;
    m.expire_at = Some(input.wall_ms / 1000 + HEARTBEAT_TTL_S);
    let mut term = input.held.as_ref().map_or(0, |h| h.lease.term);
    if let StoreRead::Ok(view) = &input.store {
        term = term.max(view.cluster.as_ref().map_or(0, |c| c.term));
    }
    m.term = term;
    if m.role == Role::Replica {
        m.flush_lsn = probe.receive_lsn;
        m.lag_seconds = probe.replay_age.map(|a| a.as_secs_f64());
        // Bytes behind the primary's last published write position.
        if let (StoreRead::Ok(view), Some(pos)) = (&input.store, m.wal_position()) {
            let primary = view.cluster.as_ref().and_then(|c| c.primary.as_deref());
            if let Some(p) = primary.and_then(|p| view.members.get(p)).filter(|p| p.role == Role::Primary) {
                m.lag_bytes = p.write_lsn.map(|w| w.bytes_ahead_of(pos));
            }
        }
    } else {
        m.flush_lsn = probe.flush_lsn;
    }
    let holds = input.held.is_some();
    m.leader_seen = if holds { None } else { input.leader_seen.clone() };
    m.failsafe_members = if holds { input.failsafe.members.clone() } else { None };
    m
}

/// The heartbeat a long operation of the loop's (a basebackup, a rewind) publishes while the
/// loop cannot: `last`, this member's stored heartbeat, with the state of a fresh `probe`, `seq`
/// and `wall_ms`, and no lease sighting (a sighting is evidence the loop makes; an old one must
/// not reach the coordinator as new).
pub fn keep_alive_beat(last: &MemberStatus, probe: &PgProbe, seq: u64, wall_ms: u64) -> MemberStatus {
    let mut m = last.clone();
    m.pg_running = probe.running;
    m.role = if probe.running { probe.role } else { Role::Unknown };
    m.streaming = probe.streaming;
    m.seq = seq;
    m.updated_at_ms = wall_ms;
    m.expire_at = Some(wall_ms / 1000 + HEARTBEAT_TTL_S);
    m.leader_seen = None;
    m.failsafe_members = None;
    m
}

/// How often an unchanged heartbeat goes out: `renew_interval_ms - probe_interval_ms`, at least
/// every loop (3 s at the defaults; every loop with `renew_interval_ms` = 2 probe intervals).
pub fn period(config: &DynamicConfig) -> Duration {
    config.renew_interval().saturating_sub(config.probe_interval()).max(config.probe_interval())
}

/// This loop publishes `next`: nothing published yet, the last publication is a [`period`] old
/// (half a loop of slack, so loop jitter never stretches it by a whole loop), or something
/// other than the loop counters and clocks changed.
pub(super) fn due(input: &AgentInput, next: &MemberStatus) -> bool {
    let Some(last) = &input.last_heartbeat else { return true };
    let slack = input.config.probe_interval() / 2;
    input.now.saturating_sub(last.at) + slack >= period(&input.config) || comparable(&last.status) != comparable(next)
}

/// The heartbeat without what changes on every loop of an idle member: the sequence number,
/// timestamps, the replay age of an idle replica, and the leader lease sighting but for its
/// term (its rvn moves with every renewal; the sighting matters once it stops moving, and goes
/// out with the next periodic heartbeat then).
fn comparable(m: &MemberStatus) -> MemberStatus {
    let mut m = m.clone();
    m.seq = 0;
    m.updated_at_ms = 0;
    m.expire_at = None;
    m.lag_seconds = None;
    if let Some(seen) = m.leader_seen.as_mut() {
        seen.rvn.clear();
        seen.unchanged_ms = 0;
    }
    m
}
