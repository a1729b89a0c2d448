//! Looping `run_once` for runners that may wait (the Lambda, the agent-hosted coordinator).
//! The sleep is supplied by the caller (tokio's in the binaries), so this crate stays free of a
//! runtime and the simulation can pass a virtual one.

use std::future::Future;
use std::time::Duration;

use crate::clock::Clock;
use crate::fence::Fencer;
use crate::store::Store;

use super::driver::{Coordinator, RunReport};

/// Runs `run_once` until the cluster is settled (nothing in flight, nothing to do) or `budget`
/// (by the coordinator's monotonic clock) is spent, sleeping `poll` between runs. Returns the
/// last report; its `steps` hold every step taken across the runs.
pub async fn run_until_settled<S, F, C, Sl, Fut>(
    coordinator: &mut Coordinator<S, F, C>,
    cluster: &str,
    budget: Duration,
    poll: Duration,
    mut sleep: Sl,
) -> RunReport
where
    S: Store + Clone,
    F: Fencer,
    C: Clock + Clone,
    Sl: FnMut(Duration) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = coordinator.clock().monotonic();
    let mut steps = Vec::new();
    loop {
        let mut report = coordinator.run_once(cluster).await;
        steps.append(&mut report.steps);
        let spent = coordinator.clock().monotonic().saturating_sub(start);
        if report.settled() || spent + poll > budget {
            report.steps = steps;
            return report;
        }
        sleep(poll).await;
    }
}
