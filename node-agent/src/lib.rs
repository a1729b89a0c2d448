//! pgdaemon node agent library: everything but argument parsing lives here (thin binary).

pub mod postgres;
mod process;
// Agent shell (config, identity, secrets, HTTP API, run loop).
pub mod api_security;
mod api_state;
pub mod backups;
pub mod config;
pub mod http;
mod http_backup;
pub mod http_control;
mod http_maintenance;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod secrets;
// Background tasks: restarted, or the agent goes down, when one dies.
pub mod supervise;
// The agent-hosted coordinator and the fast-path triggers.
pub mod coordinator_mode;
// Waking the loop early (`POST /wake`, the hosted coordinator).
pub mod wake;
// Event delivery (store log, webhook, command hook) and the monitor-only mode.
pub mod events;
// Failsafe mode: peer acknowledgements while the store is unreachable.
pub mod failsafe;
// Hardware watchdog (Patroni's `watchdog`).
pub mod monitor;
pub mod watchdog;
