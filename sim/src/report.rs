//! Many seeds: run them (in parallel threads, each run single-threaded and deterministic) and
//! summarize faults, violations and failover times.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::run::{run, Options, RunResult};
use crate::world::{Us, MS};

#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub faults: BTreeMap<String, u64>,
    /// Failed runs (violation or simulator error), ordered by seed.
    pub failures: Vec<RunResult>,
    pub detect_to_writable: Vec<Us>,
    pub write_outages: Vec<Us>,
    /// The longest write outages: (lasted, seed, started at), longest first.
    pub longest_outages: Vec<(Us, u64, Us)>,
    pub designate_to_writable: Vec<Us>,
    pub recovery_after_heal: Vec<Us>,
    pub wakes_sent: u64,
    pub wakes_lost: u64,
    pub woken_ticks: u64,
    pub events: u64,
    pub writes: u64,
    pub promotions: u64,
    pub ec2_stops: u64,
    pub blocked_by_lag: u64,
    pub sim_time: Us,
    /// Runs with failsafe mode on, and those where it kept a primary past its lease.
    pub failsafe_runs: u64,
    pub failsafe_kept_runs: u64,
    pub failsafe_granted: u64,
    pub failsafe_refused: u64,
    pub failsafe_unanswered: u64,
    pub failsafe_acks: u64,
    /// Runs started from empty data directories, and the databases their agents initialised.
    pub bootstrap_runs: u64,
    pub bootstrap_initialisations: u64,
    /// Failover times of the failsafe runs alone.
    pub failsafe_detect_to_writable: Vec<Us>,
    /// Runs whose coordinator also ran every second, and runs whose fence chain held the
    /// command fencer.
    pub hosted_runs: u64,
    pub command_fencer_runs: u64,
    /// Early failover on evidence (see [`crate::world::Counters`]), and its timings.
    pub early_failovers: u64,
    pub lease_breaks: u64,
    pub probes_refused: u64,
    pub command_stops: u64,
    pub early_detect_to_writable: Vec<Us>,
    pub early_write_outages: Vec<Us>,
    /// Transitions by the fencer that confirmed them.
    pub fenced_by: BTreeMap<String, u64>,
}

impl Summary {
    fn add(&mut self, r: RunResult) {
        self.seeds += 1;
        for (k, v) in &r.counters.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        self.detect_to_writable.extend(&r.detect_to_writable);
        for &(start, len) in &r.write_outages {
            self.write_outages.push(len);
            self.longest_outages.push((len, r.seed, start));
        }
        self.longest_outages.sort_unstable_by(|a, b| b.cmp(a));
        self.longest_outages.truncate(LONGEST_SHOWN);
        self.designate_to_writable.extend(&r.designate_to_writable);
        self.wakes_sent += r.counters.wakes_sent;
        self.wakes_lost += r.counters.wakes_lost;
        self.woken_ticks += r.counters.woken_ticks;
        self.recovery_after_heal.extend(r.recovery_after_heal);
        self.events += r.counters.events;
        self.writes += r.counters.writes;
        self.promotions += r.counters.promotions;
        self.ec2_stops += r.counters.ec2_stops;
        self.blocked_by_lag += r.counters.blocked_by_lag;
        self.sim_time += r.sim_time;
        if r.failsafe {
            self.failsafe_runs += 1;
            self.failsafe_kept_runs += u64::from(r.counters.failsafe_kept_ticks > 0);
            self.failsafe_granted += r.counters.failsafe_granted;
            self.failsafe_refused += r.counters.failsafe_refused;
            self.failsafe_unanswered += r.counters.failsafe_unanswered;
            self.failsafe_acks += r.counters.failsafe_acks;
            self.failsafe_detect_to_writable.extend(&r.detect_to_writable);
        }
        self.hosted_runs += u64::from(r.hosted);
        self.command_fencer_runs += u64::from(r.command_fencer);
        self.early_failovers += r.counters.early_failovers;
        self.lease_breaks += r.counters.lease_breaks;
        self.probes_refused += r.counters.probes_refused;
        self.command_stops += r.counters.command_stops;
        self.early_detect_to_writable.extend(&r.early_detect_to_writable);
        self.early_write_outages.extend(&r.early_write_outages);
        for (k, v) in &r.counters.fenced_by {
            *self.fenced_by.entry(k.clone()).or_default() += v;
        }
        if r.bootstrap {
            self.bootstrap_runs += 1;
            self.bootstrap_initialisations += r.counters.initialisations;
        }
        if r.failed() {
            self.failures.push(r);
        }
    }

    pub fn violations(&self) -> usize {
        self.failures.len()
    }

    /// The report printed by the CLI.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "seeds run:            {}", self.seeds);
        let _ = writeln!(s, "simulated time:       {:.1} h", self.sim_time as f64 / 3.6e9);
        let _ = writeln!(s, "events:               {}", self.events);
        let _ = writeln!(s, "client writes:        {}", self.writes);
        let _ = writeln!(s, "promotions:           {}", self.promotions);
        let _ = writeln!(s, "EC2 stops by fencer:  {}", self.ec2_stops);
        let _ = writeln!(
            s,
            "agent wakes:          {} sent, {} lost, {} early agent loops",
            self.wakes_sent, self.wakes_lost, self.woken_ticks
        );
        let fenced: Vec<String> = self
            .fenced_by
            .iter()
            .map(|(k, v)| if k == "fencing off" { format!("none (fencing off) {v}") } else { format!("{k} {v}") })
            .collect();
        let _ = writeln!(
            s,
            "fence chain http, command, ec2 in {} runs (http, ec2 in the others); confirmed by: {}; postgres stopped by the command fencer: {}",
            self.command_fencer_runs,
            fenced.join(", "),
            self.command_stops
        );
        let _ = writeln!(
            s,
            "coordinator also ran every second in {} runs; early failover on evidence: {} failovers started on refused connections, {} old primaries' leases released by the coordinator, {} probes refused",
            self.hosted_runs, self.early_failovers, self.lease_breaks, self.probes_refused
        );
        let _ = writeln!(s, "ended blocked by maximum_lag_on_failover (by design, not a violation): {}", self.blocked_by_lag);
        if self.failsafe_runs > 0 {
            let _ = writeln!(
                s,
                "failsafe mode on in {} runs; it kept a primary past its lease in {} runs; rounds granted {}, refused {}, unanswered {}; acknowledgements {}",
                self.failsafe_runs,
                self.failsafe_kept_runs,
                self.failsafe_granted,
                self.failsafe_refused,
                self.failsafe_unanswered,
                self.failsafe_acks
            );
        }
        if self.bootstrap_runs > 0 {
            let _ = writeln!(
                s,
                "automatic bootstrap in {} runs: {} databases initialised (more than one where a winner died mid-way)",
                self.bootstrap_runs, self.bootstrap_initialisations
            );
        }
        let _ = writeln!(s, "faults injected by kind ({} total):", self.faults.values().sum::<u64>());
        for (k, v) in &self.faults {
            let _ = writeln!(s, "  {k:<30} {v}");
        }
        let safety: Vec<&RunResult> = self.failures.iter().filter(|r| r.safety_violation().is_some()).collect();
        let liveness = self.failures.iter().filter(|r| r.liveness_violation().is_some()).count();
        let sim_errors = self.failures.iter().filter(|r| r.sim_error.is_some()).count();
        let _ = writeln!(
            s,
            "invariant violations: {} (safety {}, liveness/S5 {}, simulator errors {})",
            self.violations(),
            safety.len(),
            liveness,
            sim_errors
        );
        let mut shown: Vec<&RunResult> = safety.clone();
        shown.extend(self.failures.iter().filter(|r| r.safety_violation().is_none()));
        for r in shown.iter().take(10) {
            let what = r.violation.as_deref().or(r.sim_error.as_deref()).unwrap_or("?");
            let _ = writeln!(s, "  seed {}: {what}", r.seed);
        }
        let _ = writeln!(
            s,
            "failover time, detection (failover recorded) -> new primary writable: {}",
            dist(&self.detect_to_writable)
        );
        let _ = writeln!(s, "  of which designated -> writable: {}", dist(&self.designate_to_writable));
        if self.failsafe_runs > 0 && self.failsafe_runs < self.seeds {
            let _ = writeln!(s, "  of which failsafe runs: {}", dist(&self.failsafe_detect_to_writable));
        }
        let _ = writeln!(s, "  of which started early (agent refused): {}", dist(&self.early_detect_to_writable));
        let _ = writeln!(
            s,
            "write outage, last write on the old primary's watch -> new primary writable: {}",
            dist(&self.write_outages)
        );
        let _ = writeln!(s, "  of which failovers started early (agent refused): {}", dist(&self.early_write_outages));
        let longest: Vec<String> = self
            .longest_outages
            .iter()
            .map(|&(len, seed, start)| format!("seed {seed} at {:.1}s: {:.1}s", secs(start), secs(len)))
            .collect();
        let _ = writeln!(s, "  longest write outages: {}", longest.join("; "));
        let _ = writeln!(s, "last fault healed -> writable primary: {}", dist(&self.recovery_after_heal));
        s
    }
}

/// How many of the longest write outages the summary lists (seed and start, to replay them).
const LONGEST_SHOWN: usize = 15;

fn secs(x: Us) -> f64 {
    x as f64 / (1000.0 * MS as f64)
}

/// `n=…, median …, p99 …, max …` in seconds.
pub fn dist(v: &[Us]) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    let mut v = v.to_vec();
    v.sort_unstable();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!("n={}, median {:.2}s, p99 {:.2}s, max {:.2}s", v.len(), secs(q(0.5)), secs(q(0.99)), secs(*v.last().unwrap()))
}

/// Runs seeds `first..first+count` with `template` (its seed replaced), on `jobs` threads.
pub fn run_seeds(template: &Options, first: u64, count: u64, jobs: usize) -> Summary {
    let jobs = jobs.max(1);
    let mut results: Vec<RunResult> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|j| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    let mut seed = first + j as u64;
                    while seed < first + count {
                        let mut o = template.clone();
                        o.seed = seed;
                        let mut r = run(&o);
                        if !r.failed() {
                            r.trace.clear();
                        }
                        out.push(r);
                        seed += jobs as u64;
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a simulation thread panicked")).collect()
    });
    results.sort_by_key(|r| r.seed);
    let mut summary = Summary::default();
    for r in results {
        summary.add(r);
    }
    summary
}
