//! Stand-ins for what a fleet benchmark cannot run thousands of: Postgres servers. The
//! agents of the clusters that fail over are the real agent runtime; their Postgres is this
//! model (a replica that streams and replays up to a fixed position, promotable), named as a
//! stand-in in drills/README.md. Everything else (store, coordinator, lease, promotion records)
//! is real.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::pg::{DataDirState, PgControl, PgError, PgProbe, PrimaryTarget, StopMode, SyncStandbys, UpstreamConfig};
use pgdaemon_core::{Lsn, Role};

/// A running standby at `lsn` on timeline 1 that becomes a primary when promoted.
pub struct StandInPostgres {
    probe: Mutex<PgProbe>,
}

impl StandInPostgres {
    pub fn replica(upstream: &str, lsn: Lsn) -> Self {
        let (host, port) = upstream.split_once(':').unwrap_or((upstream, "5432"));
        StandInPostgres {
            probe: Mutex::new(PgProbe {
                running: true,
                role: Role::Replica,
                data: DataDirState::Standby,
                timeline: 1,
                receive_lsn: Some(lsn),
                replay_lsn: Some(lsn),
                replay_age: Some(Duration::ZERO),
                streaming: true,
                streaming_from: Some(upstream.to_string()),
                upstream: Some(UpstreamConfig {
                    host: Some(host.to_string()),
                    port: port.parse().ok(),
                    application_name: None,
                    slot: None,
                }),
                ..Default::default()
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut PgProbe)) {
        f(&mut self.probe.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn role(&self) -> Role {
        self.probe.lock().unwrap_or_else(|p| p.into_inner()).role
    }
}

#[async_trait]
impl PgControl for StandInPostgres {
    async fn probe(&self) -> PgProbe {
        self.probe.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    async fn start(&self) -> Result<(), PgError> {
        self.update(|p| {
            p.running = true;
            p.role = if p.data == DataDirState::Standby { Role::Replica } else { Role::Primary };
        });
        Ok(())
    }
    async fn stop(&self, _mode: StopMode) -> Result<(), PgError> {
        self.update(|p| {
            p.running = false;
            p.role = Role::Unknown;
        });
        Ok(())
    }
    async fn promote(&self) -> Result<(), PgError> {
        self.update(|p| {
            p.role = Role::Primary;
            p.data = DataDirState::Primary;
            p.timeline += 1;
            p.write_lsn = p.replay_lsn;
            p.flush_lsn = p.replay_lsn;
            p.streaming = false;
            p.streaming_from = None;
            p.upstream = None;
        });
        Ok(())
    }
    async fn demote(&self) -> Result<(), PgError> {
        self.stop(StopMode::Fast).await
    }
    async fn follow(&self, primary: &PrimaryTarget) -> Result<(), PgError> {
        self.update(|p| {
            p.upstream = Some(UpstreamConfig {
                host: Some(primary.host.clone()),
                port: Some(primary.port),
                application_name: None,
                slot: None,
            });
            p.streaming_from = Some(format!("{}:{}", primary.host, primary.port));
        });
        Ok(())
    }
    async fn rewind(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        self.follow(source).await
    }
    async fn basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        self.follow(source).await
    }
    async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError> {
        let slots: Vec<String> = members.iter().map(|m| pgdaemon_core::pg::slot_name(m)).collect();
        self.update(|p| p.slots = slots);
        Ok(())
    }
    async fn drop_slots(&self, slots: &[String]) -> Result<(), PgError> {
        self.update(|p| p.slots.retain(|s| !slots.contains(s)));
        Ok(())
    }
    async fn initialize(
        &self,
        _budget: Duration,
        _restore: Option<&pgdaemon_core::backup::RestoreSource>,
    ) -> Result<(), PgError> {
        Err(PgError::WrongState("the stand-in never initialises a cluster".into()))
    }
    async fn initialized(&self) -> Result<(), PgError> {
        Ok(())
    }
    async fn set_sync_standbys(&self, names: &SyncStandbys) -> Result<(), PgError> {
        let text = names.to_setting();
        self.update(|p| p.sync_standby_names = Some(text));
        Ok(())
    }
}

/// Stands in for the EC2 fencer on a dead node: the instance is gone, so StopInstances reports
/// it stopped at once. Only the benchmark's dead primaries are ever fenced.
pub struct StoppedInstanceFencer;

#[async_trait]
impl pgdaemon_core::fence::Fencer for StoppedInstanceFencer {
    fn name(&self) -> &str {
        "ec2"
    }
    async fn fence(
        &self,
        target: &pgdaemon_core::fence::FenceTarget,
        _pending: Option<&pgdaemon_core::fence::PendingHandle>,
    ) -> pgdaemon_core::fence::FenceStatus {
        pgdaemon_core::fence::FenceStatus::Confirmed {
            detail: format!("{} stopped (bench stand-in for EC2)", target.member),
            lsn: None,
        }
    }
}
