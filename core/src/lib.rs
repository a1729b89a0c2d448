//! pgdaemon-core: the cluster model, lease logic, pure decisions and the traits every part of
//! pgdaemon builds on. No network dependencies: backends live in `pgdaemon-dcs`, AWS calls in
//! the binaries.

pub mod agent;
pub mod backup;
pub mod clock;
pub mod codec;
pub mod config;
pub mod coordinator;
pub mod events;
pub mod fence;
pub mod keys;
pub mod lease;
pub mod lsn;
pub mod memory;
pub mod model;
pub mod params;
pub mod pg;
pub mod request;
pub mod store;

/// The version of this build (all pgdaemon crates share the workspace version): written into
/// heartbeats by the agent and into history by the coordinator.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backup::BackupConfig;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{ConfigError, DynamicConfig, StoreConfig, SyncMode};
pub use lease::{AcquireOutcome, HeldLease, LeaseClient, LeaseObserver, LeaseState};
pub use lsn::Lsn;
pub use memory::MemoryStore;
pub use model::*;
pub use params::{ClusterParameters, MemberState};
pub use store::{LeaseClaim, Store, StoreError};
