//! Checking a run: after every event (promotions, writable primaries, S1-S7 through
//! [`crate::check::Checker`]) and once at the end (liveness after the last heal).

use super::*;

impl Sim {
    pub(super) fn after_event(&mut self) {
        let mut w = self.world.lock();
        let promos = w.promotions.len();
        self.checker.check(&mut w, &self.store, CLUSTER);
        let _ = promos;
        let writable = w.writable();
        let now = w.now;
        match writable.first() {
            None => {
                if self.unwritable_since.is_none() {
                    self.unwritable_since = Some(now);
                }
            }
            Some(&p) => {
                // A first primary (a bootstrapped cluster forming) ends no outage: nobody wrote before.
                let changed = self.last_writer.is_some_and(|last| last != p);
                let outage = self.unwritable_since.take().filter(|_| changed);
                if self.last_writer != Some(p) {
                    let name = w.nodes[p].name.clone();
                    self.checker.on_promotion(now, &name, outage);
                }
                self.last_writer = Some(p);
            }
        }
        if self.recovered_for_heal != w.last_heal {
            self.recovered_for_heal = w.last_heal;
            self.recovered_at = None;
        }
        if self.recovered_at.is_none() && !writable.is_empty() {
            self.recovered_at = Some(now);
        }
    }

    pub(super) fn final_checks(&mut self) {
        let parked: Vec<usize> = (0..self.slots.len())
            .filter(|&s| self.slots[s].parked && matches!(self.slots[s].state, SlotState::Busy(_)))
            .collect();
        let mut w = self.world.lock();
        if !parked.is_empty() {
            w.sim_error =
                Some(format!("actor slots {parked:?} wait on something that is neither virtual time nor another actor"));
            return;
        }
        let record = run_now(self.store.read_cluster(CLUSTER)).and_then(|r| r.ok()).flatten();
        let writable = w.writable();
        let names: Vec<String> = writable.iter().map(|&i| w.nodes[i].name.clone()).collect();
        let bound = self.opts.liveness_bound / SEC;
        let Some(record) = record else {
            w.violate("liveness: no cluster record at the end");
            return;
        };
        if let Some(t) = &record.transition {
            if t.step == TransitionStep::Fenced {
                if let Some(why) = blocked_by_lag(&w) {
                    w.counters.blocked_by_lag += 1;
                    w.log(format!("END: failover blocked by maximum_lag_on_failover, as configured: {why}"));
                    return;
                }
            }
            w.violate(format!(
                "S5: a {:?} to {} (term {}, step {:?}) neither finished nor rolled back {bound}s after the last heal",
                t.kind, t.candidate, t.term, t.step
            ));
            return;
        }
        if writable.len() != 1 || record.primary.as_deref() != Some(names[0].as_str()) {
            w.violate(format!(
                "liveness: {bound}s after the last heal, writable {names:?} but the record names {:?} (term {}, paused {})",
                record.primary, record.term, record.paused
            ));
        }
    }
}

/// Ground truth for a failover left blocked: every member that may be promoted (up, a replica,
/// not tagged nofailover) lacks more than `maximum_lag_on_failover` of WAL that another replica
/// holds on the same history. Promoting any of them would lose that WAL (S4), so waiting for an
/// operator is the configured behaviour, not a liveness failure.
fn blocked_by_lag(w: &Shared) -> Option<String> {
    let max_records = w.max_lag / crate::simpg::REC_BYTES;
    let candidates: Vec<usize> = (0..w.nodes.len())
        .filter(|&i| {
            let n = &w.nodes[i];
            n.up && !n.nofailover && n.pg.role == crate::simpg::PgRole::Replica
        })
        .collect();
    for (j, holder) in w.nodes.iter().enumerate() {
        // A holder that may itself be promoted is no excuse for staying blocked.
        if holder.pg.role != crate::simpg::PgRole::Replica || candidates.contains(&j) {
            continue;
        }
        let ahead_of_all = candidates.iter().all(|&c| {
            let cand = &w.nodes[c].pg;
            cand.is_prefix_of(&holder.pg.wal) && holder.pg.wal.len() as u64 > cand.wal.len() as u64 + max_records
        });
        if ahead_of_all && !candidates.is_empty() {
            return Some(format!(
                "{}{} holds {} records, every candidate more than {} fewer",
                holder.name,
                if holder.nofailover { " (nofailover)" } else { "" },
                holder.pg.wal.len(),
                max_records
            ));
        }
    }
    None
}
