//! Supervision of the agent's background tasks (lease watchdog, failsafe rounds, the hosted
//! coordinator, event delivery): none of them may end or panic unnoticed.
//!
//! Two policies, chosen per task by what its absence costs:
//! - [`watch`]: a task the agent cannot run without. Its end (return or panic) is reported to
//!   the caller, which takes the agent down loudly (`run.rs`: the lease watchdog, the API).
//! - [`restarting`]: a task whose absence is safe for a while (it only ever adds availability or
//!   information). It is started again after a logged, bounded backoff.
//!
//! Every supervised task runs in a [`JoinSet`] owned by its supervisor, so dropping (or
//! aborting) the supervisor stops the task too: nothing is left running detached.

use std::future::Future;
use std::time::Duration;

use pgdaemon_core::events::RetryPolicy;
use tokio::task::{JoinError, JoinSet};

/// A supervised task that ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {name} task {how}")]
pub struct TaskDied {
    pub name: String,
    /// `returned`, `panicked: <message>` or `was cancelled`.
    pub how: String,
}

impl TaskDied {
    fn new(name: &str, joined: Result<(), JoinError>) -> Self {
        let how = match joined {
            Ok(()) => "returned".to_string(),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
            Err(_) => "was cancelled".to_string(),
        };
        TaskDied { name: name.to_string(), how }
    }

    pub fn panicked(&self) -> bool {
        self.how.starts_with("panicked")
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "(no message)".to_string(), |s| s.to_string()),
    }
}

/// Starts `task` at once and returns a future that resolves when it ends, however it ends, with
/// how it ended. For a task meant to run for the life of the agent, so the caller logs the end
/// and acts on it (a task stopped on purpose "returned" too). Dropping the returned future stops
/// the task.
pub fn watch<T>(name: &str, task: T) -> impl Future<Output = TaskDied> + Send + 'static
where
    T: Future<Output = ()> + Send + 'static,
{
    let mut set = JoinSet::new();
    set.spawn(task);
    let name = name.to_string();
    async move { TaskDied::new(&name, set.join_next().await.expect("one task was spawned")) }
}

/// The waits before restarts: 1 s doubling to 30 s. A task that ran for at least the longest
/// wait before it died starts again from the shortest one.
pub const RESTART_BACKOFF: RetryPolicy =
    RetryPolicy { attempts: u32::MAX, first_delay: Duration::from_secs(1), max_delay: Duration::from_secs(30) };

/// Runs the task `make` returns until it ends, then starts the next one `make` returns after a
/// wait from `backoff` (its `attempts` are ignored: restarts never stop), each death logged as
/// an error. `make` returning `None` (nothing left to run, e.g. the agent is stopping) ends the
/// supervision. Dropping the returned future stops the task.
pub async fn restarting<F, T>(name: &str, backoff: RetryPolicy, mut make: F)
where
    F: FnMut() -> Option<T>,
    T: Future<Output = ()> + Send + 'static,
{
    let schedule = RetryPolicy { attempts: u32::MAX, ..backoff };
    let mut delays = schedule.delays();
    while let Some(task) = make() {
        let started = tokio::time::Instant::now();
        let mut set = JoinSet::new();
        set.spawn(task);
        let died = TaskDied::new(name, set.join_next().await.expect("one task was spawned"));
        if started.elapsed() >= schedule.max_delay {
            delays = schedule.delays();
        }
        let wait = delays.next().unwrap_or(schedule.max_delay);
        tracing::error!(task = name, how = %died.how, restart_in_ms = wait.as_millis() as u64, "{died}; restarting it");
        tokio::time::sleep(wait).await;
    }
    tracing::info!(task = name, "supervision ended: nothing left to run");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A task that panics on its first `panics` runs, then runs until cancelled.
    async fn flaky(runs: Arc<AtomicU32>, panics: u32) {
        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        if run <= panics {
            panic!("run {run} broke");
        }
        std::future::pending::<()>().await
    }

    #[tokio::test]
    async fn a_watched_task_that_panics_is_reported_not_restarted() {
        let runs = Arc::new(AtomicU32::new(0));
        let died = watch("lease watchdog", flaky(runs.clone(), 1)).await;
        assert_eq!(died, TaskDied { name: "lease watchdog".into(), how: "panicked: run 1 broke".into() });
        assert!(died.panicked());
        assert_eq!(died.to_string(), "the lease watchdog task panicked: run 1 broke");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "never started again");

        let died = watch("server", async {}).await;
        assert_eq!(died.how, "returned", "a return is a death too");
    }

    #[tokio::test]
    async fn a_restarting_task_comes_back_after_a_growing_wait() {
        let runs = Arc::new(AtomicU32::new(0));
        let backoff = RetryPolicy { attempts: 1, first_delay: Duration::from_millis(50), max_delay: Duration::from_millis(200) };
        let supervisor = {
            let runs = runs.clone();
            tokio::spawn(async move { restarting("failsafe", backoff, || Some(flaky(runs.clone(), 3))).await })
        };
        let start = tokio::time::Instant::now();
        while runs.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Three deaths 10 ms into each run, then waits of 50, 100 and 200 ms (attempts ignored).
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(380), "{took:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "the fourth run lives on");
        assert!(!supervisor.is_finished());
        supervisor.abort();
    }

    #[tokio::test]
    async fn restarting_ends_when_nothing_is_left_to_run_and_stops_its_task_when_dropped() {
        let quick = RetryPolicy { first_delay: Duration::from_millis(10), ..RESTART_BACKOFF };
        let mut left = 2;
        restarting("hosted coordinator", quick, || {
            left -= 1;
            (left > 0).then_some(async {})
        })
        .await;
        assert_eq!(left, 0, "one run, then `None` ended the supervision");

        let runs = Arc::new(AtomicU32::new(0));
        let dropped = Arc::new(AtomicU32::new(0));
        let guard = {
            struct CountDrop(Arc<AtomicU32>);
            impl Drop for CountDrop {
                fn drop(&mut self) {
                    self.0.fetch_add(1, Ordering::SeqCst);
                }
            }
            CountDrop(dropped.clone())
        };
        let task = {
            let runs = runs.clone();
            async move {
                let _guard = guard;
                flaky(runs, 0).await
            }
        };
        let mut once = Some(task);
        let supervisor = tokio::spawn(async move { restarting("events", quick, || once.take()).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!((runs.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (1, 0));
        supervisor.abort();
        let _ = supervisor.await;
        tokio::task::yield_now().await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "aborting the supervisor stops the task");
    }
}
