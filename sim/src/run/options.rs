//! What a run is asked to simulate ([`Options`]) and what it found ([`RunResult`]).

use pgdaemon_core::coordinator::FencingPolicy;
use pgdaemon_core::SyncMode;

use crate::world::{Broken, Counters, Us, SEC};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub broken: Broken,
    /// Cluster size (default: drawn from the seed, 2 to 5).
    pub nodes: Option<usize>,
    /// Fencing policy (default: drawn from the seed, mostly `Required`).
    pub fencing: Option<FencingPolicy>,
    pub sync_mode: SyncMode,
    /// Failsafe mode (docs/failsafe.md) in the dynamic configuration (default: off; `None`:
    /// drawn from the seed, half the seeds).
    pub failsafe: Option<bool>,
    /// The cluster starts with empty data directories and no record, the agents bootstrap it
    /// (agent::bootstrap); default off, `None`: drawn from the seed, half the seeds.
    pub bootstrap: Option<bool>,
    /// Number of faults (default: drawn from the seed, 1 to 10).
    pub faults: Option<usize>,
    /// After the last fault heals, a writable designated primary must exist within this long.
    pub liveness_bound: Us,
    /// Largest clock rate error injected (ppm). The design assumes < 1 %.
    pub max_drift_ppm: i64,
    pub trace_lines: usize,
    /// The coordinator wakes agents (and `/demote` its agent's loop); off: as before the wake.
    pub wake: bool,
    /// Besides the schedule and the fast path, the coordinator also runs every second, warm, as
    /// the agent-hosted one does (`None`: drawn from the seed, half the seeds).
    pub hosted: Option<bool>,
    /// The fence chain is `http`, `command`, `ec2` instead of `http`, `ec2` (`None`: drawn from
    /// the seed, half the seeds).
    pub command_fencer: Option<bool>,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Options {
            seed,
            broken: Broken::None,
            nodes: None,
            fencing: None,
            sync_mode: SyncMode::Off,
            failsafe: Some(false),
            bootstrap: Some(false),
            faults: None,
            liveness_bound: 180 * SEC,
            max_drift_ppm: 10_000,
            trace_lines: 4000,
            wake: true,
            hosted: None,
            command_fencer: None,
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub seed: u64,
    pub nodes: usize,
    pub fencing: FencingPolicy,
    pub failsafe: bool,
    /// Started from empty data directories (automatic bootstrap).
    pub bootstrap: bool,
    /// The coordinator also ran every second (Options::hosted).
    pub hosted: bool,
    /// The fence chain held the command fencer (Options::command_fencer).
    pub command_fencer: bool,
    pub violation: Option<String>,
    /// The simulator itself failed (e.g. a future pending on something that is not virtual time).
    pub sim_error: Option<String>,
    pub trace: String,
    pub counters: Counters,
    /// Failover transition recorded (detection) to the candidate accepting writes, µs.
    pub detect_to_writable: Vec<Us>,
    /// No server accepted writes, until a different one did (the outage a client sees):
    /// (started at, lasted), µs.
    pub write_outages: Vec<(Us, Us)>,
    /// The candidate designated (record written) to it accepting writes, µs.
    pub designate_to_writable: Vec<Us>,
    /// `detect_to_writable` and write outages (lengths) of the failovers started early (the
    /// primary's agent refused connections), µs.
    pub early_detect_to_writable: Vec<Us>,
    pub early_write_outages: Vec<Us>,
    /// Last fault healed to a writable primary, µs.
    pub recovery_after_heal: Option<Us>,
    pub sim_time: Us,
}

impl RunResult {
    pub fn failed(&self) -> bool {
        self.violation.is_some() || self.sim_error.is_some()
    }

    /// A safety invariant was violated (S1/S2, terms, S4, lost writes), as opposed to liveness
    /// (S5, no writable primary after the faults healed).
    pub fn safety_violation(&self) -> Option<&str> {
        self.violation.as_deref().filter(|v| !is_liveness(v))
    }

    pub fn liveness_violation(&self) -> Option<&str> {
        self.violation.as_deref().filter(|v| is_liveness(v))
    }
}

fn is_liveness(v: &str) -> bool {
    v.starts_with("S5") || v.starts_with("liveness")
}
