//! Waking the agent's loop early (docs/design.md section 4): the coordinator wakes the
//! candidate right after designating it and the other members right after the promotion, so
//! they act within milliseconds instead of at their next tick.
//!
//! - [`LoopWake`]: what the loop in [`crate::run`] listens on. Wakes from `POST /wake` and from
//!   a coordinator hosted on this node land here.
//! - [`HostedWaker`]: the hosted coordinator's [`AgentWaker`]: this node's own loop directly,
//!   every other member over HTTP ([`HttpWaker`]).
//!
//! A wake only runs an ordinary loop earlier: the same store read, the same decision, every
//! lease and term check unchanged. So an extra, late or forged wake can cost a store read, never
//! safety; the loop still rate-limits them ([`MIN_WAKE_GAP`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgdaemon_core::coordinator::{AgentWaker, WakeTarget};
use pgdaemon_dcs::wake::HttpWaker;
use tokio::sync::Notify;

/// An early loop starts at least this long after the previous loop started: a stream of wakes
/// costs at most ten loops a second.
pub const MIN_WAKE_GAP: Duration = Duration::from_millis(100);

/// The loop's wake-up call: cheap to clone, never blocks. Wakes while a loop runs, or several
/// before the loop gets to them, make one early loop.
#[derive(Debug, Clone, Default)]
pub struct LoopWake {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    notify: Notify,
    requests: AtomicU64,
}

impl LoopWake {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a loop now (or right after the running one, rate-limited). Returns at once.
    pub fn wake(&self) {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.notify.notify_one();
    }

    /// Resolves once a wake was asked for since the last time this resolved.
    pub async fn woken(&self) {
        self.inner.notify.notified().await
    }

    /// Wakes asked for since the start (metrics, tests).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }
}

/// The hosted coordinator's waker: this node's own loop through [`LoopWake`] (no request to
/// itself), every other member through `POST /wake`.
#[derive(Debug, Clone)]
pub struct HostedWaker {
    member: String,
    local: LoopWake,
    http: HttpWaker,
}

impl HostedWaker {
    /// `member`: this node's name; `local`: its loop's wake; `http`: how to reach the others.
    pub fn new(member: impl Into<String>, local: LoopWake, http: HttpWaker) -> Self {
        HostedWaker { member: member.into(), local, http }
    }
}

impl AgentWaker for HostedWaker {
    fn wake(&self, target: &WakeTarget) {
        if target.member == self.member {
            tracing::debug!(reason = %target.describe(), "waking this node's own loop");
            self.local.wake();
        } else {
            self.http.wake(target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::coordinator::WakeReason;

    #[tokio::test]
    async fn wakes_before_the_loop_listens_are_kept_and_coalesced() {
        let w = LoopWake::new();
        w.wake();
        w.wake();
        tokio::time::timeout(Duration::from_millis(100), w.woken()).await.expect("a wake before listening is kept");
        assert!(tokio::time::timeout(Duration::from_millis(50), w.woken()).await.is_err(), "two wakes make one loop");
        assert_eq!(w.requests(), 2);
    }

    #[tokio::test]
    async fn the_hosted_waker_wakes_its_own_loop_without_a_request() {
        let local = LoopWake::new();
        let waker = HostedWaker::new("n1", local.clone(), HttpWaker::new());
        let target = |member: &str| WakeTarget {
            cluster: "c".into(),
            member: member.into(),
            api_url: String::new(),
            term: 3,
            reason: WakeReason::Designated,
        };
        waker.wake(&target("n1"));
        assert_eq!(local.requests(), 1);
        tokio::time::timeout(Duration::from_millis(100), local.woken()).await.unwrap();
        // Another member: over HTTP (no URL here: logged and dropped), never this loop.
        waker.wake(&target("n2"));
        assert_eq!(local.requests(), 1);
    }
}
