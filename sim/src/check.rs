//! Invariants checked after every event (the design's S1-S5 plus lost writes), and the
//! bookkeeping behind the failover-time figures.

use pgdaemon_core::{ClusterRecord, LeaderLease, LeaseName, MemoryStore, Store, TransitionKind, TransitionStep};

use crate::store::describe_record;
use crate::world::{run_now, Shared, Us};

/// What the checker remembers between events.
#[derive(Debug, Default)]
pub struct Checker {
    pub max_record_term: u64,
    pub max_lease_term: u64,
    pub last_record: Option<ClusterRecord>,
    /// Failover transitions by term: (kind, first seen at, finished/rolled back at).
    pub transitions: Vec<Transition>,
    /// Failover durations in µs: transition start (detection) to new primary writable.
    pub detect_to_writable: Vec<Us>,
    /// Nobody writable until a different server was: (started at, lasted), in µs.
    pub write_outages: Vec<(Us, Us)>,
    /// Failover durations in µs: the candidate designated (record written) to it writable.
    pub designate_to_writable: Vec<Us>,
    /// `detect_to_writable` and the write outages of the failovers started early, on the
    /// evidence that the primary's agent process was gone (its connections refused).
    pub early_detect_to_writable: Vec<Us>,
    pub early_write_outages: Vec<Us>,
}

#[derive(Debug, Clone)]
pub struct Transition {
    pub term: u64,
    pub kind: TransitionKind,
    pub candidate: String,
    pub started: Us,
    /// When the record first named the candidate primary (step `Designated`).
    pub designated: Option<Us>,
    pub ended: Option<Us>,
    /// Started because the primary's agent refused connections (early failover on evidence).
    pub early: bool,
    /// The fencer that confirmed, once the record names one.
    pub fenced_by: Option<String>,
}

impl Checker {
    /// Runs every safety check against the world and the raw store.
    pub fn check(&mut self, w: &mut Shared, store: &MemoryStore, cluster: &str) {
        let writable = w.writable();
        if writable.len() > 1 {
            let names: Vec<String> = writable.iter().map(|&i| w.nodes[i].name.clone()).collect();
            let rec = self.last_record.as_ref().map(describe_record).unwrap_or_default();
            w.violate(format!("S1/S2: {} accept writes at the same time (record: {rec})", names.join(" and ")));
        }
        if !w.store_dirty {
            return;
        }
        w.store_dirty = false;
        let record = run_now(store.read_cluster(cluster));
        let lease = run_now(store.read_lease(cluster, LeaseName::Leader));
        match (record, lease) {
            (Some(Ok(record)), Some(Ok(lease))) => {
                self.record(w, record);
                self.lease(w, lease);
            }
            (r, l) => w.violate(format!("store unreadable by the checker: record {r:?}, lease {l:?}")),
        }
    }

    fn lease(&mut self, w: &mut Shared, lease: Option<LeaderLease>) {
        if let Some(l) = lease {
            if l.term < self.max_lease_term {
                w.violate(format!("leader lease term went back from {} to {}", self.max_lease_term, l.term));
            }
            self.max_lease_term = self.max_lease_term.max(l.term);
        }
    }

    fn record(&mut self, w: &mut Shared, record: Option<ClusterRecord>) {
        let Some(r) = record else {
            if self.last_record.is_some() {
                w.violate("the cluster record disappeared");
            }
            return;
        };
        if r.term < self.max_record_term {
            w.violate(format!("cluster term went back from {} to {}", self.max_record_term, r.term));
        }
        self.max_record_term = self.max_record_term.max(r.term);
        if self.last_record.as_ref() == Some(&r) {
            return;
        }
        let now = w.now;
        w.log(format!("record v{}: {}", r.version, describe_record(&r)));
        match &r.transition {
            Some(t) if !self.transitions.iter().any(|x| x.term == t.term && x.ended.is_none()) => {
                let early = t.reason.contains("agent refused");
                w.counters.early_failovers += u64::from(early);
                self.transitions.push(Transition {
                    term: t.term,
                    kind: t.kind,
                    candidate: t.candidate.clone(),
                    started: now,
                    designated: None,
                    ended: None,
                    early,
                    fenced_by: None,
                });
            }
            _ => {}
        }
        if let Some((t, by)) = r.transition.as_ref().and_then(|t| Some((t, t.fenced_by.as_deref()?))) {
            if let Some(x) = self.transitions.iter_mut().find(|x| x.term == t.term && x.ended.is_none() && x.fenced_by.is_none())
            {
                // "<fencer>: <its evidence>", as the fence chain words a confirmation.
                let fencer = by.split(':').next().unwrap_or(by).to_string();
                *w.counters.fenced_by.entry(fencer.clone()).or_default() += 1;
                x.fenced_by = Some(fencer);
            }
        }
        if let Some(t) = r.transition.as_ref().filter(|t| t.step == TransitionStep::Designated) {
            if let Some(x) = self.transitions.iter_mut().find(|x| x.term == t.term && x.ended.is_none()) {
                x.designated.get_or_insert(now);
            }
        }
        let open_term = r.transition.as_ref().map(|t| t.term);
        for t in self.transitions.iter_mut().filter(|t| t.ended.is_none()) {
            if Some(t.term) != open_term {
                t.ended = Some(now);
            }
        }
        self.last_record = Some(r);
    }

    /// A server became writable by promotion: close the timing windows. `outage`: since when no
    /// server accepted writes, if one did before.
    pub fn on_promotion(&mut self, now: Us, node_name: &str, outage: Option<Us>) {
        let open = self.transitions.iter().rev().find(|t| t.ended.is_none() && t.kind == TransitionKind::Failover);
        let mut early = false;
        if let Some(t) = open.filter(|t| t.candidate == node_name) {
            early = t.early;
            self.detect_to_writable.push(now - t.started);
            if early {
                self.early_detect_to_writable.push(now - t.started);
            }
            if let Some(d) = t.designated {
                self.designate_to_writable.push(now - d);
            }
        }
        if let Some(since) = outage {
            self.write_outages.push((since, now - since));
            if early {
                self.early_write_outages.push(now - since);
            }
        }
    }

    /// Transitions still open (S5 at the end of a run).
    pub fn open_transitions(&self) -> Vec<&Transition> {
        self.transitions.iter().filter(|t| t.ended.is_none()).collect()
    }
}
