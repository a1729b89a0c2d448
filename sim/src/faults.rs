//! The fault script of a run, drawn from its seed before the run starts. Targets are resolved
//! when a fault fires (most faults prefer whichever node is the primary at that moment), and each
//! fault schedules its own heal.

use pgdaemon_core::RequestAction;

use crate::rng::Rng;
use crate::world::{Us, MS, SEC};

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// The node accepting writes when the fault fires (a random node if none does).
    Primary,
    /// A random replica at that moment.
    Replica,
    Node(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    AgentCrash {
        target: Target,
        down_for: Us,
    },
    /// Postgres dies under a live agent; for `restart_fails_for` it cannot be started again in
    /// place (a zombie postmaster in the lock file, recovery that cannot finish).
    PgCrash {
        target: Target,
        restart_fails_for: Us,
    },
    NodeCrash {
        target: Target,
        down_for: Us,
    },
    AgentHang {
        target: Target,
        hung_for: Us,
    },
    StorePartition {
        target: Target,
        for_: Us,
    },
    NodePartition {
        target: Target,
        other: Target,
        for_: Us,
    },
    CoordinatorPartition {
        slot: usize,
        for_: Us,
    },
    StoreLatency {
        min: Us,
        max: Us,
        for_: Us,
    },
    StoreOutage {
        for_: Us,
    },
    MessageDelay {
        delay: Us,
        for_: Us,
    },
    ClockDrift {
        target: Target,
        ppm: i64,
        for_: Us,
    },
    WallJump {
        target: Target,
        by_ms: i64,
    },
    CoordinatorKill,
    TwoCoordinators {
        for_: Us,
    },
    ManualRequest {
        action: RequestAction,
        candidate: Option<Target>,
    },
    /// A replica's WAL receiver stalls (slow disk or network): its lag grows past
    /// `maximum_lag_on_failover`, which tests candidate eligibility (S4).
    ReplicaStall {
        target: Target,
        for_: Us,
    },
    /// Records a newer pgdaemon (or a broken writer) leaves behind appear in the store: the
    /// target's heartbeat rewritten by a "newer agent" (unknown fields, format 2, readable), and
    /// unreadable member items (garbage, one for newer readers only, one under another member's
    /// key), plus newer and garbage history and event items. Nothing may block a failover.
    BadRecords {
        target: Target,
    },
}

impl FaultKind {
    /// Counter name (the report groups faults by it).
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::AgentCrash { .. } => "agent_crash",
            FaultKind::PgCrash { .. } => "postgres_crash",
            FaultKind::NodeCrash { .. } => "node_crash",
            FaultKind::AgentHang { .. } => "agent_hang",
            FaultKind::StorePartition { .. } => "partition_node_store",
            FaultKind::NodePartition { .. } => "partition_node_node",
            FaultKind::CoordinatorPartition { .. } => "partition_coordinator_store",
            FaultKind::StoreLatency { .. } => "store_latency_spike",
            FaultKind::StoreOutage { .. } => "store_outage",
            FaultKind::MessageDelay { .. } => "message_delay",
            FaultKind::ClockDrift { .. } => "clock_drift",
            FaultKind::WallJump { .. } => "wall_clock_jump",
            FaultKind::CoordinatorKill => "coordinator_kill",
            FaultKind::TwoCoordinators { .. } => "two_coordinators",
            FaultKind::ManualRequest { action: RequestAction::Switchover, .. } => "manual_switchover",
            FaultKind::ManualRequest { action: RequestAction::Failover, .. } => "manual_failover",
            FaultKind::ManualRequest { .. } => "manual_pause_resume",
            FaultKind::ReplicaStall { .. } => "replica_stall",
            FaultKind::BadRecords { .. } => "bad_records",
        }
    }
}

/// Shape of the fault mix.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Faults are injected in `[start, start + window)`.
    pub start: Us,
    pub window: Us,
    pub count: usize,
    /// Largest clock rate error (ppm) a drift fault may apply.
    pub max_drift_ppm: i64,
}

fn target(rng: &mut Rng, nodes: usize) -> Target {
    match rng.below(10) {
        0..=5 => Target::Primary,
        6..=7 => Target::Replica,
        _ => Target::Node(rng.below(nodes as u64) as usize),
    }
}

fn secs(rng: &mut Rng, lo: u64, hi: u64) -> Us {
    rng.range(lo * SEC, hi * SEC)
}

/// Draws the script: `(time, fault)` sorted by time.
pub fn script(rng: &mut Rng, nodes: usize, plan: &FaultPlan) -> Vec<(Us, FaultKind)> {
    let mut out = Vec::with_capacity(plan.count);
    for _ in 0..plan.count {
        let at = plan.start + rng.below(plan.window.max(1));
        let t = target(rng, nodes);
        let kind = match rng.below(24) {
            0..=1 => FaultKind::AgentCrash { target: t, down_for: secs(rng, 1, 30) },
            2..=3 => FaultKind::PgCrash { target: t, restart_fails_for: if rng.chance(0.5) { secs(rng, 5, 120) } else { 0 } },
            4..=5 => FaultKind::NodeCrash { target: t, down_for: secs(rng, 5, 90) },
            6..=7 => FaultKind::AgentHang { target: t, hung_for: secs(rng, 2, 60) },
            8..=9 => FaultKind::StorePartition { target: t, for_: secs(rng, 2, 60) },
            10 => FaultKind::NodePartition { target: t, other: target(rng, nodes), for_: secs(rng, 2, 60) },
            11 => FaultKind::CoordinatorPartition { slot: rng.below(2) as usize, for_: secs(rng, 5, 120) },
            12 => {
                let min = rng.range(100 * MS, 1000 * MS);
                FaultKind::StoreLatency { min, max: min + rng.range(0, 4000 * MS), for_: secs(rng, 5, 60) }
            }
            13 => FaultKind::StoreOutage { for_: secs(rng, 2, 60) },
            14 => FaultKind::MessageDelay { delay: rng.range(100 * MS, 10 * SEC), for_: secs(rng, 5, 60) },
            15 => {
                let ppm = rng.range(100, plan.max_drift_ppm.max(100) as u64) as i64;
                let ppm = if rng.chance(0.5) { ppm } else { -ppm };
                FaultKind::ClockDrift { target: t, ppm, for_: secs(rng, 30, 300) }
            }
            16 => {
                let by = rng.range(1_000, 86_400_000) as i64;
                FaultKind::WallJump { target: t, by_ms: if rng.chance(0.5) { by } else { -by } }
            }
            17 => FaultKind::CoordinatorKill,
            18 => FaultKind::TwoCoordinators { for_: secs(rng, 10, 120) },
            19..=20 => FaultKind::ReplicaStall { target: Target::Replica, for_: secs(rng, 30, 240) },
            23 => FaultKind::BadRecords { target: t },
            _ => {
                let action = match rng.below(6) {
                    0..=2 => RequestAction::Switchover,
                    3..=4 => RequestAction::Failover,
                    _ => RequestAction::Pause,
                };
                let candidate = if rng.chance(0.5) { Some(Target::Replica) } else { None };
                FaultKind::ManualRequest { action, candidate }
            }
        };
        out.push((at, kind));
    }
    out.sort_by_key(|(t, _)| *t);
    out
}
