//! The node agent's brain: a pure decision over one snapshot ([`decide`]) and the runtime that
//! gathers the snapshot, executes the decision and reports ([`AgentRuntime::tick`]).
//!
//! The split follows docs/design.md section 6: `decide` is a pure function returning actions plus a
//! reason (tested table-driven); the runtime owns the mutable state (held lease, lease observer,
//! heartbeat sequence) and never sleeps, spawns or reads time except through the injected
//! [`crate::Clock`], so a deterministic simulation can drive it in virtual time.

pub mod backup_schedule;
mod bootstrap;
mod decide;
mod failsafe;
mod failsafe_handle;
mod handle;
mod heartbeat;
mod input;
mod maintenance;
mod runtime;
mod slots;
pub mod sync;

pub use bootstrap::{BootstrapPolicy, DEFAULT_BOOTSTRAP_LOCK};
pub use decide::{decide, AgentAction, AgentDecision};
pub use failsafe::{
    combine as combine_failsafe_replies, judge_request as judge_failsafe_request, FailsafeInput, FailsafePeers, FailsafePromise,
    FailsafeReply, FailsafeRequest, PeerFacts, RoundOutcome,
};
pub use handle::{Activity, AgentCounters, AgentHandle, AgentSnapshot, DemoteError};
pub use heartbeat::period as heartbeat_period;
pub use input::{AgentIdentity, AgentInput, PrimaryStartFailure, PublishedHeartbeat, RejoinFailure, RejoinMethod, StoreRead};
pub use maintenance::MaintenanceError;
pub use runtime::{ActionOutcome, AgentRuntime, CoordinatorTrigger, TickReport, TriggerError};
pub use slots::{DepartedSlots, DEFAULT_DEPARTED_SLOT_RETENTION};
