//! Synchronous mode on the primary: which standbys `synchronous_standby_names` lists, what the
//! cluster record says about them ([`SyncState`]), and in which order the two change.
//!
//! The coordinator promotes, in synchronous mode, any member of the recorded set of the term being
//! replaced (coordinator `Eligibility::check`, S4). So the invariant kept here is that **every
//! member of the recorded set holds every commit the primary acknowledged**:
//! - Postgres always gets `ANY k (k names)`: every listed standby must confirm each commit.
//! - Adding a standby: `synchronous_standby_names` first; the record only on a later loop, once
//!   `pg_stat_replication` shows it listed and flushed up to the primary's flush position read
//!   after the setting (so it also holds what was acknowledged before it was listed).
//! - Removing a standby (or degrading, or turning synchronous mode off): the record first (a
//!   conditional write on the cluster record, so it fails if a coordinator changed the term),
//!   then Postgres. When the record write fails, the runtime skips the Postgres change.
//!
//! This is Patroni's order for its (non-quorum) synchronous mode ("first set in postgresql.conf
//! and then in DCS; when removing, first remove in DCS, then in postgresql.conf"). The reverse
//! order (record a larger set first) is only safe for a quorum-aware coordinator, which must then
//! see enough of the set and pick its most advanced member; ours treats every recorded member as
//! eligible.
//!
//! Candidates are the standbys `pg_stat_replication` shows `streaming` whose heartbeat says they
//! run as replicas and that are not tagged `nofailover`: listing a standby that may never be
//! promoted would cost commit latency without giving the failover a lossless candidate.
//!
//! `strict` never leaves commits unprotected: with no candidate it keeps the current list (commits
//! wait), and a primary with an empty list lists every other member (`ANY 1 (...)`) until one
//! streams; nothing is recorded for such a list, because no single member of it has every commit.
//! `on` with no candidate records `degraded` (no member) first, then clears the list, so commits
//! go on asynchronously; the coordinator promotes nobody out of such a term (S4, as Patroni: "when
//! the primary fails in this mode no standby will be promoted"), the primary resumes when it
//! returns, or an operator forces a failover.

use std::collections::BTreeMap;

use crate::config::SyncMode;
use crate::model::{ClusterRecord, MemberStatus, Role, SyncState};
use crate::pg::{PgProbe, SyncStandbys};

/// What the primary's agent looks at to keep synchronous replication.
#[derive(Debug, Clone, Copy)]
pub struct SyncInput<'a> {
    /// This member (the primary).
    pub me: &'a str,
    pub mode: SyncMode,
    /// `synchronous_node_count`: how many standbys to list.
    pub node_count: u32,
    /// The cluster record naming this member primary for `record.term`.
    pub record: &'a ClusterRecord,
    pub members: &'a BTreeMap<String, MemberStatus>,
    /// This loop's probe of the (running, read-write) local Postgres.
    pub probe: &'a PgProbe,
}

/// One change, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncStep {
    /// Write this synchronous state into the cluster record (compare-and-set on its version).
    Record(Option<SyncState>),
    /// Set `synchronous_standby_names`.
    Set(SyncStandbys),
}

/// The changes for this loop and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPlan {
    pub steps: Vec<SyncStep>,
    pub reason: String,
}

impl SyncPlan {
    fn none(reason: impl Into<String>) -> Self {
        SyncPlan { steps: vec![], reason: reason.into() }
    }
}

/// Names listed in a `synchronous_standby_names` list (for reasons).
fn show(names: &[String]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The setting to apply on a standby just before it is promoted: in `strict` mode every other
/// member that may be promoted (`ANY 1 (...)`), so no commit of the new term is acknowledged
/// before a standby has it; `None` otherwise (the first loop as primary sets the list).
pub fn before_promote(me: &str, mode: SyncMode, members: &BTreeMap<String, MemberStatus>) -> Option<SyncStandbys> {
    if mode != SyncMode::Strict {
        return None;
    }
    let others: Vec<String> = members.values().filter(|m| m.name != me && !m.tags.nofailover).map(|m| m.name.clone()).collect();
    (!others.is_empty()).then(|| SyncStandbys::any(1, others))
}

/// The next changes to `synchronous_standby_names` and the recorded set (see the module docs).
pub fn plan(input: &SyncInput) -> SyncPlan {
    let probe = input.probe;
    let record = input.record;
    let term = record.term;
    let Some(current_text) = probe.sync_standby_names.as_deref() else {
        return SyncPlan::none("synchronous_standby_names not reported by the probe");
    };
    let current = SyncStandbys::parse(current_text).unwrap_or_default();

    if input.mode == SyncMode::Off {
        let mut steps = vec![];
        if record.sync.is_some() {
            steps.push(SyncStep::Record(None));
        }
        if !current_text.is_empty() {
            steps.push(SyncStep::Set(SyncStandbys::none()));
        }
        let reason = if steps.is_empty() { "" } else { "synchronous mode off: clearing the recorded set, then the list" };
        return SyncPlan { steps, reason: reason.into() };
    }

    let recorded = record.sync.as_ref().filter(|s| s.term == term);
    let rec_members: Vec<String> = recorded.map(|s| s.members.clone()).unwrap_or_default();
    let rec_degraded = recorded.is_some_and(|s| s.degraded);

    // Healthy streaming standbys that may be promoted; already listed ones first (stable list),
    // then the most advanced.
    let mut candidates: Vec<(&str, usize, Option<crate::lsn::Lsn>)> = Vec::new();
    for row in &probe.replication {
        let name = row.application_name.as_str();
        let ok = row.state == "streaming"
            && name != input.me
            && input.members.get(name).is_some_and(|m| !m.tags.nofailover && m.pg_running && m.role == Role::Replica);
        if ok && !candidates.iter().any(|c| c.0 == name) {
            let listed = current.names.iter().position(|n| n == name).unwrap_or(usize::MAX);
            candidates.push((name, listed, row.flush_lsn));
        }
    }
    candidates.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    let k = input.node_count.max(1) as usize;
    let chosen: Vec<String> = candidates.iter().take(k).map(|c| c.0.to_string()).collect();

    let mut why = Vec::new();
    let target = if !chosen.is_empty() {
        SyncStandbys::any(chosen.len() as u32, chosen)
    } else if input.mode == SyncMode::On {
        why.push("no healthy streaming standby: degrading to asynchronous commits".to_string());
        SyncStandbys::none()
    } else if !current.is_empty() {
        why.push(format!("strict: no healthy streaming standby; keeping {current_text} (commits wait)"));
        current.clone()
    } else {
        let others: Vec<String> =
            input.members.values().filter(|m| m.name != input.me && !m.tags.nofailover).map(|m| m.name.clone()).collect();
        if others.is_empty() {
            why.push("strict: no other member that may be promoted; commits cannot be made synchronous".to_string());
        } else {
            why.push("strict: no streaming standby yet; commits wait for any member".to_string());
        }
        SyncStandbys::any(1, others)
    };
    // Only a list in which every standby confirms every commit may back a recorded member.
    let all_confirm = !target.is_empty() && target.count as usize == target.names.len();
    let target_text = target.to_setting();

    // 1. Removals (and degrading) go to the record first.
    let keep: Vec<String> =
        if all_confirm { rec_members.iter().filter(|m| target.names.contains(m)).cloned().collect() } else { vec![] };
    let degrade = input.mode == SyncMode::On && target.is_empty();
    let must_record = keep.len() != rec_members.len() || (degrade && !rec_degraded);
    let mut steps = Vec::new();
    if must_record {
        let state = SyncState { term, members: keep.clone(), degraded: degrade };
        why.push(format!(
            "recording synchronous set [{}]{} for term {term} before changing synchronous_standby_names",
            show(&keep),
            if degrade { " (degraded)" } else { "" }
        ));
        steps.push(SyncStep::Record(Some(state)));
    }
    // 2. Then Postgres (additions need nothing recorded first).
    if current_text != target_text {
        why.push(format!("synchronous_standby_names '{current_text}' -> '{target_text}'"));
        steps.push(SyncStep::Set(target));
        return SyncPlan { steps, reason: why.join("; ") };
    }
    if must_record {
        return SyncPlan { steps, reason: why.join("; ") };
    }
    // 3. Postgres already lists the target: record the standbys that have caught up.
    if all_confirm {
        let primary_flush = probe.flush_lsn;
        let caught: Vec<String> = target
            .names
            .iter()
            .filter(|n| !rec_members.contains(n))
            .filter(|n| {
                probe.replication.iter().any(|r| {
                    &r.application_name == *n
                        && matches!(r.sync_state.as_str(), "sync" | "quorum")
                        && matches!((r.flush_lsn, primary_flush), (Some(f), Some(p)) if f >= p)
                })
            })
            .cloned()
            .collect();
        if !caught.is_empty() {
            let mut members = keep;
            members.extend(caught.iter().cloned());
            why.push(format!("{} caught up: recording synchronous set [{}] for term {term}", show(&caught), show(&members)));
            return SyncPlan {
                steps: vec![SyncStep::Record(Some(SyncState { term, members, degraded: false }))],
                reason: why.join("; "),
            };
        }
        let waiting: Vec<&String> = target.names.iter().filter(|n| !rec_members.contains(n)).collect();
        if !waiting.is_empty() {
            why.push(format!(
                "waiting for {} to confirm up to the primary's flush position before recording",
                waiting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ));
        } else {
            why.push(format!("synchronous standbys [{}] (term {term})", show(&rec_members)));
        }
    }
    SyncPlan { steps: vec![], reason: why.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DynamicConfig;
    use crate::lsn::Lsn;
    use crate::pg::ReplicationRow;

    fn lsn(x: u64) -> Option<Lsn> {
        Some(Lsn(x))
    }

    fn members(names: &[&str]) -> BTreeMap<String, MemberStatus> {
        names
            .iter()
            .map(|n| {
                let mut m = MemberStatus::new(*n);
                m.pg_running = true;
                m.role = if *n == "n1" { Role::Primary } else { Role::Replica };
                (n.to_string(), m)
            })
            .collect()
    }

    fn row(name: &str, sync_state: &str, flush: u64) -> ReplicationRow {
        ReplicationRow {
            application_name: name.into(),
            state: "streaming".into(),
            sync_state: sync_state.into(),
            flush_lsn: lsn(flush),
            replay_lsn: lsn(flush),
        }
    }

    fn probe(ssn: &str, flush: u64, rows: Vec<ReplicationRow>) -> PgProbe {
        PgProbe {
            running: true,
            role: Role::Primary,
            sync_standby_names: Some(ssn.into()),
            flush_lsn: lsn(flush),
            write_lsn: lsn(flush),
            replication: rows,
            ..Default::default()
        }
    }

    fn record(term: u64, sync: Option<(u64, &[&str], bool)>) -> ClusterRecord {
        let mut r = ClusterRecord { term, ..ClusterRecord::bootstrap("n1", DynamicConfig::default()) };
        r.sync = sync.map(|(t, m, d)| SyncState { term: t, members: m.iter().map(|s| s.to_string()).collect(), degraded: d });
        r
    }

    fn run(mode: SyncMode, count: u32, rec: &ClusterRecord, ms: &BTreeMap<String, MemberStatus>, p: &PgProbe) -> SyncPlan {
        plan(&SyncInput { me: "n1", mode, node_count: count, record: rec, members: ms, probe: p })
    }

    fn set(count: u32, names: &[&str]) -> SyncStep {
        SyncStep::Set(SyncStandbys::any(count, names.iter().map(|s| s.to_string()).collect()))
    }

    fn rec(term: u64, names: &[&str], degraded: bool) -> SyncStep {
        SyncStep::Record(Some(SyncState { term, members: names.iter().map(|s| s.to_string()).collect(), degraded }))
    }

    #[test]
    fn adding_sets_postgres_first_and_records_only_once_caught_up() {
        let ms = members(&["n1", "n2", "n3"]);
        let r = record(3, None);
        // Fresh primary, n2 streaming: list it first, nothing recorded yet.
        let p = run(SyncMode::On, 1, &r, &ms, &probe("", 100, vec![row("n2", "async", 100)]));
        assert_eq!(p.steps, vec![set(1, &["n2"])], "{}", p.reason);
        // Listed but behind the primary's flush position: wait.
        let p = run(SyncMode::On, 1, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 200, vec![row("n2", "quorum", 150)]));
        assert_eq!(p.steps, vec![], "{}", p.reason);
        assert!(p.reason.contains("waiting for n2"), "{}", p.reason);
        // Caught up: record it for the current term.
        let p = run(SyncMode::On, 1, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 200, vec![row("n2", "quorum", 200)]));
        assert_eq!(p.steps, vec![rec(3, &["n2"], false)], "{}", p.reason);
        // Steady state: nothing to do.
        let r = record(3, Some((3, &["n2"], false)));
        let p = run(
            SyncMode::On,
            1,
            &r,
            &ms,
            &probe(r#"ANY 1 ("n2")"#, 300, vec![row("n2", "quorum", 250), row("n3", "async", 250)]),
        );
        assert_eq!(p.steps, vec![], "{}", p.reason);
    }

    #[test]
    fn removing_records_first_then_changes_postgres() {
        let ms = members(&["n1", "n2", "n3"]);
        let r = record(3, Some((3, &["n2"], false)));
        // n2 stopped streaming, n3 streams: the record drops n2 before Postgres swaps it for n3.
        let p = run(SyncMode::Strict, 1, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 300, vec![row("n3", "async", 300)]));
        assert_eq!(p.steps, vec![rec(3, &[], false), set(1, &["n3"])], "{}", p.reason);
        // Count lowered from 2 to 1: same order.
        let r = record(3, Some((3, &["n2", "n3"], false)));
        let rows = vec![row("n2", "quorum", 300), row("n3", "quorum", 300)];
        let p = run(SyncMode::On, 1, &r, &ms, &probe(r#"ANY 2 ("n2", "n3")"#, 300, rows));
        assert_eq!(p.steps, vec![rec(3, &["n2"], false), set(1, &["n2"])], "{}", p.reason);
    }

    #[test]
    fn raising_the_count_lists_both_then_records_the_second() {
        let ms = members(&["n1", "n2", "n3"]);
        let r = record(3, Some((3, &["n2"], false)));
        let rows = vec![row("n2", "quorum", 300), row("n3", "async", 300)];
        let p = run(SyncMode::On, 2, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 300, rows));
        assert_eq!(p.steps, vec![set(2, &["n2", "n3"])], "{}", p.reason);
        let rows = vec![row("n2", "quorum", 300), row("n3", "quorum", 300)];
        let p = run(SyncMode::On, 2, &r, &ms, &probe(r#"ANY 2 ("n2", "n3")"#, 300, rows));
        assert_eq!(p.steps, vec![rec(3, &["n2", "n3"], false)], "{}", p.reason);
    }

    #[test]
    fn on_degrades_by_recording_first_and_recovers_after_catch_up() {
        let ms = members(&["n1", "n2", "n3"]);
        let r = record(3, Some((3, &["n2"], false)));
        let p = run(SyncMode::On, 1, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 300, vec![]));
        assert_eq!(p.steps, vec![rec(3, &[], true), SyncStep::Set(SyncStandbys::none())], "{}", p.reason);
        assert!(p.reason.contains("degrading"), "{}", p.reason);
        let r = record(3, Some((3, &[], true)));
        assert_eq!(run(SyncMode::On, 1, &r, &ms, &probe("", 300, vec![])).steps, vec![]);
        // A standby is back: listed first, the degraded flag is cleared once it caught up.
        let p = run(SyncMode::On, 1, &r, &ms, &probe("", 400, vec![row("n3", "async", 390)]));
        assert_eq!(p.steps, vec![set(1, &["n3"])], "{}", p.reason);
        let p = run(SyncMode::On, 1, &r, &ms, &probe(r#"ANY 1 ("n3")"#, 400, vec![row("n3", "quorum", 400)]));
        assert_eq!(p.steps, vec![rec(3, &["n3"], false)], "{}", p.reason);
    }

    #[test]
    fn a_new_term_starts_from_an_empty_set() {
        let ms = members(&["n1", "n2", "n3"]);
        // Record from the previous term (n1 was its synchronous standby): not this term's.
        let r = record(4, Some((3, &["n1"], false)));
        let p = run(SyncMode::On, 1, &r, &ms, &probe(r#"ANY 1 ("n1", "n3")"#, 100, vec![]));
        assert_eq!(p.steps, vec![rec(4, &[], true), SyncStep::Set(SyncStandbys::none())], "{}", p.reason);
    }

    #[test]
    fn strict_never_empties_the_list() {
        let ms = members(&["n1", "n2", "n3"]);
        let r = record(3, Some((3, &["n2"], false)));
        let p = run(SyncMode::Strict, 1, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 300, vec![]));
        assert_eq!(p.steps, vec![], "{}", p.reason);
        assert!(p.reason.contains("commits wait"), "{}", p.reason);
        // An empty list (new primary) becomes "any other member", with nothing recorded.
        let r = record(4, Some((3, &["n2"], false)));
        let p = run(SyncMode::Strict, 1, &r, &ms, &probe("", 300, vec![]));
        assert_eq!(p.steps, vec![set(1, &["n2", "n3"])], "{}", p.reason);
        // ... and stays so, without recording anyone, even when one of them confirms.
        let p = run(SyncMode::Strict, 1, &r, &ms, &probe(r#"ANY 1 ("n2", "n3")"#, 300, vec![]));
        assert_eq!(p.steps, vec![], "{}", p.reason);
        // Once n3 streams, the list narrows to it (then it is recorded after catching up).
        let p = run(SyncMode::Strict, 1, &r, &ms, &probe(r#"ANY 1 ("n2", "n3")"#, 300, vec![row("n3", "quorum", 300)]));
        assert_eq!(p.steps, vec![set(1, &["n3"])], "{}", p.reason);
    }

    #[test]
    fn nofailover_and_unknown_standbys_are_never_listed() {
        let mut ms = members(&["n1", "n2", "n3"]);
        ms.get_mut("n2").unwrap().tags.nofailover = true;
        let r = record(3, None);
        let rows = vec![row("n2", "async", 100), row("pg_basebackup", "streaming", 100), row("n3", "async", 90)];
        let p = run(SyncMode::On, 2, &r, &ms, &probe("", 100, rows));
        assert_eq!(p.steps, vec![set(1, &["n3"])], "{}", p.reason);
        assert_eq!(before_promote("n1", SyncMode::Strict, &ms), Some(SyncStandbys::any(1, vec!["n3".into()])));
        assert_eq!(before_promote("n1", SyncMode::On, &ms), None);
    }

    #[test]
    fn off_clears_the_record_first_then_the_list() {
        let ms = members(&["n1", "n2"]);
        let r = record(3, Some((3, &["n2"], false)));
        let p = run(SyncMode::Off, 1, &r, &ms, &probe(r#"ANY 1 ("n2")"#, 300, vec![row("n2", "quorum", 300)]));
        assert_eq!(p.steps, vec![SyncStep::Record(None), SyncStep::Set(SyncStandbys::none())]);
        assert_eq!(run(SyncMode::Off, 1, &record(3, None), &ms, &probe("", 300, vec![])).steps, vec![]);
    }

    #[test]
    fn the_invariant_holds_over_random_sequences() {
        // Model: every recorded member of the current term must be listed in an all-confirm list
        // whenever Postgres acknowledges a commit. Apply random plans step by step (a record
        // write may fail, which skips the rest) and check after every step.
        let ms = members(&["n1", "n2", "n3", "n4"]);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for mode in [SyncMode::On, SyncMode::Strict] {
            let mut rec = record(1, None);
            let mut ssn = String::new();
            for _ in 0..3000 {
                let streaming: Vec<&str> = ["n2", "n3", "n4"].into_iter().filter(|_| next(3) > 0).collect();
                let listed = SyncStandbys::parse(&ssn).unwrap();
                let rows = streaming
                    .iter()
                    .map(|n| row(n, if listed.names.iter().any(|l| l == n) { "quorum" } else { "async" }, 100))
                    .collect();
                let p = run(mode, 1 + next(2) as u32, &rec, &ms, &probe(&ssn, 100, rows));
                for step in p.steps {
                    match step {
                        SyncStep::Record(s) => {
                            if next(10) == 0 {
                                break; // lost the race: the rest is skipped
                            }
                            rec.sync = s;
                        }
                        SyncStep::Set(s) => ssn = s.to_setting(),
                    }
                    let listed = SyncStandbys::parse(&ssn).unwrap();
                    if let Some(s) = rec.sync.as_ref().filter(|s| s.term == rec.term) {
                        for m in &s.members {
                            assert!(
                                listed.names.contains(m) && listed.count as usize == listed.names.len(),
                                "{m} recorded, list '{ssn}'"
                            );
                        }
                        if listed.is_empty() && mode == SyncMode::On {
                            assert!(s.degraded, "async commits without a degraded record");
                        }
                    }
                    assert!(mode != SyncMode::Strict || !listed.is_empty() || rec.sync.is_none(), "strict emptied the list");
                }
                if next(50) == 0 {
                    rec.term += 1; // a failover elsewhere: a new term starts from nothing recorded
                }
            }
        }
    }
}
