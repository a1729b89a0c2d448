//! [`PgControl`] over a simulated Postgres: each operation takes virtual time and applies its
//! effect at an instant inside it, so a server keeps accepting writes until a stop or demotion
//! has actually happened.

use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::pg::{
    slot_name, DataDirState, PgControl, PgError, PgProbe, PrimaryTarget, ReplicationRow, StopMode, SyncStandbys, UpstreamConfig,
};
use pgdaemon_core::Role;

use crate::simpg::{PgRole, SyncNames};
use crate::world::{Shared, Us, World, MS, SEC};

pub const PG_PORT: u16 = 5432;

/// The local Postgres of node `node`, as its agent controls it.
#[derive(Clone)]
pub struct SimPgControl {
    world: World,
    node: usize,
}

impl SimPgControl {
    pub fn new(world: World, node: usize) -> Self {
        SimPgControl { world, node }
    }

    /// Sleeps until a random instant in `lo..=hi` from now, returning the end of a window of
    /// `extra` after it (for the verification part of an operation).
    async fn take(&self, lo: Us, hi: Us) {
        let d = {
            let mut w = self.world.lock();
            w.rng.range(lo, hi)
        };
        self.world.sleep(d).await;
    }

    fn target_node(&self, w: &Shared, t: &PrimaryTarget) -> Result<usize, PgError> {
        w.node_index(&t.host).ok_or_else(|| PgError::Query(format!("could not translate host name {:?}", t.host)))
    }

    /// The source of a rewind/basebackup is reachable and running.
    fn source_ok(&self, w: &Shared, src: usize) -> Result<(), PgError> {
        if src == self.node {
            return Err(PgError::WrongState("cannot copy from itself".into()));
        }
        if !w.nodes[src].up || !w.nodes[src].pg.running || w.cut_between(self.node, src) {
            return Err(PgError::Tool {
                tool: "pg_rewind".into(),
                output: format!("could not connect to {}", w.nodes[src].name),
            });
        }
        Ok(())
    }

    fn start_now(&self, w: &mut Shared) {
        let n = &mut w.nodes[self.node];
        if !n.pg.running {
            n.pg.start();
            let role = if n.pg.role == PgRole::Primary { "PRIMARY (writable)" } else { "replica" };
            let name = n.name.clone();
            w.log(format!("pg {name}: started as {role}"));
        }
    }

    async fn stop_impl(&self, mode: StopMode, why: &str) -> Result<(), PgError> {
        let (lo, hi) = match mode {
            StopMode::Immediate => (20 * MS, 200 * MS),
            StopMode::Fast => (100 * MS, 1500 * MS),
            StopMode::Smart => (200 * MS, 3000 * MS),
        };
        self.take(lo, hi).await;
        let mut w = self.world.lock();
        stop_server(&mut w, self.node, why, mode != StopMode::Immediate);
        Ok(())
    }

    async fn start_impl(&self) -> Result<(), PgError> {
        let killed = self.world.lock().nodes[self.node].pg.killed;
        self.take(300 * MS, 2500 * MS).await;
        let mut w = self.world.lock();
        if w.nodes[self.node].pg.killed != killed {
            return Err(PgError::Tool {
                tool: "pg_ctl".into(),
                output: "simulated: the server was stopped while starting".into(),
            });
        }
        if w.now < w.nodes[self.node].pg.start_fails_until {
            return Err(PgError::Tool {
                tool: "pg_ctl".into(),
                output: "simulated: lock file names a postmaster that has not been reaped".into(),
            });
        }
        if w.rng.chance(0.02) {
            return Err(PgError::Tool { tool: "pg_ctl".into(), output: "simulated: could not start server".into() });
        }
        if w.nodes[self.node].pg.empty {
            return Err(PgError::WrongState("the data directory is empty".into()));
        }
        self.start_now(&mut w);
        Ok(())
    }
}

/// Stops node `node`'s Postgres now, if it runs. `clean`: a clean shutdown writes a checkpoint
/// record and its walsenders ship everything to the standbys streaming from it before exiting
/// (what makes a switchover lossless); otherwise an immediate stop or a kill (WAL stays as it is).
pub fn stop_server(w: &mut Shared, node: usize, why: &str, clean: bool) {
    if clean && w.nodes[node].up && w.nodes[node].pg.writable() {
        let id = w.fresh_id();
        w.nodes[node].pg.wal.push(id);
        let wal = w.nodes[node].pg.wal.clone();
        for j in 0..w.nodes.len() {
            let ok = j != node && w.nodes[j].up && !w.cut_between(j, node);
            let r = &mut w.nodes[j].pg;
            if ok && r.running && r.streaming && r.upstream == Some(node) && r.is_prefix_of(&wal) {
                r.wal = wal.clone();
            }
        }
    }
    let n = &mut w.nodes[node];
    if n.pg.running {
        let was = if n.pg.writable() { "primary" } else { "replica" };
        n.pg.crash();
        let name = n.name.clone();
        w.log(format!("pg {name}: stopped ({why}, was {was})"));
    }
}

/// Checks made at the instant a server becomes writable through promotion (S4, lost writes).
pub fn on_promote(w: &mut Shared, node: usize) {
    let now = w.now;
    w.counters.promotions += 1;
    w.promotions.push((now, node));
    let name = w.nodes[node].name.clone();
    if w.nodes[node].nofailover {
        w.violate(format!("S4: promoted {name}, which is tagged nofailover"));
    }
    let cand_end = w.nodes[node].pg.end_lsn();
    if w.sync_required {
        let missing: Vec<u64> = w.acked.iter().copied().filter(|id| !w.nodes[node].pg.holds(*id)).take(5).collect();
        if !missing.is_empty() {
            w.violate(format!(
                "lost acknowledged writes: promoted {name} lacks acknowledged write ids {missing:?} (synchronous mode)"
            ));
        }
    }
    let lease_us = w.lease_ms * MS;
    // The timeline the candidate was promoted from. A replica on an older timeline is no measure:
    // its WAL past that timeline's switch point was discarded by an earlier failover (checked
    // then), and below it it is behind the candidate anyway.
    let from_tl = w.nodes[node].pg.timeline.saturating_sub(1);
    for j in 0..w.nodes.len() {
        let o = &w.nodes[j];
        if j == node || !o.up || !o.pg.running || o.pg.role != PgRole::Replica || o.pg.timeline < from_tl {
            continue;
        }
        if let Some((at, Some(pos))) = o.last_beat {
            if now.saturating_sub(at) <= lease_us && cand_end.0 + w.max_lag < pos.0 {
                let msg = format!(
                    "S4: promoted {name} at {cand_end} although reachable replica {} reported {pos} (max lag {})",
                    o.name, w.max_lag
                );
                w.violate(msg);
            }
        }
    }
}

#[async_trait]
impl PgControl for SimPgControl {
    async fn probe(&self) -> PgProbe {
        self.take(MS, 5 * MS).await;
        let w = self.world.lock();
        let n = &w.nodes[self.node];
        let pg = &n.pg;
        let data = match pg.role {
            _ if pg.empty => DataDirState::Empty,
            PgRole::Primary => DataDirState::Primary,
            _ => DataDirState::Standby,
        };
        if !pg.running {
            return PgProbe {
                error: Some("simulated: connection refused".into()),
                bootstrap_leftover: pg.marker,
                ..PgProbe::stopped(data)
            };
        }
        let mut p = PgProbe { running: true, data, timeline: pg.timeline, ..Default::default() };
        match pg.role {
            PgRole::Primary => {
                p.role = Role::Primary;
                p.write_lsn = Some(pg.end_lsn());
                p.flush_lsn = Some(pg.end_lsn());
                p.slots = pg.slots.clone();
                let mut listed: Vec<String> = pg.sync.members.iter().map(|&j| w.nodes[j].name.clone()).collect();
                if pg.sync.any {
                    listed.push("*".into());
                }
                p.sync_standby_names = Some(SyncStandbys::any(pg.sync.count, listed).to_setting());
                for (j, o) in w.nodes.iter().enumerate() {
                    if j != self.node && o.up && o.pg.running && o.pg.streaming && o.pg.upstream == Some(self.node) {
                        let sync =
                            if pg.sync.is_sync() && (pg.sync.any || pg.sync.members.contains(&j)) { "quorum" } else { "async" };
                        p.replication.push(ReplicationRow {
                            application_name: o.name.clone(),
                            state: "streaming".into(),
                            sync_state: sync.into(),
                            flush_lsn: Some(o.pg.end_lsn()),
                            replay_lsn: Some(o.pg.replay_lsn()),
                        });
                    }
                }
            }
            PgRole::Replica => {
                p.role = Role::Replica;
                p.receive_lsn = Some(pg.end_lsn());
                p.replay_lsn = Some(pg.replay_lsn());
                p.replay_age = Some(Duration::from_millis(if pg.replayed == pg.wal.len() { 0 } else { 500 }));
                p.streaming = pg.streaming;
                if let Some(u) = pg.upstream {
                    let host = w.nodes[u].name.clone();
                    if pg.streaming {
                        p.streaming_from = Some(format!("{host}:{PG_PORT}"));
                    }
                    p.upstream = Some(UpstreamConfig {
                        host: Some(host),
                        port: Some(PG_PORT),
                        application_name: Some(n.name.clone()),
                        slot: Some(slot_name(&n.name)),
                    });
                }
            }
        }
        p
    }

    async fn start(&self) -> Result<(), PgError> {
        self.start_impl().await
    }

    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        self.stop_impl(mode, "stop").await
    }

    async fn promote(&self) -> Result<(), PgError> {
        {
            let w = self.world.lock();
            let pg = &w.nodes[self.node].pg;
            if !pg.running {
                return Err(PgError::WrongState("not running".into()));
            }
            if pg.role == PgRole::Primary {
                return Ok(());
            }
        }
        self.take(100 * MS, 1200 * MS).await;
        let mut w = self.world.lock();
        let pg = &w.nodes[self.node].pg;
        if !pg.running {
            return Err(PgError::NotVerified("server stopped during promotion".into()));
        }
        if pg.role == PgRole::Replica {
            let id = w.fresh_id();
            w.nodes[self.node].pg.promote(id);
            let name = w.nodes[self.node].name.clone();
            let tl = w.nodes[self.node].pg.timeline;
            let lsn = w.nodes[self.node].pg.end_lsn();
            w.log(format!("pg {name}: PROMOTED (timeline {tl}, lsn {lsn})"));
            on_promote(&mut w, self.node);
        }
        Ok(())
    }

    async fn demote(&self) -> Result<(), PgError> {
        // A fast stop. As documented, the data directory is left as it is: a later plain `start`
        // of a former primary comes back writable, exactly the hazard a real server has.
        self.take(50 * MS, 1000 * MS).await;
        let mut w = self.world.lock();
        stop_server(&mut w, self.node, "demote", true);
        Ok(())
    }

    async fn final_position(&self) -> Option<pgdaemon_core::Lsn> {
        // pg_controldata of a stopped primary. The simulation does not tell a crash from a clean
        // stop here; the end of its WAL is what its standbys got if the stop was clean.
        self.take(MS, 10 * MS).await;
        let w = self.world.lock();
        let pg = &w.nodes[self.node].pg;
        (!pg.running && pg.role == PgRole::Primary).then(|| pg.end_lsn())
    }

    async fn follow(&self, primary: &PrimaryTarget) -> Result<(), PgError> {
        let running = {
            let w = self.world.lock();
            let pg = &w.nodes[self.node].pg;
            if pg.running && pg.role == PgRole::Primary {
                return Err(PgError::WrongState("running primary: rewind first".into()));
            }
            pg.running
        };
        let target = {
            let w = self.world.lock();
            self.target_node(&w, primary)?
        };
        if target == self.node {
            return Err(PgError::WrongState("cannot follow itself".into()));
        }
        self.take(30 * MS, 200 * MS).await;
        {
            let mut w = self.world.lock();
            let name = w.nodes[self.node].name.clone();
            let n = &mut w.nodes[self.node];
            if n.pg.running && n.pg.role == PgRole::Primary {
                return Err(PgError::WrongState("running primary: rewind first".into()));
            }
            if n.pg.upstream != Some(target) {
                n.pg.streaming = false;
            }
            n.pg.make_standby(Some(target));
            w.log(format!("pg {name}: follows {}", primary.name));
        }
        if !running {
            self.start_impl().await?;
        }
        Ok(())
    }

    async fn rewind(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        let src = {
            let w = self.world.lock();
            let src = self.target_node(&w, source)?;
            self.source_ok(&w, src)?;
            src
        };
        self.stop_impl(StopMode::Fast, "rewind").await?;
        self.take(500 * MS, 5 * SEC).await;
        {
            let mut w = self.world.lock();
            self.source_ok(&w, src)?;
            if w.nodes[self.node].pg.running {
                return Err(PgError::WrongState("started again during rewind".into()));
            }
            let source_pg = w.nodes[src].pg.clone();
            let n = &mut w.nodes[self.node];
            n.pg.rewind_to(&source_pg);
            n.pg.make_standby(Some(src));
            let name = n.name.clone();
            let len = n.pg.wal.len();
            w.log(format!("pg {name}: rewound onto {} (kept {len} records)", source.name));
        }
        self.start_impl().await
    }

    async fn basebackup(&self, source: &PrimaryTarget) -> Result<(), PgError> {
        let src = {
            let w = self.world.lock();
            let src = self.target_node(&w, source)?;
            self.source_ok(&w, src)?;
            src
        };
        self.stop_impl(StopMode::Fast, "basebackup").await?;
        self.take(2 * SEC, 15 * SEC).await;
        {
            let mut w = self.world.lock();
            self.source_ok(&w, src)?;
            if w.nodes[self.node].pg.running {
                return Err(PgError::WrongState("started again during basebackup".into()));
            }
            let source_pg = w.nodes[src].pg.clone();
            let n = &mut w.nodes[self.node];
            n.pg.clone_from(&source_pg);
            n.pg.make_standby(Some(src));
            let name = n.name.clone();
            w.log(format!("pg {name}: basebackup from {}", source.name));
        }
        self.start_impl().await
    }

    async fn ensure_slots(&self, members: &[String]) -> Result<(), PgError> {
        self.take(MS, 10 * MS).await;
        let mut w = self.world.lock();
        let pg = &mut w.nodes[self.node].pg;
        if !pg.writable() {
            return Err(PgError::WrongState("not a running primary".into()));
        }
        for m in members {
            let s = slot_name(m);
            if !pg.slots.contains(&s) {
                pg.slots.push(s);
            }
        }
        Ok(())
    }

    /// initdb and the roles, on a server reachable through its Unix socket only: not writable
    /// for any client, so the checker does not count it (`SimPg::writable` stays false). A
    /// restore from a backup (`restore`) is the same steps as seen from the cluster: a database
    /// made within the lock, socket-only, promoted locally and left stopped.
    async fn initialize(
        &self,
        budget: std::time::Duration,
        _restore: Option<&pgdaemon_core::backup::RestoreSource>,
    ) -> Result<(), PgError> {
        {
            let mut w = self.world.lock();
            let pg = &mut w.nodes[self.node].pg;
            if pg.running || (!pg.empty && !pg.marker) {
                return Err(PgError::WrongState("the data directory holds a database; not initialising over it".into()));
            }
            pg.marker = true;
        }
        let took = {
            let mut w = self.world.lock();
            w.rng.range(SEC, 8 * SEC)
        };
        let budget = budget.as_micros() as Us;
        self.world.sleep(took.min(budget)).await;
        let mut w = self.world.lock();
        let n = &mut w.nodes[self.node];
        if took > budget {
            // Killed at the deadline half-way: a marked, unusable directory.
            n.pg.empty = false;
            return Err(PgError::Timeout("simulated: initialisation did not finish within the lock".into()));
        }
        n.pg.initdb();
        let name = n.name.clone();
        w.counters.initialisations += 1;
        w.log(format!("pg {name}: initialised a new database (stopped)"));
        Ok(())
    }

    async fn initialized(&self) -> Result<(), PgError> {
        self.take(MS, 5 * MS).await;
        self.world.lock().nodes[self.node].pg.marker = false;
        Ok(())
    }

    async fn drop_slots(&self, slots: &[String]) -> Result<(), PgError> {
        self.take(MS, 10 * MS).await;
        let mut w = self.world.lock();
        let pg = &mut w.nodes[self.node].pg;
        if !pg.writable() {
            return Err(PgError::WrongState("not a running primary".into()));
        }
        pg.slots.retain(|s| !slots.contains(s));
        Ok(())
    }

    async fn set_sync_standbys(&self, names: &SyncStandbys) -> Result<(), PgError> {
        self.take(MS, 20 * MS).await;
        let mut w = self.world.lock();
        if !w.nodes[self.node].pg.running {
            return Err(PgError::WrongState("not running".into()));
        }
        let mut members = Vec::new();
        let mut any = false;
        for n in &names.names {
            match w.node_index(n) {
                Some(i) => members.push(i),
                None if n == "*" => any = true,
                // A name no standby uses: it can never confirm (as in Postgres).
                None => {}
            }
        }
        let sync = SyncNames { count: if names.is_empty() { 0 } else { names.count }, members, any };
        let name = w.nodes[self.node].name.clone();
        w.log(format!("pg {name}: synchronous_standby_names = '{}'", names.to_setting()));
        w.nodes[self.node].pg.sync = sync;
        Ok(())
    }
}
