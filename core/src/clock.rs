//! Injected time. Lease math uses only [`Clock::monotonic`] of the process doing the math.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
///
/// Obligations: `monotonic` never goes backwards and is the only time used to judge leases and
/// liveness; `wall_ms` may jump (NTP, operators) and is used only for records shown to humans and
/// for TTL attributes, never compared across hosts to decide anything.
pub trait Clock: Send + Sync {
    /// Time since an arbitrary fixed origin of this clock.
    fn monotonic(&self) -> Duration;
    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64;
}

/// The process's real clocks.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock { origin: Instant::now() }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests and simulation).
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    inner: Arc<Mutex<(Duration, u64)>>,
}

impl ManualClock {
    pub fn new(wall_ms: u64) -> Self {
        ManualClock { inner: Arc::new(Mutex::new((Duration::ZERO, wall_ms))) }
    }

    /// Moves both clocks forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.inner.lock().unwrap();
        t.0 += by;
        t.1 += by.as_millis() as u64;
    }

    /// Sets the wall clock alone (a jump); the monotonic clock is unaffected.
    pub fn set_wall_ms(&self, wall_ms: u64) {
        self.inner.lock().unwrap().1 = wall_ms;
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        self.inner.lock().unwrap().0
    }

    fn wall_ms(&self) -> u64 {
        self.inner.lock().unwrap().1
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn monotonic(&self) -> Duration {
        (**self).monotonic()
    }

    fn wall_ms(&self) -> u64 {
        (**self).wall_ms()
    }
}
