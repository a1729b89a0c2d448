//! One bench drill: a fresh three-node cluster at default timings, the victim chosen for the
//! scenario (the primary, with or without the coordinator lock), both recording clients and the
//! monitor running, the kill, and everything measured until both clients write on the new primary.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgdaemon_core::coordinator::hosting_member;
use pgdaemon_core::{ClusterView, HistoryEntry};

use super::chart::{self, Mark, Row, Timeline};
use super::client::{self, Attempt, Monitor, Recorder};
use super::haproxy::Haproxy;
use super::{now_ms, stats};
use crate::{AgentBuild, Backend, Drill};

/// The record's timings: pgdaemon's defaults (`DynamicConfig::default()`), overriding the
/// drills' short ones.
pub fn default_sets() -> Vec<String> {
    let d = pgdaemon_core::DynamicConfig::default();
    vec![
        format!("lease_ms={}", d.lease_ms),
        format!("renew_interval_ms={}", d.renew_interval_ms),
        format!("safety_margin_ms={}", d.safety_margin_ms),
        format!("probe_interval_ms={}", d.probe_interval_ms),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// kill -9 of the primary's agent and postmaster (the coordinator elsewhere).
    WholeNode,
    /// kill -9 of the primary's agent only.
    AgentOnly,
    /// kill -9 of the primary's postmaster only (its agent lives).
    PostgresOnly,
    /// kill -9 of agent and postmaster on the node that is primary and active coordinator.
    CoordinatorHost,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [Scenario::WholeNode, Scenario::AgentOnly, Scenario::PostgresOnly, Scenario::CoordinatorHost];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::WholeNode => "whole-node",
            Scenario::AgentOnly => "agent-only",
            Scenario::PostgresOnly => "postgres-only",
            Scenario::CoordinatorHost => "coordinator-host",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

pub fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Etcd => "etcd",
        Backend::Dynamodb => "dynamodb",
    }
}

/// What one drill measured (milliseconds after the kill unless said otherwise).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrillResult {
    pub scenario: Scenario,
    pub store: &'static str,
    pub drill: usize,
    pub victim: String,
    pub new_primary: Option<String>,
    pub kill_ms: u64,
    pub first_write_direct_ms: Option<u64>,
    pub first_write_haproxy_ms: Option<u64>,
    pub lost_direct: Vec<i64>,
    pub lost_haproxy: Vec<i64>,
    pub acknowledged_direct: usize,
    pub acknowledged_haproxy: usize,
    pub most_writable_at_once: usize,
    /// Last renewal of the victim's lease seen in the store + lease_ms.
    pub lease_expiry_ms: Option<u64>,
    /// When the leader lease was first seen free (released by the victim or cleared for the
    /// failover) after the victim held it.
    pub lease_released_ms: Option<u64>,
    pub history: Option<HistoryEntry>,
    pub chart: String,
    pub idle: Option<super::idle::IdleWrites>,
}

fn coordinator_member(v: &ClusterView) -> Option<String> {
    let owner = &v.coordinator.as_ref().filter(|l| !l.is_free())?.owner;
    hosting_member(owner, v.members.keys().map(String::as_str)).map(str::to_string)
}

/// Moves the primary so the victim holds (or does not hold) the coordinator lock too.
async fn arrange(d: &Drill, scenario: Scenario) -> Result<String> {
    for _ in 0..3 {
        let primary = d.wait_healthy(2, Duration::from_secs(120)).await?;
        let v = d.view().await?;
        let Some(coord) = coordinator_member(&v) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let want_coord_on_primary = scenario == Scenario::CoordinatorHost;
        if (coord == primary) == want_coord_on_primary {
            return Ok(primary);
        }
        let candidate = if want_coord_on_primary {
            coord
        } else {
            v.members.keys().find(|m| **m != primary && **m != coord).cloned().context("no third member")?
        };
        d.wait_replayed(&primary, Duration::from_secs(30)).await?;
        d.pgdctl(&["switchover", "--candidate", &candidate, "--timeout", "60"])
            .await
            .map_err(|e| anyhow::anyhow!("switchover to {candidate}: {e}"))?;
    }
    bail!("could not arrange the primary and the coordinator for {}", scenario.name())
}

/// Runs one drill; writes its chart into `out_dir`.
pub async fn drill(
    backend: Backend,
    scenario: Scenario,
    n: usize,
    build: &AgentBuild,
    out_dir: &std::path::Path,
    idle_window: Option<Duration>,
) -> Result<DrillResult> {
    let sets = default_sets();
    let mut d = Drill::start_with(backend, "bench", build, &sets.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let members: Vec<(String, u16, u16)> =
        d.pg.nodes().iter().map(|m| (m.name.clone(), m.port, d.api_port(&m.name).expect("api port"))).collect();
    let idle = match idle_window {
        Some(w) => {
            d.wait_healthy(2, Duration::from_secs(120)).await?;
            let api: Vec<u16> = members.iter().map(|m| m.2).collect();
            Some(super::idle::measure(&d.store_config, &api, w).await?)
        }
        None => None,
    };
    let victim = arrange(&d, scenario).await?;
    let victim_port = d.pg.node(&victim).port;
    let base_term = d.view().await?.cluster.map_or(0, |r| r.term);
    for t in ["bench_direct", "bench_haproxy"] {
        d.pg.sql(&victim, &format!("CREATE TABLE {t} (id bigint PRIMARY KEY)"))?;
    }
    let haproxy = Haproxy::start(d.pg.dir(), &members)?;
    let limit = Duration::from_secs(180);
    let hosts = ["127.0.0.1"; 3].join(",");
    let ports: Vec<String> = members.iter().map(|m| m.1.to_string()).collect();
    let direct_info = format!(
        "host={hosts} port={} user=postgres dbname=postgres connect_timeout=1 target_session_attrs=read-write",
        ports.join(",")
    );
    let monitor = Monitor::start(members.iter().map(|m| m.1).collect(), limit);
    let direct = Recorder::start(direct_info, "bench_direct", limit);
    let via_lb = Recorder::start(haproxy.conninfo(), "bench_haproxy", limit);
    // Let both clients write steadily, and HAProxy see the primary up, before the kill.
    let warm = now_ms();
    let mut lease_seen: Vec<(u64, String, bool)> = Vec::new();
    for _ in 0..100 {
        sample_lease(&d, &victim, &mut lease_seen).await;
        let ok = |r: &Recorder| r.snapshot().iter().filter(|a| a.ok && a.start_ms > warm).count() >= 20;
        if ok(&direct) && ok(&via_lb) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let start_ms = now_ms().saturating_sub(2000);
    let kill_ms = now_ms();
    match scenario {
        Scenario::WholeNode | Scenario::CoordinatorHost => d.crash(&victim)?,
        Scenario::AgentOnly => d.kill_agent(&victim),
        Scenario::PostgresOnly => d.pg.kill9(&victim)?,
    }
    // Until both clients wrote on the new primary (or the victim, restarted in place, again), at
    // most 120 s; the victim's lease is sampled meanwhile for its last renewal.
    let mut primary_again = false;
    for _ in 0..600 {
        sample_lease(&d, &victim, &mut lease_seen).await;
        let v = d.view().await.ok();
        let term = v.as_ref().and_then(|v| v.cluster.as_ref()).map_or(0, |r| r.term);
        primary_again = scenario == Scenario::PostgresOnly
            && term == base_term
            && v.as_ref().and_then(|v| v.cluster.as_ref()).and_then(|r| r.primary.as_deref()) == Some(victim.as_str());
        let done = |r: &Recorder| client::first_write_after(&r.snapshot(), kill_ms, victim_port, primary_again).is_some();
        if done(&direct) && done(&via_lb) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let direct_attempts = direct.stop().await;
    let lb_attempts = via_lb.stop().await;
    let samples = monitor.stop().await;
    drop(haproxy);
    let end_ms = now_ms();
    let view = d.view().await?;
    let new_primary = view.cluster.as_ref().and_then(|r| r.primary.clone());
    let history = d.store.read_history(&d.cluster).await?.into_iter().rfind(|h| h.term > base_term);
    let (lost_direct, lost_haproxy) = match new_primary.as_deref() {
        Some(p) if d.pg.pid(p).is_some() => {
            let port = d.pg.node(p).port;
            (
                client::lost(port, "bench_direct", &direct_attempts).await?,
                client::lost(port, "bench_haproxy", &lb_attempts).await?,
            )
        }
        _ => bail!("no running primary after the drill: {view:#?}\n{}", d.logs()),
    };
    let first = |xs: &[Attempt]| client::first_write_after(xs, kill_ms, victim_port, primary_again).map(|a| a.end_ms - kill_ms);
    let lease_released_ms = lease_seen.iter().find(|(_, _, rel)| *rel).map(|(t, _, _)| *t);
    // When the victim's last renewal was first seen (sampled every 200 ms or so), plus the lease.
    let lease_expiry_ms =
        lease_seen.iter().rev().find(|(_, _, free)| !free).map(|(t, _, _)| t + pgdaemon_core::DynamicConfig::default().lease_ms);
    let flags: Vec<Vec<bool>> = samples.iter().map(|(_, f)| f.clone()).collect();
    let mut result = DrillResult {
        scenario,
        store: backend_name(backend),
        drill: n,
        victim: victim.clone(),
        new_primary,
        kill_ms,
        first_write_direct_ms: first(&direct_attempts),
        first_write_haproxy_ms: first(&lb_attempts),
        acknowledged_direct: direct_attempts.iter().filter(|a| a.ok).count(),
        acknowledged_haproxy: lb_attempts.iter().filter(|a| a.ok).count(),
        lost_direct,
        lost_haproxy,
        most_writable_at_once: stats::most_at_once(&flags),
        lease_expiry_ms,
        lease_released_ms,
        history,
        chart: String::new(),
        idle,
    };
    let names: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
    let timeline = timeline(&result, start_ms, end_ms, &direct_attempts, &lb_attempts, &names, &samples);
    let file = out_dir.join(format!("{}-{}-{n}.svg", backend_name(backend), scenario.name()));
    std::fs::write(&file, chart::render(&timeline)).with_context(|| format!("writing {}", file.display()))?;
    result.chart = file.display().to_string();
    Ok(result)
}

/// Records when a new version (rvn) of the victim's leader lease is first seen.
async fn sample_lease(d: &Drill, victim: &str, seen: &mut Vec<(u64, String, bool)>) {
    if let Ok(Some(l)) = d.store.read_lease(&d.cluster, pgdaemon_core::LeaseName::Leader).await {
        // A clean release empties the owner: it counts when the victim held the lease last.
        let released_by_victim = l.is_free() && seen.last().is_some_and(|(_, _, rel)| !rel);
        if (l.owner == victim || released_by_victim)
            && seen.last().is_none_or(|(_, rvn, rel)| *rvn != l.rvn || *rel != l.is_free())
        {
            seen.push((now_ms(), l.rvn.clone(), l.is_free()));
        }
    }
}

/// The chart's content for one drill.
pub fn timeline(
    r: &DrillResult,
    start_ms: u64,
    end_ms: u64,
    direct: &[Attempt],
    via_lb: &[Attempt],
    members: &[String],
    samples: &[(u64, Vec<bool>)],
) -> Timeline {
    let mut events = vec![("kill".to_string(), r.kill_ms)];
    if let Some(t) = r.lease_expiry_ms {
        events.push(("lease expiry (last renewal seen + lease)".into(), t));
    }
    if let Some(t) = r.lease_released_ms {
        events.push(("leader lease freed".into(), t));
    }
    if let Some(h) = &r.history {
        events.push(("failover started".into(), h.started_ms));
        for (step, ms) in &h.step_ms {
            events.push((step.clone(), h.started_ms + ms));
        }
    }
    if let Some(t) = r.first_write_direct_ms {
        events.push(("first write, direct".into(), r.kill_ms + t));
    }
    if let Some(t) = r.first_write_haproxy_ms {
        events.push(("first write, HAProxy".into(), r.kill_ms + t));
    }
    let attempts = |xs: &[Attempt]| xs.iter().map(|a| Mark::Attempt { t_ms: a.end_ms, ok: a.ok }).collect::<Vec<_>>();
    let mut rows = vec![
        Row { label: "client, direct".into(), marks: attempts(direct) },
        Row { label: "client, via HAProxy".into(), marks: attempts(via_lb) },
    ];
    for (i, m) in members.iter().enumerate() {
        let s: Vec<(u64, bool)> = samples.iter().map(|(t, f)| (*t, f.get(i).copied().unwrap_or(false))).collect();
        let label = if *m == r.victim { format!("{m} writable (victim)") } else { format!("{m} writable") };
        rows.push(Row { label, marks: chart::periods(&s, end_ms, "writable") });
    }
    let secs = |x: Option<u64>| x.map_or("-".to_string(), |v| format!("{:.2} s", v as f64 / 1000.0));
    Timeline {
        title: format!("{} kill on {}, drill {} (victim {})", r.scenario.name(), r.store, r.drill, r.victim),
        kill_ms: r.kill_ms,
        start_ms,
        end_ms,
        events,
        rows,
        notes: vec![
            format!(
                "first write on the new primary: direct {}, via HAProxy {}; acknowledged writes lost: {} / {}; most writable at once: {}",
                secs(r.first_write_direct_ms),
                secs(r.first_write_haproxy_ms),
                r.lost_direct.len(),
                r.lost_haproxy.len(),
                r.most_writable_at_once
            ),
            "default timings (lease 10 s, renew 4 s, margin 2 s, probe 1 s; early failover after 1 s of refused agent connections); fencing http then command; HAProxy inter 1s fall 2 rise 1".into(),
        ],
    }
}
