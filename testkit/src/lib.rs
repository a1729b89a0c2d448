//! Test support shared by every crate's integration tests: real engines on free loopback ports,
//! each owned by a guard that stops exactly the process it started (by PID) when dropped.

pub mod engines;
pub mod ports;
pub mod postgres;
