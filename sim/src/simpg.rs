//! A simulated PostgreSQL server: only what failover correctness depends on.
//!
//! WAL is modelled as the list of write ids a server holds, in order. Ids are drawn from one
//! global counter at the moment a primary accepts a write, so every server's list is strictly
//! ascending and two servers agree on a prefix exactly when they agree on its last element. That
//! makes divergence (the old primary wrote past the point a replica was promoted) cheap to detect,
//! and "is acknowledged write X on this server" a binary search.

use pgdaemon_core::Lsn;

/// First LSN of the simulated WAL and the size of one write record.
pub const WAL_BASE: u64 = 0x0300_0000;
pub const REC_BYTES: u64 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRole {
    Primary,
    Replica,
}

/// `synchronous_standby_names` as the simulated primary applies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncNames {
    /// `ANY n (...)`; 0 means asynchronous commit.
    pub count: u32,
    /// Standby node indexes; `any` = `*` (every connected standby qualifies).
    pub members: Vec<usize>,
    pub any: bool,
}

impl SyncNames {
    pub fn is_sync(&self) -> bool {
        self.count > 0 && (self.any || !self.members.is_empty())
    }
}

#[derive(Debug, Clone)]
pub struct SimPg {
    pub running: bool,
    /// What the data directory says (standby.signal present or not): survives a restart, so a
    /// crashed primary that is started again without care comes back writable, as in reality.
    pub role: PgRole,
    pub timeline: u32,
    pub wal: Vec<u64>,
    /// Records replayed (replica); `<= wal.len()`.
    pub replayed: usize,
    /// `primary_conninfo`: the node this server streams from.
    pub upstream: Option<usize>,
    /// A WAL receiver is connected and the histories are compatible.
    pub streaming: bool,
    pub sync: SyncNames,
    /// Writes accepted but waiting for synchronous standbys: (id, index in `wal`).
    pub pending: Vec<(u64, usize)>,
    /// Bumps on every start, so an operation begun before a crash knows it was interrupted.
    pub generation: u64,
    /// Bumps when something outside the agent stops the server (the `command` fencer): a start
    /// in flight then fails, as `pg_ctl start -w` does when its postmaster is killed. A start
    /// begun afterwards succeeds.
    pub killed: u64,
    /// Physical replication slots (primary).
    pub slots: Vec<String>,
    /// Starts fail until then (sim time): a crashed postmaster nobody reaped still holds the
    /// lock file, or recovery cannot finish.
    pub start_fails_until: u64,
    /// No database yet (automatic bootstrap runs initdb here, or basebackup copies one).
    pub empty: bool,
    /// The bootstrap marker beside the directory: an initialisation of this node not yet
    /// confirmed by a cluster record.
    pub marker: bool,
}

impl SimPg {
    pub fn new_primary() -> Self {
        SimPg {
            running: true,
            role: PgRole::Primary,
            timeline: 1,
            wal: Vec::new(),
            replayed: 0,
            upstream: None,
            streaming: false,
            sync: SyncNames::default(),
            pending: Vec::new(),
            generation: 1,
            killed: 0,
            slots: Vec::new(),
            start_fails_until: 0,
            empty: false,
            marker: false,
        }
    }

    /// A node whose data directory is empty (a fresh cluster, automatic bootstrap).
    pub fn new_empty() -> Self {
        SimPg { running: false, timeline: 0, empty: true, ..Self::new_primary() }
    }

    /// initdb: a new database of its own (no WAL shared with anyone), stopped.
    pub fn initdb(&mut self) {
        *self = SimPg { running: false, marker: self.marker, generation: self.generation, ..Self::new_primary() };
    }

    pub fn new_replica(of: usize) -> Self {
        SimPg { role: PgRole::Replica, upstream: Some(of), ..Self::new_primary() }
    }

    /// Accepting writes right now (the quantity S1/S2 are about).
    pub fn writable(&self) -> bool {
        self.running && self.role == PgRole::Primary
    }

    pub fn lsn_at(len: usize) -> Lsn {
        Lsn(WAL_BASE + len as u64 * REC_BYTES)
    }

    /// End of WAL held (write/flush on a primary, receive on a replica).
    pub fn end_lsn(&self) -> Lsn {
        Self::lsn_at(self.wal.len())
    }

    pub fn replay_lsn(&self) -> Lsn {
        Self::lsn_at(self.replayed)
    }

    pub fn holds(&self, id: u64) -> bool {
        self.wal.binary_search(&id).is_ok()
    }

    /// Length of the common prefix of two WAL histories.
    pub fn common_prefix(a: &[u64], b: &[u64]) -> usize {
        // Agreement at index i implies agreement on everything before it (ids are unique and
        // copied only as prefixes), so the agreeing indexes form a prefix: binary search it.
        let n = a.len().min(b.len());
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if a[mid] == b[mid] {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// `self` can stream from `source` without a rewind: its history is a prefix of the source's.
    pub fn is_prefix_of(&self, source: &[u64]) -> bool {
        match self.wal.last() {
            None => true,
            Some(last) => source.get(self.wal.len() - 1) == Some(last),
        }
    }

    pub fn crash(&mut self) {
        self.running = false;
        self.streaming = false;
        self.pending.clear();
    }

    pub fn start(&mut self) {
        self.running = true;
        self.streaming = false;
        self.generation += 1;
        if self.role == PgRole::Replica {
            // Crash recovery replays everything on disk.
            self.replayed = self.wal.len();
        }
    }

    /// `pg_promote()`: ends recovery on a new timeline; the end-of-recovery record gets `id`.
    pub fn promote(&mut self, id: u64) {
        self.role = PgRole::Primary;
        self.timeline += 1;
        self.replayed = self.wal.len();
        self.wal.push(id);
        self.upstream = None;
        self.streaming = false;
        self.sync = SyncNames::default();
        self.pending.clear();
    }

    /// Writes standby.signal: takes effect as a replica at the next start.
    pub fn make_standby(&mut self, upstream: Option<usize>) {
        self.role = PgRole::Replica;
        self.upstream = upstream;
        self.sync = SyncNames::default();
        self.pending.clear();
    }

    /// pg_rewind onto `source`: drops everything past the common history and copies the rest.
    pub fn rewind_to(&mut self, source: &SimPg) {
        let keep = Self::common_prefix(&self.wal, &source.wal);
        self.wal.truncate(keep);
        self.replayed = self.replayed.min(keep);
        self.timeline = source.timeline;
    }

    /// pg_basebackup from `source`: a fresh copy of its whole history.
    pub fn clone_from(&mut self, source: &SimPg) {
        self.empty = false;
        self.marker = false;
        self.wal = source.wal.clone();
        self.replayed = self.wal.len();
        self.timeline = source.timeline;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_divergence() {
        let mut p = SimPg::new_primary();
        p.wal = vec![1, 2, 3, 5];
        let mut r = SimPg::new_replica(0);
        r.wal = vec![1, 2, 3];
        assert!(r.is_prefix_of(&p.wal));
        r.promote(4);
        assert_eq!(r.wal, vec![1, 2, 3, 4]);
        assert!(!r.is_prefix_of(&p.wal));
        assert_eq!(SimPg::common_prefix(&p.wal, &r.wal), 3);
        p.rewind_to(&r);
        assert_eq!(p.wal, vec![1, 2, 3]);
        assert!(p.is_prefix_of(&r.wal));
        assert!(r.holds(4) && !p.holds(4));
        assert_eq!(SimPg::lsn_at(2).0 - SimPg::lsn_at(1).0, REC_BYTES);
    }
}
