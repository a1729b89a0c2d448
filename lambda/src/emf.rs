//! The coordinator's metrics as CloudWatch Embedded Metric Format (EMF) lines on stdout: the
//! Lambda runtime ships stdout to the function's log group, where CloudWatch turns each EMF line
//! into metric data points (no PutMetricData call, no extra permission, nothing to wait for).
//!
//! One line per cluster a coordinator ran for in the invocation (the Terraform module and the
//! CDK stack deploy one coordinator per cluster: one line per scheduled invocation), namespace
//! [`NAMESPACE`], dimension `Cluster`. Every metric is present in every line (0 when nothing
//! happened), so alarms see zeros rather than missing data:
//!
//! | metric              | unit    | value                                                        |
//! |---------------------|---------|--------------------------------------------------------------|
//! | `ClustersEvaluated` | Count   | coordinator runs for the cluster (1)                         |
//! | `FailoversStarted`  | Count   | unplanned changes of primary begun (term bumped)             |
//! | `FailoversFinished` | Count   | unplanned changes of primary completed (recorded in history) |
//! | `FailoverSeconds`   | Seconds | start to finish of each finished failover (only when one did)|
//! | `FencingFailures`   | Count   | runs blocked because the old primary is not confirmed fenced |
//! | `Errors`            | Count   | runs that failed on the store (or a malformed record)        |
//! | `NoPrimary`         | Count   | 1 when the cluster has no writable primary after the run     |
//!
//! `NoPrimary` is 1 when the record names no primary, a change of primary has not yet reached
//! its promotion, or the run was blocked (every blocked verdict is "a primary is needed and
//! cannot be made": no eligible candidate, fencing not confirmed). A dead primary is counted from
//! the moment the coordinator starts its failover (after the leader lease expires).

use std::collections::BTreeMap;

use pgdaemon_core::coordinator::{Outcome, RunReport};
use pgdaemon_core::events::{Event, EventKind};
use pgdaemon_core::{Store, TransitionKind, TransitionStep};
use serde_json::{json, Map, Value};

/// The CloudWatch namespace of the coordinator's metrics.
pub const NAMESPACE: &str = "pgdaemon";
/// The dimension every metric carries.
pub const DIMENSION: &str = "Cluster";

/// One cluster's metrics for one invocation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterMetrics {
    pub clusters_evaluated: u64,
    pub failovers_started: u64,
    pub failovers_finished: u64,
    /// One value per finished failover whose history entry was read.
    pub failover_seconds: Vec<f64>,
    pub fencing_failures: u64,
    pub errors: u64,
    pub no_primary: u64,
}

impl ClusterMetrics {
    /// What a coordinator run's report says (outcome and the record it left).
    pub fn add_report(&mut self, r: &RunReport) {
        self.clusters_evaluated += 1;
        let transition = r.record.as_ref().and_then(|c| c.transition.as_ref());
        let unfenced = transition.is_some_and(|t| t.step == TransitionStep::TermBumped);
        if r.outcome == Outcome::Error {
            self.errors += 1;
        }
        if r.outcome == Outcome::Blocked && unfenced {
            self.fencing_failures += 1;
        }
        let no_primary = r.record.as_ref().is_some_and(|c| {
            c.primary.is_none()
                || transition.is_some_and(|t| {
                    matches!(t.step, TransitionStep::TermBumped | TransitionStep::Fenced | TransitionStep::Designated)
                })
        });
        self.no_primary = u64::from(no_primary || r.outcome == Outcome::Blocked);
    }

    fn values(&self) -> Vec<(&'static str, &'static str, Value)> {
        let mut v = vec![
            ("ClustersEvaluated", "Count", json!(self.clusters_evaluated)),
            ("FailoversStarted", "Count", json!(self.failovers_started)),
            ("FailoversFinished", "Count", json!(self.failovers_finished)),
            ("FencingFailures", "Count", json!(self.fencing_failures)),
            ("Errors", "Count", json!(self.errors)),
            ("NoPrimary", "Count", json!(self.no_primary)),
        ];
        match self.failover_seconds.as_slice() {
            [] => {}
            [one] => v.push(("FailoverSeconds", "Seconds", json!(one))),
            many => v.push(("FailoverSeconds", "Seconds", json!(many))),
        }
        v
    }
}

/// The EMF document for one cluster (a JSON object; [`line`] makes it one line of text).
pub fn document(cluster: &str, m: &ClusterMetrics, timestamp_ms: u64) -> Value {
    let values = m.values();
    let definitions: Vec<Value> = values.iter().map(|(name, unit, _)| json!({ "Name": name, "Unit": unit })).collect();
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[DIMENSION]],
                "Metrics": definitions,
            }],
        }),
    );
    doc.insert(DIMENSION.into(), json!(cluster));
    for (name, _, value) in values {
        doc.insert(name.into(), value);
    }
    Value::Object(doc)
}

/// One EMF line (no line break inside: CloudWatch reads one JSON document per log line).
pub fn line(cluster: &str, m: &ClusterMetrics, timestamp_ms: u64) -> String {
    document(cluster, m, timestamp_ms).to_string()
}

/// Each cluster's metrics from the invocation's run reports, the events its coordinators
/// emitted, and store errors the handler answered with (`errored`, e.g. a request it could not
/// submit). A finished failover's duration comes from its history entry (one read of the
/// cluster's history, only when a change of primary finished).
pub async fn collect<S: Store>(
    store: &S,
    reports: &[RunReport],
    events: &[Event],
    errored: Option<&str>,
) -> BTreeMap<String, ClusterMetrics> {
    let mut out: BTreeMap<String, ClusterMetrics> = BTreeMap::new();
    for r in reports {
        out.entry(r.cluster.clone()).or_default().add_report(r);
    }
    if let Some(c) = errored {
        out.entry(c.to_string()).or_default().errors += 1;
    }
    for e in events {
        match e.kind {
            EventKind::FailoverStarted => out.entry(e.cluster.clone()).or_default().failovers_started += 1,
            EventKind::Finished => {
                let m = out.entry(e.cluster.clone()).or_default();
                match store.read_history(&e.cluster).await {
                    Ok(history) => match history.iter().find(|h| h.term == e.term) {
                        Some(h) if h.kind == TransitionKind::Failover => {
                            m.failovers_finished += 1;
                            m.failover_seconds.push(h.finished_ms.saturating_sub(h.started_ms) as f64 / 1000.0);
                        }
                        Some(_) => {} // a switchover: planned, not metered as a failover
                        None => {
                            tracing::warn!(cluster = %e.cluster, term = e.term, "metrics: no history entry for a finished change of primary")
                        }
                    },
                    Err(err) => {
                        tracing::warn!(cluster = %e.cluster, error = %err, "metrics: reading history for the failover duration");
                        // Counted from the event's words; the duration is unknown.
                        if e.detail.starts_with("failover") {
                            m.failovers_finished += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Prints one EMF line per cluster to stdout.
pub fn emit(metrics: &BTreeMap<String, ClusterMetrics>, timestamp_ms: u64) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    for (cluster, m) in metrics {
        // A failed write to stdout loses one data point; nothing to do about it here.
        let _ = writeln!(stdout, "{}", line(cluster, m, timestamp_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{ClusterRecord, DynamicConfig, HistoryEntry, MemoryStore};

    fn report(outcome: Outcome, record: Option<ClusterRecord>) -> RunReport {
        RunReport { cluster: "prod".into(), outcome, reason: "r".into(), steps: vec![], record }
    }

    fn parse(cluster: &str, m: &ClusterMetrics) -> Value {
        let text = line(cluster, m, 1_700_000_000_000);
        assert!(!text.contains('\n'), "one line: {text}");
        serde_json::from_str(&text).expect("valid JSON")
    }

    /// Every metric the `_aws` block declares has a value at the top level, and vice versa.
    fn check_structure(doc: &Value) -> Vec<String> {
        let aws = &doc["_aws"];
        assert_eq!(aws["Timestamp"], json!(1_700_000_000_000u64));
        let directives = aws["CloudWatchMetrics"].as_array().expect("CloudWatchMetrics is an array");
        assert_eq!(directives.len(), 1);
        let d = &directives[0];
        assert_eq!(d["Namespace"], json!("pgdaemon"));
        assert_eq!(d["Dimensions"], json!([["Cluster"]]));
        assert!(doc["Cluster"].is_string(), "the dimension's value is a top-level string");
        let names: Vec<String> = d["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let unit = m["Unit"].as_str().unwrap();
                assert!(["Count", "Seconds"].contains(&unit), "{m}");
                m["Name"].as_str().unwrap().to_string()
            })
            .collect();
        for n in &names {
            assert!(doc[n].is_number() || doc[n].is_array(), "{n} has no value: {doc}");
        }
        let top: Vec<&String> = doc.as_object().unwrap().keys().filter(|k| *k != "_aws" && *k != "Cluster").collect();
        assert_eq!(top.len(), names.len(), "{doc}");
        names
    }

    #[test]
    fn a_healthy_run_reports_zeros_and_one_evaluation() {
        let mut m = ClusterMetrics::default();
        m.add_report(&report(Outcome::Idle, Some(ClusterRecord::bootstrap("n1", DynamicConfig::default()))));
        let doc = parse("prod", &m);
        let names = check_structure(&doc);
        assert_eq!(
            names,
            ["ClustersEvaluated", "FailoversStarted", "FailoversFinished", "FencingFailures", "Errors", "NoPrimary"]
        );
        assert_eq!(doc["Cluster"], json!("prod"));
        assert_eq!(doc["ClustersEvaluated"], json!(1));
        for n in &names[1..] {
            assert_eq!(doc[n], json!(0), "{n}");
        }
    }

    #[test]
    fn errors_blocked_fencing_and_no_primary_are_counted() {
        let mut m = ClusterMetrics::default();
        m.add_report(&report(Outcome::Error, None));
        assert_eq!((m.errors, m.no_primary, m.fencing_failures), (1, 0, 0));

        // A failover whose old primary is not confirmed fenced: blocked at TermBumped.
        let mut r = ClusterRecord::bootstrap("n1", DynamicConfig::default());
        r.primary = None;
        // From JSON (serde defaults): the test does not break when the transition grows a field.
        r.transition = Some(
            serde_json::from_value(json!({
                "kind": "failover", "step": "term_bumped", "term": 2, "from_term": 1, "old_primary": "n1",
                "candidate": "n2", "reason": "n1 down", "started_ms": 1
            }))
            .expect("a transition"),
        );
        let mut m = ClusterMetrics::default();
        m.add_report(&report(Outcome::Blocked, Some(r.clone())));
        assert_eq!((m.fencing_failures, m.no_primary, m.errors), (1, 1, 0));
        // Waiting for the fence (pending): no failure, still no primary.
        let mut m = ClusterMetrics::default();
        m.add_report(&report(Outcome::Waiting, Some(r)));
        assert_eq!((m.fencing_failures, m.no_primary), (0, 1));
        // Blocked with the primary named (no eligible candidate for a dead primary).
        let mut m = ClusterMetrics::default();
        m.add_report(&report(Outcome::Blocked, Some(ClusterRecord::bootstrap("n1", DynamicConfig::default()))));
        assert_eq!((m.fencing_failures, m.no_primary), (0, 1));
        let doc = parse("prod", &m);
        check_structure(&doc);
        assert_eq!(doc["NoPrimary"], json!(1));
    }

    #[tokio::test]
    async fn failovers_started_and_finished_with_their_duration() {
        let store = MemoryStore::new();
        let entry = |term: u64, kind: &str, started_ms: u64, finished_ms: u64| -> HistoryEntry {
            serde_json::from_value(json!({
                "term": term, "kind": kind, "old_primary": "n1", "new_primary": "n2", "reason": "x",
                "started_ms": started_ms, "finished_ms": finished_ms
            }))
            .expect("a history entry")
        };
        store.append_history("prod", &entry(2, "failover", 10_000, 14_500)).await.unwrap();
        store.append_history("prod", &entry(3, "switchover", 20_000, 21_000)).await.unwrap();
        let events = vec![
            Event::new(EventKind::FailoverStarted, "prod", 10_000, "n1 -> n2: down").term(2),
            Event::new(EventKind::Fenced, "prod", 11_000, "n1 fenced").term(2),
            Event::new(EventKind::Finished, "prod", 14_500, "failover n1 -> n2 done in 4500 ms").term(2),
            Event::new(EventKind::SwitchoverStarted, "prod", 20_000, "n2 -> n1").term(3),
            Event::new(EventKind::Finished, "prod", 21_000, "switchover n2 -> n1 done").term(3),
        ];
        let reports = [report(Outcome::Progressed, Some(ClusterRecord::bootstrap("n2", DynamicConfig::default())))];
        let all = collect(&store, &reports, &events, None).await;
        let m = &all["prod"];
        assert_eq!((m.clusters_evaluated, m.failovers_started, m.failovers_finished), (1, 1, 1));
        assert_eq!(m.failover_seconds, vec![4.5]);
        let doc = parse("prod", m);
        let names = check_structure(&doc);
        assert!(names.contains(&"FailoverSeconds".to_string()));
        assert_eq!(doc["FailoverSeconds"], json!(4.5));
        assert_eq!(doc["FailoversStarted"], json!(1));

        // A store error the handler answered with counts for its cluster; no report needed.
        let all = collect(&store, &[], &[], Some("other")).await;
        assert_eq!(all["other"].errors, 1);
        assert_eq!(all["other"].clusters_evaluated, 0);
        // Two failovers finished in one invocation: an array of values (EMF allows it).
        let m = ClusterMetrics { failover_seconds: vec![1.0, 2.5], ..Default::default() };
        let doc = parse("prod", &m);
        check_structure(&doc);
        assert_eq!(doc["FailoverSeconds"], json!([1.0, 2.5]));
    }
}
