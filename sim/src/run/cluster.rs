//! The simulated cluster around the code under test: WAL streaming with synchronous
//! acknowledgement, and the client writing to whichever server accepts writes.

use super::*;

impl Sim {
    pub(super) fn replicate(&mut self) {
        let mut w = self.world.lock();
        let n = w.nodes.len();
        for j in 0..n {
            let (up, running, replica, upstream) = {
                let x = &w.nodes[j];
                (x.up, x.pg.running, x.pg.role == crate::simpg::PgRole::Replica, x.pg.upstream)
            };
            if !up || !running || !replica {
                continue;
            }
            // Replay trails receipt by one step, whether or not streaming continues.
            w.nodes[j].pg.replayed = w.nodes[j].pg.wal.len();
            let Some(u) = upstream else {
                w.nodes[j].pg.streaming = false;
                continue;
            };
            let ok =
                w.nodes[u].up && w.nodes[u].pg.running && !w.cut_between(j, u) && w.nodes[j].pg.is_prefix_of(&w.nodes[u].pg.wal);
            if !ok {
                w.nodes[j].pg.streaming = false;
                continue;
            }
            if w.nodes[j].stalled {
                continue;
            }
            let src_len = w.nodes[u].pg.wal.len();
            let lag = if w.rng.chance(0.1) { w.rng.range(0, 20) as usize } else { 0 };
            let target = src_len.saturating_sub(lag).max(w.nodes[j].pg.wal.len());
            let have = w.nodes[j].pg.wal.len();
            let add: Vec<u64> = w.nodes[u].pg.wal[have..target].to_vec();
            let upstream_timeline = w.nodes[u].pg.timeline;
            let pg = &mut w.nodes[j].pg;
            pg.wal.extend(add);
            pg.streaming = true;
            // A standby following a promoted upstream switches to its timeline (Postgres reads
            // the history file and goes on); without this a replica that followed a promotion
            // kept reporting the old timeline and was never a candidate again (seed 1067).
            // Coarse like `rewind_to`: the switch counts once it streams, not at the switch record.
            pg.timeline = pg.timeline.max(upstream_timeline);
        }
        // Synchronous acknowledgement.
        for p in 0..n {
            if w.nodes[p].pg.pending.is_empty() || !w.nodes[p].pg.writable() {
                continue;
            }
            let sync = w.nodes[p].pg.sync.clone();
            let pending = std::mem::take(&mut w.nodes[p].pg.pending);
            let mut still = Vec::new();
            for (id, idx) in pending {
                let confirmed = (0..n)
                    .filter(|&k| {
                        let x = &w.nodes[k];
                        k != p
                            && x.up
                            && x.pg.running
                            && x.pg.streaming
                            && x.pg.upstream == Some(p)
                            && (sync.any || sync.members.contains(&k))
                            && x.pg.wal.get(idx) == Some(&id)
                    })
                    .count();
                if confirmed as u32 >= sync.count {
                    w.acked.push(id);
                    w.counters.acked += 1;
                } else {
                    still.push((id, idx));
                }
            }
            w.nodes[p].pg.pending = still;
        }
        let now = w.now;
        w.schedule(now + 100 * MS, Event::Replicate);
    }

    pub(super) fn client_write(&mut self) {
        let mut w = self.world.lock();
        let writable = w.writable();
        if !writable.is_empty() {
            let p = *w.rng.pick(&writable);
            let id = w.fresh_id();
            w.counters.writes += 1;
            let pg = &mut w.nodes[p].pg;
            pg.wal.push(id);
            let idx = pg.wal.len() - 1;
            if pg.sync.is_sync() {
                pg.pending.push((id, idx));
            } else {
                w.acked.push(id);
                w.counters.acked += 1;
            }
        }
        let at = w.now + w.rng.range(50 * MS, 250 * MS);
        w.schedule(at, Event::ClientWrite);
    }
}
