//! Deterministic simulation of a whole pgdaemon cluster.
//!
//! The real decision code runs unchanged: every node's [`pgdaemon_core::agent::AgentRuntime`]
//! and the [`pgdaemon_core::coordinator::Coordinator`] (with its real lease logic and failover
//! state machine) over the real [`pgdaemon_core::MemoryStore`]. Around them the simulation
//! supplies virtual time, a simulated Postgres per node, simulated fencers, and faults, all drawn
//! from one seed, so any run is reproducible from its seed. Invariants are checked after every
//! event; a failure carries the seed and a readable trace.

pub mod actors;
pub mod check;
pub mod faults;
pub mod pgctl;
pub mod report;
pub mod rng;
pub mod run;
pub mod simpg;
pub mod store;
pub mod world;

pub use report::{run_seeds, Summary};
pub use run::{run, Options, RunResult};
pub use world::Broken;
