//! Test support shared by every crate's integration tests: real engines on free loopback ports,
//! each owned by a guard that stops exactly the process it started (by PID) when dropped.

pub mod engines;
pub mod http;
pub mod ports;
pub mod postgres;
pub mod tls;

use pgdaemon_core::DynamicConfig;

/// The timings real-process tests use: lease 4 s (renewed each loop, margin 1.5 s), probe every
/// 0.5 s, so failovers happen within seconds; validated like any configuration.
pub fn short_timings() -> DynamicConfig {
    let c = DynamicConfig {
        lease_ms: 4000,
        renew_interval_ms: 1000,
        safety_margin_ms: 1500,
        probe_interval_ms: 500,
        ..Default::default()
    };
    c.validate().expect("test timings are valid");
    c
}
