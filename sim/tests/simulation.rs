//! The simulation as a test: a few hundred seeds of the real agent and coordinator code under
//! random faults, and proof that the checker fails when a safety rule is broken on purpose.

use pgdaemon_core::coordinator::FencingPolicy;
use std::sync::OnceLock;

use pgdaemon_sim::{run, run_seeds, Broken, Options, RunResult, Summary};

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn describe(r: &RunResult) -> String {
    let what = r.violation.as_deref().or(r.sim_error.as_deref()).unwrap_or("?");
    let tail: Vec<&str> = r.trace.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
    format!("seed {}: {what}\n--- last trace lines ---\n{}", r.seed, tail.join("\n"))
}

/// The default 300 seeds, run once and judged by both tests below. Failsafe mode, automatic
/// bootstrap (empty data directories, no record, faults from the first second), the hosted
/// coordinator's one-second schedule and the command fencer are drawn per seed (about half the
/// runs each).
fn default_seeds() -> &'static Summary {
    static SUMMARY: OnceLock<Summary> = OnceLock::new();
    SUMMARY.get_or_init(|| {
        let mut o = Options::new(0);
        o.failsafe = None;
        o.bootstrap = None;
        run_seeds(&o, 0, 300, jobs())
    })
}

#[test]
fn seeds_keep_every_safety_invariant() {
    let summary = default_seeds();
    assert_eq!(summary.seeds, 300);
    // The faults really happen (a run without faults proves nothing).
    assert!(summary.faults.values().sum::<u64>() >= 300, "{}", summary.render());
    assert!(summary.promotions > 50, "failovers must actually occur: {}", summary.render());
    // Failsafe really keeps primaries past their lease in some runs.
    assert!(summary.failsafe_runs > 100 && summary.failsafe_kept_runs > 10, "{}", summary.render());
    // Bootstrapped runs really initialise (a record at the end is checked as liveness).
    assert!(summary.bootstrap_runs > 100 && summary.bootstrap_initialisations >= summary.bootstrap_runs, "{}", summary.render());
    // Early failover on evidence really happens (the hosted schedule and the command fencer are
    // drawn per seed, about half the runs each): failovers started on refused connections, old
    // primaries' leases released by the coordinator, fences confirmed by the command fencer.
    assert!(summary.hosted_runs > 100 && summary.command_fencer_runs > 100, "{}", summary.render());
    assert!(summary.early_failovers > 3 && summary.lease_breaks > 3, "{}", summary.render());
    assert!(summary.fenced_by.get("command").is_some_and(|n| *n > 10), "{}", summary.render());
    let bad: Vec<&RunResult> =
        summary.failures.iter().filter(|r| r.sim_error.is_some() || r.safety_violation().is_some()).collect();
    assert!(bad.is_empty(), "{} seeds broke safety; first:\n{}", bad.len(), describe(bad[0]));
}

/// Liveness and S5 (a started failover finishes or is rolled back; a writable primary within the
/// bound after the last heal). A failover left blocked by `maximum_lag_on_failover`, where the
/// ground truth shows every candidate really lacks the WAL, is by design and not counted.
#[test]
fn seeds_recover_after_faults_heal() {
    let summary = default_seeds();
    let bad: Vec<&RunResult> = summary.failures.iter().filter(|r| r.liveness_violation().is_some()).collect();
    assert!(bad.is_empty(), "{} seeds did not recover; first:\n{}", bad.len(), describe(bad[0]));
}

/// Each broken variant must be caught as a safety violation within a bounded number of seeds
/// (run in batches, stopping at the first batch that catches it).
fn caught(broken: Broken, fencing: FencingPolicy, seeds: u64) -> RunResult {
    let mut o = Options::new(0);
    o.broken = broken;
    o.fencing = Some(fencing);
    o.failsafe = Some(broken == Broken::FailsafeLies);
    let batch = 20;
    let mut first = 0;
    while first < seeds {
        let summary = run_seeds(&o, first, batch.min(seeds - first), jobs());
        if let Some(r) = summary.failures.iter().find(|r| r.safety_violation().is_some()) {
            return r.clone();
        }
        first += batch;
    }
    panic!("{broken:?} with fencing {fencing:?} was not caught in {seeds} seeds");
}

#[test]
fn promoting_without_fencing_is_caught() {
    let r = caught(Broken::FenceLies, FencingPolicy::Required, 100);
    assert!(r.safety_violation().unwrap().starts_with("S1/S2"), "{}", describe(&r));
}

#[test]
fn skipping_the_lease_check_is_caught() {
    let r = caught(Broken::SkipLeaseCheck, FencingPolicy::Off, 100);
    assert!(r.safety_violation().unwrap().starts_with("S1/S2"), "{}", describe(&r));
}

#[test]
fn a_primary_clock_far_off_is_caught() {
    let r = caught(Broken::SlowAgentClock, FencingPolicy::Off, 200);
    assert!(r.safety_violation().unwrap().starts_with("S1/S2"), "{}", describe(&r));
}

/// Failsafe's safety rests on the members' promises: acknowledgements that promise nothing let a
/// replacement take over while the old primary runs on them.
#[test]
fn failsafe_acknowledgements_without_a_promise_are_caught() {
    let r = caught(Broken::FailsafeLies, FencingPolicy::Off, 200);
    assert!(r.safety_violation().unwrap().starts_with("S1/S2"), "{}", describe(&r));
}

#[test]
fn a_seed_reproduces_its_run_exactly() {
    for (seed, failsafe) in [(3, false), (59, false), (172, false), (6, true)] {
        let mut o = Options::new(seed);
        o.failsafe = Some(failsafe);
        let a = run(&o);
        let b = run(&o);
        assert_eq!(a.trace, b.trace, "seed {seed}");
        assert_eq!(a.counters.events, b.counters.events);
        assert_eq!(a.violation, b.violation);
    }
    assert_ne!(run(&Options::new(1)).trace, run(&Options::new(2)).trace);
}
