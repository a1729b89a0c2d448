//! The probe's queries: what a running server says about its role, WAL positions, replication
//! and slots ([`pgdaemon_core::pg::PgControl::probe`]).

use std::time::Duration;

use pgdaemon_core::pg::{PgError, PgProbe, ReplicationRow};
use pgdaemon_core::Role;

use super::text::{lsn, parse_conninfo, pg_err, query_err};
use super::{col, LocalPostgres};

impl LocalPostgres {
    /// The newest timeline among the WAL segments in `pg_wal` (0 if unknown, e.g. without the
    /// right to list pg_wal: superuser or pg_monitor).
    pub(super) async fn received_wal_timeline(&self, client: &tokio_postgres::Client) -> u32 {
        let q = "SELECT COALESCE(max(('x' || substr(name, 1, 8))::bit(32)::int), 0) \
                 FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'";
        match client.query_one(q, &[]).await {
            Ok(row) => col::<i32>(&row, 0).unwrap_or(0) as u32,
            Err(e) => {
                tracing::debug!(error = %pg_err(&e), "listing pg_wal for the received timeline");
                0
            }
        }
    }

    pub(super) async fn probe_running(&self, client: &tokio_postgres::Client, probe: &mut PgProbe) -> Result<(), PgError> {
        let row = client
            .query_one(
                "SELECT pg_is_in_recovery(), \
                 ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY name), \
                 current_setting('server_version')",
                &[],
            )
            .await
            .map_err(query_err)?;
        let recovery: bool = col(&row, 0)?;
        probe.pending_restart = col(&row, 1)?;
        probe.server_version = Some(col(&row, 2)?);
        probe.running = true;
        probe.role = if recovery { Role::Replica } else { Role::Primary };
        if !recovery {
            let row = client
                .query_one(
                    // The setting is read before the flush position, and pg_stat_replication
                    // after both: the synchronous-mode catch-up check relies on that order.
                    "SELECT current_setting('synchronous_standby_names'), pg_current_wal_lsn()::text, \
                     pg_current_wal_flush_lsn()::text, \
                     ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
                    &[],
                )
                .await
                .map_err(query_err)?;
            probe.sync_standby_names = Some(col(&row, 0)?);
            probe.write_lsn = lsn(col(&row, 1)?);
            probe.flush_lsn = lsn(col(&row, 2)?);
            probe.timeline = col::<i32>(&row, 3)? as u32;
            let rows = client
                .query(
                    "SELECT COALESCE(application_name, ''), COALESCE(state, ''), COALESCE(sync_state, ''), \
                     flush_lsn::text, replay_lsn::text FROM pg_stat_replication",
                    &[],
                )
                .await
                .map_err(query_err)?;
            probe.replication = rows
                .iter()
                .map(|r| {
                    Ok(ReplicationRow {
                        application_name: col(r, 0)?,
                        state: col(r, 1)?,
                        sync_state: col(r, 2)?,
                        flush_lsn: lsn(col(r, 3)?),
                        replay_lsn: lsn(col(r, 4)?),
                    })
                })
                .collect::<Result<_, PgError>>()?;
            let slots = client
                .query("SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'", &[])
                .await
                .map_err(query_err)?;
            for r in &slots {
                let name: String = col(r, 0)?;
                if col::<bool>(r, 1)? {
                    probe.active_slots.push(name.clone());
                }
                probe.slots.push(name);
            }
        } else {
            let row = client
                .query_one(
                    "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                     CASE WHEN pg_last_wal_receive_lsn() IS NULL OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0::float8 \
                          ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0) END, \
                     current_setting('primary_conninfo'), current_setting('primary_slot_name'), \
                     (SELECT timeline_id FROM pg_control_checkpoint())::int",
                    &[],
                )
                .await
                .map_err(query_err)?;
            probe.receive_lsn = lsn(col(&row, 0)?);
            probe.replay_lsn = lsn(col(&row, 1)?);
            probe.replay_age = Some(Duration::from_secs_f64(col::<f64>(&row, 2)?.max(0.0)));
            let mut upstream = parse_conninfo(col::<String>(&row, 3)?.as_str());
            let slot: String = col(&row, 4)?;
            upstream.slot = (!slot.is_empty()).then_some(slot);
            probe.upstream = Some(upstream);
            probe.timeline = col::<i32>(&row, 5)? as u32;
            let rows = client
                .query("SELECT status, sender_host, sender_port, received_tli FROM pg_stat_wal_receiver", &[])
                .await
                .map_err(query_err)?;
            if let Some(r) = rows.first() {
                let status: Option<String> = col(r, 0)?;
                probe.streaming = status.as_deref() == Some("streaming");
                let host: Option<String> = col(r, 1)?;
                let port: Option<i32> = col(r, 2)?;
                probe.streaming_from = host.map(|h| format!("{h}:{}", port.unwrap_or(5432)));
                if let Some(tli) = col::<Option<i32>>(r, 3)? {
                    probe.timeline = probe.timeline.max(tli as u32);
                }
            }
            // The checkpoint's timeline above only moves at a restartpoint (minutes after a
            // switchover) and the walreceiver's row is gone as soon as the primary dies: a replica
            // that followed the new timeline would then report the old one, and the coordinator
            // would rule it out as "behind" exactly when it is needed. The newest WAL segment it
            // received into pg_wal names the timeline it reached and survives both.
            probe.timeline = probe.timeline.max(self.received_wal_timeline(client).await);
        }
        Ok(())
    }
}
