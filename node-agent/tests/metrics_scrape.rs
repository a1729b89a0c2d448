//! `/metrics` scraped from the real HTTP API (a fake agent behind it, a manual clock) and parsed
//! by a strict parser of the Prometheus text format 0.0.4: every series has HELP and TYPE in its
//! one group, counters end in `_total`, label values survive a member name with a quote, a
//! backslash and a newline, and Patroni's series carry the values Patroni would give.
//!
//! The parser is here rather than a crate: `prometheus-parse` splits label pairs on `,` and `=`
//! and never unescapes, so it cannot tell a correctly escaped name from a broken one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_agent::http::{router, AgentApi, ApiState};
use pgdaemon_agent::metrics::LoopStats;
use pgdaemon_core::agent::{AgentSnapshot, DemoteError};
use pgdaemon_core::pg::PgProbe;
use pgdaemon_core::{
    ClusterRecord, ClusterView, DynamicConfig, HistoryEntry, LeaderLease, Lsn, ManualClock, MemberStatus, Role, StoreError,
    SyncMode, SyncState,
};

const SEC: fn(u64) -> Duration = Duration::from_secs;

/// A member name that needs every escape of the format.
const ODD_NAME: &str = "n\"2\\b\nx";

/// Every series the agent exports (names as in the exposition, before `_bucket`/`_sum`/`_count`).
const FAMILIES: [&str; 31] = [
    "pgdaemon_version",
    "pgdaemon_postgres_running",
    "pgdaemon_primary",
    "pgdaemon_xlog_location",
    "pgdaemon_replica",
    "pgdaemon_sync_standby",
    "pgdaemon_xlog_received_location",
    "pgdaemon_xlog_replayed_location",
    "pgdaemon_postgres_streaming",
    "pgdaemon_cluster_unlocked",
    "pgdaemon_failsafe_mode_enabled",
    "pgdaemon_postgres_timeline",
    "pgdaemon_is_paused",
    "pgdaemon_pending_restart",
    "pgdaemon_role",
    "pgdaemon_lease_held",
    "pgdaemon_term",
    "pgdaemon_replication_lag_bytes",
    "pgdaemon_replication_lag_seconds",
    "pgdaemon_lease_acquisitions_total",
    "pgdaemon_lease_renewals_total",
    "pgdaemon_lease_renewal_failures_total",
    "pgdaemon_demotions_total",
    "pgdaemon_promotions_total",
    "pgdaemon_coordinator_requests_total",
    "pgdaemon_heartbeat_failures_total",
    "pgdaemon_action_failures_total",
    "pgdaemon_store_up",
    "pgdaemon_loop_duration_seconds",
    "pgdaemon_loop_last_duration_seconds",
    "pgdaemon_loop_idle_seconds",
];

// ---- a strict parser of the text format 0.0.4 ----

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<Sample>,
}

/// The families by name, in order of appearance; any departure from the format is an error.
fn parse(text: &str) -> Result<Vec<(String, Family)>, String> {
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    let mut families: Vec<(String, Family)> = Vec::new();
    let mut closed: HashSet<String> = HashSet::new();
    let mut series: HashSet<(String, Vec<(String, String)>)> = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').ok_or_else(|| at("HELP without text".into()))?;
            check_name(name).map_err(at)?;
            let doc = unescape(doc, false).map_err(at)?;
            let f = family(&mut families, &mut closed, name).map_err(at)?;
            if f.help.replace(doc).is_some() || !f.samples.is_empty() {
                return Err(at("second HELP, or HELP after a sample".into()));
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| at("TYPE without type".into()))?;
            check_name(name).map_err(at)?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind}")));
            }
            let f = family(&mut families, &mut closed, name).map_err(at)?;
            if f.kind.replace(kind.to_string()).is_some() || !f.samples.is_empty() {
                return Err(at("second TYPE, or TYPE after a sample".into()));
            }
        } else if line.starts_with('#') {
            return Err(at("a comment other than HELP and TYPE".into()));
        } else {
            let sample = parse_sample(line).map_err(at)?;
            let key = (sample.name.clone(), sample.labels.clone().into_iter().collect());
            if !series.insert(key) {
                return Err(at("the same series twice".into()));
            }
            // The family is the current group's when the sample belongs to it.
            let (current, f) = families.last_mut().ok_or_else(|| at("a sample before any HELP/TYPE".into()))?;
            if !belongs(&sample.name, current, f.kind.as_deref()) {
                return Err(at(format!("sample outside its family's group (current group {current})")));
            }
            f.samples.push(sample);
        }
    }
    Ok(families)
}

/// The group `name` starts or continues; a family whose group ended may not start again.
fn family<'a>(
    families: &'a mut Vec<(String, Family)>,
    closed: &mut HashSet<String>,
    name: &str,
) -> Result<&'a mut Family, String> {
    let continues = families.last().is_some_and(|(n, _)| n == name);
    if !continues {
        if let Some((prev, _)) = families.last() {
            closed.insert(prev.clone());
        }
        if closed.contains(name) {
            return Err(format!("{name} appears in two groups"));
        }
        families.push((name.to_string(), Family::default()));
    }
    Ok(&mut families.last_mut().unwrap().1)
}

fn belongs(sample: &str, family: &str, kind: Option<&str>) -> bool {
    let suffixes: &[&str] = match kind {
        Some("histogram") => &["_bucket", "_sum", "_count"],
        Some("summary") => &["", "_sum", "_count"],
        _ => &[""],
    };
    suffixes.iter().any(|s| sample.strip_prefix(family) == Some(s))
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric or label name {name:?}"))
    }
}

/// HELP text knows `\\` and `\n`; label values also `\"`. Any other escape is an error.
fn unescape(s: &str, label: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = body.split_once("=\"").ok_or("label without =\"")?;
            check_name(key)?;
            // The value ends at the first quote not escaped by a backslash.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            if labels.insert(key.to_string(), unescape(&after[..end], true)?).is_some() {
                return Err(format!("label {key} twice"));
            }
            body = &after[end + 1..];
            if !body.starts_with('}') {
                body = body.strip_prefix(',').ok_or("labels not separated by a comma")?;
            }
        }
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = match fields.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|e| format!("timestamp {ts:?}: {e}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

// ---- the agent behind the API ----

struct Fake(AgentSnapshot);

#[async_trait]
impl AgentApi for Fake {
    fn snapshot(&self) -> AgentSnapshot {
        self.0.clone()
    }
    async fn demote(&self, _term: u64, _reason: &str) -> Result<(), DemoteError> {
        unreachable!("not called by /metrics")
    }
    async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        Err(StoreError::Unavailable("not called by /metrics".into()))
    }
    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        Ok(vec![])
    }
}

/// Serves `snapshot` on a loopback socket at t = 100 s on the agent clock (two ticks recorded,
/// the last ending at t = 99 s) and returns the body and content type of `GET /metrics`.
async fn scrape(snapshot: AgentSnapshot) -> (String, String) {
    let clock = ManualClock::new(1_700_000_000_000);
    clock.advance(SEC(100));
    let stats = Arc::new(LoopStats::new(SEC(90)));
    stats.record_tick(SEC(95), Duration::from_millis(20));
    stats.record_tick(SEC(99), Duration::from_millis(2_000));
    let state = ApiState { api: Arc::new(Fake(snapshot)), clock: Arc::new(clock), stats, version: "9.9.9-test".into() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let http =
        reqwest::Client::builder().use_preconfigured_tls(pgdaemon_dcs::tls::client_config(None, None).unwrap()).build().unwrap();
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let text = resp.text().await.unwrap();
    server.abort();
    (text, content_type)
}

fn lsn(s: &str) -> Lsn {
    s.parse().unwrap()
}

/// n1 primary at 0/5000 holding the term-3 lease; `me` a replica in the recorded synchronous
/// set; the cluster paused.
fn view(me: &str) -> ClusterView {
    let mut record = ClusterRecord::bootstrap("n1", DynamicConfig::default());
    record.term = 3;
    record.paused = true;
    record.sync = Some(SyncState { term: 3, members: vec![me.to_string()], degraded: false });
    let mut v = ClusterView {
        cluster: Some(record),
        leader: Some(LeaderLease { owner: "n1".into(), term: 3, rvn: "r".into(), lease_ms: 10_000, released: false }),
        ..Default::default()
    };
    let mut primary = MemberStatus::new("n1");
    primary.role = Role::Primary;
    primary.pg_running = true;
    primary.write_lsn = Some(lsn("0/5000"));
    v.members.insert("n1".into(), primary);
    v
}

fn config() -> DynamicConfig {
    DynamicConfig { synchronous_mode: SyncMode::On, failsafe_mode: true, ..Default::default() }
}

/// The streaming synchronous replica `ODD_NAME`, 100 bytes behind the primary.
fn replica() -> AgentSnapshot {
    let mut s = AgentSnapshot {
        cluster: "c\\1".into(),
        member: ODD_NAME.into(),
        role: Role::Replica,
        pg_running: true,
        term: 3,
        last_probe: Some(PgProbe {
            running: true,
            role: Role::Replica,
            timeline: 3,
            receive_lsn: Some(lsn("0/4F9C")),
            replay_lsn: Some(lsn("0/4F00")),
            replay_age: Some(Duration::from_millis(250)),
            streaming: true,
            pending_restart: vec!["shared_buffers".into()],
            ..Default::default()
        }),
        last_view: Some(view(ODD_NAME)),
        last_loop_duration: Duration::from_millis(2_000),
        config: config(),
        ..Default::default()
    };
    let c = &mut s.counters;
    (c.lease_acquisitions, c.lease_renewals, c.lease_renew_failures, c.demotions) = (1, 2, 3, 4);
    (c.promotions, c.coordinator_requests, c.heartbeat_failures, c.action_failures) = (5, 6, 7, 8);
    s
}

/// The parsed scrape, with the checks every scrape must pass.
struct Scrape {
    families: Vec<(String, Family)>,
    text: String,
}

impl Scrape {
    async fn of(snapshot: AgentSnapshot) -> Scrape {
        let (cluster, member) = (snapshot.cluster.clone(), snapshot.member.clone());
        let (text, content_type) = scrape(snapshot).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (name, f) in &families {
            assert!(f.help.as_deref().is_some_and(|h| !h.is_empty()), "{name} has no HELP\n{text}");
            let kind = f.kind.as_deref().unwrap_or_else(|| panic!("{name} has no TYPE\n{text}"));
            assert!(!f.samples.is_empty(), "{name} has no sample");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}: counters, and only they, end in _total");
            assert!(FAMILIES.contains(&name.as_str()), "{name} is not in the documented list");
            for s in &f.samples {
                // Escaped on the way out, the same strings on the way in.
                assert_eq!(s.labels.get("scope"), Some(&cluster), "{s:?}");
                assert_eq!(s.labels.get("name"), Some(&member), "{s:?}");
            }
        }
        Scrape { families, text }
    }

    /// The value of the one sample `name` with these labels besides `scope` and `name`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .families
            .iter()
            .flat_map(|(_, f)| &f.samples)
            .filter(|s| s.name == name)
            .filter(|s| {
                s.labels.len() == labels.len() + 2 && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}\n{}", self.text);
        found[0]
    }

    fn has(&self, family: &str) -> bool {
        self.families.iter().any(|(n, _)| n == family)
    }

    fn kind(&self, family: &str) -> &str {
        self.families.iter().find(|(n, _)| n == family).and_then(|(_, f)| f.kind.as_deref()).unwrap()
    }
}

#[tokio::test]
async fn a_synchronous_replica_with_an_odd_name() {
    let m = Scrape::of(replica()).await;
    // The raw text escapes the quote, the backslashes and the newline.
    assert!(m.text.contains(r#"{scope="c\\1",name="n\"2\\b\nx"}"#), "{}", m.text);

    let families: Vec<&str> = m.families.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(families, FAMILIES, "every series, in order");

    assert_eq!(m.value("pgdaemon_version", &[("version", "9.9.9-test")]), 1.0);
    assert_eq!(m.value("pgdaemon_postgres_running", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_primary", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_xlog_location", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_replica", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_sync_standby", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_xlog_received_location", &[]), 0x4F9C as f64);
    assert_eq!(m.value("pgdaemon_xlog_replayed_location", &[]), 0x4F00 as f64);
    assert_eq!(m.value("pgdaemon_postgres_streaming", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_cluster_unlocked", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_failsafe_mode_enabled", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_postgres_timeline", &[]), 3.0);
    assert_eq!(m.value("pgdaemon_is_paused", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_pending_restart", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_role", &[("role", "replica")]), 1.0);
    assert_eq!(m.value("pgdaemon_role", &[("role", "primary")]), 0.0);
    assert_eq!(m.value("pgdaemon_role", &[("role", "unknown")]), 0.0);
    assert_eq!(m.value("pgdaemon_lease_held", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_term", &[]), 3.0);
    assert_eq!(m.value("pgdaemon_replication_lag_bytes", &[]), 100.0);
    assert_eq!(m.value("pgdaemon_replication_lag_seconds", &[]), 0.25);
    let counters = [
        "lease_acquisitions",
        "lease_renewals",
        "lease_renewal_failures",
        "demotions",
        "promotions",
        "coordinator_requests",
        "heartbeat_failures",
        "action_failures",
    ];
    for (i, c) in counters.iter().enumerate() {
        assert_eq!(m.value(&format!("pgdaemon_{c}_total"), &[]), (i + 1) as f64, "{c}");
    }
    assert_eq!(m.value("pgdaemon_store_up", &[]), 1.0);
    assert_eq!(m.kind("pgdaemon_loop_duration_seconds"), "histogram");
    assert_eq!(m.value("pgdaemon_loop_duration_seconds_count", &[]), 2.0);
    assert!((m.value("pgdaemon_loop_duration_seconds_sum", &[]) - 2.02).abs() < 1e-9);
    assert_eq!(m.value("pgdaemon_loop_duration_seconds_bucket", &[("le", "0.025")]), 1.0);
    assert_eq!(m.value("pgdaemon_loop_duration_seconds_bucket", &[("le", "+Inf")]), 2.0);
    assert_eq!(m.value("pgdaemon_loop_last_duration_seconds", &[]), 2.0);
    assert_eq!(m.value("pgdaemon_loop_idle_seconds", &[]), 1.0);
}

#[tokio::test]
async fn a_primary_holding_its_lease() {
    let mut s = replica();
    s.member = "n1".into();
    s.role = Role::Primary;
    s.holds_lease = true;
    s.lease_term = Some(3);
    s.lease_valid_until = Some(SEC(108));
    s.last_probe = Some(PgProbe {
        running: true,
        role: Role::Primary,
        timeline: 4,
        write_lsn: Some(lsn("0/5000")),
        flush_lsn: Some(lsn("0/4000")),
        ..Default::default()
    });
    let m = Scrape::of(s).await;
    assert_eq!(m.value("pgdaemon_primary", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_lease_held", &[]), 1.0);
    // Patroni's xlog_location is the flushed position.
    assert_eq!(m.value("pgdaemon_xlog_location", &[]), 0x4000 as f64);
    assert_eq!(m.value("pgdaemon_replica", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_sync_standby", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_xlog_received_location", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_xlog_replayed_location", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_postgres_streaming", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_postgres_timeline", &[]), 4.0);
    assert_eq!(m.value("pgdaemon_role", &[("role", "primary")]), 1.0);
    // Neither a replica nor the primary of a known position: no lag series at all.
    assert!(!m.has("pgdaemon_replication_lag_bytes") && !m.has("pgdaemon_replication_lag_seconds"));
}

#[tokio::test]
async fn no_store_read_and_postgres_down() {
    let mut s = replica();
    s.pg_running = false;
    s.role = Role::Unknown;
    s.last_probe = Some(PgProbe::default());
    s.last_view = None;
    s.store_error = Some("etcd is down".into());
    s.config = DynamicConfig::default();
    let m = Scrape::of(s).await;
    assert_eq!(m.value("pgdaemon_postgres_running", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_replica", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_sync_standby", &[]), 0.0);
    // As Patroni: no cluster read counts as unlocked.
    assert_eq!(m.value("pgdaemon_cluster_unlocked", &[]), 1.0);
    assert_eq!(m.value("pgdaemon_is_paused", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_pending_restart", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_failsafe_mode_enabled", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_store_up", &[]), 0.0);
    assert_eq!(m.value("pgdaemon_role", &[("role", "unknown")]), 1.0);
}

#[test]
fn the_parser_refuses_what_the_format_does_not_allow() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\"} 1\n";
    assert!(parse(ok).is_ok());
    for bad in [
        "a 1\n",                                                                              // no HELP/TYPE
        "# HELP a A.\n# TYPE a gauge\na{x=\"q\"\"} 1\n",                                      // unescaped quote
        "# HELP a A.\n# TYPE a gauge\na{x=\"q\\t\"} 1\n",                                     // unknown escape
        "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{y=\"1\"} 1\n", // split group
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",                                            // a series twice
        "# HELP a A.\n# TYPE a gauge\na one\n",                                               // not a number
        "# HELP a A.\n# TYPE a gauge\na 1",                                                   // no final newline
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"y=\"2\"} 1\n",                                 // no comma between labels
    ] {
        assert!(parse(bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn every_series_is_documented() {
    let readme = include_str!("../README.md");
    for name in FAMILIES {
        assert!(readme.contains(&format!("`{name}")), "node-agent/README.md does not list {name}");
    }
}
